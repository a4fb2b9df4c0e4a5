"""The run's report: PNG plots of the training figures and ``report.md`` with the results table.

Plots are drawn with matplotlib's object API (``Figure``), so no GUI backend or global pyplot
state is involved. Every figure comes from the in-memory recorders of the run
(:class:`sb3_klppo.cli.UpdateRecorder`, :class:`sb3_klppo.cli.RolloutRecorder`); the latency
CDF comes from the evaluation harness.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from sb3_klppo.cli import RunSummary

MODEL_NAME = "klppo"
"""Name of the trained router in the evaluation table."""
LOWER_BOUND_ROW = "lower_bound"
"""The harness's no-queueing bound: a reference line, not a router to compare with."""
COMPARED_METRICS = (("e2e_mean", "mean E2E"), ("e2e_p99", "p99 E2E"), ("ttft_mean", "mean TTFT"), ("ttft_p99", "p99 TTFT"))
"""Metrics (lower is better) on which the trained router is compared with every heuristic."""
TABLE_COLUMNS = ("e2e_mean", "e2e_p50", "e2e_p99", "ttft_mean", "ttft_p50", "ttft_p99", "throughput", "restarts")


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------


def _series(history: Sequence[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
    """(timesteps, values) of one figure, skipping updates where it is missing or NaN."""
    points = [(h["timesteps"], h[key]) for h in history if key in h and h[key] is not None and math.isfinite(h[key])]
    return [p[0] for p in points], [p[1] for p in points]


def _figure(height: float) -> Figure:
    """A new figure; matplotlib is imported here so the CLI starts fast when it draws nothing."""
    from matplotlib.figure import Figure

    return Figure(figsize=(6.4, height))


def _save(figure: Figure, path: pathlib.Path) -> pathlib.Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


def plot_approx_kl(updates: Sequence[dict[str, float]], target_kl: float | None, path: pathlib.Path) -> pathlib.Path:
    """approx_kl per update against the target: updates above the line drifted too far."""
    figure = _figure(3.6)
    ax = figure.add_subplot()
    x, y = _series(updates, "approx_kl")
    ax.plot(x, y, marker=".", label="approx_kl")
    if target_kl is not None:
        ax.axhline(target_kl, color="tab:red", linestyle="--", label=f"target_kl = {target_kl:g}")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("nats")
    ax.set_title("approx_kl per update")
    ax.legend()
    return _save(figure, path)


def plot_kl_schedule(updates: Sequence[dict[str, float]], entropy_min: float | None, path: pathlib.Path) -> pathlib.Path:
    """Reference-KL coefficient and measured reference KL (top); policy entropy and its floor (bottom)."""
    figure = _figure(6.0)
    top, bottom = figure.subplots(2, 1, sharex=True)
    top.plot(*_series(updates, "ref_kl_coef"), color="tab:purple", label="ref_kl_coef")
    top.set_ylabel("coefficient")
    twin = top.twinx()
    twin.plot(*_series(updates, "ref_kl"), color="tab:orange", marker=".", label="KL(pi || pi_ref)")
    twin.set_ylabel("nats")
    top.set_title("reference KL: coefficient and value")
    top.legend(handles=top.get_lines() + twin.get_lines(), loc="upper right")
    bottom.plot(*_series(updates, "entropy"), marker=".", label="entropy")
    if entropy_min is not None:
        bottom.axhline(entropy_min, color="tab:red", linestyle="--", label=f"entropy_min = {entropy_min:g}")
    bottom.set_xlabel("environment steps")
    bottom.set_ylabel("nats")
    bottom.set_title("policy entropy")
    bottom.legend()
    return _save(figure, path)


def plot_learning_curve(rollouts: Sequence[dict[str, float]], path: pathlib.Path) -> pathlib.Path:
    """Mean reward per step of each rollout, and the mean return of recent episodes."""
    figure = _figure(5.6)
    top, bottom = figure.subplots(2, 1, sharex=True)
    top.plot(*_series(rollouts, "mean_reward"), marker=".")
    top.set_ylabel("mean reward per step (env units)")
    top.set_title("learning curve")
    bottom.plot(*_series(rollouts, "ep_rew_mean"), marker=".", color="tab:green")
    bottom.set_ylabel("episode return (last 100)")
    bottom.set_xlabel("environment steps")
    return _save(figure, path)


# ---------------------------------------------------------------------------------------------
# Tables and text
# ---------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def results_table(rows: dict[str, dict], teacher: str | None) -> str:
    """Markdown table of every policy's metrics (seconds; throughput in requests/s), with the
    mean-E2E difference to the teacher when there is one."""
    columns = [c for c in TABLE_COLUMNS if any(c in row for row in rows.values())]
    header = ["policy", *columns] + (["mean E2E vs teacher"] if teacher in rows else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in rows.items():
        cells = [name, *(_fmt(row.get(c)) for c in columns)]
        if teacher in rows:
            cells.append(f"{100 * (row['e2e_mean'] / rows[teacher]['e2e_mean'] - 1):+.2f}%")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparisons(rows: dict[str, dict], model: str, baselines: Sequence[str]) -> list[str]:
    """One line per baseline: where the trained router wins and loses, metric by metric."""
    ours, lines = rows[model], []
    for name in baselines:
        theirs = rows[name]
        parts = []
        for key, label in COMPARED_METRICS:
            if key in ours and key in theirs and theirs[key]:
                change = 100 * (ours[key] / theirs[key] - 1)
                parts.append(f"{label} {'better' if change < 0 else 'worse' if change > 0 else 'equal'} ({change:+.2f}%)")
        lines.append(f"- vs `{name}`: " + "; ".join(parts))
    return lines


def acceptance(rows: dict[str, dict], model: str, teacher: str | None) -> list[str]:
    """The main job's bar: mean E2E at most 1% above the teacher's, below round_robin's and lor's."""
    checks = []
    ours = rows[model]["e2e_mean"]
    if teacher in rows:
        bound = 1.01 * rows[teacher]["e2e_mean"]
        checks.append(f"- mean E2E <= 1.01 x teacher `{teacher}` ({ours:.4g} vs {bound:.4g} s): "
                      f"{'PASS' if ours <= bound else 'FAIL'}")
    for name in ("round_robin", "lor"):
        if name in rows:
            checks.append(f"- mean E2E < `{name}` ({ours:.4g} vs {rows[name]['e2e_mean']:.4g} s): "
                          f"{'PASS' if ours < rows[name]['e2e_mean'] else 'FAIL'}")
    return checks


STALLED_KL = 1e-7
"""approx_kl below this for the last updates means the policy no longer changes."""
STALL_WINDOW = 3
"""Updates inspected by the stall warning."""
UNIFORM_FRACTION = 0.98
"""Entropy above this share of its maximum (ln N) means the policy prefers no action."""


def health_warnings(kl: Sequence[float], entropy: Sequence[float], entropy_min: float | None,
                    max_entropy: float | None) -> list[str]:
    """The failure modes our runs showed, spelled out: collapse, a dead policy, no preference."""
    warnings = []
    if entropy and entropy_min is not None and min(entropy) < entropy_min:
        warnings.append("- WARNING: entropy fell below entropy_min: the policy is collapsing towards a deterministic one")
    if len(kl) >= STALL_WINDOW and max(kl[-STALL_WINDOW:]) < STALLED_KL:
        warnings.append(f"- WARNING: approx_kl < {STALLED_KL:g} in the last {STALL_WINDOW} updates: the policy has "
                        "stopped changing (saturated network or vanished gradients)")
    if entropy and max_entropy and entropy[-1] > UNIFORM_FRACTION * max_entropy:
        warnings.append(f"- WARNING: final entropy {entropy[-1]:.4g} is within {100 * (1 - UNIFORM_FRACTION):.0f}% of "
                        f"the maximum {max_entropy:.4g}: the policy is still (nearly) uniform")
    return warnings


def training_health(updates: Sequence[dict[str, float]], target_kl: float | None, entropy_min: float | None,
                    max_entropy: float | None = None) -> list[str]:
    """Figures that reveal a collapsing, dead or runaway policy (never hidden: read them before the table)."""
    if not updates:
        return ["- no PPO update ran"]
    _, kl = _series(updates, "approx_kl")
    _, entropy = _series(updates, "entropy")
    _, ref_kl = _series(updates, "ref_kl")
    lines = [f"- updates: {len(updates)}"]
    if kl:
        over = sum(k > target_kl for k in kl) if target_kl else 0
        lines.append(f"- approx_kl: first {kl[0]:.4g}, last {kl[-1]:.4g}, max {max(kl):.4g}"
                     + (f"; above target_kl={target_kl:g} in {over} of {len(kl)} updates" if target_kl else ""))
    if entropy:
        lines.append(f"- entropy (nats): first {entropy[0]:.4g}, last {entropy[-1]:.4g}, min {min(entropy):.4g}"
                     + (f" (floor {entropy_min:g})" if entropy_min is not None else "")
                     + (f", maximum possible {max_entropy:.4g}" if max_entropy else ""))
    if ref_kl:
        lines.append(f"- KL(pi || pi_ref): first {ref_kl[0]:.4g}, last {ref_kl[-1]:.4g}, max {max(ref_kl):.4g}")
    return lines + health_warnings(kl, entropy, entropy_min, max_entropy)


def max_entropy(action_space: Any) -> float | None:
    """``ln N`` for a ``Discrete(N)`` action space (None for others)."""
    n = getattr(action_space, "n", None)
    return math.log(int(n)) if n else None


def _bc_lines(bc: Any, resumed: bool) -> list[str]:
    if bc is None:
        return [] if resumed else ["No warm start."]
    val = "" if bc.val_accuracy is None else f", held-out accuracy {bc.val_accuracy:.3f}"
    return [f"Behaviour cloning: {bc.n_samples} expert decisions, {bc.epochs} epochs, "
            f"training accuracy {bc.train_accuracy:.3f}{val} "
            f"(log-likelihood {bc.train_log_likelihood:.3f} nats/decision)."]


def summary_json(summary: RunSummary) -> dict[str, Any]:
    """Machine-readable run summary (timings, cloning, training figures, evaluation rows)."""
    bc = summary.bc_report
    return {
        "timings_s": summary.timings,
        "behaviour_cloning": None if bc is None else {
            "train_accuracy": bc.train_accuracy, "val_accuracy": bc.val_accuracy,
            "train_log_likelihood": bc.train_log_likelihood, "n_samples": bc.n_samples},
        "kl_schedule_step": summary.model.kl_schedule_step,
        "num_timesteps": summary.model.num_timesteps,
        "updates": summary.callbacks.updates.history,
        "rollouts": summary.callbacks.rollouts.history,
        "evaluation": None if summary.evaluation is None else summary.evaluation.rows,
    }


def write_report(summary: RunSummary) -> pathlib.Path:
    """Write the plots, ``summary.json``, ``evaluation.json`` and ``report.md``; return the report's path."""
    config, out = summary.config, summary.output_dir
    kl = config.kl_regularization
    updates, rollouts = summary.callbacks.updates.history, summary.callbacks.rollouts.history
    plots = {
        "approx_kl vs target_kl": plot_approx_kl(updates, kl.target_kl, out / "approx_kl.png"),
        "reference-KL coefficient and entropy": plot_kl_schedule(updates, kl.entropy_min, out / "kl_schedule.png"),
        "learning curve": plot_learning_curve(rollouts, out / "learning_curve.png"),
    }
    (out / "summary.json").write_text(json.dumps(summary_json(summary), indent=2, default=str) + "\n")

    teacher = config.warm_start.expert if config.warm_start.enabled and not config.resume else None
    lines = [f"# Training report: `{type(summary.model.policy).__name__}` on `{config.env.id}`", ""]
    lines += [f"Config used: `config_used.json`. Output: `{out}`. Model: `model.zip` "
              f"({summary.model.num_timesteps} env steps, {summary.model.kl_schedule_step} gradient steps).", ""]
    lines += [*summary.notes, *_bc_lines(summary.bc_report, bool(config.resume)), ""]
    lines += ["Wall time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in summary.timings.items()), ""]
    lines += ["## Training health", "", *training_health(updates, kl.target_kl, kl.entropy_min, max_entropy(summary.model.action_space)), ""]
    if summary.evaluation is not None:
        rows = summary.evaluation.rows
        summary.evaluation.to_json(out / "evaluation.json")
        summary.evaluation.plot_latency_cdf(out / "latency_cdf.png")
        plots = {"latency CDF per router": out / "latency_cdf.png", **plots}
        baselines = [name for name in rows if name not in (MODEL_NAME, LOWER_BOUND_ROW)]
        lines += ["## Evaluation", "",
                  f"{config.evaluation.episodes} episodes per policy on the same workloads (seed {config.evaluation.seed}); "
                  "latencies in seconds, lower is better.", "",
                  results_table(rows, teacher), "", "### Where the trained router wins and loses", "",
                  *comparisons(rows, MODEL_NAME, baselines), "", "### Acceptance", "",
                  *acceptance(rows, MODEL_NAME, teacher), ""]
    lines += ["## Plots", ""] + [f"### {title}\n\n![{title}]({path.name})\n" for title, path in plots.items()]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
