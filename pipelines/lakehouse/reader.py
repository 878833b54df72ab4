"""Read a feature table from Delta Lake at a pinned version, validated for the model it will train.

The version is resolved once, at job start: the configured ``data.version`` (a number or a timestamp),
else the latest version at that moment. Every later read uses that number, so rows appended while a
job runs are never seen, and results can be traced to the exact data.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines.config import DataConfig, is_path
from pipelines.errors import DataError, first_line
from pipelines.features.columns import ColumnChoice
from pipelines.identifiers import column
from pipelines.lakehouse.checks import (
    Profile,
    apply_policies,
    check_label,
    check_weights,
    class_index,
    common_lengths,
    distinct_up_to_case,
    feature_column,
    label_values,
    role_columns,
    select_features,
    string_classes,
)
from pipelines.lakehouse.delta import (
    commit_files,
    damaged_commit,
    history,
    is_delta_table,
    local_log,
    operations,
    sql_name,
    table_format,
)
from pipelines.sgd.losses import task_of
from pipelines.stopwatch import Stopwatch


@dataclass(frozen=True)
class TableRef:
    """A Delta table pinned at one version: what every result records as its lineage."""

    identifier: str  # the path or catalog name as configured (paths made absolute)
    version: int
    timestamp: datetime | None = None
    since_version: int | None = None  # an incremental read: the rows added after this version, up to ``version``
    changes: str = ""  # how they were found: "change data feed" or "appends"

    def describe(self) -> str:
        """``version 7``, or ``versions 5..7 (rows added after version 4, change data feed)``."""
        if self.since_version is None:
            return f"version {self.version}"
        return (f"versions {self.since_version + 1}..{self.version} (rows added after version "
                f"{self.since_version}, {self.changes})")

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

    dataframe: DataFrame  # label (double) + features: numbers as double, arrays as array<double>, others as read
    ref: TableRef
    label: str
    features: tuple[str, ...]
    rows_read: int
    rows_dropped_null: int
    null_counts: dict[str, int] = field(default_factory=dict)
    rows_dropped_invalid: int = 0  # rows without nulls but with NaN or +-inf in the label or a feature
    invalid_counts: dict[str, int] = field(default_factory=dict)
    columns: ColumnChoice = field(default_factory=ColumnChoice)  # each feature's family; what was left out, why
    array_lengths: dict[str, int] = field(default_factory=dict)  # an array column's (most common) length
    # a string label's two values (the second is the positive class); multinomial: every class, sorted (the label
    # column holds each row's index into them)
    label_classes: tuple[Any, ...] | None = None
    label_is_index: bool = False  # multinomial: the label column holds class indices into label_classes
    weight: str | None = None  # data.weight (a double column of the dataframe)
    time_column: str | None = None  # data.time_column (as read)
    split_column: str | None = None  # data.split_column (as read)

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
    """The table's content at ``ref.version`` (an incremental ``ref``: the rows added since, see
    :func:`read_added`)."""
    if ref.since_version is not None:
        return read_added(spark, ref)[0]
    return _at(spark, ref.identifier, ref.version)


def _at(spark: SparkSession, identifier: str, version: int) -> DataFrame:
    if is_path(identifier):
        return spark.read.format("delta").option("versionAsOf", version).load(identifier)
    return spark.sql(f"SELECT * FROM {sql_name(identifier)} VERSION AS OF {int(version)}")


#: Operations that add no row and change none (an incremental read over them needs no change data feed).
ROW_NEUTRAL = frozenset({"OPTIMIZE", "SET TBLPROPERTIES", "UNSET TBLPROPERTIES", "VACUUM START", "VACUUM END",
                         "ADD CONSTRAINT", "DROP CONSTRAINT", "UPGRADE PROTOCOL", "ADD COLUMNS", "CREATE TABLE"})
CDF_COLUMNS = ("_change_type", "_commit_version", "_commit_timestamp")


def read_added(spark: SparkSession, ref: TableRef) -> tuple[DataFrame, str]:
    """The rows added after ``ref.since_version`` up to ``ref.version``, and how they were found.

    With Delta's change data feed over those versions: the inserts and the post-images of updates, net of the
    range (a row inserted and then updated counts once, as updated; one inserted and then deleted not at all;
    the pre-images and deletions are subtracted as a multiset, since a table has no row key). Without
    it, when every version in between only appended (or only rewrote files without changing rows): the
    table at ``version`` minus the table at ``since_version`` (as multisets).

    Raises :class:`DataError` naming the versions when neither applies.
    """
    assert ref.since_version is not None
    since, version, where = ref.since_version, ref.version, f"table {ref.identifier}"
    reader = spark.read.format("delta").option("readChangeFeed", "true") \
        .option("startingVersion", since + 1).option("endingVersion", version)
    try:
        changes = reader.load(ref.identifier) if ref.is_path else reader.table(ref.identifier)
        changes.select(F.lit(1)).limit(1).collect()  # plans the change feed now, where its absence is reported
    except Exception as error:
        if "change" not in str(error).lower() or "feed" not in str(error).lower():
            raise
        unavailable = first_line(error, 200)
    else:
        # net of the range: a row inserted (or updated) and then updated or deleted again in it leaves only its
        # newest image (its earlier image is an update's pre-image or a deletion, subtracted as a multiset)
        added = changes.where(F.col("_change_type").isin("insert", "update_postimage")).drop(*CDF_COLUMNS)
        removed = changes.where(F.col("_change_type").isin("update_preimage", "delete")).drop(*CDF_COLUMNS)
        return added.exceptAll(removed), "change data feed"
    history = operations(spark, ref.identifier)
    rewrites = [f"{v} ({history[v][0]})" for v in range(since + 1, version + 1)
                if v in history and not _appends_only(*history[v])]
    if rewrites:
        raise DataError(f"{where}: data.since_version={since}: the change data feed is unavailable for versions "
                        f"{since + 1}..{version} ({unavailable}) and version(s) {', '.join(rewrites)} changed or "
                        "removed rows, not only appended; set delta.enableChangeDataFeed=true on the table "
                        "before the versions to read incrementally, or train on a whole version")
    now, before = _at(spark, ref.identifier, version), _at(spark, ref.identifier, since)
    # columns added since: null in the older rows
    aligned = before.select(*[column(f.name) if f.name in before.columns
                              else F.lit(None).cast(f.dataType).alias(f.name) for f in now.schema.fields])
    return now.exceptAll(aligned), "appends"


def _appends_only(operation: str, parameters: dict[str, str]) -> bool:
    if operation in ROW_NEUTRAL:
        return True
    mode = (parameters.get("mode") or parameters.get("outputMode") or "").strip('"').lower()
    return operation in ("WRITE", "STREAMING UPDATE") and mode == "append"


def read_feature_table(spark: SparkSession, config: DataConfig, loss: str, steps: Stopwatch | None = None
                       ) -> FeatureTable:
    """Read, pin and validate a feature table for a model with ``loss`` (its task decides what the label may be).

    ``steps``: times ``read.resolve`` (pinning the version, reading the schema) and ``read.check`` (the passes
    over the rows) when given.

    Returns the label (as double, column name unchanged) and the feature columns, after the null and
    invalid-value policies (``data.on_null``, ``data.on_invalid``: NaN and +-inf are invalid values).

    Raises
    ------
    DataError
        The table is missing, not Delta, lacks the version, or has a missing or unreadable data file; a
        column is missing or not numeric; the label cannot be used with ``loss``; nulls or invalid values
        under a ``fail`` policy; nothing left to train on.
    """
    steps = steps or Stopwatch()
    with steps.timed("read.resolve"):
        with readable_files(f"table {config.table}", config.table):
            ref = resolve_version(spark, config.table, config.version)
        where = f"table {ref.identifier} ({ref.describe()})"
        with readable_files(where, ref.identifier), case_twins_named(spark, ref, where):
            if isinstance(config.since_version, int):
                ref = incremental(ref, config.since_version, [v for v, _ in table_versions(spark, ref.identifier)])
                raw, changes = read_added(spark, ref)
                ref = replace(ref, changes=changes)
                where = f"table {ref.identifier} ({ref.describe()})"
            else:
                raw = read_version(spark, ref)
            columns = {f.name: f.dataType for f in raw.schema.fields}
    distinct_up_to_case(list(columns), where)
    if config.label not in columns:
        raise DataError(f"{where}: label column {config.label!r} not found; available columns: "
                        f"{sorted(columns)}")
    roles = role_columns(config, columns, where)
    choice = select_features(config, columns, where, roles)
    features = list(choice.used)
    label_type = columns[config.label]
    label_is_string = isinstance(label_type, T.StringType)
    binary, multiclass = task_of(loss) == "binary", task_of(loss) == "multiclass"
    if not isinstance(label_type, T.NumericType | T.BooleanType) and not (label_is_string and (binary or multiclass)):
        also = " (or a string of two values)" if binary else f" for the {task_of(loss)} loss {loss!r}"
        raise DataError(f"{where}: label column {config.label!r} has type {label_type.simpleString()}; "
                        f"expected a numeric or boolean column{also}")
    with steps.timed("read.check"):
        with readable_files(where, ref.identifier):
            array_lengths = common_lengths(raw, [c for c, family in choice.used.items() if family == "array"])
            label_classes = string_classes(raw, config.label, where, loss) if label_is_string and binary else None
        label_value = (column(config.label) == F.lit(label_classes[1])).cast("double") if label_classes \
            else column(config.label) if multiclass else column(config.label).cast("double")
        required = [config.time_column] if config.split == "time" and config.time_column else []
        profile = Profile(config.label, label_value, choice.used, columns, array_lengths, required,
                          binary_label=not multiclass, weight=config.weight)
        with readable_files(where, ref.identifier):
            stats = profile.collect(raw)
        if config.weight is not None and stats.weight_counts is not None:
            check_weights(stats.weight_counts, config.weight, where)
        apply_policies(stats, config, where)
        check_label(stats.label, loss, config.label, where)
        kept = raw.where(~profile.unusable) if stats.rows_with_null or stats.rows_with_invalid else raw
        if multiclass:
            with readable_files(where, ref.identifier):
                label_classes = stats.label_values if stats.label_values is not None else \
                    label_values(kept, config.label, where)
            label_value = class_index(config.label, label_classes)
        extra = [column(config.weight).cast("double").alias(config.weight)] if config.weight else []
        extra += [column(name) for name in (config.time_column, config.split_column)
                  if name is not None and name in roles and name != config.weight]
        dataframe = kept.select(label_value.alias(config.label), *[feature_column(c, choice.used[c]) for c in features],
                                *extra)
    return FeatureTable(dataframe=dataframe, ref=ref, label=config.label, features=tuple(features),
                        rows_read=stats.rows, rows_dropped_null=stats.rows_with_null, null_counts=stats.null_counts,
                        rows_dropped_invalid=stats.rows_with_invalid, invalid_counts=stats.invalid_counts,
                        columns=choice, array_lengths=array_lengths, label_classes=label_classes,
                        label_is_index=multiclass,
                        weight=config.weight, time_column=config.time_column if config.split == "time" else None,
                        split_column=config.split_column if config.split == "column" else None)


def incremental(ref: TableRef, since: int, available: list[int]) -> TableRef:
    """``ref`` narrowed to the rows added after version ``since`` (``data.since_version``).

    Raises :class:`DataError` when ``since`` is not older than the pinned version or no longer available.
    """
    if since >= ref.version:
        raise DataError(f"table {ref.identifier}: data.since_version={since} is not older than the pinned "
                        f"version {ref.version}: no rows were added after it")
    if since not in available:
        raise DataError(f"table {ref.identifier}: data.since_version={since} is not available (the table's log "
                        f"keeps versions {_ranges(available)}); read a whole version instead")
    return replace(ref, since_version=since)


@contextmanager
def case_twins_named(spark: SparkSession, ref: TableRef, where: str) -> Iterator[None]:
    """Turn Delta's refusal to read a table with columns equal up to case (``COLUMN_ALREADY_EXISTS``, naming
    one of them) into one :class:`DataError` naming both: the schema is read once more, case-sensitively."""
    try:
        yield
    except Exception as error:
        if "COLUMN_ALREADY_EXISTS" not in str(error):
            raise
        previous = spark.conf.get("spark.sql.caseSensitive", "false")
        spark.conf.set("spark.sql.caseSensitive", "true")  # only to list the names; restored at once
        try:
            names = _at(spark, ref.identifier, ref.version).columns
        finally:
            spark.conf.set("spark.sql.caseSensitive", previous or "false")
        distinct_up_to_case(names, where)
        raise


@contextmanager
def readable_files(where: str, table: str | None = None) -> Iterator[None]:
    """Turn Spark's failure to read a table's data file or log into one :class:`DataError` line naming the
    file (the commit's version for a damaged log) and how to recover.

    A data file listed in the Delta log but missing (deleted by hand, a bad copy, an over-eager cleanup) or
    unreadable (truncated, not Parquet), or a commit file that is corrupt (a checksum mismatch, not JSON), fails
    a job deep inside Spark. ``table``: the table's identifier, to find which commit of a local log is damaged.
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
            raise DataError(damaged_log_message(where, table, path)) from None
        raise DataError(
            f"{where}: data file {path} is {kind}; read an earlier version (data.version=N) that does not "
            "use it, restore the file, or repair the table (FSCK REPAIR TABLE removes missing files from the "
            "log)") from None


_FILE_PATH = re.compile(r"((?:file|s3a?|s3n|gs|hdfs|abfss?|wasbs?|dbfs):/*[^\s'\"\]]+|/[^\s'\"\]]+)"
                        r"\.(?:parquet|snappy\.parquet|gz\.parquet)")


_COMMIT_FILE = re.compile(r"_delta_log/(\d{20})\.json")
_JSON_ERRORS = ("JsonParseException", "JsonMappingException", "JsonEOFException")


def damaged_log_message(where: str, table: str | None, detail: str) -> str:
    """What to do about a damaged Delta log, naming the commit's version when it can be found: in Spark's
    message (a checksum error names the file) or by parsing a local log's commits."""
    named = _COMMIT_FILE.search(detail)
    found = (int(named.group(1)), detail) if named else damaged_commit(table) if table else None
    if found is None:
        return (f"{where}: the Delta log is damaged ({detail}); restore the missing or corrupt _delta_log file "
                "from a backup, or read the table from a copy")
    version, problem = found
    earlier = (f"; if version {version} is the newest and its write never completed, delete its file (and its "
               f".crc files) to go back to version {version - 1}") if version > 0 else ""
    return (f"{where}: the Delta log is damaged at version {version} ({problem}); restore "
            f"_delta_log/{version:020d}.json from a backup or a copy of the table{earlier}")


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
    checksum = re.search(r"ChecksumException: ([^\n]*_delta_log/[^\n]*)", text)
    if checksum:  # Hadoop's .crc of a commit file no longer matches it (truncated or edited)
        return "log", checksum.group(1)[:200]
    json_error = next((marker for marker in _JSON_ERRORS if marker in text), None)
    if json_error and ("org.apache.spark.sql.delta" in text or "io.delta" in text):  # a commit that is not JSON
        problem = re.search(rf"{json_error}: ([^\n]*)", text)
        return "log", f"not JSON: {problem.group(1)[:150] if problem else json_error}"
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


def _require_delta_table(spark: SparkSession, identifier: str) -> None:
    if is_path(identifier):
        local = identifier.removeprefix("file:") if "://" not in identifier else None
        if local is not None and not os.path.exists(local):
            raise DataError(f"table {identifier} not found: the path does not exist")
        log = local_log(identifier)
        if log is not None and log.is_dir() and not commit_files(identifier):
            raise DataError(f"table {identifier}: its _delta_log holds no commit, not even version 0 (the write "
                            "that created it did not finish); write the table again, or point data.table at "
                            "a complete copy")
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
