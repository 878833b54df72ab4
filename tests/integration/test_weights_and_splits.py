"""Row weights and class weights against scikit-learn's weighted optimum; time, stratified, column splits and
the held-out test split, asserted on the data and on what MLflow records."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipelines.errors import DataError
from pipelines.features.split import SPLIT_COLUMN, TEST, TRAIN, VALIDATION
from pipelines.lakehouse.reader import read_feature_table
from pipelines.orchestration.sweep import run_tracked_sweep
from pipelines.orchestration.training import split_table
from tests.conftest import make_config

ROWS = 2000


@pytest.fixture(scope="module")
def weighted_table(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An imbalanced logistic problem (~15% positives) with a row weight, a date and a fixed split column."""
    rng = np.random.default_rng(21)
    X = rng.normal(size=(ROWS, 4)) * [1.0, 5.0, 0.2, 2.0] + [0.0, 3.0, 1.0, -1.0]
    z = ((X - X.mean(0)) / X.std(0)) @ np.array([1.2, -0.8, 0.5, 0.0]) - 2.0
    frame = pd.DataFrame(X, columns=[f"x{j}" for j in range(4)])
    frame["label"] = (rng.random(ROWS) < 1 / (1 + np.exp(-z))).astype(np.int64)
    frame["w"] = rng.gamma(2.0, 0.5, size=ROWS)
    frame["day"] = pd.to_datetime("2026-01-01") + pd.to_timedelta(rng.integers(0, 300, size=ROWS), unit="D")
    frame["day"] = frame["day"].dt.date
    frame["part"] = np.where(np.arange(ROWS) % 5 == 0, "validation", "train")
    path = str(tmp_path_factory.mktemp("weighted") / "table")
    spark.createDataFrame(frame).write.format("delta").save(path)
    return path


def _objective(Z: np.ndarray, y: np.ndarray, s: np.ndarray, w: np.ndarray, b: float, reg: float) -> float:
    margins = Z @ w + b
    losses = np.logaddexp(0.0, margins) - y * margins
    return float(np.sum(s * losses) / np.sum(s) + 0.5 * reg * w @ w)


@pytest.mark.parametrize("class_weight", ["balanced", "{0: 1.0, 1: 4.0}"])
def test_weighted_sweep_reaches_sklearns_weighted_optimum(spark: SparkSession, weighted_table: str,
                                                          tmp_path: Path, class_weight: str) -> None:
    """The best rate's weighted objective (sample weights x class weights, L2) is within 1% of scikit-learn's
    weighted optimum of the same objective on the same (training) rows and the same standardized inputs."""
    from sklearn.linear_model import LogisticRegression

    reg = 0.01
    config = make_config(weighted_table, tmp_path, [
        "data.label=label", "data.weight=w", f"model.class_weight={class_weight}", f"model.reg_param={reg}",
        "data.split=column", "data.split_column=part", "data.exclude=[day]", "sweep.learning_rates=[0.1, 0.5]",
        "train.epochs=40", "train.batch_size=32", "train.schedule.name=cosine", "sweep.id=weighted",
        "tracking.register_when=never"])
    report = run_tracked_sweep(spark, config, progress=None)
    best = report.outcome.best
    assert best is not None

    frame = spark.read.format("delta").load(weighted_table).toPandas()
    train = frame[frame["part"] == "train"]
    X, y = train[[f"x{j}" for j in range(4)]].to_numpy(), train["label"].to_numpy().astype(float)
    encoding = report.facts.encoding
    Z = (X - encoding.means) / encoding.scales
    np.testing.assert_allclose(encoding.means, X.mean(0), rtol=1e-12)
    if class_weight == "balanced":
        counts = np.bincount(y.astype(int))
        per_class = {c: len(y) / (2 * counts[c]) for c in (0, 1)}
    else:
        per_class = {0: 1.0, 1: 4.0}
    s = train["w"].to_numpy() * np.where(y == 1, per_class[1], per_class[0])
    sklearn_model = LogisticRegression(C=1.0 / (reg * s.sum()), tol=1e-10, max_iter=10_000)
    sklearn_model.fit(Z, y, sample_weight=s)
    optimum = _objective(Z, y, s, sklearn_model.coef_[0], float(sklearn_model.intercept_[0]), reg)
    ours = _objective(Z, y, s, best.weights, best.intercept, reg)
    assert optimum <= ours <= 1.01 * optimum, (ours, optimum)
    unweighted = _objective(Z, y, np.ones_like(s), best.weights, best.intercept, reg)
    assert unweighted != pytest.approx(ours, rel=1e-3)  # the weights did change the objective


def test_time_split_validates_on_newer_rows_and_the_champion_is_tested_once_on_the_newest(
        spark: SparkSession, weighted_table: str, tmp_path: Path) -> None:
    config = make_config(weighted_table, tmp_path, [
        "data.label=label", "data.split=time", "data.time_column=day", "data.test_fraction=0.1",
        "data.exclude=[part]", "sweep.learning_rates=[0.1, 1.0]", "train.epochs=3", "sweep.id=timed",
        "tracking.registered_model=timed_model", "tracking.register_when=always"])
    table = read_feature_table(spark, config.data, "logistic")
    assert "day" not in table.features and table.columns.left_out["day"].startswith("orders the time split")
    split = split_table(table, config.data, config.train.seed).groupBy(SPLIT_COLUMN).agg(
        F.min("day").alias("first"), F.max("day").alias("last"), F.count(F.lit(1)).alias("rows")).toPandas() \
        .set_index(SPLIT_COLUMN)
    assert split.loc[TRAIN, "last"] < split.loc[VALIDATION, "first"]
    assert split.loc[VALIDATION, "last"] <= split.loc[TEST, "first"]
    assert split["rows"].sum() == ROWS and 0.05 * ROWS < split.loc[TEST, "rows"] < 0.15 * ROWS

    report = run_tracked_sweep(spark, config, progress=None)
    client = MlflowClient(tracking_uri=config.tracking.uri)
    parent = client.get_run(report.parent_run_id)
    assert {"test_loss", "test_auc", "test_accuracy", "test_count"} <= set(parent.data.metrics)
    assert parent.data.metrics["test_count"] == split.loc[TEST, "rows"]
    assert report.registration is not None and report.registration.version is not None
    version = client.get_model_version("timed_model", report.registration.version)
    assert float(version.tags["lrsweep.test_loss"]) == parent.data.metrics["test_loss"]
    assert "lrsweep.val_auc" in version.tags and "lrsweep.val_loss" in version.tags


def test_stratified_split_keeps_the_class_balance_in_every_split(spark: SparkSession, weighted_table: str,
                                                                  tmp_path: Path) -> None:
    config = make_config(weighted_table, tmp_path, ["data.label=label", "data.split=stratified",
                                                    "data.test_fraction=0.2", "data.exclude=[part, day]"])
    table = read_feature_table(spark, config.data, "logistic")
    counts = split_table(table, config.data, config.train.seed).groupBy(SPLIT_COLUMN, "label").count().toPandas()
    by = counts.pivot(index=SPLIT_COLUMN, columns="label", values="count")
    positives = by[1.0].sum()
    for split, fraction in ((VALIDATION, 0.2), (TEST, 0.2), (TRAIN, 0.6)):
        assert abs(by.loc[split, 1.0] - fraction * positives) <= 1.5
        assert abs(by.loc[split, 0.0] - fraction * (ROWS - positives)) <= 1.5


def test_bad_weights_and_split_columns_fail_naming_the_column_and_the_count(
        spark: SparkSession, tmp_path: Path) -> None:
    path = str(tmp_path / "bad")
    spark.range(100).selectExpr("id % 2 AS label", "id * 1.0 AS x", "IF(id < 3, -1.0, IF(id < 5, NULL, 1.0)) AS w",
                                "0.0 AS zero", "IF(id < 7, 'holdout', 'train') AS part").write.format("delta") \
        .save(path)
    cases = {
        "w": "data.weight column 'w' has 2 null, 3 negative value(s); weights must be finite numbers >= 0",
        "zero": "data.weight column 'zero' is zero on every row: nothing to fit",
    }
    for column, message in cases.items():
        config = make_config(path, tmp_path, ["data.label=label", f"data.weight={column}", "data.exclude=[part]"])
        with pytest.raises(DataError, match=re.escape(message)):
            read_feature_table(spark, config.data, "logistic")
    config = make_config(path, tmp_path, ["data.label=label", "data.split=column", "data.split_column=part",
                                          "data.exclude=[w, zero]"])
    table = read_feature_table(spark, config.data, "logistic")
    with pytest.raises(DataError, match=re.escape("data.split_column 'part' must hold train, validation or test; "
                                                  "found 'holdout': 7")):
        split_table(table, config.data, config.train.seed)
