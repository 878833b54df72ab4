"""Single-process reference trainers: the test oracle for the distributed engine.

Both are thin loops over the kernels of :mod:`pipelines.sgd.kernels`, on all rows of
``X`` at once, starting from zero weights and intercepts.

* :func:`reference_minibatch_sgd` runs :func:`~pipelines.sgd.kernels.minibatch_epoch`
  ``epochs`` times (one partition holding every row, hence no model averaging).
* :func:`reference_gradient_descent` is exact full-batch gradient descent, as Spark
  MLlib's ``GradientDescent.runMiniBatchSGD`` with ``miniBatchFraction = 1``.
"""

from __future__ import annotations

import numpy as np

from pipelines.sgd._types import FloatArray
from pipelines.sgd.gradient_step import GradientSums, gradient_step
from pipelines.sgd.kernels import batches_per_epoch, loss_sums, minibatch_epoch
from pipelines.sgd.losses import DEFAULT_EPSILON, Loss
from pipelines.sgd.optimizers import OptimizerSpec, init_state
from pipelines.sgd.problem import TrainingProblem
from pipelines.sgd.regularization import Regularization
from pipelines.sgd.schedules import ScheduleSpec


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

    Epoch ``e`` (0-based) is ``minibatch_epoch(..., seed=seed, epoch=e)`` with the schedule laid out over
    ``batches_per_epoch(n, batch_size)`` steps per epoch and ``total_steps = epochs * that``.

    Parameters
    ----------
    X : ndarray of shape (n, d)
    y : ndarray of shape (n,)
    learning_rates : ndarray of shape (K,)
    loss, optimizer, regularization
        As in :func:`~pipelines.sgd.kernels.minibatch_epoch`.
    schedule : ScheduleSpec
        Durations in epochs.
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
    steps_per_epoch = batches_per_epoch(X.shape[0], batch_size)
    step_schedule = schedule.per_step(steps_per_epoch)
    total_steps = epochs * steps_per_epoch
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
            schedule=step_schedule,
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

    Iteration ``i`` (1-based) is :func:`~pipelines.sgd.gradient_step.gradient_step` on the sums over all
    rows, one step per epoch (``schedule.per_step(1)`` over ``iterations`` steps). With ``optimizer = sgd``
    and ``schedule = inv_sqrt`` this is MLlib's ``GradientDescent`` with ``SimpleUpdater`` /
    ``SquaredL2Updater`` / ``L1Updater``.

    Parameters
    ----------
    X : ndarray of shape (n, d)
    y : ndarray of shape (n,)
    learning_rates : ndarray of shape (K,)
    loss, optimizer, regularization
        As in :func:`~pipelines.sgd.kernels.minibatch_epoch`.
    schedule : ScheduleSpec
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
    loss_name = loss if isinstance(loss, str) else loss.name
    epsilon = DEFAULT_EPSILON if isinstance(loss, str) else getattr(loss, "epsilon", DEFAULT_EPSILON)
    problem = TrainingProblem(loss_name, fit_intercept, regularization, optimizer, schedule, epsilon)
    learning_rates = np.asarray(learning_rates, dtype=np.float64)
    n_models, n_features = learning_rates.shape[0], X.shape[1]
    weights = np.zeros((n_models, n_features))
    intercepts = np.zeros(n_models)
    state = init_state(optimizer, n_models, n_features)
    step_schedule = schedule.per_step(1)
    loss_history = np.empty((iterations, n_models))
    for iteration in range(iterations):
        sums = GradientSums.of_block(X, y, weights, intercepts, problem.loss_function)
        step = gradient_step(sums, weights, intercepts, state, problem=problem, learning_rates=learning_rates,
                             schedule=step_schedule, total_steps=iterations)
        loss_history[iteration] = step.objective
        weights, intercepts = step.weights, step.intercepts
    return weights, intercepts, loss_history
