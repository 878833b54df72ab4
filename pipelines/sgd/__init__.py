"""Pure-numpy core of the learning-rate sweep: losses, schedules, optimizers, kernels.

Every function is vectorized over K model rows (one per learning rate, or per
learning rate and seed) and uses float64. Nothing here imports Spark or MLflow; the
distributed layer calls :mod:`pipelines.sgd.kernels` on numpy blocks of partition
rows, and :mod:`pipelines.sgd.reference` is the single-process oracle.
"""

from pipelines.sgd.kernels import (
    batch_gradients,
    compute_margins,
    epoch_permutation,
    loss_sums,
    minibatch_epoch,
)
from pipelines.sgd.losses import LOSS_NAMES, LogisticLoss, Loss, SquaredLoss, get_loss, sigmoid
from pipelines.sgd.metrics import DEFAULT_AUC_BINS, MetricAccumulator, histogram_auc
from pipelines.sgd.optimizers import (
    OPTIMIZER_NAMES,
    OptimizerSpec,
    OptimizerState,
    apply_update,
    init_state,
)
from pipelines.sgd.reference import (
    objective,
    reference_gradient_descent,
    reference_minibatch_sgd,
)
from pipelines.sgd.regularization import Regularization
from pipelines.sgd.schedules import SCHEDULE_NAMES, AdaptiveRateState, ScheduleSpec, multiplier

__all__ = [
    "DEFAULT_AUC_BINS",
    "LOSS_NAMES",
    "OPTIMIZER_NAMES",
    "SCHEDULE_NAMES",
    "AdaptiveRateState",
    "LogisticLoss",
    "Loss",
    "MetricAccumulator",
    "OptimizerSpec",
    "OptimizerState",
    "Regularization",
    "ScheduleSpec",
    "SquaredLoss",
    "apply_update",
    "batch_gradients",
    "compute_margins",
    "epoch_permutation",
    "get_loss",
    "histogram_auc",
    "init_state",
    "loss_sums",
    "minibatch_epoch",
    "multiplier",
    "objective",
    "reference_gradient_descent",
    "reference_minibatch_sgd",
    "sigmoid",
]
