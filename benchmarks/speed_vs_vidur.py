"""Speed against Vidur itself: routing decisions per second on the identical request list.

Runs the real Vidur (through ``vidur_reference.py``, whose driver times ``Simulator.run``'s
event loop in process CPU time, setup and output writing excluded) and then ``vidur_env`` on
the very requests Vidur replayed, with the same cluster (4 x Llama-2-7B on A100, Sarathi 512,
round robin) and the same profiling CSVs, in one invocation; prints both rates and their
ratio. Vidur runs once (it is slow); ours runs once with a cold time-model memo, as Vidur's
first pass, and then ``--repeats`` times warm. Both figures are CPU time of one process.

Vidur's random forests must already be trained in ``--cache-dir`` (the first Vidur run on a
new cache trains them for about 82 minutes on 2 cores; see ``vidur_reference.py``)::

    python benchmarks/speed_vs_vidur.py --vidur-python /work/vidur-venv/bin/python \\
        --cache-dir /work/fidelity/vidur_cache --time-scale 0.28 --out /tmp/speed_high
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from fidelity_vs_vidur import add_time_model_flags, read_reference, simulate_ours, time_model
from vidur_reference import VidurRunSpec, run_reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vidur-python", type=Path, required=True)
    parser.add_argument("--trace", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared/data/vidur/processed_traces/splitwise_conv.csv")
    parser.add_argument("--num-requests", type=int, default=3000)
    parser.add_argument("--time-scale", type=float, default=0.28, help="0.28: about 87%% of saturation")
    parser.add_argument("--cache-dir", type=Path, required=True, help="Vidur's trained predictor cache")
    parser.add_argument("--out", type=Path, required=True, help="where Vidur's run is written")
    parser.add_argument("--repeats", type=int, default=5)
    add_time_model_flags(parser)
    args = parser.parse_args()

    spec = VidurRunSpec(vidur_python=args.vidur_python, profiling_dir=Path(args.profiling_dir), trace=args.trace,
                        num_requests=args.num_requests, time_scale=args.time_scale, out_dir=args.out,
                        cache_dir=args.cache_dir, kv_cache_prediction_granularity=args.kv_granularity)
    summary = run_reference(spec)
    requests, _, _ = read_reference(args.out)
    n = len(requests.arrived_at)
    vidur_rate = n / summary["event_loop_cpu_s"]

    model = time_model(args)
    rates = []
    for _ in range(1 + args.repeats):
        start = time.process_time()
        simulate_ours(requests, model, spec.max_tokens)
        rates.append(n / (time.process_time() - start))
    cold, warm = rates[0], max(rates[1:])

    print(f"{n} requests at {summary['offered_qps']:.2f} req/s offered, Vidur's mean batch "
          f"{summary['mean_batch_size']:.1f}, {summary['num_batches']} batches")
    print(f"Vidur 0.0.26 event loop        : {vidur_rate:>9,.0f} decisions/s ({summary['event_loop_cpu_s']:.1f} s CPU)")
    print(f"vidur_env, cold time-model memo: {cold:>9,.0f} decisions/s  ({cold / vidur_rate:.0f}x Vidur)")
    print(f"vidur_env, warm, best of {args.repeats}     : {warm:>9,.0f} decisions/s  ({warm / vidur_rate:.0f}x Vidur)")


if __name__ == "__main__":
    main()
