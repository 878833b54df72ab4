"""A deterministic train/validation split that does not depend on partitioning.

A row goes to validation when ``xxhash64(seed, label, features...) mod 10^6 < fraction * 10^6``: a
function of the row's content and the seed only, so the split is the same whatever the partition count,
the file layout or the order rows arrive in (identical rows land on the same side).
"""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

VALIDATION_COLUMN = "__is_validation"
_BUCKETS = 1_000_000


def with_validation_flag(dataframe: DataFrame, columns: Sequence[str], fraction: float, seed: int) -> DataFrame:
    """Add the boolean column :data:`VALIDATION_COLUMN` (True for about ``fraction`` of the rows)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    bucket = F.pmod(F.xxhash64(F.lit(seed), *[F.col(c) for c in columns]), F.lit(_BUCKETS))
    return dataframe.withColumn(VALIDATION_COLUMN, bucket < F.lit(round(fraction * _BUCKETS)))
