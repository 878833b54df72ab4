"""The MLflow run tree of a sweep: a parent run per sweep id, a nested child run per learning rate.

Reruns with the same sweep id resume: the parent is found by its ``lrsweep.sweep_id`` tag and reused,
FINISHED children are kept as they are, unfinished ones (FAILED, KILLED, RUNNING) are deleted and logged
again, and nothing already logged on the parent (summary metrics, the results table, the model) is
logged twice. Metrics go through ``MlflowClient.log_batch`` in chunks of at most 1000; the time spent in
MLflow calls is measured by :attr:`SweepTracker.stopwatch`.

An ``auto`` sweep adds a child run with role ``range_test`` (:mod:`pipelines.tracking.range_test`) and tags
each rate's child with its round (``lrsweep.round``); a rerun reuses a FINISHED range-test child.
"""

from __future__ import annotations

import hashlib
import math
import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import mlflow
import pandas as pd
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.data.delta_dataset_source import DeltaDatasetSource
from mlflow.data.spark_dataset import SparkDataset
from mlflow.entities import DatasetInput, InputTag, Metric, Param, Run, RunTag
from mlflow.entities.run_status import RunStatus
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_PARENT_RUN_ID
from pyspark.sql import DataFrame

from pipelines.errors import ConfigError, TerminatedError
from pipelines.reporting.tables import rate_label
from pipelines.sweep.loop import GridOutcome, RateResult
from pipelines.sweep.range_test import RangeTestResult
from pipelines.tracking.range_test import log_range_test
from pipelines.tracking.store import Stopwatch

TAG_SWEEP_ID = "lrsweep.sweep_id"
TAG_ROLE = "lrsweep.role"
TAG_LEARNING_RATE = "lrsweep.learning_rate"
TAG_ROUND = "lrsweep.round"
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_LENGTH = 6000
FINISHED = RunStatus.to_string(RunStatus.FINISHED)


@dataclass(frozen=True)
class TrainingData:
    """The pinned feature table a sweep trained on, as MLflow should describe it."""

    dataframe: DataFrame
    identifier: str
    version: int
    label: str
    is_path: bool
    rows: int


class _PinnedSparkDataset(SparkDataset):
    """A Spark dataset whose profile is the known row count (MLflow's default runs an approximate count job)."""

    def __init__(self, rows: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._rows = rows

    @property
    def profile(self) -> Any | None:
        return {"num_rows": self._rows}


def dataset_input(data: TrainingData) -> DatasetInput:
    """An MLflow dataset input (context ``training``) with a Delta source at ``data.version``.

    The digest is derived from the table and version, so every run of a sweep logs the same dataset.
    """
    name = data.identifier.rstrip("/").rsplit("/", 1)[-1]
    source = DeltaDatasetSource(path=data.identifier if data.is_path else None,
                                delta_table_name=None if data.is_path else data.identifier,
                                delta_table_version=data.version)
    dataset = _PinnedSparkDataset(
        rows=data.rows, df=data.dataframe, source=source, targets=data.label, name=f"{name}@v{data.version}",
        digest=hashlib.md5(f"{data.identifier}@{data.version}".encode()).hexdigest()[:8])
    return DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")])


def metric_history(name: str, curve: Sequence[float], timestamp_ms: int) -> list[Metric]:
    """``Metric(name, value, step=epoch)`` for every finite value of ``curve`` (epoch = index + 1)."""
    return [Metric(name, float(value), timestamp_ms, epoch) for epoch, value in enumerate(curve, start=1)
            if math.isfinite(value)]


def rate_metrics(rate: RateResult, seeds: int, timestamp_ms: int) -> list[Metric]:
    """A child run's metrics: every curve's finite history, ``*_std`` ones with several seeds, outcomes."""
    metrics: list[Metric] = []
    for name, curve in rate.curves.items():
        metrics += metric_history(name, curve.tolist(), timestamp_ms)
        if seeds > 1:
            metrics += metric_history(f"{name}_std", rate.curves_std[name].tolist(), timestamp_ms)
    metrics += [Metric("epochs_run", float(rate.epochs_run), timestamp_ms, 0),
                Metric("kept_epoch", float(rate.kept_epoch), timestamp_ms, 0)]
    if rate.status == "diverged" and rate.stopped_epoch is not None:
        metrics.append(Metric("diverged_at_epoch", float(rate.stopped_epoch), timestamp_ms, 0))
    return metrics


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class SweepTracker:
    """One sweep's runs in one experiment. Create it before reading data: it tells what a rerun resumes."""

    def __init__(self, client: MlflowClient, experiment_id: str, sweep_id: str) -> None:
        self.client = client
        self.experiment_id = experiment_id
        self.sweep_id = sweep_id
        self.stopwatch = Stopwatch()
        self.parent_run_id: str | None = None
        self._open_children: set[str] = set()
        with self.stopwatch.timed("runs"):
            parents = self._search(f"tags.`{TAG_ROLE}` = 'parent'")
        self.existing_parent: Run | None = min(parents, key=lambda r: r.info.start_time) if parents else None

    @property
    def resumed(self) -> bool:
        return self.existing_parent is not None

    def recorded_param(self, name: str) -> str | None:
        """A parameter an earlier attempt of this sweep logged on the parent run, if any."""
        return None if self.existing_parent is None else self.existing_parent.data.params.get(name)

    def _search(self, condition: str) -> list[Run]:
        runs: list[Run] = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{TAG_SWEEP_ID}` = '{self.sweep_id}' AND {condition}",
            max_results=50_000)
        return runs

    # ------------------------------------------------------------------------------------------- parent

    @contextmanager
    def parent_run(self, params: Mapping[str, str], tags: Mapping[str, str],
                   data: TrainingData | None = None) -> Iterator[str]:
        """Start (or resume) the parent run; end it FINISHED, FAILED on an exception, KILLED on SIGTERM.

        Children still open when the block is left end with the same status.

        Raises
        ------
        ConfigError
            A rerun's parameters differ from the ones the sweep id was started with.
        """
        params = {key: value[:MAX_PARAM_LENGTH] for key, value in params.items()}
        self._check_resumable(params)
        with self.stopwatch.timed("runs"):
            if self.existing_parent is not None:
                run = mlflow.start_run(run_id=self.existing_parent.info.run_id)
            else:
                run = mlflow.start_run(experiment_id=self.experiment_id, run_name=f"sweep {self.sweep_id}")
            run_id = run.info.run_id
            self.parent_run_id = run_id
            all_tags = {TAG_SWEEP_ID: self.sweep_id, TAG_ROLE: "parent", **tags}
            for batch in chunks(list(params.items()), MAX_PARAMS_PER_BATCH):
                self.client.log_batch(run_id, params=[Param(k, v) for k, v in batch])
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in all_tags.items()])
            if data is not None:
                self.client.log_inputs(run_id, [dataset_input(data)])
        status = RunStatus.to_string(RunStatus.FINISHED)
        try:
            yield run_id
        except (TerminatedError, KeyboardInterrupt):
            status = RunStatus.to_string(RunStatus.KILLED)
            raise
        except BaseException:
            status = RunStatus.to_string(RunStatus.FAILED)
            raise
        finally:
            with _sigterm_deferred(), self.stopwatch.timed("runs"):
                for child_id in sorted(self._open_children):
                    self.client.set_terminated(child_id, status)
                self._open_children.clear()
                mlflow.end_run(status)

    def _check_resumable(self, params: Mapping[str, str]) -> None:
        if self.existing_parent is None:
            return
        recorded = self.existing_parent.data.params
        changed = {key: (recorded[key], value) for key, value in params.items()
                   if key in recorded and recorded[key] != value}
        if changed:
            detail = "; ".join(f"{key} was {old!r}, now {new!r}" for key, (old, new) in sorted(changed.items()))
            raise ConfigError(f"sweep.id {self.sweep_id!r} was started with other settings ({detail}); rerun "
                              "with the original settings to complete it, or use a new sweep.id")

    def parent_metrics(self) -> dict[str, float]:
        """The parent run's current metrics (what an earlier attempt already logged)."""
        assert self.parent_run_id is not None, "parent_run() first"
        with self.stopwatch.timed("runs"):
            metrics: dict[str, float] = self.client.get_run(self.parent_run_id).data.metrics
        return metrics

    def parent_tags(self) -> dict[str, str]:
        assert self.parent_run_id is not None, "parent_run() first"
        with self.stopwatch.timed("runs"):
            tags: dict[str, str] = self.client.get_run(self.parent_run_id).data.tags
        return tags

    def log_parent_metrics(self, metrics: Mapping[str, float]) -> list[str]:
        """Log the finite ``metrics`` the parent does not have yet (a rerun logs nothing twice)."""
        assert self.parent_run_id is not None, "parent_run() first"
        present = self.parent_metrics()
        now = _now_ms()
        new = [Metric(k, float(v), now, 0) for k, v in metrics.items() if k not in present and math.isfinite(v)]
        with self.stopwatch.timed("runs"):
            for batch in chunks(new, MAX_METRICS_PER_BATCH):
                self.client.log_batch(self.parent_run_id, metrics=list(batch))
        return [metric.key for metric in new]

    def log_parent_params(self, params: Mapping[str, str]) -> None:
        """Log the ``params`` the parent does not have yet (parameters cannot change once logged)."""
        assert self.parent_run_id is not None, "parent_run() first"
        with self.stopwatch.timed("runs"):
            present = self.client.get_run(self.parent_run_id).data.params
            new = [Param(k, v[:MAX_PARAM_LENGTH]) for k, v in params.items() if k not in present]
            for batch in chunks(new, MAX_PARAMS_PER_BATCH):
                self.client.log_batch(self.parent_run_id, params=list(batch))

    def set_parent_tags(self, tags: Mapping[str, str]) -> None:
        assert self.parent_run_id is not None, "parent_run() first"
        with self.stopwatch.timed("runs"):
            self.client.log_batch(self.parent_run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_figure(self, figure: Figure, artifact_file: str) -> None:
        assert self.parent_run_id is not None, "parent_run() first"
        with self.stopwatch.timed("artifacts"):
            self.client.log_figure(self.parent_run_id, figure, artifact_file)

    def log_table_once(self, rows: Sequence[Mapping[str, Any]], artifact_file: str) -> bool:
        """``mlflow.log_table`` on the parent unless the file is there (log_table appends to existing files)."""
        assert self.parent_run_id is not None, "parent_run() first"
        folder, _, _ = artifact_file.rpartition("/")
        with self.stopwatch.timed("artifacts"):
            existing = {a.path for a in self.client.list_artifacts(self.parent_run_id, folder or None)}
            if artifact_file in existing:
                return False
            mlflow.log_table(pd.DataFrame(list(rows)), artifact_file, run_id=self.parent_run_id)
        return True

    # ----------------------------------------------------------------------------------------- children

    def finished_range_test(self) -> float | None:
        """The suggestion of this sweep's FINISHED range-test child (an earlier attempt's), else None.

        Unfinished range-test children are deleted: the caller runs and logs the test again.
        """
        with self.stopwatch.timed("children"):
            runs = self._search(f"tags.`{TAG_ROLE}` = 'range_test'")
            finished = [run for run in runs if run.info.status == FINISHED]
            for stale in runs:
                if not finished or stale.info.run_id != finished[0].info.run_id:
                    self.client.delete_run(stale.info.run_id)
        return float(finished[0].data.params["suggested_learning_rate"]) if finished else None

    def log_range_test(self, result: RangeTestResult, figure: Figure, params: Mapping[str, str]) -> str:
        """The range test as a child run of the parent (role ``range_test``)."""
        assert self.parent_run_id is not None, "parent_run() first"
        with self.stopwatch.timed("children"):
            return log_range_test(self.client, self.experiment_id, result, figure, params=params, tags={
                MLFLOW_PARENT_RUN_ID: self.parent_run_id, TAG_SWEEP_ID: self.sweep_id, TAG_ROLE: "range_test"})

    def log_rates(self, outcome: GridOutcome, data: TrainingData | None = None,
                  round_number: int | None = None) -> list[str]:
        """One child run per rate (aligned with ``outcome.rates``); FINISHED children of a rerun are reused.

        With ``round_number`` (an ``auto`` sweep's rounds), children are tagged and matched per round, so a
        rate trained in two rounds has a child in each.
        """
        assert self.parent_run_id is not None, "parent_run() first"
        condition = f"tags.`{TAG_ROLE}` = 'child'"
        if round_number is not None:
            condition += f" AND tags.`{TAG_ROUND}` = '{round_number}'"
        with self.stopwatch.timed("children"):
            existing: dict[str, list[Run]] = {}
            for run in self._search(condition):
                existing.setdefault(run.data.tags.get(TAG_LEARNING_RATE, ""), []).append(run)
            dataset = dataset_input(data) if data is not None else None
        run_ids = []
        for rate in outcome.rates:
            key = repr(rate.learning_rate)
            runs = existing.get(key, [])
            finished = [run for run in runs if run.info.status == FINISHED]
            with self.stopwatch.timed("children"):
                for stale in runs:
                    if not finished or stale.info.run_id != finished[0].info.run_id:
                        self.client.delete_run(stale.info.run_id)
            if finished:
                run_ids.append(finished[0].info.run_id)
                continue
            run_ids.append(self._log_rate(rate, len(outcome.seeds), dataset, round_number))
        return run_ids

    def _log_rate(self, rate: RateResult, seeds: int, dataset: DatasetInput | None,
                  round_number: int | None = None) -> str:
        assert self.parent_run_id is not None
        name = rate_label(rate.learning_rate)
        run_tags = {MLFLOW_PARENT_RUN_ID: self.parent_run_id, TAG_SWEEP_ID: self.sweep_id, TAG_ROLE: "child",
                    TAG_LEARNING_RATE: repr(rate.learning_rate), "status": rate.status}
        if round_number is not None:
            name = f"round {round_number} {name}"
            run_tags[TAG_ROUND] = str(round_number)
        with self.stopwatch.timed("children"):
            run = self.client.create_run(self.experiment_id, run_name=name, tags=run_tags)
            run_id = run.info.run_id
            self._open_children.add(run_id)
            tags = [RunTag("status", rate.status)]
            if rate.status == "diverged" and rate.stopped_epoch is not None:
                tags.append(RunTag("diverged_at_epoch", str(rate.stopped_epoch)))
            self.client.log_batch(run_id, params=[Param("learning_rate", repr(rate.learning_rate))], tags=tags)
            for batch in chunks(rate_metrics(rate, seeds, _now_ms()), MAX_METRICS_PER_BATCH):
                self.client.log_batch(run_id, metrics=list(batch))
            if dataset is not None:
                self.client.log_inputs(run_id, [dataset])
            self.client.set_terminated(run_id, FINISHED)
            self._open_children.discard(run_id)
        return run_id


def _now_ms() -> int:
    return int(time.time() * 1000)


@contextmanager
def _sigterm_deferred() -> Iterator[None]:
    """Hold SIGTERM while runs are being ended, so a second signal cannot leave one RUNNING."""
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    except (AttributeError, OSError, ValueError):  # platforms without pthread_sigmask
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
