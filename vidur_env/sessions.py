"""Synthetic multi-turn sessions on shared system prompts: a workload with prefix reuse.

Two kinds of reuse that production prefix caches exploit, generated without any file:

- **shared system prompts**: each session starts with one of ``num_system_prompts`` system
  prompts, drawn with Zipf popularity (rank r has weight ``r ** -zipf_alpha``), so a few
  prompts are hot and many are cold;
- **multi-turn sessions**: turn k's prompt is the system prompt, every earlier user message
  and answer, then the new user message; its output is the answer. The next turn arrives a
  think time after this one (measured from this turn's *arrival*: the generator runs before
  the simulation and cannot know when the answer completes, so think times should exceed
  typical latencies; the defaults do).

Prefix identity (:data:`vidur_env.request_table.BlockHashes`): every token stream gets an id
(one per system prompt, one per session) and the 16-token block ``i`` of a request's tokens
(prompt then output) is keyed by (stream, i): by the system prompt's id while the block lies
entirely inside the system prompt, by the session's id from the block that straddles the
system prompt's end on. So equal keys mean equal leading tokens (the chained property), two
sessions share exactly the full blocks of their common system prompt, and a turn's keys
cover its answer too (``(prompt + output) // 16`` keys), so the next turn can hit them.

A session ends after its drawn number of turns, or earlier when its next turn (prompt +
output) would exceed ``max_tokens`` (a client starting a new chat); no request is cut.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from vidur_env.errors import ConfigError
from vidur_env.kv_cache import BLOCK_SIZE as BLOCK_TOKENS

KEY_STRIDE = 1 << 32
"""Keys of stream s are ``s * KEY_STRIDE + block index``: streams never share a key."""


class SessionConfigError(ConfigError):
    """A :class:`SessionConfig` knob with an unusable value; ``field`` names it."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(problem)


@dataclass(frozen=True)
class SessionConfig:
    """The knobs of the session generator; the defaults are the ``prefix`` scenario's workload."""

    num_system_prompts: int = 16
    """Size of the pool of shared system prompts."""
    system_prompt_tokens: int = 1024
    """Tokens of every system prompt (64 full blocks at the default)."""
    zipf_alpha: float = 1.0
    """Popularity skew of the system prompts: rank r is drawn with weight ``r ** -zipf_alpha``
    (0 = uniform; at 1.0 with 16 prompts the hottest takes 30% of the sessions)."""
    mean_turns: float = 4.0
    """Mean turns per session (geometric, at least 1)."""
    user_tokens_mean: float = 128.0
    """Mean new user tokens per turn (geometric, at least 1)."""
    output_tokens_mean: float = 200.0
    """Mean answer tokens per turn (geometric, at least 1)."""
    think_time_s: float = 10.0
    """Mean seconds between a turn's arrival and the next turn's (exponential)."""

    def validate(self, max_tokens: int) -> None:
        """Raise :class:`SessionConfigError` naming the first unusable knob."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise SessionConfigError(f.name, f"must be a finite number; got {value!r}")
        for name in ("num_system_prompts", "system_prompt_tokens"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise SessionConfigError(name, f"must be an integer >= 1; got {value!r}")
        if self.zipf_alpha < 0:
            raise SessionConfigError("zipf_alpha", f"must be >= 0; got {self.zipf_alpha!r}")
        for name in ("mean_turns", "user_tokens_mean", "output_tokens_mean"):
            if getattr(self, name) < 1:
                raise SessionConfigError(name, f"must be >= 1; got {getattr(self, name)!r}")
        if self.think_time_s < 0:
            raise SessionConfigError("think_time_s", f"must be >= 0; got {self.think_time_s!r}")
        if self.system_prompt_tokens + 2 > max_tokens:
            raise SessionConfigError(
                "system_prompt_tokens",
                f"{self.system_prompt_tokens} leaves no room for a user message and an answer within "
                f"max_tokens={max_tokens}",
            )

    def popularity(self) -> np.ndarray:
        """Probability of each system prompt, hottest first."""
        weights = np.arange(1, self.num_system_prompts + 1, dtype=np.float64) ** -self.zipf_alpha
        return weights / weights.sum()

    def describe(self) -> str:
        return (
            f"sessions of {self.mean_turns:g} turns on average on {self.num_system_prompts} system prompts of "
            f"{self.system_prompt_tokens} tokens (Zipf {self.zipf_alpha:g}), user {self.user_tokens_mean:g} / "
            f"answer {self.output_tokens_mean:g} tokens per turn, think time {self.think_time_s:g} s"
        )


def stream_keys(system: int, session: int, system_tokens: int, num_blocks: int) -> tuple[int, ...]:
    """Keys of the first ``num_blocks`` blocks of a session's token stream: the system prompt's
    (stream ``system``) for blocks inside it, the session's (stream ``session``) after."""
    shared = min(system_tokens // BLOCK_TOKENS, num_blocks)
    first, own = system * KEY_STRIDE, session * KEY_STRIDE
    return tuple(range(first, first + shared)) + tuple(range(own + shared, own + num_blocks))


@dataclass
class _Turn:
    arrived_at: float
    prefill: int
    decode: int
    keys: tuple[int, ...]


def _session(config: SessionConfig, index: int, start: float, max_tokens: int,
             rng: np.random.Generator, system_keys: dict[int, tuple[int, ...]]) -> list[_Turn]:
    """The turns of session ``index`` starting at ``start``.

    ``system_keys``: the system prompts' keys drawn so far, by system prompt. A turn's keys
    reuse the int objects of the system prompt's and of the session's earlier turns, so the
    prefix caches' dicts, filled from earlier requests' keys, find them by identity (a
    lookup then skips comparing values: the cache path is mostly such lookups)."""
    system = int(rng.choice(config.num_system_prompts, p=config.popularity()))
    turns = int(rng.geometric(1.0 / config.mean_turns))
    stream = config.num_system_prompts + index
    tokens = config.system_prompt_tokens
    known = system_keys.setdefault(system, stream_keys(system, stream, tokens, tokens // BLOCK_TOKENS))
    context, now, out = tokens, start, []
    for _ in range(turns):
        prompt = context + int(rng.geometric(1.0 / config.user_tokens_mean))
        answer = int(rng.geometric(1.0 / config.output_tokens_mean))
        if prompt + answer > max_tokens:
            break
        num_blocks = (prompt + answer) // BLOCK_TOKENS
        known += stream_keys(system, stream, tokens, num_blocks)[len(known):]
        keys = known[:num_blocks]
        out.append(_Turn(now, prompt, answer, keys))
        context = prompt + answer
        now += float(rng.exponential(config.think_time_s))
    return out


def generate_sessions(
    config: SessionConfig, num_requests: int, starts_per_s: float, max_tokens: int, rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, ...]]]:
    """The first ``num_requests`` turns by arrival time of sessions starting as a Poisson
    process of rate ``starts_per_s``: (arrival s, prompt tokens, output tokens, block keys).

    Sessions are drawn in start order until no later session can start before the
    ``num_requests``-th turn, so the window is exactly what an endless stream would give.
    """
    config.validate(max_tokens)
    turns: list[_Turn] = []
    system_keys: dict[int, tuple[int, ...]] = {}
    start, index = 0.0, 0
    while True:
        start += float(rng.exponential(1.0 / starts_per_s))
        if len(turns) >= num_requests and sum(t.arrived_at < start for t in turns) >= num_requests:
            break
        turns.extend(_session(config, index, start, max_tokens, rng, system_keys))
        index += 1
    turns.sort(key=lambda t: t.arrived_at)
    chosen = turns[:num_requests]
    return (
        np.array([t.arrived_at for t in chosen], dtype=np.float64),
        np.array([t.prefill for t in chosen], dtype=np.int64),
        np.array([t.decode for t in chosen], dtype=np.int64),
        [t.keys for t in chosen],
    )
