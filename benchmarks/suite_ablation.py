"""The KL ablation of docs/kl_regularization.md: several suites, one per setting, side by side.

Each suite is a ``python -m sb3_klppo suite`` directory trained with one setting (the commands
are in docs/kl_regularization.md, section 7); this prints, per scenario and setting, the
trained router against the best heuristic per figure (paired 95% intervals over the held-out
episodes, the trained figure the mean over seeds), the spread of the seeds, and the verdict.
With ``--against NAME`` it also prints each other setting's trained router against that
setting's, paired on the same held-out episodes: what the knob itself moved.

    python benchmarks/suite_ablation.py default=runs/suite no_warm_start=runs/abl_nows ... [--against default]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sb3_klppo.suite_report import FIGURES, TITLES, against_best, interval, verdict
from vidur_env.paired import paired_difference


def fail(message: str) -> None:
    """One line on stderr, exit status 2: the input was unusable."""
    print(f"suite_ablation.py: {message}", file=sys.stderr)
    raise SystemExit(2)


def load(spec: str) -> tuple[str, dict]:
    """``NAME=DIR`` -> (NAME, the suite's scenarios)."""
    name, sep, directory = spec.partition("=")
    if not sep:
        fail(f"expected NAME=DIR, got {spec!r}")
    path = Path(directory) / "suite.json"
    if not path.is_file():
        fail(f"no suite.json in {directory}")
    return name, json.loads(path.read_text())["scenarios"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suites", nargs="+", metavar="NAME=DIR")
    parser.add_argument("--against", metavar="NAME", help="also pair every setting's trained router with this one's")
    args = parser.parse_args()
    suites = dict(load(spec) for spec in args.suites)
    if args.against is not None and args.against not in suites:
        fail(f"--against {args.against!r} is none of the settings: {', '.join(suites)}")
    scenarios = [s for s in next(iter(suites.values())) if all(s in suite for suite in suites.values())]
    print("| scenario | setting | " + " | ".join(TITLES[f] for f in FIGURES) + " | seed spread (TTFT p99) | verdict |")
    print("|---|---|" + "---|" * len(FIGURES) + "---|---|")
    for scenario in scenarios:
        for name, suite in suites.items():
            result = suite[scenario]
            diffs = against_best(result)
            spread = ", ".join(f"{x:+.1f}" for x in result["per_seed_vs_best_pct"]["ttft_p99"])
            cells = " | ".join(interval(diffs[f]) for f in FIGURES)
            print(f"| {scenario} | {name} | {cells} | {spread} | {verdict(result)} |")
    if args.against is not None:
        print_against(suites, scenarios, args.against)


def print_against(suites: dict[str, dict], scenarios: list[str], reference: str) -> None:
    """Each setting's trained router against ``reference``'s, paired by held-out episode."""
    print(f"\n| scenario | setting vs {reference} | " + " | ".join(TITLES[f] for f in FIGURES) + " |")
    print("|---|---|" + "---|" * len(FIGURES))
    for scenario in scenarios:
        base = suites[reference][scenario]["episodes"]["trained"]
        for name, suite in suites.items():
            if name == reference:
                continue
            ours = suite[scenario]["episodes"]["trained"]
            cells = " | ".join(str(paired_difference(ours[f], base[f])) for f in FIGURES)
            print(f"| {scenario} | {name} | {cells} |")


if __name__ == "__main__":
    main()
