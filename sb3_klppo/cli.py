"""``python -m sb3_klppo train|flags|sweep|suite`` (console script ``sb3-klppo``): argument parsing and dispatch.

``train`` resolves the config (file, then one flag per config knob) and runs
:func:`sb3_klppo.pipeline.train`; ``flags`` prints the JSON key -> flag table; ``sweep`` is
:mod:`sb3_klppo.sweep`'s; ``suite`` is :mod:`sb3_klppo.suite`'s. Output follows ``monitoring.verbose``: 0 prints errors and the final
table, 1 adds one progress bar over the whole job and a summary, 2 adds SB3's logger table at
every update.

Every user error (bad config, bad flag, unknown env or router, unreadable model) ends with a
one-line message on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import gymnasium as gym

from sb3_klppo import report
from sb3_klppo.config import (
    TrainConfig,
    all_knobs,
    apply_overrides,
    flag_table_markdown,
    get_value,
    metavar,
)
from sb3_klppo.pipeline import resolve_config, train
from sb3_klppo.suite import add_suite_parser, run_suite_command
from sb3_klppo.sweep import add_sweep_parser, run_sweep_command


def build_parser() -> argparse.ArgumentParser:
    """``train`` with one flag per config knob (help from the knob's docstring), ``flags`` and ``sweep``."""
    parser = argparse.ArgumentParser(prog="sb3-klppo", description="KL-regularised PPO training from JSON or YAML configs.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train, evaluate and report from a JSON or YAML config",
                                argument_default=argparse.SUPPRESS)
    train.add_argument("--config", help="JSON or YAML (.yaml/.yml) config file (default: the built-in defaults = configs/ppo_warmstart.json)")
    defaults = TrainConfig()
    groups: dict[str | None, Any] = {}
    for knob in all_knobs():
        if knob.block not in groups:
            groups[knob.block] = train.add_argument_group(knob.block or "run")
        help_text = f"{knob.help} [built-in: {json.dumps(get_value(defaults, knob))}]"
        if knob.annotation is bool:
            groups[knob.block].add_argument(knob.flag, dest=knob.dest, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            groups[knob.block].add_argument(knob.flag, dest=knob.dest, metavar=metavar(knob), help=help_text)
    commands.add_parser("flags", help="print the JSON key -> CLI flag table (markdown)")
    add_sweep_parser(commands)
    add_suite_parser(commands)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The config file (or the defaults) with every given flag applied on top."""
    given = {knob: getattr(args, knob.dest) for knob in all_knobs() if hasattr(args, knob.dest)}
    return apply_overrides(resolve_config(getattr(args, "config", None)), given)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sb3-klppo`` and ``python -m sb3_klppo``; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "flags":
        print(flag_table_markdown())
        return 0
    if args.command == "sweep":
        return run_sweep_command(args)
    if args.command == "suite":
        try:
            return run_suite_command(args)
        except (ValueError, gym.error.Error, OSError) as error:
            print(f"sb3-klppo: error: {error}", file=sys.stderr)
            return 2
    try:
        config = config_from_args(args)
        summary = train(config)
    except (ValueError, gym.error.Error, OSError) as error:
        print(f"sb3-klppo: error: {error}", file=sys.stderr)
        return 2
    print(report.console_text(summary))
    return 0
