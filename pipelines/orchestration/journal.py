"""The results table as the sweep's journal: the rows of new epochs appended at each checkpoint.

Appends run on a background thread (Spark runs jobs from several threads), so a checkpoint costs the
training loop only the time to build the rows; :meth:`Journal.flush` waits for them. Which epochs the table
already holds is known per round, so every epoch is appended exactly once, even across reruns (and Delta's
``txnVersion`` makes a retried append a no-op). :attr:`Journal.provisional` says whether any of the sweep's
rows carry a provisional status (``running``) that the sweep's end must set.

The last round's final rows are held (:meth:`Journal.append` with ``final`` and ``last_round``) until the sweep
is published, then appended with the child run ids and the registry's decision (:meth:`Journal.release`): a
sweep journaled only at its end, the usual short sweep, makes one commit and no MERGE. The complete checkpoint is
written before they are held, so a job that dies in between loses nothing: its rerun appends them.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pyspark.sql import SparkSession

from pipelines.lakehouse.reader import FeatureTable
from pipelines.lakehouse.writer import Journaled, append_journal
from pipelines.reporting.tables import results_rows
from pipelines.sweep.outcome import GridOutcome


@dataclass(frozen=True)
class _Append:
    round_number: int
    last_epoch: int
    rows: list[dict[str, Any]]


@dataclass(frozen=True)
class _Held:
    """The last round's final rows, built when the sweep is published (see :meth:`Journal.release`)."""

    round_number: int
    outcome: GridOutcome
    parent_run_id: str | None
    table: FeatureTable
    loss: str
    first_epoch: int
    last_epoch: int


class Journal:
    """Appends a sweep's result rows to ``identifier`` as epochs complete."""

    def __init__(self, spark: SparkSession, identifier: str, sweep_id: str, journaled: Journaled) -> None:
        self.spark, self.identifier, self.sweep_id = spark, identifier, sweep_id
        self.journaled = dict(journaled.last_epochs)  # round -> last epoch in the table (or queued for it)
        self.provisional = bool(journaled.last_epochs)  # rows of an earlier attempt may still say "running"
        self.unfinished = False  # this attempt appended rows without their final status (the end must set it)
        self.rows_before = journaled.rows  # the sweep's rows earlier attempts committed
        self.appended_rows = 0  # committed by this attempt
        self.last_append_seconds: float | None = None
        self.append_seconds = 0.0  # all appends', on the journal's thread
        self.held: _Held | None = None
        self.released_round: int | None = None  # the round whose final rows :meth:`release` appended
        self._queue: queue.Queue[_Append | None] = queue.Queue()
        self._error: BaseException | None = None
        self._worker = threading.Thread(target=self._run, name="lrsweep-journal", daemon=True)
        self._worker.start()

    def append(self, round_number: int, outcome: GridOutcome, parent_run_id: str | None,
               child_run_ids: Sequence[str | None], table: FeatureTable, loss: str, last_epoch: int,
               final: bool = False, last_round: bool = True) -> None:
        """Queue the rows of epochs after the last journaled one up to ``last_epoch``.

        With ``final`` (the round is over) the rows carry their final status, and the best flag when it is
        the ``last_round``; otherwise a running rate's rows say ``running`` and the best flag is empty. The last
        round's final rows are held for :meth:`release`.
        """
        first = self.journaled.get(round_number, 0) + 1
        if last_epoch < first:
            return
        self.journaled[round_number] = last_epoch
        if final and last_round:
            self.held = _Held(round_number, outcome, parent_run_id, table, loss, first, last_epoch)
            return
        self._queue_rows(round_number, last_epoch, self._rows(
            round_number, outcome, parent_run_id, child_run_ids, table, loss, first, last_epoch, final=final,
            best=last_round))

    def release(self, child_run_ids: Mapping[int, Sequence[str | None]], registration: str | None) -> None:
        """Queue the held rows (if any) with each round's child run ids and the registry's ``registration`` (on the
        best point's rows; None while it is unknown: the rows stay provisional, a rerun's MERGE sets it)."""
        held, self.held = self.held, None
        if held is None:
            return
        rows = self._rows(held.round_number, held.outcome, held.parent_run_id, child_run_ids[held.round_number],
                          held.table, held.loss, held.first_epoch, held.last_epoch, final=True, best=True,
                          registration=registration)
        self._queue_rows(held.round_number, held.last_epoch, rows)
        self.released_round = held.round_number

    def _rows(self, round_number: int, outcome: GridOutcome, parent_run_id: str | None,
              child_run_ids: Sequence[str | None], table: FeatureTable, loss: str, first: int, last: int, *,
              final: bool, best: bool, registration: str | None = None) -> list[dict[str, Any]]:
        rows = results_rows(outcome, loss, sweep_id=self.sweep_id, parent_run_id=parent_run_id,
                            child_run_ids=child_run_ids, data_table=table.ref.identifier,
                            data_version=table.ref.version, round_number=round_number, first_epoch=first,
                            last_epoch=last, final=final, best=best, data_since_version=table.ref.since_version,
                            registration=registration)
        self.provisional = self.provisional or not final or any(row["child_run_id"] is None for row in rows)
        self.unfinished = self.unfinished or (bool(rows) and not final)
        return rows

    def _queue_rows(self, round_number: int, last_epoch: int, rows: list[dict[str, Any]]) -> None:
        if rows:
            self._queue.put(_Append(round_number, last_epoch, rows))

    def flush(self) -> None:
        """Wait until every queued append is committed; raise the first failure (an OutputError)."""
        self._queue.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        """Finish what is queued and stop the worker (failures are left to :meth:`flush`)."""
        self._queue.put(None)
        self._worker.join()

    def rows_in_table(self) -> int:
        """This sweep's rows in the results table once :meth:`flush` has returned (no query: the rows earlier
        attempts committed, counted when the journal opened, and this attempt's appends; a MERGE adds none)."""
        return self.rows_before + self.appended_rows

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is None:
                    started = time.monotonic()
                    append_journal(self.spark, item.rows, self.identifier, self.sweep_id, item.round_number,
                                   item.last_epoch)
                    self.last_append_seconds = time.monotonic() - started
                    self.append_seconds += self.last_append_seconds
                    self.appended_rows += len(item.rows)
            except BaseException as error:  # reported by flush()
                self._error = error
            finally:
                self._queue.task_done()
