"""Checks of a feature table's rows before training: which columns are used, the label, weights, array lengths,
and the null / invalid-value policies, each failing with one line naming the table, the column and the count.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines.config import DataConfig
from pipelines.errors import DataError
from pipelines.features.arrays import arrow_of
from pipelines.features.columns import ColumnChoice, any_of, choose_columns, model_input
from pipelines.identifiers import column, map_in_arrow, quote_identifier
from pipelines.lakehouse.statistics import WEIGHT_COUNTS, ProfileColumns, merge_profiles, partition_profile
from pipelines.sgd.losses import task_of


def feature_column(name: str, family: str) -> Column:
    """A feature as the encodings read it: vectors as read (sparse stays sparse), the rest as the model takes it."""
    return column(name) if family == "vector" else model_input(name, family)


def _not_finite(value: str) -> str:
    """SQL: whether ``value`` (a floating expression) is NaN or +-inf."""
    return f"(isnan({value}) OR abs({value}) = double('Infinity'))"


def distinct_up_to_case(names: Sequence[str], where: str) -> None:
    """Refuse columns whose names differ only in case (``x1`` and ``X1``): Spark resolves names
    case-insensitively, so neither could be used (``AMBIGUOUS_REFERENCE``)."""
    seen: dict[str, str] = {}
    for name in names:
        other = seen.setdefault(name.casefold(), name)
        if other != name:
            raise DataError(f"{where}: columns {other!r} and {name!r} differ only in case, and Spark resolves "
                            "column names case-insensitively; rename one of them in the table")


def role_columns(config: DataConfig, columns: dict[str, T.DataType], where: str) -> dict[str, str]:
    """The weight, time and split columns in use (never features), checked: present and of a usable type."""
    wanted = {config.weight: ("data.weight", "the row weights (data.weight)", (T.NumericType,), "numeric"),
              config.time_column if config.split == "time" else None:
                  ("data.time_column", "orders the time split (data.time_column)",
                   (T.DateType, T.TimestampType, T.TimestampNTZType, T.NumericType), "a date, timestamp or number"),
              config.split_column if config.split == "column" else None:
                  ("data.split_column", "names each row's split (data.split_column)", (T.StringType,), "a string")}
    roles = {}
    for name, (key, reason, types, expected) in wanted.items():
        if name is None:
            continue
        if name not in columns:
            raise DataError(f"{where}: {key} column {name!r} not found; available columns: {sorted(columns)}")
        if name == config.label:
            raise DataError(f"{where}: {key} column {name!r} is the label")
        if not isinstance(columns[name], types):
            raise DataError(f"{where}: {key} column {name!r} has type {columns[name].simpleString()}; expected "
                            f"{expected}")
        roles[name] = reason
    return roles


def check_weights(counts: dict[str, int], weight: str, where: str) -> None:
    """Weights must be finite, non-negative, present and not all zero: fail naming the column and the counts
    (``counts``: :data:`~pipelines.lakehouse.statistics.WEIGHT_COUNTS` over every row read)."""
    problems = [f"{int(counts[key])} {label}" for key, label in
                (("null", "null"), ("negative", "negative"), ("invalid", "NaN or infinite")) if counts[key]]
    if problems:
        raise DataError(f"{where}: data.weight column {weight!r} has {', '.join(problems)} value(s); weights must "
                        "be finite numbers >= 0")
    if not counts["positive"]:
        raise DataError(f"{where}: data.weight column {weight!r} is zero on every row: nothing to fit")


MAX_CLASSES = 1000
"""The most classes a multinomial label may have."""


def label_values(rows: DataFrame, label: str, where: str) -> tuple[Any, ...]:
    """A multinomial label's distinct values, sorted (numbers numerically, strings lexicographically): the
    classes' stable order."""
    values = [r[0] for r in rows.where(column(label).isNotNull()).select(column(label)).distinct().collect()]
    try:
        return tuple(sorted(values))
    except TypeError as error:  # mixed types cannot happen in one column; kept as a clear failure
        raise DataError(f"{where}: label {label!r} values cannot be ordered: {error}") from error


def class_index(label: str, classes: Sequence[Any]) -> Column:
    """Each row's index into ``classes`` as a double (null for a value not among them)."""
    pairs = [item for index, value in enumerate(classes) for item in (F.lit(value), F.lit(float(index)))]
    return F.create_map(*pairs)[column(label)]


def common_lengths(raw: DataFrame, names: Sequence[str]) -> dict[str, int]:
    """The most common length of each array column in ``names`` (ties: the shorter; 0 when every value is null),
    in one pass through Arrow; rows of another length are invalid."""
    if not names:
        return {}

    def lengths(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow.compute as pc
        from pyspark import TaskContext

        tallies: list[dict[int, int]] = [{} for _ in names]
        for batch in batches:
            for tally, name in zip(tallies, names, strict=True):
                for item in pc.value_counts(pc.list_value_length(batch.column(name))).to_pylist():
                    if item["values"] is not None:  # a null array has no length
                        tally[item["values"]] = tally.get(item["values"], 0) + int(item["counts"])
        context = TaskContext.get()
        yield pa.RecordBatch.from_arrays([arrow_of([context.partitionId() if context else 0], pa.int32()),
                                          arrow_of([pickle.dumps(tallies, protocol=5)], pa.binary())],
                                         names=["partition", "payload"])

    merged: list[dict[int, int]] = [{} for _ in names]
    for row in map_in_arrow(raw, names, lengths, "partition INT, payload BINARY").collect():
        for total, tally in zip(merged, pickle.loads(row["payload"]), strict=True):
            for length, count in tally.items():
                total[length] = total.get(length, 0) + count
    return {name: min(total, key=lambda length: (-total[length], length)) if total else 0
            for name, total in zip(names, merged, strict=True)}


def string_classes(raw: DataFrame, label: str, where: str, loss: str = "logistic") -> tuple[str, str]:
    """The two values of a string label for a binary loss, sorted (the second is the positive class)."""
    values = sorted(str(r[0]) for r in raw.where(column(label).isNotNull()).select(column(label)).distinct()
                    .limit(21).collect())
    if len(values) != 2:
        shown = ", ".join(repr(v) for v in values[:20]) + (", ..." if len(values) > 20 else "")
        raise DataError(f"{where}: string label {label!r} has {len(values) if len(values) <= 20 else 'more than 20'}"
                        f" distinct values ({shown}); {loss} loss needs exactly two (multinomial takes more)")
    return values[0], values[1]


@dataclass(frozen=True)
class Stats:
    """What one pass over the used columns found."""

    rows: int
    rows_with_null: int
    rows_with_invalid: int  # rows without nulls but with NaN or +-inf
    null_counts: dict[str, int]
    invalid_counts: dict[str, int]
    label: dict[str, Any]  # distinct, min, max, not_binary of the usable rows' labels
    label_values: tuple[Any, ...] | None = None  # the usable rows' distinct labels, sorted (None: too many)
    weight_counts: dict[str, int] | None = None  # data.weight's WEIGHT_COUNTS over every row (None: unweighted)


class Profile:
    """Null, NaN/inf and label statistics of the used columns, in one pass over the rows.

    A null string is a category of its own, not a missing value. Invalid values: NaN and +-inf in floating
    columns and array elements, and arrays of another length than the column's common one.

    The counts come from one Arrow pass (:mod:`pipelines.lakehouse.statistics`: numpy over each partition's
    batches, every column at once); the Spark expressions here (:attr:`unusable`) drop the rows the
    policies drop, by the same rules.
    """

    def __init__(self, label: str, label_value: Column, families: dict[str, str], types: dict[str, T.DataType],
                 array_lengths: dict[str, int], required: list[str], binary_label: bool = True,
                 weight: str | None = None) -> None:
        self.used = [label, *families, *required]
        checked_for_null = [label, *[c for c, family in families.items() if family != "string"], *required]
        self.floating = [c for c in self.used if isinstance(types[c], T.FloatType | T.DoubleType)]
        # SQL text, one py4j round trip per column (built with Column methods: four to eight each)
        self.is_null = {c: F.expr(f"{quote_identifier(c)} IS NULL") for c in checked_for_null}
        self.is_invalid = {c: F.expr(_not_finite(quote_identifier(c))) for c in self.floating}
        for name, length in array_lengths.items():
            quoted = quote_identifier(name)
            self.is_invalid[name] = F.expr(f"size({quoted}) != {int(length)} OR "
                                           f"exists({quoted}, x -> {_not_finite('CAST(x AS DOUBLE)')})")
        # flat, never a chain as deep as the column count (a 2,000-column chain overflows the JVM's stack)
        self.any_null = any_of(list(self.is_null.values()))
        self.any_invalid = any_of(list(self.is_invalid.values()))
        self.unusable = self.any_null | self.any_invalid
        self.label_value = label_value
        self.clean_label = F.when(self.unusable, None).otherwise(label_value)
        self.binary_label = binary_label  # a label of numbers: count the values other than 0 and 1
        self.columns = ProfileColumns(label, tuple(checked_for_null), tuple(self.floating),
                                      tuple(array_lengths.items()), binary_label, weight)

    def collect(self, dataframe: DataFrame) -> Stats:
        """The statistics of ``dataframe``'s rows: one Spark job whatever the column count (a second one, over
        the label alone, only when a partition holds more than
        :data:`~pipelines.lakehouse.statistics.MAX_LABEL_VALUES` distinct labels)."""
        columns = self.columns
        label = columns.label
        weight = [columns.weight] if columns.weight is not None else []
        names = list(dict.fromkeys([label, *columns.nullable, *columns.floating, *(n for n, _ in columns.arrays)]))
        names = [name for name in names if name not in weight]
        source = dataframe.select(self.label_value.alias(label), *[column(name) for name in names[1:]],
                                  *[column(name).cast("double").alias(name) for name in weight])
        names += weight

        def profile(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            from pyspark import TaskContext

            part = partition_profile(batches, columns)
            context = TaskContext.get()
            yield pa.RecordBatch.from_arrays(
                [arrow_of([context.partitionId() if context else 0], pa.int32()),
                 arrow_of([pickle.dumps(part, protocol=5)], pa.binary())], names=["partition", "payload"])

        rows = map_in_arrow(source, names, profile, "partition INT, payload BINARY").collect()
        total = merge_profiles([pickle.loads(r["payload"]) for r in sorted(rows, key=lambda r: int(r["partition"]))],
                               columns)
        distinct = len(total.label_values) if total.label_values is not None else \
            int(dataframe.agg(F.count_distinct(self.clean_label)).collect()[0][0])
        return Stats(
            rows=total.rows, rows_with_null=total.rows_with_null, rows_with_invalid=total.rows_with_invalid,
            null_counts={c: int(n) for c, n in zip(columns.nullable, total.null_counts, strict=True) if n},
            invalid_counts={c: int(n) for c, n in zip(columns.invalid, total.invalid_counts, strict=True) if n},
            label={"distinct": distinct, "min": total.label_min, "max": total.label_max,
                   "not_binary": total.not_binary if self.binary_label else 0},
            label_values=tuple(total.label_values) if total.label_values is not None else None,
            weight_counts=dict(zip(WEIGHT_COUNTS, map(int, total.weight_counts), strict=True)) if weight else None)


def apply_policies(stats: Stats, config: DataConfig, where: str) -> None:
    """``data.on_null`` / ``data.on_invalid``: fail naming the columns, or check something is left."""
    if stats.rows == 0:
        raise DataError(f"{where}: no rows to read")
    if stats.rows_with_null and config.on_null == "fail":
        detail = ", ".join(f"{c}: {n}" for c, n in sorted(stats.null_counts.items()))
        raise DataError(f"{where}: {stats.rows_with_null} rows have nulls ({detail}) and data.on_null is 'fail'; "
                        "set data.on_null=drop to drop them")
    if stats.invalid_counts and config.on_invalid == "fail":
        detail = ", ".join(f"{c}: {n}" for c, n in sorted(stats.invalid_counts.items()))
        raise DataError(f"{where}: NaN or infinite values ({detail}) and data.on_invalid is 'fail'; "
                        "set data.on_invalid=drop to drop those rows")
    if stats.rows_with_null + stats.rows_with_invalid == stats.rows:
        raise DataError(f"{where}: no rows left after dropping {stats.rows_with_null} rows with nulls and "
                        f"{stats.rows_with_invalid} with NaN/inf (null counts: {stats.null_counts}, NaN/inf "
                        f"counts: {stats.invalid_counts})")


def select_features(config: DataConfig, columns: dict[str, T.DataType], where: str,
                     roles: dict[str, str]) -> ColumnChoice:
    """The feature columns: ``data.features`` as listed (each must be usable), or every usable column but the
    label and the exclusions; never silently: what is left out is kept with the reason."""
    if config.features is not None:
        missing = [c for c in config.features if c not in columns]
        if missing:
            raise DataError(f"{where}: feature column(s) {missing} not found; available columns: {sorted(columns)}")
        if config.label in config.features:
            raise DataError(f"{where}: the label {config.label!r} is also listed in data.features")
    not_features = {name: "listed in data.exclude" for name in config.exclude if name in columns}
    not_features.update(roles)
    if config.features is not None:
        for name in config.features:
            if name in roles:
                raise DataError(f"{where}: column {name!r} is listed in data.features but {roles[name]}")
    choice, refused = choose_columns(columns, config.label, config.features, not_features)
    if refused:
        name, reason = refused[0]
        raise DataError(f"{where}: feature column {name!r} has type {columns[name].simpleString()}: {reason}; "
                        "cast or encode it upstream, or leave it out of data.features")
    if not choice.used:
        raise DataError(f"{where}: no usable feature columns besides the label {config.label!r}; left out: "
                        f"{'; '.join(choice.describe_left_out()) or 'nothing'}")
    return choice


def check_label(stats: dict[str, Any], loss: str, label: str, where: str) -> None:
    """The label's values suit ``loss``'s task: 0/1 with both classes (binary), 2 to :data:`MAX_CLASSES`
    classes (multiclass), not constant (regression), >= 0 and not all 0 (count)."""
    task = task_of(loss)
    if task == "multiclass":
        if stats["distinct"] is not None and stats["distinct"] < 2:
            raise DataError(f"{where}: label {label!r} has a single class ({stats['min']!r}); {loss} needs at least "
                            "2 classes")
        if stats["distinct"] is not None and stats["distinct"] > MAX_CLASSES:
            raise DataError(f"{where}: label {label!r} has {stats['distinct']} distinct values; {loss} takes at most "
                            f"{MAX_CLASSES} classes (is it an id or a number? a regression loss may fit it)")
        return
    if task == "binary":
        if stats["not_binary"]:
            raise DataError(
                f"{where}: label {label!r} has values other than 0 and 1 (min {stats['min']}, max "
                f"{stats['max']}, {stats['distinct']} distinct); {loss} loss needs 0/1 or boolean"
            )
        if stats["distinct"] != 2:
            raise DataError(f"{where}: label {label!r} has a single class ({stats['min']}); "
                            f"{loss} loss needs both 0 and 1")
        return
    if task == "count" and stats["min"] is not None and stats["min"] < 0:
        raise DataError(f"{where}: label {label!r} has negative values (min {stats['min']}); {loss} loss "
                        "needs counts or rates >= 0")
    if task == "count" and stats["max"] is not None and stats["max"] <= 0:
        raise DataError(f"{where}: label {label!r} is 0 on every row; {loss} loss has nothing to fit")
    if stats["distinct"] is not None and stats["distinct"] < 2:
        raise DataError(f"{where}: label {label!r} is constant ({stats['min']}); nothing to fit")
