"""Elastic-net penalty on the weights (never on the intercept).

For model row ``k`` the penalty is

    R(w_k) = reg_param * (l1_ratio * ||w_k||_1 + (1 - l1_ratio) / 2 * ||w_k||_2^2)

The smooth L2 part enters the gradient (:meth:`Regularization.smooth_gradient`);
the L1 part is applied only by the proximal step (soft-thresholding) after each
update, as Spark MLlib's ``L1Updater`` does. With ``l1_ratio = 0`` this is MLlib's
``SquaredL2Updater`` penalty ``reg_param / 2 * ||w||^2``; with ``l1_ratio = 1`` it is
``L1Updater``'s ``reg_param * ||w||_1``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from pipelines.sgd._types import FloatArray, IntArray
from pipelines.sgd._validation import Interval, Rule, check_rules


@dataclass(frozen=True)
class Regularization:
    """Elastic-net penalty strength and mix.

    Parameters
    ----------
    reg_param : float
        Overall strength, ``>= 0``. ``0`` disables regularization.
    l1_ratio : float
        Share of the L1 term, ``0 <= l1_ratio <= 1``.
    """

    reg_param: float = 0.0
    l1_ratio: float = 0.0

    RULES: ClassVar[dict[str, Rule]] = {"reg_param": Interval(0, None), "l1_ratio": Interval(0, 1)}
    """One rule per parameter, applied at construction (``model.reg_param``, ``model.l1_ratio``)."""

    def __post_init__(self) -> None:
        check_rules(self, self.RULES)

    @property
    def l2_strength(self) -> float:
        """Coefficient of ``w`` in the smooth gradient: ``reg_param * (1 - l1_ratio)``."""
        return self.reg_param * (1.0 - self.l1_ratio)

    @property
    def l1_strength(self) -> float:
        """Coefficient of ``||w||_1`` in the penalty: ``reg_param * l1_ratio``."""
        return self.reg_param * self.l1_ratio

    def rows(self, n_rows: int) -> Penalties:
        """This penalty for each of ``n_rows`` model rows."""
        return Penalties.of([self] * n_rows)

    def penalty(self, weights: FloatArray) -> FloatArray:
        """:meth:`Penalties.penalty` with this penalty on every row of ``weights`` ``(K, d)``."""
        return self.rows(weights.shape[0]).penalty(weights)

    def smooth_gradient(self, weights: FloatArray) -> FloatArray:
        """Gradient of the L2 part, ``reg_param * (1 - l1_ratio) * w``, shape ``(K, d)``."""
        result: FloatArray = self.l2_strength * weights
        return result

    def proximal(self, weights: FloatArray, step_sizes: FloatArray) -> FloatArray:
        """:meth:`Penalties.proximal` with this penalty on every row."""
        return self.rows(weights.shape[0]).proximal(weights, step_sizes)


@dataclass(frozen=True)
class Penalties:
    """The penalty of each model row: a joint grid over (learning rate, reg_param, l1_ratio) trains rows with
    different penalties in the same pass.

    Every operation treats a row exactly as a single :class:`Regularization` would (the same arithmetic on
    the same values, and no arithmetic at all on a row whose term is 0), so a row's bits do not depend on the
    penalties of the rows it shares a pass with.

    Attributes
    ----------
    l1 : ndarray of shape (K,)
        ``reg_param * l1_ratio`` per row.
    l2 : ndarray of shape (K,)
        ``reg_param * (1 - l1_ratio)`` per row.
    """

    l1: FloatArray
    l2: FloatArray
    # which rows have an L1 / L2 term: None (no row), a slice (every row) or the row indices; worked out once,
    # since the update consults them at every step
    l1_rows: IntArray | slice | None = field(init=False, repr=False, compare=False)
    l2_rows: IntArray | slice | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "l1_rows", _active_rows(self.l1))
        object.__setattr__(self, "l2_rows", _active_rows(self.l2))

    @classmethod
    def of(cls, regularizations: Sequence[Regularization]) -> Penalties:
        """One row per regularization, in order."""
        return cls(np.array([r.l1_strength for r in regularizations], dtype=np.float64),
                   np.array([r.l2_strength for r in regularizations], dtype=np.float64))

    @property
    def n_rows(self) -> int:
        return int(self.l1.shape[0])

    @property
    def is_zero(self) -> bool:
        """No row has a penalty."""
        return self.l1_rows is None and self.l2_rows is None

    def select(self, rows: npt.NDArray[np.integer] | Sequence[int]) -> Penalties:
        """The penalties of ``rows`` (copies)."""
        index = np.asarray(rows, dtype=np.int64)
        return Penalties(self.l1[index], self.l2[index])

    def repeat(self, outputs: int) -> Penalties:
        """Each row's penalty on ``outputs`` consecutive rows (a multinomial model's class rows)."""
        if outputs == 1:
            return self
        return Penalties(np.repeat(self.l1, outputs), np.repeat(self.l2, outputs))

    def penalty(self, weights: FloatArray, outputs: int = 1) -> FloatArray:
        """Penalty value per model row, or per model of ``outputs`` consecutive rows.

        Parameters
        ----------
        weights : ndarray of shape (K, d)
        outputs : int
            Rows per model (a multinomial model's C class rows, each with the model's penalty): their
            penalties are added, in class order.

        Returns
        -------
        ndarray of shape (K / outputs,)
            ``l1_k * ||w_k||_1 + l2_k / 2 * ||w_k||_2^2`` (summed over a model's rows).
        """
        result: FloatArray = np.zeros(weights.shape[0])  # a row without a term adds nothing (0 * inf is not 0)
        with np.errstate(over="ignore"):  # a diverged row's norms are inf
            if self.l1_rows is not None:
                result[self.l1_rows] = self.l1[self.l1_rows] * np.abs(weights).sum(axis=1)[self.l1_rows]
            if self.l2_rows is not None:
                squared_l2_norms = np.einsum("kd,kd->k", weights, weights)
                result[self.l2_rows] += 0.5 * self.l2[self.l2_rows] * squared_l2_norms[self.l2_rows]
        if outputs > 1:
            result = result.reshape(-1, outputs).sum(axis=1)
        return result

    def add_smooth_gradient(self, gradient: FloatArray, weights: FloatArray) -> FloatArray:
        """``g_k + l2_k * w_k`` on the rows with an L2 term (the others unchanged); ``gradient`` itself when
        no row has one."""
        return self._rowwise(gradient, lambda rows, l2: gradient[rows] + l2 * weights[rows], self.l2, self.l2_rows)

    def decay(self, weights: FloatArray, step_sizes: FloatArray) -> FloatArray:
        """AdamW's decoupled decay ``w_k * (1 - s_k * l2_k)`` on the rows with an L2 term."""
        return self._rowwise(weights, lambda rows, l2: weights[rows] * (1.0 - step_sizes[rows, np.newaxis] * l2),
                             self.l2, self.l2_rows)

    def proximal(self, weights: FloatArray, step_sizes: FloatArray) -> FloatArray:
        """Soft-threshold each row with an L1 term by ``step_sizes[k] * l1_k``.

        ``prox(w)_kj = sign(w_kj) * max(|w_kj| - step_sizes[k] * l1_k, 0)``.

        Parameters
        ----------
        weights : ndarray of shape (K, d)
        step_sizes : ndarray of shape (K,)

        Returns
        -------
        ndarray of shape (K, d)
            ``weights`` itself (not a copy) when no row has an L1 term.
        """
        def threshold(rows: IntArray | slice, l1: FloatArray) -> FloatArray:
            thresholds = step_sizes[rows, np.newaxis] * l1
            shrunk: FloatArray = np.sign(weights[rows]) * np.maximum(np.abs(weights[rows]) - thresholds, 0.0)
            return shrunk

        return self._rowwise(weights, threshold, self.l1, self.l1_rows)

    @staticmethod
    def _rowwise(array: FloatArray, update: Callable[[IntArray | slice, FloatArray], FloatArray],
                 strengths: FloatArray, rows: IntArray | slice | None) -> FloatArray:
        """``update`` applied to ``rows`` (those whose strength is non-zero; strengths as a column); the other
        rows are left alone. ``array`` itself when no row has the term; one vectorized call when all have."""
        if rows is None:
            return array
        if isinstance(rows, slice):
            return update(rows, strengths[:, np.newaxis])
        result = array.copy()
        result[rows] = update(rows, strengths[rows, np.newaxis])
        return result


def _active_rows(strengths: FloatArray) -> IntArray | slice | None:
    """The rows of non-zero ``strengths``: None when none, ``slice(None)`` when all, else their indices."""
    active = strengths != 0.0
    if not active.any():
        return None
    if active.all():
        return slice(None)
    rows: IntArray = np.flatnonzero(active)
    return rows


def as_penalties(regularization: Regularization | Penalties, n_rows: int) -> Penalties:
    """Per-row penalties: ``regularization`` on each of ``n_rows`` rows, or the rows' own."""
    if isinstance(regularization, Penalties):
        if regularization.n_rows != n_rows:
            raise ValueError(f"penalties have {regularization.n_rows} rows, the models {n_rows}")
        return regularization
    return regularization.rows(n_rows)
