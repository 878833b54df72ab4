"""A model's coefficients carried from one encoding to another (a warm start from another table version).

A model is a function of raw column values: ``m = sum_j w_j z_j + b`` with ``z`` its own encoding of the
row. :func:`carry_over` rewrites its coefficients for a *target* encoding (today's standardization, today's
categories) so that, wherever it can, the model computes the same margin on every row:

* dense inputs (numbers, booleans, dates, array elements): with ``z = (x - mu) / s`` before and
  ``z' = (x - mu') / s'`` now, ``w z = (w s' / s) z' + w (mu' - mu) / s``: the weight is rescaled and the
  intercept absorbs the shift. Exact.
* one-hot columns: each of today's categories takes the weight the model gave that category, or its
  "other" weight when it did not keep it (what the model did with an unseen value); "other" keeps "other".
  Exact unless a category the model kept has fallen into today's "other" (noted as approximate).
* hashed columns with the same number of buckets and vector columns of the same width: the same weights.
* a column today's encoding has but the model had (or had in another kind or width): its inputs start at 0
  (noted); a column the model had and today's encoding lacks: its weights are dropped (noted).

Multinomial models carry every class row the same way. Pure numpy; imports nothing of Spark.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.features.encoding import ColumnEncoding, TableEncoding


@dataclass(frozen=True)
class Carried:
    """Coefficients for the target encoding and what could not be carried exactly."""

    weights: np.ndarray  # (outputs, target.n_inputs)
    intercepts: np.ndarray  # (outputs,)
    new: tuple[str, ...] = ()  # columns starting at 0
    dropped: tuple[str, ...] = ()  # the source's columns left out
    approximate: tuple[str, ...] = ()  # one-hot columns whose kept categories moved to "other"

    @property
    def exact(self) -> bool:
        return not (self.new or self.dropped or self.approximate)

    def notes(self) -> list[str]:
        said = []
        if self.new:
            said.append(f"new column(s) start at 0: {', '.join(self.new)}")
        if self.dropped:
            said.append(f"column(s) no longer used, their weights dropped: {', '.join(self.dropped)}")
        if self.approximate:
            said.append(f"categories now in 'other' take its weight: {', '.join(self.approximate)}")
        return said


def input_slices(encoding: TableEncoding) -> dict[str, slice]:
    """Each column's model inputs in ``[dense | sparse]`` order."""
    slices, offset = {}, 0
    for column in (*encoding.dense_columns, *encoding.sparse_columns):
        slices[column.column] = slice(offset, offset + column.width)
        offset += column.width
    return slices


def carry_over(source: TableEncoding, weights: np.ndarray, intercepts: np.ndarray,
               target: TableEncoding) -> Carried:
    """``weights`` ``(outputs, source.n_inputs)`` and ``intercepts`` ``(outputs,)`` of a model on ``source``,
    rewritten for ``target`` (see the module docstring)."""
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    intercepts = np.atleast_1d(np.asarray(intercepts, dtype=np.float64)).copy()
    if weights.shape != (intercepts.shape[0], source.n_inputs):
        raise ValueError(f"weights of shape {weights.shape} for {intercepts.shape[0]} output(s) and "
                         f"{source.n_inputs} inputs")
    carried = np.zeros((weights.shape[0], target.n_inputs))
    old_columns = {column.column: column for column in source.columns}
    old_slices, new_slices = input_slices(source), input_slices(target)
    new, approximate = [], []
    for column in target.columns:
        old = old_columns.get(column.column)
        if old is None or not _same_shape(old, column):
            new.append(column.column)
            continue
        was, now = weights[:, old_slices[column.column]], new_slices[column.column]
        if column.kind == "onehot":
            slot = {category: index for index, category in enumerate(old.categories)}
            other = len(old.categories)
            picks = [slot.get(category, other) for category in column.categories] + [other]
            carried[:, now] = was[:, picks]
            if set(old.categories) - set(column.categories):
                approximate.append(column.column)
        elif column.is_sparse:
            carried[:, now] = was
        else:
            old_means, old_scales = np.asarray(old.means), np.asarray(old.scales)
            carried[:, now] = was * (np.asarray(column.scales) / old_scales)
            intercepts += was @ ((np.asarray(column.means) - old_means) / old_scales)
    dropped = tuple(name for name in old_columns if name not in {c.column for c in target.columns})
    return Carried(carried, intercepts, tuple(new), dropped, tuple(approximate))


def _same_shape(old: ColumnEncoding, new: ColumnEncoding) -> bool:
    if old.kind != new.kind:
        return False
    if new.kind == "onehot":
        return True
    if new.kind == "hashed":
        return old.buckets == new.buckets
    return old.width == new.width
