"""The ``lrsweep`` command without Spark: its subcommands, the resolved configuration, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cli import COMMANDS, command_parser, main


def test_the_command_has_every_job_and_prints_the_resolved_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    assert set(COMMANDS) == {"sweep", "sync", "range-test", "score", "demo-table", "show", "history"}
    help_text = command_parser().format_help()
    assert all(name in help_text for name in [*COMMANDS, "config"])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf" / "nightly").mkdir(parents=True)
    (tmp_path / "conf" / "nightly" / "train.yml").write_text("train:\n  epochs: 4\n")
    assert main(["config", "--env", "nightly", "--set", "sweep.id=n-1"]) == 0
    out = capsys.readouterr().out
    assert "# read" in out and "pipelines/conf/base/train.yml" in out and "conf/nightly/train.yml" in out
    assert "epochs: 4" in out and "id: n-1" in out and f"table: {tmp_path}/data/delta/churn_features" in out


def test_bad_input_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--set", "train.epochs=0"]) == 2
    assert capsys.readouterr().err.strip() == \
        "error: conf: train.epochs = 0: must be >= 1"
    assert main(["sync", "--set", "train.epochs=2"]) == 2  # sync needs the sweep's id
    assert "sweep.id: required to sync a sweep" in capsys.readouterr().err


def test_python_dash_m_pipelines_is_the_command() -> None:
    result = subprocess.run([sys.executable, "-m", "pipelines", "--help"], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0 and "demo-table" in result.stdout and "range-test" in result.stdout


def test_every_command_takes_progress_and_verbose_and_show_takes_a_sweep_id() -> None:
    from pipelines.cli import config_from_args

    args = command_parser().parse_args(["show", "nightly-7", "--progress", "lines", "--verbose"])
    assert (args.sweep_id, args.progress, args.verbose) == ("nightly-7", "lines", True)
    assert config_from_args(args).sweep.id == "nightly-7"  # SWEEP_ID is sweep.id
    args = command_parser().parse_args(["sweep"])
    assert (args.progress, args.verbose) == ("auto", False)
    with pytest.raises(SystemExit) as exited:
        command_parser().parse_args(["sweep", "--progress", "fancy"])
    assert exited.value.code == 2
