"""The live view: each epoch's curves reach MLflow while the sweep trains, off the training path.

The training loop hands the latest state of the round to :meth:`LiveView.publish` (a snapshot; it never
waits); a background thread syncs it to the child runs (:meth:`SweepTracker.sync`, which sends only the new
points). While MLflow is unreachable the thread keeps the latest snapshot and tries again every few
seconds; nothing is lost, because each sync sends everything MLflow does not have yet. :meth:`close`
stops the thread after one last sync attempt.

What is an outage is decided by :func:`~pipelines.tracking.store.is_unavailable`, the one classifier: a
failure it names (a connection cut in the middle of an answer included) is retried, never reported as a
bug; anything else stops the thread and :attr:`LiveView.error` hands it to the caller.
"""

from __future__ import annotations

import threading
import time

from pipelines.errors import TrackingError
from pipelines.sweep.outcome import GridOutcome
from pipelines.tracking.runs import SweepTracker
from pipelines.tracking.store import is_unavailable

RETRY_SECONDS = 5.0
INTERVAL_SECONDS = 1.0  # at most one sync a second: fast epochs are sent together


class LiveView:
    """Background syncing of one round's curves to its child runs."""

    def __init__(self, tracker: SweepTracker, round_number: int) -> None:
        self.tracker = tracker
        self.round_number = round_number
        self.failures = 0
        self.synced_epochs = 0  # the last epoch known to be in MLflow
        self.error: BaseException | None = None  # a bug in the sync (not an outage): reported by close()
        self._latest: GridOutcome | None = None
        self._epoch = 0
        self._pending = False
        self._closing = False
        self._condition = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"lrsweep-live-round{round_number}", daemon=True)
        self._thread.start()

    def publish(self, outcome: GridOutcome, recorded_epoch: int) -> None:
        """The round's state after ``recorded_epoch``; returns at once."""
        with self._condition:
            self._latest, self._epoch, self._pending = outcome, recorded_epoch, True
            self._condition.notify()

    def close(self, timeout: float = 30.0) -> None:
        """Sync what is pending (one attempt) and stop the thread."""
        with self._condition:
            self._closing = True
            self._condition.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._pending and not self._closing:
                    self._condition.wait()
                if not self._pending or self._latest is None:
                    return  # closing, nothing left to send
                outcome, epoch, closing = self._latest, self._epoch, self._closing
                self._pending = False
                synced_at = time.monotonic()
            try:
                self.tracker.sync(self.round_number, outcome, wait=False)
            except Exception as error:
                if not isinstance(error, TrackingError) and not is_unavailable(error):
                    self.error = error  # a bug, not an outage: stop syncing, reported by the caller
                    return
                self.failures += 1
                if closing:
                    return
                with self._condition:
                    self._pending = True  # try again: this snapshot or a newer one
                    self._condition.wait(RETRY_SECONDS)  # a new epoch or close() wakes it earlier
                continue
            self.synced_epochs = max(self.synced_epochs, epoch)
            with self._condition:  # let the next epochs gather (close() wakes it at once)
                while not self._closing and (remaining := INTERVAL_SECONDS - (time.monotonic() - synced_at)) > 0:
                    self._condition.wait(remaining)
