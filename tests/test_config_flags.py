"""Scenario flags derived from the config dataclasses: one name, type and help per field."""
from __future__ import annotations

import argparse
import typing
from dataclasses import dataclass

import pytest

from vidur_env import cli
from vidur_env.cli import (
    CLUSTER_FLAGS, REPLICA_FLAGS, WORKLOAD_FLAGS, EvaluateArgs, build_parser, main, scenario_from_args,
)
from vidur_env.config import TIME_MODEL_SOURCES, ClusterConfig, ReplicaConfig
from vidur_env.config_flags import DEFAULT_NOTE, FieldFlag, add_field_flags, field_docs, optional_inner
from vidur_env.scenarios import SCENARIOS, named_scenario
from vidur_env.workload import WorkloadConfig

FLAG_LISTS = ((ClusterConfig, CLUSTER_FLAGS), (ReplicaConfig, REPLICA_FLAGS), (WorkloadConfig, WORKLOAD_FLAGS))
DERIVED = [(cls, flag) for cls, flags in FLAG_LISTS for flag in flags]
COMMANDS = ("simulate", "evaluate")


def subparser(command: str, scenario: str = "default") -> argparse.ArgumentParser:
    """The parser of one subcommand."""
    commands = next(action for action in build_parser(scenario)._actions
                    if isinstance(action, argparse._SubParsersAction))
    return commands.choices[command]


def action_of(parser: argparse.ArgumentParser, dest: str) -> argparse.Action:
    return next(action for action in parser._actions if action.dest == dest)


def scenario_of(argv: list[str]):
    return scenario_from_args(build_parser().parse_args(["simulate", *argv]))


def field_owner(scenario, cls):
    """The object of ``scenario`` whose fields ``cls`` declares."""
    return {ClusterConfig: scenario.cluster, ReplicaConfig: scenario.cluster.replica,
            WorkloadConfig: scenario.workload}[cls]


def test_field_docs_read_the_attribute_docstrings_as_plain_text():
    assert field_docs(ReplicaConfig)["tensor_parallel"] == (
        "Tensor-parallel degree (GPUs per replica). Pipeline parallelism is not modelled.")
    offset = field_docs(WorkloadConfig)["trace_offset"]
    assert offset.startswith("First trace row used when rows are taken in file order (arrival=trace): rows offset ..")
    assert '"random" draws the offset' in offset and "``" not in offset and "\n" not in offset
    assert "see vidur_env.scenarios.TrafficRange)" in field_docs(WorkloadConfig)["prefill_scale"]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("cls, flag", DERIVED, ids=[flag.name for _, flag in DERIVED])
def test_a_derived_flags_help_is_its_fields_docstring_then_the_default(command, cls, flag):
    action = action_of(subparser(command), flag.name)
    doc = field_docs(cls)[flag.name]
    expected = f"{doc} {flag.note}" if flag.note else doc
    assert action.help == expected.replace("%", "%%") + DEFAULT_NOTE
    assert action.option_strings[0] == "--" + flag.name.replace("_", "-")


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_flag_left_out_keeps_the_scenarios_value(scenario):
    args = build_parser(scenario).parse_args(["simulate", "--scenario", scenario])
    assert scenario_from_args(args) == named_scenario(scenario)


def a_new_value(cls: type, flag: FieldFlag, default) -> tuple[list[str], object]:
    """Flags that set ``flag``'s field to a value other than ``default``, and that value."""
    kind = optional_inner(typing.get_type_hints(cls)[flag.name])
    spelling = "--" + flag.name.replace("_", "-")
    if kind is bool:
        return [spelling if not default else "--no-" + spelling[2:]], not default
    if flag.choices:
        value = next(choice for choice in flag.choices if choice != default)
        return [spelling, value], value
    if flag.name == "trace_offset":
        return [spelling, "3"], 3
    if kind is str:
        value = {"model": "llama-3-8b", "device": "h100"}.get(flag.name, "sample")
        return [spelling, value], value
    value = kind(7) if default is None else kind(default * 2 + 1)
    return [spelling, str(value)], value


@pytest.mark.parametrize("cls, flag", DERIVED, ids=[flag.name for _, flag in DERIVED])
def test_each_derived_flag_sets_its_field_and_nothing_else_of_its_config(cls, flag):
    base = named_scenario("default")
    argv, value = a_new_value(cls, flag, getattr(field_owner(base, cls), flag.name))
    changed = field_owner(scenario_of(argv), cls)
    assert getattr(changed, flag.name) == value
    follows = {"profiling_dir": {"time_model"}, "trace": {"arrival", "lengths", "num_requests"}}.get(flag.name, set())
    others = set(vars(changed)) - {flag.name, "replica"} - follows
    assert {name: getattr(changed, name) for name in others} == {
        name: getattr(field_owner(base, cls), name) for name in others}


@pytest.mark.parametrize("argv", [["--replicas", "2"], ["--num-replicas", "2"]])
def test_old_flag_names_are_aliases_of_the_field_named_flags(argv):
    assert scenario_of(["--tensor-parallel", "2"]) == scenario_of(["--tp", "2"]) != scenario_of([])
    assert scenario_of(["--tp", "2"]).cluster.replica.tensor_parallel == 2
    assert scenario_of(argv).cluster.num_replicas == 2


@pytest.mark.parametrize("typed", ["--tp", "--tensor-parallel"])
def test_an_error_names_the_flag_as_the_user_typed_it(typed, capsys):
    assert main(["simulate", "--num-requests", "8", typed, "3"]) == 2
    err = capsys.readouterr().err
    assert f"choose a {typed} that divides" in err and err.count("\n") == 1


@pytest.mark.parametrize("command", COMMANDS)
def test_a_field_added_to_a_flag_list_is_a_flag_of_both_subcommands(command, monkeypatch, capsys):
    """``time_model`` has no flag (``--profiling-dir`` picks it); listing it is all a flag takes."""
    monkeypatch.setattr(cli, "CLUSTER_FLAGS", CLUSTER_FLAGS + (FieldFlag("time_model", choices=TIME_MODEL_SOURCES),))
    with pytest.raises(SystemExit):
        main([command, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--time-model {builtin,profiled}" in help_text
    assert field_docs(ClusterConfig)["time_model"] in help_text
    args = build_parser().parse_args([command, "--time-model", "profiled"])
    assert scenario_from_args(args).cluster.time_model == "profiled"


@dataclass
class Undocumented:
    documented: int = 1
    """Has a help."""
    bare: int = 2
    mixed: int | str = 3
    """A row or a word."""


@pytest.mark.parametrize("name, message", [
    ("bare", "Undocumented.bare has no docstring to be the help of --bare"),
    ("mixed", "Undocumented.mixed: a int | str field needs FieldFlag(parse=...)"),
])
def test_a_field_without_help_or_without_a_parser_is_refused_when_the_parser_is_built(name, message):
    with pytest.raises(TypeError, match=message.replace("|", r"\|").replace("(", r"\(").replace(")", r"\)")):
        add_field_flags(argparse.ArgumentParser(), Undocumented(), (FieldFlag("documented"), FieldFlag(name)))


def test_evaluates_own_flags_come_from_evaluate_args_with_their_docstrings(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name, doc in field_docs(EvaluateArgs).items():
        assert f"--{name.replace('_', '-')}" in text and doc.split(" (")[0].split(".")[0] in text, name


def test_slo_flags_are_named_like_the_env_keywords_with_the_old_spellings_kept():
    parser = build_parser()
    new = parser.parse_args(["evaluate", "--slo-ttft-s", "0.5", "--slo-e2e-s", "9"])
    old = parser.parse_args(["evaluate", "--slo-ttft", "0.5", "--slo-e2e", "9"])
    assert (new.slo_ttft_s, new.slo_e2e_s) == (old.slo_ttft_s, old.slo_e2e_s) == (0.5, 9.0)
