"""lrsweep as a Spark Connect client: a real Connect server (Delta on its classpath) runs the jobs.

The server is started from this virtualenv the way the pyspark wheel allows (it has no sbin scripts):
``spark-submit --class org.apache.spark.sql.connect.service.SparkConnectServer ... spark-internal``. The
sweep and the scoring job run as plain ``python`` clients with ``SPARK_REMOTE``; the sweep's curves must
equal a classic-mode run's of the same settings, bit for bit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from pyspark.sql import SparkSession

from pipelines import PROJECT_ROOT
from pipelines.orchestration.sweep import run_tracked_sweep
from pipelines.session import DELTA_CATALOG, DELTA_EXTENSION, spark_submit_args
from tests.conftest import make_config
from tests.e2e.harness import free_port, port_open, wait_for

pytestmark = pytest.mark.slow

SETTINGS = ["sweep.learning_rates=[0.01, 0.1, 1.0]", "train.epochs=3", "train.num_partitions=2",
            "tracking.experiment=connect", "tracking.register_when=always", "tracking.registered_model=connect_churn"]


@pytest.fixture(scope="module")
def connect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], str]]:
    """A local Spark Connect server with Delta, started in the background; yields a function returning its
    ``sc://`` URL once it listens (a test can do other work while the server starts)."""
    root = tmp_path_factory.mktemp("connect-server")
    port = free_port()
    command = [str(Path(sys.executable).parent / "spark-submit"), "--master", "local[2]", *spark_submit_args(),
               "--class", "org.apache.spark.sql.connect.service.SparkConnectServer",
               "--conf", f"spark.connect.grpc.binding.port={port}", "--conf", f"spark.sql.extensions={DELTA_EXTENSION}",
               "--conf", f"spark.sql.catalog.spark_catalog={DELTA_CATALOG}", "--conf", "spark.ui.enabled=false",
               "--conf", "spark.default.parallelism=2", "--conf", f"spark.sql.warehouse.dir={root / 'warehouse'}",
               "spark-internal"]
    log = (root / "server.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root,
                              env={**os.environ, "PYSPARK_PYTHON": sys.executable})

    def listening() -> bool:
        if server.poll() is not None:
            raise RuntimeError(f"Connect server exited: {(root / 'server.log').read_text()[-3000:]}")
        return port_open(port)

    def url() -> str:
        wait_for(listening, 240, "the Spark Connect server")
        return f"sc://127.0.0.1:{port}"

    try:
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _client(job: str, remote: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python jobs/<job>`` as a Connect client (no JVM of its own)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYSPARK_GATEWAY")}
    return subprocess.run([sys.executable, str(PROJECT_ROOT / "jobs" / job), *args], capture_output=True,
                          text=True, timeout=900, check=False, cwd=PROJECT_ROOT,
                          env={**env, "SPARK_REMOTE": remote})


def test_sweep_and_scoring_through_spark_connect_equal_classic_mode(
    connect_server: Callable[[], str], spark: SparkSession, demo_table: str, tmp_path: Path,
) -> None:
    # classic: the tasks in the driver; through Connect: Spark jobs (the DataFrame manifest, staging on the server's
    # executors). The same bits either way.
    config = make_config(demo_table, tmp_path, [*SETTINGS, "sweep.id=classic", "train.executor=driver"])
    classic = run_tracked_sweep(spark, config, progress=None)  # while the Connect server starts
    remote_url = connect_server()

    overrides = [arg for setting in [f"data.table={demo_table}", f"output.results_table={tmp_path / 'results'}",
                                     f"output.predictions_table={tmp_path / 'predictions'}",
                                     f"output.checkpoints={tmp_path / 'checkpoints'}",
                                     f"tracking.uri={config.tracking.uri}", *SETTINGS, "sweep.id=remote",
                                     "train.executor=spark"]
                 for arg in ("--set", setting)]
    swept = _client("train_sweep.py", remote_url, *overrides)
    assert swept.returncode == 0, swept.stdout[-3000:] + swept.stderr[-3000:]
    assert "epoch 3/3: best lr=" in swept.stdout and "Traceback" not in swept.stderr

    client = MlflowClient(tracking_uri=config.tracking.uri)
    experiment = client.get_experiment_by_name("connect")
    assert experiment is not None

    def histories(sweep_id: str) -> dict[str, list[tuple[int, float]]]:
        children = client.search_runs([experiment.experiment_id],
                                      f"tags.`lrsweep.sweep_id` = '{sweep_id}' AND tags.`lrsweep.role` = 'child'")
        return {run.info.run_name: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id,
                                                                                                "train_loss"))
                for run in children}

    remote = histories("remote")
    assert remote == histories("classic") and len(remote) == 3  # the same bits through Connect
    assert all(len(points) == 4 for points in remote.values())
    assert classic.outcome.best is not None

    scored = _client("score.py", remote_url, *overrides)
    assert scored.returncode == 0, scored.stdout[-3000:] + scored.stderr[-3000:]
    assert "scored" in scored.stdout and "with connect_churn version" in scored.stdout
    predictions = spark.read.format("delta").load(str(tmp_path / "predictions"))
    assert predictions.count() == spark.read.format("delta").load(demo_table).count()
