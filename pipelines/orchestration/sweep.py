"""A tracked learning-rate sweep, end to end, as named steps.

    connect (MLflow, fast) -> restore (checkpoint) -> pin (table version) -> start runs (parent)
      -> train (range test and rounds; journal + checkpoints at boundaries, live MLflow view)
      -> complete tracking (children, figures, model, registry) -> finalize results (one MERGE)

The lakehouse is the durable record and MLflow a view of it. While a round trains, every
``train.checkpoint_every`` epochs (and on a signal, and at the end) the sweep's state is saved as a checkpoint
and the results table gets the rows of the epochs since the last append; the MLflow curves are updated live
from a background thread. A rerun with the same ``sweep.id`` restores the newest checkpoint and trains only
what is left (same bits as an uninterrupted run); a sweep whose training had finished trains nothing and only
completes what is missing (results rows, MLflow runs and histories, figures, model, registration). When
MLflow is unavailable, training goes on; at the end the job waits at most ``tracking.retry_seconds`` for it,
then finishes everything else and reports exit code 4.

With ``sweep.learning_rates: auto`` the grid comes from Smith's range test (:mod:`pipelines.sweep.range_test`):
round 1 trains ``sweep.auto_num`` rates spanning ``sweep.auto_span`` around its suggestion; with
``sweep.refine`` round 2 trains a finer grid around round 1's best. The range test and every round's rates are
child runs of the one parent; the final round feeds the registry and the summary.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
from pyspark.sql import SparkSession

from pipelines.config import Config
from pipelines.errors import ConfigError, LeaseLostError, TerminatedError, TrackingError, TrackingUnavailableError
from pipelines.features.columns import model_input
from pipelines.features.split import TEST, VALIDATION
from pipelines.lakehouse.checkpoints import CheckpointStore
from pipelines.lakehouse.history import learning_rate_history
from pipelines.lakehouse.lease import LeaseStore, SweepLease
from pipelines.lakehouse.reader import read_feature_table
from pipelines.lakehouse.writer import check_results_table, finalize_results, journaled_epochs
from pipelines.orchestration.champion import Champion, metric_name
from pipelines.orchestration.journal import Journal
from pipelines.orchestration.params import auto_params, sweep_params, sweep_settings
from pipelines.orchestration.recorder import DataFacts, SweepRecorder
from pipelines.orchestration.report import SweepReport
from pipelines.orchestration.signals import StopRequest
from pipelines.orchestration.training import (
    PreparedData,
    Start,
    SweepRun,
    batch_size,
    model_rows,
    prepare_data,
    problem_for,
    range_test,
    split_metrics,
    train_grid,
)
from pipelines.reporting.figures import (
    learning_rate_history_figure,
    loss_curves_figure,
    penalty_heatmap_figure,
    range_test_figure,
    val_loss_vs_rate_figure,
)
from pipelines.reporting.tables import feature_rows, final_rows, progress_line, rate_summary, summary_metrics
from pipelines.session import get_spark
from pipelines.sgd.kernels import batches_per_epoch
from pipelines.sgd.metrics import MAIN_METRIC
from pipelines.sgd.problem import TrainingProblem
from pipelines.stopwatch import Stopwatch
from pipelines.sweep.checkpoint import RoundCheckpoint, SweepCheckpoint, settings_changes
from pipelines.sweep.grid import GridPoint, joint_grid, point_label
from pipelines.sweep.loop import Boundary
from pipelines.sweep.outcome import GridOutcome, RateResult
from pipelines.sweep.range_test import RangeTestResult, auto_grid, refine_span
from pipelines.tracking.datasets import TrainingData, dataset_input
from pipelines.tracking.export import LinearModel, linear_pipeline, log_model
from pipelines.tracking.live import LiveView
from pipelines.tracking.registry import (
    TAG_REGISTRATION,
    ChampionCheck,
    Registration,
    register_model,
    registration_decided,
)
from pipelines.tracking.runs import FAILED, FINISHED, KILLED, SweepTracker
from pipelines.tracking.store import TrackingStore, code_version, connect, redact, tracking_uri

TAG_TEST_METRICS = "lrsweep.test_metrics"

INPUT_EXAMPLE_ROWS = 5


def run_tracked_sweep(spark: SparkSession, config: Config, progress: Callable[[str], None] | None = print,
                      stop: StopRequest | None = None, train: bool = True,
                      store: TrackingStore | None = None) -> SweepReport:
    """Run (or resume, or complete) the configured sweep; see the module docstring.

    With ``train`` False (the sync job) nothing is trained: a sweep whose checkpoint is not complete is an error.

    Raises
    ------
    LrsweepError
        Bad configuration, table, output location or credentials (2), MLflow unreachable at start (4), a
        signal (130/143; a checkpoint is written and the runs end KILLED).
    """
    job = SweepJob(spark, config, progress or (lambda line: None), stop or StopRequest(), train)
    return job.run(store)


def run_sweep_job(config: Config, *, train: bool = True, say: Callable[[str], None] = print) -> None:
    """The sweep and sync jobs: MLflow is reached before Spark starts, signals stop at a safe point, the closing
    lines are printed, and a sweep without a usable model (3) or with MLflow incomplete (4) raises its error."""
    store = connect(config.tracking)  # an unreachable store is reported before Spark starts
    spark = get_spark(config.spark)
    with StopRequest().install(spark) as stop:
        report = run_tracked_sweep(spark, config, progress=say, stop=stop, store=store, train=train)
    for line in report.describe():
        say(line)
    if report.outcome_error is not None:
        raise report.outcome_error


@dataclass
class RoundResult:
    number: int
    run: SweepRun
    child_run_ids: list[str | None]


class SweepJob:
    """One attempt at a sweep; its methods are the named steps of :func:`run_tracked_sweep`."""

    def __init__(self, spark: SparkSession, config: Config, say: Callable[[str], None], stop: StopRequest,
                 train: bool) -> None:
        self.spark, self.config, self.say, self.stop, self.may_train = spark, config, say, stop, train
        self.started = time.perf_counter()
        self.phases = Stopwatch()
        self.sweep_id = config.sweep.id or uuid.uuid4().hex
        self.auto = config.sweep.learning_rates == "auto"
        self.settings = sweep_settings(config)
        self.checkpoints = CheckpointStore(config.output.checkpoints)
        self.lease: SweepLease | None = None  # held while run() runs: one live job per sweep id
        self.checkpoint: SweepCheckpoint | None = None
        self.resumed_from_epoch: int | None = None
        self.prepared: PreparedData | None = None
        self.rounds: list[RoundResult] = []
        self.range_test: RangeTestResult | None = None
        self.range_test_ran = False
        self.tracking_problem: str | None = None
        self.test_metrics: dict[str, float] | None = None
        self.effective_batch_size: int | None = None  # local_sgd's batch on a small table (train.min_steps_per_epoch)
        self.start: Start | None = None  # train.warm_start: champion, once resolved (warm_start_version)
        self.warm_start_version: str | None = None  # the champion version started from, or "none"

    # ----------------------------------------------------------------------------------------- steps

    def run(self, store: TrackingStore | None = None) -> SweepReport:
        """The attempt under the sweep id's lease (:mod:`pipelines.lakehouse.lease`), taken before MLflow or the
        checkpoint is touched and released however the attempt ends: a second job of this id exits 2."""
        leases = LeaseStore(self.config.output.checkpoints)
        with leases.acquire(self.sweep_id, self.config.output.lease_seconds, self.say) as self.lease:
            return self.run_leased(store, self.lease)

    def run_leased(self, store: TrackingStore | None, lease: SweepLease) -> SweepReport:
        with self.phases.timed("connect"):
            self.connect(store)
        with self.phases.timed("read"):
            self.restore()
            self.pin_table()
        try:
            if self.checkpoint is None or not self.checkpoint.complete:
                with self.phases.timed("prepare"):
                    self.prepare()  # a table too small to judge a model fails here, before any run exists
            self.start_runs()
            self.train_and_journal()
        finally:
            if self.prepared is not None:
                self.prepared.blocks.release()
        lease.check()  # a job whose lease was taken over writes nothing more
        with self.phases.timed("tracking"):
            self.complete_tracking()
        lease.check()
        with self.phases.timed("results_write"):
            self.finalize_results()
        self.checkpoints.prune(self.sweep_id)
        return self.report()

    def train_and_journal(self) -> None:
        """Train every round (journal appends in the background), then wait for the journal.

        A signal or a failure saves the newest state and ends the runs KILLED or FAILED.
        """
        self.journal = Journal(self.spark, self.config.output.results_table, self.sweep_id,
                               journaled_epochs(self.spark, self.config.output.results_table, self.sweep_id))
        self.recorder = SweepRecorder(self.sweep_id, self.settings, self.checkpoints, self.journal,
                                      self.config.model.loss, self.config.train.checkpoint_every, self.checkpoint)
        try:
            with self.phases.timed("training"):
                self.train()
            with self.phases.timed("results_write"):
                self.journal.flush()
        except LeaseLostError:
            raise  # another job writes this sweep now: no checkpoint, no run ended
        except TerminatedError:
            self.save_on_failure(KILLED)
            raise
        except BaseException as error:
            if self.stop.requested:  # the job the signal handler cancelled
                self.stop.acknowledge()
                self.save_on_failure(KILLED)
                raise self.stop.error(self.epoch_reached(), self.sweep_id) from error
            self.save_on_failure(FAILED)
            raise
        finally:
            self.journal.close()

    def connect(self, store: TrackingStore | None) -> None:
        """Reach MLflow (within ``tracking.connect_timeout_seconds``) and find an earlier attempt's runs."""
        self.store: TrackingStore = store or connect(self.config.tracking)
        self.tracker = SweepTracker(self.store, self.sweep_id)
        self.champion = Champion(self.tracker, self.config, self.say)

    def restore(self) -> None:
        """The newest readable checkpoint of this sweep id, after checking it was made with these settings (and
        that the checkpoint location can be written: a sweep that trains must be able to save)."""
        if self.may_train:
            self.checkpoints.check_writable(self.sweep_id)
        for stored in self.checkpoints.latest(self.sweep_id):
            try:
                if isinstance(stored, str):
                    raise ValueError("not a readable checkpoint file")
                checkpoint = SweepCheckpoint.from_arrays(stored.arrays)
            except (ValueError, KeyError) as error:
                self.say(f"warning: checkpoint {stored if isinstance(stored, str) else stored.path} cannot be read "
                         f"({error}); trying the one before")
                continue
            changes = settings_changes(checkpoint.settings, self.settings)
            if changes:
                raise ConfigError(f"sweep.id {self.sweep_id!r} was started with other settings ("
                                  + "; ".join(changes[:6]) + "); rerun with the original settings to complete it, "
                                  "or use a new sweep.id")
            if not self.may_train and not checkpoint.complete:
                raise ConfigError(f"sweep.id {self.sweep_id!r}: its training is not finished (checkpoint at epoch "
                                  f"{checkpoint.epoch}); nothing to sync: rerun the sweep job to resume it")
            self.checkpoint = checkpoint
            self.range_test = checkpoint.range_test
            self.resumed_from_epoch = checkpoint.epoch
            return
        if not self.may_train:
            raise ConfigError(f"sweep.id {self.sweep_id!r}: no checkpoint under {self.config.output.checkpoints}; "
                              "nothing to sync (run the sweep job to train it)")

    def pin_table(self) -> None:
        """Read the table at the version the first attempt pinned (or the configured/latest one)."""
        data = self.config.data
        recorded = (self.checkpoint.table_version if self.checkpoint is not None
                    else _int_or_none(self.tracker.recorded_param("table_version")))
        if recorded is not None and data.version is None:
            data = data.model_copy(update={"version": recorded})
        if data.since_version is not None:
            data = data.model_copy(update={"since_version": self.since_version(data.since_version)})
        self.table = read_feature_table(self.spark, data, self.config.model.loss, steps=self.phases)
        check_results_table(self.spark, self.config.output.results_table)
        penalties = len(self.config.penalty_axis())
        rates = ("auto rates" if self.auto else f"{len(self.config.sweep.grid())} rates") + \
            (f" x {penalties} penalties" if penalties > 1 else "")
        resumed = f" (resumed from epoch {self.resumed_from_epoch})" if self.checkpoint is not None else ""
        self.say(f"sweep {self.sweep_id}{resumed}: {self.table.ref.identifier} at {self.table.ref.describe()}, "
                 f"{self.table.rows} rows, {len(self.table.features)} features, {rates}")
        if self.table.dropped_summary():
            self.say(f"data: {self.table.dropped_summary()} (data.on_null / data.on_invalid)")
        used = ", ".join(f"{name} ({family})" for name, family in self.table.columns.used.items())
        self.say(f"features: {used}")
        if self.table.columns.left_out:
            self.say(f"left out: {'; '.join(self.table.columns.describe_left_out())}")

    def since_version(self, configured: int | str) -> int | None:
        """``data.since_version`` as a number (None: the whole version); ``champion`` is the version the pinned
        champion was trained on. A rerun reads the range its first attempt pinned."""
        recorded = self.tracker.recorded_param("since_version")
        if recorded is not None:
            return None if recorded == "none" else int(recorded)
        if isinstance(configured, int):
            return configured
        return self.champion.since_version(self.config.data.table)

    def start_runs(self) -> None:
        """The parent run (created, or an earlier attempt's put back to RUNNING) with params and lineage."""
        table = self.table
        self.data = TrainingData(table.dataframe, table.ref.identifier, table.ref.version, table.label,
                                 table.ref.is_path, table.rows, since_version=table.ref.since_version)
        self.dataset = dataset_input(self.data)
        tags = {"lrsweep.code_version": code_version(), "lrsweep.spark_master": _spark_master(self.spark),
                "lrsweep.tracking_uri": redact(tracking_uri(self.config.tracking)), **self.champion.tag()}
        grid = [] if self.auto else self.config.sweep.grid()
        params = sweep_params(self.config, table, grid)
        if self.effective_batch_size is not None:
            params["effective_batch_size"] = str(self.effective_batch_size)
        if self.config.train.warm_start == "champion":
            self.resolve_warm_start()
            params["warm_start_version"] = str(self.warm_start_version)
        self.parent_run_id = self.tracker.start_parent(params, tags, self.dataset)
        if table.rows_dropped_null or table.rows_dropped_invalid:
            self.tracker.log_parent_metrics({"rows_dropped_null": float(table.rows_dropped_null),
                                             "rows_dropped_invalid": float(table.rows_dropped_invalid)})

    def train(self) -> None:
        """The range test (``auto``) and every round, each resumed from the checkpoint where it has one."""
        grid = auto_grid(self.suggestion(), self.config.sweep.auto_num, self.config.sweep.auto_span) \
            if self.auto else self.config.sweep.grid()
        penalties = self.config.penalty_axis()
        self.train_round(1, joint_grid(grid, penalties))
        best = self.rounds[0].run.outcome.best
        if self.auto and self.config.sweep.refine:
            if best is None or len(grid) < 2:
                self.say("not refining: round 1 has no usable best rate")
            else:
                num = self.config.sweep.auto_num + (1 - self.config.sweep.auto_num % 2)  # odd: retrain the best
                finer = auto_grid(best.learning_rate, num, refine_span(grid))
                self.say(f"refining around lr={best.learning_rate:.4g}: {len(finer)} rates from {finer[0]:.4g} "
                         f"to {finer[-1]:.4g}")
                self.train_round(2, joint_grid(finer, penalties))
        self.recorder.mark_complete()

    def suggestion(self) -> float:
        """The range test's suggestion: from the checkpoint, an earlier attempt's run, or a test run now."""
        if self.range_test is not None:
            self.say(f"range test: suggestion lr={self.range_test.suggestion:.4g} from the checkpoint")
            return self.range_test.suggestion
        self.require_training("the range test")
        self.range_test = range_test(self.prepare(), self.config.problem, self.config.train, self.config.range_test,
                                     start=self.start)
        self.range_test_ran = True
        result = self.range_test
        self.say(f"range test: {result.steps} steps{' (stopped early)' if result.stopped_early else ''}, minimum "
                 f"smoothed loss at lr={result.min_loss_rate:.4g}, suggested lr={result.suggestion:.4g}")
        return result.suggestion

    def train_round(self, number: int, points: list[GridPoint]) -> None:
        """One grid: restored from the checkpoint, trained to its end (checkpointing), or both."""
        restored = self.restored_round(number, points)
        child_ids = self.open_round(number, points)
        if restored is not None and restored.snapshot.grid_state().complete:
            state = restored.snapshot.grid_state()
            outcome = state.outcome(restored.snapshot.jobs, restored.snapshot.row_passes,
                                    self.full_grid_row_passes(len(points)), 0.0)
            facts = self.facts()
            run = SweepRun(outcome, tuple(points), facts.encoding, facts.train_rows, facts.validation_rows,
                           facts.num_partitions)
            self.journal.append(number, outcome, self.parent_run_id, child_ids, self.table, self.config.model.loss,
                                last_epoch=state.recorded_epoch, final=True, last_round=self.is_last_round(number))
        else:
            self.require_training(f"round {number}")
            watcher = RoundWatcher(self, number, points, child_ids)
            try:
                run = train_grid(self.prepare(), self.config.problem, self.config.train, self.config.sweep,
                                 points, resume=None if restored is None else restored.snapshot,
                                 on_boundary=watcher, start=self.start)
            finally:
                watcher.close()
        self.rounds.append(RoundResult(number, run, child_ids))

    def open_round(self, number: int, points: list[GridPoint]) -> list[str | None]:
        try:
            return self.tracker.open_round(number, points, self.dataset, tag_round=self.auto, wait=False)
        except TrackingUnavailableError:
            self.say(f"warning: MLflow is unavailable; round {number} trains without its live view")
            return [None] * len(points)

    def complete_tracking(self) -> None:
        """Bring MLflow up to the sweep: every child's curves and outcome, figures, model, registry, summary.

        An outage longer than ``tracking.retry_seconds`` leaves the rest for a rerun (exit 4).
        """
        try:
            self._complete_tracking()
        except TrackingUnavailableError as error:
            self.tracking_problem = str(error)
            self.tracker.end(KILLED)  # if MLflow is back for a moment; a rerun (or sync) completes them
            self.say(f"warning: {error}; MLflow is incomplete")
        except Exception:
            with contextlib.suppress(TrackingUnavailableError, TrackingError):
                self.tracker.end(FAILED)  # no run is left RUNNING; a rerun completes what is missing
            raise

    def _complete_tracking(self) -> None:
        tracker, final = self.tracker, self.final_run()
        for result in self.rounds:
            if any(run_id is None for run_id in result.child_run_ids):
                result.child_run_ids = tracker.open_round(result.number, list(result.run.points),
                                                          self.dataset, tag_round=self.auto)
            tracker.sync(result.number, result.run.outcome, final=True)
        if self.auto:
            self.log_auto_rounds()
        outcome = final.outcome
        self.summary = rate_summary(outcome, self.config.model.loss)
        tracker.log_figure(loss_curves_figure(outcome, self.config.model.loss), "figures/loss_curves.png")
        tracker.log_figure(val_loss_vs_rate_figure(outcome), "figures/val_loss_vs_learning_rate.png")
        heatmap = penalty_heatmap_figure(outcome)
        if heatmap is not None:
            tracker.log_figure(heatmap, "figures/val_loss_heatmap.png")
        tracker.log_table_once(self.summary, "results/rates.json")
        tracker.log_table_once(feature_rows(self.table.columns, final.encoding), "features.json")
        self.test_metrics = self.held_out()
        self.report_drift()
        if self.test_metrics is not None:
            tracker.log_parent_metrics({f"test_{name}": value for name, value in self.test_metrics.items()})
        self.model_uri, self.registration = self.log_and_register(outcome)
        self.log_history()
        metrics = summary_metrics(outcome, train_rows=final.train_rows, validation_rows=final.validation_rows,
                                  suggested_learning_rate=self.range_test.suggestion if self.range_test else None,
                                  rounds=len(self.rounds))
        tracker.log_parent_metrics(metrics)
        if self.resumed_from_epoch is not None:
            tracker.log_parent_metrics({"resumed_from_epoch": float(self.resumed_from_epoch)}, replace=True)
        best = outcome.best
        if best is None:
            tracker.set_parent_tags({"lrsweep.best": "none: every rate diverged or was stopped; nothing registered"})
        else:
            tracker.set_parent_tags({"lrsweep.best": best.point.exact_label,
                                     "lrsweep.main_metric": MAIN_METRIC[self.config.model.loss]})
        tracker.log_system_metrics(self.timings())
        tracker.end(FINISHED, wait=True)

    def log_auto_rounds(self) -> None:
        assert self.range_test is not None
        tracker = self.tracker
        tracker.log_parent_params({"suggested_learning_rate": repr(self.range_test.suggestion), **{
            f"round{result.number}_learning_rates": ",".join(
                repr(rate) for rate in dict.fromkeys(point.learning_rate for point in result.run.points))
            for result in self.rounds}})
        if tracker.finished_range_test() is None:
            tracker.log_range_test(self.range_test, range_test_figure(self.range_test), auto_params(self.config))

    def log_and_register(self, outcome: GridOutcome) -> tuple[str | None, Registration | None]:
        best = outcome.best
        if best is None:
            return None, None
        loss, table, final = self.config.model.loss, self.table, self.final_run()
        classes = self.facts().classes or table.label_classes or (0, 1)
        pipeline = linear_pipeline(final.encoding, best.weights, best.intercept, loss, classes=classes,
                                   epsilon=self.config.model.epsilon)
        example = table.dataframe.select(*[model_input(c, family) for c, family in table.columns.used.items()]) \
            .limit(INPUT_EXAMPLE_ROWS).toPandas()
        lineage = {"sweep_id": self.sweep_id, "learning_rate": best.learning_rate, "reg_param": best.reg_param,
                   "l1_ratio": best.l1_ratio,
                   "data_table": table.ref.identifier, "data_version": table.ref.version,
                   "data_since_version": table.ref.since_version,
                   "lrsweep_columns": json.dumps(table.columns.used), "lrsweep_classes": json.dumps(list(classes))}
        model_uri = log_model(self.tracker, pipeline, example, loss, lineage)
        tracking = self.config.tracking
        check = None if tracking.register_when == "never" or registration_decided(self.tracker) \
            else self.challenge_champion(best, classes)
        registration = register_model(
            self.tracker, model_uri, tracking.registered_model, tracking.register_when,
            best.final_metrics()["val_loss"], loss,
            {"lrsweep.sweep_id": self.sweep_id, "lrsweep.learning_rate": repr(best.learning_rate),
             "lrsweep.reg_param": repr(best.reg_param), "lrsweep.l1_ratio": repr(best.l1_ratio),
             "lrsweep.data_table": table.ref.identifier, "lrsweep.data_version": str(table.ref.version),
             **({"lrsweep.data_since_version": str(table.ref.since_version)}
                if table.ref.since_version is not None else {}),
             **{f"lrsweep.test_{name}": repr(value) for name, value in (self.test_metrics or {}).items()},
             **{f"lrsweep.{name}": repr(float(value)) for name, value in best.final_metrics().items()
                if name.startswith("val_") and name != "val_loss"}},
            check=check, min_improvement=tracking.min_improvement)
        return model_uri, registration

    def report_drift(self) -> None:
        """Each feature's drift (PSI) from the champion's training rows to this sweep's, on the parent
        (``drift_psi/<column>``, ``drift.json``) and printed; a warning names the features above
        ``tracking.drift_threshold``."""
        found = self.champion.drift(self.final_run().encoding)
        if not found or not found[0]:
            return
        drifts, skipped = found
        threshold = self.config.tracking.drift_threshold
        self.tracker.log_parent_metrics({f"drift_psi/{metric_name(d.column)}": d.psi for d in drifts}, replace=True)
        self.tracker.log_table_once([{"column": d.column, "kind": d.kind, "psi": d.psi, "detail": d.detail,
                                      "champion_version": self.champion.version} for d in drifts], "drift.json")
        above = [d for d in drifts if d.psi > threshold]
        against = f"drift against {self.champion.name} version {self.champion.version}'s training rows"
        if above:
            listed = "; ".join(f"{d.column} {d.psi:.3g} ({d.detail})" for d in above[:8])
            self.say(f"warning: {against}: {len(above)} of {len(drifts)} features above tracking.drift_threshold="
                     f"{threshold:g}: {listed}")
        else:
            top = drifts[0]
            self.say(f"{against}: none of {len(drifts)} features above {threshold:g} (largest {top.column} "
                     f"{top.psi:.3g}: {top.detail})")
        if skipped:
            self.say(f"drift not scored: {', '.join(skipped)}")

    def resolve_warm_start(self) -> None:
        """``train.warm_start: champion``: every grid point and the range test start from the pinned champion
        carried onto this sweep's encoding (:meth:`Champion.warm_start`); ``warm_start_version`` on the parent."""
        facts = self.facts()
        classes = facts.classes or self.table.label_classes or (0, 1)
        carried = self.champion.warm_start(facts.encoding, self.config.model.loss, classes)
        self.start = None if carried is None else (carried.weights, carried.intercepts)
        self.warm_start_version = "none" if carried is None else self.champion.version

    def challenge_champion(self, best: RateResult, classes: tuple[Any, ...]) -> ChampionCheck | None:
        """The pinned champion measured on this sweep's validation rows, with the sweep's metrics, logged on the
        parent (``champion_val_*``, ``challenger_val_loss``) and printed; None without a champion."""
        def measure(model: LinearModel) -> dict[str, float] | None:
            return split_metrics(VALIDATION, self.table, self.config.data, self.config.train.seed,
                                 self.config.model.class_weight, model.encoding, model.weights, model.intercept,
                                 self.problem().loss_function, self.facts().classes)

        check = self.champion.check(self.table, self.config.model.loss, classes, measure)
        if check is None:
            return None
        if check.metrics is None:
            verb = "cannot be measured on this sweep's rows" if check.replaceable else "could not be loaded"
            self.say(f"champion: {self.champion.describe()} {verb}: {check.why_not}")
            return check
        challenger = best.final_metrics()["val_loss"]
        self.tracker.log_parent_metrics({"challenger_val_loss": challenger, **{
            f"champion_val_{metric}": value for metric, value in check.metrics.items() if metric != "count"}})
        self.say(f"champion: {self.champion.describe()} on this sweep's {int(check.metrics['count'])} validation "
                 f"rows of {self.table.ref.describe()}: val_loss {check.metrics['loss']:.6g}; challenger "
                 f"{point_label(best.point)}: {challenger:.6g}")
        return check

    def held_out(self) -> dict[str, float] | None:
        """The champion's metrics on the held-out test rows (None without any): measured once, after the choice
        (a rerun reads them back from the parent), never used to choose."""
        data, best = self.config.data, self.final_run().outcome.best
        if best is None or not (data.test_fraction > 0 or data.split == "column"):
            return None
        recorded = self.tracker.parent_tags().get(TAG_TEST_METRICS)
        if recorded:
            return dict(json.loads(recorded))
        metrics = split_metrics(TEST, self.table, data, self.config.train.seed, self.config.model.class_weight,
                                self.final_run().encoding, best.weights, best.intercept,
                                self.problem().loss_function, self.facts().classes)
        if metrics is None:
            self.say("test: the test split is empty; no held-out metrics")
            return None
        self.tracker.set_parent_tags({TAG_TEST_METRICS: json.dumps(metrics)})
        shown = ", ".join(f"{name} {value:.4g}" for name, value in metrics.items())
        self.say(f"test (held out, the champion {point_label(best.point)} only): {shown}")
        return metrics

    def finalize_results(self) -> None:
        """Each rate's final status, kept epoch, best flag and run ids, and the registry's decision on the best
        point, on its rows (one MERGE), unless every row holds them already."""
        decision = self.registration_decision()
        if not self.journal.provisional and decision is None:
            return
        rows = []
        for result in self.rounds:
            rows += final_rows(result.run.outcome, sweep_id=self.sweep_id, round_number=result.number,
                               parent_run_id=self.parent_run_id, child_run_ids=result.child_run_ids,
                               is_final_round=result is self.rounds[-1], registration=decision)
        finalize_results(self.spark, rows, self.config.output.results_table, self.sweep_id)

    def log_history(self) -> None:
        """``figures/learning_rate_history.png`` on the parent: this table's earlier sweeps (from the results
        table) and this one."""
        best, table = self.final_run().outcome.best, self.table
        if best is None:
            return
        earlier = learning_rate_history(self.spark, self.config.output.results_table, table.ref.identifier)
        now = pd.DataFrame([{
            "sweep_id": self.sweep_id, "data_version": table.ref.version, "data_since_version": table.ref.since_version,
            "best_learning_rate": best.learning_rate, "best_reg_param": best.reg_param,
            "best_val_loss": best.final_metrics()["val_loss"], "registration": self.registration_decision(),
            "finished": pd.Timestamp.now(tz="UTC").tz_localize(None)}])
        earlier = earlier[earlier["sweep_id"] != self.sweep_id]
        history = now if earlier.empty else pd.concat([earlier, now], ignore_index=True)
        history = history.sort_values(["data_version", "finished"], kind="stable", ignore_index=True)
        self.tracker.log_figure(learning_rate_history_figure(history), "figures/learning_rate_history.png")

    def registration_decision(self) -> str | None:
        """The registry's decision as the parent records it (``registered:7``, ``kept_champion:``), if taken."""
        if getattr(self, "registration", None) is None or self.tracking_problem is not None:
            return None
        try:
            return self.tracker.parent_tags().get(TAG_REGISTRATION)
        except TrackingUnavailableError:
            return None

    def report(self) -> SweepReport:
        final = self.final_run()
        wall = time.perf_counter() - self.started
        return SweepReport(
            sweep_id=self.sweep_id, parent_run_id=self.parent_run_id, child_run_ids=self.rounds[-1].child_run_ids,
            run=final, loss=self.config.model.loss, table=self.table,
            resumed=self.checkpoint is not None or self.tracker.resumed, resumed_from_epoch=self.resumed_from_epoch,
            results_rows=self.journal.rows_in_table(), results_written=self.journal.appended_rows > 0,
            model_uri=getattr(self, "model_uri", None), registration=getattr(self, "registration", None),
            tracking_problem=self.tracking_problem, registered_model=self.config.tracking.registered_model,
            results_table=self.config.output.results_table,
            wall_seconds=wall, phase_seconds=dict(self.phases.by_label), checkpoint_seconds=self.recorder.seconds,
            journal_seconds=self.journal.append_seconds,
            tracking_seconds=self.store.stopwatch.seconds, tracking_by_label=dict(self.store.stopwatch.by_label),
            summary=getattr(self, "summary", None) or rate_summary(final.outcome, self.config.model.loss),
            suggested_learning_rate=self.range_test.suggestion if self.range_test else None,
            range_test=self.range_test if self.range_test_ran else None, rounds=[r.run for r in self.rounds])

    # -------------------------------------------------------------------------------------- helpers

    def prepare(self) -> PreparedData:
        """The cached training blocks, built on first use (a completed rerun never builds them)."""
        if self.prepared is None:
            partitions = self.checkpoint.num_partitions if self.checkpoint is not None else None
            self.prepared = prepare_data(self.spark, self.table, self.config.data, self.config.features,
                                         self.config.train, self.config.model.class_weight, num_partitions=partitions,
                                         model_rows=model_rows(self.config.sweep, len(self.config.penalty_axis())),
                                         steps=self.phases)
            encoding = self.prepared.encoding
            for note in self.prepared.notes:
                self.say(f"data: {note}")
            classes = self.prepared.classes
            if classes is not None:
                more = ", ..." if len(classes) > 20 else ""
                self.say(f"classes: {len(classes)} ({', '.join(repr(c) for c in classes[:20])}{more})")
            self.say(f"encoding: {len(encoding.columns)} columns -> {encoding.n_inputs} model inputs "
                     f"({encoding.sparse_width} sparse): {'; '.join(c.describe() for c in encoding.columns)}")
            self.say(self.prepared.executor_choice.line())
            train, blocks = self.config.train, self.prepared.blocks
            effective = batch_size(train, blocks)
            if train.algorithm == "local_sgd" and effective != train.batch_size:
                self.effective_batch_size = effective
                self.say(f"small table: train.batch_size={train.batch_size} gives "
                         f"{batches_per_epoch(max(blocks.train_rows), train.batch_size)} step(s) per epoch on the "
                         f"largest partition's {max(blocks.train_rows)} training rows; using batch size "
                         f"{self.effective_batch_size} for at least train.min_steps_per_epoch="
                         f"{train.min_steps_per_epoch} steps")
        return self.prepared

    def require_training(self, what: str) -> None:
        if not self.may_train:
            raise ConfigError(f"sweep.id {self.sweep_id!r}: {what} is not trained yet; nothing to sync (rerun the "
                              "sweep job to resume training)")

    def restored_round(self, number: int, points: list[GridPoint]) -> RoundCheckpoint | None:
        if self.checkpoint is None:
            return None
        for restored in self.checkpoint.rounds:
            if restored.number == number:
                if list(restored.points) != list(points):
                    raise ConfigError(f"sweep.id {self.sweep_id!r}: round {number} was trained with another grid")
                return restored
        return None

    def final_run(self) -> SweepRun:
        return self.rounds[-1].run

    def is_last_round(self, number: int) -> bool:
        """Whether round ``number`` is the sweep's last (an ``auto`` sweep that refines has two)."""
        return not (self.auto and self.config.sweep.refine and number == 1)

    def facts(self) -> DataFacts:
        """The pinned data's facts: from the prepared blocks, or from the checkpoint when none were built."""
        if self.prepared is not None:
            blocks = self.prepared.blocks
            return DataFacts(self.table, blocks.num_partitions, blocks.total_train_rows, blocks.total_val_rows,
                             self.prepared.encoding, self.prepared.classes)
        assert self.checkpoint is not None, "prepare() first"
        checkpoint = self.checkpoint
        return DataFacts(self.table, checkpoint.num_partitions, checkpoint.train_rows, checkpoint.validation_rows,
                         checkpoint.encoding, checkpoint.classes)

    def problem(self) -> TrainingProblem:
        """The configured problem on the pinned data (a multinomial model's number of classes)."""
        return problem_for(self.config.problem, self.facts().classes)

    def full_grid_row_passes(self, n_points: int) -> int:
        seeds = len(self.config.sweep.seeds or [self.config.train.seed])
        return self.config.train.epochs * n_points * seeds * self.facts().train_rows

    def epoch_reached(self) -> int:
        return self.recorder.epoch

    def save_on_failure(self, status: str) -> None:
        """On a signal or a failure: save the newest state and its rows, end the runs with ``status``."""
        self.recorder.save_latest(self.parent_run_id, self.tracker.child_run_ids, self.stop.jvm_alive(), self.say)
        self.tracker.end(status)

    def timings(self) -> dict[str, float]:
        wall = time.perf_counter() - self.started
        seconds = {f"{name}_seconds": value for name, value in self.phases.by_label.items()}
        seconds.update({"checkpoint_seconds": self.recorder.seconds, "journal_seconds": self.journal.append_seconds,
                        "wall_seconds": wall, "tracking_seconds": self.store.stopwatch.seconds,
                        "tracking_fraction": self.store.stopwatch.seconds / wall if wall else 0.0})
        seconds.update({f"tracking_seconds_{label}": value for label, value in self.store.stopwatch.by_label.items()})
        return seconds


class RoundWatcher:
    """What happens at each epoch boundary of a round: progress, live view, checkpoint + journal, signals."""

    def __init__(self, job: SweepJob, number: int, points: list[GridPoint], child_ids: list[str | None]) -> None:
        self.job, self.number, self.points, self.child_ids = job, number, points, child_ids
        self.live = LiveView(job.tracker, number) if all(child_ids) else None
        self.printed_epoch = -1

    def __call__(self, boundary: Boundary) -> None:
        job, state = self.job, boundary.state
        if job.lease is not None:
            job.lease.check()  # before this boundary's checkpoint and rows
        epoch = state.recorded_epoch
        outcome = state.outcome(boundary.trainer.jobs, boundary.trainer.row_passes,
                                job.full_grid_row_passes(state.n_rates), 0.0)
        if epoch > self.printed_epoch and epoch >= 1:
            job.say(progress_line(state))
            self.printed_epoch = epoch
        if self.live is not None:
            self.live.publish(outcome, epoch)
        round_checkpoint = RoundCheckpoint(self.number, tuple(self.points), boundary.capture())
        job.recorder.record(job.facts(), round_checkpoint, outcome, job.parent_run_id, self.child_ids, job.range_test,
                            round_complete=state.complete and not state.running().size,
                            last_round=job.is_last_round(self.number))
        if job.stop.requested:
            raise job.stop.error(epoch, job.sweep_id)

    def close(self) -> None:
        if self.live is not None:
            self.live.close()
            if self.live.error is not None:
                raise self.live.error


def _int_or_none(text: str | None) -> int | None:
    return int(text) if text is not None else None


def _spark_master(spark: SparkSession) -> str:
    try:
        return str(spark.sparkContext.master)
    except Exception:  # Spark Connect sessions have no SparkContext
        return str(spark.conf.get("spark.master", "unknown"))
