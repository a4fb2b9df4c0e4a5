"""A suite's trained routers on clusters they were not trained on: does a policy read the replicas'
speeds from the observation, or did it learn its training cluster by heart?

Registered training distributions randomise load, burstiness and lengths
(:class:`vidur_env.scenarios.TrafficRange`), not the cluster (``suite --traffic '{"devices": [...]}'``
draws each replica's device too). The replica-set policy scores each replica from its own row (relative speed and KV
size among the columns) with one shared network, so it is not tied to replica positions; this
measures whether it is tied to its training *mix*. It loads the models a suite trained on
``--source`` (its ``scenario.json`` names their run directories) and evaluates them, as the suite
evaluates, on each target: the nominal traffic of a registered scenario (``--targets``), or the
source scenario with its replicas' devices replaced (``--mixes``, e.g. ``a100,a100,a100,h100``),
against every registered load-only heuristic on the same held-out episodes (paired 95% t
intervals per figure against the best one, the trained figure the mean over the seeds;
negative is better). Targets must have as many replicas as the source (the models' action space).

    python benchmarks/cluster_transfer.py runs/suite --source hetero \\
        --targets default mixed_tp --mixes a100,a100,a100,h100 a100,h100,h100,h100 [--episodes 40]

Measured 2026-12-03 on the models of ``suite --config configs/ppo_ttft.json --seeds 3
--episodes 40`` trained on ``hetero`` (2 x A100 + 2 x H100; on ``hetero`` itself -0.0% ± 0.1%,
+0.5% ± 1.0%, -11.0% ± 0.7%, -10.1% ± 2.4%), 40 episodes per target, E2E mean / E2E p99 /
TTFT mean / TTFT p99 against the best heuristic per figure:

    default (4 x A100)       -0.0% ± 0.0%  +0.9% ± 0.9%   -8.2% ± 0.8%  -5.3% ± 1.9%
    mixed_tp                 -0.2% ± 0.2%  -1.1% ± 1.2%   -8.6% ± 0.8%  -8.4% ± 2.5%
    a100,a100,a100,h100      -0.0% ± 0.1%  +2.0% ± 1.3%  -10.1% ± 0.8%  -6.0% ± 2.1%
    a100,h100,h100,h100      -0.1% ± 0.1%  +0.4% ± 1.2%  -11.0% ± 0.8%  -6.9% ± 3.5%
    h100,h100,h100,h100      +0.1% ± 0.0%  +1.5% ± 0.9%   -3.3% ± 0.6%  +1.0% ± 2.7%

On clusters it never saw (other mixes, other TP degrees, one device only) the router keeps E2E
within 2% and most of its TTFT gain; the gain shrinks on the cluster furthest from its
training mix (4 x H100).

``--against OTHER_SUITE`` also evaluates the other suite's models of the same source on each
target and prints this suite's router against them, paired by episode: how training with
device draws (``--traffic '{"devices": ["a100", "h100"]}'``) compares with the fixed mix on
each cluster. Measured 2026-12-03 (docs/kl_regularization.md section 7.4): p99 TTFT 2.4-3.8%
lower on four of the six clusters, mean TTFT 0.5-1.6% higher on three, E2E within 1.1%.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from sb3_klppo.suite import TRAINED, load_models, load_only_result
from sb3_klppo.suite_report import FIGURES, TITLES, against_best, interval, verdict
from vidur_env.paired import paired_difference
from vidur_env.scenarios import registered_scenario


def mix_kwargs(source: str, devices: list[str]) -> dict:
    """Env kwargs of scenario ``source`` with replica ``i`` on ``devices[i]`` (the rest of its
    replica config kept), at the scenario's nominal traffic and observation settings."""
    entry = registered_scenario(source)
    scenario = entry.make()
    replicas = scenario.cluster.replica_configs
    if len(devices) != len(replicas):
        raise SystemExit(f"cluster_transfer.py: --mixes needs {len(replicas)} devices (the source's replicas), "
                         f"got {len(devices)}")
    cluster = dataclasses.replace(scenario.cluster, replicas=tuple(
        dataclasses.replace(spec, device=device) for spec, device in zip(replicas, devices)))
    return {"scenario": dataclasses.replace(scenario, cluster=cluster), **entry.observation}


def trained_models(suite_dir: str, source: str) -> tuple[list, dict]:
    """The models a suite trained on ``source`` and the env keywords they were trained with
    (reward, predictor: what evaluation must match), less the scenario and its traffic."""
    result = json.loads((Path(suite_dir) / source / "scenario.json").read_text())
    config = json.loads((Path(result["run_dirs"][0]) / "config_used.json").read_text())
    kwargs = {key: value for key, value in config["env"]["kwargs"].items() if key not in ("scenario", "traffic")}
    return load_models(result["run_dirs"]), kwargs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite_dir")
    parser.add_argument("--source", default="hetero", help="the scenario whose trained models are moved")
    parser.add_argument("--targets", nargs="*", default=["default", "mixed_tp"], help="registered scenarios")
    parser.add_argument("--mixes", nargs="*", default=[], help="comma-separated device per replica")
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--against", metavar="SUITE_DIR",
                        help="another suite's models of the same source (e.g. trained without device draws): "
                             "also print this suite's router against them, paired by episode, per target")
    args = parser.parse_args()
    models, base = trained_models(args.suite_dir, args.source)
    others = trained_models(args.against, args.source) if args.against else None
    targets = [(name, registered_scenario(name).env_kwargs(False)) for name in args.targets]
    targets += [(mix, mix_kwargs(args.source, mix.split(","))) for mix in args.mixes]
    print(f"models trained on {args.source} ({len(models)} seeds), {args.episodes} held-out episodes per target")
    print("| target | " + " | ".join(TITLES[f] for f in FIGURES) + " | verdict |")
    print("|---|" + "---|" * len(FIGURES) + "---|")
    against_rows = []
    for name, kwargs in targets:
        result = load_only_result({**kwargs, **base}, models, args.episodes)
        diffs = against_best(result)
        cells = " | ".join(f"{interval(diffs[f])} ({diffs[f]['heuristic']})" for f in FIGURES)
        print(f"| {name} | {cells} | {verdict(result)} |", flush=True)
        if others is not None:
            other = load_only_result({**kwargs, **others[1]}, others[0], args.episodes)
            pairs = [paired_difference(result["episodes"][TRAINED][f], other["episodes"][TRAINED][f]).as_dict()
                     for f in FIGURES]
            against_rows.append(f"| {name} | " + " | ".join(interval(pair) for pair in pairs) + " |")
    if against_rows:
        print(f"\n{args.suite_dir}'s router against {args.against}'s (paired by episode; negative: better)")
        print("| target | " + " | ".join(TITLES[f] for f in FIGURES) + " |")
        print("|---|" + "---|" * len(FIGURES))
        print("\n".join(against_rows))


if __name__ == "__main__":
    main()
