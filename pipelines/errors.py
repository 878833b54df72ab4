"""Errors that a user or an operator can act on, each with its documented exit code.

Every error raised for bad input or a known operational condition derives from :class:`LrsweepError`; jobs
turn it into a one-line message on stderr and its exit code. Anything else escaping a job is a bug and keeps
its traceback (exit 1).

==== =====================================================================================================
code meaning
==== =====================================================================================================
0    success
1    a bug (traceback)
2    the user's input: configuration, table, data, output location, credentials
3    the sweep ran but produced no usable model (every rate diverged or was stopped); results are written
4    results and checkpoint are safe but MLflow is incomplete (unavailable); rerun with the same sweep id
130  interrupted (SIGINT); a checkpoint was written, rerun with the same sweep id to resume
143  terminated (SIGTERM); a checkpoint was written, rerun with the same sweep id to resume
==== =====================================================================================================
"""

from __future__ import annotations


class LrsweepError(Exception):
    """Base class of the errors caused by input a user can fix (configuration, tables, columns)."""

    exit_code: int = 2


class ConfigError(LrsweepError):
    """A configuration key is missing, unknown or has a value outside its rule."""


class DataError(LrsweepError):
    """A feature table cannot be used as asked: missing, not Delta, wrong version, column or values."""


class SparkSetupError(LrsweepError):
    """Spark cannot be started as configured (Java missing, Delta jars missing, ...)."""


class OutputError(LrsweepError):
    """An output location (results or predictions table) cannot be written as configured."""


class SweepLockedError(LrsweepError):
    """Another job holds the lease on this sweep id (:mod:`pipelines.lakehouse.lease`): one live job per sweep."""


class LeaseLostError(SweepLockedError):
    """This job's lease on its sweep id was taken over (it stopped renewing for longer than the lease lasts); it
    stops at the next safe point, writing nothing more, so that one job writes the sweep."""


class TrackingError(LrsweepError):
    """The MLflow tracking store, experiment, run or model cannot be used as asked (e.g. credentials refused)."""


class NoUsableModelError(LrsweepError):
    """Every rate diverged or was stopped: results are written and the runs finished, nothing is registered."""

    exit_code = 3


class TrackingUnavailableError(LrsweepError):
    """MLflow could not be reached within ``tracking.retry_seconds``; what it lacks can be rebuilt by a rerun."""

    exit_code = 4


class TerminatedError(LrsweepError):
    """The job was stopped by a signal at a safe point; its MLflow runs end KILLED.

    ``exit_code`` is 128 + the signal number: 143 for SIGTERM (schedulers), 130 for SIGINT (Ctrl-C).
    """

    exit_code = 143

    def __init__(self, message: str, exit_code: int = 143) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of ``error``'s message (its type's name when empty), at most ``limit`` characters."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__
