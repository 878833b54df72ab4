"""lrsweep: learning-rate sweeps with distributed SGD on Spark, Delta Lake in and out, MLflow tracking."""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

#: The folder above the package: the repository root when lrsweep runs from a checkout (where notebooks
#: start); relative paths of the configuration are taken from the working directory, never from here.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
