"""Delta table metadata through Spark SQL only, so it works on classic Spark and on Spark Connect alike.

The Python ``DeltaTable`` API needs Delta's Connect plugin on a Connect server; ``DESCRIBE HISTORY``,
``DESCRIBE DETAIL`` and ``VERSION AS OF`` need only Delta's SQL extension, which every Delta-enabled session
has. A table is named by a path (``delta.`/path```) or by a catalog name; both reach SQL quoted
(:func:`sql_name`), so a path may hold any character and a name only what the configuration let through.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from pyspark.sql import SparkSession

from pipelines.config import is_path
from pipelines.identifiers import quote_identifier, quote_table_name

_NOT_DELTA = ("DELTA_MISSING_DELTA_TABLE", "is not a Delta table", "DELTA_TABLE_NOT_FOUND", "PATH_NOT_FOUND",
              "Path does not exist", "TABLE_OR_VIEW_NOT_FOUND", "DELTA_PATH_DOES_NOT_EXIST")


def sql_name(identifier: str) -> str:
    """``delta.`<path>``` for a path, the catalog name with each part quoted otherwise (backticks doubled)."""
    return f"delta.{quote_identifier(identifier)}" if is_path(identifier) else quote_table_name(identifier)


def is_delta_table(spark: SparkSession, identifier: str) -> bool:
    """Whether ``identifier`` names an existing Delta table (a catalog table of another format is not one).

    A local path is answered from its ``_delta_log`` folder without a Spark job.
    """
    if is_path(identifier) and "://" not in identifier:
        return bool(commit_files(identifier))
    try:
        return _format(spark, sql_name(identifier)) == "delta"
    except Exception as error:
        if any(marker in str(error) for marker in _NOT_DELTA):
            return False
        raise


def local_log(identifier: str) -> Path | None:
    """The ``_delta_log`` folder of a table on a local disk (None for a catalog name or a remote URI)."""
    if not is_path(identifier) or "://" in identifier:
        return None
    return Path(identifier.removeprefix("file:")) / "_delta_log"


def commit_files(identifier: str) -> list[Path]:
    """A local table's commit files (``<version>.json``) and checkpoints, in version order; empty when it has
    none (no ``_delta_log``, or one whose first commit was never written)."""
    log = local_log(identifier)
    if log is None or not log.is_dir():
        return []
    return sorted([*log.glob("[0-9]*.json"), *log.glob("[0-9]*.checkpoint*.parquet")])


def damaged_commit(identifier: str) -> tuple[int, str] | None:
    """The first commit of a local table whose file is not JSON lines: ``(version, what the parser says)``;
    None when every commit parses (or the table is not local)."""
    for file in commit_files(identifier):
        if file.suffix != ".json":
            continue
        try:
            for line in file.read_text().splitlines():
                if line.strip():
                    json.loads(line)
        except (ValueError, UnicodeDecodeError) as error:
            return int(file.name.split(".")[0]), f"{file.name}: {str(error).splitlines()[0][:120]}"
    return None


def table_format(spark: SparkSession, identifier: str) -> str | None:
    """A catalog table's format (``delta``, ``parquet``, ...), or None when the catalog does not know it."""
    if not spark.catalog.tableExists(identifier):
        return None
    return _format(spark, sql_name(identifier))


def _format(spark: SparkSession, name: str) -> str | None:
    """The ``format`` column of ``DESCRIBE DETAIL <name>``, lower-cased."""
    detail = spark.sql(f"DESCRIBE DETAIL {name}").select("format").collect()
    return str(detail[0][0]).lower() if detail else None


def history(spark: SparkSession, identifier: str) -> list[tuple[int, datetime]]:
    """``(version, commit timestamp)`` of every version, oldest first."""
    rows = spark.sql(f"DESCRIBE HISTORY {sql_name(identifier)}").select("version", "timestamp").collect()
    return sorted((int(row["version"]), row["timestamp"]) for row in rows)


def operations(spark: SparkSession, identifier: str) -> dict[int, tuple[str, dict[str, str]]]:
    """Each version's operation and its parameters (``WRITE``, ``{"mode": "Append", ...}``)."""
    rows = spark.sql(f"DESCRIBE HISTORY {sql_name(identifier)}") \
        .select("version", "operation", "operationParameters").collect()
    return {int(row["version"]): (str(row["operation"]), dict(row["operationParameters"] or {})) for row in rows}


def latest_version(spark: SparkSession, identifier: str) -> int:
    rows = spark.sql(f"DESCRIBE HISTORY {sql_name(identifier)} LIMIT 1").select("version").collect()
    return int(rows[0][0])
