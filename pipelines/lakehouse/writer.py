"""Write results and predictions to Delta, idempotently.

Appends carry Delta's idempotent-writer options ``txnAppId``/``txnVersion``: Delta records the highest
version committed per application id and silently skips a write whose version is not higher. A job
retried with the same id therefore never duplicates rows, and a write is atomic (all rows or none).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from pipelines.config import is_path
from pipelines.errors import OutputError

#: The results table: one row per (sweep_id, learning_rate, epoch). Metric columns cover both losses.
RESULTS_SCHEMA = (
    "sweep_id STRING NOT NULL, learning_rate DOUBLE NOT NULL, epoch INT NOT NULL, "
    "train_loss DOUBLE, val_loss DOUBLE, val_log_loss DOUBLE, val_accuracy DOUBLE, val_auc DOUBLE, "
    "val_rmse DOUBLE, val_mae DOUBLE, val_r2 DOUBLE, train_loss_std DOUBLE, val_loss_std DOUBLE, "
    "status STRING, kept_epoch INT, is_best BOOLEAN, loss STRING, parent_run_id STRING, child_run_id STRING, "
    "data_table STRING, data_version BIGINT, written_at TIMESTAMP"
)


def check_output_table(spark: SparkSession, identifier: str, key: str) -> None:
    """Fail early, naming ``key`` and ``identifier``, when the location cannot hold a Delta table.

    A path may be absent (it is created), an empty directory, or a Delta table; a catalog name may be
    absent or a Delta table.
    """
    from delta.tables import DeltaTable

    if is_path(identifier):
        local = identifier.removeprefix("file:") if "://" not in identifier else None
        if local is not None:
            if os.path.isfile(local):
                raise OutputError(f"{key} {identifier} is a file, not a Delta table; point {key} at a Delta "
                                  "table or at a path that does not exist yet")
            if not os.path.isdir(local) or not os.listdir(local):
                return
        if not DeltaTable.isDeltaTable(spark, identifier):
            raise OutputError(f"{key} {identifier} exists and is not a Delta table (no _delta_log); point {key} "
                              "at a Delta table or at a path that does not exist yet")
        return
    if spark.catalog.tableExists(identifier):
        provider = spark.sql(f"DESCRIBE DETAIL {identifier}").select("format").collect()[0][0]
        if str(provider).lower() != "delta":
            raise OutputError(f"{key} {identifier} is a {provider} table, not a Delta table")


def table_version(spark: SparkSession, identifier: str) -> int | None:
    """The latest version of a Delta table, or ``None`` when it does not exist yet."""
    from delta.tables import DeltaTable

    if is_path(identifier):
        if not DeltaTable.isDeltaTable(spark, identifier):
            return None
        table = DeltaTable.forPath(spark, identifier)
    else:
        if not spark.catalog.tableExists(identifier):
            return None
        table = DeltaTable.forName(spark, identifier)
    return int(table.history(1).select("version").collect()[0][0])


def append_idempotent(dataframe: DataFrame, identifier: str, key: str, app_id: str, txn_version: int = 0) -> bool:
    """Append ``dataframe`` unless ``(app_id, txn_version)`` was already committed; True when written.

    Raises :class:`OutputError` naming ``key`` when the location cannot be written.
    """
    spark = dataframe.sparkSession
    check_output_table(spark, identifier, key)
    before = table_version(spark, identifier)
    writer = (dataframe.write.format("delta").mode("append").option("mergeSchema", "false")
              .option("txnAppId", app_id).option("txnVersion", str(txn_version)))
    try:
        if is_path(identifier):
            writer.save(identifier)
        else:
            writer.saveAsTable(identifier)
    except Exception as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise OutputError(f"{key} {identifier}: the write failed: {first_line}") from error
    return table_version(spark, identifier) != before


def write_results(spark: SparkSession, rows: Sequence[dict[str, Any]], identifier: str, sweep_id: str) -> bool:
    """Append a sweep's result rows (see :func:`pipelines.reporting.tables.results_rows`) once per sweep id.

    Returns True when the rows were written, False when this sweep's rows were already in the table.
    """
    from pyspark.sql.types import StructType

    schema = StructType.fromDDL(RESULTS_SCHEMA)
    assert isinstance(schema, StructType)
    written_at = datetime.now(timezone.utc).replace(tzinfo=None)
    records = [tuple(written_at if name == "written_at" else row.get(name) for name in schema.names)
               for row in rows]
    dataframe = spark.createDataFrame(records, schema).coalesce(1)
    return append_idempotent(dataframe, identifier, "output.results_table", app_id=f"lrsweep-sweep:{sweep_id}")
