"""The sweep's best model as a scikit-learn pipeline: ``EncodingTransformer -> estimator``, nothing refitted.

:func:`linear_pipeline` builds it from the sweep's encoding and coefficients, :func:`linear_parts` takes it
apart again. The first step, :class:`EncodingTransformer`, is the scikit-learn face of the fitted
:class:`~pipelines.features.encoding.TableEncoding`: it turns raw table rows into the inputs the model was
trained on. The encoding itself stays free of scikit-learn, because the Python workers that build the training
blocks import it (issue 22: about 1.3 s of scikit-learn imports per new worker); the wrapper lives here, where
models are exported.

The estimator is the scikit-learn class that names the loss: ``LogisticRegression`` for logistic (and the
multinomial model), ``SGDClassifier(loss=...)`` for the margin classifiers, ``LinearRegression`` for squared,
``SGDRegressor(loss=..., epsilon=...)`` for the robust regression losses, ``PoissonRegressor`` for poisson.

Models exported by lrsweep 0.1 hold the :class:`TableEncoding` itself as their first step (its class path
``pipelines.features.encoding.TableEncoding``); they still load and predict (the encoding answers
``transform``), and :func:`linear_parts` reads both shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LinearRegression, LogisticRegression, PoissonRegressor, SGDClassifier, SGDRegressor
from sklearn.pipeline import Pipeline

from pipelines.features.encoding import ColumnEncoding, TableEncoding
from pipelines.sgd._types import FloatArray
from pipelines.sgd.losses import DEFAULT_EPSILON, task_of


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
