"""Write the sample trace shipped with the package (vidur_env/data/sample_trace.csv).

The examples and tests need a small trace that is always there; real traces are large and
their licences are not ours to re-ship. So the sample is *generated*, not copied: 300 requests
whose prompt and output lengths are drawn (uncut, so some exceed 4096 tokens, as in the real
conversation trace) from the embedded conversation-trace fit (``default_workload.json``), with
gamma inter-arrival gaps at the fitted trace's rate and coefficient of variation. It is in
Vidur's replay format (``arrived_at,num_prefill_tokens,num_decode_tokens``, seconds from 0).

Usage::

    python benchmarks/make_sample_trace.py [--rows 300] [--seed 2026] [--output PATH]

The same arguments always write the same file.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from vidur_env.workload import default_length_model, gamma_arrivals

OUTPUT = Path(__file__).resolve().parents[1] / "vidur_env" / "data" / "sample_trace.csv"


def sample_trace(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(arrival seconds from 0, prompt tokens, output tokens) of ``rows`` generated requests."""
    model = default_length_model()
    rng = np.random.default_rng(seed)
    arrivals = gamma_arrivals(rows, model.trace_stats["qps"], model.trace_stats["interarrival_cv"], rng)
    prompt, output = model.sample(rows, rng)
    return np.round(arrivals - arrivals[0], 6), prompt, output


def write_trace(path: Path, arrivals: np.ndarray, prompt: np.ndarray, output: np.ndarray) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("arrived_at", "num_prefill_tokens", "num_decode_tokens"))
        writer.writerows(zip((f"{t:.6f}" for t in arrivals), prompt.tolist(), output.tolist()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    arrivals, prompt, output = sample_trace(args.rows, args.seed)
    write_trace(args.output, arrivals, prompt, output)
    print(f"wrote {args.output}: {args.rows} requests over {arrivals[-1]:.1f} s, prompt mean {prompt.mean():.0f} / "
          f"max {prompt.max()}, output mean {output.mean():.0f} / max {output.max()}, "
          f"{int(np.count_nonzero(prompt + output > 4096))} above 4096 tokens")


if __name__ == "__main__":
    main()
