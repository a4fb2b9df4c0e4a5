"""One progress bar over the whole training job, counted in routing decisions (env steps).

Cloning, PPO and the evaluations all step an env, so one unit serves every phase; the bar's
label names the phase being run. Envs report through :class:`StepCounter` (a VecEnv wrapper)
and the evaluation harness through its ``progress`` hook.
"""

from __future__ import annotations

import sys

import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from tqdm.auto import tqdm


class JobProgress:
    """A tqdm bar on stderr over the job's planned env steps; disabled, it does nothing.

    :param enabled: Show the bar (verbose >= 1 with progress_bar).
    """

    def __init__(self, enabled: bool) -> None:
        self.bar = tqdm(total=None, unit="step", dynamic_ncols=True, disable=not enabled, file=sys.stderr,
                        desc="starting")

    def plan(self, total: int) -> None:
        """Set the total once the job knows its episode lengths."""
        self.bar.total = total
        self.bar.refresh()

    def phase(self, name: str) -> None:
        """Label the steps that follow (``cloning``, ``training``, ``evaluation``...)."""
        self.bar.set_description_str(name)

    def advance(self, steps: int) -> None:
        self.bar.update(steps)

    def close(self) -> None:
        self.bar.close()


class StepCounter(VecEnvWrapper):
    """Tells a :class:`JobProgress` of every vectorised step (``num_envs`` env steps each)."""

    def __init__(self, venv: VecEnv, progress: JobProgress) -> None:
        super().__init__(venv)
        self.progress = progress

    def reset(self) -> np.ndarray:
        return self.venv.reset()

    def step_wait(self):
        result = self.venv.step_wait()
        self.progress.advance(self.num_envs)
        return result
