"""Fit a :class:`~pipelines.features.encoding.TableEncoding` on the training split, in a few Spark passes.

* string columns: every column's value counts in one pass (:func:`string_counts`); a column with more than
  ``features.hash_threshold`` distinct values (null counts as one) is hashed into ``features.hash_buckets``
  slots; the others are one-hot encoded with their ``features.max_categories`` most frequent values (ties by
  value, so the choice is deterministic), the rest sharing the "other" slot;
* vector columns: the width is the largest vector size in the training split;
* dense inputs: means and standard deviations of the encoded inputs (:func:`fit_scaling`), in one pass.

Only the training split is looked at: a category seen only in validation or test rows lands in "other".
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator, Mapping

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame

from pipelines.config import FeaturesConfig
from pipelines.features.encoding import ColumnEncoding, TableEncoding
from pipelines.features.scaling import fit_scaling
from pipelines.identifiers import column, map_in_arrow, quote_identifier

_SCALAR_FAMILIES = ("number", "boolean", "date", "timestamp")


def fit_encoding(train: DataFrame, families: Mapping[str, str], array_lengths: Mapping[str, int],
                 settings: FeaturesConfig, where: str) -> TableEncoding:
    """The encoding of the columns ``families`` (column -> family, in order) fitted on the ``train`` rows."""
    strings = [c for c, family in families.items() if family == "string"]
    vectors = [c for c, family in families.items() if family == "vector"]
    categories = _string_encodings(train, strings, settings) if strings else {}
    widths = _vector_widths(train, vectors) if vectors else {}
    columns: list[ColumnEncoding] = []
    for name, family in families.items():
        if family in _SCALAR_FAMILIES:
            columns.append(ColumnEncoding(name, family, 1))
        elif family == "array":
            columns.append(ColumnEncoding(name, "array", array_lengths[name]))
        elif family == "vector":
            columns.append(ColumnEncoding(name, "vector", widths[name]))
        else:
            columns.append(categories[name])
    unscaled = TableEncoding(columns)
    dense = unscaled.dense_columns
    if not dense:
        return unscaled
    names = [n for c in dense for n in c.input_names()]
    only_dense = TableEncoding(dense)
    scaling = fit_scaling(train.select(*[column(c.column) for c in dense]), names, settings.standardize, where=where,
                          encode=lambda batch: only_dense.encode(batch, standardize=False).dense)
    return unscaled.with_scaling(scaling.means, scaling.scales)


def _string_encodings(train: DataFrame, columns: list[str], settings: FeaturesConfig) -> dict[str, ColumnEncoding]:
    """One-hot or hashed, per string column, from the training rows' distinct counts and frequencies."""
    encodings = {}
    for name, counts in string_counts(train, columns, settings.hash_threshold).items():
        if counts is None or len(counts) > settings.hash_threshold:  # null counts as one distinct value
            encodings[name] = ColumnEncoding(name, "hashed", settings.hash_buckets, buckets=settings.hash_buckets)
            continue
        ranked = sorted(((count, value) for value, count in counts.items()),
                        key=lambda item: (-item[0], item[1] is not None, "" if item[1] is None else str(item[1])))
        kept = tuple(None if value is None else str(value) for _, value in ranked[: settings.max_categories])
        total = sum(count for count, _ in ranked) or 1
        shares = [count / total for count, _ in ranked[: settings.max_categories]]
        encodings[name] = ColumnEncoding(name, "onehot", len(kept) + 1, categories=kept,
                                         shares=(*shares, max(0.0, 1.0 - sum(shares))))
    return encodings


def string_counts(train: DataFrame, columns: list[str], limit: int) -> dict[str, dict[str | None, int] | None]:
    """How many training rows hold each value of each string column (``None``: the nulls), in one pass through
    Arrow; a column with more than ``limit`` distinct values (null included) gets None instead: it is hashed,
    and its values need not travel. Each partition counts every column at once and stops counting a column
    once it alone passes ``limit``."""

    def count(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow.compute as pc
        from pyspark import TaskContext

        from pipelines.features.arrays import arrow_of

        tallies: list[dict[str | None, int] | None] = [{} for _ in columns]
        for batch in batches:
            for index, name in enumerate(columns):
                tally = tallies[index]
                if tally is None:
                    continue
                for item in pc.value_counts(batch.column(name)).to_pylist():
                    tally[item["values"]] = tally.get(item["values"], 0) + int(item["counts"])
                if len(tally) > limit:
                    tallies[index] = None
        context = TaskContext.get()
        yield pa.RecordBatch.from_arrays([arrow_of([context.partitionId() if context else 0], pa.int32()),
                                          arrow_of([pickle.dumps(tallies, protocol=5)], pa.binary())],
                                         names=["partition", "payload"])

    rows = map_in_arrow(train, columns, count, "partition INT, payload BINARY").collect()
    merged: list[dict[str | None, int] | None] = [{} for _ in columns]
    for row in sorted(rows, key=lambda r: int(r["partition"])):
        for index, tally in enumerate(pickle.loads(row["payload"])):
            total = merged[index]
            if tally is None or total is None:
                merged[index] = None
                continue
            for value, n in tally.items():
                total[value] = total.get(value, 0) + n
            if len(total) > limit:
                merged[index] = None
    return dict(zip(columns, merged, strict=True))


def _vector_widths(train: DataFrame, columns: list[str]) -> dict[str, int]:
    """The largest size of each vector column in the training rows (one pass, through Arrow)."""

    def sizes(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow.compute as pc

        widest = np.zeros(len(columns), dtype=np.int64)
        for batch in batches:
            for index, name in enumerate(columns):
                vectors = batch.column(name)
                declared = vectors.field("size").to_numpy(zero_copy_only=False)
                lengths = pc.list_value_length(vectors.field("values")).to_numpy(zero_copy_only=False)
                dense = vectors.field("type").to_numpy(zero_copy_only=False) == 1
                size = np.where(dense, lengths, np.nan_to_num(declared.astype(float))).astype(np.int64)
                if size.size:
                    widest[index] = max(widest[index], int(size.max()))
        yield pa.RecordBatch.from_pydict({name: pa.array([int(w)], pa.int64()) for name, w in zip(columns, widest,
                                                                                                 strict=True)})

    schema = ", ".join(f"{quote_identifier(name)} LONG" for name in columns)
    rows = map_in_arrow(train, columns, sizes, schema).collect()
    return {name: max([int(r[name]) for r in rows] + [0]) for name in columns}
