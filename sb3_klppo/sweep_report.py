"""The sweep's aggregate report: per configuration every metric's mean and t interval over
seeds, the ranking, the best configuration against the runner-up seed by seed (a paired t-test on
identical workloads), and every trial that did not finish; ``sweep.json`` and ``sweep.md``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from sb3_klppo.sweep_plan import METRIC_MODES, SweepPlan
from sb3_klppo.sweep_trials import NOT_RUN, OK, read_record, trial_record
from vidur_env.student_t import CONFIDENCE, mean_half_width, t_central_mass

SWEEP_JSON, SWEEP_MD = "sweep.json", "sweep.md"


# ---------------------------------------------------------------------------------------------
# Statistics over seeds (the t distribution is vidur_env.student_t's)
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Mean of a sample with its t confidence interval (None below two values)."""

    n: int
    mean: float | None
    std: float | None
    ci_low: float | None
    ci_high: float | None

    @property
    def half_width(self) -> float | None:
        return None if self.ci_high is None else (self.ci_high - self.ci_low) / 2

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "std": self.std,
                "ci95": None if self.ci_low is None else [self.ci_low, self.ci_high]}


def estimate(values: Iterable[float | None], confidence: float = CONFIDENCE) -> Estimate:
    """Mean, sample std and t interval of the finite values (missing and NaN ones are not counted)."""
    sample = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = sample.size
    if n == 0:
        return Estimate(0, None, None, None, None)
    mean = float(sample.mean())
    if n == 1:
        return Estimate(1, mean, None, None, None)
    std = float(sample.std(ddof=1))
    half = mean_half_width(std, n, confidence)
    return Estimate(n, mean, std, mean - half, mean + half)


def paired_p_value(differences: Estimate) -> float | None:
    """Two-sided p-value of the paired t-test that the mean difference is 0."""
    if differences.n < 2:
        return None
    if differences.std == 0:
        return 0.0 if differences.mean != 0 else 1.0
    t = differences.mean / (differences.std / math.sqrt(differences.n))
    return 1.0 - t_central_mass(t, differences.n - 1)


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def trial_rows(plan: SweepPlan, search: str) -> list[dict[str, Any]]:
    """Every trial of the sweep: its record, or a ``not run`` row for a planned trial without one
    (a grid search plans them all; an Optuna search only what it sampled)."""
    rows = []
    for configuration in plan.configurations():
        for seed in plan.seeds:
            record = read_record(plan.record_path(configuration, seed))
            if record is not None:
                rows.append(record)
            elif search == "grid":
                rows.append(trial_record(plan, configuration, seed, NOT_RUN,
                                         error="no record: the trial did not finish (interrupted?); run the sweep again"))
    return rows


def paired_comparison(best: Mapping[int, float], other: Mapping[int, float], mode: str) -> dict[str, Any]:
    """``best - other`` seed by seed (same seed, same workloads) with its CI and paired t-test."""
    seeds = sorted(set(best) & set(other))
    differences = estimate([best[s] - other[s] for s in seeds])
    p_value = paired_p_value(differences)
    if differences.ci_low is None:
        verdict = "too few common seeds for a confidence interval"
    elif (differences.ci_high < 0) if mode == "min" else (differences.ci_low > 0):
        verdict = f"better with {CONFIDENCE:.0%} confidence"
    else:
        verdict = f"not distinguishable at {CONFIDENCE:.0%} confidence (the interval includes 0; more seeds narrow it)"
    return {"seeds": seeds, "difference": differences.to_json(), "p_value": p_value, "verdict": verdict}


def aggregate(plan: SweepPlan, rows: Sequence[Mapping[str, Any]], search: str) -> dict[str, Any]:
    """The sweep's report: per configuration every metric's mean and CI over seeds, the ranking by
    ``plan.metric``, the best configuration against the runner-up, and every failed trial."""
    labels = {c.index: c for c in plan.configurations()}
    by_config: dict[int, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_config.setdefault(row["configuration"], []).append(row)
    configurations = []
    for index, trials in sorted(by_config.items()):
        ok = [t for t in trials if t["status"] == OK]
        configurations.append({
            "name": labels[index].name, "index": index, "label": labels[index].label,
            "overrides": labels[index].overrides, "seeds_ok": [t["seed"] for t in ok],
            "trials": [{key: t.get(key) for key in ("seed", "status", "run_dir", "metrics", "error")} for t in trials],
            "metrics": {m: estimate(t["metrics"].get(m) for t in ok).to_json() for m in METRIC_MODES},
        })
    mode = METRIC_MODES[plan.metric]
    ranked = sorted((c for c in configurations if c["metrics"][plan.metric]["n"]),
                    key=lambda c: (c["metrics"][plan.metric]["mean"] * (1 if mode == "min" else -1), c["index"]))
    report: dict[str, Any] = {
        "base_config": plan.source, "output_dir": str(plan.output_dir), "search": search,
        "seeds": list(plan.seeds), "grid": {axis.key: list(axis.values) for axis in plan.axes},
        "metric": plan.metric, "mode": mode, "confidence": CONFIDENCE,
        "ranking": [c["name"] for c in ranked], "best": None, "comparison": None,
        "configurations": configurations,
        "failed": [{"name": labels[r["configuration"]].name, "label": r["label"], "seed": r["seed"],
                    "status": r["status"], "error": r.get("error")} for r in rows if r["status"] != OK],
    }
    if ranked:
        report["best"] = ranked[0]["name"]
    if len(ranked) > 1:
        per_seed = [{t["seed"]: t["metrics"][plan.metric] for t in c["trials"] if t["status"] == OK
                     and t["metrics"].get(plan.metric) is not None} for c in ranked[:2]]
        report["comparison"] = {"best": ranked[0]["name"], "runner_up": ranked[1]["name"],
                                **paired_comparison(per_seed[0], per_seed[1], mode)}
    return report


def _cell(estimate_json: Mapping[str, Any]) -> str:
    if estimate_json["mean"] is None:
        return "-"
    if estimate_json["ci95"] is None:
        return f"{estimate_json['mean']:.4g}"
    low, high = estimate_json["ci95"]
    return f"{estimate_json['mean']:.4g} ± {(high - low) / 2:.2g}"


def render_markdown(report: Mapping[str, Any]) -> str:
    """``sweep.md``: the table of means ± CI half-widths, the verdict on the best, the failures."""
    metric, mode = report["metric"], report["mode"]
    lines = [f"# Sweep over `{report['base_config']}`", "",
             f"Search: {report['search']}; seeds {', '.join(map(str, report['seeds']))}; "
             f"grid: {', '.join(report['grid']) or 'none'}. Each cell: mean over seeds ± half-width of the "
             f"{report['confidence']:.0%} t confidence interval (trained policy's evaluation; latencies in "
             "seconds, throughput in requests/s).", ""]
    header = ["configuration", "values", "seeds ok", *METRIC_MODES]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in report["configurations"]:
        cells = [c["name"], c["label"], f"{len(c['seeds_ok'])}/{len(c['trials'])}",
                 *(_cell(c["metrics"][m]) for m in METRIC_MODES)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"## Best by {metric} ({'lower' if mode == 'min' else 'higher'} is better)", ""]
    by_name = {c["name"]: c for c in report["configurations"]}
    if report["best"] is None:
        lines.append("No configuration finished a trial.")
    else:
        best = by_name[report["best"]]
        lines.append(f"`{best['name']}` ({best['label']}): {metric} {_cell(best['metrics'][metric])}.")
        lines.append(f"Ranking: {', '.join(report['ranking'])}.")
    comparison = report["comparison"]
    if comparison:
        difference = comparison["difference"]
        interval = "no interval" if difference["ci95"] is None else \
            f"{report['confidence']:.0%} CI [{difference['ci95'][0]:.4g}, {difference['ci95'][1]:.4g}]"
        p_value = "" if comparison["p_value"] is None else f", paired t-test p = {comparison['p_value']:.3g}"
        lines += ["", f"Against the runner-up `{comparison['runner_up']}`, seed by seed on the same workloads "
                  f"({len(comparison['seeds'])} seeds): {metric} difference {difference['mean']:.4g} "
                  f"({interval}{p_value}): {comparison['verdict']}."]
    if report["failed"]:
        lines += ["", "## Failed trials", ""]
        lines += [f"- `{f['name']}` seed {f['seed']} ({f['label']}): {f['status']}: {f['error']}" for f in report["failed"]]
    return "\n".join(lines) + "\n"


def write_report(plan: SweepPlan, search: str) -> dict[str, Any]:
    """Aggregate every record into ``sweep.json`` and ``sweep.md``; return the report."""
    report = aggregate(plan, trial_rows(plan, search), search)
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    (plan.output_dir / SWEEP_JSON).write_text(json.dumps(report, indent=2, default=str) + "\n")
    (plan.output_dir / SWEEP_MD).write_text(render_markdown(report))
    return report
