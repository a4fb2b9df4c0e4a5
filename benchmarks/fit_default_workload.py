"""Fit the embedded default workload (vidur_env/data/default_workload.json) to the conv trace.

The project must run without ../shared/data, so ``lengths="default"`` samples from a compact
fit of Vidur's ``splitwise_conv.csv`` (Azure 2023 conversation trace) instead of the trace:
a quantile table of each marginal at fixed normal scores, joined by a Gaussian copula whose
correlation matches the trace's Spearman rank correlation. Only derived figures are written.

Usage::

    python benchmarks/fit_default_workload.py [--trace PATH] [--output PATH] [--check-only]

It prints the fitted against the real mean / median / p90 / p99 of prompt and output lengths,
the rank correlation, and the share of requests above 4096 tokens.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
from pathlib import Path
from statistics import NormalDist

import numpy as np

from vidur_env.traces import read_trace
from vidur_env.workload import DefaultLengthModel

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "vidur_env" / "data" / "default_workload.json"
TAIL_SCORES = np.linspace(2.4, 3.7, 8)
"""Normal scores of the extra tail points beyond the 1st/99th percentiles (p = 8e-3 .. 1e-4)."""
CHECK_SAMPLES = 1_000_000


def default_trace_path() -> Path:
    """splitwise_conv.csv under VIDUR_SHARED_DATA or ../shared/data (as tests/conftest.py)."""
    base = os.environ.get("VIDUR_SHARED_DATA")
    root = Path(base) if base else REPO.parent / "shared" / "data"
    return root / "vidur" / "processed_traces" / "splitwise_conv.csv"


def probability_grid() -> np.ndarray:
    """Every percentile 1..99 plus 8 points in each tail: exact median/p90/p99, faithful tails."""
    upper_tail = np.array([NormalDist().cdf(z) for z in TAIL_SCORES])
    body = np.arange(1, 100) / 100.0
    return np.sort(np.concatenate([1.0 - upper_tail, body, upper_tail]))


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank (for Spearman's correlation)."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    start = np.cumsum(counts) - counts
    return (start + (counts + 1) / 2.0)[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(average_ranks(a), average_ranks(b))[0, 1])


def summary(x: np.ndarray) -> dict:
    """Mean, median, p90, p99 of a length column."""
    return {
        "mean": float(np.mean(x)),
        "median": float(np.median(x)),
        "p90": float(np.percentile(x, 90)),
        "p99": float(np.percentile(x, 99)),
    }


def fit(trace_path: Path) -> dict:
    """The JSON document of the fitted model and of the trace figures it was fitted to."""
    trace = read_trace(trace_path, "vidur")
    prompt = trace.num_prefill_tokens.astype(np.float64)
    decode = trace.num_decode_tokens.astype(np.float64)
    grid = probability_grid()
    rank_corr = spearman(prompt, decode)
    gaps = np.diff(trace.arrived_at)
    return {
        "description": (
            "Gaussian-copula fit of prompt/output lengths of Vidur's splitwise_conv.csv (Azure "
            "2023 conversation trace); written by benchmarks/fit_default_workload.py"
        ),
        "trace_stats": {
            "rows": len(trace),
            "prompt": summary(prompt),
            "decode": summary(decode),
            "spearman": rank_corr,
            "pearson": float(np.corrcoef(prompt, decode)[0, 1]),
            "share_above_4096": float(np.mean(prompt + decode > 4096)),
            "qps": float(len(gaps) / (trace.arrived_at[-1] - trace.arrived_at[0])),
            "interarrival_cv": float(gaps.std() / gaps.mean()),
        },
        "copula": {
            "rho": 2.0 * math.sin(math.pi * rank_corr / 6.0),
            "normal_scores": [round(NormalDist().inv_cdf(p), 6) for p in grid],
            "prompt_quantiles": [round(float(q), 3) for q in np.quantile(prompt, grid)],
            "decode_quantiles": [round(float(q), 3) for q in np.quantile(decode, grid)],
        },
    }


def report(doc: dict, seed: int = 0) -> None:
    """Print fitted (a large sample of the model) against real figures."""
    model = DefaultLengthModel.from_dict(doc)
    prompt, decode = model.sample(CHECK_SAMPLES, np.random.default_rng(seed))
    real = doc["trace_stats"]
    print(f"{'':8}{'':8}{'real':>10}{'fitted':>10}")
    for name, sample in (("prompt", prompt), ("output", decode)):
        fitted = summary(sample)
        for stat, value in real["prompt" if name == "prompt" else "decode"].items():
            print(f"{name:8}{stat:8}{value:10.1f}{fitted[stat]:10.1f}")
    sub = slice(0, 200_000)
    print(f"spearman        {real['spearman']:10.4f}{spearman(prompt[sub], decode[sub]):10.4f}")
    print(f"pearson         {real['pearson']:10.4f}{np.corrcoef(prompt, decode)[0, 1]:10.4f}")
    above = np.mean(prompt + decode > 4096)
    print(f">4096 tokens    {real['share_above_4096']:10.4f}{above:10.4f}")
    print(f"trace qps {real['qps']:.3f}, inter-arrival CV {real['interarrival_cv']:.3f}, "
          f"{real['rows']} rows; table of {len(model.normal_scores)} quantiles, rho {model.rho:.4f}")


def to_json(doc: dict) -> str:
    """Indented JSON with each list of numbers on one line, so the file reads as a table."""
    text = json.dumps(doc, indent=1)
    one_line = re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    return one_line + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", type=Path, default=default_trace_path())
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--check-only", action="store_true", help="report on the stored fit")
    args = parser.parse_args()
    if args.check_only:
        doc = json.loads(args.output.read_text())
    else:
        doc = fit(args.trace)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(to_json(doc))
        print(f"wrote {args.output}")
    report(doc)


if __name__ == "__main__":
    main()
