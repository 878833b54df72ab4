"""The MLflow run tree of a sweep, kept as a view of the sweep's state: a parent run, a child run per rate.

MLflow is a projection of what the sweep holds (its curves and outcomes, which the results table and the
checkpoints hold durably), not the record itself. Every update is a *sync*: for each child, the points of
each curve past the last step MLflow already has are logged (``step`` = epoch, step 0 = the initial
models), so the same call serves the live view during training, the end of the sweep, and a rerun that
rebuilds what an outage left out. Points carry the time their epoch was recorded, so a retried batch is an
exact duplicate that the store ignores. A request whose answer is lost (a server killed in the middle of it)
may still have been carried out: a retried start finds the parent or child it may have created before
creating one, and completes a child created without its parameters.

Reruns with the same sweep id reuse the parent (found by its ``lrsweep.sweep_id`` tag) and every child
(matched by round and learning rate, whatever its status), and log nothing twice. Timings are logged as
``system/`` metrics, kept apart from the model metrics in MLflow's UI.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import mlflow
import pandas as pd
from matplotlib.figure import Figure
from mlflow.entities import DatasetInput, Metric, Param, Run, RunTag
from mlflow.entities.run_status import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from pipelines.errors import ConfigError, TrackingError, TrackingUnavailableError
from pipelines.sweep.grid import GridPoint, point_labels
from pipelines.sweep.outcome import GridOutcome, RateResult
from pipelines.sweep.range_test import RangeTestResult
from pipelines.sweep.status import DIVERGED, RUNNING
from pipelines.tracking.range_test import log_range_test
from pipelines.tracking.store import TrackingStore

TAG_SWEEP_ID = "lrsweep.sweep_id"
TAG_ROLE = "lrsweep.role"
TAG_LEARNING_RATE = "lrsweep.learning_rate"
TAG_POINT = "lrsweep.point"  # the grid point, GridPoint.exact_label
TAG_ROUND = "lrsweep.round"
TAG_STATUS = "status"
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_LENGTH = 6000
FINISHED = RunStatus.to_string(RunStatus.FINISHED)
RUNNING_RUN = RunStatus.to_string(RunStatus.RUNNING)
KILLED = RunStatus.to_string(RunStatus.KILLED)
FAILED = RunStatus.to_string(RunStatus.FAILED)
SYSTEM_PREFIX = "system/lrsweep_"
DATASET_LOG_ATTEMPTS = 5
# how SQLAlchemy's drivers word a unique-key violation (sqlite, PostgreSQL, MySQL)
_UNIQUE_KEY_MARKERS = ("integrityerror", "unique constraint", "duplicate key", "duplicate entry")


def log_dataset(client: mlflow.MlflowClient, run_id: str, dataset: DatasetInput) -> None:
    """Link ``dataset`` (the pinned table version) to the run, through a lost race in the store.

    MLflow's SQL store looks the dataset up in the experiment and inserts it when missing, in one
    transaction: two runs logging the same new dataset at once (two sweeps of one table started side by
    side) can both miss it, and the second insert fails on the unique key with the whole request rolled back.
    Another attempt finds the dataset the winner inserted and only links it.
    """
    for attempt in range(1, DATASET_LOG_ATTEMPTS + 1):
        try:
            client.log_inputs(run_id, [dataset])
            return
        except MlflowException as error:
            if attempt == DATASET_LOG_ATTEMPTS or not any(m in str(error).lower() for m in _UNIQUE_KEY_MARKERS):
                raise
            time.sleep(0.05 * attempt)


def metric_history(name: str, curve: Sequence[float], timestamp_ms: int | Sequence[int], first_step: int = 1,
                   after_step: int = -1) -> list[Metric]:
    """``Metric(name, value, step)`` for every finite value of ``curve`` past ``after_step``.

    ``curve[i]`` is step ``first_step + i``; ``timestamp_ms`` is one time for all, or one per step
    (indexed by step).
    """
    metrics = []
    for index, value in enumerate(curve):
        step = first_step + index
        if step <= after_step or not math.isfinite(value):
            continue
        timestamp = timestamp_ms if isinstance(timestamp_ms, int) else int(timestamp_ms[step] or 0)
        metrics.append(Metric(name, float(value), timestamp, step))
    return metrics


def curve_metrics(rate: RateResult, seeds: int, timestamps_ms: Sequence[int],
                  logged: Mapping[str, int] | None = None) -> list[Metric]:
    """A child's curve points not in MLflow yet (``logged``: the last step per metric), step 0 included."""
    logged = logged or {}
    metrics: list[Metric] = []
    for name, curve in rate.curves.items():
        full = [rate.initial.get(name, math.nan), *curve.tolist()]
        metrics += metric_history(name, full, timestamps_ms, 0, logged.get(name, -1))
        if seeds > 1:
            std = [0.0 if math.isfinite(full[0]) else math.nan, *rate.curves_std[name].tolist()]
            metrics += metric_history(f"{name}_std", std, timestamps_ms, 0, logged.get(f"{name}_std", -1))
    for name, values in rate.schedule.items():  # population-based training's lineage, once its epoch is recorded
        recorded = [value if int(timestamps_ms[step] or 0) else math.nan
                    for step, value in enumerate(values.tolist(), start=1)]
        metrics += metric_history(name, recorded, timestamps_ms, 1, logged.get(name, -1))
    return metrics


def outcome_metrics(rate: RateResult, timestamp_ms: int) -> list[Metric]:
    """A finished child's summary: ``epochs_run``, ``kept_epoch`` and, if it diverged, ``diverged_at_epoch``."""
    metrics = [Metric("epochs_run", float(rate.epochs_run), timestamp_ms, 0),
               Metric("kept_epoch", float(rate.kept_epoch), timestamp_ms, 0)]
    if rate.status == DIVERGED and rate.stopped_epoch is not None:
        metrics.append(Metric("diverged_at_epoch", float(rate.stopped_epoch), timestamp_ms, 0))
    return metrics


def rate_metrics(rate: RateResult, seeds: int, timestamp_ms: int) -> list[Metric]:
    """Everything a finished child holds: every curve's finite history and the outcome metrics."""
    timestamps = [timestamp_ms] * (len(next(iter(rate.curves.values()))) + 1) if rate.curves else [timestamp_ms]
    return curve_metrics(rate, seeds, timestamps) + outcome_metrics(rate, timestamp_ms)


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


@dataclass
class ChildRun:
    """A child run as the tracker knows it: what MLflow holds already."""

    run_id: str
    status: str  # the run's MLflow status
    rate_status: str  # its ``status`` tag
    logged: dict[str, int] = field(default_factory=dict)  # metric -> last step logged
    summarized: bool = False  # outcome metrics and the final tags are logged


class SweepTracker:
    """One sweep's runs in one experiment. Create it before reading data: it tells what a rerun resumes."""

    def __init__(self, store: TrackingStore, sweep_id: str) -> None:
        self.store = store
        self.client = store.client
        self.sweep_id = sweep_id
        self.parent_run_id: str | None = None
        self.rounds: dict[int, list[ChildRun | None]] = {}
        self.existing_parent: Run | None = store.call("runs", self._first_parent)

    @property
    def resumed(self) -> bool:
        return self.existing_parent is not None

    def recorded_param(self, name: str) -> str | None:
        """A parameter an earlier attempt of this sweep logged on the parent run, if any."""
        return None if self.existing_parent is None else self.existing_parent.data.params.get(name)

    def recorded_tag(self, name: str) -> str | None:
        """A tag an earlier attempt of this sweep set on the parent run, if any."""
        return None if self.existing_parent is None else self.existing_parent.data.tags.get(name)

    def _first_parent(self) -> Run | None:
        parents = self._search(f"tags.`{TAG_ROLE}` = 'parent'")
        return min(parents, key=lambda r: r.info.start_time) if parents else None

    def _search(self, condition: str) -> list[Run]:
        runs: list[Run] = self.client.search_runs(
            [self.store.experiment_id], filter_string=f"tags.`{TAG_SWEEP_ID}` = '{self.sweep_id}' AND {condition}",
            max_results=50_000)
        return runs

    # ------------------------------------------------------------------------------------------- parent

    def start_parent(self, params: Mapping[str, str], tags: Mapping[str, str],
                     dataset: DatasetInput | None = None) -> str:
        """Create the parent run (or put an earlier attempt's back to RUNNING); return its id.

        Raises
        ------
        ConfigError
            A rerun's parameters differ from the ones the sweep id was started with.
        """
        params = {key: value[:MAX_PARAM_LENGTH] for key, value in params.items()}
        self._check_resumable(params)
        attempts = 0

        def start() -> str:
            nonlocal attempts
            attempts += 1
            parent = self.existing_parent
            if parent is None and attempts > 1:  # the store may have created it and the answer been lost
                parent = self._first_parent()
            if parent is not None:
                run_id = parent.info.run_id
                self.client.update_run(run_id, status=RUNNING_RUN)
                present = parent.data.params
            else:
                run_id = self.client.create_run(self.store.experiment_id, run_name=f"sweep {self.sweep_id}",
                                                tags={TAG_SWEEP_ID: self.sweep_id, TAG_ROLE: "parent"}).info.run_id
                present = {}
            for batch in chunks([Param(k, v) for k, v in params.items() if k not in present], MAX_PARAMS_PER_BATCH):
                self.client.log_batch(run_id, params=list(batch))
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            if dataset is not None and self.existing_parent is None:
                log_dataset(self.client, run_id, dataset)  # linking it again is harmless: the store keeps one
            return run_id

        self.parent_run_id = self.store.call("runs", start)
        return self.parent_run_id

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

    def _parent(self) -> str:
        assert self.parent_run_id is not None, "start_parent() first"
        return self.parent_run_id

    def parent_tags(self) -> dict[str, str]:
        tags: dict[str, str] = self.store.call("runs", lambda: self.client.get_run(self._parent()).data.tags)
        return tags

    def log_parent_metrics(self, metrics: Mapping[str, float], *, replace: bool = False) -> list[str]:
        """Log the finite ``metrics`` the parent does not have yet (all of them with ``replace``)."""
        parent = self._parent()

        def log() -> list[str]:
            present = {} if replace else self.client.get_run(parent).data.metrics
            now = _now_ms()
            new = [Metric(k, float(v), now, 0) for k, v in metrics.items() if k not in present and math.isfinite(v)]
            for batch in chunks(new, MAX_METRICS_PER_BATCH):
                self.client.log_batch(parent, metrics=list(batch))
            return [metric.key for metric in new]

        logged: list[str] = self.store.call("runs", log)
        return logged

    def log_system_metrics(self, seconds: Mapping[str, float]) -> None:
        """Timings as ``system/lrsweep_<name>`` metrics: MLflow's UI shows them apart from model metrics."""
        self.log_parent_metrics({f"{SYSTEM_PREFIX}{name}": value for name, value in seconds.items()}, replace=True)

    def log_parent_params(self, params: Mapping[str, str]) -> None:
        """Log the ``params`` the parent does not have yet (parameters cannot change once logged)."""
        parent = self._parent()

        def log() -> None:
            present = self.client.get_run(parent).data.params
            new = [Param(k, v[:MAX_PARAM_LENGTH]) for k, v in params.items() if k not in present]
            for batch in chunks(new, MAX_PARAMS_PER_BATCH):
                self.client.log_batch(parent, params=list(batch))

        self.store.call("runs", log)

    def set_parent_tags(self, tags: Mapping[str, str]) -> None:
        parent = self._parent()
        self.store.call("runs", lambda: self.client.log_batch(parent, tags=[RunTag(k, v) for k, v in tags.items()]))

    def log_figure(self, figure: Figure, artifact_file: str) -> None:
        parent = self._parent()
        self.store.call("artifacts", lambda: self.client.log_figure(parent, figure, artifact_file))

    def log_dict(self, dictionary: Mapping[str, Any], artifact_file: str) -> None:
        """A JSON (or YAML) artifact on the parent."""
        parent = self._parent()
        self.store.call("artifacts", lambda: self.client.log_dict(parent, dict(dictionary), artifact_file))

    def log_table_once(self, rows: Sequence[Mapping[str, Any]], artifact_file: str) -> bool:
        """``mlflow.log_table`` on the parent unless the file is there (log_table appends to existing files)."""
        parent = self._parent()
        folder, _, _ = artifact_file.rpartition("/")

        def log() -> bool:
            existing = {a.path for a in self.client.list_artifacts(parent, folder or None)}
            if artifact_file in existing:
                return False
            mlflow.log_table(pd.DataFrame(list(rows)), artifact_file, run_id=parent)
            return True

        logged: bool = self.store.call("artifacts", log)
        return logged

    # ----------------------------------------------------------------------------------------- children

    def open_round(self, round_number: int, points: Sequence[GridPoint], dataset: DatasetInput | None = None,
                   tag_round: bool = False, wait: bool = True) -> list[str | None]:
        """The child runs of a round, aligned with the grid's ``points``: reused when an earlier attempt made
        them (whatever their status), created RUNNING otherwise. ``tag_round`` names and tags them by round
        (``auto`` sweeps). Returns the run ids (None where MLflow was unavailable and ``wait`` is False)."""
        parent = self._parent()
        condition = f"tags.`{TAG_ROLE}` = 'child'"
        if tag_round:
            condition += f" AND tags.`{TAG_ROUND}` = '{round_number}'"

        def open_children() -> list[ChildRun | None]:
            existing: dict[str, Run] = {}
            for run in sorted(self._search(condition), key=lambda r: r.info.start_time):
                tags = run.data.tags
                existing.setdefault(tags.get(TAG_POINT) or f"lr={tags.get(TAG_LEARNING_RATE, '')}", run)
            children: list[ChildRun | None] = []
            for point, label in zip(points, point_labels(points), strict=True):
                found = existing.get(point.exact_label)
                if found is None:
                    children.append(self._create_child(parent, round_number, point, label, dataset, tag_round))
                    continue
                child = ChildRun(found.info.run_id, found.info.status, found.data.tags.get(TAG_STATUS, RUNNING),
                                 logged=self._logged_steps(found), summarized=found.info.status == FINISHED)
                if "learning_rate" not in found.data.params:  # created, then cut off before its parameters
                    self._describe_child(child.run_id, point, dataset)
                if child.status != FINISHED and child.status != RUNNING_RUN:
                    self.client.update_run(child.run_id, status=RUNNING_RUN)
                    child.status = RUNNING_RUN
                children.append(child)
            return children

        children = self.store.call("children", open_children, wait=wait)
        self.rounds[round_number] = children
        return [child.run_id if child else None for child in children]

    def _create_child(self, parent: str, round_number: int, point: GridPoint, name: str,
                      dataset: DatasetInput | None, tag_round: bool) -> ChildRun:
        tags = {MLFLOW_PARENT_RUN_ID: parent, TAG_SWEEP_ID: self.sweep_id, TAG_ROLE: "child",
                TAG_LEARNING_RATE: repr(point.learning_rate), TAG_POINT: point.exact_label, TAG_STATUS: RUNNING}
        if tag_round:
            name = f"round {round_number} {name}"
            tags[TAG_ROUND] = str(round_number)
        run_id = self.client.create_run(self.store.experiment_id, run_name=name, tags=tags).info.run_id
        self._describe_child(run_id, point, dataset)
        return ChildRun(run_id, RUNNING_RUN, RUNNING)

    def _describe_child(self, run_id: str, point: GridPoint, dataset: DatasetInput | None) -> None:
        """A child's parameters and dataset (logging them again is harmless: the same values, one link)."""
        self.client.log_batch(run_id, params=[Param("learning_rate", repr(point.learning_rate)),
                                              Param("reg_param", repr(point.reg_param)),
                                              Param("l1_ratio", repr(point.l1_ratio))])
        if dataset is not None:
            log_dataset(self.client, run_id, dataset)

    def _logged_steps(self, run: Run) -> dict[str, int]:
        """The last step of each metric the run holds (MLflow keeps the latest point per metric)."""
        metric_objects = getattr(run.data, "_metric_objs", None)
        if metric_objects is not None:
            return {metric.key: int(metric.step) for metric in metric_objects}
        return {key: max((m.step for m in self.client.get_metric_history(run.info.run_id, key)), default=-1)
                for key in run.data.metrics}

    def child_run_ids(self, round_number: int) -> list[str | None]:
        return [child.run_id if child else None for child in self.rounds.get(round_number, [])]

    def sync(self, round_number: int, outcome: GridOutcome, *, wait: bool = True, final: bool = False) -> None:
        """Bring the round's children up to ``outcome``: new curve points, status tags and, with ``final``,
        the outcome metrics and FINISHED. Raises TrackingUnavailableError when MLflow cannot be reached."""
        children = self.rounds.get(round_number)
        if children is None:
            raise ValueError(f"round {round_number} was not opened")
        seeds = len(outcome.seeds)
        timestamps = outcome.recorded_at_ms or [_now_ms()] * (outcome.epochs + 1)
        for child, rate in zip(children, outcome.rates, strict=True):
            if child is None or child.summarized:
                continue
            new = curve_metrics(rate, seeds, timestamps, child.logged)
            tags = [RunTag(TAG_STATUS, rate.status)] if rate.status != child.rate_status else []
            if final:
                new += outcome_metrics(rate, _now_ms())
                if rate.status == DIVERGED and rate.stopped_epoch is not None:
                    tags.append(RunTag("diverged_at_epoch", str(rate.stopped_epoch)))
            if new or tags:
                self._log_child(child, new, tags, wait)
            if final:
                self._finish_child(child, wait)

    def _finish_child(self, child: ChildRun, wait: bool) -> None:
        def finish() -> None:
            self.client.set_terminated(child.run_id, FINISHED)

        self.store.call("children", finish, wait=wait)
        child.status, child.summarized = FINISHED, True

    def _log_child(self, child: ChildRun, metrics: list[Metric], tags: list[RunTag], wait: bool) -> None:
        for index, batch in enumerate(chunks(metrics, MAX_METRICS_PER_BATCH) if metrics else [[]]):
            batch_tags = tags if index == 0 else []

            def log(points: Sequence[Metric] = batch, labels: list[RunTag] = batch_tags) -> None:
                self.client.log_batch(child.run_id, metrics=list(points), tags=labels)

            self.store.call("children", log, wait=wait)
            for metric in batch:
                child.logged[metric.key] = max(child.logged.get(metric.key, -1), int(metric.step))
        for tag in tags:
            if tag.key == TAG_STATUS:
                child.rate_status = tag.value

    # ------------------------------------------------------------------------------------- range test

    def finished_range_test(self) -> float | None:
        """The suggestion of this sweep's FINISHED range-test child (an earlier attempt's), else None.

        Unfinished range-test children are deleted: the caller logs the test again.
        """
        def find() -> float | None:
            runs = self._search(f"tags.`{TAG_ROLE}` = 'range_test'")
            finished = [run for run in runs if run.info.status == FINISHED]
            for stale in runs:
                if not finished or stale.info.run_id != finished[0].info.run_id:
                    self.client.delete_run(stale.info.run_id)
            return float(finished[0].data.params["suggested_learning_rate"]) if finished else None

        suggestion: float | None = self.store.call("children", find)
        return suggestion

    def log_range_test(self, result: RangeTestResult, figure: Figure, params: Mapping[str, str]) -> str:
        """The range test as a child run of the parent (role ``range_test``)."""
        parent = self._parent()
        run_id: str = self.store.call("children", lambda: log_range_test(
            self.client, self.store.experiment_id, result, figure, params=params,
            tags={MLFLOW_PARENT_RUN_ID: parent, TAG_SWEEP_ID: self.sweep_id, TAG_ROLE: "range_test"}))
        return run_id

    # ------------------------------------------------------------------------------------------- ending

    def end(self, status: str, *, wait: bool = False) -> bool:
        """End every open child and the parent with ``status``; False if MLflow could not be reached."""
        if self.parent_run_id is None:
            return True
        open_children = [child for children in self.rounds.values() for child in children
                         if child is not None and child.status != FINISHED]

        def end_all() -> None:
            for child in open_children:
                self.client.set_terminated(child.run_id, status)
                child.status = status
            self.client.set_terminated(self._parent(), status)

        try:
            self.store.call("runs", end_all, wait=wait)
        except (TrackingUnavailableError, TrackingError):
            return False
        return True


def _now_ms() -> int:
    return int(time.time() * 1000)
