"""The learning rate's history across a table's versions, from the results table (lakehouse SQL).

One row per finished sweep of a feature table: the table version (and the incremental range) it trained on,
its best grid point's learning rate and validation loss, and what the registry decided about it. The same
query is in the README and in ``notebooks/04_history.ipynb``.
"""

from __future__ import annotations

import pandas as pd
from pyspark.sql import SparkSession

from pipelines.lakehouse.delta import sql_name
from pipelines.lakehouse.writer import table_exists

HISTORY_COLUMNS = ("sweep_id", "data_version", "data_since_version", "best_learning_rate", "best_reg_param",
                   "best_val_loss", "registration", "finished")


def history_sql(results_table: str, data_table: str) -> str:
    """The query: the best point of every finished sweep of ``data_table``, oldest table version first."""
    return f"""SELECT sweep_id, data_version, data_since_version,
       learning_rate AS best_learning_rate, reg_param AS best_reg_param, val_loss AS best_val_loss,
       registration, written_at AS finished
FROM {sql_name(results_table)}
WHERE data_table = {sql_string(data_table)} AND is_best AND epoch = kept_epoch
ORDER BY data_version, finished"""


def learning_rate_history(spark: SparkSession, results_table: str, data_table: str) -> pd.DataFrame:
    """:func:`history_sql` as pandas (no rows when the results table does not exist yet)."""
    if not table_exists(spark, results_table):
        return pd.DataFrame(columns=list(HISTORY_COLUMNS))
    return spark.sql(history_sql(results_table, data_table)).toPandas()


def sql_string(value: str) -> str:
    """``value`` as a Spark SQL string literal (backslash escapes, Spark's default)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
