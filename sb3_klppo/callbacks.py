"""SB3 callbacks for KL monitoring: target-KL watch (warn / adapt / stop), a CSV of every update's
KL and entropy figures, and a log of the reference-KL schedule.

Timing. SB3 runs ``train()`` after the rollout and offers no hook after it; its figures sit in
``logger.name_to_value`` until the *next* rollout's dump. :class:`UpdateEndCallback` therefore reads an
update's figures at the first hook after it: ``on_rollout_start`` of the next rollout (before the next
``train()``, so an adapted ``kl_coef`` takes effect on the very next update) and ``on_training_end``
for the last update of a ``learn()`` call. Each update is handled once (keyed by ``model._n_updates``).
Figures come from KLPPO's ``last_update_stats`` when present, else from SB3's logger (plain PPO).
"""

from __future__ import annotations

import copy
import csv
import math
import pathlib
import warnings
from abc import abstractmethod
from collections.abc import Callable

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

TARGET_KL_ACTIONS = ("warn", "adapt", "stop")
"""What :class:`TargetKLMonitor` does when the update's KL passes the target (the config's
``target_kl_action`` choices); the first is the default."""
CURVE_FIGURES = {"e2e_mean": -1.0, "ttft_mean": -1.0, "return_mean": 1.0}
"""Figures of each learning-curve point, with the sign that makes larger better: the names a run
can keep its best policy by (the config's ``monitoring.keep_best`` choices)."""
CSV_FIELDS = (
    "approx_kl",
    "kl_penalty",
    "kl_coef",
    "ref_kl",
    "ref_kl_coef",
    "entropy",
    "entropy_loss",
    "entropy_penalty",
    "clip_fraction",
)


class TargetKLExceededWarning(UserWarning):
    """An update's approx_kl exceeded the monitored target (filterable on its own)."""


def update_stats(model) -> dict[str, float]:
    """The last update's figures: SB3's ``train/*`` logger values overlaid with KLPPO's own."""
    prefix = "train/"
    stats = {k[len(prefix) :]: float(v) for k, v in model.logger.name_to_value.items() if k.startswith(prefix)}
    stats.update(getattr(model, "last_update_stats", None) or {})
    return stats


def adapted_kl_coef(kl_coef: float, approx_kl: float, target_kl: float) -> float:
    """RLlib's adaptive-KL rule: x1.5 when KL > 2 x target, x0.5 when KL < target / 2, else unchanged."""
    if approx_kl > 2.0 * target_kl:
        return kl_coef * 1.5
    if approx_kl < 0.5 * target_kl:
        return kl_coef * 0.5
    return kl_coef


class UpdateEndCallback(BaseCallback):
    """Base class calling :meth:`_on_update_end` once after every ``train()`` (see module docstring).

    :param verbose: Verbosity level: 0 for no output, 1 for info messages
    """

    def __init__(self, verbose: int = 0):
        super().__init__(verbose)
        self._last_seen_update: int | None = None

    def _on_training_start(self) -> None:
        # Updates made before this callback existed are not ours to report.
        if self._last_seen_update is None:
            self._last_seen_update = self.model._n_updates

    def _on_rollout_start(self) -> None:
        self._poll()

    def _on_training_end(self) -> None:
        self._poll()

    def _on_step(self) -> bool:
        return True

    def _poll(self) -> None:
        """Hand a new update's figures to the subclass, once."""
        n_updates = self.model._n_updates
        if n_updates == self._last_seen_update:
            return
        self._last_seen_update = n_updates
        self._on_update_end(update_stats(self.model))

    @abstractmethod
    def _on_update_end(self, stats: dict[str, float]) -> None:
        """React to one finished update; ``stats`` maps names such as ``approx_kl`` to values."""


class TargetKLMonitor(UpdateEndCallback):
    """Compare each update's ``approx_kl`` with a target; warn, adapt ``kl_coef`` or stop training.

    Records ``train/approx_kl_over_target`` and ``train/kl_target_exceedances``. An exceedance is
    ``approx_kl > target_kl``. SB3's own ``target_kl`` early stop is independent of this monitor.

    :param target_kl: The approx_kl (nats) an update should stay below; must be > 0.
    :param action: ``"warn"``: a :class:`TargetKLExceededWarning` per exceedance; ``"adapt"``: scale
        ``model.kl_coef`` by 1.5 when KL > 2 x target and by 0.5 when KL < target / 2 (RLlib's rule);
        ``"stop"``: end ``learn()`` after ``patience`` consecutive exceedances.
    :param patience: Consecutive exceedances that trigger the stop (``action="stop"`` only).
    :param verbose: Verbosity level: 0 for no output, 1 for info messages
    """

    def __init__(self, target_kl: float, action: str = TARGET_KL_ACTIONS[0], patience: int = 3, verbose: int = 0):
        super().__init__(verbose)
        if not (math.isfinite(target_kl) and target_kl > 0):
            raise ValueError(f"target_kl must be a finite number > 0, got {target_kl!r}")
        if action not in TARGET_KL_ACTIONS:
            raise ValueError(f"action must be one of {TARGET_KL_ACTIONS}, got {action!r}")
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience!r}")
        self.target_kl = float(target_kl)
        self.action = action
        self.patience = int(patience)
        self.n_exceedances = 0
        self.consecutive_exceedances = 0
        self._stop_requested = False

    def _init_callback(self) -> None:
        if self.action != "adapt":
            return
        if not hasattr(self.model, "kl_coef"):
            raise ValueError(
                f"TargetKLMonitor(action='adapt') needs a model with kl_coef (KLPPO), got {type(self.model).__name__}"
            )
        if self.model.kl_coef == 0:
            warnings.warn(
                "TargetKLMonitor(action='adapt') cannot scale kl_coef=0; set an initial kl_coef > 0", stacklevel=2
            )

    def _on_training_start(self) -> None:
        super()._on_training_start()
        # A new learn() call is an explicit request to continue; a pending stop is dropped.
        self._stop_requested = False

    def _on_step(self) -> bool:
        return not self._stop_requested

    def _on_update_end(self, stats: dict[str, float]) -> None:
        approx_kl = stats.get("approx_kl")
        if approx_kl is None or not math.isfinite(approx_kl):
            return
        exceeded = approx_kl > self.target_kl
        self.n_exceedances += int(exceeded)
        self.consecutive_exceedances = self.consecutive_exceedances + 1 if exceeded else 0
        self.logger.record("train/approx_kl_over_target", approx_kl / self.target_kl)
        self.logger.record("train/kl_target_exceedances", self.n_exceedances)
        if self.action == "warn" and exceeded:
            warnings.warn(
                f"approx_kl={approx_kl:.4g} exceeds target_kl={self.target_kl:.4g} "
                f"at update {self.model._n_updates} ({self.consecutive_exceedances} in a row)",
                TargetKLExceededWarning,
                stacklevel=2,
            )
        elif self.action == "adapt":
            self.model.kl_coef = adapted_kl_coef(self.model.kl_coef, approx_kl, self.target_kl)
        elif self.action == "stop" and self.consecutive_exceedances >= self.patience:
            self._stop_requested = True
            if self.verbose >= 1:
                print(f"Stopping: approx_kl > target_kl={self.target_kl} for {self.consecutive_exceedances} updates")


class KLStatsCSVCallback(UpdateEndCallback):
    """Append one CSV row per update with its KL and entropy figures (no TensorBoard needed).

    Columns: ``update``, ``timesteps`` and ``fields``; a figure the model does not produce (e.g.
    ``ref_kl`` for plain PPO) is left empty. The file is overwritten when the callback first writes
    and appended to afterwards, also across ``learn()`` calls.

    :param path: CSV file to write; parent directories are created.
    :param fields: Figures to write, by their ``train/`` name without the prefix.
    :param verbose: Verbosity level: 0 for no output, 1 for info messages
    """

    def __init__(self, path: str | pathlib.Path, fields: tuple[str, ...] = CSV_FIELDS, verbose: int = 0):
        super().__init__(verbose)
        self.path = pathlib.Path(path)
        self.fields = tuple(fields)
        self._started = False

    def _on_update_end(self, stats: dict[str, float]) -> None:
        row = {"update": self.model._n_updates, "timesteps": self.model.num_timesteps}
        row.update({name: stats.get(name, "") for name in self.fields})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a" if self._started else "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["update", "timesteps", *self.fields])
            if not self._started:
                writer.writeheader()
            writer.writerow(row)
        self._started = True


class RefKLScheduleLogger(BaseCallback):
    """Log KLPPO's schedules at the end of each rollout, i.e. the weights the next update starts with.

    Records ``kl_schedule/ref_kl_coef``, ``kl_schedule/entropy_warmup_coef``, ``kl_schedule/kl_coef``
    and ``kl_schedule/step`` (gradient steps so far), and keeps ``history``, a list of
    ``(num_timesteps, step, ref_kl_coef)`` tuples for plotting.

    :param verbose: Verbosity level: 0 for no output, 1 for info messages
    """

    def __init__(self, verbose: int = 0):
        super().__init__(verbose)
        self.history: list[tuple[int, int, float]] = []

    def _init_callback(self) -> None:
        if not hasattr(self.model, "ref_kl_coef"):
            raise ValueError(f"RefKLScheduleLogger needs a KLPPO model, got {type(self.model).__name__}")

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        step, coef = self.model.kl_schedule_step, self.model.ref_kl_coef
        self.history.append((self.model.num_timesteps, step, coef))
        self.logger.record("kl_schedule/ref_kl_coef", coef)
        self.logger.record("kl_schedule/entropy_warmup_coef", self.model.entropy_bonus_coef)
        self.logger.record("kl_schedule/kl_coef", self.model.kl_coef)
        self.logger.record("kl_schedule/step", step)
        if self.verbose >= 1:
            print(f"ref_kl_coef={coef:.4g} at gradient step {step}")


class PeriodicEvaluation(UpdateEndCallback):
    """SB3's ``EvalCallback`` idea counted in updates: evaluate the current policy before the first
    update, every ``every`` updates and after the last, always on the same fixed episodes.

    Training-episode returns follow the training workload sequence (the same for every policy),
    so their dips say little about the policy; a fixed-seed evaluation does. What "evaluate"
    means is the caller's: ``evaluate(model)`` returns named figures, kept in ``history`` with
    ``timesteps`` and ``updates``.

    With ``keep_best`` it also does what SB3's ``EvalCallback`` does with a best-model path: the
    policy's parameters at the best point by that figure (:data:`CURVE_FIGURES` says which way is
    better) are kept, and put back into the model when training ends, so a run that drifts late
    ends with its best evaluated policy, at worst the one it started from. The episodes are
    the caller's, so this is model selection on them, never on the final evaluation's.

    :param evaluate: Runs the fixed episodes with the model; returns e.g. ``{"e2e_mean": ...}``.
    :param every: Updates between evaluations (>= 1).
    :param keep_best: A figure of :data:`CURVE_FIGURES` to keep the best policy by, or None.
    :param verbose: Verbosity level: 0 for no output, 1 for info messages
    """

    def __init__(self, evaluate: Callable[[BaseAlgorithm], dict[str, float]], every: int,
                 keep_best: str | None = None, verbose: int = 0):
        super().__init__(verbose)
        if every < 1:
            raise ValueError(f"every must be >= 1 update, got {every!r}")
        if keep_best is not None and keep_best not in CURVE_FIGURES:
            raise ValueError(f"keep_best must be one of {', '.join(CURVE_FIGURES)} or None, got {keep_best!r}")
        self.evaluate = evaluate
        self.every = int(every)
        self.keep_best = keep_best
        self.history: list[dict[str, float]] = []
        self.best_point: int | None = None
        """Index into ``history`` of the kept policy (with ``keep_best``)."""
        self._best_parameters: dict | None = None
        self._updates_seen = 0

    def _record(self) -> None:
        figures = self.evaluate(self.model)
        self.history.append({"timesteps": float(self.model.num_timesteps), "updates": float(self._updates_seen),
                             **figures})
        if self.keep_best is not None:
            self._keep_if_best(figures[self.keep_best] * CURVE_FIGURES[self.keep_best])
        for name, value in figures.items():
            self.logger.record(f"eval/{name}", value)
        if self.verbose >= 1:
            print(f"evaluation at {self.model.num_timesteps} steps: {figures}")

    def _on_training_start(self) -> None:
        super()._on_training_start()
        if not self.history:
            self._record()

    def _on_update_end(self, stats: dict[str, float]) -> None:
        self._updates_seen += 1
        if self._updates_seen % self.every == 0:
            self._record()

    def _keep_if_best(self, score: float) -> None:
        best = self.best_point
        if best is None or score > self.history[best][self.keep_best] * CURVE_FIGURES[self.keep_best]:
            self.best_point = len(self.history) - 1
            self._best_parameters = copy.deepcopy(self.model.policy.state_dict())

    def _on_training_end(self) -> None:
        super()._on_training_end()
        if self.history[-1]["timesteps"] != self.model.num_timesteps:
            self._record()
        if self._best_parameters is not None:
            self.model.policy.load_state_dict(self._best_parameters)
