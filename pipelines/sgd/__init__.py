"""Pure-numpy core of the learning-rate sweep: losses, schedules, optimizers, kernels.

Every function is vectorized over K model rows (one per learning rate, or per
learning rate and seed) and uses float64. Nothing here imports Spark or MLflow; the
distributed layer runs the kernel its :class:`TrainingProblem` chooses (:mod:`pipelines.sgd.kernels`) and
:mod:`pipelines.sgd.gradient_step` on numpy blocks of partition rows, and :mod:`pipelines.sgd.reference` is the
single-process oracle. The specs (:class:`ScheduleSpec`, :class:`OptimizerSpec`,
:class:`Regularization`, :class:`TrainingProblem`) carry the one set of parameter rules;
the configuration builds them when it is loaded.
"""

from pipelines.sgd._validation import SpecError
from pipelines.sgd.gradient_step import GradientSums, StepResult, gradient_step
from pipelines.sgd.kernels import (
    Block,
    EpochPlan,
    Kernel,
    Models,
    batches_per_epoch,
    compute_margins,
    epoch_permutation,
    minibatch_epoch,
)
from pipelines.sgd.losses import LOSS_NAMES, LogisticLoss, Loss, SquaredLoss, get_loss, sigmoid
from pipelines.sgd.metrics import (
    ALL_CURVES,
    DEFAULT_AUC_BINS,
    MAIN_METRIC,
    VALIDATION_METRICS,
    MetricAccumulator,
    curve_names,
    histogram_auc,
)
from pipelines.sgd.optimizers import (
    OPTIMIZER_NAMES,
    OptimizerSpec,
    OptimizerState,
    apply_update,
    init_state,
)
from pipelines.sgd.problem import TrainingProblem
from pipelines.sgd.reference import (
    objective,
    reference_gradient_descent,
    reference_minibatch_sgd,
)
from pipelines.sgd.regularization import Regularization
from pipelines.sgd.schedules import (
    CONSTANT,
    SCHEDULE_NAMES,
    AdaptiveRateState,
    ScheduleSpec,
    StepSchedule,
    multiplier,
)

__all__ = [
    "ALL_CURVES",
    "CONSTANT",
    "DEFAULT_AUC_BINS",
    "LOSS_NAMES",
    "MAIN_METRIC",
    "OPTIMIZER_NAMES",
    "SCHEDULE_NAMES",
    "VALIDATION_METRICS",
    "AdaptiveRateState",
    "Block",
    "EpochPlan",
    "GradientSums",
    "Kernel",
    "LogisticLoss",
    "Loss",
    "MetricAccumulator",
    "Models",
    "OptimizerSpec",
    "OptimizerState",
    "Regularization",
    "ScheduleSpec",
    "SpecError",
    "SquaredLoss",
    "StepResult",
    "StepSchedule",
    "TrainingProblem",
    "apply_update",
    "batches_per_epoch",
    "compute_margins",
    "curve_names",
    "epoch_permutation",
    "get_loss",
    "gradient_step",
    "histogram_auc",
    "init_state",
    "minibatch_epoch",
    "multiplier",
    "objective",
    "reference_gradient_descent",
    "reference_minibatch_sgd",
    "sigmoid",
]
