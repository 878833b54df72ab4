"""The sweep's best model exported: a scikit-learn pipeline, logged to MLflow, and read back again.

:func:`linear_pipeline` builds a :class:`sklearn.pipeline.Pipeline` ``EncodingTransformer -> estimator`` from the
sweep's encoding and coefficients, nothing refitted; :func:`log_model` logs it on the sweep's parent run (sklearn
flavor, signature, input example, lineage metadata); :func:`resolve_scoring_model` pins a logged or registered
model and reads its metadata back, :func:`load_linear_model` its encoding and coefficients
(:func:`linear_parts`, the inverse of :func:`linear_pipeline`). The model loads and predicts without Spark (it
needs this package, which its requirements name).

The first step, :class:`EncodingTransformer`, is the scikit-learn face of the fitted
:class:`~pipelines.features.encoding.TableEncoding`: it turns raw table rows into the inputs the model was
trained on (standardized numbers, one-hot and hashed strings, array and vector entries). The encoding itself
stays free of scikit-learn, because the Python workers that build the training blocks import it (issue 22:
about 1.3 s of scikit-learn imports per new worker); the wrapper lives here, where models are exported. Its class
path (``pipelines.tracking.export.EncodingTransformer``, in :data:`TRUSTED_TYPES`) is written into every logged
model, which is why this module, not another, holds the export: a loaded model imports it.

The estimator is the scikit-learn class that names the loss: ``LogisticRegression`` for logistic (and the
multinomial model), ``SGDClassifier(loss=...)`` for the margin classifiers, ``LinearRegression`` for squared,
``SGDRegressor(loss=..., epsilon=...)`` for the robust regression losses, ``PoissonRegressor`` for poisson.

What ``pyfunc.predict`` returns (:func:`score_kind`): ``probability`` models (logistic, modified_huber) are
logged with ``pyfunc_predict_fn="predict_proba"``, an ``(n, 2)`` array ``[P(y=0), P(y=1)]`` of which batch
scoring keeps ``P(y=1)``; ``label`` models (hinge, squared_hinge) predict the class, which batch scoring turns
into 1.0 (the positive, second class) or 0.0; ``classes`` models (multinomial) are logged with
``predict_proba``, an ``(n, C)`` array of class probabilities in the order of the ``lrsweep_classes`` metadata;
``value`` models (regression, poisson) predict the value (the mean count for poisson).

Models exported by lrsweep 0.1 hold the :class:`TableEncoding` itself as their first step (its class path
``pipelines.features.encoding.TableEncoding``); they still load and predict (the encoding answers
``transform``), and :func:`linear_parts` reads both shapes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import scipy
import scipy.sparse as sp
import sklearn
import skops
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LinearRegression, LogisticRegression, PoissonRegressor, SGDClassifier, SGDRegressor
from sklearn.pipeline import Pipeline

from pipelines import __version__
from pipelines.errors import TrackingError
from pipelines.features.encoding import ColumnEncoding, TableEncoding
from pipelines.sgd._types import FloatArray
from pipelines.sgd.losses import DEFAULT_EPSILON, LOSS_NAMES, task_of
from pipelines.tracking.store import is_unavailable, unavailable

if TYPE_CHECKING:  # an annotation only: every loaded model imports this module, runs.py imports matplotlib
    from pipelines.tracking.runs import SweepTracker

TAG_MODEL_URI = "lrsweep.model_uri"
MODEL_NAME = "model"
PROBABILITY_LOSSES = ("logistic", "modified_huber")


class EncodingTransformer(TransformerMixin, BaseEstimator):
    """A fitted :class:`TableEncoding` as a scikit-learn transformer: raw rows (pandas) in, ``[dense | sparse]``
    model inputs out (a dense array, or CSR when the encoding has sparse inputs).

    Built from training statistics, never fitted on rows: ``fit`` returns it unchanged so it can sit in a
    :class:`~sklearn.pipeline.Pipeline`.
    """

    def __init__(self, encoding: TableEncoding | None = None) -> None:
        self.encoding = encoding

    def fit(self, X: Any = None, y: Any = None) -> EncodingTransformer:
        return self

    def transform(self, X: Any) -> np.ndarray | sp.csr_matrix:
        return self._encoding().transform(X)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return self._encoding().get_feature_names_out(input_features)

    def __sklearn_is_fitted__(self) -> bool:
        return self.encoding is not None

    def _encoding(self) -> TableEncoding:
        if self.encoding is None:
            raise ValueError("EncodingTransformer without an encoding")
        return self.encoding


#: lrsweep's own classes in an exported model, for MLflow's safe (skops) loading; a model of lrsweep 0.1 holds
#: the last two only.
TRUSTED_TYPES = [f"{cls.__module__}.{cls.__qualname__}" for cls in (EncodingTransformer, TableEncoding, ColumnEncoding)]


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
    return Pipeline([("encode", EncodingTransformer(encoding)), ("model", estimator)])


def linear_parts(pipeline: Any, loss: str) -> tuple[TableEncoding, FloatArray, float | FloatArray]:
    """The encoding, weights and intercept of a :func:`linear_pipeline` (its inverse); also of a model exported
    by lrsweep 0.1, whose first step is the encoding itself."""
    steps = getattr(pipeline, "named_steps", {})
    step, estimator = steps.get("encode"), steps.get("model")
    encoding = step.encoding if isinstance(step, EncodingTransformer) else step
    if not isinstance(encoding, TableEncoding) or estimator is None or not hasattr(estimator, "coef_"):
        raise ValueError("not an lrsweep pipeline (an encoding, then a linear model)")
    weights = np.asarray(estimator.coef_, dtype=np.float64)
    intercepts = np.atleast_1d(np.asarray(estimator.intercept_, dtype=np.float64))
    if task_of(loss) == "multiclass":
        return encoding, weights, intercepts
    return encoding, weights.reshape(-1), float(intercepts[0])


# ----------------------------------------------------------------------------------------------- logging


def score_kind(loss: str) -> str:
    """What the model's pyfunc returns: ``probability``, ``label``, ``classes`` or ``value`` (see the module
    docstring)."""
    if task_of(loss) == "multiclass":
        return "classes"
    if task_of(loss) != "binary":
        return "value"
    return "probability" if loss in PROBABILITY_LOSSES else "label"


def predict_fn_name(loss: str) -> str:
    """The pipeline method ``pyfunc.predict`` calls: ``predict_proba`` for probability and classes models."""
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


# ----------------------------------------------------------------------------------------------- reading back


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
    data_version: str | None = None  # the table version it was trained on (lrsweep's lineage metadata)
    data_table: str | None = None  # the table it was trained on


def resolve_scoring_model(client: MlflowClient, model_uri: str) -> ScoringModel:
    """Pin ``model_uri`` (``models:/name@alias``, ``models:/name/3``, ``runs:/...``, ``models:/m-...``).

    Raises :class:`TrackingError` naming the URI when it cannot be resolved, :class:`TrackingUnavailableError`
    when the store cannot be reached.
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
        if is_unavailable(error):  # an outage, not a bad URI (a store.call around this retries it)
            raise unavailable(mlflow.get_registry_uri(), error) from None
        raise TrackingError(f"scoring.model_uri {model_uri}: {error.message}") from error
    if info.signature is None or info.signature.inputs is None:
        raise TrackingError(f"scoring.model_uri {model_uri}: the model has no input signature")
    metadata = info.metadata or {}
    loss = metadata.get("lrsweep_loss")
    if loss not in LOSS_NAMES:
        raise TrackingError(f"scoring.model_uri {model_uri}: not an lrsweep model (no lrsweep_loss metadata)")
    features = tuple(info.signature.inputs.input_names())
    recorded = json.loads(metadata.get("lrsweep_columns") or "{}")
    classes = json.loads(metadata.get("lrsweep_classes") or "[0, 1]")
    return ScoringModel(uri=pinned, name=name, version=version, run_id=info.run_id, features=features, loss=loss,
                        families={name: recorded.get(name, "number") for name in features},
                        positive_class=str(classes[-1]), classes=tuple(classes),
                        data_version=None if metadata.get("data_version") is None else str(metadata["data_version"]),
                        data_table=metadata.get("data_table"))


@dataclass(frozen=True)
class LinearModel:
    """A logged lrsweep model taken apart again: what :func:`linear_pipeline` put together."""

    info: ScoringModel
    encoding: TableEncoding
    weights: FloatArray  # (d,), or (C, d) for multinomial
    intercept: float | FloatArray


def load_linear_model(tracker: SweepTracker, model_uri: str) -> LinearModel:
    """Load ``model_uri`` and take it apart into its encoding and coefficients.

    Raises :class:`TrackingError` naming the URI when it is not an lrsweep model (or the registry refuses it),
    :class:`TrackingUnavailableError` when the store is unreachable, MLflow's own error when its artifacts
    cannot be loaded.
    """
    def load() -> tuple[ScoringModel, Any]:
        info = resolve_scoring_model(tracker.client, model_uri)
        return info, mlflow.sklearn.load_model(info.uri)

    info, pipeline = tracker.store.call("registry", load)
    try:
        encoding, weights, intercept = linear_parts(pipeline, info.loss)
    except ValueError as error:
        raise TrackingError(f"{model_uri}: {error}") from None
    return LinearModel(info, encoding, weights, intercept)
