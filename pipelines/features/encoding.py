"""Table columns -> model inputs: one encoding, used for the training blocks and inside the registered model.

A :class:`TableEncoding` is a list of :class:`ColumnEncoding` s, one per feature column, each of a *kind*:

==========  =====================================================  ======  ============
kind        model inputs                                           part    standardized
==========  =====================================================  ======  ============
number      the value (integers, floats, decimals)                 dense   yes
boolean     1.0 / 0.0                                              dense   yes
date        days since 1970-01-01                                  dense   yes
timestamp   days since 1970-01-01 00:00 UTC (fractional)           dense   yes
array       one input per element of a fixed-length array          dense   yes
onehot      one indicator per kept category, then one "other"      sparse  no
hashed      one indicator in ``murmurhash3_32(value) % buckets``   sparse  no
vector      a Spark ML vector's entries, dense or sparse           sparse  no
==========  =====================================================  ======  ============

Dense inputs are standardized with the training split's statistics, ``z = (x - mean) / scale``; indicators
and vector entries are used as given, so a sparse row stays sparse (centering would fill it). The model's
input vector is ``[dense inputs | sparse inputs]``, in the order of the columns.

The same object encodes the training rows (Arrow batches inside Spark tasks, :meth:`TableEncoding.encode`) and
raw rows given to the logged model (pandas, :meth:`TableEncoding.transform`): the encoding a model was trained
on is, by construction, the one it scores with.

This module is imported by every Python worker that builds blocks, so it needs numpy, scipy and pyarrow only:
pandas is imported when pandas rows are given, and the scikit-learn transformer that carries the encoding
in an exported model is :class:`pipelines.tracking.export.EncodingTransformer`. It imports no Spark and
nothing else of lrsweep but the hash of the hashed kind.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from pipelines.features.arrays import arrow_of, numpy_of
from pipelines.features.hashing import murmurhash3_32

if TYPE_CHECKING:
    import pandas as pd

DENSE_KINDS = ("number", "boolean", "date", "timestamp", "array")
SPARSE_KINDS = ("onehot", "hashed", "vector")
KINDS = DENSE_KINDS + SPARSE_KINDS
#: The one-hot slot of a null value, when nulls were seen in training (strings compare as strings).
NULL_CATEGORY = None
_MICROS_PER_DAY = 86_400_000_000.0
_HASH_NULL = "\x00null"


@dataclass(frozen=True)
class ColumnEncoding:
    """How one column becomes ``width`` model inputs.

    ``categories`` (onehot): the kept categories in slot order (``None`` is the null category); slot
    ``len(categories)`` is "other" (rarer and unseen values). ``buckets`` (hashed): the number of slots.
    ``means``/``scales`` (dense kinds): standardization, one per input. ``shares`` (onehot): each kept
    category's share of the training rows, then the "other" slot's (drift is measured against them; empty in
    encodings made before they were recorded).
    """

    column: str
    kind: str
    width: int
    categories: tuple[str | None, ...] = ()
    buckets: int = 0
    means: tuple[float, ...] = ()
    scales: tuple[float, ...] = ()
    shares: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"column {self.column!r}: unknown encoding kind {self.kind!r}; one of {KINDS}")

    @property
    def is_sparse(self) -> bool:
        return self.kind in SPARSE_KINDS

    def input_names(self) -> list[str]:
        """Names of the model inputs, e.g. ``plan=gold``, ``plan=<other>``, ``emb[3]``, ``city#1021``."""
        if self.kind == "onehot":
            return [f"{self.column}={'<null>' if c is None else c}" for c in self.categories] + \
                [f"{self.column}=<other>"]
        if self.kind == "hashed":
            return [f"{self.column}#{i}" for i in range(self.buckets)]
        if self.kind in ("array", "vector"):
            return [f"{self.column}[{i}]" for i in range(self.width)]
        return [self.column]

    def describe(self) -> str:
        """One line for the job's output and the parent run, e.g. ``plan: onehot (3 categories + other)``."""
        if self.kind == "onehot":
            return f"{self.column}: onehot ({len(self.categories)} categories + other)"
        if self.kind == "hashed":
            return f"{self.column}: hashed into {self.buckets} buckets"
        if self.kind in ("array", "vector"):
            return f"{self.column}: {self.kind} of {self.width}"
        return f"{self.column}: {self.kind}"


@dataclass(frozen=True)
class EncodedBlock:
    """Encoded rows: the standardized dense inputs and the sparse ones (CSR)."""

    dense: np.ndarray  # (n, dense_width) float64, C-contiguous
    sparse: sp.csr_matrix | None  # (n, sparse_width) float64, None when the encoding has no sparse input


class TableEncoding:
    """The encoding of a feature table: raw columns in, ``[dense | sparse]`` model inputs out.

    Built from training statistics (:mod:`pipelines.features.fitting`), never fitted on rows. Models exported
    before the scikit-learn wrapper existed (:class:`pipelines.tracking.export.EncodingTransformer`) hold this
    class itself as their pipeline's first step: it loads from them (:meth:`__setstate__`) and still answers
    what a scikit-learn pipeline calls on a fitted step (:meth:`transform`, :meth:`fit`,
    :meth:`get_feature_names_out`).
    """

    def __init__(self, columns: Sequence[ColumnEncoding] = ()) -> None:
        self.columns = tuple(columns)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # an exported model of lrsweep 0.1 pickled a scikit-learn estimator: its state also holds the version
        self.columns = tuple(state["columns"])

    def __repr__(self) -> str:
        return f"TableEncoding({len(self.columns)} columns -> {self.n_inputs} inputs)"

    # ------------------------------------------------------------------ shape
    @property
    def dense_columns(self) -> tuple[ColumnEncoding, ...]:
        return tuple(c for c in self.columns if not c.is_sparse)

    @property
    def sparse_columns(self) -> tuple[ColumnEncoding, ...]:
        return tuple(c for c in self.columns if c.is_sparse)

    @property
    def dense_width(self) -> int:
        return sum(c.width for c in self.dense_columns)

    @property
    def sparse_width(self) -> int:
        return sum(c.width for c in self.sparse_columns)

    @property
    def n_inputs(self) -> int:
        return self.dense_width + self.sparse_width

    @property
    def source_columns(self) -> tuple[str, ...]:
        return tuple(c.column for c in self.columns)

    @property
    def means(self) -> np.ndarray:
        return np.array([m for c in self.dense_columns for m in c.means], dtype=np.float64)

    @property
    def scales(self) -> np.ndarray:
        return np.array([s for c in self.dense_columns for s in c.scales], dtype=np.float64)

    def input_names(self) -> list[str]:
        return [n for c in self.dense_columns for n in c.input_names()] + \
            [n for c in self.sparse_columns for n in c.input_names()]

    def with_scaling(self, means: np.ndarray, scales: np.ndarray) -> TableEncoding:
        """The same encoding with the dense inputs' standardization (arrays of shape ``(dense_width,)``)."""
        updated, offset = [], 0
        for column in self.columns:
            if column.is_sparse:
                updated.append(column)
                continue
            stop = offset + column.width
            updated.append(replace(column, means=tuple(float(v) for v in means[offset:stop]),
                                   scales=tuple(float(v) for v in scales[offset:stop])))
            offset = stop
        return TableEncoding(updated)

    # ------------------------------------------------------------------ encoding
    def encode(self, table: pa.Table | pa.RecordBatch | pd.DataFrame, standardize: bool = True) -> EncodedBlock:
        """Encode rows given as Arrow (training) or pandas (raw rows given to the model).

        Raises :class:`ValueError` naming the column when a value cannot be encoded (an array of another
        length, a vector wider than the model's inputs).
        """
        n_rows = table.num_rows if isinstance(table, pa.Table | pa.RecordBatch) else len(table)
        dense_parts = []
        for column in self.dense_columns:
            values = _dense_values(column, _arrow_column(table, column))
            if standardize and column.means:
                values = (values - np.asarray(column.means)) / np.asarray(column.scales)
            dense_parts.append(values)
        dense = np.ascontiguousarray(np.hstack(dense_parts) if dense_parts else np.zeros((n_rows, 0)),
                                     dtype=np.float64)
        sparse_parts = [_sparse_values(column, _arrow_column(table, column), n_rows)
                        for column in self.sparse_columns]
        sparse = None
        if sparse_parts:
            sparse = sp.hstack(sparse_parts, format="csr", dtype=np.float64) if len(sparse_parts) > 1 \
                else sparse_parts[0]
            sparse.sort_indices()
        return EncodedBlock(dense, sparse)

    def fit(self, X: Any = None, y: Any = None) -> TableEncoding:
        """Itself: the encoding is built from statistics, not fitted here (what a pipeline's step answers)."""
        return self

    def transform(self, X: pd.DataFrame) -> np.ndarray | sp.csr_matrix:
        """``[dense | sparse]`` for raw rows: a dense array, or CSR when the encoding has sparse inputs."""
        block = self.encode(X)
        if block.sparse is None:
            return block.dense
        return sp.hstack([sp.csr_matrix(block.dense), block.sparse], format="csr")

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.array(self.input_names(), dtype=object)

    # ------------------------------------------------------------------ persistence
    def to_json(self) -> str:
        return json.dumps([asdict(c) for c in self.columns])

    @classmethod
    def from_json(cls, text: str) -> TableEncoding:
        columns = []
        for item in json.loads(text):
            for key in ("categories", "means", "scales", "shares"):
                if key in item:
                    item[key] = tuple(item[key])
            columns.append(ColumnEncoding(**item))
        return cls(columns)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TableEncoding) and self.columns == other.columns

    def __hash__(self) -> int:
        return hash(self.columns)


# ---------------------------------------------------------------------------------------------- columns


def _arrow_column(table: pa.Table | pa.RecordBatch | pd.DataFrame, column: ColumnEncoding) -> pa.Array:
    """The column as one Arrow array (pandas input converted the way Spark sends it to Arrow)."""
    if isinstance(table, pa.Table | pa.RecordBatch):
        values = table.column(column.column)
        return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    import pandas as pd  # raw rows given to a model: never in a worker's training tasks

    if column.column not in table.columns:
        raise ValueError(f"column {column.column!r} is missing from the input rows")
    series = table[column.column]
    if column.kind == "vector":
        return pa.array([_vector_struct(value, column) for value in series], type=_VECTOR_TYPE)
    if column.kind == "onehot" or column.kind == "hashed":
        return pa.array([None if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)) else str(v)
                         for v in series], type=pa.string())
    if column.kind == "array":
        return pa.array([None if v is None else [float(x) for x in v] for v in series],
                        type=pa.list_(pa.float64()))
    if column.kind == "date" or column.kind == "timestamp":
        stamps = pd.to_datetime(series, utc=True)
        micros = stamps.to_numpy(dtype="datetime64[us]").astype(np.int64)
        return pa.array(micros, type=pa.timestamp("us", tz="UTC"))
    return pa.array(pd.to_numeric(series, errors="coerce").astype(np.float64).to_numpy())


def _dense_values(column: ColumnEncoding, values: pa.Array) -> np.ndarray:
    """``(n, width)`` float64 of a dense column (nulls as NaN)."""
    if column.kind == "array":
        if isinstance(values, pa.LargeListArray | pa.ListArray | pa.FixedSizeListArray):
            lengths = numpy_of(pc.list_value_length(values), np.float64)  # a null array's length is NaN
            if values.null_count or np.any(lengths != column.width):
                raise ValueError(f"column {column.column!r}: arrays must have {column.width} elements; found "
                                 f"lengths {sorted(set(lengths[~np.isnan(lengths.astype(float))].tolist()))[:5]}"
                                 f"{' and nulls' if values.null_count else ''}")
            flat = numpy_of(values.flatten(), np.float64)
            return flat.reshape(len(values), column.width)
        raise ValueError(f"column {column.column!r}: expected arrays, got {values.type}")
    if column.kind == "date":  # whole days (a timestamp given for a date column is floored)
        return np.floor(_days(values)).reshape(-1, 1)
    if column.kind == "timestamp":
        return _days(values).reshape(-1, 1)
    return numpy_of(values, np.float64).reshape(-1, 1)


def _days(values: pa.Array) -> np.ndarray:
    if pa.types.is_date(values.type):
        return numpy_of(pc.cast(pc.cast(values, pa.date32()), pa.int32()), np.float64)
    micros = pc.cast(pc.cast(values, pa.timestamp("us", tz="UTC")), pa.int64())
    return numpy_of(pc.cast(micros, pa.float64(), safe=False), np.float64) / _MICROS_PER_DAY


def _sparse_values(column: ColumnEncoding, values: pa.Array, n_rows: int) -> sp.csr_matrix:
    if column.kind == "vector":
        return _vector_rows(column, values, n_rows)
    strings = pc.cast(values, pa.string()) if not pa.types.is_string(values.type) else values
    slots = _onehot_slots(column, strings) if column.kind == "onehot" else _hashed_slots(column, strings)
    return sp.csr_matrix((np.ones(n_rows), slots, np.arange(n_rows + 1)), shape=(n_rows, column.width))


def _onehot_slots(column: ColumnEncoding, strings: pa.Array) -> np.ndarray:
    other = len(column.categories)
    known = [c for c in column.categories if c is not None]
    positions = {c: i for i, c in enumerate(column.categories)}
    index = pc.index_in(strings, value_set=arrow_of(known, pa.string()))
    found = numpy_of(index, np.int64, fill=len(known))  # not found (and null): "other"
    slot_of_known = np.array([positions[c] for c in known] + [other], dtype=np.int64)
    slots = slot_of_known[found]
    if NULL_CATEGORY in positions:
        slots = np.where(numpy_of(strings.is_null(), np.bool_), positions[NULL_CATEGORY], slots)
    return slots


def _hashed_slots(column: ColumnEncoding, strings: pa.Array) -> np.ndarray:
    # an Arrow scalar for the null's value: given a str, fill_null builds one with pa.scalar, which imports pandas
    encoded = pc.dictionary_encode(strings.fill_null(arrow_of([_HASH_NULL], pa.string())[0]))
    bucket_of_value = murmurhash3_32(encoded.dictionary).astype(np.int64) % column.buckets
    return bucket_of_value[numpy_of(encoded.indices, np.int64)]


_VECTOR_TYPE = pa.struct([("type", pa.int8()), ("size", pa.int32()), ("indices", pa.list_(pa.int32())),
                          ("values", pa.list_(pa.float64()))])


def _vector_struct(value: Any, column: ColumnEncoding) -> dict[str, Any] | None:
    """A vector given to the model (ml.linalg vector, the struct's dict, or a dense list) as Spark's struct."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return dict(value)
    indices = getattr(value, "indices", None)
    if indices is not None:  # pyspark.ml.linalg.SparseVector
        return {"type": 0, "size": int(value.size), "indices": [int(i) for i in indices],
                "values": [float(v) for v in value.values]}
    dense = np.asarray(value.toArray() if hasattr(value, "toArray") else value, dtype=np.float64)
    return {"type": 1, "size": None, "indices": None, "values": dense.tolist()}


def _vector_rows(column: ColumnEncoding, values: pa.Array, n_rows: int) -> sp.csr_matrix:
    """CSR rows of a Spark ML vector column from its Arrow struct ``(type, size, indices, values)``;
    sparse vectors stay sparse, dense ones keep their explicit entries."""
    if values.null_count:
        raise ValueError(f"column {column.column!r}: null vectors cannot be encoded")
    kinds = numpy_of(values.field("type"), np.int64)
    value_lists = values.field("values")
    lengths = numpy_of(pc.list_value_length(value_lists), np.int64, fill=0)
    flat_values = numpy_of(value_lists.flatten(), np.float64)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    within_row = np.arange(indptr[-1]) - np.repeat(indptr[:-1], lengths)
    indices = within_row.copy()
    sparse_rows = np.repeat(kinds == 0, lengths)
    if sparse_rows.any():
        indices[sparse_rows] = numpy_of(values.field("indices").flatten(), np.int64)
    if indices.size and (indices.max() >= column.width or indices.min() < 0):
        raise ValueError(f"column {column.column!r}: a vector has an entry at index {int(indices.max())}; the "
                         f"model takes vectors of size {column.width}")
    return sp.csr_matrix((flat_values.astype(np.float64), indices, indptr), shape=(n_rows, column.width))
