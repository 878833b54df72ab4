"""Declarative parameter rules of the core's specs, checked once where a spec is built.

Each spec (:class:`~pipelines.sgd.schedules.ScheduleSpec`, :class:`~pipelines.sgd.optimizers.OptimizerSpec`,
:class:`~pipelines.sgd.regularization.Regularization`) lists its rules in a ``RULES`` mapping, as
scikit-learn's estimators list ``_parameter_constraints``; :func:`check_rules` applies them in
``__post_init__``. The configuration builds these specs when it is loaded, so a value the engine would refuse
is refused there, naming the key and this rule (:class:`SpecError` carries the parameter and the value).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any


class SpecError(ValueError):
    """A spec parameter breaks its rule: ``<parameter> = <value>: <rule>``."""

    def __init__(self, parameter: str, value: Any, rule: str) -> None:
        super().__init__(f"{parameter} = {value!r}: {rule}")
        self.parameter = parameter
        self.value = value
        self.rule = rule


class Rule:
    """A check of one parameter value; :meth:`describe` is the text shown when it fails."""

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Interval(Rule):
    """A real (or, with ``integer``, integral) number in an interval; ``None`` bounds are open-ended.

    ``closed`` is ``"both"``, ``"left"``, ``"right"`` or ``"neither"``, as scikit-learn's ``Interval``.
    """

    low: float | None
    high: float | None
    closed: str = "both"
    integer: bool = False

    def accepts(self, value: Any) -> bool:
        kind = Integral if self.integer else Real
        if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(float(value)):
            return False
        number = float(value)
        low_ok = self.low is None or (number >= self.low if self.closed in ("both", "left") else number > self.low)
        high_ok = self.high is None or (number <= self.high if self.closed in ("both", "right")
                                        else number < self.high)
        return low_ok and high_ok

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            left = "[" if self.closed in ("both", "left") else "("
            right = "]" if self.closed in ("both", "right") else ")"
            return f"must be {kind} in {left}{_number(self.low)}, {_number(self.high)}{right}"
        if self.low is not None:
            return f"must be {kind} {'>=' if self.closed in ('both', 'left') else '>'} {_number(self.low)}"
        if self.high is not None:
            return f"must be {kind} {'<=' if self.closed in ('both', 'right') else '<'} {_number(self.high)}"
        return f"must be a finite {kind.removeprefix('a ').removeprefix('an ')}"


@dataclass(frozen=True)
class OneOf(Rule):
    """One of a fixed list of names."""

    options: Sequence[str]

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.options

    def describe(self) -> str:
        return "must be one of " + ", ".join(self.options)


@dataclass(frozen=True)
class Optional(Rule):
    """``None`` (meaning a documented default) or a value accepted by ``rule``."""

    rule: Rule

    def accepts(self, value: Any) -> bool:
        return value is None or self.rule.accepts(value)

    def describe(self) -> str:
        return f"{self.rule.describe()} (or null for the default)"


def check_rules(spec: object, rules: Mapping[str, Rule]) -> None:
    """Raise :class:`SpecError` for the first attribute of ``spec`` that breaks its rule."""
    for parameter, rule in rules.items():
        value = getattr(spec, parameter)
        if not rule.accepts(value):
            raise SpecError(parameter, value, rule.describe())


def build_spec(cls: type[Any], value: Any, name_key: str = "name") -> Any:
    """``cls`` from a bare name, a mapping of its parameters, or an instance (returned as is).

    Raises
    ------
    SpecError
        An unknown parameter (``rule`` "unknown key") or a value that breaks its rule.
    """
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        value = {name_key: value}
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise SpecError(name_key, value, f"expected a name or a mapping of {cls.__name__} parameters")
    known = set(cls.__dataclass_fields__)
    for key in value:
        if key not in known:
            raise SpecError(str(key), value[key], "unknown key")
    return cls(**value)


def _number(value: float) -> str:
    return f"{value:g}"
