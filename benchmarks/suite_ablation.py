"""The KL ablation of docs/kl_regularization.md: several suites, one per setting, side by side.

Each suite is a ``python -m sb3_klppo suite`` directory trained with one setting (the commands
are in docs/kl_regularization.md, section 7); this prints, per scenario and setting, the
trained router against the best heuristic per figure (paired 95% intervals over the held-out
episodes, the trained figure the mean over seeds), the spread of the seeds, and the verdict.

    python benchmarks/suite_ablation.py default=runs/suite no_warm_start=runs/abl_nows ...
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from sb3_klppo.suite_report import FIGURES, TITLES, against_best, interval, verdict


def load(spec: str) -> tuple[str, dict]:
    """``NAME=DIR`` -> (NAME, the suite's scenarios)."""
    name, sep, directory = spec.partition("=")
    if not sep:
        raise SystemExit(f"suite_ablation.py: expected NAME=DIR, got {spec!r}")
    path = Path(directory) / "suite.json"
    if not path.is_file():
        raise SystemExit(f"suite_ablation.py: no suite.json in {directory}")
    return name, json.loads(path.read_text())["scenarios"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suites", nargs="+", metavar="NAME=DIR")
    args = parser.parse_args()
    suites = dict(load(spec) for spec in args.suites)
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


if __name__ == "__main__":
    main()
