"""Replica batching schedulers, one per module behind :class:`ReplicaScheduler`, and the
registry that names them (``--scheduler`` and ``ReplicaConfig.scheduler`` choose from it).

A new scheduler is one module here with a subclass implementing ``_get_next_batch`` (and,
optionally, ``steady_run``), plus one line in ``SCHEDULERS``.
"""
from __future__ import annotations

from vidur_env.schedulers.base import VLLM_BATCH_RULES, Batch, ReplicaScheduler, SchedulerLimits, SteadyRun
from vidur_env.schedulers.orca import OrcaScheduler
from vidur_env.schedulers.sarathi import SarathiScheduler
from vidur_env.schedulers.vllm import VLLMScheduler

SCHEDULERS: dict[str, type[ReplicaScheduler]] = {
    "sarathi": SarathiScheduler,
    "vllm": VLLMScheduler,
    "orca": OrcaScheduler,
}
"""Schedulers by the name configs and flags use; the first is the default."""
SCHEDULER_NAMES = tuple(SCHEDULERS)

__all__ = ["SCHEDULERS", "SCHEDULER_NAMES", "VLLM_BATCH_RULES", "Batch", "OrcaScheduler", "ReplicaScheduler", "SarathiScheduler",
           "SchedulerLimits", "SteadyRun", "VLLMScheduler"]
