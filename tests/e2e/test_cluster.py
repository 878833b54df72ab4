"""The same code on a Spark standalone cluster (a master and two workers on loopback), and faults.

Losing a Python worker or a whole executor mid-epoch must only cost a retry: the curves and models are
identical to an undisturbed run's (the suite's own local session sweeping the same table with the same
partitioning: the blocks, hence the results, depend on neither the master nor the executors). The cluster
(``tests/e2e/conftest.py``) is shared with the README's cluster recipe test; its workers' own Python is bare,
so these jobs name the virtualenv's Python for their executors.
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
from pipelines.config import load_config
from pipelines.session import spark_submit_args
from tests.e2e.cluster_driver import sweep_rates

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
# the Spark executor: the faults are lost Python workers and executors (auto would run this small table's tasks in
# the driver)
SETTINGS = ["train.epochs=4", "train.num_partitions=4", "sweep.learning_rates=[0.01, 0.1, 1.0, 300.0]",
            "train.executor=spark"]


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
               *[arg for setting in SETTINGS for arg in ("--set", setting)], "--set", f"data.table={table}",
               "--set", "spark.master=local[1]"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False,
                            env={**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"})
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if "rror" in line or "Exception" in line or line.startswith("error:")]
    assert result.returncode == 0, "\n".join(problems[-30:]) or result.stdout[-3000:]
    return {**json.loads(output.read_text()), "output": result.stdout + result.stderr}


def test_sweep_on_standalone_cluster_survives_lost_worker_and_executor(
    cluster: str, cluster_table: str, spark: SparkSession, tmp_path: Path,
) -> None:
    # the undisturbed sweep: the suite's own local session, same table, settings and partitioning
    undisturbed, _ = sweep_rates(spark, load_config(overrides=[*SETTINGS, f"data.table={cluster_table}"]))
    statuses = [rate["status"] for rate in undisturbed]
    assert statuses[:3] == ["completed"] * 3 and statuses[3] == "diverged"

    # one cluster sweep loses a Python worker in epoch 2, then a whole executor (its cached blocks) in epoch 3
    markers = {kind: tmp_path / f"{kind}.fired" for kind in ("python_worker", "executor")}
    faults = f"python_worker:epoch=2:partition=1:once={markers['python_worker']}," \
             f"executor:epoch=3:partition=0:once={markers['executor']}"
    disturbed = submit_sweep(cluster, cluster_table, tmp_path / "disturbed.json",
                             "--conf", f"spark.executorEnv.LRSWEEP_INJECT_FAULT={faults}")
    assert disturbed["master"] == cluster  # spark-submit's --master wins over spark.master in conf
    assert (f"warning: spark.master 'local[1]' of the configuration is not used: the session runs on {cluster!r}"
            in str(disturbed["output"]))  # and says so
    assert disturbed["executors"] == 2
    for kind, marker in markers.items():
        assert marker.exists(), f"the {kind} fault did not fire"
    assert disturbed["rates"] == undisturbed, "results differ after losing a Python worker and an executor"
