"""The durable side of a sweep: checkpoints and the results journal, fed at every epoch boundary.

At each boundary the recorder composes the sweep's checkpoint (every round's newest snapshot, the pinned
data facts, the range test) and keeps it in memory; when one is due, and when a round completes, it writes
it and appends the new epochs' rows to the journal. On a signal or a failure
:meth:`SweepRecorder.save_latest` writes the newest one whatever the schedule (the file needs no Spark), and
the rows too while Spark is alive.

When is one due: every ``train.checkpoint_every`` epochs, or with ``auto`` (the default) as soon as the
training time since the last one is at least :data:`AUTO_COST_FACTOR` times what the last one cost (its
file and its journal append, measured), so checkpoints take at most 5% of the training time. The first
``auto`` checkpoint assumes a cost of :data:`FIRST_COST_SECONDS`. Short sweeps are then checkpointed at the
end (and on signals) only; sweeps whose epochs take minutes, every few epochs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from pipelines.faults import journal_synchronous
from pipelines.features.encoding import TableEncoding
from pipelines.lakehouse.checkpoints import CheckpointStore
from pipelines.lakehouse.reader import FeatureTable
from pipelines.orchestration.journal import Journal
from pipelines.sweep.checkpoint import RoundCheckpoint, SweepCheckpoint
from pipelines.sweep.outcome import GridOutcome
from pipelines.sweep.range_test import RangeTestResult

AUTO_COST_FACTOR = 20.0  # a checkpoint every 20 x its cost: at most 5% of the time
FIRST_COST_SECONDS = 2.0


@dataclass(frozen=True)
class DataFacts:
    """What a sweep pinned about its data: the table and how its rows were split and partitioned."""

    table: FeatureTable
    num_partitions: int
    train_rows: int
    validation_rows: int
    encoding: TableEncoding
    classes: tuple[Any, ...] | None = None  # multinomial: the training split's classes


class SweepRecorder:
    """Checkpoints and journal appends of one sweep attempt."""

    def __init__(self, sweep_id: str, settings: dict[str, Any], checkpoints: CheckpointStore, journal: Journal,
                 loss: str, checkpoint_every: int | Literal["auto"], restored: SweepCheckpoint | None) -> None:
        self.sweep_id, self.settings, self.checkpoints, self.journal = sweep_id, settings, checkpoints, journal
        self.loss, self.checkpoint_every = loss, checkpoint_every
        self.last_saved_at = time.monotonic()
        self.write_seconds = 0.0  # the last checkpoint file's
        self.seconds = 0.0  # all checkpoint files' and rows' preparation, on the training path
        self.latest = restored  # the newest state, written or not
        self.rounds: dict[int, RoundCheckpoint] = {r.number: r for r in restored.rounds} if restored else {}
        self.saved_epoch: dict[int, int] = {r.number: max(r.snapshot.recorded_epoch, 0)
                                            for r in (restored.rounds if restored else ())}
        self.facts: DataFacts | None = None

    @property
    def epoch(self) -> int:
        """The last epoch recorded (of the active round)."""
        return self.latest.epoch if self.latest is not None else 0

    def due(self, number: int, epoch: int) -> bool:
        """Whether a checkpoint is due at ``epoch`` of round ``number`` (see the module docstring)."""
        if self.checkpoint_every == "auto":
            cost = self.write_seconds + (self.journal.last_append_seconds or FIRST_COST_SECONDS)
            return time.monotonic() - self.last_saved_at >= AUTO_COST_FACTOR * cost
        return epoch - self.saved_epoch.get(number, 0) >= self.checkpoint_every

    def record(self, facts: DataFacts, round_checkpoint: RoundCheckpoint, outcome: GridOutcome,
               parent_run_id: str | None, child_run_ids: Sequence[str | None], range_test: RangeTestResult | None,
               *, round_complete: bool, last_round: bool) -> None:
        """A round's new boundary: keep it, and write it (checkpoint + journal) when due or complete.

        A completed round's rows are appended with their final status (and, for the last round, the best
        flag), so a sweep journaled only at its end needs no final MERGE.
        """
        number, epoch = round_checkpoint.number, max(round_checkpoint.snapshot.recorded_epoch, 0)
        self.facts = facts
        self.rounds[number] = round_checkpoint
        self.latest = SweepCheckpoint(
            sweep_id=self.sweep_id, settings=self.settings, table=facts.table.ref.identifier,
            table_version=facts.table.ref.version, num_partitions=facts.num_partitions, train_rows=facts.train_rows,
            validation_rows=facts.validation_rows, encoding=facts.encoding, classes=facts.classes,
            rounds=tuple(self.rounds[n] for n in sorted(self.rounds) if n <= number), range_test=range_test,
            complete=round_complete and last_round)
        if round_complete or self.due(number, epoch):
            started = time.monotonic()
            self.checkpoints.write(self.sweep_id, self.latest.to_arrays())
            self.write_seconds = time.monotonic() - started
            self.journal.append(number, outcome, parent_run_id, child_run_ids, facts.table, self.loss,
                                last_epoch=epoch, final=round_complete, last_round=last_round)
            if journal_synchronous():  # a fault-injection test's kills at known epochs
                self.journal.flush()
            self.saved_epoch[number] = epoch
            self.last_saved_at = time.monotonic()
            self.seconds += self.last_saved_at - started

    def mark_complete(self) -> None:
        """Every round is trained (a last round turned out not to be needed): say so in a checkpoint."""
        if self.latest is not None and not self.latest.complete:
            self.latest = replace(self.latest, complete=True)
            self.checkpoints.write(self.sweep_id, self.latest.to_arrays())

    def save_latest(self, parent_run_id: str | None, child_run_ids: Callable[[int], Sequence[str | None]],
                    spark_alive: bool, say: Callable[[str], None]) -> None:
        """Write the newest state now (a signal or a failure), and its rows while Spark is alive."""
        latest = self.latest
        if latest is None or latest.active is None:
            return
        try:
            self.checkpoints.write(self.sweep_id, latest.to_arrays())
        except Exception as error:  # report it, but keep the original failure
            say(f"warning: could not write the checkpoint: {error}")
        if not spark_alive or self.facts is None:
            return
        active = latest.active
        state = active.snapshot.grid_state()
        outcome = state.outcome(active.snapshot.jobs, active.snapshot.row_passes, 0, 0.0)
        try:
            self.journal.append(active.number, outcome, parent_run_id,
                                list(child_run_ids(active.number)) or [None] * state.n_rates, self.facts.table,
                                self.loss, last_epoch=state.recorded_epoch)
            self.journal.flush()
        except Exception as error:  # the checkpoint holds these rows: a rerun appends them
            say(f"warning: could not append the last results rows: {type(error).__name__}")
