"""Model and device specifications, and Vidur's KV-cache memory planner.

The numbers here are the ones Vidur uses (its ``model_config.py``, ``device_sku_config.py``,
``ParamCounter`` and ``MemoryPlanner``), so that the number of KV-cache blocks and the
maximum batch size of a replica match what Vidur would compute for the same configuration.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import ceil

from vidur_env.errors import ConfigError
from vidur_env.kv_cache import BLOCK_SIZE

__all__ = [
    "DEFAULT_BATCH_SIZE_CAP",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_MEMORY_MARGIN_FRACTION",
    "DEVICES",
    "MODELS",
    "DeviceSpec",
    "MemoryPlan",
    "ModelSpec",
    "UnknownSpecError",
    "get_device",
    "get_model",
    "plan_memory",
]

BYTES_PER_PARAM = 2  # fp16 weights and KV cache, as in Vidur

DEFAULT_MAX_TOKENS = 4096
"""Vidur's ``max_tokens``, the longest request (prompt + output tokens): the workload's cut
(``WorkloadConfig.max_tokens``), the KV one request slot of the memory planner holds, and what
Orca reserves per request. Named once here, the lowest module every user of it imports; not a
model's context length (``ModelSpec.max_context``), which is a fact of each model."""
DEFAULT_BATCH_SIZE_CAP = 128
"""Vidur's ``batch_size_cap``: the most requests a replica holds in KV at once."""
DEFAULT_MEMORY_MARGIN_FRACTION = 0.1
"""Vidur's share of GPU memory the planner keeps free of weights and KV."""


class UnknownSpecError(ConfigError):
    """A model or device name that is not in the registry."""


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of a decoder-only transformer, as far as serving cost depends on it.

    :param name: canonical name, the Hugging Face id Vidur uses for its profiling folders.
    :param num_layers: transformer blocks.
    :param hidden_size: embedding dimension (Vidur's ``embedding_dim``).
    :param num_q_heads: attention query heads.
    :param num_kv_heads: key/value heads (fewer than query heads for GQA models).
    :param ffn_size: MLP hidden dimension (Vidur's ``mlp_hidden_dim``).
    :param gated_mlp: three MLP matrices (SwiGLU) instead of two.
    :param post_attn_norm: a norm before the MLP; its profiled time is counted only if True.
    :param max_context: longest sequence (prompt + output tokens) the model was trained for;
        a ``max_tokens`` above it simulates requests the real model cannot serve.
    :param profile_name: the model whose execution-time data (builtin coefficients, Vidur
        profiles) this one uses; None = its own ``name``. A model with the layer shapes of a
        profiled one (Llama-3.1-8B is Llama-3-8B with a longer RoPE context) runs at its times.
    """

    name: str
    num_layers: int
    hidden_size: int
    num_q_heads: int
    num_kv_heads: int
    ffn_size: int
    gated_mlp: bool = True
    post_attn_norm: bool = True
    max_context: int = 4096
    profile_name: str | None = None

    @property
    def time_model_name(self) -> str:
        """The name execution-time data is looked up under (``profile_name`` or ``name``)."""
        return self.profile_name or self.name

    def __post_init__(self) -> None:
        for field_name in ("num_layers", "hidden_size", "num_q_heads", "num_kv_heads", "ffn_size", "max_context"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"ModelSpec {self.name!r}: {field_name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_q_heads:
            raise ConfigError(
                f"ModelSpec {self.name!r}: hidden_size {self.hidden_size} is not a multiple of "
                f"num_q_heads {self.num_q_heads}"
            )

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_q_heads

    @property
    def is_gqa(self) -> bool:
        """Grouped-query attention: Vidur then adds a batching overhead to attention."""
        return self.num_q_heads > self.num_kv_heads

    def q_heads_per_worker(self, tp: int) -> int:
        """Query heads held by one tensor-parallel worker."""
        return self.num_q_heads // tp

    def kv_heads_per_worker(self, tp: int) -> int:
        """KV heads held by one worker; rounded up because KV heads are replicated when TP > kv heads."""
        return ceil(self.num_kv_heads / tp)

    def kv_bytes_per_token_per_layer(self, tp: int) -> int:
        """KV-cache bytes one token occupies in one layer on one worker (K and V, fp16)."""
        return BYTES_PER_PARAM * 2 * self.head_dim * self.kv_heads_per_worker(tp)

    def params_per_layer(self, tp: int) -> int:
        """Weights of one layer on one worker, counted as Vidur's ParamCounter does.

        Only the QKV, output and MLP matrices count (no norms, embeddings or LM head), which
        is why Vidur's KV budget is slightly larger than a real server's.
        """
        qkv = self.hidden_size * self.head_dim * (self.q_heads_per_worker(tp) + 2 * self.kv_heads_per_worker(tp))
        out = self.hidden_size * self.head_dim * self.q_heads_per_worker(tp)
        mlp = (3 if self.gated_mlp else 2) * self.hidden_size * self.ffn_size // tp
        return qkv + out + mlp

    def check_parallelism(self, tp: int, pipeline_stages: int = 1) -> None:
        """Raise if the model cannot be split this way (Vidur asserts the same divisibilities)."""
        if not isinstance(tp, int) or tp <= 0:
            raise ConfigError(f"tensor parallel degree must be a positive int, got {tp!r}")
        if not isinstance(pipeline_stages, int) or pipeline_stages <= 0:
            raise ConfigError(f"pipeline_stages must be a positive int, got {pipeline_stages!r}")
        if self.num_q_heads % tp:
            raise ConfigError(f"{self.name}: num_q_heads {self.num_q_heads} is not divisible by tp={tp}")
        if self.hidden_size % tp:
            raise ConfigError(f"{self.name}: hidden_size {self.hidden_size} is not divisible by tp={tp}")
        if self.num_layers % pipeline_stages:
            raise ConfigError(
                f"{self.name}: num_layers {self.num_layers} is not divisible by pipeline_stages={pipeline_stages}"
            )


@dataclass(frozen=True)
class DeviceSpec:
    """One accelerator.

    :param name: short name, also the folder name of Vidur's compute profiles (``a100``).
    :param memory_gb: HBM capacity in GiB, as Vidur's ``total_memory_gb``.
    :param network: name of the node's network profile folder (``a100_dgx``), used for all-reduce.
    :param hbm_tb_s: HBM bandwidth in TB/s; scales bandwidth-bound decode attention across devices.
    """

    name: str
    memory_gb: float
    network: str
    hbm_tb_s: float


@dataclass(frozen=True)
class MemoryPlan:
    """What Vidur's memory planner grants one replica.

    :param num_blocks: KV-cache blocks of ``block_size`` tokens.
    :param max_batch_size: requests that may run at once (planner slots capped by batch_size_cap).
    :param max_kv_tokens: ``num_blocks * block_size``.
    :param kv_bytes_per_token: KV bytes one token takes on one worker across the layers Vidur counts.
    :param request_slots: uncapped number of max-length requests that fit (sets ``num_blocks``).
    """

    num_blocks: int
    max_batch_size: int
    max_kv_tokens: int
    kv_bytes_per_token: int
    request_slots: int


_MODEL_LIST = (
    (ModelSpec("meta-llama/Llama-2-7b-hf", 32, 4096, 32, 32, 11008, max_context=4096), ("llama-2-7b", "llama2-7b")),
    (
        ModelSpec("meta-llama/Meta-Llama-3-8B", 32, 4096, 32, 8, 14336, max_context=8192),
        ("llama-3-8b", "llama3-8b", "meta-llama/Llama-3-8B"),
    ),
    (
        ModelSpec("meta-llama/Llama-3.1-8B", 32, 4096, 32, 8, 14336, max_context=131072,
                  profile_name="meta-llama/Meta-Llama-3-8B"),
        ("llama-3.1-8b", "llama3.1-8b", "meta-llama/Meta-Llama-3.1-8B"),
    ),
    (ModelSpec("meta-llama/Llama-2-70b-hf", 80, 8192, 64, 8, 28672, max_context=4096), ("llama-2-70b", "llama2-70b")),
    (
        ModelSpec("meta-llama/Meta-Llama-3-70B", 80, 8192, 64, 8, 28672, max_context=8192),
        ("llama-3-70b", "llama3-70b", "meta-llama/Llama-3-70B"),
    ),
)

MODELS: dict[str, ModelSpec] = {spec.name: spec for spec, _ in _MODEL_LIST}
"""Models by canonical (Hugging Face) name."""

DEVICES: dict[str, DeviceSpec] = {
    "a100": DeviceSpec("a100", memory_gb=80, network="a100_dgx", hbm_tb_s=2.0),
    "h100": DeviceSpec("h100", memory_gb=80, network="h100_dgx", hbm_tb_s=3.35),
}
"""Devices by short name (Vidur's A100-80GB and H100 SKUs)."""

_MODEL_NAMES = {spec: (spec.name, spec.name.split("/")[-1], *aliases) for spec, aliases in _MODEL_LIST}
_MODEL_ALIASES: dict[str, ModelSpec] = {name.lower(): spec for spec, names in _MODEL_NAMES.items() for name in names}


def get_model(name: str | ModelSpec) -> ModelSpec:
    """The model spec for a Hugging Face id, its repo part or a short alias (case-insensitive); specs pass through."""
    if isinstance(name, ModelSpec):
        return name
    spec = _MODEL_ALIASES.get(str(name).strip().lower())
    if spec is None:
        valid = ", ".join(sorted(name for names in _MODEL_NAMES.values() for name in names))
        raise UnknownSpecError(f"unknown model {name!r}; valid names: {valid}")
    return spec


def get_device(name: str | DeviceSpec) -> DeviceSpec:
    """The device spec for a short name such as ``a100`` (case-insensitive); specs pass through."""
    if isinstance(name, DeviceSpec):
        return name
    spec = DEVICES.get(str(name).strip().lower())
    if spec is None:
        raise UnknownSpecError(f"unknown device {name!r}; valid names: {', '.join(sorted(DEVICES))}")
    return spec


def plan_memory(
    model: ModelSpec | str,
    device: DeviceSpec | str,
    tp: int,
    *,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    block_size: int = BLOCK_SIZE,
    batch_size_cap: int = DEFAULT_BATCH_SIZE_CAP,
    memory_margin_fraction: float = DEFAULT_MEMORY_MARGIN_FRACTION,
    pipeline_stages: int = 1,
) -> MemoryPlan:
    """KV-cache blocks and batch-size limit of one replica, exactly as Vidur's main branch plans them.

    Memory for KV = total GiB * (1 - margin) - 2 bytes * weights per device (ParamCounter,
    layers of one pipeline stage). Each request slot reserves ``max_tokens`` of KV over *all*
    ``num_layers`` (Vidur main's quirk when pipeline_stages > 1), slots = planner batch size
    * pipeline_stages, num_blocks = (max_tokens // block_size) * slots, and the batch size is the
    planner batch size capped by ``batch_size_cap``. With one stage this equals the token-based
    planner of the PyPI build.
    """
    model, device = get_model(model), get_device(device)
    model.check_parallelism(tp, pipeline_stages)
    limits = (("max_tokens", max_tokens), ("block_size", block_size), ("batch_size_cap", batch_size_cap))
    for field_name, value in limits:
        if not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{field_name} must be a positive int, got {value!r}")
    if not 0 <= memory_margin_fraction < 1:
        raise ConfigError(f"memory_margin_fraction must be in [0, 1), got {memory_margin_fraction!r}")

    available = device.memory_gb * 1024**3 * (1 - memory_margin_fraction)
    weights = BYTES_PER_PARAM * model.params_per_layer(tp) * (model.num_layers // pipeline_stages)
    kv_bytes_per_token = model.kv_bytes_per_token_per_layer(tp) * model.num_layers
    planner_batch = int((available - weights) // (kv_bytes_per_token * max_tokens))
    if planner_batch <= 0:
        raise ConfigError(
            f"{model.name} at tp={tp}, pipeline_stages={pipeline_stages} leaves no room on a {device.name} "
            f"({device.memory_gb} GB) for even one request of max_tokens={max_tokens}"
        )
    slots = planner_batch * pipeline_stages
    num_blocks = (max_tokens // block_size) * slots
    return MemoryPlan(
        num_blocks=num_blocks,
        max_batch_size=min(planner_batch, batch_size_cap),
        max_kv_tokens=num_blocks * block_size,
        kv_bytes_per_token=kv_bytes_per_token,
        request_slots=slots,
    )
