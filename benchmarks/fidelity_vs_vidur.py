"""Fidelity: our simulator against Vidur itself on the identical request list.

Reads the reference directories written by ``benchmarks/vidur_reference.py`` (Vidur's
per-request outcomes and the exact requests it replayed), replays the same requests through
``vidur_env`` with the same cluster (4 x Llama-2-7B, A100, TP1, Sarathi chunk 512, round
robin) and the same Vidur-format profiling CSVs, and prints TTFT and E2E (mean, p50, p99)
side by side with the relative difference.

    python benchmarks/fidelity_vs_vidur.py /work/fidelity/moderate /work/fidelity/high \\
        --profiling-dir ../shared/data/vidur/profiling

The profiled time model is keyed like the PyPI build Vidur runs here (``vidur_pypi``) with
its KV granularity pinned to 64 as in the reference runs; ``--time-model builtin`` compares
our calibrated presets instead (a different attention source, so larger gaps are expected).
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from vidur_env.cluster import ClusterSimulator
from vidur_env.config import ClusterConfig, ReplicaConfig
from vidur_env.metrics import RequestMetrics, summarize
from vidur_env.routers import make_router
from vidur_env.time_model import ExecutionTimeModel, builtin_time_model, profiled_time_model

MODEL, DEVICE = "meta-llama/Llama-2-7b-hf", "a100"
COMPARED = ("prefill_e2e_time", "request_e2e_time")
STATS = ("mean", "p50", "p99")


def read_reference(ref_dir: Path) -> tuple[SimpleNamespace, dict[str, np.ndarray], dict]:
    """The requests Vidur replayed, its per-request outcomes, and its run summary."""
    with open(ref_dir / "requests.csv") as handle:
        rows = list(csv.DictReader(handle))
    rows.sort(key=lambda row: int(row["request_id"]))
    requests = SimpleNamespace(
        arrived_at=np.array([float(r["arrived_at"]) for r in rows]),
        num_prefill_tokens=np.array([int(r["num_prefill_tokens"]) for r in rows]),
        num_decode_tokens=np.array([int(r["num_decode_tokens"]) for r in rows]),
    )
    outcomes = {name: np.array([float(r[name]) for r in rows]) for name in COMPARED}
    summary = json.loads((ref_dir / "summary.json").read_text())
    return requests, outcomes, summary


def time_model(args: argparse.Namespace) -> ExecutionTimeModel:
    """The execution-time model compared with Vidur's (see the module docstring)."""
    if args.time_model == "profiled":
        return profiled_time_model(args.profiling_dir, MODEL, DEVICE, 1, keying=args.keying,
                                   kv_granularity=args.kv_granularity, extrapolate=True)
    return builtin_time_model(MODEL, DEVICE, 1, keying=args.keying, kv_granularity=args.kv_granularity)


def simulate_ours(requests: SimpleNamespace, model: ExecutionTimeModel, max_tokens: int) -> ClusterSimulator:
    """Vidur's reference cluster in our simulator, run with round robin on ``requests``."""
    cluster = ClusterConfig(num_replicas=4, replica=ReplicaConfig(model=MODEL, device=DEVICE, scheduler="sarathi"))
    sim = ClusterSimulator(cluster, requests, max_tokens=max_tokens, time_models=[model] * 4)
    router = make_router("round_robin")
    router.reset(4, np.random.default_rng(0))
    sim.run(router)
    return sim


def compare(ref_dir: Path, args: argparse.Namespace) -> float:
    requests, vidur, summary = read_reference(ref_dir)
    sim = simulate_ours(requests, time_model(args), int(summary["spec"].get("max_tokens", 4096)))
    ours = RequestMetrics.from_simulator(sim)
    print(f"\n{ref_dir.name}: {len(requests.arrived_at)} requests, offered {summary.get('offered_qps', float('nan')):.2f} "
          f"req/s, Vidur's mean batch {summary.get('mean_batch_size', float('nan')):.1f}, restarts Vidur "
          f"{summary.get('total_restarts', 0)} / ours {int(ours.request_num_restarts.sum())}")
    print(f"{'metric':<24}{'Vidur':>10}{'ours':>10}{'diff':>9}")
    worst = 0.0
    for name in COMPARED:
        theirs, mine = summarize(vidur[name]), summarize(np.asarray(getattr(ours, name)))
        for stat in STATS:
            diff = mine[stat] / theirs[stat] - 1.0
            worst = max(worst, abs(diff))
            print(f"{name + ' ' + stat:<24}{theirs[stat]:>10.4f}{mine[stat]:>10.4f}{diff:>+9.1%}")
    per_request = np.abs(ours.request_e2e_time / vidur["request_e2e_time"] - 1.0)
    print(f"per-request E2E |relative difference|: median {np.median(per_request):.1%}, "
          f"p90 {np.percentile(per_request, 90):.1%}")
    return worst


def add_time_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profiling-dir", default=str(Path(__file__).resolve().parents[2] / "shared/data/vidur/profiling"))
    parser.add_argument("--time-model", choices=("profiled", "builtin"), default="profiled")
    parser.add_argument("--keying", choices=("vidur", "vidur_pypi"), default="vidur_pypi")
    parser.add_argument("--kv-granularity", type=int, default=64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference_dirs", nargs="+", type=Path, help="outputs of vidur_reference.py")
    add_time_model_flags(parser)
    args = parser.parse_args()
    worst = max(compare(ref_dir, args) for ref_dir in args.reference_dirs)
    print(f"\nlargest |difference| over TTFT/E2E mean, p50, p99: {worst:.1%} (target: within 5%)")


if __name__ == "__main__":
    main()
