"""Shared fixtures: one SparkSession for the whole suite, a small demo Delta table, configs.

Spark starts once (about 10 s); tests that need it take the ``spark`` fixture, unit tests never do.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest

from pipelines.config import Config, load_config

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# The JVMs the end-to-end tests start (spark-submit jobs, the Connect server, a standalone cluster) run seconds,
# not hours: C1-only compilation and the serial collector make such a job ~20% faster. The suite's own session
# lives for the whole run and does the most work: it starts without them (see the ``spark`` fixture).
SHORT_JVM_OPTS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
os.environ.setdefault("SPARK_SUBMIT_OPTS", SHORT_JVM_OPTS)

N_ROWS = 2400
N_FEATURES = 5
DEMO_ROWS = 4000
DEMO_APPEND_ROWS = 400


@pytest.fixture(autouse=True, scope="module")
def _mlflow_uris_restored_after_each_module() -> Iterator[None]:
    """A sweep run in this process points MLflow's tracking and registry URIs at its store, in MLflow's globals
    and in the environment variables it exports for subprocesses (as a notebook user would want). A module's
    tests may rely on that; the next module starts from the suite's own state, never from another's store."""
    saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    yield
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
        mlflow.set_registry_uri(None)  # type: ignore[arg-type]
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    from pipelines.config import SparkConfig
    from pipelines.session import get_spark

    warehouse = tmp_path_factory.mktemp("warehouse")
    short_jvm_opts = os.environ.pop("SPARK_SUBMIT_OPTS", None) if os.environ.get("SPARK_SUBMIT_OPTS") == \
        SHORT_JVM_OPTS else None
    try:
        session = get_spark(SparkConfig(
            master="local[2]",
            app_name="lrsweep-tests",
            shuffle_partitions=2,
            conf={
                "spark.ui.enabled": "false",
                "spark.default.parallelism": "2",
                "spark.sql.warehouse.dir": str(warehouse),
                "spark.driver.memory": "2g",
            },
        ))
    finally:
        if short_jvm_opts is not None:
            os.environ["SPARK_SUBMIT_OPTS"] = short_jvm_opts
    yield session
    session.stop()


@pytest.fixture(scope="session")
def demo_table(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small churn table (versions 0 and 1) shared by the integration tests; never modified."""
    from pipelines.lakehouse.demo_data import write_demo_table

    path = str(tmp_path_factory.mktemp("lake") / "churn_features")
    config = make_config(path, tmp_path_factory.mktemp("out"),
                         [f"demo.rows={DEMO_ROWS}", f"demo.append_rows={DEMO_APPEND_ROWS}", "demo.partitions=2"])
    write_demo_table(spark, config.demo, config.data.table)
    return path


def make_config(table: str, workdir: Path, overrides: list[str] | None = None) -> Config:
    """The base configuration pointed at ``table``, with outputs and MLflow under ``workdir``."""
    return load_config(overrides=[
        f"data.table={table}",
        f"output.checkpoints={workdir / 'checkpoints'}",
        f"output.results_table={workdir / 'results'}",
        f"output.predictions_table={workdir / 'predictions'}",
        f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}",
        *(overrides or []),
    ])


def table_overrides(table: str, workdir: Path) -> list[str]:
    """``--set`` arguments equivalent to :func:`make_config` (for running jobs in-process)."""
    return [
        "--set", f"data.table={table}",
        "--set", f"output.results_table={workdir / 'results'}",
        "--set", f"output.predictions_table={workdir / 'predictions'}",
        "--set", f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}",
        "--set", f"output.checkpoints={workdir / 'checkpoints'}",
    ]


@pytest.fixture(scope="session")
def synthetic_tables(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A logistic and a linear problem with features on different scales, as Delta tables."""
    rng = np.random.default_rng(11)
    X = rng.normal(size=(N_ROWS, N_FEATURES)) * np.array([1.0, 10.0, 0.1, 100.0, 3.0]) + np.array([0, 5, 0, 50, 1])
    z = (X - X.mean(0)) / X.std(0) @ np.array([1.5, -2.0, 0.7, 0.0, 1.0]) - 0.3
    frame = pd.DataFrame(X, columns=[f"x{j}" for j in range(N_FEATURES)])
    frame["label"] = (rng.random(N_ROWS) < 1 / (1 + np.exp(-z))).astype(np.int64)
    frame["target"] = z * 3.0 + rng.normal(size=N_ROWS) * 0.5 + 10.0
    root = tmp_path_factory.mktemp("synthetic")
    paths = {}
    for name, drop in (("logistic", "target"), ("squared", "label")):
        paths[name] = str(root / name)
        spark.createDataFrame(frame.drop(columns=[drop])).write.format("delta").save(paths[name])
    return paths
