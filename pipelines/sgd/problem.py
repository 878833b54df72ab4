"""What is being optimized, independent of where: the loss, intercept, penalty, optimizer and schedule.

:class:`TrainingProblem` is built once from the validated configuration (``model.*`` and
``train.optimizer``/``train.schedule``) and shipped unchanged to every Spark task, the range test and the
single-process reference trainers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from pipelines.sgd._validation import Interval, OneOf, Rule, SpecError, check_rules
from pipelines.sgd.design import Design, SplitDesign
from pipelines.sgd.kernels import Kernel
from pipelines.sgd.losses import DEFAULT_EPSILON, LOSS_NAMES, Loss, ScalarLoss, get_loss
from pipelines.sgd.numpy_kernel import SparseKernel
from pipelines.sgd.optimizers import OptimizerSpec
from pipelines.sgd.regularization import Regularization
from pipelines.sgd.schedules import ScheduleSpec


@dataclass(frozen=True)
class TrainingProblem:
    """``min_w mean_i loss(x_i . w + b, y_i) + penalty(w)`` and how each step moves toward it.

    Parameters
    ----------
    loss : str
        One of :data:`~pipelines.sgd.losses.LOSS_NAMES`.
    fit_intercept : bool
        When False the intercepts stay 0.
    regularization : Regularization
    optimizer : OptimizerSpec
    schedule : ScheduleSpec
        Durations in epochs; the strategy lays it out over its steps per epoch.
    epsilon : float
        ``huber``'s quadratic zone (``> 0``) and the epsilon-insensitive losses' dead zone (``>= 0``); other
        losses ignore it.
    n_classes : int
        ``multinomial``: the classes of the training split (a model is ``n_classes`` weight rows); other
        losses ignore it.
    """

    loss: str
    fit_intercept: bool = True
    regularization: Regularization = field(default_factory=Regularization)
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    epsilon: float = DEFAULT_EPSILON
    n_classes: int = 2
    loss_function: Loss = field(init=False, repr=False, compare=False)
    """The loss with its parameters, resolved once from ``loss``, ``epsilon`` and ``n_classes``: what every kernel
    of this problem computes."""

    RULES: ClassVar[dict[str, Rule]] = {"loss": OneOf(LOSS_NAMES), "epsilon": Interval(0, None),
                                        "n_classes": Interval(2, None, integer=True)}

    def __post_init__(self) -> None:
        check_rules(self, self.RULES)
        if self.loss == "huber" and self.epsilon <= 0:
            raise SpecError("epsilon", self.epsilon, "must be > 0 for the huber loss (its quadratic zone)")
        object.__setattr__(self, "loss_function", get_loss(self.loss, self.epsilon, self.n_classes))

    def kernel(self, X: Design) -> Kernel:
        """The kernel of this problem for blocks of ``X``'s kind, chosen once and passed down (the compiled ones
        imported here: numba is loaded by the processes that train only): a one-margin loss's compiled kernel on
        dense inputs (:class:`~pipelines.sgd.fused.CompiledKernel`) or on a split design
        (:class:`~pipelines.sgd.fused_sparse.CompiledSparseKernel`), a multinomial model's on dense inputs
        (:class:`~pipelines.sgd.fused_multinomial.CompiledMultinomialKernel`), else the numpy kernel of a split
        design (:class:`~pipelines.sgd.numpy_kernel.SparseKernel`, multinomial models)."""
        loss = self.loss_function
        if isinstance(X, SplitDesign):
            if isinstance(loss, ScalarLoss):
                from pipelines.sgd.fused_sparse import CompiledSparseKernel

                return CompiledSparseKernel(loss, self.optimizer)
            return SparseKernel(loss, self.optimizer)
        if isinstance(loss, ScalarLoss):
            from pipelines.sgd.fused import CompiledKernel

            return CompiledKernel(loss, self.optimizer)
        from pipelines.sgd.fused_multinomial import CompiledMultinomialKernel

        return CompiledMultinomialKernel(loss, self.optimizer)

    @property
    def outputs(self) -> int:
        """Weight rows per model: the classes of a multinomial model, else 1."""
        return self.loss_function.outputs
