"""A logged lrsweep model as a Spark column function: the scoring UDF that :mod:`pipelines.orchestration.score`
applies to a table.

The model runs through Arrow batches with ``mlflow.pyfunc.spark_udf`` in the driver's environment; what its
pyfunc returns (:func:`pipelines.tracking.export.score_kind`) becomes one double per row, or the class
probabilities of a multinomial model.
"""

from __future__ import annotations

from collections.abc import Callable

import mlflow
from pyspark.sql import Column, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DoubleType, StringType

from pipelines.tracking.export import ScoringModel, score_kind
from pipelines.tracking.store import is_unavailable, unavailable


def scoring_udf(spark: SparkSession, model: ScoringModel) -> Callable[..., Column]:
    """A Spark UDF (Arrow batches, the driver's environment) returning the score as a double.

    ``probability`` models return ``P(y=1)``, ``label`` models 1.0 for the positive class and 0.0 for the
    other, ``value`` models the predicted value; ``classes`` models the array of class probabilities.
    """
    kind = score_kind(model.loss)
    result_type = {"probability": ArrayType(DoubleType()), "classes": ArrayType(DoubleType()),
                   "label": StringType()}.get(kind, DoubleType())
    try:  # the model's artifacts are downloaded here
        udf = mlflow.pyfunc.spark_udf(spark, model.uri, result_type=result_type, env_manager="local")
    except Exception as error:
        if is_unavailable(error):
            raise unavailable(mlflow.get_registry_uri(), error) from None
        raise

    def score(*columns: Column) -> Column:
        scored: Column = udf(F.struct(*columns))
        if kind == "probability":
            return scored[1]
        if kind == "classes":
            return scored
        if kind == "label":
            return (scored == F.lit(model.positive_class)).cast("double")
        return scored

    return score
