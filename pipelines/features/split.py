"""Train / validation / test splits that do not depend on partitioning (``data.split``).

Every row gets :data:`SPLIT_COLUMN` = 0 (train), 1 (validation) or 2 (test), and :data:`VALIDATION_COLUMN`
(``split == 1``) for the blocks. Test rows never reach the blocks: they are only used once, to measure the
champion.

* ``hash``: a row goes to validation when ``xxhash64(seed, label, features...) mod 10^6 <
  validation_fraction * 10^6``, to test when the bucket falls in the next ``test_fraction * 10^6``: a function of
  the row's content and the seed only, so the split is the same whatever the partition count, the file layout
  or the order rows arrive in (identical rows land on the same side).
* ``stratified`` (classification): the same hash as a key in ``[0, 2^52)``; within each class the rows below
  the class's ``validation_fraction`` quantile of the key validate and the next ``test_fraction`` test, so
  every split has the class balance of the table.
* ``time``: ``data.time_column`` orders the rows: the oldest train, the next ``validation_fraction``
  validate, the newest ``test_fraction`` test (exact percentiles; ties at a boundary go to the newer side, so
  every validation row is newer than every training row): how a churn model is really evaluated.
* ``column``: ``data.split_column`` holds ``train``, ``validation`` or ``test`` for each row.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines.errors import DataError
from pipelines.identifiers import column, xxhash64_of

VALIDATION_COLUMN = "__is_validation"
SPLIT_COLUMN = "__split"
TRAIN, VALIDATION, TEST = 0, 1, 2
SPLIT_NAMES = {"train": TRAIN, "validation": VALIDATION, "test": TEST}
_BUCKETS = 1_000_000
_KEY_RANGE = 2**52  # exactly representable as doubles (percentiles are computed in double)


def with_split(dataframe: DataFrame, method: str, columns: Sequence[str], validation_fraction: float,
               test_fraction: float, seed: int, *, label: str | None = None, time_column: str | None = None,
               split_column: str | None = None, where: str = "the table") -> DataFrame:
    """Add :data:`SPLIT_COLUMN` and :data:`VALIDATION_COLUMN` by ``method`` (see the module docstring).

    ``columns``: the columns hashed for ``hash`` and ``stratified`` (the label and the features).

    Raises
    ------
    DataError
        ``column``: values other than train/validation/test (named with their counts).
    """
    if not 0.0 < validation_fraction < 1.0 or not 0.0 <= test_fraction < 1.0 - validation_fraction:
        raise ValueError(f"fractions must satisfy 0 < validation ({validation_fraction}) and 0 <= test "
                         f"({test_fraction}) and validation + test < 1")
    if method == "hash":
        bucket = F.pmod(xxhash64_of(seed, columns), F.lit(_BUCKETS))
        first, second = round(validation_fraction * _BUCKETS), round((validation_fraction + test_fraction) * _BUCKETS)
        split = F.when(bucket < F.lit(first), VALIDATION).when(bucket < F.lit(second), TEST).otherwise(TRAIN)
    elif method == "stratified":
        assert label is not None, "stratified needs the label"
        split, dataframe = _stratified(dataframe, columns, label, validation_fraction, test_fraction, seed)
    elif method == "time":
        assert time_column is not None, "time needs data.time_column"
        split = _by_time(dataframe, time_column, validation_fraction, test_fraction, where)
    elif method == "column":
        assert split_column is not None, "column needs data.split_column"
        split = _by_column(dataframe, split_column, where)
    else:
        raise ValueError(f"unknown split method {method!r}")
    flagged = dataframe.withColumn(SPLIT_COLUMN, split.cast("int"))
    return flagged.withColumn(VALIDATION_COLUMN, F.col(SPLIT_COLUMN) == F.lit(VALIDATION))


def _stratified(dataframe: DataFrame, columns: Sequence[str], label: str, validation_fraction: float,
                test_fraction: float, seed: int) -> tuple[Column, DataFrame]:
    key_name = "__split_key"
    keyed = dataframe.withColumn(key_name, F.pmod(xxhash64_of(seed, columns), F.lit(_KEY_RANGE)).cast("double"))
    rows = keyed.groupBy(column(label)).agg(F.percentile(key_name, F.array(F.lit(validation_fraction),
                                                                 F.lit(validation_fraction + test_fraction)))
                                    .alias("bounds")).collect()
    bounds = {float(r[0]): [float(b) for b in r["bounds"]] for r in rows}
    first = F.lit(None).cast("double")
    second = F.lit(None).cast("double")
    for value, (low, high) in sorted(bounds.items()):
        first = F.when(column(label) == F.lit(value), F.lit(low)).otherwise(first)
        second = F.when(column(label) == F.lit(value), F.lit(high)).otherwise(second)
    key = F.col(key_name)
    split = F.when(key < first, VALIDATION)
    split = split.when(key < second, TEST) if test_fraction > 0 else split
    return split.otherwise(TRAIN), keyed


def _by_time(dataframe: DataFrame, time_column: str, validation_fraction: float, test_fraction: float,
             where: str) -> Column:
    moment = _as_number(dataframe, time_column)
    quantiles = [1.0 - validation_fraction - test_fraction, *([1.0 - test_fraction] if test_fraction > 0 else [])]
    row = dataframe.agg(F.percentile(moment, F.array(*[F.lit(q) for q in quantiles])).alias("bounds"),
                        F.count_distinct(moment).alias("distinct")).collect()[0]
    if row["bounds"] is None or int(row["distinct"]) < 2:
        raise DataError(f"{where}: data.time_column {time_column!r} has {row['distinct']} distinct value(s): a time "
                        "split needs rows from at least two moments")
    bounds = [float(b) for b in row["bounds"]]
    split = F.when(moment < F.lit(bounds[0]), TRAIN)
    if test_fraction > 0:
        split = split.when(moment >= F.lit(bounds[1]), TEST)
    return split.otherwise(VALIDATION)


def _as_number(dataframe: DataFrame, name: str) -> Column:
    """A date, timestamp or number as a double that orders like it (seconds for dates and timestamps)."""
    if isinstance(dataframe.schema[name].dataType, T.DateType | T.TimestampType | T.TimestampNTZType):
        return column(name).cast("timestamp").cast("double")
    return column(name).cast("double")


def _by_column(dataframe: DataFrame, split_column: str, where: str) -> Column:
    named = F.lower(F.trim(column(split_column)))
    known = list(SPLIT_NAMES)
    unknown = dataframe.where(named.isNull() | ~named.isin(known)).groupBy(column(split_column)).count() \
        .orderBy(F.desc("count")).limit(5).collect()
    if unknown:
        shown = ", ".join(f"{r[0]!r}: {r['count']}" for r in unknown)
        raise DataError(f"{where}: data.split_column {split_column!r} must hold train, validation or test; found "
                        f"{shown}")
    split = F.when(named == "validation", VALIDATION).when(named == "test", TEST)
    return split.otherwise(TRAIN)
