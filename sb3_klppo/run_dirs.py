"""Where a run writes, so that no run is ever overwritten, and the seeds a resumed run continues with.

Run directories are numbered as SB3's logger and RL Zoo number theirs: ``runs/ppo_warmstart_1``,
``_2``, ... the next unused number, claimed atomically (``mkdir`` fails if another job took it).
A directory that holds a finished run (its ``model.zip``) is written into only with
``overwrite``.
"""

from __future__ import annotations

import pathlib
import re

import numpy as np

from sb3_klppo.config import ConfigError

FINISHED_MARKER = "model.zip"
"""A directory holding this file holds a finished run."""


def numbered(prefix: pathlib.Path, number: int) -> pathlib.Path:
    return prefix.with_name(f"{prefix.name}_{number}")


def next_run_number(prefix: pathlib.Path) -> int:
    """1 + the highest N of the existing ``<prefix>_<N>`` directories (1 when there is none)."""
    pattern = re.compile(re.escape(prefix.name) + r"_(\d+)")
    taken = [int(m[1]) for p in prefix.parent.glob(f"{prefix.name}_*") if (m := pattern.fullmatch(p.name))]
    return max(taken, default=0) + 1


def claim_run_dir(output_dir: str, number_runs: bool, overwrite: bool) -> pathlib.Path:
    """Create and return the directory this run writes into.

    With ``number_runs``, ``<output_dir>_<N>`` for the next unused N; otherwise ``output_dir``
    itself, refused (naming the flag) when it holds a finished run and ``overwrite`` is off.
    """
    base = pathlib.Path(output_dir)
    if not number_runs:
        if (base / FINISHED_MARKER).exists() and not overwrite:
            raise ConfigError(f"output_dir: {base} holds a finished run ({FINISHED_MARKER}); "
                              "give another --output-dir, drop --no-number-runs, or pass --overwrite")
        base.mkdir(parents=True, exist_ok=True)
        return base
    base.parent.mkdir(parents=True, exist_ok=True)
    number = next_run_number(base)
    while True:
        candidate = numbered(base, number)
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:  # another job claimed it first
            number += 1


def training_seed(seed: int, start_timesteps: int) -> int:
    """The env seed of a run that starts after ``start_timesteps`` env steps of the same model.

    A fresh run uses ``seed`` itself; a resumed run continues the sequence with a seed drawn from
    ``(seed, start_timesteps)``, so it trains on new workloads (not those of seed 0 again) and
    resuming the same model twice is still deterministic.
    """
    if start_timesteps == 0:
        return seed
    return int(np.random.SeedSequence([seed % 2**32, start_timesteps]).generate_state(1)[0] % 2**31)
