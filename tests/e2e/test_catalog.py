"""Catalog names across jobs: with a metastore every job of a sweep finds the tables by name.

Two separate ``python -m pipelines`` processes (each its own JVM) share Spark's Hive catalog through an
embedded Derby metastore and a warehouse in a temporary folder: the demo table is written as
``lrsweep_e2e.churn`` by one and swept by the other, whose results table is a name too.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipelines import PROJECT_ROOT
from tests.conftest import empty_store

pytestmark = pytest.mark.slow


def _run(command: str, settings: list[str]) -> subprocess.CompletedProcess[str]:
    args = [arg for setting in settings for arg in ("--set", setting)]
    return subprocess.run([sys.executable, "-m", "pipelines", command, *args], capture_output=True, text=True,
                          timeout=900, check=False, cwd=PROJECT_ROOT)


def test_catalog_names_work_across_jobs_with_a_metastore(tmp_path: Path) -> None:
    metastore = f"jdbc:derby:;databaseName={tmp_path / 'metastore_db'};create=true"
    settings = [
        f"spark.conf={{spark.sql.catalogImplementation: hive, spark.sql.warehouse.dir: '{tmp_path / 'warehouse'}', "
        f"spark.hadoop.javax.jdo.option.ConnectionURL: '{metastore}', spark.ui.enabled: 'false'}}",
        "spark.master=local[2]", "data.table=lrsweep_e2e.churn", "output.results_table=lrsweep_e2e.sweep_results",
        "output.predictions_table=lrsweep_e2e.predictions", f"output.checkpoints={tmp_path / 'checkpoints'}",
        f"tracking.uri={empty_store(tmp_path)}", "tracking.experiment=catalog",
        "tracking.registered_model=catalog_churn", "demo.rows=5000", "demo.append_rows=500", "train.epochs=2",
        "sweep.learning_rates=[0.01, 0.1]", "sweep.id=catalog-1",
    ]
    for command in ("demo-table", "sweep"):
        result = _run(command, settings)
        assert result.returncode == 0, f"{command}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    assert "lrsweep_e2e.churn at version 1" in result.stdout
    assert "rows appended to lrsweep_e2e.sweep_results" in result.stdout

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("catalog")
    assert experiment is not None
    [parent] = client.search_runs([experiment.experiment_id], "tags.`lrsweep.role` = 'parent'")
    [dataset] = parent.inputs.dataset_inputs
    source = dataset.dataset.source.replace(" ", "")
    assert '"delta_table_name":"lrsweep_e2e.churn"' in source and '"delta_table_version":1' in source
    assert "is_databricks_uc_table" not in source  # a Hive-catalog table is not a Unity Catalog table
