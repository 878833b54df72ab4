"""The data check's statistics of every used column, computed in one pass over Arrow batches (numpy, no Spark).

Spark aggregates two values per column for the check (a null count and a NaN/inf count): at 2,000 columns the
generated aggregation took minutes to compile and run, at 10,000 a quarter of an hour. Here each partition
counts all columns at once over its Arrow batches (:func:`partition_profile`, vectorized per column) and sends
one small record; the driver adds them up in partition order (:func:`merge_profiles`).

The rules are the check's (:class:`pipelines.lakehouse.checks.Profile`), column by column:

* null: the value is null (a null array too);
* invalid: a floating value that is NaN or +-inf; an array (not null) whose length differs from the column's
  common one or that holds a NaN or +-inf element (a null element is neither);
* a row with a null is counted as such (``rows_with_null``); a row without nulls but with an invalid value as
  ``rows_with_invalid``; the other rows are usable, and the label's statistics are over them.

This module imports only numpy and pyarrow: it runs in Spark's Python workers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.features.arrays import arrow_of, numpy_of

MAX_LABEL_VALUES = 4096
"""The most distinct label values a partition sends; beyond it the driver counts them with Spark."""


@dataclass(frozen=True)
class ProfileColumns:
    """Which columns of the batches are checked for what (names as in the batches)."""

    label: str  # the label's value as the model takes it (double, or the raw class for multinomial)
    nullable: tuple[str, ...]  # counted when null
    floating: tuple[str, ...]  # float or double: NaN and +-inf are invalid
    arrays: tuple[tuple[str, int], ...]  # (array column, its common length)
    binary_label: bool = True  # count the label's values other than 0 and 1
    weight: str | None = None  # the row weights (as double): counted on every row, usable or not

    @property
    def invalid(self) -> tuple[str, ...]:
        """The columns with an invalid count, in the check's order: the floating ones, then the arrays."""
        return (*self.floating, *(name for name, _ in self.arrays))


@dataclass
class PartialProfile:
    """What one partition (or a merge of partitions) found."""

    rows: int
    null_counts: np.ndarray  # (len(nullable),) int64
    invalid_counts: np.ndarray  # (len(invalid),) int64
    rows_with_null: int = 0
    rows_with_invalid: int = 0
    not_binary: int = 0  # usable rows whose label is neither 0 nor 1
    label_values: list[Any] | None = field(default_factory=list)  # distinct usable labels; None: too many
    label_min: Any = None
    label_max: Any = None
    weight_counts: np.ndarray = field(default_factory=lambda: np.zeros(4, np.int64))  # see WEIGHT_COUNTS


WEIGHT_COUNTS = ("null", "negative", "invalid", "positive")
"""The weights counted as Spark compares doubles: null, < 0, NaN or +-inf, > 0 (-inf is negative and invalid;
NaN, larger than any number to Spark, is positive and invalid)."""


def empty_profile(columns: ProfileColumns) -> PartialProfile:
    return PartialProfile(0, np.zeros(len(columns.nullable), np.int64), np.zeros(len(columns.invalid), np.int64))


def partition_profile(batches: Iterable[pa.RecordBatch], columns: ProfileColumns,
                      max_label_values: int = MAX_LABEL_VALUES) -> PartialProfile:
    """The statistics of the rows in ``batches`` (one partition's)."""
    profile = empty_profile(columns)
    values: list[pa.Array] = []
    for batch in batches:
        if batch.num_rows == 0:
            continue
        n = batch.num_rows
        profile.rows += n
        any_null = np.zeros(n, np.bool_)
        for index, name in enumerate(columns.nullable):
            array = batch.column(name)
            if array.null_count:
                profile.null_counts[index] += array.null_count
                any_null |= _is_null(array)
        any_invalid = np.zeros(n, np.bool_)
        for index, name in enumerate(columns.floating):
            invalid = _not_finite(batch.column(name))
            profile.invalid_counts[index] += int(invalid.sum())
            any_invalid |= invalid
        for index, (name, length) in enumerate(columns.arrays, start=len(columns.floating)):
            invalid = _invalid_arrays(batch.column(name), length)
            profile.invalid_counts[index] += int(invalid.sum())
            any_invalid |= invalid
        if columns.weight is not None:
            profile.weight_counts += _weight_counts(batch.column(columns.weight))
        profile.rows_with_null += int(any_null.sum())
        profile.rows_with_invalid += int((any_invalid & ~any_null).sum())
        usable = ~(any_null | any_invalid)
        label = batch.column(columns.label)
        label = label if usable.all() else label.filter(arrow_of(usable))
        if columns.binary_label and len(label):
            numbers = numpy_of(label, np.float64)
            profile.not_binary += int(((numbers != 0.0) & (numbers != 1.0)).sum())
        if len(label) and profile.label_values is not None:
            values.append(pc.unique(label))
            if sum(len(v) for v in values) > max_label_values:
                values = [pc.unique(pa.concat_arrays(values))]
                if len(values[0]) > max_label_values:
                    profile.label_values = None
        if len(label):
            bounds = pc.min_max(label).as_py()
            profile.label_min = _lower(profile.label_min, bounds["min"])
            profile.label_max = _upper(profile.label_max, bounds["max"])
    if profile.label_values is not None and values:
        profile.label_values = pc.unique(pa.concat_arrays(values)).to_pylist()
    return profile


def merge_profiles(parts: Sequence[PartialProfile], columns: ProfileColumns) -> PartialProfile:
    """The statistics of the union of the partitions' rows (``parts`` in partition order)."""
    total = empty_profile(columns)
    distinct: set[Any] | None = set()
    for part in parts:
        total.rows += part.rows
        total.null_counts += part.null_counts
        total.invalid_counts += part.invalid_counts
        total.rows_with_null += part.rows_with_null
        total.rows_with_invalid += part.rows_with_invalid
        total.not_binary += part.not_binary
        total.weight_counts += part.weight_counts
        total.label_min = _lower(total.label_min, part.label_min)
        total.label_max = _upper(total.label_max, part.label_max)
        if part.label_values is None or distinct is None:
            distinct = None
        else:
            distinct.update(part.label_values)
    total.label_values = None if distinct is None else sorted(distinct)
    return total


def _weight_counts(array: pa.Array) -> np.ndarray:
    present = ~_is_null(array) if array.null_count else np.ones(len(array), np.bool_)
    values = numpy_of(array, np.float64)[present]
    with np.errstate(invalid="ignore"):
        return np.array([len(array) - len(values), (values < 0).sum(), (~np.isfinite(values)).sum(),
                         ((values > 0) | np.isnan(values)).sum()], np.int64)


def _is_null(array: pa.Array) -> np.ndarray:
    return numpy_of(array.is_null(), np.bool_)


def _not_finite(array: pa.Array) -> np.ndarray:
    """NaN or +-inf (a null is neither)."""
    values = numpy_of(array, np.float64)  # nulls become NaN: cleared below
    invalid = ~np.isfinite(values)
    if array.null_count:
        invalid &= ~_is_null(array)
    return invalid


def _invalid_arrays(array: pa.Array, length: int) -> np.ndarray:
    """Arrays (not null) of another length than ``length`` or holding a NaN or +-inf element."""
    present = ~_is_null(array) if array.null_count else np.ones(len(array), np.bool_)
    lengths = numpy_of(pc.list_value_length(array), np.int64, fill=length)
    invalid = present & (lengths != length)
    element_type = array.type.value_type
    if pa.types.is_floating(element_type):
        # every element in the offsets' span, a null array's too (Arrow lets one span values): its row says whose
        offsets = numpy_of(array.offsets, np.int64)
        elements = array.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
        bad = _not_finite(elements)
        if bad.any():
            rows = numpy_of(pc.list_parent_indices(array), np.int64)
            invalid[rows[bad]] |= present[rows[bad]]
    return invalid


def _lower(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else min(a, b)


def _upper(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else max(a, b)
