"""The run's report: PNG plots of the training figures and ``report.md`` with the results table.

Plots are drawn with matplotlib's object API (``Figure``), so no GUI backend or global pyplot
state is involved. Every figure comes from the run's records (:mod:`sb3_klppo.records`); the
latency CDF and the per-episode figures come from the evaluation harness's result. Every
comparison between two policies is paired over the same evaluation episodes and carries its
95% t interval; a difference whose interval contains zero is reported as a tie.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sb3_klppo.config import TrainConfig, all_knobs, get_value

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from sb3_klppo.records import LearningCurve, RunSummary

MODEL_NAME = "klppo"
"""Name of the trained router in the evaluation table."""
SUMMARY_FILE = "summary.json"
"""The run's machine-readable summary (:func:`summary_json`), in its run directory."""
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


CURVE_PANELS = (("e2e_mean", "mean E2E (s)"), ("ttft_mean", "mean TTFT (s)"))
"""Learning-curve figures plotted, one panel each (lower is better)."""


def plot_learning_curve(curve: LearningCurve, path: pathlib.Path) -> pathlib.Path:
    """The policy evaluated on the same fixed seeds during training, against the teacher's level
    on those seeds (a horizontal line): every point routes the same workloads."""
    figure = _figure(5.6)
    axes = figure.subplots(len(CURVE_PANELS), 1, sharex=True)
    for ax, (key, label) in zip(axes, CURVE_PANELS):
        ax.plot(*_series(curve.points, key), marker="o", label="trained policy")
        if curve.kept is not None:
            point = curve.points[curve.kept]
            ax.plot([point["timesteps"]], [point[key]], marker="*", markersize=14, color="tab:green",
                    linestyle="none", label="kept (monitoring.keep_best)")
        if curve.reference is not None:
            ax.axhline(curve.reference[key], color="tab:red", linestyle="--", label=f"{curve.reference_name} (same seeds)")
        ax.set_ylabel(label)
        ax.legend(fontsize="small")
    seeds = f"seeds {curve.seeds[0]}..{curve.seeds[-1]}" if len(curve.seeds) > 1 else f"seed {curve.seeds[0]}"
    axes[0].set_title(f"learning curve: fixed-seed evaluation ({len(curve.seeds)} episode{'s' * (len(curve.seeds) > 1)}, {seeds})")
    axes[-1].set_xlabel("environment steps")
    return _save(figure, path)


# ---------------------------------------------------------------------------------------------
# Tables and text
# ---------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def results_table(result: Any, model: str, teacher: str | None) -> str:
    """Markdown table of every policy's metrics (seconds; throughput in requests/s), with the trained
    router's mean-E2E difference to the teacher, paired over episodes, when there is one."""
    rows = result.rows
    columns = [c for c in TABLE_COLUMNS if any(c in row for row in rows.values())]
    vs_teacher = teacher in rows and model in rows
    header = ["policy", *columns] + ([f"mean E2E vs `{teacher}` (95% CI)"] if vs_teacher else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in rows.items():
        cells = [name, *(_fmt(row.get(c)) for c in columns)]
        if vs_teacher:
            cells.append(_verdict_cell(result.compare(model, teacher, "e2e_mean")) if name == model else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _verdict_cell(difference: Any) -> str:
    return f"{difference} ({difference.verdict})"


def comparisons(result: Any, model: str, baselines: Sequence[str]) -> list[str]:
    """One line per baseline: metric by metric, better, worse or a tie on the paired interval."""
    lines = []
    for name in baselines:
        parts = [f"{label} {_describe(result.compare(model, name, key))}" for key, label in COMPARED_METRICS]
        lines.append(f"- vs `{name}`: " + "; ".join(parts))
    return lines


def _describe(difference: Any) -> str:
    return f"{difference.verdict} ({difference})"


def comparison_figures(result: Any, model: str, baselines: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The comparisons of :func:`comparisons` as JSON-ready figures, for ``summary.json``."""
    return {name: {key: result.compare(model, name, key).as_dict() for key, _ in COMPARED_METRICS}
            for name in baselines}


def acceptance(result: Any, model: str, teacher: str | None) -> list[str]:
    """The main job's bar on pooled means: mean E2E at most 1% above the teacher's, below
    round_robin's and lor's; each line also shows the paired difference and its verdict."""
    rows, checks = result.rows, []
    ours = rows[model]["e2e_mean"]

    def paired(name: str) -> str:
        difference = result.compare(model, name, "e2e_mean")
        return f"paired {difference}: {difference.verdict}"

    if teacher in rows:
        bound = 1.01 * rows[teacher]["e2e_mean"]
        checks.append(f"- mean E2E <= 1.01 x teacher `{teacher}` ({ours:.4g} vs {bound:.4g} s; {paired(teacher)}): "
                      f"{'PASS' if ours <= bound else 'FAIL'}")
    for name in ("round_robin", "lor"):
        if name in rows:
            theirs = rows[name]["e2e_mean"]
            checks.append(f"- mean E2E < `{name}` ({ours:.4g} vs {theirs:.4g} s; {paired(name)}): "
                          f"{'PASS' if ours < theirs else 'FAIL'}")
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


def non_default_settings(config: TrainConfig) -> list[str]:
    """Every config key whose value differs from the built-in default, with both values."""
    defaults = TrainConfig()
    lines = []
    for knob in all_knobs():
        ours, default = get_value(config, knob), get_value(defaults, knob)
        if ours != default:
            lines.append(f"- `{knob.key}` = `{json.dumps(ours)}` (default `{json.dumps(default)}`)")
    return lines


def scenario_line(summary: RunSummary) -> str:
    """The env, its kwargs and, when the harness ran, what they resolve to."""
    config = summary.config
    kwargs = json.dumps(config.env.kwargs) if config.env.kwargs else "none (the env's default scenario)"
    resolved = summary.evaluation.settings.get("scenario") if summary.evaluation is not None else None
    return f"Scenario: `{config.env.id}`, env.kwargs {kwargs}" + (f": {resolved}." if resolved else ".")


def header_lines(summary: RunSummary) -> list[str]:
    """Title, scenario and every setting that differs from the defaults."""
    changed = non_default_settings(summary.config)
    return [f"# Training report: `{type(summary.model.policy).__name__}` on `{summary.config.env.id}`", "",
            scenario_line(summary), "",
            "Settings that differ from the defaults:" if changed else "Every setting is the default.",
            *changed, ""]


def _teacher(summary: RunSummary) -> str | None:
    config = summary.config
    return config.warm_start.expert if config.warm_start.enabled and not config.resume else None


def _baselines(rows: dict[str, dict]) -> list[str]:
    return [name for name in rows if name not in (MODEL_NAME, LOWER_BOUND_ROW)]


def summary_json(summary: RunSummary) -> dict[str, Any]:
    """Machine-readable run summary (timings, cloning, training figures, curve, evaluation rows and
    the paired comparisons)."""
    bc = summary.bc_report
    evaluation = summary.evaluation
    curve = summary.curve
    return {
        "run_dir": str(summary.output_dir),
        "env_seed": summary.env_seed,
        "timings_s": summary.timings,
        "behaviour_cloning": None if bc is None else {
            "train_accuracy": bc.train_accuracy, "val_accuracy": bc.val_accuracy,
            "train_log_likelihood": bc.train_log_likelihood, "n_samples": bc.n_samples},
        "kl_schedule_step": summary.model.kl_schedule_step,
        "num_timesteps": summary.model.num_timesteps,
        "updates": summary.callbacks.updates.history,
        "rollouts": summary.callbacks.rollouts.history,
        "learning_curve": None if curve is None else {
            "seeds": curve.seeds, "points": curve.points, "reference_router": curve.reference_name,
            "reference": curve.reference, "kept_point": curve.kept},
        "evaluation": None if evaluation is None else evaluation.rows,
        "comparisons": None if evaluation is None else comparison_figures(
            evaluation, MODEL_NAME, _baselines(evaluation.rows)),
    }


def write_report(summary: RunSummary) -> pathlib.Path:
    """Write the plots, ``summary.json``, ``evaluation.json`` and ``report.md``; return the report's path."""
    config, out = summary.config, summary.output_dir
    kl = config.kl_regularization
    updates = summary.callbacks.updates.history
    plots = {
        "approx_kl vs target_kl": plot_approx_kl(updates, kl.target_kl, out / "approx_kl.png"),
        "reference-KL coefficient and entropy": plot_kl_schedule(updates, kl.entropy_min, out / "kl_schedule.png"),
    }
    if summary.curve is not None:
        plots["learning curve"] = plot_learning_curve(summary.curve, out / "learning_curve.png")
    (out / SUMMARY_FILE).write_text(json.dumps(summary_json(summary), indent=2, default=str) + "\n")

    teacher = _teacher(summary)
    lines = header_lines(summary)
    lines += [f"Run directory: `{out}`. Config used: `config_used.json`. Model: `model.zip` "
              f"({summary.model.num_timesteps} env steps, {summary.model.kl_schedule_step} gradient steps; "
              f"loadable by KLPPO.load and by stable_baselines3's PPO.load). Training envs seeded {summary.env_seed}.", ""]
    lines += [*summary.notes, *_bc_lines(summary.bc_report, bool(config.resume)), ""]
    lines += [wall_time_line(summary), ""]
    lines += ["## Training health", "", *training_health(updates, kl.target_kl, kl.entropy_min, max_entropy(summary.model.action_space)), ""]
    if summary.evaluation is not None:
        result = summary.evaluation
        result.to_json(out / "evaluation.json")
        result.plot_latency_cdf(out / "latency_cdf.png")
        plots = {"latency CDF per router": out / "latency_cdf.png", **plots}
        lines += ["## Evaluation", "",
                  f"{config.evaluation.episodes} episodes per policy on the same workloads (seed {config.evaluation.seed}); "
                  "latencies in seconds, lower is better. Differences are means of per-episode relative "
                  "differences with their paired 95% t interval; an interval containing zero is a tie. "
                  "Per-episode figures: `evaluation.json`.", "",
                  results_table(result, MODEL_NAME, teacher), "", "### Where the trained router wins and loses", "",
                  *comparisons(result, MODEL_NAME, _baselines(result.rows)), "", "### Acceptance", "",
                  *acceptance(result, MODEL_NAME, teacher), ""]
    lines += ["## Plots", ""] + [f"### {title}\n\n![{title}]({path.name})\n" for title, path in plots.items()]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def wall_time_line(summary: RunSummary) -> str:
    return "Wall time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in summary.timings.items())


def console_text(summary: RunSummary) -> str:
    """What the job prints when it ends: the report's path and results table (verbose 0), after
    a summary of the run (verbose >= 1)."""
    config, out = summary.config, summary.output_dir
    lines = []
    if config.monitoring.verbose >= 1:
        kl = config.kl_regularization
        lines += [f"run directory: {out}", wall_time_line(summary), *summary.notes,
                  *_bc_lines(summary.bc_report, bool(config.resume)),
                  *training_health(summary.callbacks.updates.history, kl.target_kl, kl.entropy_min,
                                   max_entropy(summary.model.action_space))]
        if summary.evaluation is not None:
            lines += acceptance(summary.evaluation, MODEL_NAME, _teacher(summary))
    lines.append(f"report: {out / 'report.md'}")
    if summary.evaluation is not None:
        lines.append(results_table(summary.evaluation, MODEL_NAME, _teacher(summary)))
    return "\n".join(lines)
