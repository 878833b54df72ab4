"""The same code on a Spark standalone cluster (a master and two workers on loopback), and faults.

Losing a Python worker or a whole executor mid-epoch must only cost a retry: the curves and models are
identical to an undisturbed run's. The cluster (``tests/e2e/conftest.py``) is shared with the README's cluster
recipe test; its workers' own Python is bare, so these jobs name the virtualenv's Python for their executors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from pipelines import PROJECT_ROOT
from pipelines.session import spark_submit_args

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def cluster_table(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> str:
    from pipelines.config import DemoConfig
    from pipelines.lakehouse.demo_data import write_demo_table

    path = str(tmp_path_factory.mktemp("cluster_lake") / "churn")
    write_demo_table(spark, DemoConfig(rows=6000, append_rows=600, partitions=2), path)
    return path


def submit_sweep(master: str, table: str, output: Path, *conf: str) -> dict[str, object]:
    command = [str(BIN / "spark-submit"), "--master", master, "--total-executor-cores", "2",
               "--executor-memory", "1g", *spark_submit_args(), *conf,
               str(PROJECT_ROOT / "tests" / "e2e" / "cluster_driver.py"), str(output),
               "--set", f"data.table={table}", "--set", "train.epochs=4", "--set", "train.num_partitions=4",
               "--set", "sweep.learning_rates=[0.01, 0.1, 1.0, 300.0]", "--set", "spark.master=local[1]"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False,
                            env={**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"})
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if "rror" in line or "Exception" in line or line.startswith("error:")]
    assert result.returncode == 0, "\n".join(problems[-30:]) or result.stdout[-3000:]
    return {**json.loads(output.read_text()), "output": result.stdout + result.stderr}


def test_sweep_on_standalone_cluster_survives_lost_worker_and_executor(
    cluster: str, cluster_table: str, tmp_path: Path,
) -> None:
    undisturbed = submit_sweep(cluster, cluster_table, tmp_path / "undisturbed.json")
    assert undisturbed["master"] == cluster  # spark-submit's --master wins over spark.master in conf
    assert (f"warning: spark.master 'local[1]' of the configuration is not used: the session runs on {cluster!r}"
            in str(undisturbed["output"]))  # and says so
    assert undisturbed["executors"] == 2
    statuses = [rate["status"] for rate in undisturbed["rates"]]  # type: ignore[union-attr]
    assert statuses[:3] == ["completed"] * 3 and statuses[3] == "diverged"

    for kind in ("python_worker", "executor"):
        marker = tmp_path / f"{kind}.fired"
        fault = f"spark.executorEnv.LRSWEEP_INJECT_FAULT={kind}:epoch=2:partition=1:once={marker}"
        disturbed = submit_sweep(cluster, cluster_table, tmp_path / f"{kind}.json", "--conf", fault)
        assert marker.exists(), f"the {kind} fault did not fire"
        assert disturbed["rates"] == undisturbed["rates"], f"results differ after losing a {kind}"
