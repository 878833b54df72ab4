"""spark-submit jobs/train_sweep.py and jobs/score.py against a real ``mlflow server`` process: the sweep's runs,
metrics, lineage and registered model as a job leaves them, and a batch scoring with the champion.

The server keeps runs in sqlite and artifacts in a temporary folder; results and predictions are checked
with delta-rs, an independent Delta reader.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from tests.e2e.harness import MlflowServer
from tests.e2e.test_demo_table_submit import spark_submit

pytestmark = pytest.mark.slow

EXPERIMENT = "e2e-sweeps"
MODEL = "e2e_churn"
SWEEP_ID = "e2e-sweep-1"
EPOCHS = 2


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with MlflowServer(tmp_path_factory.mktemp("mlflow-server")) as server:
        yield server.uri


def _sweep_args(table: str, workdir: Path, uri: str) -> list[str]:
    settings = [f"data.table={table}", f"output.results_table={workdir / 'results'}",
                f"output.predictions_table={workdir / 'predictions'}", f"output.checkpoints={workdir / 'checkpoints'}",
                f"tracking.uri={uri}",
                f"tracking.experiment={EXPERIMENT}", f"tracking.registered_model={MODEL}",
                "sweep.learning_rates=[0.01, 0.1, 1000.0]", f"train.epochs={EPOCHS}", f"sweep.id={SWEEP_ID}",
                "spark.shuffle_partitions=2"]
    return [arg for setting in settings for arg in ("--set", setting)]


def test_sweep_and_scoring_jobs_against_an_mlflow_server(mlflow_server: str, demo_table: str,
                                                         tmp_path: Path) -> None:
    from deltalake import DeltaTable

    args = _sweep_args(demo_table, tmp_path, mlflow_server)
    first = spark_submit("train_sweep.py", *args)
    assert first.returncode == 0, first.stdout[-4000:]
    assert f"epoch {EPOCHS}/{EPOCHS}: best lr=" in first.stdout
    header = [line.split() for line in first.stdout.splitlines() if line.split()[:2] == ["point", "status"]]
    assert header and header[0][-1] == "val_auc" and "diverged" in first.stdout
    assert "model registry: registered" in first.stdout

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], f"tags.`lrsweep.sweep_id` = '{SWEEP_ID}'")
    [parent] = [r for r in runs if r.data.tags["lrsweep.role"] == "parent"]
    children = {r.info.run_name: r for r in runs if r.data.tags["lrsweep.role"] == "child"}
    assert parent.info.status == "FINISHED" and set(children) == {"lr=0.01", "lr=0.1", "lr=1000"}
    assert all(c.info.status == "FINISHED" and c.data.tags["mlflow.parentRunId"] == parent.info.run_id
               for c in children.values())
    assert parent.data.params["table_version"] == "1" and parent.data.params["epochs"] == str(EPOCHS)
    assert parent.data.params["learning_rates"] == "0.01,0.1,1000.0"
    assert parent.data.metrics["best_learning_rate"] in (0.01, 0.1)
    assert 0 < parent.data.metrics["system/lrsweep_tracking_fraction"] < 1
    assert children["lr=1000"].data.tags["status"] == "diverged"
    for child in (children["lr=0.01"], children["lr=0.1"]):
        for metric in ("train_loss", "val_loss", "val_auc"):
            history = client.get_metric_history(child.info.run_id, metric)
            assert sorted(m.step for m in history) == list(range(0, EPOCHS + 1))  # step 0: the start
            assert all(math.isfinite(m.value) for m in history)
    for run in [parent, *children.values()]:
        [dataset] = run.inputs.dataset_inputs
        assert dataset.dataset.source_type == "delta_table"
        assert demo_table in dataset.dataset.source and '"delta_table_version": 1' in dataset.dataset.source

    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_registry_uri(mlflow_server)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    features = model.metadata.get_input_schema().input_names()
    raw = DeltaTable(demo_table).to_pandas(columns=features).dropna().head(20)  # raw rows, read without Spark
    example = raw.astype({column: "float64" for column in raw.select_dtypes("number").columns})
    probabilities = np.asarray(model.predict(example))
    assert probabilities.shape == (20, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-12)

    results = DeltaTable(str(tmp_path / "results")).to_pandas()
    assert len(results) == 2 * EPOCHS + int(children["lr=1000"].data.metrics["epochs_run"])
    assert set(results.child_run_id) == {c.info.run_id for c in children.values()}
    assert (results.parent_run_id == parent.info.run_id).all() and (results.data_version == 1).all()

    # a rerun of the finished sweep (it trains and adds nothing) is tested in-process in
    # tests/integration/test_sweep_tracking.py and through spark-submit against a server in tests/e2e/test_faults.py
    assert len(client.search_model_versions(f"name='{MODEL}'")) == 1

    scored = spark_submit("score.py", *args)
    assert scored.returncode == 0, scored.stdout[-4000:]
    assert f"with {MODEL} version 1" in scored.stdout
    predictions = DeltaTable(str(tmp_path / "predictions")).to_pandas()
    assert len(predictions) == len(DeltaTable(demo_table).to_pandas(columns=["customer_id"]))
    assert predictions.prediction.dropna().between(0, 1).all()
    assert (predictions.model_name == MODEL).all() and (predictions.model_version == "1").all()
    assert (predictions.model_run_id == parent.info.run_id).all() and (predictions.source_version == 1).all()

