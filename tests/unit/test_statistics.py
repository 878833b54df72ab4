"""The data check's one-pass statistics (numpy over Arrow batches) against a plain row-by-row reference."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from pipelines.lakehouse.statistics import WEIGHT_COUNTS, ProfileColumns, merge_profiles, partition_profile

LENGTH = 3


def _rows(seed: int, n: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    specials = [None, float("nan"), float("inf"), -float("inf"), 0.5, -1.0, 2.0]
    rows = []
    for _ in range(n):
        def pick(p_special: float) -> Any:
            return specials[rng.integers(len(specials))] if rng.random() < p_special else float(rng.normal())

        length = LENGTH if rng.random() < 0.8 else int(rng.integers(0, 6))
        array = None if rng.random() < 0.1 else [pick(0.1) for _ in range(length)]
        rows.append({"label": [0.0, 1.0, 2.0, None, float("nan")][rng.integers(5)] if rng.random() < 0.3
                     else float(rng.integers(2)),
                     "x": pick(0.3), "count": None if rng.random() < 0.1 else int(rng.integers(10)),
                     "weekly": array})
    return rows


COLUMNS = ProfileColumns("label", ("label", "x", "count", "weekly"), ("label", "x"), (("weekly", LENGTH),))


def _reference(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The check's rules, one row and one value at a time."""
    def bad(value: Any) -> bool:
        return value is not None and not math.isfinite(value)

    nulls = {c: sum(r[c] is None for r in rows) for c in COLUMNS.nullable}
    invalid_of = {"label": lambda r: bad(r["label"]), "x": lambda r: bad(r["x"]),
                  "weekly": lambda r: r["weekly"] is not None and (len(r["weekly"]) != LENGTH
                                                                   or any(bad(v) for v in r["weekly"]))}
    invalid = {c: sum(invalid_of[c](r) for r in rows) for c in COLUMNS.invalid}
    with_null = [any(r[c] is None for c in COLUMNS.nullable) for r in rows]
    with_invalid = [any(invalid_of[c](r) for c in COLUMNS.invalid) for r in rows]
    labels = [r["label"] for r, n, i in zip(rows, with_null, with_invalid, strict=True) if not n and not i]
    return {"rows": len(rows), "nulls": nulls, "invalid": invalid, "rows_with_null": sum(with_null),
            "rows_with_invalid": sum(i and not n for n, i in zip(with_null, with_invalid, strict=True)),
            "distinct": sorted(set(labels)), "min": min(labels, default=None), "max": max(labels, default=None),
            "not_binary": sum(v not in (0.0, 1.0) for v in labels)}


def _batches(rows: list[dict[str, Any]], size: int) -> list[pa.RecordBatch]:
    schema = pa.schema([("label", pa.float64()), ("x", pa.float64()), ("count", pa.int32()),
                        ("weekly", pa.list_(pa.float64()))])
    table = pa.Table.from_pylist(rows, schema=schema)
    return table.to_batches(max_chunksize=size)


@pytest.mark.parametrize("batch_rows", [1, 7, 1000])
def test_partition_and_merge_equal_the_row_by_row_rules(batch_rows: int) -> None:
    rows = _rows(3, 400)
    expected = _reference(rows)
    # three partitions of unequal sizes, one empty, merged in partition order
    parts = [partition_profile(_batches(chunk, batch_rows), COLUMNS) if chunk else partition_profile([], COLUMNS)
             for chunk in (rows[:150], [], rows[150:])]
    total = merge_profiles(parts, COLUMNS)
    assert total.rows == expected["rows"]
    assert dict(zip(COLUMNS.nullable, total.null_counts.tolist(), strict=True)) == expected["nulls"]
    assert dict(zip(COLUMNS.invalid, total.invalid_counts.tolist(), strict=True)) == expected["invalid"]
    assert (total.rows_with_null, total.rows_with_invalid) == (expected["rows_with_null"],
                                                               expected["rows_with_invalid"])
    assert total.label_values == expected["distinct"] == [0.0, 1.0, 2.0]
    assert (total.label_min, total.label_max, total.not_binary) == (expected["min"], expected["max"],
                                                                    expected["not_binary"])
    assert expected["rows_with_null"] > 0 and expected["rows_with_invalid"] > 0 and expected["not_binary"] > 0


def test_null_and_sliced_lists_count_only_their_own_elements() -> None:
    # a null list whose offsets still span values (Arrow allows it), inside a sliced array
    offsets = pa.array([0, 3, 6, 9, 11], pa.int32())
    values = pa.array([1.0, 2.0, 3.0, float("nan"), 1.0, 1.0, 1.0, 2.0, 3.0, float("inf"), 1.0])
    arrays = pa.ListArray.from_arrays(offsets, values, mask=pa.array([False, True, False, False]))
    batch = pa.RecordBatch.from_arrays([pa.array([0.0, 1.0, 0.0, 1.0]), arrays], names=["label", "weekly"])
    columns = ProfileColumns("label", ("label", "weekly"), ("label",), (("weekly", LENGTH),))
    whole = partition_profile([batch], columns)
    assert whole.null_counts.tolist() == [0, 1] and whole.invalid_counts.tolist() == [0, 1]  # the 2-long [inf, 1]
    sliced = partition_profile([batch.slice(1, 3)], columns)
    assert sliced.null_counts.tolist() == [0, 1] and sliced.invalid_counts.tolist() == [0, 1]
    assert (sliced.rows, sliced.rows_with_null, sliced.rows_with_invalid) == (3, 1, 1)


def test_many_label_values_are_left_to_be_counted_elsewhere() -> None:
    batch = pa.RecordBatch.from_arrays([pa.array(np.arange(50, dtype=np.float64))], names=["y"])
    columns = ProfileColumns("y", ("y",), ("y",), (), binary_label=False)
    few = partition_profile([batch], columns, max_label_values=100)
    many = partition_profile([batch.slice(0, 20), batch.slice(20)], columns, max_label_values=30)
    assert few.label_values is not None and len(few.label_values) == 50
    assert many.label_values is None and (many.label_min, many.label_max) == (0.0, 49.0)
    assert merge_profiles([few, many], columns).label_values is None
    assert merge_profiles([few, few], columns).label_values == list(np.arange(50.0))


def test_string_and_integer_labels_keep_their_python_types() -> None:
    batch = pa.RecordBatch.from_arrays([pa.array(["b", "a", "b", None]), pa.array([3, 1, None, 2], pa.int64())],
                                       names=["kind", "n"])
    columns = ProfileColumns("kind", ("kind", "n"), (), (), binary_label=False)
    part = partition_profile([batch], columns)
    assert (part.label_values, part.label_min, part.label_max, part.rows_with_null) == (["b", "a"], "a", "b", 2)
    by_number = partition_profile([batch], ProfileColumns("n", ("n",), (), (), binary_label=False))
    assert (by_number.label_min, by_number.label_max) == (1, 3) and type(by_number.label_min) is int


def test_weights_are_counted_on_every_row_as_spark_compares_doubles() -> None:
    weights = pa.array([1.0, 0.0, -2.0, None, float("nan"), -float("inf"), float("inf"), 3.0])
    batch = pa.RecordBatch.from_arrays([pa.array([0.0] * 4 + [1.0] * 4), weights], names=["label", "w"])
    columns = ProfileColumns("label", ("label",), ("label",), (), weight="w")
    part = partition_profile([batch.slice(0, 3), batch.slice(3)], columns)
    # null; negative: -2, -inf; invalid: NaN, -inf, inf; positive: 1, NaN, inf, 3
    assert dict(zip(WEIGHT_COUNTS, part.weight_counts.tolist(), strict=True)) == {
        "null": 1, "negative": 2, "invalid": 3, "positive": 4}
    assert merge_profiles([part, part], columns).weight_counts.tolist() == [2, 4, 6, 8]
