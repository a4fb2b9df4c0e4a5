"""The training config: one typed source for JSON keys and CLI flags, and errors that say where."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sb3_klppo.cli import build_parser, config_from_args, main
from sb3_klppo.config import (
    ConfigError,
    TrainConfig,
    all_knobs,
    config_to_dict,
    config_to_flags,
    flag_table_markdown,
    load_config,
    save_config,
)
from sb3_klppo.pipeline import evaluation_routers, preflight
from vidur_env.cache_routers import CACHE_ROUTERS
from vidur_env.routers import ROUTERS, load_only_routers

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def parse(argv: list[str]) -> TrainConfig:
    return config_from_args(build_parser().parse_args(["train", *argv]))


def write_config(tmp_path: Path, edit) -> Path:
    """The default config as JSON with ``edit`` applied to its dict."""
    data = config_to_dict(TrainConfig())
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data, indent=2))
    return path


def test_every_knob_has_a_unique_flag_and_a_help_line():
    knobs = all_knobs()
    assert len({k.flag for k in knobs}) == len(knobs)
    assert all(k.help for k in knobs)
    table = flag_table_markdown()
    assert all(f"`{k.key}`" in table for k in knobs)
    assert "`kl_regularization.kl_coef` | `--kl-coef`" in table


def test_the_guides_knob_table_is_the_generated_one_with_whole_help_texts():
    guide = (CONFIGS.parent / "docs" / "kl_regularization.md").read_text()
    assert flag_table_markdown() in guide  # regenerate with `python -m sb3_klppo flags`
    vec_env = next(k for k in all_knobs() if k.key == "ppo.vec_env")
    assert vec_env.help.endswith("worth it when an env step costs more than the inter-process round trip).")


@pytest.mark.parametrize("name", sorted(path.name for path in CONFIGS.glob("*.json")))
def test_flags_round_trip(name):
    config = load_config(CONFIGS / name)
    assert parse(config_to_flags(config)) == config


def test_embedded_defaults_are_the_warmstart_config():
    assert load_config(CONFIGS / "ppo_warmstart.json") == TrainConfig()


def test_online_config_has_no_warm_start_and_no_reference_pull():
    config = load_config(CONFIGS / "ppo_online.json")
    assert not config.warm_start.enabled
    assert config.kl_regularization.kl_ref_coef_initial == 0


def test_flag_overrides_the_file_and_only_that_key():
    config = parse(["--config", str(CONFIGS / "ppo_warmstart.json"), "--kl-coef", "0.3", "--no-warm-start",
                    "--env-kwargs", '{"num_replicas": 8}', "--eval-routers", "jsq,lor", "--target-kl", "null"])
    base = TrainConfig()
    assert config.kl_regularization.kl_coef == 0.3
    assert config.kl_regularization.target_kl is None
    assert not config.warm_start.enabled
    assert config.env.kwargs == {"num_replicas": 8}
    assert config.evaluation.routers == ["jsq", "lor"]
    assert config.ppo == base.ppo and config.monitoring == base.monitoring


def test_saved_config_loads_back(tmp_path):
    config = parse(["--kl-coef", "0.25", "--total-timesteps", "1000"])
    save_config(config, tmp_path / "c.json")
    assert load_config(tmp_path / "c.json") == config


def test_integer_values_are_accepted_for_numbers(tmp_path):
    path = write_config(tmp_path, lambda d: d["kl_regularization"].update(kl_coef=1))
    assert load_config(path).kl_regularization.kl_coef == 1.0


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda d: d["kl_regularization"].update(kl_cof=0.1), r"unknown key 'kl_regularization\.kl_cof'"),
        (lambda d: d.update(extra_block={}), r"unknown key 'extra_block'"),
        (lambda d: d["ppo"].update(n_steps="512"), r"ppo\.n_steps: expected integer, got \"512\""),
        (lambda d: d["ppo"].update(n_steps=512.5), r"ppo\.n_steps: expected integer"),
        (lambda d: d["warm_start"].update(enabled=1), r"warm_start\.enabled: expected true/false"),
        (lambda d: d["evaluation"].update(routers="lor"), r"evaluation\.routers: expected list of strings"),
        (lambda d: d["evaluation"].update(routers=["lor", 3]),
         r"evaluation\.routers: expected list of strings or null, got \[\"lor\", 3\]"),
        (lambda d: d.update(ppo=[]), r"ppo: expected a JSON object"),
        (lambda d: d["kl_regularization"].update(kl_coef=-0.1), r"kl_regularization\.kl_coef: must be >= 0, got -0\.1"),
        (lambda d: d["ppo"].update(gamma=1.5), r"ppo\.gamma: must be <= 1"),
        (lambda d: d["monitoring"].update(target_kl_action="panic"), r"target_kl_action: must be one of warn, adapt, stop"),
    ],
)
def test_invalid_values_name_the_key_and_the_file(tmp_path, edit, expected):
    path = write_config(tmp_path, edit)
    with pytest.raises(ConfigError, match=expected) as error:
        load_config(path)
    assert str(path) in str(error.value)


def test_errors_give_the_line_of_the_key(tmp_path):
    path = write_config(tmp_path, lambda d: d["kl_regularization"].update(kl_coef=-1))
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if '"kl_coef"' in text)
    with pytest.raises(ConfigError, match=rf"{path}, line {line}: kl_regularization\.kl_coef"):
        load_config(path)


def test_json_syntax_errors_give_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "seed": 1,\n  "ppo": {"n_steps": 64,}\n}\n')
    with pytest.raises(ConfigError, match=rf"{path}, line 3 column \d+: invalid JSON"):
        load_config(path)


def test_a_key_given_twice_in_json_is_an_error_not_last_wins(tmp_path):
    path = tmp_path / "twice.json"
    path.write_text('{\n  "ppo": {"n_steps": 64, "n_steps": 128}\n}\n')
    with pytest.raises(ConfigError, match=rf"{path}: key 'n_steps' is given twice in one object"):
        load_config(path)


def test_bad_flag_values_name_the_flag_and_the_key():
    with pytest.raises(ConfigError, match=r"--kl-coef \(config key kl_regularization\.kl_coef\): must be >= 0"):
        parse(["--kl-coef", "-1"])
    with pytest.raises(ConfigError, match=r"--n-steps .*expected integer, got 'many'"):
        parse(["--n-steps", "many"])
    with pytest.raises(ConfigError, match=r"--env-kwargs .*invalid JSON"):
        parse(["--env-kwargs", "{num_replicas: 8}"])


def test_cli_reports_config_errors_with_exit_status_2(tmp_path, capsys):
    path = write_config(tmp_path, lambda d: d["ppo"].update(batch_sise=64))
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "ppo.batch_sise" in err and str(path) in err and "Traceback" not in err
    assert main(["train", "--config", str(tmp_path / "missing.json")]) == 2
    assert "cannot read config file" in capsys.readouterr().err


def test_default_evaluation_routers_are_every_load_only_router_the_registry_holds():
    assert TrainConfig().evaluation.routers is None
    routers = evaluation_routers(TrainConfig())
    assert set(routers) == set(ROUTERS) - set(CACHE_ROUTERS)
    assert {"speed_aware_lwl", "staleness_aware_lwl"} <= set(routers)
    assert routers == load_only_routers()  # the expert, least_work_left, is one of them: not added twice


def test_an_explicit_router_list_is_kept_and_null_means_the_registry_default():
    assert evaluation_routers(parse(["--eval-routers", "jsq,lor"])) == ["jsq", "lor", "least_work_left"]
    assert evaluation_routers(parse(["--eval-routers", "jsq", "--no-warm-start"])) == ["jsq"]
    given = parse(["--config", str(CONFIGS / "ppo_online.json"), "--eval-routers", "null"])
    assert given.evaluation.routers is None and evaluation_routers(given) == load_only_routers()


@pytest.mark.parametrize("expert", load_only_routers())
def test_preflight_accepts_every_registered_load_only_router_as_expert(expert):
    preflight(parse(["--expert", expert]))


def test_preflight_names_the_registry_when_the_expert_is_unknown():
    with pytest.raises(ConfigError, match=r"warm_start\.expert: unknown router 'fastest'; choose from .*staleness_aware_lwl"):
        preflight(parse(["--expert", "fastest"]))


def test_preflight_refuses_keeping_the_best_policy_without_a_learning_curve():
    with pytest.raises(ConfigError, match=r"monitoring\.keep_best: .*curve_every above 0"):
        preflight(parse(["--keep-best", "e2e_mean", "--curve-every", "0"]))


# YAML configs


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_a_yaml_config_equals_the_json_one(tmp_path, suffix):
    json_config = load_config(CONFIGS / "ppo_online.json")
    path = tmp_path / f"online{suffix}"
    path.write_text(yaml.safe_dump(json.loads((CONFIGS / "ppo_online.json").read_text()), sort_keys=False))
    assert load_config(path) == json_config


def test_a_hand_written_yaml_config_reads_like_its_json_twin(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "# a partial config: the rest keeps its defaults\n"
        "ppo:\n"
        "  learning_rate: 0.001   # PyYAML reads 1e-3 (no dot) as a string\n"
        "  n_envs: 4\n"
        "kl_regularization: {kl_coef: 0.0, target_kl: null}\n"
        "evaluation:\n"
        "  routers: [jsq, lor]\n"
        "env:\n"
        "  kwargs:\n"
        "    num_replicas: 8\n")
    (tmp_path / "c.json").write_text(json.dumps({
        "ppo": {"learning_rate": 0.001, "n_envs": 4}, "kl_regularization": {"kl_coef": 0.0, "target_kl": None},
        "evaluation": {"routers": ["jsq", "lor"]}, "env": {"kwargs": {"num_replicas": 8}}}))
    assert load_config(tmp_path / "c.yaml") == load_config(tmp_path / "c.json")
    assert parse(["--config", str(tmp_path / "c.yaml"), "--n-envs", "2"]).ppo.n_envs == 2


YAML_WITH_ERRORS = """\
# line 1
ppo:
  n_envs: 4

kl_regularization:
  kl_coef: {kl_coef}
  {extra}
"""


@pytest.mark.parametrize(
    "kl_coef, extra, expected",
    [
        ("-1", "", r"line 6: kl_regularization\.kl_coef: must be >= 0, got -1"),
        ("0.1", "kl_cof: 0.2", r"line 7: unknown key 'kl_regularization\.kl_cof'"),
        ("0.1", "kl_coef: 0.2", r"line 7: key 'kl_regularization\.kl_coef' is given twice \(first at line 6\)"),
        ("2024-01-01", "", r"line 6: kl_regularization\.kl_coef: expected number, got \"datetime\.date\(2024, 1, 1\)\""),
        ("0.1", "  nested: 1", r"line 7 column 11: invalid YAML: mapping values are not allowed here$"),
        ("[0.1", "", r"line \d+ column \d+: invalid YAML: .* \(while parsing a flow sequence that starts at line 6 column 12\)$"),
    ],
)
def test_yaml_errors_name_the_file_the_line_and_the_key(tmp_path, kl_coef, extra, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(YAML_WITH_ERRORS.format(kl_coef=kl_coef, extra=extra))
    with pytest.raises(ConfigError, match=rf"^{path}, " + expected):
        load_config(path)


def test_yaml_objects_must_hold_plain_json_data(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text("env:\n  kwargs:\n    start: 2024-01-01\n")
    with pytest.raises(ConfigError, match=rf"{path}, line 2: env\.kwargs: expected JSON object"):
        load_config(path)


def test_cli_reports_yaml_errors_with_exit_status_2(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("seed: 1\nppo:\n  batch_sise: 64\n")
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}, line 3: unknown key 'ppo.batch_sise'" in err and "Traceback" not in err
