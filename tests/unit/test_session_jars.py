"""Delta's jars installed once: sessions and spark-submit use the files ``spark-defaults.conf`` names and resolve
no package, unless one of them is gone (then the package is resolved as before)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.session import delta_maven_coordinates, install_jars, installed_jars, spark_submit_args


@pytest.fixture
def conf_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "conf"
    monkeypatch.setenv("SPARK_CONF_DIR", str(folder))
    monkeypatch.delenv("LRSWEEP_SPARK_JARS", raising=False)
    return folder


def _jars(folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    name, version = delta_maven_coordinates().split(":")[1:]
    paths = [folder / f"io.delta_{name}-{version}.jar", folder / "io.delta_delta-storage-x.jar"]
    for path in paths:
        path.write_bytes(b"PK")
    return [str(path) for path in paths]


def test_installed_jars_are_used_and_no_package_is_resolved(conf_dir: Path, tmp_path: Path) -> None:
    jars = _jars(tmp_path / "jars")
    install_jars(str(tmp_path / "jars"))  # the folder holds Delta's jar already: nothing is fetched
    assert sorted(installed_jars()) == sorted(jars)
    assert "--packages" not in spark_submit_args()
    assert f"spark.jars {','.join(sorted(jars))}" in (conf_dir / "spark-defaults.conf").read_text()


def test_a_missing_jar_falls_back_to_resolving_the_package(conf_dir: Path, tmp_path: Path) -> None:
    jars = _jars(tmp_path / "jars")
    install_jars(str(tmp_path / "jars"))
    Path(jars[1]).unlink()
    assert installed_jars() == []
    args = spark_submit_args()
    assert args[args.index("--packages") + 1] == delta_maven_coordinates()


def test_air_gapped_jars_from_the_environment_win(conf_dir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = _jars(tmp_path / "shipped")
    monkeypatch.setenv("LRSWEEP_SPARK_JARS", ",".join(shipped))
    install_jars(str(tmp_path / "empty"))  # nothing to fetch: the shipped jars are named
    assert installed_jars() == shipped
