"""Write results and predictions to Delta, idempotently.

The results table is the sweep's **journal**: while a sweep trains, every checkpoint appends the rows of
the epochs since the previous one (:func:`append_journal`), so a crash loses at most those epochs. Appends
carry Delta's idempotent-writer options ``txnAppId``/``txnVersion`` (app id ``lrsweep-sweep:<sweep id>``,
version ``round * 10^6 + last epoch``): Delta skips a write whose version is not higher than the last one
committed for the app, so a retried append never duplicates rows, and each append is atomic. When the sweep
ends, :func:`finalize_results` sets each rate's final ``status``, ``kept_epoch``, ``is_best`` and run ids on
its rows in one MERGE. Which epochs a table already holds is read back (:func:`journaled`), so a resumed
sweep appends exactly the missing ones.

Two sweeps may write one table at the same moment: the first commit creates it, and a commit that loses a
race with another writer (Delta's concurrent-modification errors) is retried.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

from pyspark.sql import DataFrame, SparkSession

from pipelines.config import is_path
from pipelines.errors import OutputError, first_line
from pipelines.faults import kill_point, kill_when
from pipelines.lakehouse.delta import commit_files, is_delta_table, latest_version, local_log, sql_name, table_format
from pipelines.sgd.metrics import ALL_CURVES

#: The results table: one row per (sweep_id, round, grid point, epoch); a grid point is (learning_rate, reg_param,
#: l1_ratio). Metric columns cover every loss. Tables written before the joint grid gain reg_param and l1_ratio at
#: the next append (NULL on their older rows: read them as 0, the penalty they were trained with unless
#: model.reg_param was set). Population-based training's per-epoch lineage (the rate and reg_param each epoch's models
#: were trained at, the point they were copied from: :data:`~pipelines.sweep.pbt.LINEAGE_COLUMNS`) is NULL for grids.
RESULTS_SCHEMA = ", ".join([
    "sweep_id STRING NOT NULL", "round INT", "learning_rate DOUBLE NOT NULL", "reg_param DOUBLE", "l1_ratio DOUBLE",
    "epoch INT NOT NULL",
    *(f"{name} DOUBLE" for name in ALL_CURVES), "train_loss_std DOUBLE", "val_loss_std DOUBLE",
    "status STRING", "kept_epoch INT", "is_best BOOLEAN", "loss STRING", "parent_run_id STRING",
    "child_run_id STRING", "data_table STRING", "data_version BIGINT", "written_at TIMESTAMP",
    "data_since_version BIGINT", "registration STRING",
    "effective_learning_rate DOUBLE", "effective_reg_param DOUBLE", "pbt_exploited_from INT",
])
#: The columns an existing table must have to take a sweep's rows (what the first results tables had).
RESULTS_KEY_COLUMNS = ("sweep_id", "learning_rate", "epoch")
#: Columns a sweep's end sets on all of a rate's rows.
FINAL_COLUMNS = ("status", "kept_epoch", "is_best", "parent_run_id", "child_run_id", "registration")
EPOCHS_PER_ROUND = 1_000_000
COMMIT_ATTEMPTS = 6
CREATION_WAIT_SECONDS = 20.0
_CONFLICTS = ("ConcurrentAppendException", "ConcurrentWriteException", "ProtocolChangedException",
              "MetadataChangedException", "ConcurrentDeleteReadException", "ConcurrentTransactionException",
              "DELTA_CONCURRENT", "DELTA_TABLE_ALREADY_EXISTS", "already exists", "ConcurrentDeleteDeleteException")

Value = TypeVar("Value")


def check_output_table(spark: SparkSession, identifier: str, key: str) -> None:
    """Fail early, naming ``key`` and ``identifier``, when the location cannot hold a Delta table.

    A path may be absent (it is created), an empty directory, or a Delta table; a catalog name may be
    absent or a Delta table.
    """
    if is_path(identifier):
        local = identifier.removeprefix("file:") if "://" not in identifier else None
        if local is not None:
            if os.path.isfile(local):
                raise OutputError(f"{key} {identifier} is a file, not a Delta table; point {key} at a Delta "
                                  "table or at a path that does not exist yet")
            if not os.path.isdir(local) or not os.listdir(local):
                return
        if not _becomes_delta_table(spark, identifier, local):
            raise OutputError(f"{key} {identifier} exists and is not a Delta table (no _delta_log); point {key} "
                              "at a Delta table or at a path that does not exist yet")
        return
    provider = table_format(spark, identifier)
    if provider is not None and provider != "delta":
        raise OutputError(f"{key} {identifier} is a {provider} table, not a Delta table")


def check_results_table(spark: SparkSession, identifier: str, key: str = "output.results_table") -> None:
    """Fail before training, in one line naming ``key``, when ``identifier`` cannot take a sweep's rows.

    An absent location is created by the first append. An existing Delta table must be a results table: it
    has :data:`RESULTS_KEY_COLUMNS`, every column of :data:`RESULTS_SCHEMA` it has is of that type, and any other
    column it has is nullable (the appended rows leave it empty). Columns of :data:`RESULTS_SCHEMA` it lacks are
    added by the appends (schema evolution): tables written by earlier releases of lrsweep.
    """
    from pyspark.sql.types import StructType

    check_output_table(spark, identifier, key)
    if not table_exists(spark, identifier):
        return
    try:
        reader = spark.read.format("delta")
        present = (reader.load(identifier) if is_path(identifier) else spark.table(identifier)).schema
    except Exception as error:
        raise OutputError(f"{key} {identifier}: the Delta table cannot be read ({first_line(error)})") from None
    expected = StructType.fromDDL(RESULTS_SCHEMA)
    assert isinstance(expected, StructType)
    have = {field.name.lower(): field for field in present.fields}
    wanted = {field.name.lower(): field for field in expected.fields}
    problems = [f"no column {name}" for name in RESULTS_KEY_COLUMNS if name not in have]
    problems += [f"column {field.name} is {have[name].dataType.simpleString()} (expected "
                 f"{field.dataType.simpleString()})" for name, field in wanted.items()
                 if name in have and have[name].dataType != field.dataType]
    problems += [f"column {field.name} is NOT NULL" for name, field in have.items()
                 if name not in wanted and not field.nullable]
    if problems:
        raise OutputError(f"{key} {identifier} is a Delta table but not a sweep results table: "
                          f"{'; '.join(problems)}; point {key} at a results table or at a path that does not exist "
                          "yet")


def _becomes_delta_table(spark: SparkSession, identifier: str, local: str | None) -> bool:
    """Whether ``identifier`` is (or may become) a Delta table, waiting a little for one that another writer is
    creating (Delta writes the first data files before the log).

    A local folder whose ``_delta_log`` holds no commit is a table whose creation was interrupted (a writer
    killed before its first commit leaves data files and an empty ``_delta_log/_staged_commits``): Delta
    ignores files no commit names, so the first append creates the table there. Such a folder is waited for
    only while something in it changed in the last :data:`CREATION_WAIT_SECONDS` (another writer may be
    committing now).
    """
    deadline = time.monotonic() + CREATION_WAIT_SECONDS
    while True:
        if is_delta_table(spark, identifier):
            return True
        if local is not None and uncommitted_delta_folder(identifier) and (
                time.monotonic() >= deadline or time.time() - _newest_change(local) >= CREATION_WAIT_SECONDS):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(1.0)


def uncommitted_delta_folder(identifier: str) -> bool:
    """Whether a local table's folder has a ``_delta_log`` without any commit or checkpoint file in it."""
    log = local_log(identifier)
    return log is not None and log.is_dir() and not commit_files(identifier)


def _newest_change(local: str) -> float:
    """The newest modification time of anything under ``local`` (seconds since the epoch)."""
    newest = os.path.getmtime(local)
    for folder, folders, files in os.walk(local):
        for name in (*folders, *files):
            with contextlib.suppress(OSError):
                newest = max(newest, os.path.getmtime(os.path.join(folder, name)))
    return newest


def table_exists(spark: SparkSession, identifier: str) -> bool:
    """True when ``identifier`` is an existing Delta table."""
    if is_path(identifier):
        return is_delta_table(spark, identifier)
    return bool(spark.catalog.tableExists(identifier))


def table_version(spark: SparkSession, identifier: str) -> int | None:
    """The latest version of a Delta table, or ``None`` when it does not exist yet."""
    return latest_version(spark, identifier) if table_exists(spark, identifier) else None


def retry_conflicts(action: Callable[[], Value], key: str, identifier: str) -> Value:
    """Run a Delta commit, retrying it when another writer's commit got in first.

    Raises :class:`OutputError` naming ``key`` when it fails for another reason or keeps conflicting.
    """
    for attempt in range(COMMIT_ATTEMPTS):
        try:
            return action()
        except Exception as error:
            text = f"{type(error).__name__}: {error}"
            if attempt + 1 < COMMIT_ATTEMPTS and any(marker in text for marker in _CONFLICTS):
                time.sleep(0.2 * 2**attempt)
                continue
            raise OutputError(f"{key} {identifier}: the write failed: {first_line(error)}") from error
    raise AssertionError("unreachable")


def append_idempotent(dataframe: DataFrame, identifier: str, key: str, app_id: str, txn_version: int = 0) -> bool:
    """Append ``dataframe`` unless ``(app_id, txn_version)`` was already committed; True when written.

    Raises :class:`OutputError` naming ``key`` when the location cannot be written.
    """
    spark = dataframe.sparkSession
    check_output_table(spark, identifier, key)

    def append() -> bool:
        before = table_version(spark, identifier)
        writer = (dataframe.write.format("delta").mode("append").option("mergeSchema", "false")
                  .option("txnAppId", app_id).option("txnVersion", str(txn_version)))
        if is_path(identifier):
            writer.save(identifier)
        else:
            writer.saveAsTable(identifier)
        return table_version(spark, identifier) != before

    return retry_conflicts(append, key, identifier)


def results_dataframe(spark: SparkSession, rows: Sequence[dict[str, Any]]) -> DataFrame:
    """Result rows (see :mod:`pipelines.reporting.tables`) as a DataFrame of :data:`RESULTS_SCHEMA`."""
    from pyspark.sql.types import StructType

    schema = StructType.fromDDL(RESULTS_SCHEMA)
    assert isinstance(schema, StructType)
    written_at = datetime.now(timezone.utc).replace(tzinfo=None)
    records = [tuple(written_at if name == "written_at" else row.get(name) for name in schema.names)
               for row in rows]
    return spark.createDataFrame(records, schema).coalesce(1)


@dataclass(frozen=True)
class Journaled:
    """What the results table holds of one sweep already: the last epoch of each round, and its row count."""

    last_epochs: dict[int, int]  # round -> last epoch
    rows: int


def journaled(spark: SparkSession, identifier: str, sweep_id: str) -> Journaled:
    """The sweep's rows already in the results table (none when the table does not exist), in one query."""
    if not table_exists(spark, identifier):
        return Journaled({}, 0)
    from pyspark.sql import functions as F

    table = spark.read.format("delta").load(identifier) if is_path(identifier) else spark.table(identifier)
    rows = table.where(table["sweep_id"] == sweep_id)
    if "round" not in table.columns:  # written by an earlier lrsweep: one final round, no journal
        [(last, count)] = rows.agg(F.max("epoch"), F.count(F.lit(1))).collect()
        return Journaled({1: int(last)} if last is not None else {}, int(count))
    found = rows.groupBy("round").agg(F.max("epoch"), F.count(F.lit(1))).collect()
    return Journaled({int(round_ or 1): int(last) for round_, last, _ in found}, sum(int(count) for *_, count in found))


def append_journal(spark: SparkSession, rows: Sequence[dict[str, Any]], identifier: str, sweep_id: str,
                   round_number: int, last_epoch: int) -> None:
    """Append one checkpoint's result rows (epochs up to ``last_epoch`` of ``round_number``) once.

    The location was checked when the sweep started; this is the bare idempotent commit (Delta skips it
    when it has this ``txnVersion`` of the sweep already), retried when another writer's commit got in first.
    """
    if not rows:
        return
    dataframe = results_dataframe(spark, rows)
    writer = (dataframe.write.format("delta").mode("append").option("mergeSchema", "true")
              .option("txnAppId", f"lrsweep-sweep:{sweep_id}")
              .option("txnVersion", str(round_number * EPOCHS_PER_ROUND + last_epoch)))

    def append() -> None:
        if is_path(identifier):
            writer.save(identifier)
        else:
            writer.saveAsTable(identifier)

    created = table_exists(spark, identifier)
    log = local_log(identifier)
    if not created and log is not None:  # a test's kill while the first commit is being made
        kill_when("journal_create", lambda: any(log.parent.glob("*.parquet")))
    retry_conflicts(append, "output.results_table", identifier)
    if created:
        kill_point("journal_append")


def finalize_results(spark: SparkSession, finals: Sequence[dict[str, Any]], identifier: str, sweep_id: str,
                     pending: bool | None = None) -> bool:
    """Set each rate's :data:`FINAL_COLUMNS` on all its rows (one MERGE); False when nothing had to change.

    ``finals`` holds one mapping per (round, grid point) with those columns. ``pending`` True: the caller knows
    some rows differ (it appended rows without their final status), so the query that asks is skipped.
    """
    if not finals or not table_exists(spark, identifier):
        return False
    from pyspark.sql.types import StructType

    schema = StructType.fromDDL("sweep_id STRING, round INT, learning_rate DOUBLE, reg_param DOUBLE, l1_ratio DOUBLE, "
                                "status STRING, kept_epoch INT, is_best BOOLEAN, parent_run_id STRING, "
                                "child_run_id STRING, registration STRING")
    assert isinstance(schema, StructType)
    present = set(spark.sql(f"SELECT * FROM {sql_name(identifier)} LIMIT 0").columns)
    missing = [f"{field.name} {field.dataType.simpleString()}" for field in schema.fields if field.name not in present]
    if missing:  # a table written before these columns existed, which this sweep appended nothing to
        spark.sql(f"ALTER TABLE {sql_name(identifier)} ADD COLUMNS ({', '.join(missing)})")
    source = spark.createDataFrame([tuple(row.get(name) for name in schema.names) for row in finals], schema)
    view = f"lrsweep_finals_{abs(hash(sweep_id)) % 10**9}"
    source.createOrReplaceTempView(view)
    differs = " OR ".join(f"NOT (t.{column} <=> s.{column})" for column in FINAL_COLUMNS)
    match = ("t.sweep_id = s.sweep_id AND t.learning_rate = s.learning_rate AND t.reg_param = s.reg_param AND "
             "t.l1_ratio = s.l1_ratio AND (t.round <=> s.round)")
    if not pending and not spark.sql(f"SELECT count(*) FROM {sql_name(identifier)} t JOIN {view} s ON {match} "
                                     f"WHERE {differs}").collect()[0][0]:
        spark.catalog.dropTempView(view)
        return False
    updates = ", ".join(f"t.{column} = s.{column}" for column in FINAL_COLUMNS)

    def merge() -> bool:
        kill_point("merge")
        spark.sql(f"MERGE INTO {sql_name(identifier)} t USING {view} s ON {match} "
                  f"WHEN MATCHED AND ({differs}) THEN UPDATE SET {updates}")
        return True

    try:
        return retry_conflicts(merge, "output.results_table", identifier)
    finally:
        spark.catalog.dropTempView(view)
