"""A sweep's checkpoint: which data it pinned, its settings, and every round's grid at an epoch boundary.

``settings`` is the JSON of the configuration that decides the trained bits (data, model, features, train
and sweep settings but the id, the range test); a rerun with other settings is refused, naming what changed.
``table_version`` and ``num_partitions`` are what the first attempt pinned: a resumed sweep reads the same
rows into the same partitions, which together with the snapshots makes it bit-identical to an uninterrupted
one.

:meth:`SweepCheckpoint.to_arrays` / :meth:`SweepCheckpoint.from_arrays` give the flat numpy form the
checkpoint store writes (no pickles).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from pipelines.features.encoding import TableEncoding
from pipelines.sweep.grid import GridPoint
from pipelines.sweep.range_test import RangeTestResult
from pipelines.sweep.snapshot import GridSnapshot

FORMAT_VERSION = 3
Arrays = dict[str, npt.NDArray[np.generic]]


@dataclass(frozen=True)
class RoundCheckpoint:
    """One grid of a sweep (``auto`` sweeps train up to two rounds; explicit grids one)."""

    number: int  # 1-based
    points: tuple[GridPoint, ...]
    snapshot: GridSnapshot


@dataclass(frozen=True)
class SweepCheckpoint:
    """Everything a rerun with the same sweep id needs to continue, or to complete its outputs."""

    sweep_id: str
    settings: dict[str, Any]
    table: str
    table_version: int
    num_partitions: int
    train_rows: int
    validation_rows: int
    encoding: TableEncoding
    rounds: tuple[RoundCheckpoint, ...]
    range_test: RangeTestResult | None = None
    complete: bool = False  # every round is trained and evaluated to its end
    classes: tuple[Any, ...] | None = None  # multinomial: the training split's classes

    @property
    def active(self) -> RoundCheckpoint | None:
        """The last round (the one training, or the final one once complete)."""
        return self.rounds[-1] if self.rounds else None

    @property
    def epoch(self) -> int:
        """The last epoch whose results are recorded in the active round (0 before any)."""
        active = self.active
        return max(active.snapshot.recorded_epoch, 0) if active is not None else 0

    def to_arrays(self) -> Arrays:
        meta = {"format": FORMAT_VERSION, "sweep_id": self.sweep_id, "settings": self.settings, "table": self.table,
                "table_version": self.table_version, "num_partitions": self.num_partitions,
                "train_rows": self.train_rows, "validation_rows": self.validation_rows, "complete": self.complete,
                "rounds": [{"number": r.number, "points": [p.as_tuple() for p in r.points]} for r in self.rounds],
                "encoding": self.encoding.to_json(), "classes": None if self.classes is None else list(self.classes),
                "range_test": None if self.range_test is None else {
                    "stopped_early": self.range_test.stopped_early, "suggestion": self.range_test.suggestion}}
        arrays: Arrays = {"meta": np.asarray(json.dumps(meta))}
        if self.range_test is not None:
            arrays.update({"range_test.learning_rates": self.range_test.learning_rates,
                           "range_test.losses": self.range_test.losses,
                           "range_test.smoothed_losses": self.range_test.smoothed_losses})
        for index, round_checkpoint in enumerate(self.rounds):
            arrays.update({f"round{index}.{key}": value
                           for key, value in round_checkpoint.snapshot.to_arrays().items()})
        return arrays

    @classmethod
    def from_arrays(cls, arrays: Arrays) -> SweepCheckpoint:
        """Inverse of :meth:`to_arrays`.

        Raises
        ------
        ValueError
            An unknown format.
        """
        meta = json.loads(str(arrays["meta"]))
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"checkpoint format {meta.get('format')!r}, expected {FORMAT_VERSION}")
        encoding = TableEncoding.from_json(meta["encoding"])
        rounds = []
        for index, described in enumerate(meta["rounds"]):
            prefix = f"round{index}."
            snapshot = GridSnapshot.from_arrays({key.removeprefix(prefix): value for key, value in arrays.items()
                                                 if key.startswith(prefix)})
            points = tuple(GridPoint(*(float(v) for v in point)) for point in described["points"])
            rounds.append(RoundCheckpoint(int(described["number"]), points, snapshot))
        range_test = None
        if meta["range_test"] is not None:
            range_test = RangeTestResult(
                np.asarray(arrays["range_test.learning_rates"], np.float64),
                np.asarray(arrays["range_test.losses"], np.float64),
                np.asarray(arrays["range_test.smoothed_losses"], np.float64),
                bool(meta["range_test"]["stopped_early"]), float(meta["range_test"]["suggestion"]))
        return cls(sweep_id=meta["sweep_id"], settings=meta["settings"], table=meta["table"],
                   table_version=int(meta["table_version"]), num_partitions=int(meta["num_partitions"]),
                   train_rows=int(meta["train_rows"]), validation_rows=int(meta["validation_rows"]),
                   encoding=encoding, rounds=tuple(rounds), range_test=range_test, complete=bool(meta["complete"]),
                   classes=None if meta.get("classes") is None else tuple(meta["classes"]))


def settings_changes(recorded: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """``key was X, now Y`` for every leaf that differs between two settings mappings (sorted)."""
    changes = []
    for key in sorted(set(recorded) | set(current)):
        name = f"{prefix}{key}"
        old, new = recorded.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changes += settings_changes(old, new, f"{name}.")
        elif old != new:
            changes.append(f"{name} was {old!r}, now {new!r}")
    return changes
