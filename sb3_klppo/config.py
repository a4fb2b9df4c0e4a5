"""The training configuration: typed dataclasses that are the one source of truth for the JSON
and YAML config files, the CLI flags and their help.

Each field of a block is one JSON key *and* one flag (``kl_regularization.kl_coef`` is
``--kl-coef``); its one-line attribute docstring is the flag's help; its ``knob(...)`` metadata
holds the flag name when it differs from the key and the valid range. Adding a knob is adding a
field here. ``python -m sb3_klppo flags`` prints the mapping as a markdown table.

Loading checks every key: unknown keys, wrong types and out-of-range values raise
:class:`ConfigError` naming the key, the file and (when it can be found) the line. A ``.yaml`` or
``.yml`` file is read with PyYAML's safe loader and checked exactly like JSON; its lines come from
the parser's node marks, and a key written twice is an error rather than YAML's silent last-wins.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import math
import pathlib
import textwrap
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, partial
from typing import Any

import yaml
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from sb3_klppo.callbacks import CURVE_FIGURES, TARGET_KL_ACTIONS
from sb3_klppo.errors import ConfigError
from sb3_klppo.klppo import DEFAULT_KL_ESTIMATOR, KL_ESTIMATORS

VEC_ENV_CLASSES: dict[str, type[VecEnv]] = {"dummy": DummyVecEnv, "subproc": SubprocVecEnv}
"""SB3's vectorised-env class for each ``ppo.vec_env`` choice (the first is the default)."""

DEFAULT_ENV_ID = "vidur_env:VidurRouting-v0"
YAML_SUFFIXES = (".yaml", ".yml")
"""Config file suffixes read as YAML; any other is read as JSON."""


def knob(
    default: Any = dataclasses.MISSING,
    *,
    factory: Any = dataclasses.MISSING,
    flag: str | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """A config field: its default, the CLI flag when it is not ``--<key-with-dashes>`` and its range."""
    metadata = {"flag": flag, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices}
    return field(default=default, default_factory=factory, metadata=metadata)


# ---------------------------------------------------------------------------------------------
# The blocks
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnvConfig:
    """Which environment to train on."""

    id: str = knob(DEFAULT_ENV_ID, flag="--env-id")
    """Gymnasium id; ``module:Name-vN`` imports the module first."""
    kwargs: dict[str, Any] = knob(factory=dict, flag="--env-kwargs")
    """Keyword arguments of gymnasium.make (the scenario), as a JSON object; the env validates them."""


@dataclass(frozen=True)
class PPOConfig:
    """PPO's own hyperparameters and the policy network."""

    policy: str = knob("ReplicaSetPolicy")
    """Policy class alias: ReplicaSetPolicy (per-replica scores) or MlpPolicy."""
    policy_kwargs: dict[str, Any] = knob(factory=dict)
    """Policy constructor arguments as a JSON object, e.g. {"net_arch": [64, 64]}."""
    total_timesteps: int = knob(131_072, gt=0)
    """Environment steps (routing decisions) of PPO training, summed over envs."""
    n_envs: int = knob(8, ge=1)
    """Environment copies stepped together (see vec_env)."""
    baseline_group: int = knob(1, ge=1)
    """Envs that replay each training workload together, for an input-driven baseline: an
    advantage is taken relative to the other members' at the same step, which cancels the
    arrivals' share of the return's variance (sb3_klppo.input_baseline). Must divide n_envs;
    1: off (SB3's GAE advantages)."""
    vec_env: str = knob(next(iter(VEC_ENV_CLASSES)), choices=tuple(VEC_ENV_CLASSES))
    """How the copies run: dummy (one process, in turn; SB3's DummyVecEnv) or subproc (one process
    each, in parallel; SB3's SubprocVecEnv, worth it when an env step costs more than the
    inter-process round trip)."""
    normalize_reward: bool = knob(True, flag="--normalize-reward")
    """Divide rewards by a running std of the discounted return (SB3 VecNormalize; observations untouched)."""
    n_steps: int = knob(512, ge=2)
    """Steps per env per rollout; an update uses n_steps * n_envs transitions."""
    batch_size: int = knob(256, ge=2)
    """Minibatch size of the gradient steps."""
    n_epochs: int = knob(4, ge=1)
    """Passes over each rollout."""
    learning_rate: float = knob(3e-4, gt=0)
    """Adam learning rate."""
    gamma: float = knob(0.99, gt=0, le=1)
    """Discount factor."""
    gae_lambda: float = knob(0.95, ge=0, le=1)
    """GAE bias/variance trade-off."""
    clip_range: float = knob(0.1, gt=0)
    """PPO clipping of the probability ratio."""
    ent_coef: float = knob(0.0, ge=0)
    """Entropy bonus weight (constant)."""
    vf_coef: float = knob(0.5, ge=0)
    """Value-loss weight."""
    max_grad_norm: float = knob(0.5, gt=0)
    """Gradient clipping norm."""


@dataclass(frozen=True)
class KLRegularizationConfig:
    """KLPPO's KL penalties, reference schedule and entropy safeguards."""

    target_kl: float | None = knob(0.02, gt=0)
    """approx_kl an update should stay below (monitoring threshold); null disables the monitor."""
    kl_coef: float = knob(0.1, ge=0)
    """Weight of the penalty on KL(pi_old || pi_theta), the drift from the rollout policy."""
    kl_estimator: str = knob(DEFAULT_KL_ESTIMATOR, choices=tuple(KL_ESTIMATORS))
    """Estimator of that KL: k1_clamped, k3 or exact."""
    kl_ref_coef_initial: float = knob(0.5, ge=0)
    """Weight of KL(pi_theta || pi_ref) towards the warm-start policy at gradient step 0."""
    kl_ref_coef_final: float = knob(0.1, ge=0)
    """Weight of the reference KL after kl_ref_decay_steps gradient steps."""
    kl_ref_decay_steps: int = knob(1000, ge=0)
    """Gradient (minibatch) steps of the linear decay from initial to final."""
    entropy_min: float | None = knob(0.05, ge=0)
    """Entropy floor in nats, penalised below; null disables it."""
    entropy_min_coef: float = knob(1.0, ge=0)
    """Weight of the entropy-floor hinge."""
    entropy_warmup_coef: float = knob(0.0, ge=0)
    """Extra entropy bonus at gradient step 0, fading to 0."""
    entropy_warmup_steps: int = knob(0, ge=0)
    """Gradient steps over which the warm-up bonus fades."""


@dataclass(frozen=True)
class WarmStartConfig:
    """Behaviour cloning of a heuristic router before PPO; the clone becomes the KL reference."""

    enabled: bool = knob(True, flag="--warm-start")
    """Clone the expert before PPO (--no-warm-start to train from scratch)."""
    expert: str = knob("least_work_left", flag="--expert")
    """Router to imitate, by registry name (vidur_env.routers.ROUTERS; checked before training)."""
    n_samples: int = knob(8192, ge=1, flag="--bc-samples")
    """Expert decisions collected for cloning."""
    bc_epochs: int = knob(10, ge=1)
    """Passes over the expert data."""
    bc_batch_size: int = knob(256, ge=1)
    """Minibatch size of cloning."""
    bc_learning_rate: float = knob(1e-3, gt=0)
    """Adam learning rate of cloning."""
    fit_value: bool = knob(True, flag="--bc-fit-value")
    """Also fit the critic on the expert's discounted returns."""


@dataclass(frozen=True)
class MonitoringConfig:
    """Logs, checkpoints and the target-KL watch."""

    tensorboard: bool = knob(True, flag="--tensorboard")
    """Write TensorBoard event files into the output dir."""
    csv: bool = knob(True, flag="--csv")
    """Write progress.csv (SB3's logger) and kl_stats.csv (one row per update)."""
    log_interval: int = knob(1, ge=1)
    """Rollouts between SB3 logger dumps."""
    target_kl_action: str = knob(TARGET_KL_ACTIONS[0], choices=TARGET_KL_ACTIONS)
    """On approx_kl > target_kl: warn, adapt kl_coef, or stop training."""
    target_kl_patience: int = knob(3, ge=1)
    """Consecutive exceedances before target_kl_action=stop ends training."""
    checkpoint_freq: int = knob(0, ge=0)
    """Save a checkpoint every this many steps per env (0: none)."""
    progress_bar: bool = knob(True, flag="--progress-bar")
    """At verbose >= 1, one progress bar over the whole job (cloning, training, evaluations)."""
    verbose: int = knob(1, ge=0, le=2)
    """0: errors and the final table only; 1: progress bar and a summary as well; 2: SB3's logger table too."""
    curve_every: int = knob(4, ge=0)
    """PPO updates between learning-curve evaluations of the current policy (0: no curve)."""
    curve_episodes: int = knob(3, ge=1)
    """Episodes per learning-curve point, on the same fixed seeds every time (after the evaluation's)."""
    keep_best: str | None = knob(None, choices=tuple(CURVE_FIGURES))
    """End with the policy of the best learning-curve point by this figure (return_mean: higher is
    better; e2e_mean, ttft_mean: lower), like SB3's EvalCallback best model; null: the last policy.
    Chosen on the curve's episodes, never the evaluation's; needs curve_every > 0."""


@dataclass(frozen=True)
class EvaluationConfig:
    """Evaluation of the trained router against heuristics on the same workloads."""

    enabled: bool = knob(True, flag="--evaluate")
    """Evaluate after training (needs the vidur_env evaluation harness)."""
    routers: list[str] | None = knob(None, flag="--eval-routers")
    """Heuristic routers to compare with, comma-separated on the CLI; null: every load-only router vidur_env registers; the expert is always added."""
    episodes: int = knob(10, ge=1, flag="--eval-episodes")
    """Evaluation episodes (workload draws) per router."""
    num_requests: int | None = knob(None, ge=1, flag="--eval-requests")
    """Requests per evaluation episode; null keeps the env's episode length."""
    seed: int = knob(1000, flag="--eval-seed")
    """Seed of the evaluation workloads (distinct from training's)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs."""

    env: EnvConfig = field(default_factory=EnvConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    kl_regularization: KLRegularizationConfig = field(default_factory=KLRegularizationConfig)
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    seed: int = knob(0)
    """Seed of the envs, the networks and the cloning split."""
    torch_threads: int = knob(1, ge=1)
    """CPU threads of torch; 1 is fastest for these small networks on a 2-core machine."""
    output_dir: str = knob("runs/ppo_warmstart")
    """Run directory prefix: each run writes into <output_dir>_<N>, N the next unused number."""
    number_runs: bool = knob(True, flag="--number-runs")
    """Number the run directories (--no-number-runs: write into output_dir itself)."""
    overwrite: bool = knob(False, flag="--overwrite")
    """Allow writing into a directory that holds a finished run (files of the same name are replaced)."""
    resume: str | None = knob(None)
    """Saved model.zip to continue from in a new run directory, on new workloads: weights, reference and KL schedule kept, no warm start."""


BLOCKS: dict[str, type] = {
    "env": EnvConfig,
    "ppo": PPOConfig,
    "kl_regularization": KLRegularizationConfig,
    "warm_start": WarmStartConfig,
    "monitoring": MonitoringConfig,
    "evaluation": EvaluationConfig,
}
"""The nested blocks of :class:`TrainConfig`, by JSON key."""


# ---------------------------------------------------------------------------------------------
# Field descriptions: key, flag, type, help
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Knob:
    """One leaf of the config: where it lives, its flag, its type and its help line."""

    block: str | None
    """Block name, None for top-level keys."""
    field: dataclasses.Field
    annotation: Any
    help: str

    @property
    def name(self) -> str:
        return self.field.name

    @property
    def key(self) -> str:
        """Dotted key, e.g. ``kl_regularization.kl_coef``."""
        return f"{self.block}.{self.name}" if self.block else self.name

    @property
    def flag(self) -> str:
        return self.field.metadata.get("flag") or "--" + self.name.replace("_", "-")

    @property
    def dest(self) -> str:
        """argparse destination: the dotted key with dots replaced (unique by construction)."""
        return self.key.replace(".", "__")


@cache
def attribute_docs(cls: type) -> dict[str, str]:
    """Each field's attribute docstring (the string right after the field), as one line: its
    whole text, so a help or table cell never stops mid-sentence."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, following in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def _leaf_knobs(cls: type, block: str | None) -> list[Knob]:
    hints, docs = typing.get_type_hints(cls), attribute_docs(cls)
    return [
        Knob(block, f, hints[f.name], docs.get(f.name, ""))
        for f in dataclasses.fields(cls)
        if not (cls is TrainConfig and f.name in BLOCKS)
    ]


@cache
def all_knobs() -> tuple[Knob, ...]:
    """Every leaf of :class:`TrainConfig`, block by block, then the top-level keys."""
    knobs = [k for name, cls in BLOCKS.items() for k in _leaf_knobs(cls, name)]
    knobs += _leaf_knobs(TrainConfig, None)
    flags = [k.flag for k in knobs]
    duplicates = {f for f in flags if flags.count(f) > 1}
    if duplicates:
        raise RuntimeError(f"config flags must be unique; duplicated: {sorted(duplicates)}")
    return tuple(knobs)


# ---------------------------------------------------------------------------------------------
# Type and range checks (shared by the JSON loader and the CLI overrides)
# ---------------------------------------------------------------------------------------------


def _optional_inner(annotation: Any) -> Any | None:
    """``X`` for ``X | None``, else None."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return None


def value_type(knob_: Knob) -> Any:
    """The knob's type with ``| None`` removed (``list[str]`` for ``list[str] | None``)."""
    inner = _optional_inner(knob_.annotation)
    return knob_.annotation if inner is None else inner


def holds_collection(knob_: Knob) -> bool:
    """Whether the knob's values are lists or objects, whose flag strings hold commas."""
    return typing.get_origin(value_type(knob_)) in (list, dict)


def metavar(knob_: Knob) -> str:
    """Short placeholder of a flag's value in ``--help`` (choices spelled out)."""
    choices = knob_.field.metadata.get("choices")
    if choices:
        return "{" + ",".join(choices) + "}"
    annotation = value_type(knob_)
    origin = typing.get_origin(annotation)
    name = "NAME,..." if origin is list else "JSON" if origin is dict else {int: "INT", float: "FLOAT", str: "STR"}[annotation]
    return name if annotation is knob_.annotation else f"{name}|null"


def type_name(annotation: Any) -> str:
    """Human name of a field type, as used in errors and the flag table."""
    inner = _optional_inner(annotation)
    if inner is not None:
        return f"{type_name(inner)} or null"
    origin = typing.get_origin(annotation)
    if origin is list:
        return "list of strings"
    if origin is dict:
        return "JSON object"
    return {int: "integer", float: "number", bool: "true/false", str: "string"}[annotation]


def _show(value: Any) -> str:
    """A value as JSON in an error message; what JSON cannot spell (a YAML date, set or bytes) by repr."""
    return json.dumps(value, default=repr)


def _is_json(value: Any) -> bool:
    """Whether ``value`` is plain JSON data (what a YAML file may hold beyond it, such as dates, is not)."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_is_json(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def _matches(value: Any, annotation: Any) -> bool:
    """Whether a JSON value has the field's type (ints are numbers; bools are not ints)."""
    inner = _optional_inner(annotation)
    if inner is not None:
        return value is None or _matches(value, inner)
    origin = typing.get_origin(annotation)
    if origin is list:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if origin is dict:
        return isinstance(value, dict) and _is_json(value)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, annotation)


BOUNDS = (
    ("ge", ">=", lambda v, limit: v >= limit),
    ("gt", ">", lambda v, limit: v > limit),
    ("le", "<=", lambda v, limit: v <= limit),
    ("lt", "<", lambda v, limit: v < limit),
)
"""Range metadata keys of :func:`knob`, their symbol in errors, and their test."""


def check_value(knob_: Knob, value: Any) -> Any:
    """Return ``value`` (ints widened to float where a number is expected) or raise with the reason."""
    if not _matches(value, knob_.annotation):
        raise ValueError(f"expected {type_name(knob_.annotation)}, got {_show(value)}")
    if value is None:
        return None
    meta = knob_.field.metadata
    if meta.get("choices") and value not in meta["choices"]:
        raise ValueError(f"must be one of {', '.join(meta['choices'])}, got {value!r}")
    for name, symbol, holds in BOUNDS:
        limit = meta.get(name)
        if limit is not None and not holds(value, limit):
            raise ValueError(f"must be {symbol} {limit}, got {value!r}")
    if knob_.annotation is float or _optional_inner(knob_.annotation) is float:
        return float(value)
    return value


# ---------------------------------------------------------------------------------------------
# Config files <-> dataclasses
# ---------------------------------------------------------------------------------------------

KeyLines = Callable[[str], "int | None"]
"""The 1-based line of a dotted key in the file it came from, or None where it cannot be told."""


def no_lines(key: str) -> None:
    """:data:`KeyLines` of a config that is not a file (a dict given in Python)."""
    return None


def key_line(text: str | None, key: str) -> int | None:
    """1-based line of a dotted key in the JSON text: the block's line, then the key's line after it."""
    if not text:
        return None
    lines, start = text.splitlines(), 0
    for part in key.split("."):
        needle = json.dumps(part) + ":"
        hits = [i for i in range(start, len(lines)) if needle in lines[i].replace(" ", "").replace("\t", "")]
        if not hits:
            return None
        start = hits[0]
    return start + 1


def yaml_key_lines(node: yaml.Node, source: str, prefix: str = "") -> dict[str, int]:
    """1-based line of every key of a composed YAML document, dotted by nesting (``ppo.n_steps``),
    from the parser's marks; a key written twice in one mapping raises (YAML keeps the last silently)."""
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key, line = f"{prefix}{key_node.value}", key_node.start_mark.line + 1
            if key in lines:
                raise ConfigError(f"{source}, line {line}: key {key!r} is given twice (first at line {lines[key]})")
            lines[key] = line
            lines.update(yaml_key_lines(value_node, source, key + "."))
    return lines


def _where(source: str, lines: KeyLines, key: str) -> str:
    line = lines(key)
    return f"{source}, line {line}" if line else source


def _build(cls: type, data: Any, block: str | None, source: str, lines: KeyLines) -> Any:
    """One dataclass from one JSON object, every key checked."""
    label = block or "top level"
    if not isinstance(data, dict):
        raise ConfigError(f"{_where(source, lines, block or '')}: {label}: expected a JSON object, got {_show(data)}")
    knobs = {k.name: k for k in _leaf_knobs(cls, block)}
    nested = {name for name in BLOCKS if cls is TrainConfig}
    unknown = sorted(set(data) - set(knobs) - nested, key=str)
    if unknown:
        key = f"{block}.{unknown[0]}" if block else str(unknown[0])
        valid = ", ".join(sorted(set(knobs) | nested))
        raise ConfigError(f"{_where(source, lines, key)}: unknown key {key!r}; valid keys of {label}: {valid}")
    values = {}
    for name, value in data.items():
        if name in nested:
            values[name] = _build(BLOCKS[name], value, name, source, lines)
            continue
        try:
            values[name] = check_value(knobs[name], value)
        except ValueError as error:
            raise ConfigError(f"{_where(source, lines, knobs[name].key)}: {knobs[name].key}: {error}") from None
    return cls(**values)


def config_from_dict(data: Any, source: str = "<dict>", lines: KeyLines = no_lines) -> TrainConfig:
    """A :class:`TrainConfig` from parsed JSON or YAML; missing keys take their defaults."""
    return _build(TrainConfig, data, None, source, lines)


class RepeatedKeyError(ConfigError):
    """A JSON object names one key twice (the message is the key; turned into a ConfigError
    naming the file before it reaches a user)."""


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object from its pairs; a key given twice raises, where ``json`` keeps the last silently."""
    names = [name for name, _ in pairs]
    repeated = [name for name in names if names.count(name) > 1]
    if repeated:
        raise RepeatedKeyError(repeated[0])
    return dict(pairs)


def parse_json(text: str, source: str) -> tuple[Any, KeyLines]:
    """The data of a JSON config and where its keys are."""
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs), partial(key_line, text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{source}, line {error.lineno} column {error.colno}: invalid JSON: {error.msg}") from None
    except RepeatedKeyError as error:
        raise ConfigError(f"{source}: key {error.args[0]!r} is given twice in one object") from None


def _mark_text(mark: yaml.Mark) -> str:
    return f"line {mark.line + 1} column {mark.column + 1}"


def _yaml_error_text(error: yaml.MarkedYAMLError) -> str:
    """Where the parser stopped and why, and where the construct it was reading began (an unclosed
    bracket is found at the end of the file, but written where it opens)."""
    problem, context = error.problem_mark, error.context_mark
    text = f"{_mark_text(problem or context)}: invalid YAML: {error.problem or error.context}"
    if problem and context and error.context:
        text += f" ({error.context} that starts at {_mark_text(context)})"
    return text


def parse_yaml(text: str, source: str) -> tuple[Any, KeyLines]:
    """The data of a YAML config (safe loader: plain data only) and where its keys are."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:
        raise ConfigError(f"{source}, {_yaml_error_text(error)}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: invalid YAML: {error}") from None
    return data, yaml_key_lines(node, source).get


def load_config(path: str | pathlib.Path) -> TrainConfig:
    """Read and validate a JSON or YAML (``.yaml``/``.yml``) config file; errors name the file, the key and the line."""
    path = pathlib.Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config file: {error.strerror}") from None
    parse = parse_yaml if path.suffix.lower() in YAML_SUFFIXES else parse_json
    data, lines = parse(text, str(path))
    return config_from_dict(data, str(path), lines)


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain JSON-ready dict (the inverse of :func:`config_from_dict`)."""
    return dataclasses.asdict(config)


def save_config(config: TrainConfig, path: str | pathlib.Path) -> None:
    """Write the config as indented JSON, loadable with :func:`load_config`."""
    pathlib.Path(path).write_text(json.dumps(config_to_dict(config), indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------------------------------


def get_value(config: TrainConfig, knob_: Knob) -> Any:
    holder = getattr(config, knob_.block) if knob_.block else config
    return getattr(holder, knob_.name)


def with_value(config: TrainConfig, knob_: Knob, value: Any) -> TrainConfig:
    """A copy of ``config`` with one leaf replaced (value already checked)."""
    if knob_.block is None:
        return dataclasses.replace(config, **{knob_.name: value})
    block = dataclasses.replace(getattr(config, knob_.block), **{knob_.name: value})
    return dataclasses.replace(config, **{knob_.block: block})


def parse_flag_value(knob_: Knob, text: str) -> Any:
    """Convert a flag's string to the field's JSON value (before :func:`check_value`)."""
    annotation = knob_.annotation
    inner = _optional_inner(annotation)
    if inner is not None:
        if text.strip().lower() in ("none", "null"):
            return None
        annotation = inner
    if annotation is bool:
        if text.strip().lower() not in ("true", "false"):
            raise ValueError(f"expected true or false, got {text!r}")
        return text.strip().lower() == "true"
    origin = typing.get_origin(annotation)
    if origin is list:
        return [item.strip() for item in text.split(",") if item.strip()]
    if origin is dict:
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"invalid JSON ({error.msg} at column {error.colno}): {text}") from None
    if annotation in (int, float):
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"expected {type_name(annotation)}, got {text!r}") from None
        return int(number) if annotation is int and number.is_integer() and "." not in text else number
    return text


def format_flag_value(knob_: Knob, value: Any) -> str:
    """The flag string that :func:`parse_flag_value` turns back into ``value``."""
    if value is None:
        return "null"
    if isinstance(value, list):
        return ",".join(value)
    if isinstance(value, dict):
        return json.dumps(value)
    return repr(value) if isinstance(value, float) else str(value)


def config_to_flags(config: TrainConfig) -> list[str]:
    """Flags that reproduce ``config`` from the defaults (every knob, one flag each)."""
    argv = []
    for knob_ in all_knobs():
        value = get_value(config, knob_)
        if knob_.annotation is bool:
            argv.append(knob_.flag if value else "--no-" + knob_.flag[2:])
        else:
            argv += [knob_.flag, format_flag_value(knob_, value)]
    return argv


def apply_overrides(config: TrainConfig, overrides: dict[Knob, Any]) -> TrainConfig:
    """Apply flag values (already parsed by argparse); errors name the flag and the key."""
    for knob_, raw in overrides.items():
        try:
            value = raw if isinstance(raw, bool) else parse_flag_value(knob_, raw)
            config = with_value(config, knob_, check_value(knob_, value))
        except ValueError as error:
            raise ConfigError(f"{knob_.flag} (config key {knob_.key}): {error}") from None
    return config


def flag_table_markdown() -> str:
    """The JSON key -> flag mapping as a markdown table (for the docs)."""
    rows = ["| JSON key | CLI flag | type | default | meaning |", "|---|---|---|---|---|"]
    defaults = TrainConfig()
    for knob_ in all_knobs():
        flag = f"`{knob_.flag}` / `--no-{knob_.flag[2:]}`" if knob_.annotation is bool else f"`{knob_.flag}`"
        default = json.dumps(get_value(defaults, knob_))
        rows.append(f"| `{knob_.key}` | {flag} | {type_name(knob_.annotation)} | `{default}` | {knob_.help} |")
    return "\n".join(rows)
