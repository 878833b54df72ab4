"""Policies across the grid on real data: early stopping keeps the best epoch, halving prunes and saves
compute, seeds repeat every rate in the same pass, adaptive optimizers and local_sgd state rules; a
population-based sweep's lineage in MLflow and the results table."""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient
from pyspark.sql import SparkSession

from pipelines.config import Config
from pipelines.distributed.blocks import collect_arrays
from pipelines.lakehouse.reader import read_feature_table
from pipelines.orchestration.sweep import run_tracked_sweep
from pipelines.orchestration.training import prepare_data, train_grid
from pipelines.sgd import reference_minibatch_sgd
from pipelines.sweep.grid import joint_grid
from pipelines.sweep.outcome import GridOutcome
from tests.conftest import make_config


def _config(table: str, tmp_path: Path, *overrides: str) -> Config:
    return make_config(table, tmp_path, ["data.label=label", "data.exclude=[]", "model.loss=logistic", *overrides])


def _sweep(spark: SparkSession, config: Config) -> tuple[GridOutcome, int]:
    """The grid's outcome and the number of training rows."""
    table = read_feature_table(spark, config.data, config.model.loss)
    prepared = prepare_data(spark, table, config.data, config.features, config.train)
    try:
        return train_grid(prepared, config.problem, config.train, config.sweep,
                          joint_grid(config.sweep.grid(), config.penalty_axis())), prepared.blocks.total_train_rows
    finally:
        prepared.blocks.release()


def test_early_stopping_keeps_the_best_epoch_and_stops_computing(
    spark: SparkSession, synthetic_tables: dict[str, str], tmp_path: Path,
) -> None:
    # rate 30 oscillates on this problem: its validation loss stops improving early
    config = _config(synthetic_tables["logistic"], tmp_path, "train.epochs=12", "train.batch_size=16",
                     "sweep.learning_rates=[0.05, 30.0]", "sweep.divergence_factor=1e9",
                     "sweep.early_stopping={enabled: true, patience: 2, min_delta: 0.0}")
    outcome, train_rows = _sweep(spark, config)
    stopped = outcome.rates[1]
    assert stopped.status == "early_stopped"
    assert stopped.stopped_epoch is not None and stopped.stopped_epoch < 10
    val = stopped.curves["val_loss"]
    assert np.all(np.isnan(val[stopped.stopped_epoch:]))  # no compute after the stop
    assert stopped.kept_epoch == int(np.nanargmin(val)) + 1  # the best epoch's models are kept
    assert stopped.final_metrics()["val_loss"] == np.nanmin(val)
    assert stopped.stopped_epoch - stopped.kept_epoch == 2  # patience
    # the stop is known while the next epoch trains (evaluation is fused into training): that one epoch is
    # discarded, and nothing after it is computed
    assert outcome.row_passes == (12 + stopped.stopped_epoch + 1) * train_rows


def test_successive_halving_prunes_to_the_best_and_reports_compute_saved(
    spark: SparkSession, synthetic_tables: dict[str, str], tmp_path: Path,
) -> None:
    config = _config(synthetic_tables["logistic"], tmp_path, "train.epochs=4", "train.algorithm=gd",
                     "sweep.learning_rates={min: 0.001, max: 3.0, num: 9}", "sweep.pruning={enabled: true, "
                     "min_epochs: 1, eta: 3}")
    outcome, train_rows = _sweep(spark, config)
    statuses = [rate.status for rate in outcome.rates]
    assert statuses.count("pruned") == 8  # rung 1: keep ceil(9/3)=3; rung 3: keep ceil(3/3)=1
    assert statuses.count("completed") == 1
    rung1 = np.array([rate.curves["val_loss"][0] for rate in outcome.rates])
    kept_after_rung1 = set(np.argsort(rung1, kind="stable")[:3].tolist())
    assert {i for i, s in enumerate(statuses) if s != "pruned" or outcome.rates[i].stopped_epoch == 3} \
        == kept_after_rung1
    for rate in outcome.rates:
        if rate.status == "pruned":
            assert rate.epochs_run == rate.stopped_epoch  # partial curves are kept
    # 9 + 3 + 3 + 1 rate-epochs of the full grid's 36: pruned rates consumed nothing after their rung
    assert outcome.row_passes == 16 * train_rows
    assert outcome.full_grid_row_passes == 36 * train_rows


def test_seeds_repeat_each_rate_in_the_same_pass_with_mean_and_std(
    spark: SparkSession, synthetic_tables: dict[str, str], tmp_path: Path,
) -> None:
    config = _config(synthetic_tables["logistic"], tmp_path, "train.epochs=2", "train.num_partitions=1",
                     "train.batch_size=64", "sweep.learning_rates=[0.01, 0.3]", "sweep.seeds=[1, 2, 3]")
    table = read_feature_table(spark, config.data, config.model.loss)
    prepared = prepare_data(spark, table, config.data, config.features, config.train)
    outcome = train_grid(prepared, config.problem, config.train, config.sweep,
                         joint_grid(config.sweep.grid(), config.penalty_axis()))
    parts = collect_arrays(prepared.blocks)
    prepared.blocks.release()
    X, y = parts[0].X_train, parts[0].y_train
    problem = config.problem
    per_seed = []
    for seed in (1, 2, 3):
        _, _, history = reference_minibatch_sgd(problem, X, y, np.array([0.01, 0.3]), epochs=2, batch_size=64,
                                                seed=seed, train_loss=config.train.train_loss)
        per_seed.append(history)
    stacked = np.stack(per_seed)  # (seeds, epochs, rates)
    for k, rate in enumerate(outcome.rates):
        np.testing.assert_allclose(rate.curves["train_loss"], stacked[:, :, k].mean(axis=0), rtol=1e-10)
        np.testing.assert_allclose(rate.curves_std["train_loss"], stacked[:, :, k].std(axis=0), rtol=1e-8,
                                   atol=1e-14)
        assert np.all(rate.curves_std["train_loss"] > 0)  # seeds really differ
    assert outcome.jobs == 3  # 2 epochs + the final evaluation, whatever the number of seeds


def test_adaptive_schedule_divides_the_rate_on_plateaus(
    spark: SparkSession, synthetic_tables: dict[str, str], tmp_path: Path,
) -> None:
    common = ["train.epochs=6", "train.num_partitions=1", "train.batch_size=16", "sweep.learning_rates=[20.0]",
              "sweep.divergence_factor=1e9"]
    adaptive, _ = _sweep(spark, _config(synthetic_tables["logistic"], tmp_path, *common,
                                     "train.schedule={name: adaptive, n_iter_no_change: 1, tol: 0.0}"))
    constant, _ = _sweep(spark, _config(synthetic_tables["logistic"], tmp_path, *common))
    a, c = adaptive.rates[0].curves["val_loss"], constant.rates[0].curves["val_loss"]
    assert np.array_equal(a[:2], c[:2])  # same until the first plateau is acted on
    assert a[-1] < c[-1]  # dividing the rate by 5 on plateaus beats staying at 20


def test_a_population_based_sweep_logs_its_lineage_to_mlflow_and_the_results_table(
        spark: SparkSession, demo_table: str, tmp_path: Path) -> None:
    """sweep.strategy=pbt wired through MLflow and Delta (the policy's math is unit-tested over in-memory blocks)."""
    config = make_config(demo_table, tmp_path, [
        "sweep.id=it-pbt", "sweep.strategy=pbt", "train.epochs=6", "tracking.register_when=never",
        "sweep.learning_rates=[0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0]", "sweep.pbt.interval=1",
        "sweep.pbt.quantile=0.5", "tracking.experiment=it-pbt"])
    report = run_tracked_sweep(spark, config, progress=None)
    outcome, client = report.outcome, MlflowClient(tracking_uri=config.tracking.uri)
    assert outcome.lineage is not None and (outcome.lineage.exploited_from >= 0).any()
    rows = spark.read.format("delta").load(config.output.results_table).toPandas()
    copies = 0
    for index, (rate, run_id) in enumerate(zip(outcome.rates, report.child_run_ids, strict=True)):
        logged = {int(m.step): m.value for m in client.get_metric_history(run_id, "learning_rate")}
        expected = {epoch: value for epoch, value in enumerate(rate.schedule["learning_rate"].tolist(), start=1)
                    if math.isfinite(value)}
        assert logged == expected and len(expected) >= 1
        exploited = {int(m.step): int(m.value) for m in client.get_metric_history(run_id, "pbt_exploited_from")}
        assert exploited == {int(e): int(outcome.lineage.exploited_from[e, index])
                             for e in np.flatnonzero(outcome.lineage.exploited_from[:, index] >= 0)}
        copies += len(exploited)
        mine = rows[rows.child_run_id == run_id].set_index("epoch").sort_index()
        assert {int(e): v for e, v in mine.effective_learning_rate.dropna().items()} == \
            {e: v for e, v in expected.items() if e in mine.index}
        assert {int(e): int(v) for e, v in mine.pbt_exploited_from.dropna().items()} == exploited
    assert copies == int((outcome.lineage.exploited_from >= 0).sum())
    artifacts = {a.path for a in client.list_artifacts(report.parent_run_id, "figures")} | \
        {a.path for a in client.list_artifacts(report.parent_run_id, "pbt")}
    assert {"figures/pbt_learning_rates.png", "pbt/winner_schedule.json"} <= artifacts
    winner = mlflow.artifacts.load_dict(f"runs:/{report.parent_run_id}/pbt/winner_schedule.json")
    best = outcome.best_index
    assert best is not None and winner["point"] == outcome.labels[best]
    replay = winner["replay"]
    assert replay["train.schedule"]["name"] == "piecewise" and replay["sweep.learning_rates"] == [1.0]
    path = outcome.lineage.path(best, outcome.rates[best].kept_epoch)
    assert winner["learning_rates"] == path.learning_rates.tolist()
