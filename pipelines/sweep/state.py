"""The grid's state between epochs: curves so far, each rate's status and kept model, and how far it got.

Rows of the model matrix are ``(rate, seed)`` pairs, rate-major (row ``r * S + s``); statuses, kept models
and policy decisions are per rate, curves per row. ``curves[name][e, row]`` is the value after epoch ``e``
(``e = 0``: the initial models), NaN where not evaluated.

Epoch ``e``'s job evaluates the models of epoch ``e - 1`` and trains epoch ``e`` (the engine fuses them), so
between two epochs ``trained_epoch == recorded_epoch + 1``; at the end both equal the number of epochs. A
:class:`GridState` at such a boundary, with the engine's model rows and the policies' arrays, is everything a
checkpoint needs: :meth:`to_arrays` and :meth:`from_arrays` round-trip it exactly.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from pipelines.sgd._types import FloatArray, IntArray
from pipelines.sgd.metrics import curve_names
from pipelines.sweep.grid import GridPoint
from pipelines.sweep.outcome import GridOutcome, RateResult
from pipelines.sweep.pbt import Exploit, Lineage
from pipelines.sweep.policies import Decision, EpochView
from pipelines.sweep.status import COMPLETED, RUNNING


@dataclass
class GridState:
    """Curves, statuses and kept models of a grid of ``len(points)`` points x ``len(seeds)`` seeds."""

    points: tuple[GridPoint, ...]
    seeds: tuple[int, ...]
    epochs: int
    loss: str
    n_features: int
    outputs: int = 1  # weight rows per model (a multinomial model's classes)
    lineage: Lineage | None = None  # population-based training: each point's rates and copies, epoch by epoch
    curves: dict[str, FloatArray] = field(init=False)  # name -> (epochs + 1, K)
    status: npt.NDArray[np.str_] = field(init=False)  # (R,)
    stopped_epoch: IntArray = field(init=False)  # (R,) 0 = not stopped by a policy
    kept_epoch: IntArray = field(init=False)  # (R,) the epoch whose models are kept (0 = none yet)
    kept_weights: FloatArray = field(init=False)  # (R, outputs * d) of the point's first seed
    kept_intercepts: FloatArray = field(init=False)  # (R, outputs)
    recorded_at_ms: IntArray = field(init=False)  # (epochs + 1,) when each epoch was recorded (MLflow timestamps)
    recorded_epoch: int = -1  # the last epoch whose evaluation is in the curves
    trained_epoch: int = 0  # the epoch the engine's models are at
    epoch_seconds: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        n_rates, n_rows = len(self.points), len(self.points) * len(self.seeds)
        self.curves = {name: np.full((self.epochs + 1, n_rows), np.nan) for name in curve_names(self.loss)}
        self.status = np.full(n_rates, RUNNING, dtype="<U16")
        self.stopped_epoch = np.zeros(n_rates, dtype=np.int64)
        self.kept_epoch = np.zeros(n_rates, dtype=np.int64)
        self.kept_weights = np.zeros((n_rates, self.outputs * self.n_features))
        self.kept_intercepts = np.zeros((n_rates, self.outputs))
        self.recorded_at_ms = np.zeros(self.epochs + 1, dtype=np.int64)

    # --------------------------------------------------------------------------------------- indexing

    @property
    def n_rates(self) -> int:
        """Grid points (each a learning rate with its penalty)."""
        return len(self.points)

    @property
    def learning_rates(self) -> tuple[float, ...]:
        """Each point's learning rate."""
        return tuple(point.learning_rate for point in self.points)

    @property
    def rows_of(self) -> IntArray:
        """``(R, S)``: the model rows of each rate."""
        rows: IntArray = np.arange(self.n_rates * len(self.seeds), dtype=np.int64).reshape(self.n_rates, -1)
        return rows

    def rows(self, rates: IntArray) -> IntArray:
        """The model rows of ``rates``, sorted."""
        rows: IntArray = np.sort(self.rows_of[rates].ravel())
        return rows

    def running(self) -> IntArray:
        """Rates still running."""
        running: IntArray = np.flatnonzero(self.status == RUNNING)
        return running

    @property
    def complete(self) -> bool:
        """Every epoch is trained and evaluated (or every rate stopped)."""
        return self.recorded_epoch >= self.epochs or (self.recorded_epoch >= 0 and not self.running().size)

    # ------------------------------------------------------------------------------------- recording

    def record(self, epoch: int, rows: IntArray, values: dict[str, FloatArray]) -> EpochView:
        """Store the evaluation of ``rows`` (sorted model rows) after ``epoch``; return the per-rate view.

        ``values`` maps every curve name to an array aligned with ``rows``.
        """
        for name, curve in self.curves.items():
            curve[epoch, rows] = values[name]
        if not self.recorded_at_ms[epoch]:
            self.recorded_at_ms[epoch] = int(time.time() * 1000)
        self.recorded_epoch = max(self.recorded_epoch, epoch)
        rates = np.unique(rows // len(self.seeds))
        position = {int(row): index for index, row in enumerate(rows)}

        def per_rate(name: str) -> FloatArray:
            return np.array([np.mean([values[name][position[int(row)]] for row in self.rows_of[rate]])
                             for rate in rates])

        return EpochView(epoch, rates, per_rate("train_loss"), per_rate("val_loss"), rows, values["val_loss"])

    def apply(self, decision: Decision, epoch: int, rows: IntArray, weights: FloatArray,
              intercepts: FloatArray) -> None:
        """Apply a policy's decision at ``epoch``; ``weights``/``intercepts`` are the models of ``rows`` (as
        :meth:`~pipelines.distributed.engine.GridTrainer.snapshot` gives them)."""
        if decision.keep is not None:
            position = {int(row): index for index, row in enumerate(rows)}
            for rate in decision.keep:
                first_row = position[int(self.rows_of[rate][0])]
                self.kept_weights[rate] = weights[first_row]
                self.kept_intercepts[rate] = intercepts[first_row]
                self.kept_epoch[rate] = epoch
        if decision.stop.size:
            self.status[decision.stop] = decision.status
            self.stopped_epoch[decision.stop] = epoch

    def exploit(self, exploit: Exploit) -> None:
        """Population-based training's exploit after ``exploit.epoch``: the targets run again (a stopped one is
        replaced rather than lost) and their lineage continues from their sources'."""
        assert self.lineage is not None, "an exploit needs a population (sweep.strategy: pbt)"
        self.status[exploit.targets] = RUNNING
        self.stopped_epoch[exploit.targets] = 0
        self.lineage.exploited(exploit)

    def finish(self) -> None:
        """Every rate still running completed all epochs."""
        self.status[self.status == RUNNING] = COMPLETED

    # -------------------------------------------------------------------------------------- outcome

    def outcome(self, jobs: int, row_passes: int, full_grid_row_passes: int, seconds: float) -> GridOutcome:
        """Per-rate curves (means and standard deviations over seeds) and kept models."""
        results = []
        schedules = self._schedules()
        for rate, point in enumerate(self.points):
            rate_rows = self.rows_of[rate]
            means = {name: curve[:, rate_rows].mean(axis=1) for name, curve in self.curves.items()}
            stds = {name: _std_over_seeds(curve[:, rate_rows]) for name, curve in self.curves.items()}
            ran = np.flatnonzero(~np.isnan(means["val_loss"][1:]))
            stopped = int(self.stopped_epoch[rate])
            results.append(RateResult(
                learning_rate=point.learning_rate, reg_param=point.reg_param, l1_ratio=point.l1_ratio,
                status=str(self.status[rate]),
                epochs_run=int(ran[-1] + 1) if ran.size else 0, stopped_epoch=stopped or None,
                kept_epoch=int(self.kept_epoch[rate]),
                curves={name: mean[1:] for name, mean in means.items()},
                curves_std={name: std[1:] for name, std in stds.items()},
                weights=self.kept_weights[rate].reshape(self.outputs, -1).copy() if self.outputs > 1
                else self.kept_weights[rate].copy(),
                intercept=self.kept_intercepts[rate].copy() if self.outputs > 1
                else float(self.kept_intercepts[rate][0]),
                initial={name: float(mean[0]) for name, mean in means.items()},
                schedule={name: values[:, rate].copy() for name, values in schedules.items()}))
        return GridOutcome(rates=results, epochs=self.epochs, seeds=self.seeds, jobs=jobs, row_passes=row_passes,
                           full_grid_row_passes=full_grid_row_passes, seconds=seconds,
                           epoch_seconds=list(self.epoch_seconds),
                           recorded_at_ms=[int(value) for value in self.recorded_at_ms],
                           lineage=None if self.lineage is None else Lineage.from_arrays(self.lineage.to_arrays()))

    def _schedules(self) -> dict[str, FloatArray]:
        """Population-based training's per-epoch values of every point, ``(E, R)`` (epochs 1..E): the rate and
        reg_param its models were trained at, and the point it took them from (NaN where none)."""
        if self.lineage is None:
            return {}
        source = self.lineage.exploited_from[1:].astype(np.float64)
        return {"learning_rate": self.lineage.learning_rates[1:], "reg_param": self.lineage.reg_params[1:],
                "pbt_exploited_from": np.where(source >= 0, source, np.nan)}

    # ---------------------------------------------------------------------------------- checkpoints

    def to_arrays(self) -> dict[str, npt.NDArray[np.generic]]:
        """Flat arrays of the whole state (see :meth:`from_arrays`)."""
        arrays: dict[str, npt.NDArray[np.generic]] = {
            "points": np.asarray([point.as_tuple() for point in self.points], dtype=np.float64).reshape(-1, 3),
            "seeds": np.asarray(self.seeds, dtype=np.int64),
            "dims": np.asarray([self.epochs, self.n_features, self.outputs], dtype=np.int64),
            "loss": np.asarray(self.loss),
            "status": self.status.copy(), "stopped_epoch": self.stopped_epoch.copy(),
            "kept_epoch": self.kept_epoch.copy(), "kept_weights": self.kept_weights.copy(),
            "kept_intercepts": self.kept_intercepts.copy(),
            "progress": np.asarray([self.recorded_epoch, self.trained_epoch], dtype=np.int64),
            "recorded_at_ms": self.recorded_at_ms.copy(),
            "epoch_seconds": np.asarray(self.epoch_seconds, dtype=np.float64),
        }
        arrays.update({f"curve.{name}": curve.copy() for name, curve in self.curves.items()})
        if self.lineage is not None:
            arrays.update({f"lineage.{key}": value for key, value in self.lineage.to_arrays().items()})
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, npt.NDArray[np.generic]]) -> GridState:
        """Inverse of :meth:`to_arrays`."""
        epochs, n_features, outputs = (int(value) for value in np.asarray(arrays["dims"]))
        state = cls(tuple(GridPoint(*(float(v) for v in row)) for row in np.asarray(arrays["points"])),
                    tuple(int(s) for s in np.asarray(arrays["seeds"])), epochs, str(arrays["loss"]), n_features,
                    outputs)
        for name in state.curves:
            state.curves[name] = np.asarray(arrays[f"curve.{name}"], dtype=np.float64).copy()
        state.status = np.asarray(arrays["status"]).astype("<U16")
        state.stopped_epoch = np.asarray(arrays["stopped_epoch"], dtype=np.int64).copy()
        state.kept_epoch = np.asarray(arrays["kept_epoch"], dtype=np.int64).copy()
        state.kept_weights = np.asarray(arrays["kept_weights"], dtype=np.float64).copy()
        state.kept_intercepts = np.asarray(arrays["kept_intercepts"], dtype=np.float64).copy()
        state.recorded_epoch, state.trained_epoch = (int(v) for v in np.asarray(arrays["progress"]))
        state.recorded_at_ms = np.asarray(arrays["recorded_at_ms"], dtype=np.int64).copy()
        state.epoch_seconds = [float(v) for v in np.asarray(arrays["epoch_seconds"])]
        if "lineage.origin" in arrays:
            state.lineage = Lineage.from_arrays({key.removeprefix("lineage."): value for key, value in arrays.items()
                                                 if key.startswith("lineage.")})
        return state


def _std_over_seeds(values: FloatArray) -> FloatArray:
    """Standard deviation across seeds (columns); 0 with one seed, NaN where not evaluated."""
    if values.shape[1] > 1:
        std: FloatArray = values.std(axis=1)
        return std
    single: FloatArray = np.where(np.isnan(values[:, 0]), np.nan, 0.0)
    return single


def grid_state(points: Sequence[GridPoint], seeds: Sequence[int], epochs: int, loss: str,
               n_features: int, outputs: int = 1, population: bool = False) -> GridState:
    """A fresh state: every point running, nothing evaluated (with ``population``, a :class:`Lineage` too)."""
    return GridState(tuple(points), tuple(int(s) for s in seeds), epochs, loss, n_features, outputs,
                     Lineage(epochs, len(points)) if population else None)
