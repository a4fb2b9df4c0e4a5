"""Typed configuration of a simulated cluster: one source of truth for the CLI and the env.

Its errors are :class:`~vidur_env.errors.ConfigError` (imported here, where most callers look
for it), the root of every vidur_env user error; advice in them names settings with
:func:`~vidur_env.errors.setting`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from typing import Any

from vidur_env.errors import ConfigError, setting
from vidur_env.hardware import DEFAULT_BATCH_SIZE_CAP, DEFAULT_MEMORY_MARGIN_FRACTION, UnknownSpecError, get_device, get_model
from vidur_env.schedulers import SCHEDULER_NAMES, VLLM_BATCH_RULES, SchedulerLimits
from vidur_env.schedulers.orca import PREFIX_CACHING_NOTE
from vidur_env.time_model import DEFAULT_KEYING, DEFAULT_PROFILE_FIT, KEYINGS, PROFILE_FITS

TIME_MODEL_SOURCES = ("builtin", "profiled")


@dataclass(frozen=True)
class ReplicaConfig:
    """One replica: the model it serves, on which device, and how it batches.

    Defaults are Vidur's: Llama-2-7B on an A100 with TP1 and the Sarathi scheduler (the first
    of the scheduler registry); the batching and KV knobs default to :class:`SchedulerLimits`'s
    values and the planner's to :mod:`vidur_env.hardware`'s, so each default is written once.
    """

    model: str = "meta-llama/Llama-2-7b-hf"
    """Model name (Hugging Face id or a short alias such as ``llama-2-7b``)."""
    device: str = "a100"
    """GPU type: a short name from :data:`vidur_env.hardware.DEVICES` (case-insensitive)."""
    tensor_parallel: int = 1
    """Tensor-parallel degree (GPUs per replica). Pipeline parallelism is not modelled."""
    scheduler: str = SCHEDULER_NAMES[0]
    """Batching scheduler: ``sarathi`` (chunked prefill), ``vllm`` or ``orca``."""
    chunk_size: int = SchedulerLimits.chunk_size
    """Sarathi's token budget per iteration."""
    batch_size_cap: int = DEFAULT_BATCH_SIZE_CAP
    """Most requests a replica holds in KV at once."""
    max_tokens_in_batch: int = SchedulerLimits.max_tokens_in_batch
    """vLLM's token limit of one prefill batch."""
    vllm_batch_rule: str = SchedulerLimits.vllm_batch_rule
    """``padded`` (Vidur main: batch length x longest prompt) or ``sum`` (Vidur 0.0.26)."""
    num_blocks: int | None = None
    """KV blocks of 16 tokens; None derives it with Vidur's memory planner."""
    memory_margin_fraction: float = DEFAULT_MEMORY_MARGIN_FRACTION
    """Share of GPU memory the planner keeps free of weights and KV."""
    watermark_fraction: float = SchedulerLimits.watermark_fraction
    """Share of KV blocks kept free when admitting a new request."""
    prefix_caching: bool = SchedulerLimits.prefix_caching
    """vLLM's automatic prefix caching: full KV blocks are shared between requests with the
    same prefix (their ``block_hashes``); sarathi and vllm only. Off reproduces Vidur."""

    def validate(self, where: str = "replica") -> None:
        if self.scheduler not in SCHEDULER_NAMES:
            raise ConfigError(f"{where}.scheduler: unknown scheduler {self.scheduler!r}; choose from {', '.join(SCHEDULER_NAMES)}")
        if self.vllm_batch_rule not in VLLM_BATCH_RULES:
            raise ConfigError(f"{where}.vllm_batch_rule: must be one of {', '.join(VLLM_BATCH_RULES)}, "
                              f"got {self.vllm_batch_rule!r}")
        for name in ("tensor_parallel", "chunk_size", "batch_size_cap", "max_tokens_in_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{where}.{name}: must be a positive integer, got {value!r}")
        if self.num_blocks is not None and (not isinstance(self.num_blocks, int) or self.num_blocks < 1):
            raise ConfigError(f"{where}.num_blocks: must be a positive integer or None, got {self.num_blocks!r}")
        if not 0.0 <= self.memory_margin_fraction < 1.0:
            raise ConfigError(f"{where}.memory_margin_fraction: must be in [0, 1), got {self.memory_margin_fraction!r}")
        if not 0.0 <= self.watermark_fraction < 1.0:
            raise ConfigError(f"{where}.watermark_fraction: must be in [0, 1), got {self.watermark_fraction!r}")
        if not isinstance(self.prefix_caching, bool):
            raise ConfigError(f"{where}.prefix_caching: must be true or false, got {self.prefix_caching!r}")
        if self.prefix_caching and self.scheduler == "orca":
            raise ConfigError(f"{where}.prefix_caching: {PREFIX_CACHING_NOTE}")
        self._check_hardware(where)

    def _check_hardware(self, where: str) -> None:
        """Model and device must be known, and the model must split evenly over
        ``tensor_parallel`` workers (Vidur asserts the same divisibilities)."""
        for name, lookup in (("model", get_model), ("device", get_device)):
            try:
                lookup(getattr(self, name))
            except UnknownSpecError as error:
                raise ConfigError(f"{where}.{name}: {error}") from None
        try:
            get_model(self.model).check_parallelism(self.tensor_parallel)
        except ValueError as error:
            raise ConfigError(f"{where}.tensor_parallel: {error}; choose a {setting('tensor_parallel')} "
                              "that divides the model's attention heads") from None


@dataclass(frozen=True)
class ClusterConfig:
    """A cluster of replicas and the source of its execution times.

    Homogeneous clusters give ``num_replicas`` copies of ``replica``; heterogeneous ones list
    their replicas in ``replicas`` (``num_replicas`` is then ignored).
    """

    num_replicas: int = 4
    """Number of identical replicas (copies of ``replica``); ignored when ``replicas`` lists them."""
    replica: ReplicaConfig = field(default_factory=ReplicaConfig)
    """The replica a homogeneous cluster is made of."""
    replicas: tuple[ReplicaConfig, ...] | None = None
    """The replicas of a heterogeneous cluster, one config each; None makes ``num_replicas``
    copies of ``replica``."""
    time_model: str = "builtin"
    """``builtin`` (calibrated presets shipped with the package) or ``profiled`` (Vidur CSVs)."""
    profiling_dir: str | None = None
    """Directory in Vidur's profiling layout, for ``time_model='profiled'``."""
    profile_fit: str = DEFAULT_PROFILE_FIT
    """How ``time_model='profiled'`` turns the CSVs into times: ``forest`` (random forests fitted
    as Vidur main fits them, seeded; what Vidur's latencies near saturation need, see
    ``time_model.forest``) or ``interpolate`` (linear between profiled points, no fitting)."""
    forest_seed: int = 0
    """Random state of the forests (``profile_fit='forest'``); Vidur itself fits unseeded."""
    keying: str = DEFAULT_KEYING
    """How iteration times are keyed: ``vidur`` (main branch) or ``vidur_pypi`` (0.0.26 build)."""
    kv_granularity: int | None = None
    """KV rounding of the attention lookups in tokens (Vidur's ``kv_cache_prediction_granularity``);
    None takes the keying's build default: 64 for ``vidur``, 256 for ``vidur_pypi``."""
    extrapolate: bool = True
    """Profiled model only: a lookup outside the profiled grid is answered (by the forests, flat
    beyond their data, or by interpolation's value at the grid's nearest end) and counted in the
    metrics (``out_of_grid_lookups``); False makes such a lookup an error."""

    @property
    def replica_configs(self) -> tuple[ReplicaConfig, ...]:
        if self.replicas is not None:
            return tuple(self.replicas)
        return (self.replica,) * self.num_replicas

    def validate(self) -> None:
        if self.replicas is None and (not isinstance(self.num_replicas, int) or self.num_replicas < 1):
            raise ConfigError(f"cluster.num_replicas: must be a positive integer, got {self.num_replicas!r}")
        if self.replicas is not None and len(self.replicas) == 0:
            raise ConfigError("cluster.replicas: a heterogeneous cluster needs at least one replica")
        for i, spec in enumerate(self.replica_configs):
            spec.validate(where=f"cluster.replicas[{i}]" if self.replicas is not None else "cluster.replica")
        if self.time_model not in TIME_MODEL_SOURCES:
            raise ConfigError(f"cluster.time_model: must be one of {', '.join(TIME_MODEL_SOURCES)}, got {self.time_model!r}")
        if self.time_model == "profiled" and not self.profiling_dir:
            raise ConfigError("cluster.profiling_dir: required when time_model is 'profiled'")
        if self.profile_fit not in PROFILE_FITS:
            raise ConfigError(f"cluster.profile_fit: must be one of {', '.join(PROFILE_FITS)}, got {self.profile_fit!r}")
        if isinstance(self.forest_seed, bool) or not isinstance(self.forest_seed, int) or self.forest_seed < 0:
            raise ConfigError(f"cluster.forest_seed: must be an integer >= 0, got {self.forest_seed!r}")
        if self.keying not in KEYINGS:
            raise ConfigError(f"cluster.keying: must be one of {', '.join(KEYINGS)}, got {self.keying!r}")
        if self.kv_granularity is not None and (
                isinstance(self.kv_granularity, bool) or not isinstance(self.kv_granularity, int)
                or self.kv_granularity < 1):
            raise ConfigError(f"cluster.kv_granularity: must be a positive integer or None, "
                              f"got {self.kv_granularity!r}")


def load_replica_configs(path: str) -> tuple[ReplicaConfig, ...]:
    """Read a heterogeneous cluster: a JSON list with one object of ReplicaConfig fields per replica."""
    try:
        with open(path) as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}:{error.lineno}: invalid JSON: {error.msg}") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read replica list ({error.strerror})") from None
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{path}: expected a non-empty JSON list of replica objects")
    specs = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise ConfigError(f"{path}: replicas[{i}] must be an object of ReplicaConfig fields")
        spec = replica_config_from_dict(item, where=f"{path}: replicas[{i}]")
        spec.validate(where=f"{path}: replicas[{i}]")
        specs.append(spec)
    return tuple(specs)


def reject_unknown_keys(data: dict[str, Any], cls: type, where: str) -> None:
    """Raise a :class:`ConfigError` naming every key of ``data`` that is not a field of ``cls``."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}")


def replica_config_from_dict(data: dict[str, Any], where: str) -> ReplicaConfig:
    """Build a :class:`ReplicaConfig` from a mapping, rejecting unknown keys by name."""
    reject_unknown_keys(data, ReplicaConfig, where)
    defaults = ReplicaConfig()
    for name, value in data.items():
        default = getattr(defaults, name)
        if default is None or value is None:
            continue
        allowed = (int, float) if isinstance(default, float) else type(default)
        if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, allowed):
            raise ConfigError(f"{where}.{name}: expected {type(default).__name__}, got {type(value).__name__} {value!r}")
    return replace(defaults, **data)
