"""Rendering of the routing env: a text table of the replicas (``ansi``) and bars of their queues
and KV use (``rgb_array``), both read from the simulator's public replica view."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from vidur_env.observation import ReplicaCosts, queued_work_seconds

if TYPE_CHECKING:
    from vidur_env.cluster import ClusterSimulator

RENDER_MODES = ("ansi", "rgb_array")
"""The env's render modes (``metadata["render_modes"]``)."""


def render(mode: str | None, sim: ClusterSimulator | None, costs: list[ReplicaCosts], rid: int) -> str | np.ndarray | None:
    """The rendering of ``mode`` (None: nothing) of the simulator's state at request ``rid``."""
    if mode == "ansi":
        return replica_table(sim, costs, rid)
    if mode == "rgb_array":
        return replica_bars(sim)
    return None


def replica_table(sim: ClusterSimulator | None, costs: list[ReplicaCosts], rid: int) -> str:
    """A fixed-width text table of the replicas' state (the env's ansi rendering)."""
    if sim is None:
        return "(no episode: call reset())\n"
    head = f"t={sim.now:.3f}s  request {rid} (prompt {sim.table.orig_prefill[rid]} tokens)" if rid >= 0 else "episode over"
    lines = [head, f"{'replica':>7} {'waiting':>7} {'wait_tok':>8} {'running':>7} {'batch':>5} "
                   f"{'kv%':>6} {'work_s':>7} {'ends_in':>8}"]
    for r, c in zip(sim.replicas, costs):
        ends = f"{r.batch_end - sim.now:8.4f}" if r.is_busy else f"{'idle':>8}"
        lines.append(f"{r.replica_id:>7} {r.num_waiting:>7} {r.waiting_prompt_tokens:>8} {r.num_allocated_requests:>7} "
                     f"{r.num_in_batch:>5} {100 * r.kv_utilization:>6.1f} {queued_work_seconds(r, c):>7.3f} {ends}")
    return "\n".join(lines) + "\n"


BAR_HEIGHT, BAR_WIDTH = 64, 8
BAR_COLOURS = ((220, 80, 60), (60, 120, 220), (80, 180, 90))
"""Queued requests (red, full at 32), running requests (blue, full at 128), KV use (green)."""


def replica_bars(sim: ClusterSimulator | None) -> np.ndarray:
    """An RGB image with three bars per replica (the env's rgb_array rendering)."""
    replicas = sim.replicas if sim is not None else []
    image = np.full((BAR_HEIGHT, max(1, len(replicas)) * 4 * BAR_WIDTH, 3), 255, dtype=np.uint8)
    for i, r in enumerate(replicas):
        levels = (min(r.num_waiting / 32, 1.0), min(r.num_allocated_requests / 128, 1.0), r.kv_utilization)
        for j, (level, colour) in enumerate(zip(levels, BAR_COLOURS)):
            left = (4 * i + j) * BAR_WIDTH
            height = int(round(level * BAR_HEIGHT))
            image[BAR_HEIGHT - height:, left:left + BAR_WIDTH - 1] = colour
    return image

