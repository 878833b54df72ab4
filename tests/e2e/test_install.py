"""lrsweep as a user installs it: the wheel in a fresh virtualenv, and the README's cluster recipe as written.

The README's build step runs in a copy of the repository (it builds ``dist/``: the wheel, a virtualenv with
it installed, and that environment packed for executors). Then, from an empty folder outside the repository,
the installed ``lrsweep`` command writes the demo table and runs a sweep on local Spark; and the README's run
step runs a sweep on a standalone cluster whose workers' Python has nothing of lrsweep (nor numpy) installed:
only the shipped environment makes the executors work.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipelines import PROJECT_ROOT

pytestmark = pytest.mark.slow

DEMO = ["--set", "demo.rows=20000", "--set", "demo.append_rows=2000", "--set", "spark.master=local[2]"]


def readme_block(marker: str) -> str:
    """The first ```bash block after ``<!-- marker -->`` in the README."""
    text = (PROJECT_ROOT / "README.md").read_text()
    after = text[text.index(f"<!-- {marker} -->"):]
    match = re.search(r"```bash\n(.*?)```", after, re.DOTALL)
    assert match, f"no bash block after <!-- {marker} -->"
    return match.group(1)


def clean_environment() -> dict[str, str]:
    """This process's environment without what points at the test suite's own virtualenv and Spark."""
    dropped = ("PYSPARK_", "SPARK_HOME", "SPARK_CONF_DIR", "VIRTUAL_ENV", "MLFLOW_TRACKING_URI", "LRSWEEP_")
    env = {key: value for key, value in os.environ.items() if not key.startswith(dropped)}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(part for part in env.get("PATH", "").split(os.pathsep) if part != venv_bin)
    return env


def bash(script: str, cwd: Path, timeout: float = 1800, **extra: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, capture_output=True, text=True,
                            timeout=timeout, check=False, env={**clean_environment(), **extra})
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository after the README's build step; returns the copy."""
    source = tmp_path_factory.mktemp("checkout") / "lrsweep"
    shutil.copytree(PROJECT_ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", ".git", "data", "dist", "mlflow.db*", "mlartifacts", "mlruns", "*.egg-info", "__pycache__",
        ".pytest_cache", ".mypy_cache", ".ruff_cache", "spark-warehouse", "jars"))
    # pip byte-compiles all it installs: 10,700 .pyc files, 41% of the install step's time (360 s -> 211 s beside
    # other work) and 72 MB of the packed environment (768 -> 696 MB); a job compiles what it imports anyway
    bash(readme_block("cluster-build"), cwd=source, PIP_COMPILE="0")
    assert (source / "dist" / "lrsweep-env.tar.gz").stat().st_size > 0
    return source


@pytest.fixture(scope="module")
def elsewhere(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty folder outside the repository where the installed command wrote the demo table."""
    folder = tmp_path_factory.mktemp("elsewhere")
    bash(f"{built / 'dist' / 'env' / 'bin' / 'lrsweep'} demo-table {' '.join(DEMO)}", cwd=folder)
    return folder


def test_the_wheel_gives_an_lrsweep_command_that_works_from_an_empty_folder(built: Path, elsewhere: Path) -> None:
    lrsweep = built / "dist" / "env" / "bin" / "lrsweep"
    empty = elsewhere  # but for the demo table
    shown = bash(f"{lrsweep} config --set train.epochs=2", cwd=empty).stdout
    assert "site-packages/pipelines/conf/base/data.yml" in shown  # the packaged defaults, not a checkout
    assert f"table: {empty}/data/delta/churn_features" in shown and f"sqlite:///{empty}/mlflow.db" in shown
    swept = bash(f"{lrsweep} sweep --set train.epochs=2 --set spark.master=local[2]", cwd=empty)
    assert "epoch 2/2: best lr=" in swept.stdout
    left = {path.name for path in empty.iterdir()}  # spark-warehouse: Spark's own default warehouse folder
    assert {"data", "mlflow.db"} <= left <= {"data", "mlflow.db", "mlartifacts", "mlflow.db.lock", "spark-warehouse"}
    client = MlflowClient(tracking_uri=f"sqlite:///{empty / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lrsweep-churn")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert sum(run.data.tags.get("lrsweep.role") == "parent" for run in runs) == 1
    assert sum(run.data.tags.get("lrsweep.role") == "child" for run in runs) == 8
    assert all(run.info.status == "FINISHED" for run in runs)


def test_the_readmes_cluster_recipe_runs_on_bare_executors(built: Path, elsewhere: Path, cluster: str) -> None:
    demo = Path("data", "delta", "churn_features")  # the default data.table
    shutil.copytree(elsewhere / demo, built / demo)
    run = readme_block("cluster-run").replace("spark://master:7077", cluster)
    swept = bash(run.rstrip() + " --set train.epochs=2 --set sweep.learning_rates=[0.01,0.1]", cwd=built)
    assert "epoch 2/2: best lr=" in swept.stdout, swept.stdout[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{built / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lrsweep-churn")
    assert experiment is not None
    [parent] = client.search_runs([experiment.experiment_id], "tags.`lrsweep.role` = 'parent'")
    assert parent.data.tags["lrsweep.spark_master"] == cluster and parent.info.status == "FINISHED"
