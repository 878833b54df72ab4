"""Single-process reference trainers: the test oracle for the distributed engine.

Both are thin loops over the kernels of :mod:`pipelines.sgd.kernels`, on all rows of
``X`` at once, starting from zero weights and intercepts.

* :func:`reference_minibatch_sgd` runs :func:`~pipelines.sgd.kernels.minibatch_epoch`
  ``epochs`` times (one partition holding every row, hence no model averaging).
* :func:`reference_gradient_descent` is exact full-batch gradient descent, as Spark
  MLlib's ``GradientDescent.runMiniBatchSGD`` with ``miniBatchFraction = 1``.
"""

from __future__ import annotations

import math

import numpy as np

from pipelines.sgd._types import FloatArray
from pipelines.sgd.kernels import batch_gradients, loss_sums, minibatch_epoch
from pipelines.sgd.losses import Loss, get_loss
from pipelines.sgd.optimizers import OptimizerSpec, apply_update, init_state
from pipelines.sgd.regularization import Regularization
from pipelines.sgd.schedules import ScheduleSpec, multiplier


def objective(
    X: FloatArray,
    y: FloatArray,
    weights: FloatArray,
    intercepts: FloatArray,
    loss: Loss | str,
    regularization: Regularization,
) -> FloatArray:
    """``F_k = mean_i loss(x_i . w_k + b_k, y_i) + penalty(w_k)``, shape ``(K,)``.

    Parameters
    ----------
    X : ndarray of shape (n, d)
    y : ndarray of shape (n,)
    weights : ndarray of shape (K, d)
    intercepts : ndarray of shape (K,)
    loss : Loss or str
    regularization : Regularization
    """
    mean_losses = loss_sums(X, y, weights, intercepts, loss) / X.shape[0]
    result: FloatArray = mean_losses + regularization.penalty(weights)
    return result


def reference_minibatch_sgd(
    X: FloatArray,
    y: FloatArray,
    learning_rates: FloatArray,
    *,
    loss: Loss | str,
    optimizer: OptimizerSpec,
    regularization: Regularization,
    schedule: ScheduleSpec,
    epochs: int,
    batch_size: int,
    seed: int,
    fit_intercept: bool = True,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Mini-batch training of K models, one per learning rate, from zero.

    Epoch ``e`` (0-based) is ``minibatch_epoch(..., seed=seed, epoch=e)`` with
    ``total_steps = epochs * ceil(n / batch_size)``.

    Parameters
    ----------
    X : ndarray of shape (n, d)
    y : ndarray of shape (n,)
    learning_rates : ndarray of shape (K,)
    loss, optimizer, regularization, schedule
        As in :func:`~pipelines.sgd.kernels.minibatch_epoch`.
    epochs : int
        ``>= 1``.
    batch_size : int
        ``>= 1``.
    seed : int
    fit_intercept : bool
        If False the intercepts stay 0.

    Returns
    -------
    weights : ndarray of shape (K, d)
    intercepts : ndarray of shape (K,)
    train_loss_history : ndarray of shape (epochs, K)
        Row ``e``: the objective :func:`objective` on all of ``X`` after epoch ``e``.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs!r}")
    learning_rates = np.asarray(learning_rates, dtype=np.float64)
    n_models, n_features = learning_rates.shape[0], X.shape[1]
    weights = np.zeros((n_models, n_features))
    intercepts = np.zeros(n_models)
    state = init_state(optimizer, n_models, n_features)
    total_steps = epochs * math.ceil(X.shape[0] / batch_size)
    train_loss_history = np.empty((epochs, n_models))
    for epoch in range(epochs):
        weights, intercepts, state, _ = minibatch_epoch(
            X,
            y,
            weights,
            intercepts,
            state,
            loss=loss,
            optimizer=optimizer,
            regularization=regularization,
            learning_rates=learning_rates,
            schedule=schedule,
            total_steps=total_steps,
            batch_size=batch_size,
            seed=seed,
            epoch=epoch,
            fit_intercept=fit_intercept,
        )
        train_loss_history[epoch] = objective(X, y, weights, intercepts, loss, regularization)
    return weights, intercepts, train_loss_history


def reference_gradient_descent(
    X: FloatArray,
    y: FloatArray,
    learning_rates: FloatArray,
    *,
    loss: Loss | str,
    optimizer: OptimizerSpec,
    regularization: Regularization,
    schedule: ScheduleSpec,
    iterations: int,
    fit_intercept: bool = True,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Exact full-batch gradient descent of K models, one per learning rate, from zero.

    Iteration ``i`` (1-based) computes the mean gradient over all rows at the current
    models and applies ``apply_update`` with
    ``step_sizes = learning_rates * multiplier(schedule, i, iterations)``. With
    ``optimizer = sgd`` and ``schedule = inv_sqrt`` this is MLlib's ``GradientDescent``
    with ``SimpleUpdater`` / ``SquaredL2Updater`` / ``L1Updater``.

    Parameters
    ----------
    X : ndarray of shape (n, d)
    y : ndarray of shape (n,)
    learning_rates : ndarray of shape (K,)
    loss, optimizer, regularization, schedule
        As in :func:`~pipelines.sgd.kernels.minibatch_epoch`.
    iterations : int
        ``>= 1``.
    fit_intercept : bool
        If False the intercepts stay 0.

    Returns
    -------
    weights : ndarray of shape (K, d)
    intercepts : ndarray of shape (K,)
    loss_history : ndarray of shape (iterations, K)
        ``loss_history[i]`` is the objective at the models *before* update ``i + 1``
        (``lossSum / count + regVal`` of the previous weights, as MLlib's
        ``stochasticLossHistory``).
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations!r}")
    loss_function = get_loss(loss) if isinstance(loss, str) else loss
    learning_rates = np.asarray(learning_rates, dtype=np.float64)
    n_rows, n_features = X.shape
    n_models = learning_rates.shape[0]
    weights = np.zeros((n_models, n_features))
    intercepts = np.zeros(n_models)
    state = init_state(optimizer, n_models, n_features)
    loss_history = np.empty((iterations, n_models))
    for iteration in range(1, iterations + 1):
        grad_w_sum, grad_b_sum, loss_sum = batch_gradients(X, y, weights, intercepts, loss_function)
        loss_history[iteration - 1] = loss_sum / n_rows + regularization.penalty(weights)
        grad_b = grad_b_sum / n_rows if fit_intercept else np.zeros(n_models)
        step_sizes = learning_rates * multiplier(schedule, iteration, iterations)
        weights, new_intercepts = apply_update(
            optimizer,
            state,
            weights,
            intercepts,
            grad_w_sum / n_rows,
            grad_b,
            step_sizes,
            regularization,
        )
        if fit_intercept:
            intercepts = new_intercepts
    return weights, intercepts, loss_history
