"""A tracked learning-rate sweep, end to end, as named steps.

    connect (MLflow, fast: Tracking) -> restore (the SweepCheckpoint) -> pin (the FeatureTable at its version)
      -> prepare (PreparedData, unless training had finished; DataFacts either way) -> start runs (ParentRun)
      -> train (Trained: range test and rounds; journal + checkpoints at boundaries, live MLflow view)
      -> complete tracking (Published: children, figures, model, registry) -> finalize results (one MERGE)
      -> report (SweepReport)

Each step is a function (:mod:`~pipelines.orchestration.inputs`, :mod:`~pipelines.orchestration.rounds`,
:mod:`~pipelines.orchestration.publish`) or a small object bound to what its parts share, and returns a frozen
value; :meth:`SweepJob.run_leased` composes them in this order.

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

import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack, closing

from pyspark.sql import SparkSession

from pipelines.config import Config
from pipelines.errors import first_line
from pipelines.lakehouse.checkpoints import CheckpointStore
from pipelines.lakehouse.lease import LeaseStore, SweepLease
from pipelines.lakehouse.writer import journaled
from pipelines.orchestration.inputs import (
    Tracking,
    connect_tracking,
    data_facts,
    pin_table,
    prepare,
    restore_checkpoint,
)
from pipelines.orchestration.journal import Journal
from pipelines.orchestration.params import sweep_settings
from pipelines.orchestration.publish import Published, Publisher, finalize
from pipelines.orchestration.recorder import DataFacts, SweepRecorder
from pipelines.orchestration.report import SweepReport
from pipelines.orchestration.rounds import ParentRun, RoundTrainer, Trained, start_parent, warm_start
from pipelines.orchestration.signals import StopRequest
from pipelines.reporting.tables import rate_summary
from pipelines.session import get_spark
from pipelines.stopwatch import Stopwatch
from pipelines.sweep.checkpoint import SweepCheckpoint
from pipelines.tracking.store import TrackingStore, connect


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


class SweepJob:
    """One attempt at a sweep: :meth:`run` composes the steps of the module docstring, each returning a value."""

    def __init__(self, spark: SparkSession, config: Config, say: Callable[[str], None], stop: StopRequest,
                 train: bool) -> None:
        self.spark, self.config, self.say, self.stop, self.may_train = spark, config, say, stop, train
        self.started = time.perf_counter()
        self.phases = Stopwatch()
        self.sweep_id = config.sweep.id or uuid.uuid4().hex
        self.checkpoints = CheckpointStore(config.output.checkpoints)

    def run(self, store: TrackingStore | None = None) -> SweepReport:
        """The attempt under the sweep id's lease (:mod:`pipelines.lakehouse.lease`), taken before MLflow or the
        checkpoint is touched and released however the attempt ends: a second job of this id exits 2."""
        output = self.config.output
        with LeaseStore(output.checkpoints).acquire(self.sweep_id, output.lease_seconds, self.say) as lease:
            return self.run_leased(store, lease)

    def run_leased(self, store: TrackingStore | None, lease: SweepLease) -> SweepReport:
        config, spark, say, phases, sweep_id = self.config, self.spark, self.say, self.phases, self.sweep_id
        settings, results_table = sweep_settings(config), config.output.results_table
        with phases.timed("connect"):
            tracking = connect_tracking(store or connect(config.tracking), sweep_id, config, say)
        with phases.timed("read"):
            checkpoint = restore_checkpoint(self.checkpoints, sweep_id, settings, self.may_train, say)
            table = pin_table(spark, config, sweep_id, checkpoint, tracking, phases, say)
        prepared = None
        if checkpoint is None or not checkpoint.complete:
            with phases.timed("prepare"):  # a table too small to judge a model fails here, before any run exists
                prepared = prepare(spark, table, config, checkpoint, phases, say)
        facts = data_facts(table, prepared, checkpoint)
        with ExitStack() as stack:
            try:
                warm = warm_start(tracking, facts, config.model.loss) if config.train.warm_start == "champion" \
                    else None
                parent = start_parent(spark, config, tracking, facts, prepared, warm)
                journal = stack.enter_context(closing(Journal(spark, results_table, sweep_id,
                                                              journaled(spark, results_table, sweep_id))))
                recorder = SweepRecorder(sweep_id, settings, self.checkpoints, journal, config.model.loss,
                                         config.train.checkpoint_every, checkpoint)
                trained = RoundTrainer(config, sweep_id, self.may_train, facts, prepared, checkpoint, tracking, parent,
                                       None if warm is None else warm.start, journal, recorder, lease, self.stop,
                                       say).train_journaled(phases)
            finally:
                if prepared is not None:
                    prepared.blocks.release()
            lease.check()  # a job whose lease was taken over writes nothing more
            published = self.publish(Publisher(spark, config, sweep_id, tracking, facts, parent, checkpoint, say),
                                     trained, journal, lambda: self.timings(recorder, journal, tracking.store), lease)
            with phases.timed("results_write"):
                decision = published.decision(tracking.tracker)
                journal.release({done.number: done.child_run_ids for done in published.rounds}, decision)
                journal.flush()
                finalize(spark, results_table, sweep_id, parent, published, decision, journal)
        self.checkpoints.prune(sweep_id)
        return self.report(checkpoint, facts, tracking, parent, trained, published, recorder, journal)

    def publish(self, publisher: Publisher, trained: Trained, journal: Journal,
                timings: Callable[[], dict[str, float]], lease: SweepLease) -> Published:
        """MLflow brought up to the trained sweep. Should that fail, the journal's held rows are appended all the
        same (the registry's decision unknown: a rerun sets it) or, failing that too, left to the rerun, which
        restores them from the complete checkpoint."""
        try:
            with self.phases.timed("tracking"):
                published = publisher.publish(trained, timings)
        except BaseException:
            try:
                lease.check()
                journal.release({done.number: done.child_run_ids for done in trained.rounds}, None)
                journal.flush()
            except Exception as error:
                self.say(f"warning: the last results rows were not appended ({first_line(error)}); a rerun with "
                         f"sweep.id={self.sweep_id} appends them")
            raise
        lease.check()
        return published

    def report(self, checkpoint: SweepCheckpoint | None, facts: DataFacts, tracking: Tracking, parent: ParentRun,
               trained: Trained, published: Published, recorder: SweepRecorder, journal: Journal) -> SweepReport:
        """What the attempt did, from the steps' values."""
        config, stopwatch = self.config, tracking.store.stopwatch
        return SweepReport(
            sweep_id=self.sweep_id, parent_run_id=parent.run_id, rounds=published.rounds, facts=facts,
            loss=config.model.loss, resumed=checkpoint is not None or tracking.tracker.resumed,
            resumed_from_epoch=None if checkpoint is None else checkpoint.epoch,
            results_rows=journal.rows_in_table(), results_written=journal.appended_rows > 0,
            model_uri=published.model_uri, registration=published.registration,
            tracking_problem=published.tracking_problem, registered_model=config.tracking.registered_model,
            results_table=config.output.results_table, wall_seconds=time.perf_counter() - self.started,
            phase_seconds=dict(self.phases.by_label), checkpoint_seconds=recorder.seconds,
            journal_seconds=journal.append_seconds, tracking_seconds=stopwatch.seconds,
            tracking_by_label=dict(stopwatch.by_label),
            summary=rate_summary(published.rounds[-1].outcome, config.model.loss),
            suggested_learning_rate=trained.range_test.suggestion if trained.range_test else None,
            range_test=trained.range_test if trained.range_test_ran else None,
            tracking_uri=tracking.store.display_uri, experiment_id=tracking.store.experiment_id)

    def timings(self, recorder: SweepRecorder, journal: Journal, store: TrackingStore) -> dict[str, float]:
        """Where the attempt's time went so far, as the parent's system metrics."""
        wall = time.perf_counter() - self.started
        seconds = {f"{name}_seconds": value for name, value in self.phases.by_label.items()}
        seconds.update({"checkpoint_seconds": recorder.seconds, "journal_seconds": journal.append_seconds,
                        "wall_seconds": wall, "tracking_seconds": store.stopwatch.seconds,
                        "tracking_fraction": store.stopwatch.seconds / wall if wall else 0.0})
        seconds.update({f"tracking_seconds_{label}": value for label, value in store.stopwatch.by_label.items()})
        return seconds
