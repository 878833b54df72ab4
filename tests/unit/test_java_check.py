"""Java 17+ is the only prerequisite: a missing or old Java gives a clear message, not a Spark trace."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pipelines import PROJECT_ROOT
from pipelines.errors import SparkSetupError
from pipelines.session import check_java


def fake_jdk(root: Path, version_line: str) -> Path:
    java = root / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    java.chmod(0o755)
    return root


def test_missing_java_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk"))
    with pytest.raises(SparkSetupError, match=r"Java 17\+ is required by Spark 4 and was not found"):
        check_java()


def test_old_java_is_refused_and_new_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAVA_HOME", str(fake_jdk(tmp_path / "jdk8", 'openjdk version "1.8.0_392"')))
    with pytest.raises(SparkSetupError, match=r"Java 8 found .*Spark 4 needs Java 17 or newer"):
        check_java()
    monkeypatch.setenv("JAVA_HOME", str(fake_jdk(tmp_path / "jdk21", 'openjdk version "21.0.2" 2024-01-16')))
    assert check_java() == 21


def test_make_stops_early_without_java(tmp_path: Path) -> None:
    jdk = fake_jdk(tmp_path / "jdk11", 'openjdk version "11.0.20" 2023-07-18')
    result = subprocess.run(["make", "--no-print-directory", "check-java", f"JAVA_HOME={jdk}"], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "error: Java 11 found" in result.stderr and "Spark 4 needs Java 17 or newer" in result.stderr
