"""What every job's command line shares: ``--env``, ``--set key=value``, ``--conf-dir``, exit codes, signals.

Jobs call :func:`run_job` with their ``main``. A :class:`~pipelines.errors.LrsweepError` becomes one line
``error: <reason>`` on stderr and its exit code (see :mod:`pipelines.errors`); any other exception keeps its
traceback and exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import traceback
from collections.abc import Callable, Sequence

from pipelines.config import DEFAULT_CONF_DIR, DEFAULT_ENV, Config, load_config
from pipelines.errors import LrsweepError


def job_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every job takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--env", default=DEFAULT_ENV, help="configuration overlay conf/<env>/ (default: local)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a configuration key, e.g. --set train.epochs=5 (repeatable)")
    parser.add_argument("--conf-dir", default=str(DEFAULT_CONF_DIR), help="folder holding base/ and overlays")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """Load and validate the configuration named by the common options."""
    return load_config(env=args.env, overrides=args.overrides, conf_dir=args.conf_dir)


def say(line: str) -> None:
    """Print a progress line; a closed stdout (spark-submit's JVM gone) is not an error."""
    with contextlib.suppress(BrokenPipeError, OSError):
        print(line, flush=True)


#: Libraries whose INFO lines would bury a job's own output (a new sqlite store's migrations, say).
QUIET_LOGGERS = ("mlflow.store.db.utils", "alembic", "py4j")


def run_job(main: Callable[[Sequence[str]], int], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)`` and map failures to exit codes (see :mod:`pipelines.errors`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
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
