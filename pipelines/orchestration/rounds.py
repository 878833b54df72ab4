"""A sweep's runs and rounds: the parent run, then the range test (``auto``) and every round of the grid, each
restored from the checkpoint where it has one, checkpointed and journaled at its epoch boundaries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mlflow.entities import DatasetInput
from pyspark.sql import SparkSession

from pipelines.config import Config
from pipelines.console import show_epoch
from pipelines.distributed.blocks import spark_context
from pipelines.errors import ConfigError, LeaseLostError, TerminatedError, TrackingUnavailableError
from pipelines.lakehouse.lease import SweepLease
from pipelines.orchestration.inputs import Say, Tracking, effective_batch_size
from pipelines.orchestration.journal import Journal
from pipelines.orchestration.params import sweep_params
from pipelines.orchestration.recorder import DataFacts, SweepRecorder
from pipelines.orchestration.signals import StopRequest
from pipelines.orchestration.training import PreparedData, Start, range_test, train_grid
from pipelines.stopwatch import Stopwatch
from pipelines.sweep.checkpoint import RoundCheckpoint, SweepCheckpoint
from pipelines.sweep.grid import GridPoint, joint_grid
from pipelines.sweep.loop import Boundary
from pipelines.sweep.outcome import GridOutcome
from pipelines.sweep.range_test import RangeTestResult, auto_grid, refine_span
from pipelines.tracking.datasets import TrainingData, dataset_input
from pipelines.tracking.live import LiveView
from pipelines.tracking.runs import FAILED, KILLED
from pipelines.tracking.store import code_version, redact, tracking_uri


@dataclass(frozen=True)
class WarmStart:
    """``train.warm_start: champion``: the pinned champion carried onto this sweep's encoding (None: there is
    none, or it cannot be carried) and its version (``"none"``), the parent's ``warm_start_version``."""

    start: Start | None
    version: str


@dataclass(frozen=True)
class ParentRun:
    """The sweep's parent run (created, or an earlier attempt's put back to RUNNING) and its dataset input."""

    run_id: str
    dataset: DatasetInput


@dataclass(frozen=True)
class TrainedRound:
    """One round's grid as trained: its points, what each produced, and its child runs (None: not opened)."""

    number: int
    points: tuple[GridPoint, ...]
    outcome: GridOutcome
    child_run_ids: tuple[str | None, ...]


@dataclass(frozen=True)
class Trained:
    """Every round of the sweep, the range test an ``auto`` grid came from, and whether this attempt ran it."""

    rounds: tuple[TrainedRound, ...]
    range_test: RangeTestResult | None = None
    range_test_ran: bool = False

    @property
    def final(self) -> TrainedRound:
        """The round that feeds the registry and the summary."""
        return self.rounds[-1]


def warm_start(tracking: Tracking, facts: DataFacts, loss: str) -> WarmStart:
    """Every grid point and the range test start from the pinned champion carried onto this sweep's encoding
    (:meth:`~pipelines.orchestration.champion.Champion.warm_start`)."""
    classes = facts.classes or facts.table.label_classes or (0, 1)
    carried = tracking.champion.warm_start(facts.encoding, loss, classes)
    if carried is None:
        return WarmStart(None, "none")
    return WarmStart((carried.weights, carried.intercepts), str(tracking.champion.version))


def start_parent(spark: SparkSession, config: Config, tracking: Tracking, facts: DataFacts,
                 prepared: PreparedData | None, warm: WarmStart | None) -> ParentRun:
    """The parent run with its params (the effective batch size and warm start among them), tags and lineage."""
    table, tracker = facts.table, tracking.tracker
    data = TrainingData(table.dataframe, table.ref.identifier, table.ref.version, table.label,
                        table.ref.is_path, table.rows, since_version=table.ref.since_version)
    dataset = dataset_input(data)
    tags = {"lrsweep.code_version": code_version(), "lrsweep.spark_master": _spark_master(spark),
            "lrsweep.tracking_uri": redact(tracking_uri(config.tracking)), **tracking.champion.tag()}
    grid = [] if config.sweep.learning_rates == "auto" else config.sweep.grid()
    params = sweep_params(config, table, grid)
    batch_size = effective_batch_size(config.train, prepared)
    if batch_size is not None:
        params["effective_batch_size"] = str(batch_size)
    if warm is not None:
        params["warm_start_version"] = warm.version
    run_id = tracker.start_parent(params, tags, dataset)
    if table.rows_dropped_null or table.rows_dropped_invalid:
        tracker.log_parent_metrics({"rows_dropped_null": float(table.rows_dropped_null),
                                    "rows_dropped_invalid": float(table.rows_dropped_invalid)})
    return ParentRun(run_id, dataset)


class RoundTrainer:
    """Trains a sweep's rounds: what every round shares is bound here, each round's grid is what varies."""

    def __init__(self, config: Config, sweep_id: str, may_train: bool, facts: DataFacts,
                 prepared: PreparedData | None, checkpoint: SweepCheckpoint | None, tracking: Tracking,
                 parent: ParentRun, start: Start | None, journal: Journal, recorder: SweepRecorder,
                 lease: SweepLease, stop: StopRequest, say: Say) -> None:
        self.config, self.sweep_id, self.may_train, self.facts = config, sweep_id, may_train, facts
        self.prepared, self.checkpoint, self.tracking, self.parent = prepared, checkpoint, tracking, parent
        self.start, self.journal, self.recorder = start, journal, recorder
        self.lease, self.stop, self.say = lease, stop, say
        self.auto = config.sweep.learning_rates == "auto"

    def train_journaled(self, phases: Stopwatch) -> Trained:
        """Train every round (journal appends in the background), then wait for the journal.

        A signal or a failure saves the newest state and ends the runs KILLED or FAILED.
        """
        try:
            with phases.timed("training"):
                trained = self.train()
            with phases.timed("results_write"):
                self.journal.flush()
            return trained
        except LeaseLostError:
            raise  # another job writes this sweep now: no checkpoint, no run ended
        except TerminatedError:
            self.save_on_failure(KILLED)
            raise
        except BaseException as error:
            if self.stop.requested:  # the job the signal handler cancelled
                self.stop.acknowledge()
                self.save_on_failure(KILLED)
                raise self.stop.error(self.recorder.epoch, self.sweep_id) from error
            self.save_on_failure(FAILED)
            raise

    def train(self) -> Trained:
        """The range test (``auto``) and every round, each resumed from the checkpoint where it has one."""
        sweep = self.config.sweep
        test, ran = self.checkpoint.range_test if self.checkpoint is not None else None, False
        if self.auto:
            test, ran = self.range_test(test)
            grid = auto_grid(test.suggestion, sweep.auto_num, sweep.auto_span)
        else:
            grid = sweep.grid()
        penalties = self.config.penalty_axis()
        rounds = [self.round(1, joint_grid(grid, penalties), test)]
        best = rounds[0].outcome.best
        if self.auto and sweep.refine:
            if best is None or len(grid) < 2:
                self.say("not refining: round 1 has no usable best rate")
            else:
                num = sweep.auto_num + (1 - sweep.auto_num % 2)  # odd: retrain the best
                finer = auto_grid(best.learning_rate, num, refine_span(grid))
                self.say(f"refining around lr={best.learning_rate:.4g}: {len(finer)} rates from {finer[0]:.4g} "
                         f"to {finer[-1]:.4g}")
                rounds.append(self.round(2, joint_grid(finer, penalties), test))
        self.recorder.mark_complete()
        return Trained(tuple(rounds), test, ran)

    def range_test(self, restored: RangeTestResult | None) -> tuple[RangeTestResult, bool]:
        """The range test: from the checkpoint, or a test run now (True)."""
        if restored is not None:
            self.say(f"range test: suggestion lr={restored.suggestion:.4g} from the checkpoint")
            return restored, False
        self.require_training("the range test")
        result = range_test(self.blocks(), self.config.problem, self.config.train, self.config.range_test,
                            start=self.start)
        self.say(f"range test: {result.steps} steps{' (stopped early)' if result.stopped_early else ''}, minimum "
                 f"smoothed loss at lr={result.min_loss_rate:.4g}, suggested lr={result.suggestion:.4g}")
        return result, True

    def round(self, number: int, points: list[GridPoint], test: RangeTestResult | None) -> TrainedRound:
        """One grid: restored from the checkpoint, trained to its end (checkpointing), or both."""
        restored = self.restored_round(number, points)
        child_ids = self.open_round(number, points)
        if restored is not None and restored.snapshot.grid_state().complete:
            state = restored.snapshot.grid_state()
            outcome = state.outcome(restored.snapshot.jobs, restored.snapshot.row_passes,
                                    self.full_grid_row_passes(len(points)), 0.0)
            self.journal.append(number, outcome, self.parent.run_id, child_ids, self.facts.table,
                                self.config.model.loss, last_epoch=state.recorded_epoch, final=True,
                                last_round=self.is_last_round(number))
        else:
            self.require_training(f"round {number}")
            watcher = RoundWatcher(self, number, points, child_ids, test)
            try:
                outcome = train_grid(self.blocks(), self.config.problem, self.config.train, self.config.sweep,
                                     points, resume=None if restored is None else restored.snapshot,
                                     on_boundary=watcher, start=self.start)
            finally:
                watcher.close()
        if outcome.lineage is not None:
            self.say(population_line(outcome))
        return TrainedRound(number, tuple(points), outcome, tuple(child_ids))

    def open_round(self, number: int, points: list[GridPoint]) -> list[str | None]:
        try:
            return self.tracking.tracker.open_round(number, points, self.parent.dataset, tag_round=self.auto,
                                                    wait=False)
        except TrackingUnavailableError:
            self.say(f"warning: MLflow is unavailable; round {number} trains without its live view")
            return [None] * len(points)

    def blocks(self) -> PreparedData:
        assert self.prepared is not None, "a sweep that trains prepares its blocks"
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

    def is_last_round(self, number: int) -> bool:
        """Whether round ``number`` is the sweep's last (an ``auto`` sweep that refines has two)."""
        return not (self.auto and self.config.sweep.refine and number == 1)

    def full_grid_row_passes(self, n_points: int) -> int:
        seeds = len(self.config.sweep.seeds or [self.config.train.seed])
        return self.config.train.epochs * n_points * seeds * self.facts.train_rows

    def save_on_failure(self, status: str) -> None:
        """On a signal or a failure: save the newest state and its rows, end the runs with ``status``."""
        tracker = self.tracking.tracker
        self.recorder.save_latest(self.parent.run_id, tracker.child_run_ids, self.stop.jvm_alive(), self.say)
        tracker.end(status)


class RoundWatcher:
    """What happens at each epoch boundary of a round: progress, live view, checkpoint + journal, signals."""

    def __init__(self, rounds: RoundTrainer, number: int, points: Sequence[GridPoint],
                 child_ids: Sequence[str | None], test: RangeTestResult | None) -> None:
        self.rounds, self.number, self.points, self.child_ids, self.test = rounds, number, points, child_ids, test
        self.live = LiveView(rounds.tracking.tracker, number) if all(child_ids) else None
        self.printed_epoch = -1

    def __call__(self, boundary: Boundary) -> None:
        rounds, state = self.rounds, boundary.state
        rounds.lease.check()  # before this boundary's checkpoint and rows
        epoch = state.recorded_epoch
        outcome = state.outcome(boundary.trainer.jobs, boundary.trainer.row_passes,
                                rounds.full_grid_row_passes(state.n_rates), 0.0)
        if epoch > self.printed_epoch and epoch >= 1:
            show_epoch(rounds.say, state, self.number, rounds.facts.train_rows)  # a bar or a line (console)
            self.printed_epoch = epoch
        if self.live is not None:
            self.live.publish(outcome, epoch)
        round_checkpoint = RoundCheckpoint(self.number, tuple(self.points), boundary.capture())
        rounds.recorder.record(rounds.facts, round_checkpoint, outcome, rounds.parent.run_id, self.child_ids,
                               self.test, round_complete=state.complete and not state.running().size,
                               last_round=rounds.is_last_round(self.number))
        if rounds.stop.requested:
            raise rounds.stop.error(epoch, rounds.sweep_id)

    def close(self) -> None:
        if self.live is not None:
            self.live.close()
            if self.live.error is not None:
                raise self.live.error


def population_line(outcome: GridOutcome) -> str:
    """``pbt: 9 copies; winner lr=0.3 (val_loss 0.4851), its lineage's rates per epoch: 0.097 x3, 0.0776 x4, ...``"""
    assert outcome.lineage is not None
    copies = int((outcome.lineage.exploited_from >= 0).sum())
    best = outcome.best_index
    if best is None or outcome.rates[best].kept_epoch < 1:
        return f"pbt: {copies} copies; no usable winner"
    winner = outcome.rates[best]
    path = outcome.lineage.path(best, winner.kept_epoch)
    schedule = path.schedule()
    ends = [*schedule["epochs"][1:], path.epoch + 1]
    runs = ", ".join(f"{rate:.3g} x{end - start}" for start, end, rate in zip(schedule["epochs"], ends,
                                                                          schedule["rates"], strict=True))
    return (f"pbt: {copies} copies; winner {outcome.labels[best]} (val_loss {winner.final_metrics()['val_loss']:.4f}, "
            f"{len(path.exploits)} copies on its path), its lineage's rates per epoch: {runs}")


def _spark_master(spark: SparkSession) -> str:
    context = spark_context(spark)
    return str(context.master) if context is not None else str(spark.conf.get("spark.master", "unknown"))

