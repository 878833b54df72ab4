"""The table encoding (pure: Arrow and pandas in, dense + CSR out), its export as a scikit-learn pipeline
(models of lrsweep 0.1 included) and the sparse kernels."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import scipy.sparse as sp

from pipelines.features.arrays import arrow_of, numpy_of
from pipelines.features.encoding import ColumnEncoding, TableEncoding
from pipelines.features.hashing import murmurhash3_32
from pipelines.sgd.design import SplitDesign
from pipelines.sgd.kernels import Block, EpochPlan, Models, compute_margins, minibatch_epoch
from pipelines.sgd.numpy_kernel import SparseKernel
from pipelines.sgd.optimizers import OptimizerSpec, init_state
from pipelines.sgd.problem import TrainingProblem
from pipelines.sgd.regularization import Regularization
from pipelines.sgd.schedules import ScheduleSpec

ENCODING = TableEncoding([
    ColumnEncoding("n", "number", 1, means=(2.0,), scales=(4.0,)),
    ColumnEncoding("flag", "boolean", 1, means=(0.0,), scales=(1.0,)),
    ColumnEncoding("day", "date", 1, means=(0.0,), scales=(1.0,)),
    ColumnEncoding("at", "timestamp", 1, means=(0.0,), scales=(1.0,)),
    ColumnEncoding("emb", "array", 2, means=(1.0, 0.0), scales=(2.0, 1.0)),
    ColumnEncoding("plan", "onehot", 3, categories=("gold", None)),
    ColumnEncoding("city", "hashed", 16, buckets=16),
    ColumnEncoding("v", "vector", 5),
])
VECTOR = pa.struct([("type", pa.int8()), ("size", pa.int32()), ("indices", pa.list_(pa.int32())),
                    ("values", pa.list_(pa.float64()))])


def _arrow_rows() -> pa.Table:
    """Rows as Spark sends them through Arrow (vectors as their struct)."""
    return pa.table({
        "n": pa.array([2.0, 6.0, -2.0]),
        "flag": pa.array([1.0, 0.0, 1.0]),
        "day": pa.array([dt.date(1970, 1, 2), dt.date(2026, 11, 30), dt.date(1969, 12, 31)], pa.date32()),
        "at": pa.array([dt.datetime(1970, 1, 1, 12), dt.datetime(2026, 11, 30, 6), dt.datetime(1970, 1, 1)],
                       pa.timestamp("us", tz="UTC")),
        "emb": pa.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], pa.list_(pa.float64())),
        "plan": pa.array(["gold", None, "bronze"]),
        "city": pa.array(["paris", "lyon", "paris"]),
        "v": pa.array([{"type": 0, "size": 5, "indices": [1, 4], "values": [0.5, -1.0]},
                       {"type": 1, "size": None, "indices": None, "values": [1.0, 0.0, 0.0, 0.0, 2.0]},
                       {"type": 0, "size": 5, "indices": [], "values": []}], VECTOR),
    })


def test_every_kind_encodes_to_documented_inputs() -> None:
    block = ENCODING.encode(_arrow_rows())
    np.testing.assert_array_equal(block.dense[:, 0], [0.0, 1.0, -1.0])  # (n - 2) / 4
    np.testing.assert_array_equal(block.dense[:, 1], [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(block.dense[:, 2], [1.0, 20787.0, -1.0])  # days since 1970-01-01
    np.testing.assert_allclose(block.dense[:, 3], [0.5, 20787.25, 0.0], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(block.dense[:, 4:6], [[0.0, 2.0], [1.0, 4.0], [2.0, 6.0]])
    assert block.sparse is not None and block.sparse.shape == (3, 3 + 16 + 5)
    onehot = block.sparse[:, :3].toarray()
    np.testing.assert_array_equal(onehot, [[1, 0, 0], [0, 1, 0], [0, 0, 1]])  # gold, null, other
    hashed = block.sparse[:, 3:19].toarray()
    assert hashed.sum(axis=1).tolist() == [1, 1, 1] and (hashed[0] == hashed[2]).all()
    np.testing.assert_array_equal(block.sparse[:, 19:].toarray(),
                                  [[0, 0.5, 0, 0, -1.0], [1.0, 0, 0, 0, 2.0], [0, 0, 0, 0, 0]])
    assert ENCODING.input_names()[:7] == ["n", "flag", "day", "at", "emb[0]", "emb[1]", "plan=gold"]


def test_raw_pandas_rows_encode_like_the_training_batches() -> None:
    """What the logged model gets (pandas, vectors as ml.linalg vectors or dense arrays) encodes to the same
    bits as the Arrow batches the blocks were built from; unseen categories land in 'other'."""
    from pyspark.ml.linalg import Vectors

    frame = _arrow_rows().to_pandas()
    frame["v"] = [Vectors.sparse(5, [1, 4], [0.5, -1.0]), np.array([1.0, 0.0, 0.0, 0.0, 2.0]),
                  Vectors.sparse(5, [], [])]
    frame["n"] = frame["n"].astype(np.int64)
    from_arrow, from_pandas = ENCODING.encode(_arrow_rows()), ENCODING.encode(frame)
    np.testing.assert_array_equal(from_pandas.dense, from_arrow.dense)
    assert from_pandas.sparse is not None and from_arrow.sparse is not None
    np.testing.assert_array_equal(from_pandas.sparse.toarray(), from_arrow.sparse.toarray())
    frame.loc[0, "plan"] = "never-seen"
    assert ENCODING.encode(frame).sparse[0, 2] == 1.0  # type: ignore[index]
    transformed = ENCODING.transform(frame)
    assert sp.issparse(transformed) and transformed.shape == (3, ENCODING.n_inputs)


def test_bad_rows_fail_naming_the_column() -> None:
    frame = _arrow_rows().to_pandas()
    frame["emb"] = [[1.0, 2.0], [1.0], [1.0, 2.0]]
    with pytest.raises(ValueError, match="column 'emb': arrays must have 2 elements"):
        ENCODING.encode(frame)
    wide = _arrow_rows().to_pandas()
    wide["v"] = [{"type": 0, "size": 9, "indices": [8], "values": [1.0]}] * 3
    with pytest.raises(ValueError, match="column 'v': a vector has an entry at index 8"):
        ENCODING.encode(wide)


def test_the_encoding_round_trips_through_json_exactly() -> None:
    scaled = ENCODING.with_scaling(np.array([np.pi, 1e-300, 3.0, 4.0, 5.0, 6.0]), np.array([1 / 3, 1, 1, 1, 1, 7]))
    restored = TableEncoding.from_json(scaled.to_json())
    assert restored == scaled and restored.means.tobytes() == scaled.means.tobytes()


def _split_problem(seed: int = 3) -> tuple[SplitDesign, np.ndarray]:
    rng = np.random.default_rng(seed)
    n, dense_width, sparse_width = 300, 3, 1000
    dense = rng.normal(size=(n, dense_width))
    rows = np.repeat(np.arange(n), 4)
    columns = rng.integers(0, sparse_width, size=rows.size)
    sparse = sp.csr_matrix((rng.normal(size=rows.size), (rows, columns)), shape=(n, sparse_width))
    sparse.sum_duplicates()
    y = (rng.random(n) < 0.4).astype(float)
    return SplitDesign(dense, sparse), y


def test_the_numpy_hash_is_scikit_learns_murmurhash3_for_every_length_and_script() -> None:
    """The hashed kind's buckets are those of scikit-learn's ``murmurhash3_32(value, positive=True)`` (the hash
    models of lrsweep 0.1 were trained with): every tail length, multi-byte UTF-8, a long value among short
    ones, a sliced array, large strings and another seed."""
    from sklearn.utils import murmurhash3_32 as oracle

    draw = random.Random(22)
    values = ["", "a", "ab", "abc", "abcd", "abcde", "paris", "\x00null", "é", "日本語のテキスト", "x" * 1001] + [
        "".join(chr(draw.randrange(32, 0x2FFF)) for _ in range(draw.randrange(0, 40))) for _ in range(2000)]
    expected = np.array([oracle(v, seed=0, positive=True) for v in values], dtype=np.uint32)
    np.testing.assert_array_equal(murmurhash3_32(pa.array(values)), expected)
    np.testing.assert_array_equal(murmurhash3_32(pa.array(values).slice(5, 100)), expected[5:105])
    np.testing.assert_array_equal(murmurhash3_32(pa.array(values, pa.large_string())), expected)
    np.testing.assert_array_equal(murmurhash3_32(pa.array(values), seed=7),
                                  [oracle(v, seed=7, positive=True) for v in values])
    with pytest.raises(ValueError, match="null"):
        murmurhash3_32(pa.array(["a", None]))


def test_arrow_and_numpy_convert_as_pyarrow_does_without_pandas() -> None:
    """:func:`numpy_of` and :func:`arrow_of` (the workers' conversions, which leave pandas unimported) give what
    ``to_numpy`` and ``pa.array`` give: sliced and chunked arrays, nulls, booleans, casts, strings and bytes."""
    numbers = pa.array([1.5, None, 3.0, None, 5.0, 6.0, 7.0, 8.0, 9.0, None]).slice(3)
    np.testing.assert_array_equal(numpy_of(numbers, np.float64), numbers.to_numpy(zero_copy_only=False))
    flags = pa.array([True, False, True, True, False, False, True, False, True, True, False]).slice(2)
    np.testing.assert_array_equal(numpy_of(flags, np.bool_), flags.to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(numpy_of(flags, np.float64), flags.to_numpy(zero_copy_only=False).astype(float))
    chunked = pa.chunked_array([[1, None], [3]], pa.int32())
    np.testing.assert_array_equal(numpy_of(chunked, np.int64, fill=-1), [1, -1, 3])
    np.testing.assert_array_equal(numpy_of(chunked, np.float64), [1.0, np.nan, 3.0])
    with pytest.raises(ValueError, match="1 nulls"):
        numpy_of(chunked, np.int64)
    assert numpy_of(pa.array([], pa.float64()), np.float64).shape == (0,)
    for values, arrow_type in [([3, -1], pa.int32()), ([True, False, True], pa.bool_()), ([b"ab", b""], pa.binary()),
                               (["x", "\u00e9", ""], pa.string()), ([2.5], pa.float64())]:
        built = arrow_of(values, arrow_type)
        built.validate(full=True)
        assert built.equals(pa.array(values, arrow_type))
    assert arrow_of(np.array([True, False] * 9)).equals(pa.array([True, False] * 9))


#: The model of the fixtures (tests/fixtures/lrsweep_0_1_model_*: ``mlflow.sklearn.save_model`` of lrsweep 0.1's
#: ``linear_pipeline``, whose first step was the TableEncoding itself) and its probabilities, as 0.1 computed them.
FIXTURES = Path(__file__).parents[1] / "fixtures"
OLD_ENCODING = TableEncoding([
    ColumnEncoding("age", "number", 1, means=(40.0,), scales=(12.0,)),
    ColumnEncoding("emb", "array", 2, means=(0.5, -0.5), scales=(2.0, 4.0)),
    ColumnEncoding("plan", "onehot", 3, categories=("basic", "gold"), shares=(0.5, 0.3, 0.2)),
    ColumnEncoding("city", "hashed", 8, buckets=8),
])
OLD_WEIGHTS = np.array([0.8, -0.3, 0.2, 1.5, -1.0, 0.25, 0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -0.8])
OLD_PROBABILITIES = [0.07822825945178397, 0.6224593312018545, 0.4174297935376853]


def _raw_rows() -> pd.DataFrame:
    return pd.DataFrame({"age": [30.0, 55.0, 41.0], "emb": [[1.0, 2.0], [0.0, 0.0], [-1.0, 3.0]],
                         "plan": ["gold", "silver", None], "city": ["Paris", "Lyon", None]})


@pytest.mark.parametrize("serialization", ["skops", "cloudpickle"])
def test_a_model_exported_by_lrsweep_0_1_still_loads_predicts_and_comes_apart(serialization: str) -> None:
    """Registered models of 0.1 name ``pipelines.features.encoding.TableEncoding`` (skops, the local default, with
    it among the trusted types; cloudpickle on Databricks): MLflow still loads them, they predict what 0.1
    predicted, and the champion's code takes them apart."""
    import mlflow.pyfunc
    import mlflow.sklearn

    from pipelines.tracking.export import linear_parts

    path = str(FIXTURES / f"lrsweep_0_1_model_{serialization}")
    pipeline = mlflow.sklearn.load_model(path)
    np.testing.assert_array_equal(pipeline.predict_proba(_raw_rows())[:, 1], OLD_PROBABILITIES)
    np.testing.assert_array_equal(mlflow.pyfunc.load_model(path).predict(_raw_rows())[:, 1], OLD_PROBABILITIES)
    encoding, weights, intercept = linear_parts(pipeline, "logistic")
    assert encoding == OLD_ENCODING and vars(encoding).keys() == {"columns"}  # scikit-learn's version dropped
    np.testing.assert_array_equal(weights, OLD_WEIGHTS)
    assert intercept == -0.25


def test_todays_export_wraps_the_encoding_and_round_trips_through_the_skops_flavor(tmp_path: Path) -> None:
    """The exported pipeline's first step is the scikit-learn wrapper (the encoding itself is not an estimator);
    it saves and loads with MLflow's safe format given :data:`TRUSTED_TYPES`, and predicts as 0.1's model did."""
    import mlflow.sklearn
    from sklearn.base import BaseEstimator

    from pipelines.tracking.export import TRUSTED_TYPES, EncodingTransformer, linear_parts, linear_pipeline

    assert not isinstance(OLD_ENCODING, BaseEstimator)
    pipeline = linear_pipeline(OLD_ENCODING, OLD_WEIGHTS, -0.25, "logistic")
    assert isinstance(pipeline.steps[0][1], EncodingTransformer)
    np.testing.assert_array_equal(pipeline.predict_proba(_raw_rows())[:, 1], OLD_PROBABILITIES)
    np.testing.assert_array_equal(pipeline[:-1].get_feature_names_out(), OLD_ENCODING.input_names())
    mlflow.sklearn.save_model(pipeline, str(tmp_path / "model"), serialization_format="skops",
                              skops_trusted_types=TRUSTED_TYPES, pip_requirements=["lrsweep"])
    loaded = mlflow.sklearn.load_model(str(tmp_path / "model"))
    np.testing.assert_array_equal(loaded.predict_proba(_raw_rows())[:, 1], OLD_PROBABILITIES)
    assert linear_parts(loaded, "logistic")[0] == OLD_ENCODING


def test_split_kernels_equal_the_dense_products_and_do_not_depend_on_the_grid() -> None:
    X, y = _split_problem()
    rng = np.random.default_rng(5)
    weights, intercepts = rng.normal(size=(4, X.shape[1])) * 0.1, rng.normal(size=4)
    full = X.toarray()
    np.testing.assert_allclose(compute_margins(X, weights, intercepts), full @ weights.T + intercepts, atol=1e-12)
    problem = TrainingProblem("logistic")
    grad_w, grad_b, loss_sum = problem.kernel(X).gradient_sums(Block(X, y), weights, intercepts)
    dense_grad_w, dense_grad_b, dense_loss = problem.kernel(full).gradient_sums(Block(full, y), weights, intercepts)
    np.testing.assert_allclose(grad_w, dense_grad_w, atol=1e-10)
    np.testing.assert_allclose(grad_b, dense_grad_b, atol=1e-12)
    np.testing.assert_allclose(loss_sum, dense_loss, rtol=1e-12)
    alone = problem.kernel(X).gradient_sums(Block(X, y), weights[2:3], intercepts[2:3])
    assert alone[0].tobytes() == grad_w[2:3].tobytes() and alone[2].tobytes() == loss_sum[2:3].tobytes()


def test_minibatch_sgd_on_a_split_design_tracks_the_dense_one_and_a_row_alone_gets_the_same_bits() -> None:
    X, y = _split_problem()
    rates = np.array([0.01, 0.1, 0.5])
    spec = OptimizerSpec("adam")

    def run(design: object, learning_rates: np.ndarray) -> np.ndarray:
        k, d = learning_rates.shape[0], X.shape[1]
        plan = EpochPlan(TrainingProblem("logistic", optimizer=spec).kernel(design), learning_rates,
                         Regularization(0.001, 0.5).rows(k), ScheduleSpec().per_step(10), 10, 32, 1, 0)
        trained, _ = minibatch_epoch(Block(design, y), Models(np.zeros((k, d)), np.zeros(k), init_state(spec, k, d)),
                                     plan)
        return trained.weights

    split, dense = run(X, rates), run(X.toarray(), rates)
    np.testing.assert_allclose(split, dense, atol=1e-9)
    assert run(X, rates[1:2]).tobytes() == split[1:2].tobytes()


@pytest.mark.parametrize("weighted", [False, True])
def test_sparse_sgd_steps_touch_only_the_batch_columns_with_the_full_updates_bits(weighted: bool) -> None:
    """Plain SGD without a penalty updates only the columns a batch touches; the result has the same bits as
    the general update (which subtracts step * 0 everywhere else)."""
    X, y = _split_problem()
    rates = np.array([0.05, 0.5])
    sgd = OptimizerSpec("sgd")
    sample_weight = np.random.default_rng(2).gamma(2.0, 0.5, size=y.shape[0]) if weighted else None

    problem = TrainingProblem("logistic", optimizer=sgd)

    def run(regularization: Regularization, design: object, numpy: bool = False) -> tuple[np.ndarray, np.ndarray]:
        k, d = rates.shape[0], X.shape[1]
        kernel = SparseKernel(problem.loss_function, sgd) if numpy else problem.kernel(design)
        plan = EpochPlan(kernel, rates, regularization.rows(k), ScheduleSpec().per_step(10), 10, 16, 3, 1)
        trained, _ = minibatch_epoch(Block(design, y, sample_weight),
                                     Models(np.zeros((k, d)), np.zeros(k), init_state(sgd, k, d)), plan)
        return trained.weights, trained.intercepts

    fast = run(Regularization(0.0, 0.0), X, numpy=True)  # the numpy kernel's touched-columns update
    np.testing.assert_allclose(fast[0], run(Regularization(0.0, 0.0), X.toarray())[0], atol=1e-12)  # dense twin
    reference = _general_split_epoch(X, y, rates, sample_weight)
    assert fast[0].tobytes() == reference[0].tobytes() and fast[1].tobytes() == reference[1].tobytes()
    # the compiled CSR epoch (what a split design trains with) sums each batch's gradient in its own order
    compiled = run(Regularization(0.0, 0.0), X)
    np.testing.assert_allclose(compiled[0], reference[0], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(compiled[1], reference[1], rtol=1e-10, atol=1e-14)


def _general_split_epoch(X: SplitDesign, y: np.ndarray, rates: np.ndarray,
                         sample_weight: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The same epoch through the general update (apply_update on every column), batch by batch."""
    from pipelines.sgd.kernels import epoch_permutation, rowwise_gradient
    from pipelines.sgd.losses import get_loss
    from pipelines.sgd.optimizers import apply_update

    sgd, loss = OptimizerSpec("sgd"), get_loss("logistic")
    k, d = rates.shape[0], X.shape[1]
    weights, intercepts, state = np.zeros((k, d)), np.zeros(k), init_state(sgd, k, d)
    order = epoch_permutation(y.shape[0], 3, 1)
    for start in range(0, y.shape[0], 16):
        rows = order[start:start + 16]
        batch = X[rows]
        derivatives = loss.derivative(compute_margins(batch, weights, intercepts), y[rows])
        if sample_weight is not None:
            derivatives = derivatives * sample_weight[rows][:, np.newaxis]
        inverse = 1.0 / rows.shape[0]
        weights, intercepts = apply_update(sgd, state, weights, intercepts, rowwise_gradient(derivatives, batch) *
                                           inverse, np.add.reduce(derivatives, axis=0) * inverse, rates,
                                           Regularization(0.0, 0.0))
    return weights, intercepts
