"""The best model of a sweep as an MLflow sklearn model, its registration, and loading it for scoring.

The model is a :class:`sklearn.pipeline.Pipeline` ``TableEncoding -> estimator`` built from the sweep's
encoding and coefficients, nothing refitted; the estimator is the scikit-learn class that names the loss
(:data:`ESTIMATORS`: ``LogisticRegression`` for logistic, ``SGDClassifier(loss=...)`` for the margin
classifiers, ``LinearRegression`` for squared, ``SGDRegressor(loss=..., epsilon=...)`` for the robust
regression losses, ``PoissonRegressor`` for poisson). The encoding turns
raw table rows into the inputs the model was trained on (standardized numbers, one-hot and hashed strings,
array and vector entries; :mod:`pipelines.features.encoding`), the estimator applies the coefficients learned
on them. It loads and predicts without Spark (it needs this package, which its requirements name).

What ``pyfunc.predict`` returns (:func:`score_kind`): ``probability`` models (logistic, modified_huber) are
logged with ``pyfunc_predict_fn="predict_proba"``, an ``(n, 2)`` array ``[P(y=0), P(y=1)]`` of which batch
scoring keeps ``P(y=1)``; ``label`` models (hinge, squared_hinge) predict the class, which batch scoring turns
into 1.0 (the positive, second class) or 0.0; ``classes`` models (multinomial) are logged with
``predict_proba``, an ``(n, C)`` array of class probabilities in the order of the ``lrsweep_classes`` metadata;
``value`` models (regression, poisson) predict the value (the mean count for poisson).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import scipy
import sklearn
import skops
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from pyspark.sql import Column, SparkSession
from sklearn.base import BaseEstimator
from sklearn.linear_model import LinearRegression, LogisticRegression, PoissonRegressor, SGDClassifier, SGDRegressor
from sklearn.pipeline import Pipeline

from pipelines import __version__
from pipelines.errors import TrackingError
from pipelines.features.encoding import TableEncoding
from pipelines.sgd._types import FloatArray
from pipelines.sgd.losses import DEFAULT_EPSILON, LOSS_NAMES, task_of
from pipelines.tracking.runs import SweepTracker

CHAMPION = "champion"
TAG_VAL_LOSS = "lrsweep.val_loss"
TAG_LOSS = "lrsweep.loss"
TAG_MODEL_URI = "lrsweep.model_uri"
TAG_REGISTRATION = "lrsweep.registration"
MODEL_NAME = "model"
#: lrsweep's own classes in a logged model, for MLflow's safe (skops) loading.
TRUSTED_TYPES = [f"{TableEncoding.__module__}.{name}" for name in ("TableEncoding", "ColumnEncoding")]


PROBABILITY_LOSSES = ("logistic", "modified_huber")


def score_kind(loss: str) -> str:
    """What the model's pyfunc returns: ``probability``, ``label``, ``classes`` or ``value`` (see the module
    docstring)."""
    if task_of(loss) == "multiclass":
        return "classes"
    if task_of(loss) != "binary":
        return "value"
    return "probability" if loss in PROBABILITY_LOSSES else "label"


def linear_pipeline(encoding: TableEncoding, weights: FloatArray, intercept: float | FloatArray, loss: str,
                    classes: Sequence[Any] = (0, 1), epsilon: float = DEFAULT_EPSILON) -> Pipeline:
    """A fitted-looking sklearn pipeline from the encoding and coefficients (``weights`` shape ``(d,)``; a
    multinomial model's ``(C, d)`` with intercepts ``(C,)``).

    ``classes``: a binary model's two labels, the positive one second (a string label's values); a multinomial
    model's C classes in the order of its weight rows.
    """
    d = encoding.n_inputs
    multiclass = task_of(loss) == "multiclass"
    expected = (len(classes), d) if multiclass else (d,)
    if weights.shape != expected:
        raise ValueError(f"weights have shape {weights.shape}, expected {expected}")
    coef = weights.astype(np.float64)
    estimator: BaseEstimator
    if multiclass:
        multinomial = LogisticRegression()  # more than two classes: predict_proba is the softmax of the margins
        multinomial.coef_ = coef
        multinomial.intercept_ = np.asarray(intercept, dtype=np.float64).reshape(len(classes))
        multinomial.classes_ = np.array(classes)
        multinomial.n_iter_ = np.array([0], dtype=np.int32)
        estimator = multinomial
    elif task_of(loss) == "binary":
        classifier = LogisticRegression() if loss == "logistic" else SGDClassifier(loss=loss)
        classifier.coef_ = coef.reshape(1, d)
        classifier.intercept_ = np.array([intercept], dtype=np.float64)
        classifier.classes_ = np.array(classes)
        classifier.n_iter_ = np.array([0], dtype=np.int32) if loss == "logistic" else 0
        estimator = classifier
    elif loss == "squared":
        regression = LinearRegression()
        regression.coef_, regression.intercept_ = coef, float(intercept)
        regression.rank_, regression.singular_ = d, np.ones(d)
        estimator = regression
    elif loss == "poisson":
        poisson = PoissonRegressor(alpha=0.0)
        poisson.coef_, poisson.intercept_ = coef, float(intercept)
        poisson._base_loss = poisson._get_loss()  # what fit() sets: the log link predict() inverts
        estimator = poisson
    else:
        robust = SGDRegressor(loss=loss, epsilon=epsilon)
        robust.coef_, robust.intercept_ = coef, np.array([intercept], dtype=np.float64)
        estimator = robust
    estimator.n_features_in_ = d
    return Pipeline([("encode", encoding), ("model", estimator)])


def predict_fn_name(loss: str) -> str:
    return "predict_proba" if score_kind(loss) in ("probability", "classes") else "predict"


def log_model(tracker: SweepTracker, pipeline: Pipeline, input_example: pd.DataFrame, loss: str,
              metadata: dict[str, Any]) -> str:
    """Log ``pipeline`` on the parent run (sklearn flavor, signature, input example); return its URI.

    A rerun finds the URI in the parent's ``lrsweep.model_uri`` tag and logs nothing.
    """
    existing = tracker.parent_tags().get(TAG_MODEL_URI)
    if existing:
        return existing
    predict = getattr(pipeline, predict_fn_name(loss))
    signature = infer_signature(input_example, predict(input_example))
    parent = tracker.parent_run_id
    assert parent is not None, "start_parent() first"

    def log() -> str:
        with mlflow.start_run(run_id=parent):  # log_model links the model to the active run
            info = mlflow.sklearn.log_model(
                pipeline, name=MODEL_NAME, signature=signature, input_example=input_example,
                pyfunc_predict_fn=predict_fn_name(loss), metadata={"lrsweep_loss": loss, **metadata},
                skops_trusted_types=TRUSTED_TYPES,
                # explicit requirements: inferring them would load the model in a subprocess (seconds)
                pip_requirements=[f"lrsweep=={__version__}", f"scikit-learn=={sklearn.__version__}",
                                  f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}",
                                  f"pandas=={pd.__version__}", f"scipy=={scipy.__version__}",
                                  f"pyarrow=={pa.__version__}", f"skops=={skops.__version__}"])
        tracker.client.update_run(parent, status="RUNNING")  # leaving start_run() ended it; the sweep ends it
        return str(info.model_uri)

    model_uri: str = tracker.store.call("model", log)
    tracker.set_parent_tags({TAG_MODEL_URI: model_uri})
    return model_uri


@dataclass(frozen=True)
class Registration:
    """What happened to the sweep's best model in the registry."""

    decision: str  # registered | skipped | kept_champion | already_done
    reason: str
    version: str | None = None

    def describe(self, name: str) -> str:
        where = f"{name} version {self.version}" if self.version else name
        return f"model registry: {self.decision} ({where}): {self.reason}"


def register_model(tracker: SweepTracker, model_uri: str, name: str, register_when: str, val_loss: float,
                   loss: str, tags: dict[str, str]) -> Registration:
    """Register ``model_uri`` under ``name`` and move the ``champion`` alias as ``register_when`` says.

    ``always``: register and make champion. ``if_better``: only when ``val_loss`` is lower than the current
    champion's (its ``lrsweep.val_loss`` tag) or there is no comparable champion. ``never``: nothing.
    The decision is recorded in the parent's ``lrsweep.registration`` tag; a rerun repeats nothing.
    """
    recorded = tracker.parent_tags().get(TAG_REGISTRATION)
    if recorded:
        decision, _, version = recorded.partition(":")
        return Registration("already_done", f"an earlier attempt of this sweep decided {decision!r}",
                            version or None)
    client = tracker.client
    if register_when == "never":
        result = Registration("skipped", "tracking.register_when is 'never'")
    else:
        champion = tracker.store.call("registry", lambda: _champion(client, name))
        reason = "tracking.register_when is 'always'"
        if register_when == "if_better":
            reason, better = _compare(champion, val_loss, loss)
            if not better:
                assert champion is not None
                result = Registration("kept_champion", reason, str(champion.version))
                tracker.set_parent_tags({TAG_REGISTRATION: f"{result.decision}:"})
                return result

        def register() -> Any:
            registered = mlflow.register_model(model_uri, name, tags={
                TAG_VAL_LOSS: repr(float(val_loss)), TAG_LOSS: loss, **tags})
            client.set_registered_model_alias(name, CHAMPION, registered.version)
            return registered

        registered = tracker.store.call("registry", register)
        result = Registration("registered", f"{reason}; alias '{CHAMPION}' set", str(registered.version))
    tracker.set_parent_tags({TAG_REGISTRATION: f"{result.decision}:{result.version or ''}"})
    return result


def _champion(client: MlflowClient, name: str) -> Any:
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise TrackingError(f"model registry: cannot read {name}@{CHAMPION}: {error.message}") from error


def _compare(champion: Any, val_loss: float, loss: str) -> tuple[str, bool]:
    if champion is None:
        return "no champion yet", True
    recorded = champion.tags.get(TAG_VAL_LOSS)
    if recorded is None or champion.tags.get(TAG_LOSS) != loss:
        return f"champion version {champion.version} has no comparable {TAG_VAL_LOSS} tag", True
    champion_loss = float(recorded)
    if math.isfinite(champion_loss) and val_loss >= champion_loss:
        return (f"val_loss {val_loss:.6g} is not better than champion version {champion.version}'s "
                f"{champion_loss:.6g}"), False
    return f"val_loss {val_loss:.6g} beats champion version {champion.version}'s {champion_loss:.6g}", True


# ----------------------------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class ScoringModel:
    """A model resolved for batch scoring: a pinned URI, its lineage and its input columns."""

    uri: str  # pinned: models:/<name>/<version> for registry URIs
    name: str | None
    version: str | None
    run_id: str | None
    features: tuple[str, ...]
    loss: str  # one of LOSS_NAMES; score_kind(loss) says what the pyfunc returns
    families: dict[str, str] = field(default_factory=dict)  # feature -> column family (number when not recorded)
    positive_class: str = "1"  # label models: the class scored 1.0
    classes: tuple[Any, ...] = (0, 1)  # the model's classes (multinomial: in the order of its probabilities)


def resolve_scoring_model(client: MlflowClient, model_uri: str) -> ScoringModel:
    """Pin ``model_uri`` (``models:/name@alias``, ``models:/name/3``, ``runs:/...``, ``models:/m-...``).

    Raises :class:`TrackingError` naming the URI when it cannot be resolved.
    """
    name: str | None = None
    version: str | None = None
    pinned = model_uri
    try:
        if model_uri.startswith("models:/") and not model_uri.removeprefix("models:/").startswith("m-"):
            path = model_uri.removeprefix("models:/")
            if "@" in path:
                name, _, alias = path.partition("@")
                model_version = client.get_model_version_by_alias(name, alias)
            else:
                name, _, number = path.partition("/")
                model_version = client.get_model_version(name, number)
            version = str(model_version.version)
            pinned = f"models:/{name}/{version}"
        info = mlflow.models.get_model_info(pinned)
    except MlflowException as error:
        raise TrackingError(f"scoring.model_uri {model_uri}: {error.message}") from error
    if info.signature is None or info.signature.inputs is None:
        raise TrackingError(f"scoring.model_uri {model_uri}: the model has no input signature")
    loss = (info.metadata or {}).get("lrsweep_loss")
    if loss not in LOSS_NAMES:
        raise TrackingError(f"scoring.model_uri {model_uri}: not an lrsweep model (no lrsweep_loss metadata)")
    features = tuple(info.signature.inputs.input_names())
    recorded = json.loads((info.metadata or {}).get("lrsweep_columns") or "{}")
    classes = json.loads((info.metadata or {}).get("lrsweep_classes") or "[0, 1]")
    return ScoringModel(uri=pinned, name=name, version=version, run_id=info.run_id, features=features, loss=loss,
                        families={name: recorded.get(name, "number") for name in features},
                        positive_class=str(classes[-1]), classes=tuple(classes))


def scoring_udf(spark: SparkSession, model: ScoringModel) -> Callable[..., Column]:
    """A Spark UDF (Arrow batches, the driver's environment) returning the score as a double.

    ``probability`` models return ``P(y=1)``, ``label`` models 1.0 for the positive class and 0.0 for the
    other, ``value`` models the predicted value.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, DoubleType, StringType

    kind = score_kind(model.loss)
    result_type = {"probability": ArrayType(DoubleType()), "classes": ArrayType(DoubleType()),
                   "label": StringType()}.get(kind, DoubleType())
    udf = mlflow.pyfunc.spark_udf(spark, model.uri, result_type=result_type, env_manager="local")

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
