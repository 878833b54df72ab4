"""Feature drift between two encodings' recorded statistics (PSI)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.features.drift import feature_drift
from pipelines.features.encoding import ColumnEncoding, TableEncoding


def encoding(mean: float, std: float, shares: tuple[float, ...], categories: tuple[str, ...] = ("a", "b")
             ) -> TableEncoding:
    return TableEncoding([ColumnEncoding("x", "number", 1, means=(mean,), scales=(std,)),
                          ColumnEncoding("plan", "onehot", len(categories) + 1, categories=categories, shares=shares),
                          ColumnEncoding("city", "hashed", 8, buckets=8)])


def test_unchanged_statistics_do_not_drift_and_moved_ones_do() -> None:
    same, skipped = feature_drift(encoding(10, 2, (0.5, 0.3, 0.2)), encoding(10, 2, (0.5, 0.3, 0.2)))
    assert [(d.column, d.psi) for d in same] == [("plan", 0.0), ("x", 0.0)]
    assert skipped == ["city (hashed: no statistics)"]
    moved, _ = feature_drift(encoding(10, 2, (0.5, 0.3, 0.2)), encoding(12, 2, (0.2, 0.3, 0.5)))
    by_column = {d.column: d for d in moved}
    # two normals with one std apart by one std: J-divergence (m0 - m1)^2 / s^2 = 1
    assert by_column["x"].psi == pytest.approx(1.0) and by_column["x"].detail == "mean 10 -> 12, std 2 -> 2"
    expected = (0.2 - 0.5) * math.log(0.2 / 0.5) + (0.5 - 0.2) * math.log(0.5 / 0.2)
    assert by_column["plan"].psi == pytest.approx(expected)
    assert by_column["plan"].detail in ("'a' 50.0% -> 20.0%", "other 20.0% -> 50.0%")


def test_a_category_kept_on_one_side_only_counts_as_other_on_both() -> None:
    before = encoding(0, 1, (0.6, 0.3, 0.1), ("a", "b"))
    after = encoding(0, 1, (0.6, 0.3, 0.1), ("a", "c"))  # b and c: both in the common "other"
    [plan] = [d for d in feature_drift(before, after)[0] if d.column == "plan"]
    assert plan.psi == pytest.approx(0.0, abs=1e-12)


def test_the_normal_approximation_grows_with_the_spread_change() -> None:
    psis = [feature_drift(encoding(3, 1, (1.0, 0.0, 0.0)), encoding(3, s, (1.0, 0.0, 0.0)))[0] for s in (1, 1.5, 3)]
    values = [next(d.psi for d in found if d.column == "x") for found in psis]
    assert values[0] == 0.0 and np.all(np.diff(values) > 0)


def test_unstandardized_inputs_record_no_moments_and_are_not_scored() -> None:
    plain = TableEncoding([ColumnEncoding("x", "number", 1, means=(0.0,), scales=(1.0,))])
    standardized = TableEncoding([ColumnEncoding("x", "number", 1, means=(5.0,), scales=(2.0,))])
    scored, skipped = feature_drift(plain, standardized)
    assert scored == [] and skipped == ["x (not standardized: no moments recorded)"]
