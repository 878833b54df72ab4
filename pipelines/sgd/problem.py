"""What is being optimized, independent of where: the loss, intercept, penalty, optimizer and schedule.

:class:`TrainingProblem` is built once from the validated configuration (``model.*`` and
``train.optimizer``/``train.schedule``) and shipped unchanged to every Spark task, the range test and the
single-process reference trainers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from pipelines.sgd._validation import OneOf, Rule, check_rules
from pipelines.sgd.losses import LOSS_NAMES
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
    """

    loss: str
    fit_intercept: bool = True
    regularization: Regularization = field(default_factory=Regularization)
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)

    RULES: ClassVar[dict[str, Rule]] = {"loss": OneOf(LOSS_NAMES)}

    def __post_init__(self) -> None:
        check_rules(self, self.RULES)
