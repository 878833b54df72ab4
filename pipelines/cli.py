"""The ``lrsweep`` command and what every job's command line shares: options, exit codes, quiet logs.

    lrsweep demo-table | sweep | sync | range-test | score | show [SWEEP_ID] | history | config
            [--env ENV] [--set key=value ...] [--conf-dir DIR] [--remote sc://host:port]
            [--progress auto|bar|lines|off] [--verbose]

What a person sees (a progress bar on a terminal, one line per epoch elsewhere, the JVM's known noise hidden
unless ``--verbose``) is decided in :mod:`pipelines.console`; every command prints through its
:class:`~pipelines.console.Console`.

``jobs/*.py`` are the same commands as ``spark-submit`` entry points (:func:`run_command`). A
:class:`~pipelines.errors.LrsweepError` becomes one line ``error: <reason>`` on stderr and its exit code (see
:mod:`pipelines.errors`); any other exception keeps its traceback and exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from collections.abc import Callable, Sequence

import yaml

from pipelines.config import DEFAULT_ENV, Config, configuration_files, load_config
from pipelines.console import PROGRESS_MODES, Console, configure_output
from pipelines.errors import LrsweepError

Say = Callable[[str], None]


def job_parser(description: str, prog: str | None = None) -> argparse.ArgumentParser:
    """An argument parser with the options every job takes."""
    parser = argparse.ArgumentParser(description=description, prog=prog)
    add_common_options(parser)
    return parser


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", default=DEFAULT_ENV, help="configuration overlay <conf dir>/<env>/ (default: local)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a configuration key, e.g. --set train.epochs=5 (repeatable)")
    parser.add_argument("--conf-dir", default=None,
                        help="folder holding base/ and the overlays (default: ./conf when it exists)")
    parser.add_argument("--remote", default=None, metavar="sc://HOST:PORT",
                        help="run as a Spark Connect client of this server (also SPARK_REMOTE or spark.remote)")
    parser.add_argument("--progress", choices=PROGRESS_MODES, default="auto",
                        help="epochs as a live bar (bar), one line each (lines) or not at all (off); auto: a bar on "
                             "a terminal, lines otherwise")
    parser.add_argument("--verbose", action="store_true",
                        help="also each column's encoding, the JVM's start-up warnings and Spark's stage bars")


def config_from_args(args: argparse.Namespace) -> Config:
    """Load and validate the configuration named by the common options (``--remote`` is ``spark.remote``,
    ``show``'s SWEEP_ID is ``sweep.id``)."""
    overrides = list(args.overrides)
    if getattr(args, "remote", None):
        overrides.append(f"spark.remote={args.remote}")
    if getattr(args, "sweep_id", None):
        overrides.append(f"sweep.id={args.sweep_id}")
    return load_config(env=args.env, overrides=overrides, conf_dir=args.conf_dir)


def say(line: str) -> None:
    """Print a line; a closed stdout (spark-submit's JVM gone) is not an error."""
    with contextlib.suppress(BrokenPipeError, OSError):
        print(line, flush=True)


# ---------------------------------------------------------------------------------------------- commands


def sweep_command(config: Config, say: Say) -> int:
    """Train the grid (or resume it, or complete what an earlier attempt left), track it, register the best."""
    from pipelines.orchestration.sweep import run_sweep_job

    run_sweep_job(config, say=say)
    return 0


def sync_command(config: Config, say: Say) -> int:
    """Complete what MLflow and the results table lack of a trained sweep (``sweep.id``), without training."""
    from pipelines.errors import ConfigError
    from pipelines.orchestration.sweep import run_sweep_job

    if config.sweep.id is None:
        raise ConfigError("sweep.id: required to sync a sweep (--set sweep.id=ID)")
    run_sweep_job(config, train=False, say=say)
    return 0


def range_test_command(config: Config, say: Say) -> int:
    """Smith's learning-rate range test, logged as one MLflow run; prints the suggested rate."""
    from pipelines.orchestration.range_test import run_tracked_range_test
    from pipelines.orchestration.signals import StopRequest
    from pipelines.session import get_spark
    from pipelines.sweep.range_test import SUGGESTION_RULE
    from pipelines.tracking.store import connect

    store = connect(config.tracking)
    spark = get_spark(config.spark)
    with StopRequest().install(spark) as stop:
        try:
            report = run_tracked_range_test(spark, config, progress=say, store=store)
        except Exception as error:
            if stop.requested:
                raise stop.terminated("during the range test; nothing was logged: rerun it") from error
            raise
    result = report.result
    say(f"range test run {report.run_id}: {result.steps} steps"
        f"{' (stopped early: loss diverged)' if result.stopped_early else ''}, minimum smoothed loss at "
        f"lr={result.min_loss_rate:.4g}, {report.seconds:.1f} s")
    say(f"suggested learning rate: {result.suggestion:.6g} ({SUGGESTION_RULE})")
    return 0


def score_command(config: Config, say: Say) -> int:
    """Score ``scoring.input_table`` (default ``data.table``) with the champion into ``output.predictions_table``."""
    from pipelines.orchestration.score import score_table
    from pipelines.orchestration.signals import StopRequest
    from pipelines.session import get_spark

    spark = get_spark(config.spark)
    with StopRequest().install(spark) as stop:
        try:
            report = score_table(spark, config)
        except Exception as error:
            if stop.requested:
                raise stop.terminated("while scoring; nothing was written (appends are atomic): rerun it") from error
            raise
    say(report.describe())
    return 0


def demo_table_command(config: Config, say: Say) -> int:
    """Write the demo churn feature table to ``data.table`` (version 0, then an append as version 1)."""
    from pipelines.lakehouse.demo_data import write_demo_table
    from pipelines.session import get_spark

    spark = get_spark(config.spark)
    table = write_demo_table(spark, config.demo, config.data.table)
    say(f"demo table {table.path}: {table.rows} rows, versions {list(table.versions)}")
    return 0


def show_command(config: Config, say: Say) -> int:
    """Print a sweep's summary table (SWEEP_ID, else sweep.id, else the newest) from the results table; no MLflow."""
    from pipelines.orchestration.results import describe_sweep, show_sweep

    for line in describe_sweep(show_sweep(config), config.output.results_table):
        say(line)
    return 0


def history_command(config: Config, say: Say) -> int:
    """Print the learning rate's history across the sweeps of data.table, from the results table; no MLflow."""
    from pipelines.orchestration.results import describe_history, sweep_history

    for line in describe_history(sweep_history(config), config.data.table, config.output.results_table):
        say(line)
    return 0


COMMANDS: dict[str, Callable[[Config, Say], int]] = {
    "sweep": sweep_command, "sync": sync_command, "range-test": range_test_command, "score": score_command,
    "demo-table": demo_table_command, "show": show_command, "history": history_command,
}


def show_config(args: argparse.Namespace) -> int:
    """The resolved configuration as YAML, after the files it was read from."""
    config = config_from_args(args)
    for path in configuration_files(args.env, args.conf_dir):
        say(f"# read {path}")
    say(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, default_flow_style=None).rstrip())
    return 0


def command_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lrsweep", description="Learning-rate sweeps with distributed SGD on Spark: Delta in, MLflow out.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, function in COMMANDS.items():
        command = commands.add_parser(name, help=(function.__doc__ or "").split("\n")[0],
                                      description=function.__doc__)
        if name == "show":
            command.add_argument("sweep_id", nargs="?", default=None, metavar="SWEEP_ID",
                                 help="the sweep to show (default: sweep.id, else the newest in the results table)")
        add_common_options(command)
    add_common_options(commands.add_parser("config", help="print the resolved configuration and its files"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``lrsweep`` console command."""
    def dispatch(arguments: Sequence[str]) -> int:
        args = command_parser().parse_args(arguments)
        if args.command == "config":
            return show_config(args)
        return run_command(args.command, args)

    return run_job(dispatch, argv)


def command_main(name: str, argv: Sequence[str]) -> int:
    """The command ``name`` with a job's own argument list (``jobs/*.py`` call this from their ``main``)."""
    parser = job_parser(COMMANDS[name].__doc__ or "", prog=os.path.basename(sys.argv[0]))
    return run_command(name, parser.parse_args(argv))


def run_command(name: str, args: argparse.Namespace) -> int:
    """Set the output up (:func:`~pipelines.console.configure_output`), then run the command through a
    :class:`~pipelines.console.Console` of ``--progress``."""
    configure_output(verbose=args.verbose)
    config = config_from_args(args)
    console = Console(args.progress)
    try:
        return COMMANDS[name](config, console)
    finally:
        console.close()


# ------------------------------------------------------------------------------------------- exit codes


def run_job(main: Callable[[Sequence[str]], int], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)`` and map failures to exit codes (see :mod:`pipelines.errors`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return main(argv)
    except LrsweepError as error:
        _stderr(f"error: {error}")
        return error.exit_code
    except KeyboardInterrupt:
        _stderr("error: interrupted")
        return 130
    except Exception as error:  # a bug: keep the traceback, still one line at the end for schedulers
        with contextlib.suppress(BrokenPipeError, OSError):
            traceback.print_exc()
        _stderr(f"error: {type(error).__name__}: {error}")
        return 1


def _stderr(line: str) -> None:
    with contextlib.suppress(BrokenPipeError, OSError):
        print(line, file=sys.stderr, flush=True)
