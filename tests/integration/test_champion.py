"""Nightly sweeps on a growing Delta table: the champion is measured on each night's own validation rows.

The table gains a version between nights (an append); registration follows the comparison on the same rows,
whatever the champion's recorded validation loss (measured on another version) says. Real Delta table, real
sqlite MLflow store and registry, the suite's Spark session.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from sklearn.metrics import log_loss

from pipelines.config import Config
from pipelines.features.columns import model_input
from pipelines.features.split import SPLIT_COLUMN, VALIDATION
from pipelines.lakehouse.demo_data import churn_features, write_demo_table
from pipelines.lakehouse.reader import read_feature_table
from pipelines.orchestration.sweep import SweepReport, run_tracked_sweep
from pipelines.orchestration.training import split_table
from pipelines.tracking.models import CHAMPION, ChampionCheck, challenge
from tests.conftest import make_config

MODEL = "nightly_churn"
WEAK = ["sweep.learning_rates=[0.0001]", "train.epochs=1"]
STRONG = ["sweep.learning_rates=[0.1, 0.3]", "train.epochs=3"]


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("nightly")


def night(lake: Path, sweep_id: str, *overrides: str) -> Config:
    table = str(lake / "churn")
    return make_config(table, lake, ["demo.rows=4000", "demo.append_rows=400", "demo.partitions=2",
                                     f"sweep.id={sweep_id}", "tracking.experiment=nightly",
                                     f"tracking.registered_model={MODEL}", *overrides])


def sweep(spark: SparkSession, config: Config) -> tuple[SweepReport, list[str]]:
    lines: list[str] = []
    return run_tracked_sweep(spark, config, progress=lines.append), lines


def champion_loss_by_sklearn(spark: SparkSession, config: Config, version: str) -> tuple[float, int]:
    """The registered ``version``'s log loss on the sweep's validation rows, computed by scikit-learn from the
    loaded model's probabilities (not by lrsweep's evaluation)."""
    table = read_feature_table(spark, config.data, config.model.loss)
    rows = split_table(table, config.data, config.train.seed).filter(F.col(SPLIT_COLUMN) == F.lit(VALIDATION))
    frame = rows.select(table.label, *[model_input(c, family) for c, family in table.columns.used.items()]) \
        .toPandas()
    model = mlflow.sklearn.load_model(f"models:/{MODEL}/{version}")
    probability = model.predict_proba(frame.drop(columns=[table.label]))[:, 1]
    return float(log_loss(frame[table.label].to_numpy(), probability, labels=[0.0, 1.0])), len(frame)


def test_each_night_measures_the_champion_on_its_own_validation_rows(spark: SparkSession, lake: Path) -> None:
    first = night(lake, "night-1", "data.version=1", *WEAK)
    write_demo_table(spark, first.demo, first.data.table)  # versions 0 and 1
    report, _ = sweep(spark, first)
    assert report.registration is not None and report.registration.decision == "registered"
    assert report.registration.reason.startswith("no champion yet")
    client = MlflowClient(tracking_uri=first.tracking.uri)
    # the recorded validation loss (version 1's rows) says no challenger can win: it must not be what decides
    client.set_model_version_tag(MODEL, "1", "lrsweep.val_loss", "1e-09")

    churn_features(spark, 1500, seed=11, partitions=1, first_id=4400).write.format("delta").mode("append") \
        .save(first.data.table)  # the nightly append: version 2
    second = night(lake, "night-2", *STRONG, "tracking.drift_threshold=1e-6")  # every moved feature is named
    report, lines = sweep(spark, second)
    assert report.table.ref.version == 2
    parent = client.get_run(report.parent_run_id).data
    champion_loss, challenger_loss = parent.metrics["champion_val_loss"], parent.metrics["challenger_val_loss"]
    assert challenger_loss == report.run.outcome.best.final_metrics()["val_loss"]  # type: ignore[union-attr]
    expected, rows = champion_loss_by_sklearn(spark, second, "1")
    assert rows == report.run.validation_rows
    assert champion_loss == pytest.approx(expected, rel=1e-9)
    assert {"champion_val_auc", "champion_val_accuracy"} <= set(parent.metrics)
    assert parent.tags["lrsweep.champion_version"] == "1"
    # drift from version 1's training rows: every scored feature on the parent; above the threshold, a warning
    drift = {key.removeprefix("drift_psi/"): value for key, value in parent.metrics.items()
             if key.startswith("drift_psi/")}
    assert {"tenure_months", "plan", "region"} <= set(drift) and all(v >= 0 for v in drift.values())
    [warned] = [line for line in lines if line.startswith("warning: drift against")]
    assert f"{MODEL} version 1's training rows" in warned and "tracking.drift_threshold=1e-06" in warned
    [said] = [line for line in lines if line.startswith("champion: ")]
    assert f"on this sweep's {rows} validation rows of version 2" in said and "(trained on version 1)" in said
    measured = ChampionCheck("1", {"loss": champion_loss, "count": float(rows)})
    wins, _ = challenge("if_better", challenger_loss, measured, 0.001)
    assert wins and challenger_loss < champion_loss * 0.999
    registration = report.registration
    assert registration is not None and registration.decision == "registered", registration
    assert f"on the same {rows} validation rows" in registration.reason and "the challenger wins" in registration.reason
    new = client.get_model_version_by_alias(MODEL, CHAMPION)
    assert str(new.version) == registration.version == "2"
    assert float(new.tags["lrsweep.champion_val_loss"]) == champion_loss
    assert float(new.tags["lrsweep.challenger_val_loss"]) == challenger_loss
    assert new.tags["lrsweep.replaced_version"] == "1"

    # the third night (same version) trains a weak model; the champion's recorded loss is tampered to lose, but
    # on the same rows the champion wins and stays
    client.set_model_version_tag(MODEL, "2", "lrsweep.val_loss", "99.0")
    third = night(lake, "night-3", *WEAK)
    report3, _ = sweep(spark, third)
    assert report3.registration is not None and report3.registration.decision == "kept_champion"
    assert "the champion stays" in report3.registration.reason
    assert str(client.get_model_version_by_alias(MODEL, CHAMPION).version) == "2"
    metrics3 = client.get_run(report3.parent_run_id).data.metrics
    # version 2 measured on the rows it was chosen on: lrsweep's evaluation of a loaded model agrees with the
    # engine's validation loss of the same weights
    assert metrics3["champion_val_loss"] == pytest.approx(challenger_loss, rel=1e-12)


def test_a_champion_whose_column_is_gone_is_reported_and_replaced(spark: SparkSession, lake: Path,
                                                                 tmp_path: Path) -> None:
    model = "nightly_dropped_column"
    table = str(tmp_path / "churn")
    first = make_config(table, tmp_path, ["demo.rows=3000", "demo.append_rows=300", "demo.partitions=2",
                                          "sweep.id=dropped-1", f"tracking.registered_model={model}", *WEAK])
    write_demo_table(spark, first.demo, table)
    sweep(spark, first)
    later = make_config(table, tmp_path, ["sweep.id=dropped-2", f"tracking.registered_model={model}",
                                          "data.exclude=[customer_id, lifetime_value, support_calls_90d]", *WEAK])
    report, lines = sweep(spark, later)
    [said] = [line for line in lines if line.startswith("champion: ")]
    assert "cannot be measured on this sweep's rows" in said and "'support_calls_90d'" in said, said
    assert report.registration is not None and report.registration.decision == "registered"
    assert "cannot be measured" in report.registration.reason
    client = MlflowClient(tracking_uri=later.tracking.uri)
    assert "champion_val_loss" not in client.get_run(report.parent_run_id).data.metrics
    assert client.get_model_version_by_alias(model, CHAMPION).tags["lrsweep.replaced_version"] == "1"
    assert np.isfinite(float(client.get_model_version_by_alias(model, CHAMPION).tags["lrsweep.val_loss"]))


def test_a_warm_started_sweep_starts_every_point_at_the_champions_loss_on_its_rows(spark: SparkSession,
                                                                                  tmp_path: Path) -> None:
    model = "nightly_warm"
    table = str(tmp_path / "churn")
    # every region kept (one-hot): no category the champion kept falls into today's 'other', so the carried
    # model is the champion's function exactly
    common = ["demo.rows=3000", "demo.append_rows=300", "demo.partitions=2", f"tracking.registered_model={model}",
              "tracking.experiment=warm", "features.max_categories=200"]
    first = make_config(table, tmp_path, [*common, "sweep.id=warm-1", "train.warm_start=champion",
                                          "sweep.learning_rates=[0.1]", "train.epochs=2"])
    write_demo_table(spark, first.demo, table)
    report, lines = sweep(spark, first)  # no champion yet: a cold start, said
    assert any(line.startswith("warm start: no champion") for line in lines), lines
    churn_features(spark, 800, seed=12, partitions=1, first_id=3300).write.format("delta").mode("append") \
        .save(table)
    warm = make_config(table, tmp_path, [*common, "sweep.id=warm-2", "train.warm_start=champion",
                                         "sweep.learning_rates=[0.001, 0.01, 0.1]", "train.epochs=1"])
    report, lines = sweep(spark, warm)
    [said] = [line for line in lines if line.startswith("warm start: ")]
    assert f"starts from {model} version 1 (trained on version 1)" in said and said.endswith("exactly"), said
    client = MlflowClient(tracking_uri=warm.tracking.uri)
    parent = client.get_run(report.parent_run_id).data
    assert parent.params["warm_start_version"] == "1"
    champion_loss = parent.metrics["champion_val_loss"]  # version 1 measured on this sweep's validation rows
    starts = {rate.point.learning_rate: rate.curves["val_loss"] for rate in report.run.outcome.rates}
    for child_id in report.child_run_ids:
        assert child_id is not None
        [step0] = [m.value for m in client.get_metric_history(child_id, "val_loss") if m.step == 0]
        assert step0 == pytest.approx(champion_loss, rel=1e-9)
    assert len(starts) == 3 and abs(champion_loss - np.log(2)) > 0.05  # not the cold start's log 2


def test_since_the_champion_reads_only_the_rows_appended_after_its_version(spark: SparkSession,
                                                                          tmp_path: Path) -> None:
    model = "nightly_incremental"
    table = str(tmp_path / "churn")
    common = ["demo.rows=3000", "demo.append_rows=300", "demo.partitions=2", f"tracking.registered_model={model}",
              "tracking.experiment=incremental", "tracking.register_when=always", *WEAK]
    first = make_config(table, tmp_path, [*common, "sweep.id=inc-1", "data.since_version=champion"])
    write_demo_table(spark, first.demo, table)
    report, lines = sweep(spark, first)  # no champion yet: the whole of version 1
    assert report.table.rows_read == 3300 and report.table.ref.since_version is None
    assert any(line.startswith("data.since_version=champion: no champion") for line in lines), lines
    churn_features(spark, 900, seed=13, partitions=1, first_id=3300, null_fraction=0.0).write.format("delta") \
        .mode("append").save(table)  # version 2
    second = make_config(table, tmp_path, [*common, "sweep.id=inc-2", "data.since_version=champion"])
    report, lines = sweep(spark, second)
    assert report.table.rows_read == 900 and report.table.rows == 900
    [said] = [line for line in lines if line.startswith("sweep inc-2: ")]
    assert "at versions 2..2 (rows added after version 1, appends), 900 rows" in said, said
    client = MlflowClient(tracking_uri=second.tracking.uri)
    parent = client.get_run(report.parent_run_id)
    assert parent.data.params["since_version"] == "1" and parent.data.params["table_version"] == "2"
    [dataset] = parent.inputs.dataset_inputs
    assert dataset.dataset.name == "churn@v2-v2" and '"since_version": 1' in dataset.dataset.source
    assert '"num_rows": 900' in dataset.dataset.profile
    version = client.get_model_version_by_alias(model, CHAMPION)
    assert version.tags["lrsweep.data_version"] == "2" and version.tags["lrsweep.data_since_version"] == "1"
