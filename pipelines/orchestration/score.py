"""Batch scoring: a registered model over a pinned Delta table, predictions with lineage back to Delta.

The model is resolved once (``models:/<name>@champion`` becomes ``models:/<name>/<version>``) and applied
through Arrow with ``mlflow.pyfunc.spark_udf`` in the driver's environment. Output columns:

* every input column that is not a model feature (ids, the label when present);
* ``prediction``: ``P(y=1)`` for probability models (logistic, modified_huber), 1.0/0.0 (the positive class or
  not) for hinge and squared_hinge, the predicted value for regression losses and the mean for poisson; null
  for rows with a null feature (the model cannot score them; a null string is a category and is scored);
* ``predicted_label`` (binary losses): ``1`` when ``prediction >= 0.5``; multinomial: ``prediction`` is the
  largest class probability and ``predicted_label`` its class (as a string);
* lineage: ``model_name``, ``model_version``, ``model_run_id``, ``model_uri``, ``source_table``,
  ``source_version``, ``scored_at``.

The append is idempotent per (model, input table version): scoring the same pair again adds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from pyspark.sql import Column, SparkSession
from pyspark.sql import functions as F

from pipelines.config import Config
from pipelines.errors import DataError
from pipelines.features.columns import all_of, model_input
from pipelines.identifiers import column
from pipelines.lakehouse.checks import distinct_up_to_case
from pipelines.lakehouse.reader import TableRef, case_twins_named, read_version, readable_files, resolve_version
from pipelines.lakehouse.writer import append_idempotent, check_output_table
from pipelines.tracking.export import ScoringModel, resolve_scoring_model, score_kind
from pipelines.tracking.registry import CHAMPION
from pipelines.tracking.score import scoring_udf
from pipelines.tracking.store import connect

LOGISTIC_THRESHOLD = 0.5


@dataclass(frozen=True)
class ScoringReport:
    model: ScoringModel
    source: TableRef
    output_table: str
    rows: int
    rows_without_prediction: int
    written: bool

    def describe(self) -> str:
        model = (f"{self.model.name} version {self.model.version}" if self.model.name else self.model.uri)
        action = "wrote" if self.written else "already had (nothing appended)"
        return (f"scored {self.source.identifier} at version {self.source.version} with {model} (run "
                f"{self.model.run_id}): {action} {self.rows} rows in {self.output_table}"
                f" ({self.rows_without_prediction} without prediction: null features)")


def default_model_uri(config: Config) -> str:
    return config.scoring.model_uri or f"models:/{config.tracking.registered_model}@{CHAMPION}"


def score_table(spark: SparkSession, config: Config) -> ScoringReport:
    """Score ``scoring.input_table`` (default ``data.table`` at ``data.version``) into ``output.predictions_table``.

    Raises
    ------
    TrackingError
        The model URI cannot be resolved or is not an lrsweep model.
    DataError
        The input table is missing, not Delta, or lacks a feature column of the model.
    OutputError
        The predictions location is not a Delta table or cannot be written.
    """
    client = connect(config.tracking).client
    model = resolve_scoring_model(client, default_model_uri(config))
    identifier = config.scoring.input_table or config.data.table
    requested = config.data.version if config.scoring.input_table is None else None
    with readable_files(f"table {identifier}", identifier):
        ref = resolve_version(spark, identifier, requested)
    check_output_table(spark, config.output.predictions_table, "output.predictions_table")
    where = f"table {ref.identifier} (version {ref.version})"
    with readable_files(where, identifier), case_twins_named(spark, ref, where):
        source = read_version(spark, ref)
    distinct_up_to_case(source.columns, where)
    missing = [name for name in model.features if name not in source.columns]
    if missing:
        raise DataError(f"table {ref.identifier} (version {ref.version}): feature column(s) {missing} of model "
                        f"{model.uri} not found; available columns: {sorted(source.columns)}")

    required = [name for name in model.features if model.families[name] != "string"]
    complete: Column = all_of([column(name).isNotNull() for name in required])
    passthrough = [column(name) for name in source.columns if name not in model.features]
    score = scoring_udf(spark, model)
    features = [model_input(name, model.families[name]) for name in model.features]
    if score_kind(model.loss) == "classes":  # the most probable class and its probability
        probabilities = score(*features)
        best = F.array_position(probabilities, F.array_max(probabilities))
        names = F.array(*[F.lit(str(value)) for value in model.classes])
        scored = source.filter(complete).select(*passthrough, F.array_max(probabilities).alias("prediction"),
                                                F.element_at(names, best.cast("int")).alias("predicted_label"))
        unscored = source.filter(~complete).select(*passthrough, F.lit(None).cast("double").alias("prediction"),
                                                   F.lit(None).cast("string").alias("predicted_label"))
        predictions = scored.unionByName(unscored)
    else:
        scored = source.filter(complete).select(*passthrough, score(*features).alias("prediction"))
        unscored = source.filter(~complete).select(*passthrough, F.lit(None).cast("double").alias("prediction"))
        predictions = scored.unionByName(unscored)
    if score_kind(model.loss) in ("probability", "label"):
        predictions = predictions.withColumn(
            "predicted_label", (F.col("prediction") >= LOGISTIC_THRESHOLD).cast("int"))
    scored_at = datetime.now(timezone.utc).replace(tzinfo=None)
    predictions = predictions.select(
        "*",
        F.lit(model.name).cast("string").alias("model_name"),
        F.lit(model.version).cast("string").alias("model_version"),
        F.lit(model.run_id).cast("string").alias("model_run_id"),
        F.lit(model.uri).alias("model_uri"),
        F.lit(ref.identifier).alias("source_table"),
        F.lit(ref.version).cast("long").alias("source_version"),
        F.lit(scored_at).cast("timestamp").alias("scored_at"),
    )
    counts = source.agg(F.count(F.lit(1)).alias("rows"),
                        F.sum((~complete).cast("long")).alias("incomplete")).collect()[0]
    written = append_idempotent(predictions, config.output.predictions_table, "output.predictions_table",
                                app_id=f"lrsweep-score:{model.uri}:{ref.identifier}@{ref.version}")
    return ScoringReport(model=model, source=ref, output_table=config.output.predictions_table,
                         rows=int(counts["rows"]), rows_without_prediction=int(counts["incomplete"] or 0),
                         written=written)
