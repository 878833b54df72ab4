"""Errors that a user can act on.

Every error raised for bad input derives from :class:`LrsweepError`; jobs turn it into a one-line message
on stderr and a non-zero exit code. Anything else escaping a job is a bug and keeps its traceback.
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


class TrackingError(LrsweepError):
    """The MLflow tracking server, experiment, run or model cannot be used as asked."""


class TerminatedError(LrsweepError):
    """The job received SIGTERM (a scheduler stopped it); its MLflow runs end KILLED."""

    exit_code = 143  # 128 + SIGTERM, what schedulers expect from a terminated process
