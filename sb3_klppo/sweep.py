"""``python -m sb3_klppo sweep``: every (configuration, seed) of a grid or an Optuna search as a
Ray Tune trial, and the aggregate report over seeds.

A configuration is the base config with one value per ``--grid`` key; configurations are
numbered by their place in the grid's cartesian product (``config_000``, ...), for a grid search
and for Optuna alike. Seed ``k`` of ``--seeds N`` sets the config's ``seed`` to
``base seed + k``; the evaluation workloads (``evaluation.seed``) stay the same for every trial, so
configurations are compared seed by seed on identical workloads (a paired comparison).

Layout of ``--output-dir``::

    config_000/seed_0/    the trial's run directory (model.zip, report.md, summary.json, ...)
    trials/config_000_seed_0.json    the trial's record: status, run dir, metrics or error
    sweep.json, sweep.md  the aggregate report, rebuilt from every record at the end
    ray/                  Ray Tune's own experiment logs

The records are the sweep's state: running the same command again skips every trial whose
record says it finished and runs the others (an interrupted sweep resumes; failed trials are
retried). Ray is imported only when trials run, so ``import sb3_klppo`` does not need it.

This module is the command line; the parts are :mod:`sb3_klppo.sweep_plan` (grid, configurations,
seeds), :mod:`sb3_klppo.sweep_trials` (records, one trial), :mod:`sb3_klppo.sweep_tune` (Ray Tune,
Optuna) and :mod:`sb3_klppo.sweep_report` (the aggregate over seeds).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, Optional

from vidur_env.config_flags import FieldFlag, add_field_flags

from sb3_klppo.config import ConfigError
from sb3_klppo.sweep_plan import METRIC_MODES, SweepPlan, make_plan, preflight_all
from sb3_klppo.sweep_report import SWEEP_MD, write_report
from sb3_klppo.sweep_trials import NOT_RUN, check_records
from sb3_klppo.sweep_tune import RayOptions, grid_search, optuna_search

EXIT_FAILED_TRIALS = 1
"""Exit status when the sweep finished but some trial failed (2 stays for user errors)."""


SEARCHES = ("grid", "optuna")
"""How configurations are chosen: every grid point, or Optuna's TPE sampling of them."""


@dataclass(frozen=True)
class SweepArgs:
    """The sweep's arguments, as typed on the command line: each field is one flag of
    ``python -m sb3_klppo sweep`` (see :mod:`vidur_env.config_flags`), except ``--grid``, which
    repeats."""

    config: Optional[str] = None
    """Base JSON or YAML config file (None: the built-in defaults)."""
    seeds: int = 3
    """Seeds per configuration: the config's seed, +1, ..."""
    search: str = SEARCHES[0]
    """Every grid point (grid), or Optuna's TPE sampling --trials of them (optuna)."""
    trials: Optional[int] = None
    """Configurations Optuna samples (each run with every seed)."""
    metric: str = next(iter(METRIC_MODES))
    """Evaluation metric that ranks configurations and drives Optuna."""
    output_dir: Optional[str] = None
    """Sweep directory (None: the config's output_dir + '_sweep')."""
    address: Optional[str] = None
    """Existing Ray cluster to run on (None: start a local Ray)."""
    num_cpus: Optional[int] = None
    """CPUs of the local Ray (None: all cores)."""
    cpus_per_trial: Optional[float] = None
    """CPUs reserved per trial (None: the config's torch_threads)."""
    max_concurrent: int = 0
    """Trials at once (0: as CPUs allow)."""


def sweep_flags() -> tuple[FieldFlag, ...]:
    """Every field of :class:`SweepArgs` as a flag (choices from :data:`SEARCHES` and :data:`METRIC_MODES`)."""
    choices = {"search": SEARCHES, "metric": tuple(METRIC_MODES)}
    return tuple(FieldFlag(name, choices=choices.get(name)) for name in SweepArgs.__dataclass_fields__)


def add_sweep_parser(commands: Any) -> None:
    """The ``sweep`` subcommand's arguments (``commands`` is the CLI's subparsers object)."""
    sweep = commands.add_parser("sweep", help="train every (configuration, seed) on Ray Tune and aggregate over seeds")
    add_field_flags(sweep, SweepArgs(), sweep_flags())
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                       help="config JSON key and its values (KEY=[JSON,...] for lists and objects); repeat for more keys")


def check_arguments(args: argparse.Namespace, plan: SweepPlan) -> None:
    """Option combinations argparse cannot check."""
    if args.search == "optuna":
        if args.trials is None or args.trials < 1:
            raise ConfigError("--search optuna: give --trials N (N >= 1 configurations to sample)")
        if not any(len(axis.values) > 1 for axis in plan.axes):
            raise ConfigError("--search optuna: give at least one --grid key with two or more values to search over")
    elif args.trials is not None:
        raise ConfigError("--trials: applies to --search optuna only (a grid search runs every configuration)")
    if args.address and args.num_cpus:
        raise ConfigError("--num-cpus: sets the local Ray's size; a cluster given by --address has its own")
    if args.num_cpus is not None and args.num_cpus < 1:
        raise ConfigError(f"--num-cpus: must be >= 1, got {args.num_cpus}")
    if args.cpus_per_trial is not None and args.cpus_per_trial <= 0:
        raise ConfigError(f"--cpus-per-trial: must be > 0, got {args.cpus_per_trial}")
    if args.max_concurrent < 0:
        raise ConfigError(f"--max-concurrent: must be >= 0, got {args.max_concurrent}")


def run_sweep_command(args: argparse.Namespace) -> int:
    """``sweep``: plan, run the unfinished trials, write the report; 0 when every trial succeeded."""
    try:
        plan = make_plan(args.config, args.grid, args.seeds, args.output_dir, args.metric)
        check_arguments(args, plan)
        preflight_all(plan)
        check_records(plan)
    except (ValueError, OSError) as error:
        print(f"sb3-klppo: error: {error}", file=sys.stderr)
        return 2
    try:
        import ray.tune  # noqa: F401
    except ImportError:
        print("sb3-klppo: error: sweep needs Ray Tune: pip install 'vidur-env[sweep]'", file=sys.stderr)
        return 2
    options = RayOptions(args.address, args.num_cpus, args.cpus_per_trial or plan.base.torch_threads, args.max_concurrent)
    if args.search == "optuna":
        optuna_search(plan, options, args.trials)
    else:
        grid_search(plan, options)
    report = write_report(plan, args.search)
    print(f"wrote {plan.output_dir / SWEEP_MD} ({len(report['configurations'])} configurations, "
          f"{len(report['failed'])} trials not ok; best by {plan.metric}: {report['best']})")
    unfinished = sum(trial["status"] == NOT_RUN for trial in report["failed"])
    if unfinished:
        print(f"{unfinished} trials did not finish (interrupted); run the same command again to resume them")
    return EXIT_FAILED_TRIALS if report["failed"] else 0
