"""The compiled (numba) mini-batch epoch of multinomial models on dense inputs.

A model is ``C`` consecutive weight rows (:class:`~pipelines.sgd.losses.MultinomialLoss`). Per batch and model:

* the ``C`` rows' margins ``m_c = x . w_c + b_c`` by the register-tiled products of :mod:`pipelines.sgd.tiles`
  (each a sequential sum in input order);
* per data row, the softmax shifted by the row's largest margin: ``e_c = exp(m_c - max)``, ``s = sum_c e_c`` (in
  class order), ``dloss/dm_c = e_c / s - [y = c]`` and ``loss = log s - (m_y - max)``, times the row's weight;
* the rows' gradients ``sum_i d_ic x_i`` (batch order), the intercepts' ``sum_i d_ic``, then each row's optimizer
  step with its penalty (:func:`~pipelines.sgd.compiling.row_update`).

Each step runs over the batch's rows in a loop of its own, which the compiler vectorizes (the row's sums over
classes stay in class order, the sums over rows in batch order follow in loops of their own). One ``exp`` per class
and data row and one ``log`` per data row (:mod:`pipelines.sgd.elementary`'s), where the numpy definition
(:class:`~pipelines.sgd.numpy_kernel.NumpyKernel`, the test oracle) takes two ``exp`` and a ``log``: the results
agree to rounding (1e-10 relative in the tests). Every model's sums are its own, so a model's bits do not depend
on the other models in the pass.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.sgd import elementary
from pipelines.sgd._types import FloatArray
from pipelines.sgd.compiling import compile_kernel, gather_batch, jitable, named_for, row_update
from pipelines.sgd.kernels import Block, EpochPlan, EpochSteps, Models
from pipelines.sgd.numpy_kernel import NumpyKernel
from pipelines.sgd.optimizers import SLOT_NAMES, stacked_slots
from pipelines.sgd.tiles import TILE, tile_gradient, tile_margins


@functools.cache
def multinomial_epoch_kernel(update_rule: Callable[..., Any], decoupled_decay: bool) -> Any:
    """The compiled multinomial epoch of an optimizer's ``update_rule``: batches ``first_batch ..`` of ``order``,
    in place on ``weights`` ``(K C, d)``, ``intercepts`` ``(K C,)``, the slots, ``steps`` ``(K C,)``; ``loss_sums``
    ``(K,)`` gets each model's progressive loss (see :func:`pipelines.sgd.fused.epoch_kernel`)."""
    update, update_row = jitable(update_rule), jitable(row_update(update_rule, decoupled_decay))

    def epoch(X: FloatArray, y: FloatArray, sample_weight: FloatArray, order: Any, first_batch: int,
              n_batches: int, batch_size: int, n_classes: int, weights: FloatArray, intercepts: FloatArray,
              weight_slots: FloatArray, intercept_slots: FloatArray, steps: Any, step_sizes: FloatArray,
              l1: FloatArray, l2: FloatArray, constants: Any, fit_intercept: bool,
              loss_sums: FloatArray) -> None:  # pragma: no cover - compiled
        n_rows, d = X.shape
        n_models = weights.shape[0] // n_classes
        weighted = sample_weight.shape[0] > 0
        gathered = np.empty((batch_size, d))
        transposed = np.empty((d, batch_size))
        labels = np.empty(batch_size)
        row_weights = np.empty(batch_size)
        margins = np.empty((n_classes, batch_size))
        derivatives = np.empty((n_classes, batch_size))
        gradient = np.empty((n_classes, d))
        bias_gradients = np.empty(n_classes)
        classes = np.empty(batch_size, dtype=np.int64)
        largest = np.empty(batch_size)
        totals = np.empty(batch_size)
        losses = np.empty(batch_size)
        every_column = np.zeros(0, dtype=np.int64)
        for batch in range(n_batches):
            start = (first_batch + batch) * batch_size
            rows = min(batch_size, n_rows - start)
            gather_batch(X, y, sample_weight, order, start, rows, gathered, transposed, labels, row_weights)
            inverse_rows = 1.0 / rows
            for i in range(rows):
                classes[i] = int(labels[i])
            for model in range(n_models):
                base = model * n_classes
                c = 0
                while c < n_classes:
                    tile = TILE if c + TILE <= n_classes else 1
                    tile_margins(transposed, weights, base + c, tile, rows, margins[c:])
                    c += tile
                # each loop below runs over the batch's rows (vectorized), each row's sums in class order
                for i in range(rows):
                    largest[i] = margins[0, i] + intercepts[base]
                for c in range(n_classes):
                    bias = intercepts[base + c]
                    for i in range(rows):
                        margin = margins[c, i] + bias
                        margins[c, i] = margin
                        if margin > largest[i] or margin != margin:  # NaN propagates, as numpy's max
                            largest[i] = margin
                for i in range(rows):
                    totals[i] = 0.0
                for c in range(n_classes):
                    for i in range(rows):
                        exponential = elementary.exp(margins[c, i] - largest[i])
                        derivatives[c, i] = exponential
                        totals[i] += exponential
                for i in range(rows):
                    loss = elementary.log(totals[i]) - (margins[classes[i], i] - largest[i])
                    losses[i] = loss * row_weights[i] if weighted else loss
                for c in range(n_classes):
                    for i in range(rows):
                        value = derivatives[c, i] / totals[i] - (1.0 if c == classes[i] else 0.0)
                        derivatives[c, i] = value * row_weights[i] if weighted else value
                # the sums over the rows, in batch order
                for c in range(n_classes):
                    total = 0.0
                    for i in range(rows):
                        total += derivatives[c, i]
                    bias_gradients[c] = total
                batch_loss = 0.0
                for i in range(rows):
                    batch_loss += losses[i]
                loss_sums[model] += batch_loss
                c = 0
                while c < n_classes:
                    tile = TILE if c + TILE <= n_classes else 1
                    tile_gradient(gathered, derivatives[c:], tile, rows, gradient[c:])
                    c += tile
                for c in range(n_classes):
                    k = base + c
                    step_size = step_sizes[batch, k]
                    steps[k] += 1
                    step = float(steps[k])
                    update_row(weights, k, every_column, d, gradient[c], inverse_rows, step_size, step, l1[k], l2[k],
                               weight_slots, constants)
                    if fit_intercept:
                        intercepts[k] = update(intercepts[k], bias_gradients[c] * inverse_rows, step_size, step,
                                               intercept_slots, (k,), constants)

    return compile_kernel(named_for(epoch, update_rule, decoupled_decay),
                          (update_rule, tile_margins, tile_gradient, gather_batch,
                           row_update(update_rule, decoupled_decay)))


@dataclass(frozen=True)
class CompiledMultinomialKernel(NumpyKernel):
    """The kernel of multinomial models on dense inputs: the epoch compiled (:func:`multinomial_epoch_kernel`),
    the full passes (:meth:`loss_sums`, :meth:`gradient_sums`) those of the numpy kernel."""

    def run_batches(self, block: Block, models: Models, plan: EpochPlan, steps: EpochSteps) -> Models:
        """The epoch's batches in the compiled kernel; ``models.state`` is the caller's copy and is advanced."""
        state, optimizer = models.state, self.optimizer
        names = SLOT_NAMES[optimizer.name]
        weights = np.ascontiguousarray(models.weights, dtype=np.float64).copy()
        intercepts = np.ascontiguousarray(models.intercepts, dtype=np.float64).copy()
        weight_slots = stacked_slots(state.weight_slots, names, weights.shape)
        intercept_slots = stacked_slots(state.intercept_slots, names, intercepts.shape)
        step_counts = state.step.copy()
        n_classes = self.loss.outputs
        loss_sums = np.zeros(weights.shape[0] // n_classes)
        sample_weight = np.zeros(0) if block.sample_weight is None else \
            np.ascontiguousarray(block.sample_weight, dtype=np.float64)
        kernel = multinomial_epoch_kernel(optimizer.rule, optimizer.decoupled_decay)
        kernel(np.ascontiguousarray(block.X), np.ascontiguousarray(block.y, dtype=np.float64), sample_weight,
               steps.order, steps.first_batch, steps.n_batches, plan.batch_size, n_classes, weights, intercepts,
               weight_slots, intercept_slots, step_counts, np.ascontiguousarray(steps.step_sizes, dtype=np.float64),
               plan.penalties.l1, plan.penalties.l2, optimizer.constants, plan.fit_intercept, loss_sums)
        state.step = step_counts
        for index, name in enumerate(names):
            state.weight_slots[name], state.intercept_slots[name] = weight_slots[index], intercept_slots[index]
        return Models(weights, intercepts, state, loss_sums if plan.progressive_loss else None)
