"""Read a feature table from Delta Lake at a pinned version, validated for the model it will train.

The version is resolved once, at job start: the configured ``data.version`` (a number or a timestamp),
else the latest version at that moment. Every later read uses that number, so rows appended while a
job runs are never seen, and results can be traced to the exact data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines.config import DataConfig, is_path
from pipelines.errors import DataError


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

    @property
    def rows(self) -> int:
        return self.rows_read - self.rows_dropped_null


def table_versions(spark: SparkSession, identifier: str) -> list[tuple[int, datetime]]:
    """Versions of a Delta table and their commit timestamps, oldest first.

    Raises :class:`DataError` when the table does not exist or is not a Delta table.
    """
    from delta.tables import DeltaTable

    _require_delta_table(spark, identifier)
    table = (DeltaTable.forPath(spark, identifier) if is_path(identifier)
             else DeltaTable.forName(spark, identifier))
    rows = table.history().select("version", "timestamp").collect()
    return sorted((int(row["version"]), row["timestamp"]) for row in rows)


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

    Returns the label (as double, column name unchanged) and the feature columns, after the null policy.

    Raises
    ------
    DataError
        The table is missing, not Delta, lacks the version; a column is missing or not numeric; the
        label cannot be used with ``loss``; nulls under ``on_null: fail``; nothing left to train on.
    """
    ref = resolve_version(spark, config.table, config.version)
    raw = read_version(spark, ref)
    columns = {f.name: f.dataType for f in raw.schema.fields}
    where = f"table {ref.identifier} (version {ref.version})"

    if config.label not in columns:
        raise DataError(f"{where}: label column {config.label!r} not found; available columns: "
                        f"{sorted(columns)}")
    features = _select_features(config, columns, where)
    label_type = columns[config.label]
    if not isinstance(label_type, T.NumericType | T.BooleanType):
        raise DataError(f"{where}: label column {config.label!r} has type {label_type.simpleString()}; "
                        "expected a numeric or boolean column")

    label = F.col(config.label).cast("double")
    used = [config.label, *features]
    stats_exprs = [F.count(F.lit(1)).alias("rows")]
    stats_exprs += [F.sum(F.col(c).isNull().cast("long")).alias(f"null::{c}") for c in used]
    stats_exprs.append(F.sum(F.when(F.greatest(*[F.col(c).isNull() for c in used]), 1).otherwise(0))
                       .alias("rows_with_null"))
    clean_label = F.when(F.greatest(*[F.col(c).isNull() for c in used]), None).otherwise(label)
    stats_exprs += [F.count_distinct(clean_label).alias("label_distinct"),
                    F.min(clean_label).alias("label_min"), F.max(clean_label).alias("label_max"),
                    F.sum(F.when(~F.isnan(label) & ~clean_label.isin(0.0, 1.0), 1).otherwise(0))
                    .alias("label_not_binary")]
    stats = raw.agg(*stats_exprs).collect()[0].asDict()
    null_counts = {c: int(stats[f"null::{c}"] or 0) for c in used if stats[f"null::{c}"]}
    rows_read = int(stats["rows"])
    rows_with_null = int(stats["rows_with_null"] or 0)

    if rows_read == 0:
        raise DataError(f"{where}: the table is empty")
    if rows_with_null and config.on_null == "fail":
        detail = ", ".join(f"{c}: {n}" for c, n in sorted(null_counts.items()))
        raise DataError(f"{where}: {rows_with_null} rows have nulls ({detail}) and data.on_null is 'fail'; "
                        "set data.on_null=drop to drop them")
    if rows_with_null == rows_read:
        raise DataError(f"{where}: no rows left after dropping {rows_with_null} rows with nulls "
                        f"(null counts: {null_counts})")
    _check_label(stats, loss, config.label, where)

    dataframe = raw.select(label.alias(config.label), *[F.col(c).cast("double").alias(c) for c in features])
    if rows_with_null:
        dataframe = dataframe.dropna(subset=used)
    return FeatureTable(dataframe=dataframe, ref=ref, label=config.label, features=tuple(features),
                        rows_read=rows_read, rows_dropped_null=rows_with_null, null_counts=null_counts)


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
        if stats["label_not_binary"]:
            raise DataError(
                f"{where}: label {label!r} has values other than 0 and 1 (min {stats['label_min']}, max "
                f"{stats['label_max']}, {stats['label_distinct']} distinct); logistic loss needs 0/1 or boolean"
            )
        if stats["label_distinct"] != 2:
            raise DataError(f"{where}: label {label!r} has a single class ({stats['label_min']}); "
                            "logistic loss needs both 0 and 1")
    elif stats["label_distinct"] is not None and stats["label_distinct"] < 2:
        raise DataError(f"{where}: label {label!r} is constant ({stats['label_min']}); nothing to fit")


def _require_delta_table(spark: SparkSession, identifier: str) -> None:
    from delta.tables import DeltaTable

    if is_path(identifier):
        local = identifier.removeprefix("file:") if "://" not in identifier else None
        if local is not None and not os.path.exists(local):
            raise DataError(f"table {identifier} not found: the path does not exist")
        if not DeltaTable.isDeltaTable(spark, identifier):
            raise DataError(f"table {identifier} is not a Delta table (no _delta_log); convert it with "
                            "CONVERT TO DELTA or point data.table at a Delta table")
        return
    if not spark.catalog.tableExists(identifier):
        raise DataError(f"table {identifier} not found in the catalog")
    provider = spark.sql(f"DESCRIBE DETAIL {identifier}").select("format").collect()[0][0]
    if str(provider).lower() != "delta":
        raise DataError(f"table {identifier} is a {provider} table, not a Delta table")


def _ranges(versions: list[int]) -> str:
    if not versions:
        return "none"
    if versions == list(range(versions[0], versions[-1] + 1)):
        return f"{versions[0]}..{versions[-1]}" if len(versions) > 1 else str(versions[0])
    return ", ".join(map(str, versions))
