"""What every job's command line shares: ``--env``, ``--set key=value``, ``--conf-dir``, exit codes.

Jobs call :func:`run_job` with their ``main``. A :class:`~pipelines.errors.LrsweepError` becomes one line
``error: <reason>`` on stderr and exit code 2; any other exception keeps its traceback and exits 1.
"""

from __future__ import annotations

import argparse
import signal
import sys
import traceback
from collections.abc import Callable, Sequence

from pipelines.config import DEFAULT_CONF_DIR, DEFAULT_ENV, Config, load_config
from pipelines.errors import LrsweepError, TerminatedError


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


def run_job(main: Callable[[Sequence[str]], int], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)`` and map failures to exit codes (0 ok, 2 bad input, 1 bug, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return main(argv)
    except LrsweepError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return error.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as error:  # a bug: keep the traceback, still one line at the end for schedulers
        traceback.print_exc()
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        return 1


def raise_on_sigterm() -> None:
    """Turn SIGTERM into :class:`~pipelines.errors.TerminatedError`, so open MLflow runs end KILLED.

    Schedulers stop jobs with SIGTERM; without a handler Python dies at once and every run stays RUNNING.
    """

    def handler(signum: int, frame: object) -> None:
        raise TerminatedError(f"terminated by signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, handler)
