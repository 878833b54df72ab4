"""lrsweep: learning-rate sweeps with distributed SGD on Spark, Delta Lake in and out, MLflow tracking."""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

#: The repository root (holds ``conf/``, ``jobs/`` and the default ``data/`` and ``mlflow.db``).
PROJECT_ROOT = Path(__file__).resolve().parent.parent
