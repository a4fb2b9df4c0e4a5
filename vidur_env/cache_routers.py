"""Cache-aware routers: the prefix-cache + load rules production LLM routers use.

Every router here weighs a request's prefix-cache overlap with each replica against the
replica's load. What it knows of the caches is its *cache view*
(:class:`vidur_env.cache_view.CacheView`), in one of the two modes production routers have:
``approximate`` (its own index of the prompt blocks it routed where, like SGLang's router
tree) or ``precise`` (the replicas' real caches, like Dynamo's KV events). Each router is
registered in its production default mode and, suffixed ``_precise`` / ``_approximate``, in
the other. A request's prefix identity is its ``block_hashes``
(:data:`vidur_env.request_table.BlockHashes`); routers match its *prompt* blocks
(``prefill // 16`` keys). A request without block keys matches nowhere, and the routers fall
back to their load rule. Load is what a router can poll: ``num_waiting +
num_allocated_requests`` (requests queued or holding KV).

The rules are re-stated from the projects' documentation and source (facts, not code):

- ``sglang_cache_aware``: SGLang's router (sgl-project/sglang, ``sgl-router``): the
  ``cache_aware`` policy's doc comment and its ``--cache-threshold``,
  ``--balance-abs-threshold``, ``--balance-rel-threshold`` options.
- ``dynamo_kv``: NVIDIA Dynamo (ai-dynamo/dynamo), ``docs/architecture/kv_cache_routing.md``
  and the router design notes: cost = ``kv-overlap-score-weight`` * potential new prefill
  blocks + potential active blocks, ``--router-temperature`` softmax.
- ``llmd_scorer``: llm-d's inference scheduler (llm-d/llm-d-inference-scheduler): the
  filter-score-pick cycle and the default profile's scorer weights (queue 2, prefix cache 3;
  KV-cache utilisation 2 in llm-d's inference-scheduling guide).
- ``consistent_hash``: consistent (rendezvous) hashing for session affinity, as SGLang's
  ``consistent_hashing`` / ``prefix_hash`` policies and Ray Serve / Envoy hash routing.
- ``vllm_prefix``: vLLM production stack's prefix-aware router, here with the load penalty
  ``matched / prompt - beta * relative load`` issue 11 names.
- ``aibrix_prefix``: AIBrix's prefix-cache routing with its least-request fallback when
  running counts differ by more than 8.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from vidur_env.cache_view import BLOCK_TOKENS, CacheView, prompt_keys
from vidur_env.observation import ObservationView
from vidur_env.router_base import Router, argmin_first

if TYPE_CHECKING:
    from vidur_env.cluster import ClusterSimulator
    from vidur_env.replica import Replica


def load(replica: "Replica") -> int:
    """Requests queued or holding KV at ``replica`` (what every router here counts as load)."""
    return replica.num_waiting + replica.num_allocated_requests


@dataclass(frozen=True)
class Signals:
    """What a cache-aware rule weighs, per replica, read from the simulator or from the env's
    observation (with a cache view) alike, so both paths apply the same rule.

    ``match``: the request's prompt tokens cached there / its prompt tokens (the observation's
    ``prefix_match``); ``occupancy``: cached blocks / KV blocks (``cache_occupancy``, SGLang's
    tree size relative to the replica's cache); ``load``: requests queued or holding KV;
    ``kv_utilization``: allocated / KV blocks.
    """

    match: Sequence[float]
    occupancy: Sequence[float]
    load: Sequence[float]
    kv_utilization: Sequence[float]


def observation_error(name: str, needs: str) -> ValueError:
    """The error of a router that cannot decide from the env's observation."""
    return ValueError(f"router {name!r} needs {needs}, which the observation does not carry; run it on the "
                      "simulator (simulate --router, run_simulation)")


def match_fraction(matched_blocks: int, prefill: int) -> float:
    """Prompt tokens served from ``matched_blocks`` cached blocks / prompt tokens."""
    return min(BLOCK_TOKENS * matched_blocks, prefill) / max(prefill, 1)


class SimulatorSignals(Signals):
    """:class:`Signals` read from the simulator and a cache view: the match and the load, which
    every rule weighs, at once; the occupancy and the KV utilisation when a rule first reads
    them (most never read the occupancy, SGLang only below its cache threshold), as routing is
    on the hot path of every simulation with a cache router."""

    def __init__(self, sim: "ClusterSimulator", view: CacheView, prefill: int, matches: list[int]) -> None:
        # not the dataclass's __init__ (frozen): the fields go to the instance dict directly
        replicas = sim.replicas
        self.__dict__.update(replicas=replicas, view=view,
                             match=[match_fraction(m, prefill) for m in matches],
                             load=[load(r) for r in replicas])

    def __getattr__(self, name: str) -> list[float]:
        """The occupancy or KV utilisation, computed at the first read (later reads find it)."""
        if name == "occupancy":
            value = [min(cached / r.num_blocks, 1.0) for cached, r in zip(self.view.cached_all(), self.replicas)]
        elif name == "kv_utilization":
            value = [r.kv_utilization for r in self.replicas]
        else:
            raise AttributeError(name)
        self.__dict__[name] = value
        return value


class CacheAwareRouter(Router):
    """Base class: builds the cache view at the first decision of an episode, asks
    :meth:`decide`, and records the routed prompt blocks in the view. From observations
    (:meth:`choose_observed`, needing the env's ``cache_view``) the same :meth:`rule` runs on
    the env's cache columns, in the env's view whatever the router's ``mode``."""

    mode = "approximate"
    """Cache view: ``approximate`` or ``precise`` (see the module docstring)."""
    live = True
    """The harness runs cache-aware routers on the simulator, each in its own view and with the
    block counts some need (the observation carries one view, the env's)."""

    def reset(self, num_replicas: int, rng: np.random.Generator) -> None:
        super().reset(num_replicas, rng)
        self.view: CacheView | None = None
        self.sim = None

    def choose(self, sim: "ClusterSimulator", rid: int) -> int:
        if self.view is None or self.sim is not sim:
            self.view, self.sim = CacheView(self.mode, sim.replicas), sim
        keys = prompt_keys(sim, rid)
        choice = self.decide(sim, rid, self.view.matches(keys))
        self.view.record(choice, keys)
        return choice

    def decide(self, sim: "ClusterSimulator", rid: int, matches: list[int]) -> int:
        """The replica for request ``rid``, ``matches[i]`` of whose prompt blocks are cached at replica i."""
        return self.rule(SimulatorSignals(sim, self.view, sim.table.orig_prefill[rid], matches))

    def rule(self, signals: Signals) -> int:
        """The replica the router's rule picks."""
        raise NotImplementedError

    def choose_observed(self, view: ObservationView, row: int) -> int:
        if view.prefix_match is None:
            raise observation_error(self.name, "the cache columns of the observation (make the env with "
                                               "cache_view='approximate' or 'precise')")
        return self.rule(Signals(
            match=view.prefix_match[row].tolist(),
            occupancy=view.cache_occupancy[row].tolist(),
            load=(view.waiting[row] + view.running[row]).tolist(),
            kv_utilization=view.kv_utilization[row].tolist(),
        ))


class SGLangCacheAware(CacheAwareRouter):
    """SGLang router's ``cache_aware`` policy.

    If the load is imbalanced (max - min > ``balance_abs_threshold`` and max >
    ``balance_rel_threshold`` * min), route to the least-loaded replica. Otherwise take the
    replica with the longest prefix match if its match ratio (cached / prompt tokens) is at
    least ``cache_threshold``, else the replica with the smallest tree (the lowest cache
    occupancy: the most room). Ties go to the lowest index. Default mode: approximate
    (SGLang's router keeps its own radix tree per worker).
    """

    name = "sglang_cache_aware"
    cache_threshold = 0.3
    balance_abs_threshold = 64
    balance_rel_threshold = 1.5

    def rule(self, signals: Signals) -> int:
        loads = signals.load
        high, low = max(loads), min(loads)
        if high - low > self.balance_abs_threshold and high > self.balance_rel_threshold * low:
            return argmin_first(loads)
        best = argmin_first([-m for m in signals.match])
        if signals.match[best] >= self.cache_threshold:
            return best
        return argmin_first(signals.occupancy)


class DynamoKV(CacheAwareRouter):
    """NVIDIA Dynamo's KV router: lowest ``overlap_score_weight * prefill_blocks + decode_blocks``.

    ``prefill_blocks``: blocks still to prefill at the replica if the request went there (its
    queued prompt tokens / 16 plus the request's prompt blocks after the overlap);
    ``decode_blocks``: blocks the replica's active requests hold plus the request's prompt
    blocks. With ``temperature`` > 0 the replica is drawn with probability proportional to
    ``exp(-cost / (temperature * max cost))``. Default mode: precise (KV events).
    """

    name = "dynamo_kv"
    mode = "precise"
    overlap_score_weight = 1.0
    temperature = 0.0

    def decide(self, sim: "ClusterSimulator", rid: int, matches: list[int]) -> int:
        blocks = sim.table.orig_prefill[rid] // BLOCK_TOKENS
        costs = [
            self.overlap_score_weight * (r.waiting_prompt_tokens / BLOCK_TOKENS + blocks - m)
            + r.allocated_blocks + blocks
            for r, m in zip(sim.replicas, matches)
        ]
        if self.temperature <= 0:
            return argmin_first(costs)
        scaled = -np.asarray(costs) / (self.temperature * max(max(costs), 1e-9))
        weights = np.exp(scaled - scaled.max())
        return int(self.rng.choice(len(costs), p=weights / weights.sum()))

    def choose_observed(self, view: ObservationView, row: int) -> int:
        raise observation_error(self.name, "block counts (queued prompt tokens, allocated and prompt blocks)")


class LLMDScorer(CacheAwareRouter):
    """llm-d inference scheduler: the highest weighted sum of scorers, each in [0, 1].

    Queue scorer (weight 2): ``(max load - load) / (max load - min load)`` (1 when equal);
    prefix scorer (weight 3): cached / prompt tokens; KV-utilisation scorer (weight 2):
    ``1 - kv_utilization``. Ties go to the lowest index. Default mode: precise.
    """

    name = "llmd_scorer"
    mode = "precise"
    queue_weight = 2.0
    prefix_weight = 3.0
    kv_weight = 2.0

    def rule(self, signals: Signals) -> int:
        loads = signals.load
        high, low = max(loads), min(loads)
        spread = high - low
        scores = [
            self.queue_weight * ((high - q) / spread if spread else 1.0) + self.prefix_weight * m
            + self.kv_weight * (1.0 - kv)
            for q, m, kv in zip(loads, signals.match, signals.kv_utilization)
        ]
        return argmin_first([-score for score in scores])


class ConsistentHash(CacheAwareRouter):
    """Session affinity: the first ``hash_blocks`` prompt block keys pick the replica by
    rendezvous (highest-random-weight) hashing, so the same prefix always lands on the same
    replica and a replica's removal moves only its own prefixes (consistent hashing, as in
    Ray Serve's and Envoy's hash routing). Requests without block keys go round robin. Needs
    no cache view and ignores load entirely: the pure-affinity baseline."""

    name = "consistent_hash"
    hash_blocks = 1

    def reset(self, num_replicas: int, rng: np.random.Generator) -> None:
        super().reset(num_replicas, rng)
        self.counter = 0

    def choose(self, sim: "ClusterSimulator", rid: int) -> int:
        keys = prompt_keys(sim, rid)[: self.hash_blocks]
        if not keys:
            self.counter += 1
            return (self.counter - 1) % sim.num_replicas
        return max(range(sim.num_replicas), key=lambda i: rendezvous_weight(keys, i))

    def choose_observed(self, view: ObservationView, row: int) -> int:
        raise observation_error(self.name, "the request's first block key")


def rendezvous_weight(keys: tuple[int, ...], replica: int) -> int:
    """A stable pseudo-random weight of (prefix, replica): the first 8 bytes of a BLAKE2 digest
    (Python's ``hash`` is salted per process, which would break determinism)."""
    digest = hashlib.blake2b(repr((keys, replica)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class VLLMPrefix(CacheAwareRouter):
    """vLLM production stack's prefix-aware routing with a load penalty: the highest
    ``matched / prompt blocks - load_penalty * load / max load``. Default mode: approximate
    (the router's own hash trie)."""

    name = "vllm_prefix"
    load_penalty = 0.5

    def rule(self, signals: Signals) -> int:
        top = max(max(signals.load), 1)
        scores = [m - self.load_penalty * q / top for q, m in zip(signals.load, signals.match)]
        return argmin_first([-score for score in scores])


class AIBrixPrefix(CacheAwareRouter):
    """AIBrix prefix-cache router: least-request when the running counts differ by more than
    ``imbalance_threshold`` (8); otherwise the longest prefix match, ties (and no match) to the
    least-loaded replica. Default mode: approximate (AIBrix keeps its own prefix index)."""

    name = "aibrix_prefix"
    imbalance_threshold = 8

    def rule(self, signals: Signals) -> int:
        loads = signals.load
        if max(loads) - min(loads) > self.imbalance_threshold or not any(signals.match):
            return argmin_first(loads)
        return argmin_first([(-m, q) for m, q in zip(signals.match, loads)])


def in_mode(cls: type[CacheAwareRouter], mode: str) -> type[CacheAwareRouter]:
    """``cls`` with the other cache view, registered as ``<name>_<mode>``."""
    return type(f"{cls.__name__}_{mode}", (cls,), {"name": f"{cls.name}_{mode}", "mode": mode})


CACHE_ROUTER_CLASSES = (SGLangCacheAware, DynamoKV, LLMDScorer, VLLMPrefix, AIBrixPrefix)
"""Routers with a cache view; each is registered in its default mode and, suffixed, the other."""

CACHE_ROUTERS: dict[str, type[Router]] = {
    router.name: router
    for router in (
        *CACHE_ROUTER_CLASSES,
        *(in_mode(cls, "precise" if cls.mode == "approximate" else "approximate") for cls in CACHE_ROUTER_CLASSES),
        ConsistentHash,
    )
}
"""The cache-aware routers by registry name (merged into ``vidur_env.routers.ROUTERS``)."""
