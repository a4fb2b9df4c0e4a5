"""How much Vidur main's own latencies move from one cold fit of its random forests to another.

Why this exists: Vidur main times iterations with scikit-learn random forests that it fits on the
profiling CSVs the first time it runs (then caches). It builds ``RandomForestRegressor()``
without a ``random_state``, so two cold caches hold different forests and different predicted
times. Near saturation (vLLM at high load) TTFT is very sensitive to iteration times (scaling
Vidur's predictions by 1.001 moves its TTFT mean by 3%, see ``fidelity_vs_vidur.py``), so the
reference itself is only reproducible to within some spread. This script measures that spread,
and places our default-flags result (our own seeded forests, ``vidur_env.time_model.forest``,
since they became the default; before, interpolated profiles) against it.

What it does, without Vidur installed (scikit-learn is needed; ``pip install scikit-learn``):

1. Trains the forests as Vidur main does (our own code, following its predictor): one forest
   per op, on the profiling rows of the model (shape and TP 1 filters, duplicates dropped, in
   file order); linear ops on ``num_tokens``, decode attention on ``(batch_size,
   kv_cache_size)``, prefill attention on ``(kv_cache_size, prefill_chunk_size**2)``; a grid
   search over ``n_estimators`` 250/500/750, ``max_depth`` 8/16/32, ``min_samples_split``
   2/5/10, 10-fold unshuffled CV scored by mean absolute percentage error (0 when truth and
   prediction are both 0, 100 when only the truth is), refit on all rows. Vidur also fits
   ``attn_kv_cache_save``, whose column these profiles lack (Vidur fills it with zeros, so its
   forest predicts 0); it is not fitted here and our prediction reader never reads it.
2. Predicts Vidur's grids (tokens 1..4096; decode batch 1..128 x KV 0..4096 step 64; prefill
   KV 0..4096 step 64 x chunk 1..4096) and writes them as main's
   ``<op>_<tag>_predictions.pkl`` files, which ``fidelity_vs_vidur.VidurPredictions`` reads
   (with Vidur main's own files that path matches Vidur main per request to 1e-13).
3. Replays the reference workloads (the first 3000 requests of splitwise_conv, arrivals scaled
   by 0.45 "moderate" and 0.28 "high", as ``vidur_reference.py``) through our simulator timed by
   each fit, and once with default flags (``simulate --profiling-dir``; ``--simulate-flags``
   adds flags, e.g. ``"--profile-fit interpolate"``), and prints TTFT
   (``prefill_e2e_time``) and E2E mean/p50/p99 per fit, the spread between fits (max/min - 1)
   and our default relative to the fits' mean and range.

``--search first`` (default) runs the grid search only for the first fit and refits the later
ones with the hyperparameters it chose and new seeds: the search is nearly all of the cost (about
30 minutes per fit on this project's 2 shared cores, even with the shortcut described in
:func:`search_params`; a refit with fixed hyperparameters takes seconds). ``--search every``
searches on every fit, so the hyperparameter choice varies too, as it can between cold Vidur
runs. Fits are kept under ``--work-dir`` (``fit_<seed>/``, one ``<op>.json`` per finished op) and
reused by later runs, whatever ``--search`` says. ``--swaps`` also replaces one part of the first
fit's times (linear ops, decode or prefill attention) by our interpolation at a time, to show
which part our default's distance to the forests comes from.

    python benchmarks/forest_spread.py --fits 6 --work-dir /tmp/forest_spread --swaps
    python benchmarks/forest_spread.py --fits 7 --search every --work-dir /tmp/forest_spread --swaps

Measured before the forests became the default, so "default flags" below are interpolated
profiles, what ``--simulate-flags "--profile-fit interpolate"`` gives now (7 fits, scikit-learn 1.9.1: seeds 0-5 with seed 0's hyperparameters, seed 6 with its
own search, which chose differently for 6 of the 11 forests): at high vLLM load the fits' TTFT
mean spans 0.7% (0.1653-0.1665 s), p50 1.1%, p99 7.2% (1.129-1.210 s), E2E mean/p50/p99
0.2-0.4%; at the other three settings every spread is within 2.6% (Sarathi high, TTFT p99). So
Vidur main's high-load vLLM TTFT p99 is itself reproducible only to about 7% between cold
caches, but its mean to under 1%. Default flags are outside that spread there: TTFT mean +6.6%
from the fits' mean (+6.3% to +7.1% from each fit), p99 +13.4% (+10.0% to +18.0%), E2E mean
+1.1%, p99 +1.9%; elsewhere within 0.9% of the fits' mean (inside their range for Sarathi, at
most 0.7% above it for vLLM at moderate load). ``--swaps`` (vLLM, high load, against seed 0):
interpolating only the linear ops moves TTFT +6.0% (mean) and +12.5% (p99), only decode
attention +1.8% and +4.7%, only prefill attention -0.7% and -1.3%. The linear-op profile has
steps (per layer 0.303 ms at 64 tokens, 0.355 at 72; 0.383 at 128, 0.550 at 136) which every
fit smooths (seeds 0-5: +3.4% to +5.0% at 128 tokens, -9.0% to -7.6% at 136), so the gap is
systematic, not seed noise. Wall time on the shared 2 cores: about 30 minutes per searched fit,
seconds per refit, about 2 s per simulation.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import pickle
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Optional

import numpy as np

from fidelity_vs_vidur import (COMPARED, STATS, VidurPredictions, read_request_metrics, run_cli,
                               simulate_with_predictions, simulate_with_time_model)
from vidur_reference import VidurRunSpec, read_trace_prefix, replayed_requests
from vidur_env.cluster import build_time_models
from vidur_env.config import ClusterConfig
from vidur_env.hardware import ModelSpec, get_model
from vidur_env.metrics import summarize
from vidur_env.time_model import ExecutionTimeModel
from vidur_env.time_model.profiles import LINEAR_OPS_OPTIONAL, LINEAR_OPS_REQUIRED, profile_paths

#: Vidur main's random-forest hyperparameter grid (its predictor config defaults).
PARAM_GRID = {"n_estimators": [250, 500, 750], "max_depth": [8, 16, 32], "min_samples_split": [2, 5, 10]}
#: Vidur main's ``k_fold_cv_splits`` (2 when a training set has fewer rows).
CV_FOLDS = 10
#: Vidur main's prediction grid: tokens per request / prefill chunk, batch size, KV step.
MAX_TOKENS, MAX_BATCH, KV_GRANULARITY = 4096, 128, 64
#: Vidur main's attention block size filter (its replica scheduler default).
BLOCK_SIZE = 16
#: Time scales of the reference workloads (``vidur_reference.py``): 10.6 and 17.0 req/s.
LOADS = {"moderate": 0.45, "high": 0.28}
SCHEDULERS = ("vllm", "sarathi")
MODEL, DEVICE, NETWORK = "meta-llama/Llama-2-7b-hf", "a100", "a100_dgx"
TRACE_COLUMNS = ("arrived_at", "num_prefill_tokens", "num_decode_tokens")
LINEAR_OPS = LINEAR_OPS_REQUIRED + LINEAR_OPS_OPTIONAL


@dataclass(frozen=True)
class TrainingSet:
    """One forest's training rows, in Vidur's row order (it matters: the CV folds are unshuffled)."""

    features: "object"  # pandas DataFrame of the feature columns
    target: np.ndarray
    grid: "object"  # pandas DataFrame of the points Vidur predicts, same columns


def mape_percent(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Mean absolute percentage error with Vidur's rule for a zero truth (0 if predicted 0, else 100)."""
    truth, predicted = np.asarray(truth, dtype=float), np.asarray(predicted, dtype=float)
    errors = np.where(predicted == 0, 0.0, 100.0)
    nonzero = truth != 0
    errors[nonzero] = np.abs((truth[nonzero] - predicted[nonzero]) / truth[nonzero]) * 100
    return float(errors.mean())


def training_sets(profiling_dir: Path, model: ModelSpec) -> dict[str, TrainingSet]:
    """The rows and prediction grid of every forest our prediction reader needs."""
    import pandas as pd

    paths = profile_paths(profiling_dir, DEVICE, model.name, NETWORK)
    mlp = pd.read_csv(paths["mlp"]).drop_duplicates()
    mlp = mlp[(mlp["n_head"] == model.num_q_heads) & (mlp["n_kv_head"] == model.num_kv_heads)
              & (mlp["n_embd"] == model.hidden_size) & (mlp["n_expanded_embd"] == model.ffn_size)
              & (mlp["use_gated_mlp"] == model.gated_mlp) & (mlp["num_tensor_parallel_workers"] == 1)]
    tokens = pd.DataFrame({"num_tokens": np.arange(1, MAX_TOKENS + 1)})
    sets = {}
    for op in LINEAR_OPS:
        column = f"time_stats.{op}.median"
        target = mlp[column].fillna(0).to_numpy() if column in mlp else np.zeros(len(mlp))
        sets[op] = TrainingSet(mlp[["num_tokens"]], target, tokens)
    attention = pd.read_csv(paths["attention"]).drop_duplicates()
    attention = attention[(attention["n_embd"] == model.hidden_size) & (attention["n_q_head"] == model.num_q_heads)
                          & (attention["n_kv_head"] == model.num_kv_heads) & (attention["block_size"] == BLOCK_SIZE)
                          & (attention["num_tensor_parallel_workers"] == 1)].copy()
    attention["prefill_chunk_size_squared"] = attention["prefill_chunk_size"] ** 2
    decode, prefill = attention[attention["prefill_chunk_size"] == 0], attention[attention["prefill_chunk_size"] != 0]
    kv = np.arange(0, MAX_TOKENS + 1, KV_GRANULARITY)
    batch_kv = np.array(list(product(range(1, MAX_BATCH + 1), kv)))
    kv_chunk = np.array(list(product(kv, range(1, MAX_TOKENS + 1))))
    sets["attn_decode"] = TrainingSet(
        decode[["batch_size", "kv_cache_size"]], decode["time_stats.attn_decode.median"].to_numpy(),
        pd.DataFrame({"batch_size": batch_kv[:, 0], "kv_cache_size": batch_kv[:, 1]}))
    sets["attn_prefill"] = TrainingSet(
        prefill[["kv_cache_size", "prefill_chunk_size_squared"]], prefill["time_stats.attn_prefill.median"].to_numpy(),
        pd.DataFrame({"kv_cache_size": kv_chunk[:, 0], "prefill_chunk_size_squared": kv_chunk[:, 1] ** 2}))
    return sets


def search_params(data: TrainingSet, seed: int, n_jobs: int) -> dict:
    """Vidur's grid search: the hyperparameters with the lowest mean MAPE over unshuffled CV folds.

    One shortcut, which halves the cost: per fold, depth and min_samples_split, a single forest of
    the largest ``n_estimators`` is grown and its first 250 and 500 trees score the smaller sizes
    (a forest's trees are drawn independently, so its first n trees are an n-tree forest).
    Candidates are visited in scikit-learn's ``ParameterGrid`` order; the first best wins, as in
    ``GridSearchCV``.
    """
    from joblib import Parallel, delayed
    from sklearn.model_selection import KFold

    features, target = data.features.to_numpy(dtype=np.float32), data.target
    folds = list(KFold(CV_FOLDS if len(target) >= CV_FOLDS else 2).split(features))
    shapes = list(product(PARAM_GRID["max_depth"], PARAM_GRID["min_samples_split"]))
    errors = Parallel(n_jobs=n_jobs)(
        delayed(_subforest_errors)(features, target, train, test, depth, split, seed)
        for depth, split in shapes for train, test in folds
    )
    best, best_error = None, np.inf
    for index, (depth, split) in enumerate(shapes):
        per_fold = errors[index * len(folds):(index + 1) * len(folds)]
        for trees in PARAM_GRID["n_estimators"]:
            error = float(np.mean([fold[trees] for fold in per_fold]))
            if error < best_error:
                best, best_error = {"max_depth": depth, "min_samples_split": split, "n_estimators": trees}, error
    return best


def _subforest_errors(features: np.ndarray, target: np.ndarray, train: np.ndarray, test: np.ndarray,
                      depth: int, split: int, seed: int) -> dict[int, float]:
    """Test-fold MAPE of the first n trees of one forest, for every grid ``n_estimators``."""
    from sklearn.ensemble import RandomForestRegressor

    forest = RandomForestRegressor(n_estimators=max(PARAM_GRID["n_estimators"]), max_depth=depth,
                                   min_samples_split=split, random_state=seed)
    forest.fit(features[train], target[train])
    per_tree = np.stack([tree.predict(features[test]) for tree in forest.estimators_])
    running_mean = np.cumsum(per_tree, axis=0) / np.arange(1, len(per_tree) + 1)[:, None]
    return {trees: mape_percent(target[test], running_mean[trees - 1]) for trees in PARAM_GRID["n_estimators"]}


def fit_predictions(data: TrainingSet, params: dict, seed: int, n_jobs: int) -> tuple[dict, float]:
    """A forest with ``params`` fitted on all rows; its predictions on Vidur's grid and training MAPE."""
    from sklearn.ensemble import RandomForestRegressor

    forest = RandomForestRegressor(**params, random_state=seed, n_jobs=n_jobs).fit(data.features, data.target)
    values = forest.predict(data.grid)
    keys = [tuple(int(v) for v in row) for row in data.grid.to_numpy()]
    return dict(zip(keys, values.tolist())), mape_percent(data.target, forest.predict(data.features))


def ensure_fit(fit_dir: Path, seed: int, sets: dict[str, TrainingSet], chosen: Optional[dict], n_jobs: int) -> dict:
    """Write one fit's prediction files into ``fit_dir``, op by op, skipping ops already there;
    op -> {params, training MAPE, searched, wall seconds}.

    ``chosen`` (op -> params) fixes the hyperparameters; None runs Vidur's grid search.
    """
    fit_dir.mkdir(parents=True, exist_ok=True)
    record = {}
    for op, data in sets.items():
        done = fit_dir / f"{op}.json"
        if not done.is_file():
            started = time.perf_counter()
            params = search_params(data, seed, n_jobs) if chosen is None else chosen[op]
            predictions, mape = fit_predictions(data, params, seed, n_jobs)
            with open(fit_dir / f"{op}_seed{seed}_predictions.pkl", "wb") as handle:
                pickle.dump(predictions, handle, protocol=pickle.HIGHEST_PROTOCOL)
            done.write_text(json.dumps({"params": params, "training_mape_percent": mape, "searched": chosen is None,
                                        "wall_s": time.perf_counter() - started}))
        record[op] = json.loads(done.read_text())
        print(f"  fit {seed} {op}: {record[op]['params']}, training MAPE {record[op]['training_mape_percent']:.2f}%"
              + (" (searched)" if record[op]["searched"] else ""), flush=True)
    return record


def write_trace(spec: VidurRunSpec, path: Path) -> None:
    """The requests Vidur replays for ``spec`` (arrivals scaled, prompts cut) as a trace for ``simulate``."""
    requests = replayed_requests(read_trace_prefix(Path(spec.trace), spec.num_requests), spec)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(TRACE_COLUMNS)
        writer.writerows((repr(r.arrived_at), r.num_prefill_tokens, r.num_decode_tokens) for r in requests)


def latency_stats(path: Path) -> dict[str, float]:
    """``metric stat`` -> value for TTFT and E2E of one request_metrics.csv."""
    metrics = read_request_metrics(path)
    return {f"{name} {stat}": summarize(metrics[name])[stat] for name in COMPARED for stat in STATS}


def run_case(trace: Path, scheduler: str, profiling_dir: Path, fit_dirs: list[Path], work: Path,
             simulate_flags: list[str]) -> dict:
    """Latency stats of one workload under every fit's predictions and under our default flags
    (plus ``simulate_flags``)."""
    out = work / "ours.csv"
    argv = ["simulate", "--trace", str(trace), "--scheduler", scheduler, "--router", "round_robin",
            "--max-tokens", str(MAX_TOKENS), "--output-csv", str(out)]
    fits = []
    for fit_dir in fit_dirs:
        simulate_with_predictions(argv, "main", fit_dir, out)
        fits.append(latency_stats(out))
    run_cli(argv + ["--profiling-dir", str(profiling_dir)] + simulate_flags)
    return {"fits": fits, "default": latency_stats(out)}


class MixedSource(ExecutionTimeModel):
    """A forest fit's predictions with one part (``PARTS``) answered by our default interpolated model
    instead: how much of the default's distance to the forests that part accounts for."""

    PARTS = ("linear", "decode", "prefill")

    def __init__(self, forest: ExecutionTimeModel, interpolated: ExecutionTimeModel, part: str) -> None:
        super().__init__(forest.model, forest.device, forest.tp, keying=forest.keying,
                         kv_granularity=forest.kv_granularity)
        self.part = part
        self._source = {name: interpolated if name == part else forest for name in self.PARTS}

    def linear_ms(self, tokens: int) -> float:
        return self._source["linear"].linear_ms(tokens)

    def all_reduce_ms(self, tokens: int) -> float:
        return 0.0  # TP1 only, as the prediction reader

    def decode_attention_ms(self, batch_size: int, kv: int) -> float:
        return self._source["decode"].decode_attention_ms(batch_size, kv)

    def prefill_attention_ms(self, kv: int, chunk: int) -> float:
        return self._source["prefill"].prefill_attention_ms(kv, chunk)

    def describe(self) -> str:
        return f"forest predictions with {self.part} interpolated: {self._describe_setup()}"


def run_swaps(trace: Path, scheduler: str, profiling_dir: Path, fit_dir: Path, work: Path) -> dict[str, dict]:
    """Latency stats with each part of ``fit_dir``'s forest times replaced by our interpolated one,
    and with all of them (``--profile-fit interpolate``)."""
    out = work / "ours.csv"
    argv = ["simulate", "--trace", str(trace), "--scheduler", scheduler, "--router", "round_robin",
            "--max-tokens", str(MAX_TOKENS), "--output-csv", str(out), "--profiling-dir", str(profiling_dir),
            "--profile-fit", "interpolate"]
    swaps = {}
    for part in MixedSource.PARTS:
        def mixed(cluster: ClusterConfig) -> ExecutionTimeModel:
            forest = VidurPredictions(fit_dir, "main", cluster.replica.model, cluster.replica.device,
                                      keying=cluster.keying, kv_granularity=cluster.kv_granularity)
            return MixedSource(forest, build_time_models(cluster)[0], part)

        simulate_with_time_model(argv, mixed, out)
        swaps[part] = latency_stats(out)
    run_cli(argv)
    swaps["all"] = latency_stats(out)
    return swaps


def print_swaps(case: dict) -> None:
    """Each part's share: the stats with only that part interpolated, relative to the first fit."""
    first = case["fits"][0]
    print(f"{'only this part interpolated':<24}" + "".join(f"{part:>9}" for part in case["swaps"])
          + "   (relative to fit 0)")
    for key in first:
        row = [case["swaps"][part][key] for part in case["swaps"]]
        print(f"{key:<24}" + "".join(f"{value / first[key] - 1:>+9.1%}" for value in row))


def print_case(label: str, case: dict) -> dict[str, float]:
    """Table of one workload; returns the spread (max/min - 1) per metric."""
    fits, default = case["fits"], case["default"]
    print(f"\n{label}")
    print(f"{'metric':<24}" + "".join(f"{'fit ' + str(i):>9}" for i in range(len(fits)))
          + f"{'spread':>9}{'default':>9}{'vs mean':>9}{'vs min':>9}{'vs max':>9}")
    spreads = {}
    for key in default:
        values = np.array([fit[key] for fit in fits])
        spreads[key] = values.max() / values.min() - 1
        print(f"{key:<24}" + "".join(f"{v:>9.4f}" for v in values) + f"{spreads[key]:>9.1%}{default[key]:>9.4f}"
              + "".join(f"{default[key] / ref - 1:>+9.1%}" for ref in (values.mean(), values.min(), values.max())))
    return spreads


def require(condition: bool, message: str) -> None:
    """Exit with ``message`` (status 2) when a prerequisite is absent."""
    if not condition:
        print(f"forest_spread: {message}", file=sys.stderr)
        raise SystemExit(2)


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    shared = Path(os.environ.get("VIDUR_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiling-dir", type=Path, default=shared / "vidur" / "profiling")
    parser.add_argument("--trace", type=Path, default=shared / "vidur" / "processed_traces" / "splitwise_conv.csv")
    parser.add_argument("--num-requests", type=int, default=3000)
    parser.add_argument("--fits", type=int, default=3, help="number of forest fits (seeds first-seed...)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--search", choices=("first", "every"), default="first",
                        help="grid-search the first fit only (later fits reuse its choice) or every fit")
    parser.add_argument("--n-jobs", type=int, default=2, help="sklearn worker processes (the machine is shared)")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "forest_spread",
                        help="where fits are kept and reused")
    parser.add_argument("--fit-only", action="store_true", help="make the fits, skip the simulations")
    parser.add_argument("--simulate-flags", type=shlex.split, default=[],
                        help="flags added to the default-flags run, e.g. \"--profile-fit interpolate\"")
    parser.add_argument("--swaps", action="store_true",
                        help="also replace one part (linear ops, decode or prefill attention) of the first fit's "
                             "times by our interpolation at a time, to see which part the default's distance comes from")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    missing = [name for name in ("sklearn", "pandas") if importlib.util.find_spec(name) is None]
    require(not missing, f"needs {' and '.join(missing)} (pip install scikit-learn pandas; benchmark only)")
    for path in (args.profiling_dir, args.trace):
        require(path.exists(), f"shared data absent: {path} (set VIDUR_SHARED_DATA)")
    require(args.fits >= 2, "--fits must be at least 2 to measure a spread")
    sets = training_sets(args.profiling_dir, get_model(MODEL))
    fit_dirs, chosen = [], None
    for seed in range(args.first_seed, args.first_seed + args.fits):
        fit_dir = args.work_dir / f"fit_{seed}"
        print(f"fit {seed} ({fit_dir})", flush=True)
        record = ensure_fit(fit_dir, seed, sets, chosen if args.search == "first" else None, args.n_jobs)
        chosen = chosen or {op: entry["params"] for op, entry in record.items()}
        fit_dirs.append(fit_dir)
    if args.fit_only:
        return
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as work:
        trace = Path(work) / "trace.csv"
        for load, scale in LOADS.items():
            spec = VidurRunSpec(vidur_python=Path(sys.executable), profiling_dir=args.profiling_dir, trace=args.trace,
                                num_requests=args.num_requests, time_scale=scale, out_dir=Path(work))
            write_trace(spec, trace)
            for scheduler in SCHEDULERS:
                label = f"{scheduler}, {load} load (time scale {scale})"
                results[label] = run_case(trace, scheduler, args.profiling_dir, fit_dirs, Path(work), args.simulate_flags)
                results[label]["spread"] = print_case(label, results[label])
                if args.swaps:
                    results[label]["swaps"] = run_swaps(trace, scheduler, args.profiling_dir, fit_dirs[0], Path(work))
                    print_swaps(results[label])
    (args.work_dir / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\nfits: {', '.join(str(d) for d in fit_dirs)} (search: {args.search}); results in {args.work_dir / 'results.json'}")


if __name__ == "__main__":
    main()
