"""The same code on a Spark standalone cluster (a master and two workers on loopback), and faults.

Losing a Python worker or a whole executor mid-epoch must only cost a retry: the curves and models are
identical to an undisturbed run's.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from pipelines import PROJECT_ROOT
from pipelines.session import spark_submit_args

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():  # type: ignore[operator]
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A standalone master and two one-core workers on 127.0.0.1; yields the master URL."""
    work = tmp_path_factory.mktemp("cluster")
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
           "SPARK_WORKER_DIR": str(work)}
    port, ui = free_port(), free_port()
    spark_class = str(BIN / "spark-class")
    processes = [subprocess.Popen(
        [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
         "--webui-port", str(ui)], env=env, stdout=subprocess.DEVNULL, stderr=(work / "master.log").open("w"))]
    master = f"spark://127.0.0.1:{port}"
    try:
        wait_for(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() is None, 60, "master")
        for index in range(2):
            processes.append(subprocess.Popen(
                [spark_class, "org.apache.spark.deploy.worker.Worker", master, "--host", "127.0.0.1", "--cores", "1",
                 "--memory", "1500m", "--webui-port", str(free_port()), "--work-dir", str(work / f"worker{index}")],
                env=env, stdout=subprocess.DEVNULL, stderr=(work / f"worker{index}.log").open("w")))

        def two_workers() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{ui}/json/", timeout=2) as response:
                return int(json.load(response).get("aliveworkers", 0)) == 2

        wait_for(two_workers, 90, "two workers to register")
        yield master
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


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
    return dict(json.loads(output.read_text()))


def test_sweep_on_standalone_cluster_survives_lost_worker_and_executor(
    cluster: str, cluster_table: str, tmp_path: Path,
) -> None:
    undisturbed = submit_sweep(cluster, cluster_table, tmp_path / "undisturbed.json")
    assert undisturbed["master"] == cluster  # spark-submit's --master wins over spark.master in conf
    assert undisturbed["executors"] == 2
    statuses = [rate["status"] for rate in undisturbed["rates"]]  # type: ignore[union-attr]
    assert statuses[:3] == ["completed"] * 3 and statuses[3] == "diverged"

    for kind in ("python_worker", "executor"):
        marker = tmp_path / f"{kind}.fired"
        fault = f"spark.executorEnv.LRSWEEP_INJECT_FAULT={kind}:epoch=2:partition=1:once={marker}"
        disturbed = submit_sweep(cluster, cluster_table, tmp_path / f"{kind}.json", "--conf", fault)
        assert marker.exists(), f"the {kind} fault did not fire"
        assert disturbed["rates"] == undisturbed["rates"], f"results differ after losing a {kind}"
