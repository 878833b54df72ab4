"""Every notebook is committed clean: nbformat 4, no outputs, no execution counts, a parameters cell first.

The parameters cell must hold plain ``NAME = literal`` assignments: the end-to-end test replaces it, and a
parameterizing runner (papermill) finds it by its ``parameters`` tag.
"""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = ["01_explore_feature_table.ipynb", "02_run_sweep.ipynb", "03_compare_runs.ipynb", "04_history.ipynb"]


def parameter_names(source: str) -> list[str]:
    """The names a parameters cell assigns; raises ``ValueError`` on anything but ``NAME = literal``."""
    names = []
    for statement in ast.parse(source).body:
        if not (isinstance(statement, ast.Assign) and len(statement.targets) == 1
                and isinstance(statement.targets[0], ast.Name)):
            raise ValueError(f"line {statement.lineno}: only `NAME = literal` assignments belong here")
        ast.literal_eval(statement.value)  # raises ValueError on expressions
        names.append(statement.targets[0].id)
    return names


def test_the_notebooks_are_all_there() -> None:
    assert [path.name for path in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_is_clean_nbformat_4(path: Path) -> None:
    notebook = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    assert notebook.nbformat == 4
    nbformat.validate(notebook)
    kernelspec = notebook.metadata.get("kernelspec", {})
    assert kernelspec.get("name") == "python3" and kernelspec.get("language") == "python"

    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells, "no code cells"
    dirty = [index for index, cell in enumerate(notebook.cells)
             if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)]
    assert not dirty, f"cells {dirty} have outputs or execution counts: clear them before committing"

    parameters, *rest = code_cells
    assert "parameters" in parameters.metadata.get("tags", []), "the first code cell must be tagged 'parameters'"
    assert not [cell for cell in rest if "parameters" in cell.metadata.get("tags", [])], "one parameters cell"
    names = parameter_names(parameters.source)
    assert "OVERRIDES" in names and "WORKDIR" in names and len(set(names)) == len(names)


def test_parameter_names_rejects_logic() -> None:
    assert parameter_names('TABLE = "t"\nOVERRIDES = ["a=1"]\nURI = None') == ["TABLE", "OVERRIDES", "URI"]
    with pytest.raises(ValueError, match="only `NAME = literal`"):
        parameter_names("import os")
    with pytest.raises(ValueError):
        parameter_names("TABLE = os.environ['TABLE']")
