"""The registered champion as one sweep sees it: resolved once, loaded once, used by four steps.

A nightly sweep relates to the model it may replace in four ways: it can read only the rows added since the
champion's table version (``data.since_version: champion``), start every grid point from it
(``train.warm_start: champion``), score how far its training rows have drifted from the champion's, and
measure it on its own validation rows before the registry decides. All four use the same version: the one the
``champion`` alias pointed at when the sweep first started, pinned on the parent so that a rerun compares with
the same model, whatever the alias points at by then (the sweep's own first attempt may have moved it).

This module applies the champion to this sweep's rows; the registry itself (the lookup and the pin, loading the
version, the rule a challenger must pass, the registration and the alias) is :mod:`pipelines.tracking.registry`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np

from pipelines.config import Config
from pipelines.features.drift import ColumnDrift, feature_drift
from pipelines.features.encoding import TableEncoding
from pipelines.features.transfer import Carried, carry_over
from pipelines.lakehouse.reader import FeatureTable
from pipelines.tracking.export import LinearModel, ScoringModel
from pipelines.tracking.registry import ChampionCheck, Unusable, champion_pin, load_champion, pinned_champion
from pipelines.tracking.runs import SweepTracker


class Champion:
    """The champion of ``tracking.registered_model`` for one sweep (see the module docstring)."""

    def __init__(self, tracker: SweepTracker, config: Config, say: Callable[[str], None]) -> None:
        self.tracker, self.config, self.say = tracker, config, say
        self.name = config.tracking.registered_model
        self._version: str | None = None
        self._resolved = False
        self._model: LinearModel | Unusable | None = None

    # ------------------------------------------------------------------------------------------ which one
    @property
    def version(self) -> str | None:
        """The pinned version (None: no champion when the sweep first started)."""
        if not self._resolved:
            self._version = pinned_champion(self.tracker, self.name)
            self._resolved = True
        return self._version

    def tag(self) -> dict[str, str]:
        """The parent's pin of :attr:`version`."""
        return champion_pin(self.version)

    def model(self) -> LinearModel | Unusable | None:
        """The pinned version loaded and taken apart (once); None without a champion."""
        if self.version is None:
            return None
        if self._model is None:
            self._model = load_champion(self.tracker, self.name, self.version)
        return self._model

    def describe(self) -> str:
        """``lrsweep_churn version 3 (trained on version 41)``."""
        model = self.model()
        trained_on = model.info.data_version if isinstance(model, LinearModel) else None
        return f"{self.name} version {self.version}" + (f" (trained on version {trained_on})" if trained_on else "")

    # ------------------------------------------------------------------------------------------ the steps
    def since_version(self, table: str) -> int | None:
        """``data.since_version: champion``: the table version the champion was trained on; None (the whole
        version is read, and said) without a champion, or one trained on another table."""
        model = self.model()
        info = model.info if isinstance(model, LinearModel) else None
        if info is None or info.data_version is None:
            why = "no champion" if self.version is None else f"{self.describe()} has no recorded table version"
        elif info.data_table != table:
            why = f"{self.describe()} was trained on {info.data_table}"
        else:
            return int(info.data_version)
        self.say(f"data.since_version=champion: {why}; reading the whole version")
        return None

    def warm_start(self, encoding: TableEncoding, loss: str, classes: tuple[Any, ...]) -> Carried | None:
        """``train.warm_start: champion``: the champion carried onto ``encoding``; None (a cold start, said)
        without a champion or with one of another loss or other classes."""
        model = self.model()
        if not isinstance(model, LinearModel):
            why = "no champion yet" if model is None else f"{self.describe()} cannot be used ({model.why})"
            self.say(f"warm start: {why}; every grid point starts at 0")
            return None
        mismatch = model_mismatch(model.info, loss, classes)
        if mismatch:
            self.say(f"warm start: {self.describe()}: {mismatch}; every grid point starts at 0")
            return None
        carried = carry_over(model.encoding, np.atleast_2d(model.weights),
                             np.atleast_1d(np.asarray(model.intercept, dtype=np.float64)), encoding)
        notes = "; ".join(carried.notes())
        self.say(f"warm start: every grid point starts from {self.describe()}, carried onto this sweep's "
                 f"encoding{': ' + notes if notes else ' exactly'}")
        return carried

    def drift(self, encoding: TableEncoding) -> tuple[list[ColumnDrift], list[str]] | None:
        """Each feature's drift from the champion's training rows to ``encoding``'s (None without a usable
        champion)."""
        model = self.model()
        return feature_drift(model.encoding, encoding) if isinstance(model, LinearModel) else None

    def check(self, table: FeatureTable, loss: str, classes: tuple[Any, ...],
              measure: Callable[[LinearModel], dict[str, float] | None]) -> ChampionCheck | None:
        """The champion measured (``measure``: on this sweep's validation rows) or why it cannot be."""
        model = self.model()
        if self.version is None or model is None:
            return None
        if isinstance(model, Unusable):
            return ChampionCheck(self.version, None, model.why, replaceable=model.replaceable)
        why_not = model_mismatch(model.info, loss, classes) or columns_mismatch(model.info, table)
        if why_not:
            return ChampionCheck(self.version, None, why_not)
        metrics = measure(model)
        if metrics is None:
            return ChampionCheck(self.version, None, "this sweep has no validation rows")
        return ChampionCheck(self.version, metrics)


def model_mismatch(info: ScoringModel, loss: str, classes: tuple[Any, ...]) -> str | None:
    """Why a model of ``info`` is not a model of ``loss`` over ``classes`` (None: it is)."""
    if info.loss != loss:
        return f"it was trained with model.loss={info.loss!r}, this sweep uses {loss!r}"
    if [str(c) for c in info.classes] != [str(c) for c in classes]:
        return f"its classes {list(info.classes)} are not this sweep's {list(classes)}"
    return None


def columns_mismatch(info: ScoringModel, table: FeatureTable) -> str | None:
    """Why a model of ``info`` cannot be applied to this sweep's rows of ``table`` (None: it can)."""
    missing = [column for column in info.features if column not in table.columns.used]
    if missing:
        return (f"it uses column(s) {', '.join(map(repr, missing))} that this sweep's rows of "
                f"{table.ref.identifier} at {table.ref.describe()} do not have (gone from the table, or left out "
                "of the features)")
    changed = [f"{column!r} ({info.families[column]} then, {table.columns.used[column]} now)"
               for column in info.features if info.families.get(column, "number") != table.columns.used[column]]
    if changed:
        return f"column(s) {', '.join(changed)} changed type"
    return None


def metric_name(column: str) -> str:
    """``column`` as an MLflow metric name (letters, digits, ``_-. /``)."""
    return re.sub(r"[^\w\-. /]", "_", column)
