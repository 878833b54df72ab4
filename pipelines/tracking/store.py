"""Where runs go: the tracking URI, the experiment, a client, and time spent talking to MLflow."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipelines import PROJECT_ROOT, __version__
from pipelines.config import TrackingConfig
from pipelines.errors import TrackingError


def tracking_uri(config: TrackingConfig) -> str:
    """``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<project root>/mlflow.db``."""
    return config.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def code_version() -> str:
    """The git commit of the project (``+dirty`` with local changes), else the package version."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{commit}+dirty" if dirty else commit or __version__


@dataclass
class Stopwatch:
    """Accumulates the wall time spent inside :meth:`timed` blocks (MLflow calls), in total and per label."""

    seconds: float = 0.0
    calls: int = 0
    by_label: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def timed(self, label: str = "other") -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(label, time.perf_counter() - started)

    def add(self, label: str, seconds: float) -> None:
        self.seconds += seconds
        self.calls += 1
        self.by_label[label] = self.by_label.get(label, 0.0) + seconds


def connect(config: TrackingConfig) -> tuple[MlflowClient, str]:
    """Point MLflow (tracking and registry) at the configured store; return a client and the experiment id.

    The experiment is created when missing. Raises :class:`TrackingError` naming the URI when the store
    cannot be reached or the experiment is deleted.
    """
    uri = tracking_uri(config)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        experiment = client.get_experiment_by_name(config.experiment)
        if experiment is None:
            return client, client.create_experiment(config.experiment)
    except MlflowException as error:
        raise TrackingError(f"MLflow tracking store {uri}: {error.message}") from error
    except OSError as error:
        raise TrackingError(f"MLflow tracking store {uri} is not reachable: {error}") from error
    if experiment.lifecycle_stage != "active":
        raise TrackingError(f"MLflow experiment {config.experiment!r} is deleted in {uri}; restore it or set "
                            "tracking.experiment to another name")
    return client, experiment.experiment_id
