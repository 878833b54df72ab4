"""Sweeps read back from the results table (lakehouse SQL, no MLflow): a sweep's summary, its per-epoch rows,
and the learning rate's history across a table's versions.

* :func:`history_sql`: one row per finished sweep of a feature table: the table version (and the incremental
  range) it trained on, its best grid point's learning rate and validation loss, and what the registry decided
  about it. The same query is in the README and in ``notebooks/04_history.ipynb`` (``lrsweep history``).
* :func:`summary_sql`: one row per grid point of a sweep's last round, at its kept epoch (``lrsweep show``),
  from a finished sweep or one still training (its points' newest rows).
"""

from __future__ import annotations

import pandas as pd
from pyspark.sql import SparkSession

from pipelines.errors import DataError
from pipelines.lakehouse.delta import sql_name
from pipelines.lakehouse.writer import table_exists
from pipelines.sgd.metrics import ALL_CURVES

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


#: :func:`summary_sql`'s columns before the loss's curves (``train_loss``, ``val_loss``, and the others).
SUMMARY_KEYS = ("round", "learning_rate", "reg_param", "l1_ratio", "status", "epochs_run", "kept_epoch", "best",
                "loss", "data_table", "data_version", "parent_run_id", "child_run_id", "registration")


def latest_sweep_sql(results_table: str) -> str:
    """The sweep id of the newest row of the results table."""
    return f"SELECT sweep_id FROM {sql_name(results_table)} ORDER BY written_at DESC NULLS LAST LIMIT 1"


def summary_sql(results_table: str, sweep_id: str, curves: tuple[str, ...]) -> str:
    """The query: one row per grid point of ``sweep_id``'s last round, its status and flags from its newest row
    (the sweep's end sets them on all its rows), its ``curves`` at its kept epoch (NULL when it kept none)."""
    picked = ", ".join(f"r.{name}" for name in curves)
    return f"""WITH sweep AS (
  SELECT * FROM {sql_name(results_table)} WHERE sweep_id = {sql_string(sweep_id)}),
last_round AS (SELECT * FROM sweep WHERE coalesce(round, 1) = (SELECT max(coalesce(round, 1)) FROM sweep)),
points AS (
  SELECT learning_rate, coalesce(reg_param, 0.0) AS reg_param, coalesce(l1_ratio, 0.0) AS l1_ratio,
         max(coalesce(round, 1)) AS round, max(epoch) AS epochs_run,
         max_by(status, epoch) AS status, max_by(kept_epoch, epoch) AS kept_epoch,
         coalesce(max_by(is_best, epoch), false) AS best, max_by(loss, epoch) AS loss,
         max_by(data_table, epoch) AS data_table, max_by(data_version, epoch) AS data_version,
         max_by(parent_run_id, epoch) AS parent_run_id, max_by(child_run_id, epoch) AS child_run_id,
         max_by(registration, epoch) AS registration
  FROM last_round GROUP BY learning_rate, coalesce(reg_param, 0.0), coalesce(l1_ratio, 0.0))
SELECT p.round, p.learning_rate, p.reg_param, p.l1_ratio, p.status, p.epochs_run, p.kept_epoch, p.best, p.loss,
       p.data_table, p.data_version, p.parent_run_id, p.child_run_id, p.registration, {picked}
FROM points p LEFT JOIN last_round r
  ON r.learning_rate = p.learning_rate AND coalesce(r.reg_param, 0.0) = p.reg_param
     AND coalesce(r.l1_ratio, 0.0) = p.l1_ratio AND r.epoch = p.kept_epoch
ORDER BY p.learning_rate, p.reg_param, p.l1_ratio"""


def sweep_summary(spark: SparkSession, results_table: str, sweep_id: str | None = None,
                  curves: tuple[str, ...] = ALL_CURVES) -> pd.DataFrame:
    """:func:`summary_sql` as pandas; ``sweep_id`` None: the newest sweep of the table.

    Raises
    ------
    DataError
        The results table does not exist, holds no sweeps, or no rows of ``sweep_id`` (exit 2).
    """
    if not table_exists(spark, results_table):
        raise DataError(f"no results table at {results_table} (output.results_table): run a sweep first")
    if sweep_id is None:
        newest = spark.sql(latest_sweep_sql(results_table)).collect()
        if not newest:
            raise DataError(f"results table {results_table} holds no sweeps yet")
        sweep_id = str(newest[0]["sweep_id"])
    frame: pd.DataFrame = spark.sql(summary_sql(results_table, sweep_id, curves)).toPandas()
    if frame.empty:
        raise DataError(f"sweep {sweep_id!r} has no rows in {results_table}; `lrsweep history` lists the sweeps "
                        "of data.table")
    frame.insert(0, "sweep_id", sweep_id)
    return frame

