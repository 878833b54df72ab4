"""The best model of a sweep as an MLflow sklearn model, its registration, and loading it for scoring.

The model is a :class:`sklearn.pipeline.Pipeline` ``encoding -> estimator`` built from the sweep's
encoding and coefficients, nothing refitted (:func:`pipelines.tracking.export.linear_pipeline`; the
estimator is the scikit-learn class that names the loss). The encoding turns
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
from collections.abc import Callable
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
from sklearn.pipeline import Pipeline

from pipelines import __version__
from pipelines.errors import TrackingError
from pipelines.faults import kill_point
from pipelines.features.encoding import TableEncoding
from pipelines.sgd._types import FloatArray
from pipelines.sgd.losses import LOSS_NAMES, task_of
from pipelines.tracking.export import TRUSTED_TYPES, linear_parts
from pipelines.tracking.export import linear_pipeline as linear_pipeline  # re-exported: the sweep's import of it
from pipelines.tracking.runs import TAG_SWEEP_ID, SweepTracker
from pipelines.tracking.store import is_unavailable, unavailable

CHAMPION = "champion"
TAG_VAL_LOSS = "lrsweep.val_loss"
TAG_LOSS = "lrsweep.loss"
TAG_MODEL_URI = "lrsweep.model_uri"
TAG_REGISTRATION = "lrsweep.registration"
TAG_CHAMPION_VERSION = "lrsweep.champion_version"  # the parent's: the champion its best model was measured against
TAG_CHAMPION_VAL_LOSS = "lrsweep.champion_val_loss"
TAG_CHALLENGER_VAL_LOSS = "lrsweep.challenger_val_loss"
TAG_REPLACED_VERSION = "lrsweep.replaced_version"
MODEL_NAME = "model"


PROBABILITY_LOSSES = ("logistic", "modified_huber")


def score_kind(loss: str) -> str:
    """What the model's pyfunc returns: ``probability``, ``label``, ``classes`` or ``value`` (see the module
    docstring)."""
    if task_of(loss) == "multiclass":
        return "classes"
    if task_of(loss) != "binary":
        return "value"
    return "probability" if loss in PROBABILITY_LOSSES else "label"


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


@dataclass(frozen=True)
class ChampionCheck:
    """The champion measured on the challenger's own validation rows, or why it could not be.

    ``metrics``: the champion's validation metrics (``loss``, ``auc``, ..., ``count``) computed like the
    sweep's own on the same rows; None when the champion cannot be applied to them (``why_not`` says why).
    """

    version: str
    metrics: dict[str, float] | None
    why_not: str = ""
    replaceable: bool = True  # False: the champion could not be loaded (its artifacts); it is not replaced

    @property
    def val_loss(self) -> float | None:
        return None if self.metrics is None else self.metrics["loss"]


def challenge(register_when: str, challenger_loss: float, check: ChampionCheck | None,
              min_improvement: float) -> tuple[bool, str]:
    """Whether the challenger becomes champion, and why (``register_when`` is ``always`` or ``if_better``).

    ``if_better``: the challenger must beat the champion's validation loss *on the same rows* by at least
    ``min_improvement`` (relative to the champion's loss, and strictly). A champion that cannot be measured on
    this sweep's rows (its columns are gone, another loss or other classes) cannot serve this table: it is
    replaced, and the reason says so.
    """
    if register_when == "always":
        return True, "tracking.register_when is 'always'"
    if check is None:
        return True, "no champion yet"
    if check.metrics is None and not check.replaceable:
        return False, (f"champion version {check.version} could not be loaded ({check.why_not}); it stays: "
                       "repair its artifacts or move the alias")
    if check.metrics is None:
        return True, f"champion version {check.version} cannot be measured on this sweep's rows ({check.why_not})"
    champion, rows = check.metrics["loss"], int(check.metrics.get("count", 0))
    on = f"on the same {rows} validation rows"
    if not math.isfinite(champion):
        return True, f"champion version {check.version}'s val_loss {on} is {champion}"
    gain = champion - challenger_loss
    relative = gain / abs(champion) if champion else math.copysign(math.inf, gain) if gain else 0.0
    compared = (f"challenger val_loss {challenger_loss:.6g} vs champion version {check.version}'s "
                f"{champion:.6g} {on} ({relative:+.3%}; tracking.min_improvement {min_improvement:.3%})")
    if gain > 0 and gain >= min_improvement * abs(champion):
        return True, f"{compared}: the challenger wins"
    return False, f"{compared}: the champion stays"


def registration_decided(tracker: SweepTracker) -> bool:
    """Whether an attempt of this sweep already took its registry decision (a rerun repeats nothing)."""
    return bool(tracker.parent_tags().get(TAG_REGISTRATION))


def register_model(tracker: SweepTracker, model_uri: str, name: str, register_when: str, val_loss: float,
                   loss: str, tags: dict[str, str], check: ChampionCheck | None = None,
                   min_improvement: float = 0.0) -> Registration:
    """Register ``model_uri`` under ``name`` and move the ``champion`` alias as ``register_when`` says.

    ``always``: register and make champion. ``if_better``: see :func:`challenge` (``check`` is the current
    champion measured on this sweep's validation rows; None when there is no champion). ``never``: nothing.
    The decision is recorded in the parent's ``lrsweep.registration`` tag; a rerun repeats nothing. A new
    version carries both validation losses and the version it replaced. The registry is never asked twice for one
    sweep's model: a version tagged with this sweep id (an attempt stopped between the registry's answer and the
    parent's tag, or an answer lost to an outage and retried) is reused, and the alias moved to it unless a later
    version holds it.
    """
    recorded = tracker.parent_tags().get(TAG_REGISTRATION)
    if recorded:
        decision, _, version = recorded.partition(":")
        return Registration("already_done", f"an earlier attempt of this sweep decided {decision!r}",
                            version or None)
    client = tracker.client
    earlier = None if register_when == "never" else \
        tracker.store.call("registry", lambda: sweep_model_version(client, name, tracker.sweep_id))
    if earlier is not None:  # that attempt decided to register: only what it left is done
        moved = tracker.store.call("registry", lambda: _move_alias_unless_later(client, name, int(earlier.version)))
        result = Registration("registered", f"version {earlier.version} was registered by an earlier attempt of "
                              f"this sweep; alias '{CHAMPION}' " + ("set" if moved else "stays on a later version"),
                              str(earlier.version))
    elif register_when == "never":
        result = Registration("skipped", "tracking.register_when is 'never'")
    else:
        wins, reason = challenge(register_when, val_loss, check, min_improvement)
        if not wins:
            assert check is not None
            result = Registration("kept_champion", reason, check.version)
            tracker.set_parent_tags({TAG_REGISTRATION: f"{result.decision}:"})
            return result
        compared: dict[str, str] = {}
        if check is not None:
            compared[TAG_REPLACED_VERSION] = check.version
            if check.val_loss is not None:
                compared |= {TAG_CHAMPION_VAL_LOSS: repr(check.val_loss), TAG_CHALLENGER_VAL_LOSS: repr(val_loss)}

        def register() -> Any:
            # retried after an outage, the registry may have registered the version without the answer arriving
            registered = sweep_model_version(client, name, tracker.sweep_id) or mlflow.register_model(
                model_uri, name, tags={TAG_VAL_LOSS: repr(float(val_loss)), TAG_LOSS: loss, **compared,
                                       TAG_SWEEP_ID: tracker.sweep_id, **tags})
            kill_point("register")
            client.set_registered_model_alias(name, CHAMPION, registered.version)
            return registered

        registered = tracker.store.call("registry", register)
        result = Registration("registered", f"{reason}; alias '{CHAMPION}' set", str(registered.version))
    tracker.set_parent_tags({TAG_REGISTRATION: f"{result.decision}:{result.version or ''}"})
    return result


def sweep_model_version(client: MlflowClient, name: str, sweep_id: str) -> Any | None:
    """The version of registered model ``name`` tagged with ``sweep_id`` (None: none, or no such model). The
    tag is filtered here, not in the query: not every registry searches versions by tag."""
    quote = '"' if "'" in name else "'"
    token = None
    while True:
        page = client.search_model_versions(f"name = {quote}{name}{quote}", max_results=1000, page_token=token)
        for version in page:
            if version.tags.get(TAG_SWEEP_ID) == sweep_id:
                return version
        token = page.token
        if not token:
            return None


def _move_alias_unless_later(client: MlflowClient, name: str, version: int) -> bool:
    """Point the ``champion`` alias at ``version`` unless it points at a later one (a later sweep's champion
    stays); True when it points at ``version`` now."""
    try:
        current = int(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException as error:
        if error.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise
        current = 0
    if current > version:
        return False
    client.set_registered_model_alias(name, CHAMPION, str(version))
    return True


def champion_version(tracker: SweepTracker, name: str) -> str | None:
    """The version the ``champion`` alias of ``name`` points at (None: no such model or alias)."""
    client = tracker.client

    def find() -> str | None:
        try:
            return str(client.get_model_version_by_alias(name, CHAMPION).version)
        except MlflowException as error:
            if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                return None
            if is_unavailable(error):
                raise  # an outage, not the registry's answer: store.call retries it
            raise TrackingError(f"model registry: cannot read {name}@{CHAMPION}: {error.message}") from error

    return tracker.store.call("registry", find)


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
