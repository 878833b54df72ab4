"""Fit a :class:`~pipelines.features.encoding.TableEncoding` on the training split, in a few Spark passes.

* string columns: distinct counts (one aggregation); a column with more than ``features.hash_threshold``
  distinct values (null counts as one) is hashed into ``features.hash_buckets`` slots; the others are one-hot
  encoded with their ``features.max_categories`` most frequent values (ties by value, so the choice is
  deterministic), the rest sharing the "other" slot;
* vector columns: the width is the largest vector size in the training split;
* dense inputs: means and standard deviations of the encoded inputs (:func:`fit_scaling`), in one pass.

Only the training split is looked at: a category seen only in validation or test rows lands in "other".
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

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
    row = train.agg(*[(F.count_distinct(column(c)) + F.max(column(c).isNull().cast("int"))).alias(c)
                      for c in columns]).collect()[0]
    encodings = {}
    for name in columns:
        distinct = int(row[name] or 0)
        if distinct > settings.hash_threshold:
            encodings[name] = ColumnEncoding(name, "hashed", settings.hash_buckets, buckets=settings.hash_buckets)
            continue
        counts = train.groupBy(column(name)).count().collect()
        ranked = sorted(((int(r["count"]), r[0]) for r in counts),
                        key=lambda item: (-item[0], item[1] is not None, "" if item[1] is None else str(item[1])))
        kept = tuple(None if value is None else str(value) for _, value in ranked[: settings.max_categories])
        total = sum(count for count, _ in ranked) or 1
        shares = [count / total for count, _ in ranked[: settings.max_categories]]
        encodings[name] = ColumnEncoding(name, "onehot", len(kept) + 1, categories=kept,
                                         shares=(*shares, max(0.0, 1.0 - sum(shares))))
    return encodings


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
