"""What the progress bar says at an epoch boundary, and the one-line summary of the features, as plain values.

:func:`epoch_status` reads a round's :class:`~pipelines.sweep.state.GridState` after an epoch: the epoch of
the round, the best point so far and its validation loss, how many points still train, the training rows per
second of the last epochs and the time left. :func:`bar_text` renders it for a terminal's progress bar; the
non-terminal form stays :func:`~pipelines.reporting.tables.progress_line` (one line per epoch, unchanged for
log parsers). No I/O here: :mod:`pipelines.console` draws.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from pipelines.features.columns import FAMILIES, ColumnChoice
from pipelines.features.encoding import TableEncoding
from pipelines.sweep.grid import point_labels
from pipelines.sweep.state import GridState
from pipelines.sweep.status import COMPLETED, RUNNING

#: The epochs whose mean duration predicts the next ones (the first epoch also compiles and caches).
ETA_WINDOW = 3


@dataclass(frozen=True)
class EpochStatus:
    """A round after ``epoch`` of ``epochs``: its best point, active and stopped points, speed and time left."""

    round_number: int
    epoch: int
    epochs: int
    best_label: str | None  # None: no point has a finite validation loss yet
    best_val_loss: float
    points: int
    active: int  # still training
    stopped: int  # stopped by a policy (diverged, early-stopped, pruned); the rest completed
    rows_per_second: float | None  # training rows per second over the last epochs (None: no epoch timed)
    eta_seconds: float | None  # the round's time left at that pace (None: unknown)


def epoch_status(state: GridState, train_rows: int, round_number: int = 1) -> EpochStatus:
    """The status of ``state`` at its last recorded epoch.

    ``rows_per_second`` = ``train_rows`` / mean(last :data:`ETA_WINDOW` epoch durations); ``eta_seconds`` = epochs
    left x that mean, 0 once no point trains.
    """
    epoch = max(state.recorded_epoch, 0)
    rows_of = state.rows_of
    val = np.array([np.mean(state.curves["val_loss"][epoch, rows_of[rate]]) for rate in range(state.n_rates)])
    finite = np.isfinite(val)
    best = int(np.argmin(np.where(finite, val, np.inf))) if finite.any() else None
    active = int(np.sum(state.status == RUNNING))
    stopped = int(np.sum((state.status != RUNNING) & (state.status != COMPLETED)))
    recent = state.epoch_seconds[-ETA_WINDOW:]
    mean_seconds = sum(recent) / len(recent) if recent else None
    rows_per_second = train_rows / mean_seconds if mean_seconds else None
    eta = 0.0 if active == 0 else (state.epochs - epoch) * mean_seconds if mean_seconds is not None else None
    return EpochStatus(
        round_number=round_number, epoch=epoch, epochs=state.epochs,
        best_label=None if best is None else point_labels(state.points)[best],
        best_val_loss=math.nan if best is None else float(val[best]), points=state.n_rates, active=active,
        stopped=stopped, rows_per_second=rows_per_second, eta_seconds=eta)


def bar_text(status: EpochStatus) -> tuple[str, str]:
    """``(prefix, postfix)`` of the progress bar, e.g. ``("round 1 epoch 3/10", "12.4k rows/s, ETA 0:21, best
    lr=0.07197 val_loss=0.48573, 7/8 active, 1 stopped")``: the bar itself (and its counts) sits between them."""
    prefix = f"round {status.round_number} epoch {status.epoch}/{status.epochs}"
    parts = []
    if status.rows_per_second is not None:
        parts.append(f"{human_count(status.rows_per_second)} rows/s")
    if status.eta_seconds is not None:
        parts.append(f"ETA {clock(status.eta_seconds)}")
    parts.append("no point evaluated" if status.best_label is None
                 else f"best {status.best_label} val_loss={status.best_val_loss:.5f}")
    parts.append(f"{status.active}/{status.points} active, {status.stopped} stopped")
    return prefix, ", ".join(parts)


def human_count(value: float) -> str:
    """``950``, ``12.4k``, ``3.1M``: a rate with three significant figures at most."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.0f}"


def clock(seconds: float) -> str:
    """``0:07``, ``12:40``, ``1:02:03``."""
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def features_summary(columns: ColumnChoice, encoding: TableEncoding) -> list[str]:
    """The job's ``features:`` line, counts by family, and the columns left out with why (one line each kind):

    ``features: 36 columns: 32 number, 2 string, 1 date, 1 array -> 93 model inputs (56 sparse)``
    ``left out: customer_id: listed in data.exclude; lifetime_value: listed in data.exclude``

    The per-column encoding is :func:`features_detail` (``--verbose``, and the parent run's ``features.json``).
    """
    families = Counter(columns.used.get(c.column, c.kind) for c in encoding.columns)
    order = [f for f in FAMILIES if f in families] + sorted(set(families) - set(FAMILIES))
    counts = ", ".join(f"{families[family]} {family}" for family in sorted(order, key=lambda f: -families[f]))
    sparse = f" ({encoding.sparse_width} sparse)" if encoding.sparse_width else ""
    lines = [f"features: {len(encoding.columns)} columns: {counts} -> {encoding.n_inputs} model inputs{sparse}"]
    if columns.left_out:
        lines.append(f"left out: {'; '.join(columns.describe_left_out())}")
    return lines


def features_detail(encoding: TableEncoding) -> str:
    """Every column's encoding on one line (``encoding: tenure_months: number; plan: onehot (3 categories +
    other); ...``)."""
    return f"encoding: {'; '.join(c.describe() for c in encoding.columns)}"
