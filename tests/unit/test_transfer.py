"""Carrying a model's coefficients onto another encoding keeps its margin on every row (raw rows, encoded)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.features.encoding import ColumnEncoding, TableEncoding
from pipelines.features.transfer import carry_over, input_slices


def margins(encoding: TableEncoding, rows: pd.DataFrame, weights: np.ndarray, intercepts: np.ndarray) -> np.ndarray:
    block = encoding.encode(rows)
    inputs = block.dense if block.sparse is None else np.hstack([block.dense, block.sparse.toarray()])
    return np.asarray(inputs @ weights.T + intercepts)


def raw_rows(rng: np.random.Generator, n: int, plans: list[str]) -> pd.DataFrame:
    return pd.DataFrame({
        "tenure": rng.normal(30, 10, n),
        "usage": [list(v) for v in rng.normal(5, 2, (n, 2))],
        "plan": rng.choice(plans, n),
        "city": rng.choice([f"c{i}" for i in range(40)], n),
    })


def encoding(means: tuple[float, ...], scales: tuple[float, ...], plans: tuple[str, ...],
             buckets: int = 16) -> TableEncoding:
    return TableEncoding([
        ColumnEncoding("tenure", "number", 1, means=means[:1], scales=scales[:1]),
        ColumnEncoding("plan", "onehot", len(plans) + 1, categories=plans),
        ColumnEncoding("usage", "array", 2, means=means[1:], scales=scales[1:]),
        ColumnEncoding("city", "hashed", buckets, buckets=buckets),
    ])


@pytest.mark.parametrize("outputs", [1, 3])
def test_a_model_carried_onto_new_statistics_and_categories_computes_the_same_margins(outputs: int) -> None:
    rng = np.random.default_rng(5)
    source = encoding((28.0, 4.0, 6.0), (9.0, 2.5, 1.5), ("basic", "gold"))
    target = encoding((31.0, 5.5, 4.0), (12.0, 1.5, 2.5), ("basic", "gold", "silver"))  # silver was 'other'
    weights, intercepts = rng.normal(size=(outputs, source.n_inputs)), rng.normal(size=outputs)
    carried = carry_over(source, weights, intercepts, target)
    assert carried.exact and carried.weights.shape == (outputs, target.n_inputs)
    rows = raw_rows(rng, 200, ["basic", "gold", "silver", "platinum"])
    np.testing.assert_allclose(margins(target, rows, carried.weights, carried.intercepts),
                               margins(source, rows, weights, intercepts), rtol=1e-12, atol=1e-12)


def test_what_cannot_be_carried_is_named() -> None:
    rng = np.random.default_rng(6)
    source = encoding((28.0, 4.0, 6.0), (9.0, 2.5, 1.5), ("basic", "gold"))
    target = TableEncoding([
        ColumnEncoding("tenure", "number", 1, means=(30.0,), scales=(10.0,)),
        ColumnEncoding("plan", "onehot", 2, categories=("basic",)),  # gold fell into 'other'
        ColumnEncoding("city", "hashed", 32, buckets=32),  # other buckets: starts at 0
        ColumnEncoding("age", "number", 1, means=(40.0,), scales=(5.0,)),  # new
    ])  # usage is gone
    weights = rng.normal(size=(1, source.n_inputs))
    carried = carry_over(source, weights, np.zeros(1), target)
    assert carried.new == ("city", "age") and carried.dropped == ("usage",) and carried.approximate == ("plan",)
    assert not carried.exact and len(carried.notes()) == 3
    new, old = input_slices(target), input_slices(source)
    assert not carried.weights[0, new["city"]].any() and not carried.weights[0, new["age"]].any()
    basic, _gold, other = weights[0, old["plan"]]
    assert list(carried.weights[0, new["plan"]]) == [basic, other]  # gold's rows now take the 'other' weight
    with pytest.raises(ValueError, match="weights of shape"):
        carry_over(source, weights[:, :3], np.zeros(1), target)
