"""spark-submit jobs/make_demo_table.py writes a real Delta table that delta-rs reads too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import PROJECT_ROOT

pytestmark = pytest.mark.slow


def spark_submit(job: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """Run ``spark-submit jobs/<job>`` from this virtualenv, as the Makefile does."""
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    submit = str(Path(sys.executable).parent / "spark-submit")
    from pipelines.session import spark_submit_args

    command = [submit, "--master", "local[2]", *spark_submit_args(), str(PROJECT_ROOT / "jobs" / job), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=PROJECT_ROOT, check=False)


def run_job(job: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python jobs/<job>`` from this virtualenv without spark-submit: for a configuration that fails to
    load, which the job refuses before Spark starts (a spark-submit would add 20-60 s of JVM start; that it passes
    the job's exit code on is tested with exit 2, 4 and 143 in tests/e2e/test_store_faults.py and test_faults.py)."""
    return subprocess.run([sys.executable, str(PROJECT_ROOT / "jobs" / job), *args], capture_output=True, text=True,
                          timeout=300, cwd=PROJECT_ROOT, check=False)


def test_make_demo_table_writes_versioned_delta_table(tmp_path: Path) -> None:
    from deltalake import DeltaTable

    path = tmp_path / "churn"
    result = spark_submit("make_demo_table.py", "--set", f"data.table={path}", "--set", "demo.rows=3000",
                          "--set", "demo.append_rows=500", "--set", "demo.partitions=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"demo table {path}: 3500 rows, versions [0, 1]" in result.stdout

    table = DeltaTable(str(path))  # delta-rs: an independent Delta implementation
    assert table.version() == 1
    assert [entry["operation"] for entry in table.history()][::-1][:2] == ["WRITE", "WRITE"]
    latest = table.to_pyarrow_table()
    assert latest.num_rows == 3500
    assert {"customer_id", "churned", "lifetime_value", "tenure_months", "noise_1"} <= set(latest.column_names)
    churned = latest.column("churned").to_pylist()
    assert set(churned) == {0, 1} and 0.05 < sum(churned) / len(churned) < 0.6
    assert latest.column("satisfaction_score").null_count > 0
    table.load_as_version(0)
    assert table.to_pyarrow_table().num_rows == 3000


def test_bad_configuration_exits_non_zero_with_one_line(tmp_path: Path) -> None:
    result = run_job("make_demo_table.py", "--set", "demo.rows=-5")
    assert result.returncode == 2
    assert "error: conf: demo.rows = -5: must be >= 10" in result.stderr


def test_a_value_the_engine_refuses_fails_at_load_before_any_store_exists(tmp_path: Path) -> None:
    store = tmp_path / "mlflow.db"
    result = run_job("train_sweep.py", "--set", "train.schedule.name=one_cycle",
                          "--set", "train.schedule.div_factor=0.5", "--set", f"tracking.uri=sqlite:///{store}")
    assert result.returncode == 2
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error:")]
    assert lines == ["error: conf: train.schedule.div_factor = 0.5: must be a number >= 1"]
    assert "Traceback" not in result.stdout + result.stderr
    assert not store.exists()  # nothing was touched: the rule is checked when the configuration loads
