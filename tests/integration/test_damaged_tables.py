"""Damaged Delta tables get one line naming the table, the version and what to do (issue 21, row 7).

Each case damages a copy of a small Spark-written table the way disks, copies and interrupted writers do: a
commit truncated with its ``.crc`` still there (a checksum error), a commit that is not JSON, a data file gone,
a log without any commit. The Java stacks Spark logs for them go to the debug log, not the console.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from pipelines.errors import DataError
from pipelines.lakehouse.reader import read_feature_table
from pipelines.session import TASK_FAILURE_LOGGERS, debug_log_path
from tests.conftest import make_config


@pytest.fixture(scope="module")
def intact(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Versions 0 and 1 of a small table, written by Spark (commit files with their .crc files)."""
    path = tmp_path_factory.mktemp("damaged") / "intact"
    rows = spark.createDataFrame([(float(i), float(i % 7), i % 2) for i in range(200)], ["a", "b", "label"])
    rows.write.format("delta").save(str(path))
    rows.write.format("delta").mode("append").save(str(path))
    assert (path / "_delta_log" / f".{1:020d}.json.crc").exists()
    return path


def _commit(table: Path, version: int) -> Path:
    return table / "_delta_log" / f"{version:020d}.json"


def _truncate(table: Path, version: int = 1) -> None:
    text = _commit(table, version).read_text()
    _commit(table, version).write_text(text[: len(text) // 2])


def _not_json(table: Path) -> None:
    _commit(table, 1).write_text("{not json\n")
    (table / "_delta_log" / f".{1:020d}.json.crc").unlink()


def _no_commits(table: Path) -> None:
    for entry in (table / "_delta_log").iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    (table / "_delta_log" / "_staged_commits").mkdir()  # what an interrupted first write leaves


def _remove_data_file(table: Path) -> None:
    sorted(table.glob("*.parquet"))[0].unlink()


@pytest.mark.parametrize(("damage", "expected"), [
    (_truncate, r"the Delta log is damaged at version 1 \(Checksum error: .*00000000000000000001\.json.*\); restore "
                r"_delta_log/00000000000000000001\.json from a backup or a copy of the table; if version 1 is the "
                r"newest and its write never completed, delete its file \(and its \.crc files\) to go back to "
                r"version 0$"),
    (lambda table: _truncate(table, 0), r"the Delta log is damaged at version 0 \(Checksum error: .*\); restore "
                                        r"_delta_log/00000000000000000000\.json from a backup or a copy of the "
                                        r"table$"),
    (_not_json, r"the Delta log is damaged at version 1 \(00000000000000000001\.json: Expecting property name.*\); "
                r"restore _delta_log/00000000000000000001\.json"),
    (_no_commits, r": its _delta_log holds no commit, not even version 0 \(the write that created it did not "
                  r"finish\); write the table again, or point data.table at a complete copy$"),
    (_remove_data_file, r" \(version 1\): data file file:.*\.parquet is missing; read an earlier version "
                        r"\(data.version=N\) that does not use it, restore the file, or repair the table"),
], ids=["truncated-commit-with-crc", "truncated-first-commit", "commit-not-json", "log-without-commits",
        "missing-data-file"])
def test_a_damaged_table_is_one_line_naming_table_version_and_remedy(
        spark: SparkSession, intact: Path, tmp_path: Path, damage: Callable[[Path], None], expected: str) -> None:
    table = tmp_path / "copy"
    shutil.copytree(intact, table)
    damage(table)
    config = make_config(str(table), tmp_path, ["data.label=label"])
    with pytest.raises(DataError) as caught:
        read_feature_table(spark, config.data, "logistic")
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"table {table}")
    assert caught.match(expected), message


def test_the_java_stacks_of_failed_tasks_go_to_the_debug_log(spark: SparkSession, intact: Path,
                                                             tmp_path: Path) -> None:
    """Spark logs a failed task's exception twice with its whole stack (Executor, TaskSetManager) before the
    driver raises it; those loggers write to the debug log only, every other logger keeps the console."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    configuration = jvm.org.apache.logging.log4j.LogManager.getContext(False).getConfiguration()
    for name in TASK_FAILURE_LOGGERS:
        logger = configuration.getLoggerConfig(name)
        assert logger.getName() == name and not logger.isAdditive()
        assert list(logger.getAppenders().keySet()) == ["lrsweep-debug-log"]
    assert not configuration.getLoggerConfig("org.apache.spark.scheduler.DAGScheduler").getName()  # the root's
    table = tmp_path / "copy"
    shutil.copytree(intact, table)
    _remove_data_file(table)
    with pytest.raises(DataError):
        read_feature_table(spark, make_config(str(table), tmp_path, ["data.label=label"]).data, "logistic")
    logged = Path(debug_log_path()).read_text(errors="replace")
    assert f"java.io.FileNotFoundException: File file:{table}/" in logged
