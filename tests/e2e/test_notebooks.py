"""Execute the notebooks in order with papermill, as ``make notebooks`` does: explore, run a sweep, compare.

Each notebook runs in its own ``python3`` kernel (this interpreter, through a kernelspec written to tmp) with
its own Spark, against the suite's small demo table. Papermill injects the parameters after the cell tagged
``parameters``; the MLflow store (sqlite), the results table and every relative output live in tmp.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat import NotebookNode

from tests.conftest import empty_store
from tests.unit.test_notebook_format import NOTEBOOK_DIR, parameter_names

pytestmark = pytest.mark.slow

SWEEP_ID = "notebook-sweep-1"
LEARNING_RATES = [0.01, 0.1]
EPOCHS = 2
CELL_TIMEOUT = 600


def run_notebook(name: str, values: dict[str, Any], executed_dir: Path) -> NotebookNode:
    """Execute ``notebooks/<name>`` with papermill and ``values`` as its parameters; return it executed.

    The executed copy is written to ``executed_dir`` (also after a failure, to look at).
    """
    import papermill

    notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    [parameters] = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    names = parameter_names(parameters.source)
    missing = sorted(set(names) - set(values))
    assert not missing, f"{name}: no test value for parameter(s) {missing}"
    # The kernel starts in notebooks/, as under Jupyter; the notebook moves to WORKDIR itself.
    papermill.execute_notebook(str(NOTEBOOK_DIR / name), str(executed_dir / name), kernel_name="python3",
                               parameters={key: values[key] for key in names}, cwd=str(NOTEBOOK_DIR),
                               execution_timeout=CELL_TIMEOUT, progress_bar=False)
    return nbformat.read(executed_dir / name, as_version=4)


def cell_text(notebook: NotebookNode, cell_id: str) -> str:
    """Everything cell ``cell_id`` printed or returned, as text."""
    [cell] = [cell for cell in notebook.cells if cell.get("id") == cell_id]
    parts = []
    for output in cell.outputs:
        if output.output_type == "stream":
            parts.append(output.text)
        elif "data" in output:
            parts.append(output.data.get("text/plain", ""))
    return "".join(parts)


def has_image(notebook: NotebookNode, cell_id: str) -> bool:
    [cell] = [cell for cell in notebook.cells if cell.get("id") == cell_id]
    return any("image/png" in output.get("data", {}) for output in cell.outputs)


def test_notebooks_explore_run_and_compare_a_sweep(demo_table: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager

    # A python3 kernelspec for this interpreter, first on Jupyter's search path (ahead of user-level ones).
    write_kernel_spec(tmp_path / "jupyter" / "kernels" / "python3")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    assert KernelSpecManager().get_kernel_spec("python3").argv[0] == sys.executable
    # Kernels inherit this environment: Spark's Python workers run this interpreter too, each kernel starts
    # its own JVM (never this process's gateway), and nothing points MLflow elsewhere.
    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
    monkeypatch.setenv("PYSPARK_DRIVER_PYTHON", sys.executable)
    for variable in ("PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(variable, raising=False)

    workdir = tmp_path / "work"
    executed = tmp_path / "executed"
    workdir.mkdir()
    executed.mkdir()
    values = {
        "ENV": "local",
        "TABLE": demo_table,
        "RESULTS_TABLE": str(workdir / "results"),
        "TRACKING_URI": empty_store(workdir),
        "EXPERIMENT": "notebook-sweeps",
        "SWEEP_ID": None,
        "OVERRIDES": [f"train.epochs={EPOCHS}", f"sweep.learning_rates={LEARNING_RATES}", f"sweep.id={SWEEP_ID}",
                      f"output.checkpoints={workdir / 'checkpoints'}",
                      "tracking.register_when=never", "spark.master=local[2]", "spark.shuffle_partitions=2",
                      "spark.conf={spark.ui.enabled: 'false'}"],
        "WORKDIR": str(workdir),
    }

    explore = run_notebook("01_explore_feature_table.ipynb", values, executed)
    assert f"python {sys.executable}" in cell_text(explore, "setup")
    assert "Ivy" not in cell_text(explore, "setup") and "::" not in cell_text(explore, "setup")  # quiet start
    assert (workdir / "spark-notebook.log").exists()
    assert "2 versions: 0 .. 1" in cell_text(explore, "versions")
    assert "WRITE" in cell_text(explore, "history")
    assert "version 1 " in cell_text(explore, "schema") and "|-- churned: integer" in cell_text(explore, "schema")
    assert "label 'churned'" in cell_text(explore, "profile") and "nulls" in cell_text(explore, "profile")
    assert "fraction" in cell_text(explore, "balance")

    sweep = run_notebook("02_run_sweep.ipynb", values, executed)
    summary = cell_text(sweep, "summary")
    match = re.search(rf"sweep {SWEEP_ID}: parent run (\w+), {len(LEARNING_RATES)} child runs", summary)
    assert match, summary
    parent_run_id = match.group(1)
    assert has_image(sweep, "loss-curves") and has_image(sweep, "val-loss-vs-rate")

    compare = run_notebook("03_compare_runs.ipynb", values, executed)
    assert "1 sweeps in experiment 'notebook-sweeps'" in cell_text(compare, "sweeps")
    assert (f"sweep {SWEEP_ID}: parent run {parent_run_id}, {len(LEARNING_RATES)} child runs"
            in cell_text(compare, "children"))
    assert f"{len(LEARNING_RATES) * EPOCHS} rows of sweep {SWEEP_ID}" in cell_text(compare, "results")
    agreement = re.search(r"(\d+) \(rate, epoch\) pairs in both stores; largest val_loss difference (\S+)",
                          cell_text(compare, "agreement"))
    assert agreement, cell_text(compare, "agreement")
    assert int(agreement.group(1)) == len(LEARNING_RATES) * EPOCHS and float(agreement.group(2)) < 1e-9
    assert has_image(compare, "curves") and has_image(compare, "final-by-rate")

    history = run_notebook("04_history.ipynb", values, executed)
    assert "1 sweeps of table" in cell_text(history, "query") and SWEEP_ID in cell_text(history, "query")
    assert "skipped:" in cell_text(history, "query")  # tracking.register_when=never
    assert has_image(history, "figure")
    # Relative outputs went to the working folder, not into the checkout.
    assert (workdir / "mlartifacts").is_dir() and not (workdir / "mlruns").exists()  # next to the store
