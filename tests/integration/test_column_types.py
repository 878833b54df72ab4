"""A feature table as a lakehouse holds it: every column type, trained with ``data.features`` omitted, scored raw.

The table has an int, a decimal, a boolean, a 3-value and a 400-value string (hashed: above the test's
``features.hash_threshold``), an ``array<double>`` of 4 and a sparse 50-wide Spark ML vector, plus a map
column (left out, with its reason) and an id (excluded). The sweep must use all seven, record them on the
parent, and its champion must score every row of the raw table, close to scikit-learn's logistic regression
on the same rows and encoding.
"""

from __future__ import annotations

import decimal
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from pyspark.ml.linalg import VectorUDT
from pyspark.sql import SparkSession
from pyspark.sql import types as T

from pipelines.config import Config
from pipelines.errors import DataError
from pipelines.orchestration.score import score_table
from pipelines.orchestration.sweep import SweepReport, run_tracked_sweep
from tests.conftest import make_config

# odd names and every column type through Spark's generated projections, as lrsweep runs by default
pytestmark = pytest.mark.usefixtures("generated_projections")

ROWS = 3000
SEVEN = ["visits", "balance", "is_member", "plan", "city", "embedding", "signals"]


def _typed_rows(seed: int = 4) -> tuple[list[tuple[object, ...]], np.ndarray]:
    from pyspark.ml.linalg import Vectors

    rng = np.random.default_rng(seed)
    plans = np.array(["basic", "standard", "premium"])
    plan_effect = {"basic": 0.8, "standard": 0.0, "premium": -0.8}
    city_effect = rng.normal(size=400) * 0.6
    signal_weights = rng.normal(size=50)
    rows, labels = [], np.zeros(ROWS)
    for i in range(ROWS):
        visits = int(rng.poisson(5))
        balance = decimal.Decimal(f"{rng.normal(1000, 300):.2f}")
        member = bool(rng.random() < 0.4)
        plan = str(plans[rng.integers(3)])
        city = int(rng.integers(400))
        embedding = rng.normal(size=4).tolist()
        active = np.sort(rng.choice(50, size=3, replace=False))
        values = rng.random(3)
        z = (0.3 * (visits - 5) - 0.002 * (float(balance) - 1000) + 0.7 * member + plan_effect[plan]
             + city_effect[city] + 0.8 * embedding[0] - 0.5 * embedding[3] + values @ signal_weights[active])
        labels[i] = float(rng.random() < 1 / (1 + np.exp(-z)))
        rows.append((i, visits, balance, member, plan, f"city-{city}", embedding,
                     Vectors.sparse(50, active.tolist(), values.tolist()), {"k": 1}, int(labels[i])))
    return rows, labels


SCHEMA = T.StructType([
    T.StructField("id", T.LongType()), T.StructField("visits", T.IntegerType()),
    T.StructField("balance", T.DecimalType(12, 2)), T.StructField("is_member", T.BooleanType()),
    T.StructField("plan", T.StringType()), T.StructField("city", T.StringType()),
    T.StructField("embedding", T.ArrayType(T.DoubleType())),
    T.StructField("signals", VectorUDT()),
    T.StructField("attributes", T.MapType(T.StringType(), T.IntegerType())),
    T.StructField("label", T.IntegerType())])


@pytest.fixture(scope="module")
def typed(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, SweepReport, Path]:
    workdir = tmp_path_factory.mktemp("typed")
    rows, _ = _typed_rows()
    table = str(workdir / "typed_features")
    spark.createDataFrame(rows, SCHEMA).write.format("delta").save(table)
    config = make_config(table, workdir, [
        "data.label=label", "data.exclude=[id]", "features.hash_threshold=100", "features.hash_buckets=4096",
        "sweep.learning_rates=[0.05, 0.2, 0.8]", "train.epochs=30", "train.batch_size=32", "sweep.id=typed-1",
        "tracking.experiment=typed", "tracking.registered_model=typed_model", "tracking.register_when=always"])
    report = run_tracked_sweep(spark, config, progress=None)
    return config, report, workdir


def test_every_usable_column_is_a_feature_and_the_parent_lists_them(typed: tuple[Config, SweepReport, Path]) -> None:
    config, report, _ = typed
    assert list(report.table.features) == SEVEN
    assert report.table.columns.left_out["id"] == "listed in data.exclude"
    assert "map<string,int>" in report.table.columns.left_out["attributes"]
    encoding = report.facts.encoding
    kinds = {c.column: (c.kind, c.width) for c in encoding.columns}
    assert kinds == {"visits": ("number", 1), "balance": ("number", 1), "is_member": ("boolean", 1),
                     "plan": ("onehot", 4), "city": ("hashed", 4096), "embedding": ("array", 4),
                     "signals": ("vector", 50)}
    client = MlflowClient(tracking_uri=config.tracking.uri)
    parent = client.get_run(report.parent_run_id)
    assert parent.data.params["features"] == ",".join(SEVEN)
    assert parent.data.params["features_left_out"] == "id,attributes"
    listed = json.loads(Path(client.download_artifacts(report.parent_run_id, "features.json")).read_text())
    frame = pd.DataFrame(listed["data"], columns=listed["columns"])
    assert frame.set_index("column").loc["city", "encoding"] == "city: hashed into 4096 buckets"
    assert "not supported" in frame.set_index("column").loc["attributes", "left_out"]


def test_the_champion_scores_the_raw_table_close_to_sklearn(spark: SparkSession,
                                                             typed: tuple[Config, SweepReport, Path]) -> None:
    """The registered model takes raw rows (its pipeline holds the encoding): scoring writes a prediction for
    every row, and its log-loss on the table is close to scikit-learn's logistic regression trained on the same
    rows with one-hot + scaling (the hashed column one-hot encoded by sklearn on its 400 values)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    config, report, _ = typed
    scored = score_table(spark, config)
    predictions = spark.read.format("delta").load(config.output.predictions_table).toPandas()
    assert scored.rows == ROWS and scored.rows_without_prediction == 0
    assert len(predictions) == ROWS and predictions["prediction"].notna().all()
    predictions = predictions.sort_values("id")
    ours = log_loss(predictions["label"], predictions["prediction"])

    frame = spark.read.format("delta").load(config.data.table).toPandas().sort_values("id")
    X = pd.concat([frame[["visits", "is_member", "plan", "city"]].assign(balance=frame["balance"].astype(float)),
                   pd.DataFrame(np.stack(frame["embedding"].to_numpy()), columns=[f"e{i}" for i in range(4)],
                                index=frame.index),
                   pd.DataFrame(np.stack([v.toArray() for v in frame["signals"]]),
                                columns=[f"s{i}" for i in range(50)], index=frame.index)], axis=1)
    numeric = ["visits", "balance", "is_member", *[f"e{i}" for i in range(4)], *[f"s{i}" for i in range(50)]]
    reference = make_pipeline(ColumnTransformer([("numbers", StandardScaler(), numeric),
                                                 ("strings", OneHotEncoder(), ["plan", "city"])]),
                              LogisticRegression(max_iter=5000))
    reference.fit(X, frame["label"])
    theirs = log_loss(frame["label"], reference.predict_proba(X)[:, 1])
    print(f"log-loss on the table: ours {ours:.5f}, scikit-learn {theirs:.5f}")
    assert ours == pytest.approx(theirs, rel=0.1), (ours, theirs)

    model = mlflow.sklearn.load_model(f"models:/typed_model/{report.registration.version}")  # type: ignore[union-attr]
    raw = frame.drop(columns=["label", "id", "attributes"]).head(5).copy()
    raw.loc[raw.index[0], "plan"] = "platinum"  # unseen: the 'other' slot
    raw.loc[raw.index[1], "city"] = "atlantis"  # unseen: hashed like any value
    probabilities = model.predict_proba(raw)[:, 1]
    assert probabilities.shape == (5,) and np.isfinite(probabilities).all()


def test_listed_unsupported_columns_and_bad_string_labels_fail_naming_them(
        spark: SparkSession, typed: tuple[Config, SweepReport, Path]) -> None:
    from pipelines.lakehouse.reader import read_feature_table

    config, _, _ = typed
    listed = config.data.model_copy(update={"features": ["visits", "attributes"]})
    with pytest.raises(DataError, match=r"feature column 'attributes' has type map<string,int>: .*not supported"):
        read_feature_table(spark, listed, "logistic")
    plan_label = config.data.model_copy(update={"label": "plan", "features": ["visits"]})
    with pytest.raises(DataError, match=r"string label 'plan' has 3 distinct values \('basic', 'premium', "
                                        r"'standard'\); logistic loss needs exactly two"):
        read_feature_table(spark, plan_label, "logistic")
