"""Shared fixtures: one SparkSession for the whole suite, a small demo Delta table, configs.

Spark starts once (about 10 s); tests that need it take the ``spark`` fixture, unit tests never do.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest

from pipelines.config import Config, load_config

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# Spark generates the Java source of an expression projection (UnsafeProjection.create) in every task that needs
# one, before its compiled-class cache is consulted: over the suite's small, wide tables that text (a regex pass over
# it) was a third of the JVMs' CPU (Java Flight Recorder, tests/integration/test_resume.py). Spark's own test
# setting ``spark.sql.codegen.factoryMode=NO_CODEGEN`` interprets projections instead (test_resume.py: 213 -> 165
# CPU-seconds, same results). Whole-stage code generation stays on; :func:`generated_projections` turns the
# generated projections back on for the modules about odd column names and types, as lrsweep runs by default.
INTERPRETED_PROJECTIONS = {"spark.sql.codegen.factoryMode": "NO_CODEGEN"}
# The JVMs the end-to-end tests start (spark-submit jobs, the Connect server, a standalone cluster) run seconds,
# not hours: C1-only compilation and the serial collector make such a job ~20% faster. The suite's own session
# lives for the whole run and does the most work: it starts without them (see the ``spark`` fixture).
SHORT_JVM_OPTS = " ".join(["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC",
                           *(f"-D{key}={value}" for key, value in INTERPRETED_PROJECTIONS.items())])
os.environ.setdefault("SPARK_SUBMIT_OPTS", SHORT_JVM_OPTS)

#: The level of the pyramid each test directory is, as a marker: ``-m unit`` runs in a few minutes without Spark.
LEVELS = {"unit": "unit", "integration": "spark", "e2e": "e2e"}
#: The longest module (a third of the end-to-end time: a reference sweep and 12 spark-submits against it): first
#: in the run, so that under xdist it does not end the run alone.
FIRST_MODULES = ("test_faults.py",)
#: Modules that start the same session-scoped standalone cluster (tests/e2e/conftest.py): one xdist worker runs
#: them all, so the cluster starts once per run, not once per worker (see pytest_xdist_make_scheduler).
CLUSTER_MODULES = {"test_cluster.py", "test_install.py"}

N_ROWS = 2400
N_FEATURES = 5
DEMO_ROWS = 4000
DEMO_APPEND_ROWS = 400


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its level (``unit``, ``spark``, ``e2e``; ``slow``, the old name, on ``e2e`` too) from
    its directory; :data:`FIRST_MODULES` first."""
    tests_root = Path(__file__).parent
    items.sort(key=lambda item: Path(str(item.path)).name not in FIRST_MODULES)  # stable: modules stay whole
    for item in items:
        path = Path(str(item.path))
        level = LEVELS.get(path.relative_to(tests_root).parts[0]) if path.is_relative_to(tests_root) else None
        if level is not None:
            item.add_marker(level)
        if level == "e2e":
            item.add_marker("slow")


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, which may not be installed
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile`` (each module whole on one worker, so a module's fixtures, a Spark table, an ``mlflow
    server``, a reference sweep, are built once), except that the modules of :data:`CLUSTER_MODULES` share one
    worker and so one standalone cluster. (``--dist loadgroup`` would say the same with marks, but it cannot
    rename test ids under pytest 9.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class ModulesAndTheCluster(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = str(super()._split_scope(nodeid))
            return "the standalone cluster" if Path(module).name in CLUSTER_MODULES else module

    return ModulesAndTheCluster(config, log)


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
                **INTERPRETED_PROJECTIONS,
            },
        ))
    finally:
        if short_jvm_opts is not None:
            os.environ["SPARK_SUBMIT_OPTS"] = short_jvm_opts
    yield session
    session.stop()


@pytest.fixture(scope="module")
def generated_projections(spark: SparkSession) -> Iterator[None]:
    """The module's Spark jobs with generated projections, Spark's default (see :data:`INTERPRETED_PROJECTIONS`)."""
    [(key, interpreted)] = INTERPRETED_PROJECTIONS.items()
    spark.conf.set(key, "FALLBACK")
    try:
        yield
    finally:
        spark.conf.set(key, interpreted)


@pytest.fixture(scope="session")
def demo_table(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small churn table (versions 0 and 1) shared by the integration tests; never modified."""
    from pipelines.lakehouse.demo_data import write_demo_table

    path = str(tmp_path_factory.mktemp("lake") / "churn_features")
    config = make_config(path, tmp_path_factory.mktemp("out"),
                         [f"demo.rows={DEMO_ROWS}", f"demo.append_rows={DEMO_APPEND_ROWS}", "demo.partitions=2"])
    write_demo_table(spark, config.demo, config.data.table)
    return path


_empty_stores: list[Path] = []  # the empty MLflow store of this pytest process, once made


def empty_store(workdir: Path) -> str:
    """The sqlite URI of an MLflow store under ``workdir``, created empty if it is not there.

    A new sqlite store runs MLflow's schema migrations: 2-3 s on an idle machine of this kind, 8-20 s on a
    loaded one, once for every test that tracks a sweep. The store is instead a copy of one empty store migrated
    once per pytest process (0.2 s): the same tables and rows a new store starts with, and still one store per
    test, so no test sees another's runs, experiments or registered models. (Racing on a store that does not
    exist yet is tested end to end: tests/e2e/test_faults.py.)"""
    store = workdir / "mlflow.db"
    if not store.exists():
        if not _empty_stores:
            from mlflow import MlflowClient

            template = Path(tempfile.mkdtemp(prefix="lrsweep-empty-store-")) / "mlflow.db"
            atexit.register(shutil.rmtree, template.parent, True)
            MlflowClient(tracking_uri=f"sqlite:///{template}").search_experiments()  # creates and migrates it
            _empty_stores.append(template)
        workdir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_empty_stores[0], store)
    return f"sqlite:///{store}"


def make_config(table: str, workdir: Path, overrides: list[str] | None = None) -> Config:
    """The base configuration pointed at ``table``, with outputs and MLflow (:func:`empty_store`) under
    ``workdir``."""
    return load_config(overrides=[
        f"data.table={table}",
        f"output.checkpoints={workdir / 'checkpoints'}",
        f"output.results_table={workdir / 'results'}",
        f"output.predictions_table={workdir / 'predictions'}",
        f"tracking.uri={empty_store(workdir)}",
        *(overrides or []),
    ])


def table_overrides(table: str, workdir: Path) -> list[str]:
    """``--set`` arguments equivalent to :func:`make_config` (for running jobs in-process)."""
    return [
        "--set", f"data.table={table}",
        "--set", f"output.results_table={workdir / 'results'}",
        "--set", f"output.predictions_table={workdir / 'predictions'}",
        "--set", f"tracking.uri={empty_store(workdir)}",
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
