"""A joint grid over (learning rate, reg_param, l1_ratio) in one pass: each point trains exactly as it would alone,
and MLflow, the results table and the figures show every point."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from pyspark.sql import SparkSession

from pipelines.errors import ConfigError
from pipelines.orchestration.sweep import SweepReport, run_tracked_sweep
from pipelines.tracking.runs import TAG_ROLE, TAG_SWEEP_ID
from tests.conftest import make_config

COMMON = ["data.label=label", "data.exclude=[]", "train.epochs=3", "train.batch_size=64", "train.num_partitions=2",
          "tracking.experiment=joint", "tracking.register_when=always", "tracking.registered_model=joint_model"]


@pytest.fixture(scope="module")
def joint(spark: SparkSession, synthetic_tables: dict[str, str],
          tmp_path_factory: pytest.TempPathFactory) -> tuple[SweepReport, MlflowClient, Path]:
    workdir = tmp_path_factory.mktemp("joint")
    config = make_config(synthetic_tables["logistic"], workdir, [
        *COMMON, "sweep.learning_rates=[0.01, 0.1, 1.0]", "sweep.reg_params=[0.0, 0.01]", "sweep.id=joint-1"])
    report = run_tracked_sweep(spark, config, progress=None)
    return report, MlflowClient(tracking_uri=config.tracking.uri), workdir


def _children(client: MlflowClient, sweep_id: str) -> dict[str, object]:
    experiment = client.get_experiment_by_name("joint")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id],
                              f"tags.`{TAG_SWEEP_ID}` = '{sweep_id}' AND tags.`{TAG_ROLE}` = 'child'")
    return {run.info.run_name: run for run in runs}


def test_joint_grid_children_carry_their_point(joint: tuple[SweepReport, MlflowClient, Path]) -> None:
    report, client, _ = joint
    children = _children(client, "joint-1")
    assert sorted(children) == sorted(f"lr={lr} reg={reg}" for lr in ("0.01", "0.1", "1") for reg in ("0", "0.01"))
    for name, run in children.items():
        params = run.data.params  # type: ignore[attr-defined]
        lr, reg = (part.split("=")[1] for part in name.split())
        assert float(params["learning_rate"]) == float(lr) and float(params["reg_param"]) == float(reg)
        assert params["l1_ratio"] == "0.0"
    parent = client.get_run(report.parent_run_id)
    assert parent.data.params["reg_params"] == "0.0,0.01" and parent.data.params["num_grid_points"] == "6"
    assert parent.data.params["train_loss"] == "progressive"  # what the train_loss curves are (local_sgd's default)
    assert "best_reg_param" in parent.data.metrics
    artifacts = {a.path for a in client.list_artifacts(report.parent_run_id, "figures")}
    assert "figures/val_loss_heatmap.png" in artifacts


def test_a_point_of_the_joint_grid_equals_that_point_swept_alone(
        spark: SparkSession, synthetic_tables: dict[str, str], joint: tuple[SweepReport, MlflowClient, Path],
        tmp_path: Path) -> None:
    """The (0.1, 0.01) child's train_loss history (and every curve) equals a sweep of that single point."""
    report, client, _ = joint
    config = make_config(synthetic_tables["logistic"], tmp_path, [
        *COMMON, "sweep.learning_rates=[0.1]", "model.reg_param=0.01", "sweep.id=joint-alone"])
    alone = run_tracked_sweep(spark, config, progress=None)
    [point] = alone.outcome.rates
    [joint_point] = [r for r in report.outcome.rates if (r.learning_rate, r.reg_param) == (0.1, 0.01)]
    for name, curve in point.curves.items():
        assert curve.tobytes() == joint_point.curves[name].tobytes(), name
    assert point.weights.tobytes() == joint_point.weights.tobytes()
    child = _children(client, "joint-1")["lr=0.1 reg=0.01"]
    logged = [m.value for m in sorted(client.get_metric_history(child.info.run_id, "train_loss"),  # type: ignore
                                      key=lambda m: m.step)]
    alone_client = MlflowClient(tracking_uri=config.tracking.uri)
    [alone_child] = _children(alone_client, "joint-alone").values()
    alone_logged = [m.value for m in sorted(alone_client.get_metric_history(alone_child.info.run_id,  # type: ignore
                                                                            "train_loss"), key=lambda m: m.step)]
    assert logged == alone_logged and len(logged) == 4


def test_results_table_has_a_row_per_point_and_epoch(spark: SparkSession,
                                                     joint: tuple[SweepReport, MlflowClient, Path]) -> None:
    report, _, workdir = joint
    rows = spark.read.format("delta").load(str(workdir / "results")).where("sweep_id = 'joint-1'").toPandas()
    assert len(rows) == 6 * 3 and set(zip(rows.learning_rate, rows.reg_param, strict=True)) == {
        (lr, reg) for lr in (0.01, 0.1, 1.0) for reg in (0.0, 0.01)}
    assert (rows.l1_ratio == 0.0).all() and rows.is_best.sum() == 3  # the best point's 3 epochs
    best = report.outcome.best
    assert best is not None
    flagged = rows[rows.is_best]
    assert set(zip(flagged.learning_rate, flagged.reg_param, strict=True)) == {(best.learning_rate, best.reg_param)}


def test_policies_work_over_the_joint_grid(spark: SparkSession, synthetic_tables: dict[str, str],
                                           tmp_path: Path) -> None:
    """Divergence stops the diverging points of every penalty; pruning ranks points, not rates."""
    config = make_config(synthetic_tables["logistic"], tmp_path, [
        *COMMON, "train.epochs=4", "sweep.learning_rates=[0.05, 0.5, 500.0]", "sweep.reg_params=[0.0, 0.1]",
        "sweep.l1_ratios=[0.0, 0.5]", "sweep.pruning={enabled: true, min_epochs: 1, eta: 2}",
        "sweep.divergence_factor=2.0", "sweep.id=joint-policies"])
    report = run_tracked_sweep(spark, config, progress=None)
    rates = report.outcome.rates
    assert len(rates) == 12 and {(r.reg_param, r.l1_ratio) for r in rates} == {(0.0, 0.0), (0.0, 0.5), (0.1, 0.0),
                                                                                  (0.1, 0.5)}
    assert all(r.status == "diverged" for r in rates if r.learning_rate == 500.0)
    assert sum(r.status == "completed" for r in rates) < 8  # pruning stopped some of the 8 usable points
    best = report.outcome.best
    assert best is not None and best.learning_rate != 500.0


@pytest.mark.parametrize(("override", "message"), [
    ("sweep.reg_params=[0.1, -1]", "conf: sweep.reg_params = [0.1, -1]: every reg_param must be"),
    ("sweep.l1_ratios=[0.5, 2]", "conf: sweep.l1_ratios = [0.5, 2]: every l1_ratio must be"),
    ("sweep.reg_params=[0.1, 0.1]", "must be a non-empty list of distinct numbers"),
])
def test_bad_penalty_axes_fail_at_load_naming_the_key(override: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        make_config("/t", tmp_path, [override])


def test_a_resumed_joint_grid_equals_an_uninterrupted_one(spark: SparkSession, synthetic_tables: dict[str, str],
                                                          joint: tuple[SweepReport, MlflowClient, Path],
                                                          tmp_path: Path) -> None:
    """Interrupted after epoch 1 (a stop request at the boundary), rerun with the same id: same bits."""
    from pipelines.errors import TerminatedError
    from pipelines.orchestration.signals import StopRequest

    report, _, _ = joint
    config = make_config(synthetic_tables["logistic"], tmp_path, [
        *COMMON, "sweep.learning_rates=[0.01, 0.1, 1.0]", "sweep.reg_params=[0.0, 0.01]", "sweep.id=joint-resume",
        "train.checkpoint_every=1"])
    stop = StopRequest()
    lines: list[str] = []

    def progress(line: str) -> None:
        lines.append(line)
        if line.startswith("epoch 1/"):
            stop.request(signal.SIGTERM)

    with pytest.raises(TerminatedError):
        run_tracked_sweep(spark, config, progress=progress, stop=stop)
    resumed = run_tracked_sweep(spark, config, progress=None)
    assert resumed.resumed_from_epoch == 1
    for mine, theirs in zip(resumed.outcome.rates, report.outcome.rates, strict=True):
        assert mine.point == theirs.point
        for name, curve in mine.curves.items():
            assert curve.tobytes() == theirs.curves[name].tobytes(), (mine.point, name)
    assert np.array_equal(resumed.outcome.best.weights, report.outcome.best.weights)  # type: ignore


def test_auto_grid_with_seeds_and_early_stopping_crosses_the_penalty_axis(
        spark: SparkSession, synthetic_tables: dict[str, str], tmp_path: Path) -> None:
    """``auto``: the range test (at model.reg_param) picks the rates, the reg axis is crossed in; every point
    has its seeds' mean curves and its own child run; early stopping decides per point."""
    config = make_config(synthetic_tables["logistic"], tmp_path, [
        *COMMON, "sweep.learning_rates=auto", "sweep.auto_num=2", "sweep.reg_params=[0.0, 0.05]",
        "sweep.seeds=[1, 2]", "sweep.early_stopping={enabled: true, patience: 1}", "range_test.num_steps=20",
        "sweep.id=joint-auto"])
    report = run_tracked_sweep(spark, config, progress=None)
    rates = report.outcome.rates
    assert len(rates) == 4 and {r.reg_param for r in rates} == {0.0, 0.05}
    assert len({r.learning_rate for r in rates}) == 2 and report.suggested_learning_rate is not None
    assert all(np.isfinite(r.curves_std["val_loss"][0]) for r in rates)  # two seeds per point
    client = MlflowClient(tracking_uri=config.tracking.uri)
    names = sorted(_children(client, "joint-auto"))
    assert len(names) == 4 and all(" reg=" in name for name in names), names
