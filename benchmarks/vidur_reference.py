"""Run the real Vidur simulator on a trace prefix and summarise its per-request metrics.

Why this exists: ``vidur_env`` claims to reproduce Vidur. This script produces the reference
numbers it is compared against, by running Vidur itself (never imported: it runs in its own
interpreter, given by ``--vidur-python``) with one fixed, recorded set of flags, and by writing
the exact request list Vidur replayed so our simulator can replay the identical workload.
Vidur is only a benchmark tool here, never a dependency of the package.

Target build: the PyPI ``vidur`` 0.0.26 wheel (a newer fork of microsoft/vidur). That build
differs from the main branch in ways this script has to bridge:

* It has no profiling-file flags: it reads ``mlp.csv.xz``/``attention.csv.xz`` and
  ``all_reduce.csv.xz`` from Hugging Face *datasets* via ``snapshot_download``. We build an
  offline Hugging Face cache under ``--cache-dir`` holding xz copies of the CSVs from
  ``--profiling-dir`` and run with ``HF_HUB_OFFLINE=1``; its attempt to download pre-computed
  predictions then fails at once and it falls back to training its random forests locally.
* Its trace-replay generator reads Splitwise column names (``Date, Time, PromptTokenCount,
  CompletionTokenCount``) and keeps the rows of one date, with no request-count limit. We write
  the first ``--num-requests`` rows of the ``arrived_at,num_prefill_tokens,num_decode_tokens``
  trace in that format.
* Its defaults differ from the main branch (prefill scale 0.3, time scale 0.04, KV
  granularity 256, prediction grid up to 2M tokens per request); every one is set explicitly.

``--build main`` runs the microsoft/vidur main branch instead (``--vidur-source``: a checkout of
it, put first on ``PYTHONPATH``), the build whose profile layout and lookup keys ``vidur_env``'s
defaults follow: it reads the profiling CSVs and the ``arrived_at,num_prefill_tokens,
num_decode_tokens`` trace directly, and its defaults are the comparison setting already (KV
granularity 64, prediction grid up to 4096 tokens). Main ships no ``vidur/__init__.py``; if the
interpreter also has the PyPI ``vidur`` installed, that regular package shadows the checkout,
so add an empty ``vidur/__init__.py`` to the checkout (this script refuses to run otherwise).
Main trains 12 forests (about 3 minutes each on this project's shared cores) into
``--cache-dir``; later runs reuse them.

Trained models and the precomputed prediction grid are cached in ``--cache-dir`` (keyed by a
hash of the predictor settings), so only the first run trains: 13 random forests, each a
27-point grid search with 10-fold CV; 82 minutes on this project's 2 shared cores. Later runs
take about 15-25 s for 3000 requests. The grid itself is kept as
``<cache-dir>/predictions/<hash>/<op>.csv.xz`` (columns ``X_0[,X_1],prediction``, ms per
layer). The hash ignores the KV granularity: a cache built with a coarser granularity than a
later run lacks that run's keys and Vidur raises KeyError, so keep one cache per granularity.

Usage::

    python benchmarks/vidur_reference.py --vidur-python /work/vidur-venv/bin/python \\
        --profiling-dir ../shared/data/vidur/profiling \\
        --trace ../shared/data/vidur/processed_traces/splitwise_conv.csv \\
        --num-requests 3000 --time-scale 0.45 --out /tmp/vidur_ref/moderate

(time scale 0.45 is about 54% of the saturated throughput for this trace prefix, 0.28 about
87%; see each run's ``offered_qps`` and ``mean_batch_size``).
"""

from __future__ import annotations

import argparse
import csv
import json
import lzma
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

#: Date stamped on every converted trace row (the fork filters its trace by date).
TRACE_DATE = "2023-08-21"
#: Fake commit the offline Hugging Face cache points ``refs/main`` at.
FAKE_COMMIT = "0" * 40
#: Request-level metrics summarised (Vidur's names, in seconds).
SUMMARISED_METRICS = (
    "prefill_e2e_time",
    "request_e2e_time",
    "request_scheduling_delay",
    "decode_time_execution_plus_preemption_normalized",
)
#: Quantiles reported for each summarised metric.
QUANTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0}
#: Columns the input trace must have.
TRACE_COLUMNS = ("arrived_at", "num_prefill_tokens", "num_decode_tokens")
#: Marker of the event-loop timing line the driver prints.
EVENT_LOOP_MARKER = "VIDUR_EVENT_LOOP_CPU_S"
#: Vidur builds this script can run: the PyPI wheel and the microsoft/vidur main branch.
BUILDS = ("0.0.26", "main")
#: What ``python -m vidur.main`` does, plus the process CPU time of ``Simulator.run``'s event
#: loop alone (setup, predictor loading and output writing excluded), for speed comparisons.
#: Main registers its output writer with atexit; it is unregistered so output is written once.
VIDUR_DRIVER = f"""
import atexit, time
from vidur.config import SimulationConfig
from vidur.simulator import Simulator
from vidur.utils.random import set_seeds
config = SimulationConfig.create_from_cli_args()
set_seeds(config.seed)
simulator = Simulator(config)
write_output, simulator._write_output = simulator._write_output, lambda: None
atexit.unregister(write_output)
start = time.process_time()
simulator.run()
print("{EVENT_LOOP_MARKER}", time.process_time() - start, flush=True)
write_output()
"""


class VidurReferenceError(ValueError):
    """Bad input or a failed Vidur run, with the file/field it concerns."""


@dataclass(frozen=True)
class VidurRunSpec:
    """Everything that determines one Vidur reference run.

    The defaults are the comparison setting: Llama-2-7B on A100 (TP1, PP1), 4 replicas,
    Sarathi with 512-token chunks (or vLLM, ``scheduler="vllm"``), round-robin routing,
    random-forest execution times whose prediction grid matches the main branch (KV
    granularity 64, up to 4096 tokens).
    """

    vidur_python: Path
    profiling_dir: Path
    trace: Path
    num_requests: int
    time_scale: float
    out_dir: Path
    cache_dir: Optional[Path] = None
    num_replicas: int = 4
    scheduler: str = "sarathi"
    chunk_size: int = 512
    batch_size_cap: int = 128
    max_tokens: int = 4096
    kv_cache_prediction_granularity: int = 64
    model: str = "meta-llama/Llama-2-7b-hf"
    device: str = "a100"
    network_device: str = "a100_dgx"
    seed: int = 42
    timeout_s: float = 4 * 3600.0
    #: ``"0.0.26"`` (the PyPI wheel installed in ``vidur_python``) or ``"main"`` (a checkout of
    #: microsoft/vidur's main branch at ``vidur_source``, run with ``vidur_python``).
    build: str = "0.0.26"
    vidur_source: Optional[Path] = None
    #: Run Vidur under ``python -O``. The 0.0.26 build never resets a request's stage-token
    #: counter on restart (preemption), so its ``assert ... <= total_tokens`` in
    #: ``Request.on_batch_stage_end`` kills any run that preempts; the counter is otherwise
    #: unused without sequence pipeline parallelism, so dropping asserts changes no result.
    strip_asserts: bool = True

    def resolved_cache_dir(self) -> Path:
        """Cache shared by runs (next to ``out_dir`` unless given), so training happens once."""
        if self.cache_dir is not None:
            return Path(self.cache_dir).resolve()
        return Path(self.out_dir).resolve().parent / "vidur_cache"


@dataclass(frozen=True)
class ReplayedRequest:
    """One request exactly as Vidur replays it (after time scaling and the max_tokens cut)."""

    request_id: int
    arrived_at: float
    num_prefill_tokens: int
    num_decode_tokens: int


def _dataset_ids(spec: VidurRunSpec) -> tuple[str, str]:
    """Names of the fake compute and network profiling datasets for this model and device."""
    model = spec.model.split("/")[-1].lower()
    return (
        f"local/vidur-{spec.device}-{model}",
        f"local/vidur-{spec.network_device.replace('_', '-')}",
    )


def _hf_dataset_dir(cache_dir: Path, kind: str, dataset_id: str) -> Path:
    """Directory where ``snapshot_download(cache_dir=...)`` looks for a dataset repo."""
    folder = "datasets--" + dataset_id.replace("/", "--")
    return cache_dir / "profiling_data" / kind / folder


def _write_snapshot(repo_dir: Path, files: Dict[str, Path], config: dict) -> None:
    """Create one offline snapshot: ``refs/main`` plus xz-compressed CSVs and config.json."""
    snapshot = repo_dir / "snapshots" / FAKE_COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(FAKE_COMMIT)
    for name, source in files.items():
        if not source.is_file():
            raise VidurReferenceError(f"profiling file missing: {source}")
        with open(source, "rb") as src, lzma.open(snapshot / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    (snapshot / "config.json").write_text(json.dumps(config))


def prepare_profiling_cache(spec: VidurRunSpec) -> tuple[str, str]:
    """Expose ``--profiling-dir`` to Vidur as offline Hugging Face datasets; return their ids.

    Layout read: ``compute/<device>/<model>/{mlp,attention}.csv`` and
    ``network/<network_device>/all_reduce.csv`` (Vidur's profiling layout).
    """
    compute_id, network_id = _dataset_ids(spec)
    cache_dir = spec.resolved_cache_dir()
    compute_src = Path(spec.profiling_dir) / "compute" / spec.device / spec.model
    network_src = Path(spec.profiling_dir) / "network" / spec.network_device
    _write_snapshot(
        _hf_dataset_dir(cache_dir, "compute", compute_id),
        {
            "mlp.csv.xz": compute_src / "mlp.csv",
            "attention.csv.xz": compute_src / "attention.csv",
        },
        {"model": spec.model, "device_sku": spec.device},
    )
    _write_snapshot(
        _hf_dataset_dir(cache_dir, "network", network_id),
        {"all_reduce.csv.xz": network_src / "all_reduce.csv"},
        {"sku": spec.network_device},
    )
    return compute_id, network_id


def read_trace_prefix(trace: Path, num_requests: int) -> List[tuple[float, int, int]]:
    """First ``num_requests`` rows of an ``arrived_at,num_prefill_tokens,num_decode_tokens`` CSV."""
    if num_requests <= 0:
        raise VidurReferenceError(f"--num-requests must be positive, got {num_requests}")
    rows: List[tuple[float, int, int]] = []
    with open(trace, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in TRACE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise VidurReferenceError(f"{trace}: missing column(s) {missing}")
        for line_no, row in enumerate(reader, start=2):
            if len(rows) == num_requests:
                break
            try:
                rows.append(
                    (
                        float(row["arrived_at"]),
                        int(row["num_prefill_tokens"]),
                        int(row["num_decode_tokens"]),
                    )
                )
            except ValueError as exc:
                raise VidurReferenceError(f"{trace}, line {line_no}: {exc}") from exc
    if len(rows) < num_requests:
        raise VidurReferenceError(
            f"{trace}: has {len(rows)} requests, fewer than --num-requests {num_requests}"
        )
    return rows


def write_vidur_trace(rows: Sequence[tuple[float, int, int]], path: Path) -> None:
    """Write rows in the fork's replay format (unscaled: Vidur applies the time scale)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Date", "Time", "PromptTokenCount", "CompletionTokenCount"])
        for arrived_at, prefill, decode in rows:
            writer.writerow([TRACE_DATE, repr(arrived_at), prefill, decode])


def write_main_trace(rows: Sequence[tuple[float, int, int]], path: Path) -> None:
    """Write rows in main's replay format (the input's own columns, unscaled)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(TRACE_COLUMNS)
        for arrived_at, prefill, decode in rows:
            writer.writerow([repr(arrived_at), prefill, decode])


def check_main_source(spec: VidurRunSpec) -> Path:
    """The main checkout's root, refused unless ``vidur/__init__.py`` makes it win over an installed wheel."""
    if spec.vidur_source is None:
        raise VidurReferenceError("--build main needs --vidur-source (a checkout of microsoft/vidur main)")
    source = Path(spec.vidur_source).resolve()
    if not (source / "vidur" / "main.py").is_file():
        raise VidurReferenceError(f"--vidur-source {source}: no vidur/main.py (not a Vidur checkout)")
    if not (source / "vidur" / "__init__.py").is_file():
        raise VidurReferenceError(
            f"--vidur-source {source}: add an empty vidur/__init__.py, else an installed PyPI vidur shadows it"
        )
    return source


PREDICTOR = "--random_forrest_execution_time_predictor_config_"
TRACE = "--trace_request_generator_config_"


def shared_flags(spec: VidurRunSpec, trace: Path) -> dict[str, object]:
    """The flags both Vidur builds take alike: cluster, scheduler, trace and prediction grid."""
    return {
        "--seed": spec.seed,
        "--cluster_config_num_replicas": spec.num_replicas,
        "--replica_config_model_name": spec.model,
        "--replica_config_device": spec.device,
        "--replica_config_network_device": spec.network_device,
        "--replica_config_tensor_parallel_size": 1,
        "--replica_config_num_pipeline_stages": 1,
        "--global_scheduler_config_type": "round_robin",
        "--replica_scheduler_config_type": spec.scheduler,
        f"--{spec.scheduler}_scheduler_config_batch_size_cap": spec.batch_size_cap,
        "--request_generator_config_type": "trace_replay",
        TRACE + "trace_file": trace,
        TRACE + "max_tokens": spec.max_tokens,
        TRACE + "prefill_scale_factor": 1,
        TRACE + "decode_scale_factor": 1,
        TRACE + "time_scale_factor": spec.time_scale,
        "--execution_time_predictor_config_type": "random_forrest",
        PREDICTOR + "kv_cache_prediction_granularity": spec.kv_cache_prediction_granularity,
        PREDICTOR + "prediction_max_tokens_per_request": spec.max_tokens,
        PREDICTOR + "prediction_max_prefill_chunk_size": spec.max_tokens,
        PREDICTOR + "prediction_max_batch_size": spec.batch_size_cap,
    }


def vidur_command(spec: VidurRunSpec, flags: dict[str, object]) -> List[str]:
    """The driver invocation with ``flags`` (and Sarathi's chunk size), traces and plots off."""
    if spec.scheduler == "sarathi":
        flags = {**flags, "--sarathi_scheduler_config_chunk_size": spec.chunk_size}
    command = [str(spec.vidur_python), *(["-O"] if spec.strip_asserts else []), "-c", VIDUR_DRIVER]
    for flag, value in flags.items():
        command += [flag, str(value)]
    return command + [
        "--no-metrics_config_enable_chrome_trace",
        "--no-metrics_config_store_plots",
        "--metrics_config_keep_individual_batch_metrics",
    ]


def build_main_command(spec: VidurRunSpec, trace: Path, output_root: Path) -> List[str]:
    """The invocation of Vidur main: its defaults, with the cluster, scheduler, profiles and trace pinned."""
    compute = Path(spec.profiling_dir).resolve() / "compute" / spec.device / spec.model
    network = Path(spec.profiling_dir).resolve() / "network" / spec.network_device
    return vidur_command(spec, {
        **shared_flags(spec, trace),
        PREDICTOR + "compute_input_file": compute / "mlp.csv",
        PREDICTOR + "attention_input_file": compute / "attention.csv",
        PREDICTOR + "all_reduce_input_file": network / "all_reduce.csv",
        "--metrics_config_output_dir": output_root,
        "--metrics_config_cache_dir": spec.resolved_cache_dir(),
    })


def replayed_requests(
    rows: Sequence[tuple[float, int, int]], spec: VidurRunSpec
) -> List[ReplayedRequest]:
    """The requests as Vidur builds them, so another simulator can replay the same list.

    Mirrors the fork's trace-replay generator with scale factors 1: tokens clipped to >= 1,
    the prompt (only) shortened so prompt + output <= max_tokens, arrival times multiplied
    by the time scale; ids are row positions (Vidur numbers requests from 0 in file order).
    """
    requests = []
    for request_id, (arrived_at, prefill, decode) in enumerate(rows):
        prefill, decode = max(prefill, 1), max(decode, 1)
        prefill -= max(prefill + decode - spec.max_tokens, 0)
        if prefill < 1:
            raise VidurReferenceError(
                f"request {request_id}: {decode} output tokens leave no prompt under "
                f"max_tokens {spec.max_tokens}"
            )
        requests.append(
            ReplayedRequest(request_id, arrived_at * spec.time_scale, prefill, decode)
        )
    return requests


def build_command(
    spec: VidurRunSpec, vidur_trace: Path, dataset_ids: tuple[str, str], output_root: Path
) -> List[str]:
    """The Vidur invocation (``vidur.main`` via :data:`VIDUR_DRIVER`, every default that
    matters pinned)."""
    return vidur_command(spec, {
        **shared_flags(spec, vidur_trace),
        "--log_level": "info",
        TRACE + "date": TRACE_DATE,
        PREDICTOR + "model_profiling_dataset": dataset_ids[0],
        PREDICTOR + "network_profiling_dataset": dataset_ids[1],
        PREDICTOR + "cache_dir": spec.resolved_cache_dir(),
        "--metrics_config_output_dir": output_root,
    })


def _vidur_env(source: Optional[Path] = None) -> Dict[str, str]:
    """Environment that keeps Vidur offline (no HF downloads, no wandb), with ``source`` first on
    the import path when given."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", WANDB_MODE="disabled")
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH", "")]))
    return env


def run_vidur(
    command: Sequence[str], output_root: Path, log_path: Path, timeout_s: float, source: Optional[Path] = None
) -> Path:
    """Run Vidur, logging to ``log_path``; return its (timestamped) output directory."""
    output_root.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.run(
            list(command), stdout=log, stderr=subprocess.STDOUT, env=_vidur_env(source),
            cwd=output_root, timeout=timeout_s, check=False,
        )
    if proc.returncode != 0:
        raise VidurReferenceError(f"Vidur exited with code {proc.returncode}; see {log_path}")
    runs = sorted(p for p in output_root.iterdir() if (p / "request_metrics.csv").is_file())
    if not runs:
        raise VidurReferenceError(f"no request_metrics.csv under {output_root}; see {log_path}")
    return runs[-1]


def event_loop_cpu_seconds(log_path: Path) -> float:
    """The driver's timing of Vidur's event loop, from its log."""
    for line in log_path.read_text().splitlines():
        if line.startswith(EVENT_LOOP_MARKER):
            return float(line.split()[1])
    raise VidurReferenceError(f"{log_path}: no {EVENT_LOOP_MARKER} line (was Vidur run through VIDUR_DRIVER?)")


def read_request_metrics(path: Path) -> Dict[int, Dict[str, float]]:
    """Vidur's request_metrics.csv as {request id: {metric: value}}."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if "Request Id" not in (reader.fieldnames or []):
            raise VidurReferenceError(f"{path}: no 'Request Id' column")
        return {
            int(float(row["Request Id"])): {
                k: float(v) for k, v in row.items() if k != "Request Id" and v != ""
            }
            for row in reader
        }


def distribution(values: Sequence[float]) -> Dict[str, float]:
    """Mean and quantiles (numpy's default linear interpolation)."""
    arr = np.asarray(values, dtype=float)
    stats = {"mean": float(arr.mean())}
    stats.update({name: float(np.percentile(arr, q)) for name, q in QUANTILES.items()})
    return stats


def batch_stats(batch_metrics_csv: Path) -> Dict[str, float]:
    """Busy seconds summed over replicas, and mean batch size / tokens per iteration.

    Mean batch size is the useful load indicator: under continuous batching a replica is
    busy whenever any request is in flight, so busy time is near 100% at any real load.
    """
    with open(batch_metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise VidurReferenceError(f"{batch_metrics_csv}: no batches")
    return {
        "busy_seconds": sum(float(r["batch_execution_time"]) for r in rows),
        "num_batches": len(rows),
        "mean_batch_size": sum(float(r["batch_size"]) for r in rows) / len(rows),
        "mean_batch_tokens": sum(float(r["batch_num_tokens"]) for r in rows) / len(rows),
    }


def vidur_busy_percent(run_dir: Path, num_replicas: int) -> List[float]:
    """Vidur's own time-weighted busy % per replica id (first to last batch of the replica).

    Vidur files replica r's stats under ``replica_{r}`` for r >= 1 but replica 0 under
    ``replica_{N}`` (it indexes a list by ``id - 1``); this returns them in replica-id order.
    """
    values = []
    for replica in range(num_replicas):
        label = f"replica_{(replica - 1) % num_replicas + 1}_stage_1_busy_time_percent"
        path = run_dir / "plots" / f"{label}.json"
        stats = json.loads(path.read_text()) if path.is_file() else {}
        values.append(stats.get(f"{label}_weighted_mean", math.nan))
    return values


def round_robin_replicas(requests: Sequence[ReplayedRequest], num_replicas: int) -> List[int]:
    """Replica of each request under Vidur's round robin: k-th arrival (ties by id) -> k mod N."""
    order = sorted(range(len(requests)), key=lambda i: (requests[i].arrived_at, i))
    replicas = [0] * len(requests)
    for position, index in enumerate(order):
        replicas[index] = position % num_replicas
    return replicas


def summarize(
    spec: VidurRunSpec, requests: Sequence[ReplayedRequest], run_dir: Path
) -> dict:
    """Summary of one run: latency distributions, load, restarts, and where the files are."""
    metrics = read_request_metrics(run_dir / "request_metrics.csv")
    missing = [r.request_id for r in requests if r.request_id not in metrics]
    if missing:
        raise VidurReferenceError(f"{len(missing)} requests have no metrics, e.g. {missing[:5]}")
    rows = [metrics[r.request_id] for r in requests]
    completion = [r.arrived_at + m["request_e2e_time"] for r, m in zip(requests, rows)]
    first_arrival = min(r.arrived_at for r in requests)
    makespan = max(completion) - first_arrival
    batches = batch_stats(run_dir / "batch_metrics.csv")
    return {
        "num_requests": len(requests),
        "arrival_span_s": max(r.arrived_at for r in requests) - first_arrival,
        "offered_qps": (len(requests) - 1)
        / max(max(r.arrived_at for r in requests) - first_arrival, 1e-9),
        "makespan_s": makespan,
        "busy_fraction": batches["busy_seconds"] / (spec.num_replicas * makespan),
        "mean_batch_size": batches["mean_batch_size"],
        "mean_batch_tokens": batches["mean_batch_tokens"],
        "num_batches": batches["num_batches"],
        "vidur_busy_percent_per_replica": vidur_busy_percent(run_dir, spec.num_replicas),
        "total_restarts": int(sum(m.get("request_num_restarts", 0.0) for m in rows)),
        "metrics": {
            name: distribution([m[name] for m in rows]) for name in SUMMARISED_METRICS
        },
    }


def write_requests_csv(
    path: Path, requests: Sequence[ReplayedRequest], run_dir: Path, num_replicas: int
) -> None:
    """Per-request replay inputs joined with Vidur's outcomes and round-robin replica."""
    metrics = read_request_metrics(run_dir / "request_metrics.csv")
    replicas = round_robin_replicas(requests, num_replicas)
    outcome_cols = ("prefill_e2e_time", "request_e2e_time", "request_scheduling_delay",
                    "request_num_restarts")
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["request_id", "arrived_at", "num_prefill_tokens", "num_decode_tokens",
                         "replica_id", *outcome_cols])
        for r, replica in zip(requests, replicas):
            m = metrics[r.request_id]
            writer.writerow([r.request_id, repr(r.arrived_at), r.num_prefill_tokens,
                             r.num_decode_tokens, replica,
                             *(repr(m[c]) for c in outcome_cols)])


def run_reference(spec: VidurRunSpec) -> dict:
    """Run Vidur for ``spec``; write summary.json, requests.csv and request_metrics.csv."""
    out_dir = Path(spec.out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = read_trace_prefix(Path(spec.trace), spec.num_requests)
    requests = replayed_requests(rows, spec)
    if spec.build not in BUILDS:
        raise VidurReferenceError(f"build must be one of {', '.join(BUILDS)}, got {spec.build!r}")
    vidur_trace = out_dir / "vidur_trace.csv"
    source = None
    if spec.build == "main":
        source = check_main_source(spec)
        write_main_trace(rows, vidur_trace)
        command = build_main_command(spec, vidur_trace, out_dir / "vidur_output")
    else:
        write_vidur_trace(rows, vidur_trace)
        command = build_command(spec, vidur_trace, prepare_profiling_cache(spec), out_dir / "vidur_output")
    started = time.perf_counter()
    run_dir = run_vidur(command, out_dir / "vidur_output", out_dir / "vidur.log", spec.timeout_s, source)
    wall = time.perf_counter() - started
    shutil.copy(run_dir / "request_metrics.csv", out_dir / "request_metrics.csv")
    write_requests_csv(out_dir / "requests.csv", requests, run_dir, spec.num_replicas)
    summary = {
        "spec": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(spec).items()},
        "command": command,
        "vidur_output_dir": str(run_dir),
        "wall_time_s": wall,
        "event_loop_cpu_s": event_loop_cpu_seconds(out_dir / "vidur.log"),
        "files": {"requests": "requests.csv", "request_metrics": "request_metrics.csv"},
        **summarize(spec, requests, run_dir),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def parse_args(argv: Optional[Sequence[str]] = None) -> VidurRunSpec:
    """CLI flags -> run spec."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vidur-python", type=Path, required=True,
                        help="python interpreter with Vidur's dependencies (and vidur 0.0.26 installed, for --build 0.0.26)")
    parser.add_argument("--profiling-dir", type=Path, required=True,
                        help="Vidur profiling root (compute/<device>/<model>/, network/<node>/)")
    parser.add_argument("--trace", type=Path, required=True,
                        help="CSV with arrived_at,num_prefill_tokens,num_decode_tokens")
    parser.add_argument("--num-requests", type=int, required=True,
                        help="replay the first N trace rows")
    parser.add_argument("--time-scale", type=float, required=True,
                        help="multiply arrival times by this (smaller = more load)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="Vidur predictor cache (default: <out>/../vidur_cache)")
    parser.add_argument("--num-replicas", type=int, default=4)
    parser.add_argument("--scheduler", choices=("sarathi", "vllm"), default="sarathi",
                        help="replica scheduler (Sarathi with 512-token chunks, or vLLM)")
    parser.add_argument("--build", choices=BUILDS, default="0.0.26",
                        help="Vidur build: the PyPI wheel in --vidur-python, or main from --vidur-source")
    parser.add_argument("--vidur-source", type=Path, default=None,
                        help="with --build main: a checkout of microsoft/vidur main")
    parser.add_argument("--kv-granularity", type=int, default=64,
                        help="kv_cache_prediction_granularity (main branch 64, fork default 256)")
    parser.add_argument("--timeout", type=float, default=4 * 3600.0, help="seconds")
    parser.add_argument("--keep-asserts", action="store_true",
                        help="run Vidur without -O (then any preemption crashes this build)")
    args = parser.parse_args(argv)
    return VidurRunSpec(
        vidur_python=args.vidur_python, profiling_dir=args.profiling_dir, trace=args.trace,
        num_requests=args.num_requests, time_scale=args.time_scale, out_dir=args.out,
        cache_dir=args.cache_dir, num_replicas=args.num_replicas, scheduler=args.scheduler,
        kv_cache_prediction_granularity=args.kv_granularity, timeout_s=args.timeout,
        strip_asserts=not args.keep_asserts, build=args.build, vidur_source=args.vidur_source,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: run and print the summary's headline numbers."""
    try:
        summary = run_reference(parse_args(argv))
    except (VidurReferenceError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    headline = {k: summary[k] for k in ("num_requests", "offered_qps", "mean_batch_size",
                                         "total_restarts", "wall_time_s", "event_loop_cpu_s")}
    print(json.dumps({**headline, "metrics": summary["metrics"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
