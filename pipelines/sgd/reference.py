"""Single-process reference trainers: the test oracle for the distributed engine.

Both are thin loops over the kernels of :mod:`pipelines.sgd.kernels`, on all rows of
``X`` at once, starting from zero weights and intercepts.

* :func:`reference_minibatch_sgd` runs :func:`~pipelines.sgd.kernels.minibatch_epoch`
  ``epochs`` times (one partition holding every row, hence no model averaging).
* :func:`reference_gradient_descent` is exact full-batch gradient descent, as Spark
  MLlib's ``GradientDescent.runMiniBatchSGD`` with ``miniBatchFraction = 1``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import numpy as np

from pipelines.sgd._types import FloatArray
from pipelines.sgd.gradient_step import GradientSums, gradient_step
from pipelines.sgd.kernels import Block, EpochPlan, Models, batches_per_epoch, minibatch_epoch
from pipelines.sgd.optimizers import init_state
from pipelines.sgd.problem import TrainingProblem


def objective(problem: TrainingProblem, X: FloatArray, y: FloatArray, weights: FloatArray,
              intercepts: FloatArray) -> FloatArray:
    """``F_k = mean_i loss(x_i . w_k + b_k, y_i) + penalty(w_k)``, shape ``(K,)``, of ``problem``'s loss and
    regularization.

    Parameters
    ----------
    problem : TrainingProblem
    X : ndarray of shape (n, d)
    y : ndarray of shape (n,)
    weights : ndarray of shape (K, d)
    intercepts : ndarray of shape (K,)
    """
    mean_losses = problem.kernel(X).loss_sums(Block(X, y), weights, intercepts) / X.shape[0]
    result: FloatArray = mean_losses + problem.regularization.penalty(weights)
    return result


def reference_minibatch_sgd(problem: TrainingProblem, X: FloatArray, y: FloatArray, learning_rates: FloatArray, *,
                            epochs: int, batch_size: int, seed: int,
                            train_loss: Literal["exact", "progressive"] = "exact"
                            ) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Mini-batch training of K models, one per learning rate, from zero.

    Epoch ``e`` (0-based) is ``minibatch_epoch`` with ``seed`` and ``epoch = e``, the problem's loss, optimizer,
    regularization and intercept, and its schedule laid out over ``batches_per_epoch(n, batch_size)`` steps per
    epoch and ``total_steps = epochs * that``.

    Parameters
    ----------
    problem : TrainingProblem
    X : ndarray of shape (n, d)
    y : ndarray of shape (n,)
    learning_rates : ndarray of shape (K,)
    epochs : int
        ``>= 1``.
    batch_size : int
        ``>= 1``.
    seed : int
    train_loss : {"exact", "progressive"}
        What the history holds (``train.train_loss``).

    Returns
    -------
    weights : ndarray of shape (K, d)
    intercepts : ndarray of shape (K,)
    train_loss_history : ndarray of shape (epochs, K)
        Row ``e``: the objective after epoch ``e``, its mean loss :func:`objective`'s on all of ``X`` (exact) or
        epoch ``e``'s batch losses at the margins of their updates over the rows (progressive), plus the penalty of
        the models after epoch ``e``.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs!r}")
    learning_rates = np.asarray(learning_rates, dtype=np.float64)
    n_models, n_features = learning_rates.shape[0], X.shape[1]
    models = Models(np.zeros((n_models, n_features)), np.zeros(n_models),
                    init_state(problem.optimizer, n_models, n_features))
    steps_per_epoch = batches_per_epoch(X.shape[0], batch_size)
    plan = EpochPlan(problem.kernel(X), learning_rates, problem.regularization.rows(n_models),
                     problem.schedule.per_step(steps_per_epoch), epochs * steps_per_epoch, batch_size, seed, 0,
                     problem.fit_intercept, progressive_loss=train_loss == "progressive")
    train_loss_history = np.empty((epochs, n_models))
    for epoch in range(epochs):
        models, _ = minibatch_epoch(Block(X, y), models, replace(plan, epoch=epoch))
        if models.loss_sums is None:
            train_loss_history[epoch] = objective(problem, X, y, models.weights, models.intercepts)
        else:
            train_loss_history[epoch] = models.loss_sums / X.shape[0] + problem.regularization.penalty(models.weights)
    return models.weights, models.intercepts, train_loss_history


def reference_gradient_descent(problem: TrainingProblem, X: FloatArray, y: FloatArray, learning_rates: FloatArray, *,
                               iterations: int) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Exact full-batch gradient descent of K models, one per learning rate, from zero.

    Iteration ``i`` (1-based) is :func:`~pipelines.sgd.gradient_step.gradient_step` on the sums over all
    rows, one step per epoch (``schedule.per_step(1)`` over ``iterations`` steps). With ``optimizer = sgd``
    and ``schedule = inv_sqrt`` this is MLlib's ``GradientDescent`` with ``SimpleUpdater`` /
    ``SquaredL2Updater`` / ``L1Updater``.

    Parameters
    ----------
    problem : TrainingProblem
    X : ndarray of shape (n, d)
    y : ndarray of shape (n,)
    learning_rates : ndarray of shape (K,)
    iterations : int
        ``>= 1``.

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
    learning_rates = np.asarray(learning_rates, dtype=np.float64)
    n_models, n_features = learning_rates.shape[0], X.shape[1]
    weights = np.zeros((n_models, n_features))
    intercepts = np.zeros(n_models)
    state = init_state(problem.optimizer, n_models, n_features)
    step_schedule = problem.schedule.per_step(1)
    kernel = problem.kernel(X)
    loss_history = np.empty((iterations, n_models))
    for iteration in range(iterations):
        sums = GradientSums.of_block(kernel, Block(X, y), weights, intercepts)
        step = gradient_step(sums, weights, intercepts, state, problem=problem, learning_rates=learning_rates,
                             schedule=step_schedule, total_steps=iterations)
        loss_history[iteration] = step.objective
        weights, intercepts = step.weights, step.intercepts
    return weights, intercepts, loss_history
