"""A long trace end to end: time, decisions/s and peak memory of ``simulate`` on 64 replicas.

Runs what ``python -m vidur_env simulate --num-replicas 64 --num-requests N --output-csv F``
runs (default scenario, round robin): workload draw, routing, drain, metrics, with the
per-request CSV streamed to a temporary file. Prints the wall time, routing decisions per
second, the peak resident set (``ru_maxrss``: the whole process, imports included), and the
peak's growth over the RSS before the run divided by N (bytes per request).

It also checks that the CSV was streamed rather than written at the end: a thread samples
the file's size while the run goes, and the run must have put rows on disk by the time half
of its wall time had passed (a file built at the end stays at its header until then).

    python benchmarks/bench_long_trace.py [--requests 10000000] [--replicas 64] [--router round_robin]
"""
from __future__ import annotations

import argparse
import os
import resource
import tempfile
import threading
import time
from dataclasses import replace

from vidur_env.routers import DEFAULT_ROUTER, ROUTERS
from vidur_env.simulation import Scenario, run_simulation

SAMPLE_SECONDS = 1.0
"""How often the watcher reads the CSV's size."""


def rss_bytes() -> int:
    """The current resident set of this process (Linux /proc)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """The peak resident set so far (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class SizeWatcher(threading.Thread):
    """Samples a file's size every :data:`SAMPLE_SECONDS` until stopped: (seconds since start, bytes)."""

    def __init__(self, path: str) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.samples: list[tuple[float, int]] = []
        self._stop_event = threading.Event()
        self._start = time.perf_counter()

    def run(self) -> None:
        while not self._stop_event.wait(SAMPLE_SECONDS):
            size = os.path.getsize(self.path) if os.path.exists(self.path) else 0
            self.samples.append((time.perf_counter() - self._start, size))

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def size_at(self, seconds: float) -> int:
        """The last size sampled at or before ``seconds`` (0 before the first sample)."""
        return max((size for t, size in self.samples if t <= seconds), default=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000_000)
    parser.add_argument("--replicas", type=int, default=64)
    parser.add_argument("--router", choices=sorted(ROUTERS), default=DEFAULT_ROUTER)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    base = Scenario()
    scenario = replace(base, cluster=replace(base.cluster, num_replicas=args.replicas),
                       workload=replace(base.workload, num_requests=args.requests))
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "requests.csv")
        before = rss_bytes()
        watcher = SizeWatcher(path)
        watcher.start()
        start = time.perf_counter()
        result = run_simulation(scenario, router=args.router, seed=args.seed, csv_path=path)
        wall = time.perf_counter() - start
        watcher.stop()
        peak = peak_rss_bytes()
        final_size = os.path.getsize(path)
        with open(path) as handle:
            rows = sum(1 for _ in handle) - 1
    halfway = watcher.size_at(wall / 2)
    print(f"{args.requests:,} requests on {args.replicas} replicas ({args.router}, default scenario, seed {args.seed})")
    print(f"  wall time           : {wall:,.1f} s (workload, routing, drain, metrics, CSV)")
    print(f"  decisions/s         : {args.requests / wall:,.0f}")
    print(f"  peak RSS            : {peak / 2**20:,.0f} MiB (ru_maxrss, whole process; {before / 2**20:,.0f} MiB "
          "before the run)")
    print(f"  bytes/request       : {(peak - before) / args.requests:,.1f} (peak growth over the run / requests)")
    print(f"  CSV                 : {rows:,} rows, {final_size / 2**20:,.1f} MiB; on disk at half the wall time: "
          f"{halfway / final_size:.0%} of it")
    streamed = halfway > 0.1 * final_size and rows == result.metrics["num_requests"]
    print(f"  streamed            : {'yes' if streamed else 'NO'}")
    if not streamed:
        raise SystemExit("the CSV was not written while the run went")


if __name__ == "__main__":
    main()
