"""The suite's results as ``suite.json`` and ``suite.md`` (with ``suite.png``).

``suite.json``: ``{"settings": {...}, "scenarios": {name: {...}}}`` where each scenario holds

- ``policies``: policy name -> ``e2e_mean``, ``e2e_p99``, ``ttft_mean``, ``ttft_p99`` (seconds,
  pooled over the evaluation episodes; the trained policy as ``trained``, deterministic, and
  ``trained_sampled``, each the mean over training seeds), plus ``lower_bound`` (the no-queueing bound);
- ``best_heuristic``: figure -> the heuristic with the least pooled value;
- ``paired``: ``trained`` / ``trained_sampled`` -> heuristic -> figure -> the episode-paired
  relative difference (``mean_pct``, ``half_width_pct`` of the 95% t interval, ``verdict``);
- ``per_seed_vs_best_pct``: figure -> each training seed's mean relative difference to the best;
- ``teacher``, ``training_seconds`` (per seed), ``run_dirs``, ``kept_steps`` (per seed, the
  training steps of the policy kept by ``monitoring.keep_best``; null without it), ``episodes`` (per-episode figures),
  and ``replay`` (the same comparison on a trace replay) when asked for.

``suite.md`` has one table per scenario and the verdict of issue 12's bar: a *win* is at least
10% better than the best heuristic on one figure with the interval excluding zero, while no
figure is more than 2% worse.
"""
from __future__ import annotations

import json
import math
import pathlib
from typing import Any

FIGURES = ("e2e_mean", "e2e_p99", "ttft_mean", "ttft_p99")
"""The figures every policy is judged on (lower is better)."""
TITLES = {"e2e_mean": "E2E mean", "e2e_p99": "E2E p99", "ttft_mean": "TTFT mean", "ttft_p99": "TTFT p99"}
WIN_PCT, WORSE_PCT = 10.0, 2.0
"""A win: some figure at least WIN_PCT better with the interval excluding zero, none more than WORSE_PCT worse."""


def finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None, recursively (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def against_best(result: dict[str, Any], row: str = "trained") -> dict[str, dict[str, Any]]:
    """Figure -> the paired difference of ``row`` to that figure's best heuristic (and its name)."""
    return {f: {"heuristic": result["best_heuristic"][f], **result["paired"][row][result["best_heuristic"][f]][f]}
            for f in FIGURES}


def verdict(result: dict[str, Any]) -> str:
    """``win``, ``tie or small`` or ``worse`` against the best heuristic per figure (see the module docstring)."""
    diffs = against_best(result)
    worst = max(d["mean_pct"] for d in diffs.values())
    wins = [f for f, d in diffs.items() if d["mean_pct"] <= -WIN_PCT and d["verdict"] == "better"]
    if wins and worst <= WORSE_PCT:
        return f"win ({', '.join(TITLES[f] for f in wins)})"
    if worst > WORSE_PCT:
        return f"worse by more than {WORSE_PCT:g}% ({', '.join(TITLES[f] for f, d in diffs.items() if d['mean_pct'] > WORSE_PCT)})"
    return "no 10% win"


def interval(d: dict[str, Any]) -> str:
    half = d.get("half_width_pct")
    return f"{d['mean_pct']:+.1f}%" + ("" if half is None else f" ± {half:.1f}%")


def policy_table(result: dict[str, Any]) -> list[str]:
    """The pooled figures of every policy, best heuristic per figure in bold."""
    lines = ["| policy | " + " | ".join(TITLES[f] for f in FIGURES) + " |", "|---" * (len(FIGURES) + 1) + "|"]
    best = result["best_heuristic"]
    for name, row in result["policies"].items():
        cells = [f"**{row[f]:.4g}**" if best[f] == name else f"{row[f]:.4g}" for f in FIGURES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def comparison_table(result: dict[str, Any]) -> list[str]:
    """Trained (deterministic and sampled) vs the best heuristic per figure, paired 95% intervals."""
    lines = ["| figure | best heuristic | trained vs best | trained_sampled vs best | per seed (trained) |",
             "|---|---|---|---|---|"]
    det, sampled = against_best(result), against_best(result, "trained_sampled")
    for f in FIGURES:
        seeds = ", ".join(f"{x:+.1f}%" for x in result["per_seed_vs_best_pct"][f])
        lines.append(f"| {TITLES[f]} | {det[f]['heuristic']} | {interval(det[f])} ({det[f]['verdict']}) | "
                     f"{interval(sampled[f])} ({sampled[f]['verdict']}) | {seeds} |")
    return lines


def markdown(results: dict[str, Any], settings: dict[str, Any]) -> str:
    traffic = f"{json.dumps(settings['traffic'])} over each scenario's" if settings.get("traffic") else "as registered"
    lines = ["# Scenario suite", "",
             f"{settings['seeds']} training seed(s) per scenario; {settings['episodes']} held-out evaluation "
             "episodes per policy, the same requests for every policy. Relative differences are paired by "
             "episode (negative: the trained router is better), with 95% t intervals; the trained figure of "
             "an episode is the mean over seeds. A difference whose interval includes 0 is a tie.",
             f"Base config: {settings['config'] or 'built-in defaults'}; overrides: "
             f"{json.dumps(settings['overrides']) if settings['overrides'] else 'none'}; env keywords: "
             f"{json.dumps(settings.get('env_kwargs')) if settings.get('env_kwargs') else 'as registered'}; "
             f"training distribution: {traffic}.", "",
             "![suite](suite.png)", "", "| scenario | teacher | verdict | training s/seed |", "|---|---|---|---|"]
    for name, result in results.items():
        seconds = sum(result["training_seconds"]) / len(result["training_seconds"])
        lines.append(f"| {name} | {result['teacher'] or 'none (no warm start)'} | {verdict(result)} | {seconds:.0f} |")
    for name, result in results.items():
        lines += ["", f"## {name}", "", result["description"] + ".", "", f"Simulated: {result['simulated']}.", ""]
        if result.get("kept_steps"):
            lines += ["Each seed ended with its best learning-curve policy (monitoring.keep_best), after "
                      + ", ".join(f"{steps:,}" for steps in result["kept_steps"]) + " training steps.", ""]
        lines += [*policy_table(result), "", *comparison_table(result)]
        if "replay" in result:
            replay = result["replay"]
            lines += ["", f"### Replay of {replay['trace']} at {replay['load']:g} of capacity", "",
                      f"Simulated: {replay['simulated']}.", "", *policy_table(replay), "", *comparison_table(replay)]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: pathlib.Path) -> None:
    """Trained vs best heuristic, per scenario and figure, with the paired intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(names)), 4))
    width = 0.8 / len(FIGURES)
    for k, f in enumerate(FIGURES):
        diffs = [against_best(results[n])[f] for n in names]
        xs = [i + (k - (len(FIGURES) - 1) / 2) * width for i in range(len(names))]
        errors = [d["half_width_pct"] or 0.0 for d in diffs]
        ax.bar(xs, [d["mean_pct"] for d in diffs], width, yerr=errors, capsize=2, label=TITLES[f])
    ax.axhline(0, color="black", linewidth=0.8)
    ax.axhline(-WIN_PCT, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("trained vs best heuristic (%), lower is better")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_suite(out: pathlib.Path, results: dict[str, Any], settings: dict[str, Any]) -> None:
    """``suite.json``, ``suite.md`` and ``suite.png`` in ``out``."""
    (out / "suite.json").write_text(json.dumps(finite({"settings": settings, "scenarios": results}), indent=2))
    plot(results, out / "suite.png")
    (out / "suite.md").write_text(markdown(results, settings))
