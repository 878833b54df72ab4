"""The range test on Spark: against a numpy re-computation, against a fine constant-rate grid, and tracked.

The shared synthetic logistic Delta table (2 400 rows, 5 features on different scales), in-process on the
shared ``spark`` fixture, a sqlite MLflow store under ``tmp_path``.
"""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from pyspark.sql import SparkSession

from pipelines.config import Config
from pipelines.distributed.blocks import collect_arrays
from pipelines.distributed.range_test import partition_batch_rows, sample_rows
from pipelines.lakehouse.reader import read_feature_table
from pipelines.orchestration.rounds import TrainedRound
from pipelines.orchestration.sweep import run_tracked_sweep
from pipelines.orchestration.training import PreparedData, prepare_data, range_test, train_grid
from pipelines.sgd import Block, Regularization, TrainingProblem, apply_update, init_state
from pipelines.sweep.grid import joint_grid
from pipelines.sweep.range_test import auto_grid, range_test_rates, refine_span, smooth_losses
from pipelines.tracking.runs import TAG_ROLE, TAG_ROUND, TAG_SWEEP_ID
from tests.conftest import make_config

#: The fine constant-rate grid the suggestion is judged against: 12 rates, 3 epochs of local SGD.
FINE_GRID = "{min: 0.01, max: 30.0, num: 12}"
TRAINING = ["train.algorithm=local_sgd", "train.epochs=3", "train.batch_size=64", "train.num_partitions=2"]


@pytest.fixture(scope="module")
def logistic_table(synthetic_tables: dict[str, str]) -> str:
    return synthetic_tables["logistic"]


def _rates(trained: TrainedRound) -> list[float]:
    return [point.learning_rate for point in trained.points]


def _config(table: str, workdir: Path, *overrides: str) -> Config:
    return make_config(table, workdir, ["data.label=label", "data.exclude=[]", "model.loss=logistic", *TRAINING,
                                        *overrides])


def _prepare(spark: SparkSession, config: Config) -> PreparedData:
    table = read_feature_table(spark, config.data, config.model.loss)
    return prepare_data(spark, table, config.data, config.features, config.train)


def test_distributed_steps_match_a_numpy_recomputation(spark: SparkSession, logistic_table: str,
                                                       tmp_path: Path) -> None:
    config = _config(logistic_table, tmp_path, "range_test.num_steps=25", "range_test.min_lr=0.01",
                     "train.optimizer=momentum", "model.reg_param=0.01")
    prepared = _prepare(spark, config)
    try:
        result = range_test(prepared, config.problem, config.train, config.range_test)
        parts = collect_arrays(prepared.blocks)
        batch_rows = partition_batch_rows(prepared.blocks.train_rows, config.train.batch_size)
    finally:
        prepared.blocks.release()
    optimizer, regularization = config.train.optimizer, Regularization(0.01, 0.0)
    W, b = np.zeros((1, 5)), np.zeros(1)
    state = init_state(optimizer, 1, 5)
    losses, problem = [], TrainingProblem("logistic")
    for step, rate in enumerate(range_test_rates(0.01, 10.0, 25)[:result.steps]):
        sums = [problem.kernel(p.X_train).gradient_sums(Block(p.X_train[rows], p.y_train[rows]), W, b)
                for p in parts for rows in [sample_rows(p.y_train.shape[0], batch_rows[p.partition], 42, step,
                                                        p.partition)]]
        count = sum(batch_rows)
        losses.append(sum(s[2][0] for s in sums) / count + regularization.penalty(W)[0])
        W, b = apply_update(optimizer, state, W, b, sum(s[0] for s in sums) / count, sum(s[1] for s in sums) / count,
                            np.array([rate]), regularization)
    np.testing.assert_allclose(result.losses, losses, rtol=1e-10)
    np.testing.assert_allclose(result.smoothed_losses, smooth_losses(losses, 0.98), rtol=1e-10)
    assert sum(batch_rows) == pytest.approx(64, abs=1)


@pytest.mark.parametrize("loss", ["logistic", "squared"])
def test_suggestion_lands_near_the_best_rate_of_a_fine_grid(spark: SparkSession, synthetic_tables: dict[str, str],
                                                            tmp_path: Path, loss: str) -> None:
    label = "label" if loss == "logistic" else "target"
    config = _config(synthetic_tables[loss], tmp_path, f"sweep.learning_rates={FINE_GRID}", f"model.loss={loss}",
                     f"data.label={label}")
    prepared = _prepare(spark, config)
    try:
        result = range_test(prepared, config.problem, config.train, config.range_test)  # defaults: 1e-6..10, 100
        fine = train_grid(prepared, config.problem, config.train, config.sweep,
                          joint_grid(config.sweep.grid(), config.penalty_axis()))
    finally:
        prepared.blocks.release()
    best = fine.best
    assert best is not None
    print(f"suggestion {result.suggestion:.4g}, fine-grid best {best.learning_rate:.4g}, "
          f"ratio {result.suggestion / best.learning_rate:.2f}, {result.steps} steps")
    assert best.learning_rate / 3 <= result.suggestion <= best.learning_rate * 3
    # the squared loss blows up within the default rates; the logistic loss only flattens (its minimum is
    # at max_lr, so its suggestion is max_lr / 10, a lower bound that still lands near the best)
    assert result.stopped_early == (loss == "squared")
    grid = auto_grid(result.suggestion, config.sweep.auto_num, config.sweep.auto_span)
    assert grid[0] <= best.learning_rate <= grid[-1]


def test_auto_sweep_logs_range_test_and_both_rounds_under_one_parent(spark: SparkSession, logistic_table: str,
                                                                     tmp_path: Path) -> None:
    sweep_id = "it-auto-1"
    config = _config(logistic_table, tmp_path, "sweep.learning_rates=auto", "sweep.auto_num=3", "sweep.refine=true",
                     "train.epochs=2", "range_test.num_steps=40", "range_test.min_lr=1e-4", f"sweep.id={sweep_id}",
                     "tracking.experiment=it-auto", "tracking.registered_model=it_auto")
    try:
        report = run_tracked_sweep(spark, config, progress=None)
        client = MlflowClient(tracking_uri=config.tracking.uri)
        experiment = client.get_experiment_by_name("it-auto")
        assert experiment is not None
        runs = client.search_runs([experiment.experiment_id], f"tags.`{TAG_SWEEP_ID}` = '{sweep_id}'")
        by_role: dict[str, list[mlflow.entities.Run]] = {}
        for run in runs:
            by_role.setdefault(run.data.tags[TAG_ROLE], []).append(run)
        [parent] = by_role["parent"]
        [range_run] = by_role["range_test"]
        assert parent.info.run_id == report.parent_run_id and parent.info.status == "FINISHED"
        assert all(run.data.tags["mlflow.parentRunId"] == parent.info.run_id
                   for run in [range_run, *by_role["child"]])
        assert report.range_test is not None and report.suggested_learning_rate == report.range_test.suggestion
        # the range test run: per-step curves, the suggestion as param and metric, the figure
        steps = report.range_test.steps
        for name in ("range_test_loss", "range_test_smoothed_loss", "learning_rate"):
            history = client.get_metric_history(range_run.info.run_id, name)
            assert sorted(m.step for m in history) == list(range(steps)), name
        assert float(range_run.data.params["suggested_learning_rate"]) == report.suggested_learning_rate
        assert range_run.data.metrics["suggested_learning_rate"] == report.suggested_learning_rate
        assert {a.path for a in client.list_artifacts(range_run.info.run_id, "figures")} == {"figures/range_test.png"}
        # two rounds of 3 rates: round 1 centred on the suggestion, round 2 on round 1's best
        rounds = {n: sorted(float(r.data.params["learning_rate"]) for r in by_role["child"]
                            if r.data.tags[TAG_ROUND] == str(n)) for n in (1, 2)}
        assert rounds[1] == pytest.approx(auto_grid(report.suggested_learning_rate, 3, 10.0))
        first_best = report.rounds[0].outcome.best
        assert first_best is not None and len(report.rounds) == 2
        assert rounds[2][1] == pytest.approx(first_best.learning_rate) and len(rounds[2]) == 3
        assert rounds[2] == pytest.approx(auto_grid(first_best.learning_rate, 3, refine_span(rounds[1])))
        assert parent.data.params["learning_rates"] == "auto"
        assert parent.data.params["round2_learning_rates"] == ",".join(map(repr, _rates(report.rounds[1])))
        assert parent.data.metrics["suggested_learning_rate"] == report.suggested_learning_rate
        # the final round is the result: results rows, best model
        final_best = report.outcome.best
        assert final_best is not None and report.rounds[-1].number == 2
        assert final_best.final_metrics()["val_loss"] <= first_best.final_metrics()["val_loss"] + 1e-12
        assert math.isclose(parent.data.metrics["best_learning_rate"], final_best.learning_rate)
        rows = spark.read.format("delta").load(config.output.results_table).toPandas()
        assert len(rows) == report.results_rows  # every round is journaled, each rate's rows tagged by round
        final_rows = rows[rows["round"] == 2]
        assert set(final_rows.learning_rate) == set(_rates(report.rounds[1]))
        assert set(rows[rows["round"] == 1].learning_rate) == set(_rates(report.rounds[0]))
        assert final_rows[final_rows.is_best].learning_rate.unique().tolist() == [final_best.learning_rate]
        assert not rows[rows["round"] == 1].is_best.any() and (rows.status != "running").all()
        assert report.registration is not None and report.registration.decision == "registered"
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]


def test_a_refining_sweep_with_one_rate_flags_its_best_without_a_second_round(
    spark: SparkSession, logistic_table: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """One rate cannot be refined: round 1 is the last, its rows (journaled as a first round, without the best flag)
    get the flag and the registry's decision at the sweep's end."""
    config = _config(logistic_table, tmp_path, "sweep.learning_rates=auto", "sweep.auto_num=1", "sweep.refine=true",
                     "train.epochs=2", "range_test.num_steps=20", "range_test.min_lr=1e-4", "sweep.id=it-auto-one",
                     "tracking.experiment=it-auto", "tracking.registered_model=it_auto_one")
    try:
        report = run_tracked_sweep(spark, config, progress=print)
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    assert "not refining" in capsys.readouterr().out and len(report.rounds) == 1
    assert report.registration is not None and report.registration.decision == "registered"
    rows = spark.read.format("delta").load(config.output.results_table).toPandas()
    assert len(rows) == 2 and rows.is_best.all()
    assert set(rows.registration) == {f"registered:{report.registration.version}"}
