"""The points of a sweep's grid: (learning rate, reg_param, l1_ratio).

A grid is the product of three axes, learning-rate-major: ``sweep.learning_rates`` x ``sweep.reg_params`` x
``sweep.l1_ratios`` (an omitted axis is the single ``model.*`` value). Every point is one model row per seed
in the same pass over the data; its regularization is the row's own (:class:`~pipelines.sgd.regularization.
Penalties`), so a point trains exactly as it would alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipelines.sgd.regularization import Penalties, Regularization


@dataclass(frozen=True)
class GridPoint:
    """One point of the grid."""

    learning_rate: float
    reg_param: float = 0.0
    l1_ratio: float = 0.0

    @property
    def regularization(self) -> Regularization:
        return Regularization(self.reg_param, self.l1_ratio)

    def as_tuple(self) -> tuple[float, float, float]:
        return (self.learning_rate, self.reg_param, self.l1_ratio)

    @property
    def exact_label(self) -> str:
        """``lr=<repr>``, with `` reg=<repr>`` and `` l1=<repr>`` when set: the point to full precision."""
        label = f"lr={self.learning_rate!r}"
        if self.reg_param:
            label += f" reg={self.reg_param!r}"
        if self.l1_ratio:
            label += f" l1={self.l1_ratio!r}"
        return label


def joint_grid(learning_rates: Sequence[float], penalties: Sequence[Regularization]) -> list[GridPoint]:
    """Every learning rate crossed with every penalty, learning-rate-major (in the order given)."""
    return [GridPoint(float(rate), float(penalty.reg_param), float(penalty.l1_ratio))
            for rate in learning_rates for penalty in penalties]


def penalty_axis(reg_params: Sequence[float], l1_ratios: Sequence[float]) -> list[Regularization]:
    """``reg_params`` x ``l1_ratios``, reg-major."""
    return [Regularization(float(reg), float(l1)) for reg in reg_params for l1 in l1_ratios]


def row_penalties(points: Sequence[GridPoint], seeds: int) -> Penalties:
    """The penalties of the model rows of ``points``, each repeated for its ``seeds`` rows (point-major)."""
    return Penalties.of([point.regularization for point in points for _ in range(seeds)])


def varying_axes(points: Sequence[GridPoint]) -> tuple[bool, bool]:
    """Whether the grid varies ``reg_param`` and ``l1_ratio`` (or sets them to a non-zero value)."""
    regs = {point.reg_param for point in points}
    l1s = {point.l1_ratio for point in points}
    return len(regs) > 1 or regs != {0.0}, len(l1s) > 1 or l1s != {0.0}


def point_labels(points: Sequence[GridPoint]) -> list[str]:
    """Display names of the points, e.g. ``lr=0.01`` or ``lr=0.01 reg=0.001`` (``l1=0.5`` too when that
    axis is set): the axes the grid varies or sets are shown, so every point's label is distinct."""
    show_reg, show_l1 = varying_axes(points)
    return [point_label(point, show_reg, show_l1) for point in points]


def point_label(point: GridPoint, show_reg: bool = True, show_l1: bool = True) -> str:
    parts = [f"lr={point.learning_rate:.4g}"]
    if show_reg:
        parts.append(f"reg={point.reg_param:.4g}")
    if show_l1:
        parts.append(f"l1={point.l1_ratio:.4g}")
    return " ".join(parts)
