"""Fidelity: our simulator against Vidur itself on the identical request list.

Reads the reference directories written by ``benchmarks/vidur_reference.py`` (Vidur's
``request_metrics.csv`` and the exact requests it replayed, ``requests.csv``), replays the same
requests through the command line a user would type, with default flags::

    python -m vidur_env simulate --trace T --profiling-dir D --scheduler S --router round_robin \\
        --max-tokens M --output-csv ours.csv

and prints TTFT and E2E (mean, p50, p99) side by side with the relative difference. Both sides
are read from a ``request_metrics.csv``-style file by the same function: ``--output-csv``
writes Vidur's header, so Vidur's file and ours are read alike.

    python benchmarks/fidelity_vs_vidur.py /work/fidelity/moderate /work/fidelity/high \\
        --profiling-dir ../shared/data/vidur/profiling [--simulate-flags "--keying vidur_pypi"]

``--simulate-flags`` are passed to ``simulate`` unchanged (e.g. ``--keying vidur_pypi``, the
PyPI build's lookup keys; note that the CLI then rounds KV to 256 tokens, the PyPI default,
while the reference runs pin 64). ``--time-model builtin`` leaves out ``--profiling-dir`` and
compares our calibrated presets instead (a different attention source, so larger gaps are
expected). The scheduler is the reference run's (``vidur_reference.py --scheduler``, recorded in
its summary.json; Sarathi when absent), the router round robin, as Vidur's reference runs.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import shlex
import tempfile
from pathlib import Path

import numpy as np

from vidur_env.cli import main as vidur_env_cli
from vidur_env.metrics import summarize

COMPARED = ("prefill_e2e_time", "request_e2e_time")
STATS = ("mean", "p50", "p99")
TRACE_COLUMNS = ("arrived_at", "num_prefill_tokens", "num_decode_tokens")


def read_request_metrics(path: Path) -> dict[str, np.ndarray]:
    """The compared columns of a request_metrics.csv (Vidur's or ours), in Request Id order."""
    with open(path, newline="") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda row: int(float(row["Request Id"])))
    return {name: np.array([float(row[name]) for row in rows]) for name in COMPARED}


def write_replayed_trace(ref_dir: Path, trace: Path) -> int:
    """The requests Vidur replayed (times scaled, prompts cut) as a Vidur trace; returns their count."""
    with open(ref_dir / "requests.csv", newline="") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda row: int(row["request_id"]))
    with open(trace, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(TRACE_COLUMNS)
        writer.writerows([row[name] for name in TRACE_COLUMNS] for row in rows)
    return len(rows)


def simulate_ours(ref_dir: Path, args: argparse.Namespace, work: Path) -> tuple[Path, dict]:
    """Run ``python -m vidur_env simulate`` on the reference's requests; (our CSV, our JSON)."""
    summary = json.loads((ref_dir / "summary.json").read_text())
    trace, ours = work / "trace.csv", work / "request_metrics.csv"
    write_replayed_trace(ref_dir, trace)
    scheduler = summary["spec"].get("scheduler", "sarathi")
    argv = ["simulate", "--trace", str(trace), "--scheduler", scheduler, "--router", "round_robin",
            "--max-tokens", str(summary["spec"].get("max_tokens", 4096)), "--output-csv", str(ours)]
    if args.time_model == "profiled":
        argv += ["--profiling-dir", args.profiling_dir]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = vidur_env_cli(argv + args.simulate_flags)
    if code != 0:
        raise SystemExit(f"python -m vidur_env {' '.join(argv + args.simulate_flags)} exited with {code}")
    return ours, json.loads(stdout.getvalue())


def compare(ref_dir: Path, args: argparse.Namespace) -> float:
    summary = json.loads((ref_dir / "summary.json").read_text())
    vidur = read_request_metrics(ref_dir / "request_metrics.csv")
    with tempfile.TemporaryDirectory() as work:
        ours_csv, metrics = simulate_ours(ref_dir, args, Path(work))
        ours = read_request_metrics(ours_csv)
    scheduler = summary["spec"].get("scheduler", "sarathi")
    print(f"\n{ref_dir.name} ({scheduler}): {metrics['num_requests']} requests, offered "
          f"{summary.get('offered_qps', float('nan')):.2f} req/s, Vidur's mean batch {summary.get('mean_batch_size', float('nan')):.1f}, restarts Vidur "
          f"{summary.get('total_restarts', 0)} / ours {metrics['request_num_restarts']['total']}, "
          f"our off-grid lookups {metrics['out_of_grid_lookups']}")
    print(f"{'metric':<24}{'Vidur':>10}{'ours':>10}{'diff':>9}")
    worst = 0.0
    for name in COMPARED:
        theirs, mine = summarize(vidur[name]), summarize(ours[name])
        for stat in STATS:
            diff = mine[stat] / theirs[stat] - 1.0
            worst = max(worst, abs(diff))
            print(f"{name + ' ' + stat:<24}{theirs[stat]:>10.4f}{mine[stat]:>10.4f}{diff:>+9.1%}")
    per_request = np.abs(ours["request_e2e_time"] / vidur["request_e2e_time"] - 1.0)
    print(f"per-request E2E |relative difference|: median {np.median(per_request):.1%}, "
          f"p90 {np.percentile(per_request, 90):.1%}")
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference_dirs", nargs="+", type=Path, help="outputs of vidur_reference.py")
    parser.add_argument("--profiling-dir", default=str(Path(__file__).resolve().parents[2] / "shared/data/vidur/profiling"))
    parser.add_argument("--time-model", choices=("profiled", "builtin"), default="profiled")
    parser.add_argument("--simulate-flags", type=shlex.split, default=[],
                        help="more simulate flags, one quoted string (default: none, i.e. simulate's defaults)")
    args = parser.parse_args()
    worst = max(compare(ref_dir, args) for ref_dir in args.reference_dirs)
    print(f"\nlargest |difference| over TTFT/E2E mean, p50, p99: {worst:.1%} (target: within 5%)")


if __name__ == "__main__":
    main()
