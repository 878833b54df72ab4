"""Read a feature table from Delta Lake at a pinned version, validated for the model it will train.

The version is resolved once, at job start: the configured ``data.version`` (a number or a timestamp),
else the latest version at that moment. Every later read uses that number, so rows appended while a
job runs are never seen, and results can be traced to the exact data.
"""

from __future__ import annotations

import operator
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import reduce
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines.config import DataConfig, is_path
from pipelines.errors import DataError
from pipelines.lakehouse.delta import history, is_delta_table, table_format


@dataclass(frozen=True)
class TableRef:
    """A Delta table pinned at one version: what every result records as its lineage."""

    identifier: str  # the path or catalog name as configured (paths made absolute)
    version: int
    timestamp: datetime | None = None

    @property
    def is_path(self) -> bool:
        return is_path(self.identifier)

    def uri(self) -> str:
        """``file:///...`` for local paths, the identifier otherwise."""
        if self.is_path and "://" not in self.identifier:
            return "file://" + os.path.abspath(self.identifier.removeprefix("file:"))
        return self.identifier


@dataclass(frozen=True)
class FeatureTable:
    """A validated feature table: the rows to train on and where they came from."""

    dataframe: DataFrame  # label + features, no nulls, label as double
    ref: TableRef
    label: str
    features: tuple[str, ...]
    rows_read: int
    rows_dropped_null: int
    null_counts: dict[str, int] = field(default_factory=dict)
    rows_dropped_invalid: int = 0  # rows without nulls but with NaN or +-inf in the label or a feature
    invalid_counts: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return self.rows_read - self.rows_dropped_null - self.rows_dropped_invalid

    def dropped_summary(self) -> str:
        """``dropped 12 rows with nulls (a: 10, b: 2) and 3 with NaN/inf (c: 3)``, or ``""`` when none."""
        parts = []
        if self.rows_dropped_null:
            detail = ", ".join(f"{c}: {n}" for c, n in sorted(self.null_counts.items()))
            parts.append(f"{self.rows_dropped_null} rows with nulls ({detail})")
        if self.rows_dropped_invalid:
            detail = ", ".join(f"{c}: {n}" for c, n in sorted(self.invalid_counts.items()))
            parts.append(f"{self.rows_dropped_invalid} rows with NaN/inf ({detail})")
        return f"dropped {' and '.join(parts)}" if parts else ""


def table_versions(spark: SparkSession, identifier: str) -> list[tuple[int, datetime]]:
    """Versions of a Delta table and their commit timestamps, oldest first.

    Raises :class:`DataError` when the table does not exist or is not a Delta table.
    """
    _require_delta_table(spark, identifier)
    return history(spark, identifier)


def resolve_version(spark: SparkSession, identifier: str, requested: int | str | None) -> TableRef:
    """Pin ``requested`` (a version, a timestamp or ``None`` for the latest) to a version number."""
    versions = table_versions(spark, identifier)
    available = [version for version, _ in versions]
    if requested is None:
        version, timestamp = versions[-1]
        return TableRef(identifier, version, timestamp)
    if isinstance(requested, int):
        for version, timestamp in versions:
            if version == requested:
                return TableRef(identifier, version, timestamp)
        raise DataError(
            f"table {identifier}: version {requested} is not available; available versions: "
            f"{_ranges(available)}"
        )
    try:
        wanted = datetime.fromisoformat(requested)
    except ValueError:
        raise DataError(
            f"table {identifier}: data.version {requested!r} is neither a version number nor an ISO "
            "timestamp such as '2026-11-29 10:00:00'"
        ) from None
    if wanted.tzinfo is not None:
        wanted = wanted.astimezone(tz=None).replace(tzinfo=None)
    earlier = [(v, ts) for v, ts in versions if ts <= wanted]
    if not earlier:
        raise DataError(
            f"table {identifier}: no version at or before {requested}; the first version ({versions[0][0]})"
            f" was committed at {versions[0][1]}"
        )
    version, timestamp = earlier[-1]
    return TableRef(identifier, version, timestamp)


def read_version(spark: SparkSession, ref: TableRef) -> DataFrame:
    """The table's content at ``ref.version``."""
    if ref.is_path:
        return spark.read.format("delta").option("versionAsOf", ref.version).load(ref.identifier)
    return spark.sql(f"SELECT * FROM {ref.identifier} VERSION AS OF {ref.version}")


def read_feature_table(spark: SparkSession, config: DataConfig, loss: str) -> FeatureTable:
    """Read, pin and validate a feature table for a model with ``loss`` (``squared``/``logistic``).

    Returns the label (as double, column name unchanged) and the feature columns, after the null and
    invalid-value policies (``data.on_null``, ``data.on_invalid``: NaN and +-inf are invalid values).

    Raises
    ------
    DataError
        The table is missing, not Delta, lacks the version, or has a missing or unreadable data file; a
        column is missing or not numeric; the label cannot be used with ``loss``; nulls or invalid values
        under a ``fail`` policy; nothing left to train on.
    """
    with readable_files(f"table {config.table}"):
        ref = resolve_version(spark, config.table, config.version)
    where = f"table {ref.identifier} (version {ref.version})"
    with readable_files(where):
        raw = read_version(spark, ref)
        columns = {f.name: f.dataType for f in raw.schema.fields}
    if config.label not in columns:
        raise DataError(f"{where}: label column {config.label!r} not found; available columns: "
                        f"{sorted(columns)}")
    features = _select_features(config, columns, where)
    label_type = columns[config.label]
    if not isinstance(label_type, T.NumericType | T.BooleanType):
        raise DataError(f"{where}: label column {config.label!r} has type {label_type.simpleString()}; "
                        "expected a numeric or boolean column")
    profile = _Profile(config.label, [config.label, *features], columns)
    with readable_files(where):
        stats = profile.collect(raw)
    _apply_policies(stats, config, where)
    _check_label(stats.label, loss, config.label, where)
    kept = raw.where(~profile.unusable) if stats.rows_with_null or stats.rows_with_invalid else raw
    dataframe = kept.select(F.col(config.label).cast("double").alias(config.label),
                            *[F.col(c).cast("double").alias(c) for c in features])
    return FeatureTable(dataframe=dataframe, ref=ref, label=config.label, features=tuple(features),
                        rows_read=stats.rows, rows_dropped_null=stats.rows_with_null, null_counts=stats.null_counts,
                        rows_dropped_invalid=stats.rows_with_invalid, invalid_counts=stats.invalid_counts)


@dataclass(frozen=True)
class _Stats:
    """What one pass over the used columns found."""

    rows: int
    rows_with_null: int
    rows_with_invalid: int  # rows without nulls but with NaN or +-inf
    null_counts: dict[str, int]
    invalid_counts: dict[str, int]
    label: dict[str, Any]  # distinct, min, max, not_binary of the usable rows' labels


class _Profile:
    """Null, NaN/inf and label statistics of the used columns, in one Spark aggregation."""

    def __init__(self, label: str, used: list[str], types: dict[str, T.DataType]) -> None:
        self.used = used
        self.floating = [c for c in used if isinstance(types[c], T.FloatType | T.DoubleType)]
        self.is_null = {c: F.col(c).isNull() for c in used}
        self.is_invalid = {c: F.isnan(F.col(c)) | (F.abs(F.col(c)) == float("inf")) for c in self.floating}
        self.any_null = reduce(operator.or_, self.is_null.values())
        self.any_invalid = reduce(operator.or_, self.is_invalid.values()) if self.is_invalid else F.lit(False)
        self.unusable = self.any_null | self.any_invalid
        self.clean_label = F.when(self.unusable, None).otherwise(F.col(label).cast("double"))

    def collect(self, dataframe: DataFrame) -> _Stats:
        clean = self.clean_label
        row = dataframe.agg(
            F.count(F.lit(1)).alias("rows"),
            *[F.sum(null.cast("long")).alias(f"null::{c}") for c, null in self.is_null.items()],
            *[F.sum(invalid.cast("long")).alias(f"invalid::{c}") for c, invalid in self.is_invalid.items()],
            F.sum(F.when(self.any_null, 1).otherwise(0)).alias("rows_with_null"),
            F.sum(F.when(~self.any_null & self.any_invalid, 1).otherwise(0)).alias("rows_with_invalid"),
            F.count_distinct(clean).alias("distinct"), F.min(clean).alias("min"), F.max(clean).alias("max"),
            F.sum(F.when(clean.isNotNull() & ~clean.isin(0.0, 1.0), 1).otherwise(0)).alias("not_binary"),
        ).collect()[0].asDict()
        return _Stats(
            rows=int(row["rows"]), rows_with_null=int(row["rows_with_null"] or 0),
            rows_with_invalid=int(row["rows_with_invalid"] or 0),
            null_counts={c: int(row[f"null::{c}"]) for c in self.used if row[f"null::{c}"]},
            invalid_counts={c: int(row[f"invalid::{c}"]) for c in self.floating if row[f"invalid::{c}"]},
            label={key: row[key] for key in ("distinct", "min", "max", "not_binary")})


def _apply_policies(stats: _Stats, config: DataConfig, where: str) -> None:
    """``data.on_null`` / ``data.on_invalid``: fail naming the columns, or check something is left."""
    if stats.rows == 0:
        raise DataError(f"{where}: the table is empty")
    if stats.rows_with_null and config.on_null == "fail":
        detail = ", ".join(f"{c}: {n}" for c, n in sorted(stats.null_counts.items()))
        raise DataError(f"{where}: {stats.rows_with_null} rows have nulls ({detail}) and data.on_null is 'fail'; "
                        "set data.on_null=drop to drop them")
    if stats.invalid_counts and config.on_invalid == "fail":
        detail = ", ".join(f"{c}: {n}" for c, n in sorted(stats.invalid_counts.items()))
        raise DataError(f"{where}: NaN or infinite values ({detail}) and data.on_invalid is 'fail'; "
                        "set data.on_invalid=drop to drop those rows")
    if stats.rows_with_null + stats.rows_with_invalid == stats.rows:
        raise DataError(f"{where}: no rows left after dropping {stats.rows_with_null} rows with nulls and "
                        f"{stats.rows_with_invalid} with NaN/inf (null counts: {stats.null_counts}, NaN/inf "
                        f"counts: {stats.invalid_counts})")


@contextmanager
def readable_files(where: str) -> Iterator[None]:
    """Turn Spark's failure to read a table's data file into one :class:`DataError` line naming the file.

    A data file listed in the Delta log but missing (deleted by hand, a bad copy, an over-eager cleanup) or
    unreadable (truncated, not Parquet) fails a job deep inside Spark; this names the table, the file and
    how to recover.
    """
    try:
        yield
    except DataError:
        raise
    except Exception as error:
        problem = unreadable_file(error)
        if problem is None:
            raise
        kind, path = problem
        if kind == "log":
            raise DataError(f"{where}: the Delta log is damaged ({path}); restore the missing or corrupt "
                            "_delta_log file from a backup, or read the table from a copy") from None
        raise DataError(
            f"{where}: data file {path} is {kind}; read an earlier version (data.version=N) that does not "
            "use it, restore the file, or repair the table (FSCK REPAIR TABLE removes missing files from the "
            "log)") from None


_FILE_PATH = re.compile(r"((?:file|s3a?|s3n|gs|hdfs|abfss?|wasbs?|dbfs):/*[^\s'\"\]]+|/[^\s'\"\]]+)"
                        r"\.(?:parquet|snappy\.parquet|gz\.parquet)")


def unreadable_file(error: BaseException) -> tuple[str, str] | None:
    """``("missing", path)``, ``("unreadable ...", path)`` or ``("log", detail)`` when ``error`` is Spark failing
    on a table's data file or log; None for any other error."""
    try:
        text = f"{type(error).__name__}: {error}"
    except Exception:  # a py4j error whose JVM is gone cannot even be printed
        return None
    if "DELTA_VERSIONS_NOT_CONTIGUOUS" in text or ("_delta_log" in text and "FAILED_READ_FILE" in text):
        condition = re.search(r"\[(DELTA_[A-Z_]+|FAILED_READ_FILE[A-Z_.]*)\][^\n]*", text)
        return "log", condition.group(0)[:200] if condition else "unreadable log"
    missing = any(marker in text for marker in ("FileNotFoundException", "FILE_NOT_EXIST", "DELTA_FILE_NOT_FOUND",
                                                "does not exist"))
    unreadable = any(marker in text for marker in ("FAILED_READ_FILE", "CANNOT_READ_FILE_FOOTER",
                                                   "is not a Parquet file", "ParquetDecodingException",
                                                   "CORRUPTED_FILE"))
    if not (missing or unreadable):
        return None
    match = _FILE_PATH.search(text)
    path = match.group(0) if match else "(path not reported)"
    return ("missing" if missing else "unreadable (corrupt or not Parquet)"), path


def _select_features(config: DataConfig, columns: dict[str, T.DataType], where: str) -> list[str]:
    if config.features is None:
        features = [name for name, dtype in columns.items()
                    if isinstance(dtype, T.NumericType) and name != config.label and name not in config.exclude]
        if not features:
            raise DataError(f"{where}: no numeric feature columns besides the label {config.label!r}; "
                            f"columns: {sorted(columns)}")
        return features
    missing = [c for c in config.features if c not in columns]
    if missing:
        raise DataError(f"{where}: feature column(s) {missing} not found; available columns: {sorted(columns)}")
    if config.label in config.features:
        raise DataError(f"{where}: the label {config.label!r} is also listed in data.features")
    for name in config.features:
        dtype = columns[name]
        if not isinstance(dtype, T.NumericType | T.BooleanType):
            raise DataError(f"{where}: feature column {name!r} has type {dtype.simpleString()}; "
                            "expected a numeric type (cast or encode it upstream)")
    return list(config.features)


def _check_label(stats: dict[str, Any], loss: str, label: str, where: str) -> None:
    if loss == "logistic":
        if stats["not_binary"]:
            raise DataError(
                f"{where}: label {label!r} has values other than 0 and 1 (min {stats['min']}, max "
                f"{stats['max']}, {stats['distinct']} distinct); logistic loss needs 0/1 or boolean"
            )
        if stats["distinct"] != 2:
            raise DataError(f"{where}: label {label!r} has a single class ({stats['min']}); "
                            "logistic loss needs both 0 and 1")
    elif stats["distinct"] is not None and stats["distinct"] < 2:
        raise DataError(f"{where}: label {label!r} is constant ({stats['min']}); nothing to fit")


def _require_delta_table(spark: SparkSession, identifier: str) -> None:
    if is_path(identifier):
        local = identifier.removeprefix("file:") if "://" not in identifier else None
        if local is not None and not os.path.exists(local):
            raise DataError(f"table {identifier} not found: the path does not exist")
        if not is_delta_table(spark, identifier):
            raise DataError(f"table {identifier} is not a Delta table (no _delta_log); convert it with "
                            "CONVERT TO DELTA or point data.table at a Delta table")
        return
    provider = table_format(spark, identifier)
    if provider is None:
        raise DataError(unknown_table_name(spark, identifier))
    if provider != "delta":
        raise DataError(f"table {identifier} is a {provider} table, not a Delta table")


def unknown_table_name(spark: SparkSession, identifier: str) -> str:
    """Why a catalog name is not found, and how to make names work across jobs."""
    try:
        catalog = spark.conf.get("spark.sql.catalogImplementation", "in-memory")
    except Exception:  # a Connect session may not expose static settings
        catalog = "unknown"
    hint = ("this session's catalog is in-memory: names do not outlive a job; configure a metastore shared by "
            "the jobs (e.g. --set spark.conf='{spark.sql.catalogImplementation: hive, spark.sql.warehouse.dir: "
            "...}' with a persistent metastore, or your platform's catalog) or use a table path"
            if catalog == "in-memory" else f"the session's catalog ({catalog}) does not know it")
    return f"table {identifier} not found in the catalog: {hint}"


def _ranges(versions: list[int]) -> str:
    if not versions:
        return "none"
    if versions == list(range(versions[0], versions[-1] + 1)):
        return f"{versions[0]}..{versions[-1]}" if len(versions) > 1 else str(versions[0])
    return ", ".join(map(str, versions))
