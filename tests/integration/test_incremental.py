"""Incremental reads (``data.since_version``): the rows added after a version, from Delta's change data feed
when the table has it, else from a version difference of appends; real Delta tables, the suite's Spark."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.config import DataConfig
from pipelines.errors import DataError
from pipelines.lakehouse.reader import read_feature_table


def rows(spark: SparkSession, first: int, count: int) -> DataFrame:
    return spark.range(first, first + count, numPartitions=1).select(
        F.col("id"), (F.col("id") % 2).cast("double").alias("label"), (F.col("id") * 0.5).alias("x"))


def data(table: str, since: int | None, version: int | None = None) -> DataConfig:
    return DataConfig(table=table, label="label", since_version=since, version=version, exclude=["id"])


def ids(spark: SparkSession, config: DataConfig) -> tuple[list[int], str]:
    table = read_feature_table(spark, config, "logistic")
    read = sorted(int(x * 2) for x in table.dataframe.toPandas()["x"])
    return read, table.ref.describe()


def test_rows_appended_after_a_version_are_read_without_a_change_feed(spark: SparkSession, tmp_path: Path) -> None:
    table = str(tmp_path / "appended")
    rows(spark, 0, 100).write.format("delta").save(table)  # version 0
    rows(spark, 100, 30).write.format("delta").mode("append").save(table)  # 1
    spark.sql(f"OPTIMIZE delta.`{table}`")  # 2: files rewritten, no row changed
    rows(spark, 130, 5).write.format("delta").mode("append").save(table)  # 3
    read, described = ids(spark, data(table, since=0))
    assert read == list(range(100, 135))
    assert described == "versions 1..3 (rows added after version 0, appends)"
    with pytest.raises(DataError, match=r"versions 2..2 \(rows added after version 1, appends\)\): no rows to read"):
        read_feature_table(spark, data(table, since=1, version=2), "logistic")  # OPTIMIZE added no row
    with pytest.raises(DataError, match=r"data.since_version=3 is not older than the pinned version 3"):
        read_feature_table(spark, data(table, since=3), "logistic")
    with pytest.raises(DataError, match=r"data.since_version=2 is not older than the pinned version 1"):
        read_feature_table(spark, data(table, since=2, version=1), "logistic")

    spark.sql(f"UPDATE delta.`{table}` SET x = x + 1000 WHERE id < 3")  # 4: rows changed, no change feed
    with pytest.raises(DataError) as error:
        read_feature_table(spark, data(table, since=2), "logistic")
    message = str(error.value)
    assert "the change data feed is unavailable for versions 3..4" in message and "4 (UPDATE)" in message
    assert "delta.enableChangeDataFeed=true" in message and "\n" not in message


def test_the_change_data_feed_gives_the_rows_added_or_changed_net_of_the_range(spark: SparkSession,
                                                                                tmp_path: Path) -> None:
    table = str(tmp_path / "with_cdf")
    rows(spark, 0, 50).write.format("delta").option("delta.enableChangeDataFeed", "true").save(table)  # 0
    rows(spark, 50, 20).write.format("delta").mode("append").save(table)  # 1
    spark.sql(f"UPDATE delta.`{table}` SET x = x + 1000 WHERE id < 4")  # 2: the post-images count as new
    spark.sql(f"DELETE FROM delta.`{table}` WHERE id = 10")  # 3: a deletion adds nothing
    read, described = ids(spark, data(table, since=0))
    assert read == sorted([*range(50, 70), *(2000 + i for i in range(4))])  # x + 1000 read back as id + 2000
    assert described == "versions 1..3 (rows added after version 0, change data feed)"
    # within the range, a row inserted and then updated counts once (as updated), one inserted and then
    # deleted not at all
    spark.sql(f"UPDATE delta.`{table}` SET x = x + 1000 WHERE id IN (50, 51)")  # 4
    spark.sql(f"DELETE FROM delta.`{table}` WHERE id = 52")  # 5
    read, _ = ids(spark, data(table, since=0))
    assert read == sorted([2050, 2051, *range(53, 70), *(2000 + i for i in range(4))])
