"""The model registry: which version is champion, whether a sweep's best model replaces it, and the registration.

Every read and write of ``tracking.registered_model`` lives here, with the one rule that decides:

* the champion: the version the ``champion`` alias points at (:func:`champion_version`), pinned on a sweep's
  parent when it first starts (tag ``lrsweep.champion_version``, ``none`` without a champion; :func:`pinned_champion`)
  so that a rerun compares with the same model, whatever the alias points at by then; loaded once
  (:func:`load_champion`), or why it cannot be (:class:`Unusable`);
* the comparison: the champion measured on the challenger's own validation rows (:class:`ChampionCheck`, which
  :mod:`pipelines.orchestration.champion` measures) and the rule the challenger must pass (:func:`challenge`);
* the registration: a new version with both losses, the ``champion`` alias moved to it, the decision recorded on
  the parent (:func:`register_model`, :class:`Registration`), none of it repeated by a rerun.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipelines.errors import TrackingError
from pipelines.faults import kill_point
from pipelines.tracking.export import LinearModel, load_linear_model
from pipelines.tracking.runs import TAG_SWEEP_ID, SweepTracker
from pipelines.tracking.store import is_unavailable

CHAMPION = "champion"
TAG_VAL_LOSS = "lrsweep.val_loss"
TAG_LOSS = "lrsweep.loss"
TAG_REGISTRATION = "lrsweep.registration"
TAG_CHAMPION_VERSION = "lrsweep.champion_version"  # the parent's: the champion its best model was measured against
TAG_CHAMPION_VAL_LOSS = "lrsweep.champion_val_loss"
TAG_CHALLENGER_VAL_LOSS = "lrsweep.challenger_val_loss"
TAG_REPLACED_VERSION = "lrsweep.replaced_version"
NO_CHAMPION = "none"  # the pin of a sweep that started without a champion
#: The registry's answers for a model or alias that does not exist (they differ between stores).
NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


# ----------------------------------------------------------------------------------------------- the champion


def champion_version(tracker: SweepTracker, name: str) -> str | None:
    """The version the ``champion`` alias of ``name`` points at (None: no such model or alias)."""
    client = tracker.client

    def find() -> str | None:
        try:
            return str(client.get_model_version_by_alias(name, CHAMPION).version)
        except MlflowException as error:
            if error.error_code in NOT_FOUND:
                return None
            if is_unavailable(error):
                raise  # an outage, not the registry's answer: store.call retries it
            raise TrackingError(f"model registry: cannot read {name}@{CHAMPION}: {error.message}") from error

    return tracker.store.call("registry", find)


def pinned_champion(tracker: SweepTracker, name: str) -> str | None:
    """The champion version this sweep pinned on its parent when it first started, else the alias's now (None:
    no champion)."""
    recorded = tracker.recorded_tag(TAG_CHAMPION_VERSION)
    found = recorded if recorded is not None else champion_version(tracker, name)
    return None if found in (None, NO_CHAMPION) else found


def champion_pin(version: str | None) -> dict[str, str]:
    """The parent's tag that pins ``version`` (:func:`pinned_champion` reads it back)."""
    return {TAG_CHAMPION_VERSION: version or NO_CHAMPION}


@dataclass(frozen=True)
class Unusable:
    """Why the pinned version cannot be used; ``replaceable``: it is not an lrsweep model this sweep can apply
    (replaced), else it could not be loaded (kept)."""

    why: str
    replaceable: bool


def load_champion(tracker: SweepTracker, name: str, version: str) -> LinearModel | Unusable:
    """Version ``version`` of ``name`` loaded and taken apart, or why it cannot be."""
    try:
        return load_linear_model(tracker, f"models:/{name}/{version}")
    except TrackingError as error:  # not an lrsweep model, or the registry refuses it
        return Unusable(str(error), replaceable=True)
    except (MlflowException, ValueError) as error:  # its artifacts cannot be loaded
        return Unusable(f"{type(error).__name__}: {str(error).strip()[:200]}", replaceable=False)


# ----------------------------------------------------------------------------------------------- the comparison


@dataclass(frozen=True)
class ChampionCheck:
    """The champion measured on the challenger's own validation rows, or why it could not be.

    ``metrics``: the champion's validation metrics (``loss``, ``auc``, ..., ``count``) computed like the
    sweep's own on the same rows; None when the champion cannot be applied to them (``why_not`` says why).
    """

    version: str
    metrics: dict[str, float] | None
    why_not: str = ""
    replaceable: bool = True  # False: the champion could not be loaded (its artifacts); it is not replaced

    @property
    def val_loss(self) -> float | None:
        return None if self.metrics is None else self.metrics["loss"]


def challenge(register_when: str, challenger_loss: float, check: ChampionCheck | None,
              min_improvement: float) -> tuple[bool, str]:
    """Whether the challenger becomes champion, and why (``register_when`` is ``always`` or ``if_better``).

    ``if_better``: the challenger must beat the champion's validation loss *on the same rows* by at least
    ``min_improvement`` (relative to the champion's loss, and strictly). A champion that cannot be measured on
    this sweep's rows (its columns are gone, another loss or other classes) cannot serve this table: it is
    replaced, and the reason says so.
    """
    if register_when == "always":
        return True, "tracking.register_when is 'always'"
    if check is None:
        return True, "no champion yet"
    if check.metrics is None and not check.replaceable:
        return False, (f"champion version {check.version} could not be loaded ({check.why_not}); it stays: "
                       "repair its artifacts or move the alias")
    if check.metrics is None:
        return True, f"champion version {check.version} cannot be measured on this sweep's rows ({check.why_not})"
    champion, rows = check.metrics["loss"], int(check.metrics.get("count", 0))
    on = f"on the same {rows} validation rows"
    if not math.isfinite(champion):
        return True, f"champion version {check.version}'s val_loss {on} is {champion}"
    gain = champion - challenger_loss
    relative = gain / abs(champion) if champion else math.copysign(math.inf, gain) if gain else 0.0
    compared = (f"challenger val_loss {challenger_loss:.6g} vs champion version {check.version}'s "
                f"{champion:.6g} {on} ({relative:+.3%}; tracking.min_improvement {min_improvement:.3%})")
    if gain > 0 and gain >= min_improvement * abs(champion):
        return True, f"{compared}: the challenger wins"
    return False, f"{compared}: the champion stays"


# ----------------------------------------------------------------------------------------------- the registration


@dataclass(frozen=True)
class Registration:
    """What happened to the sweep's best model in the registry."""

    decision: str  # registered | skipped | kept_champion | already_done
    reason: str
    version: str | None = None

    def describe(self, name: str) -> str:
        where = f"{name} version {self.version}" if self.version else name
        return f"model registry: {self.decision} ({where}): {self.reason}"


def registration_decided(tracker: SweepTracker) -> bool:
    """Whether an attempt of this sweep already took its registry decision (a rerun repeats nothing)."""
    return bool(tracker.parent_tags().get(TAG_REGISTRATION))


def register_model(tracker: SweepTracker, model_uri: str, name: str, register_when: str, val_loss: float,
                   loss: str, tags: dict[str, str], check: ChampionCheck | None = None,
                   min_improvement: float = 0.0) -> Registration:
    """Register ``model_uri`` under ``name`` and move the ``champion`` alias as ``register_when`` says.

    ``always``: register and make champion. ``if_better``: see :func:`challenge` (``check`` is the current
    champion measured on this sweep's validation rows; None when there is no champion). ``never``: nothing.
    The decision is recorded in the parent's ``lrsweep.registration`` tag; a rerun repeats nothing. A new
    version carries both validation losses and the version it replaced. The registry is never asked twice for one
    sweep's model: a version tagged with this sweep id (an attempt stopped between the registry's answer and the
    parent's tag, or an answer lost to an outage and retried) is reused, and the alias moved to it unless a later
    version holds it.
    """
    recorded = tracker.parent_tags().get(TAG_REGISTRATION)
    if recorded:
        decision, _, version = recorded.partition(":")
        return Registration("already_done", f"an earlier attempt of this sweep decided {decision!r}",
                            version or None)
    client = tracker.client
    earlier = None if register_when == "never" else \
        tracker.store.call("registry", lambda: sweep_model_version(client, name, tracker.sweep_id))
    if earlier is not None:  # that attempt decided to register: only what it left is done
        moved = tracker.store.call("registry", lambda: _move_alias_unless_later(client, name, int(earlier.version)))
        result = Registration("registered", f"version {earlier.version} was registered by an earlier attempt of "
                              f"this sweep; alias '{CHAMPION}' " + ("set" if moved else "stays on a later version"),
                              str(earlier.version))
    elif register_when == "never":
        result = Registration("skipped", "tracking.register_when is 'never'")
    else:
        wins, reason = challenge(register_when, val_loss, check, min_improvement)
        if not wins:
            assert check is not None
            result = Registration("kept_champion", reason, check.version)
            tracker.set_parent_tags({TAG_REGISTRATION: f"{result.decision}:"})
            return result
        compared: dict[str, str] = {}
        if check is not None:
            compared[TAG_REPLACED_VERSION] = check.version
            if check.val_loss is not None:
                compared |= {TAG_CHAMPION_VAL_LOSS: repr(check.val_loss), TAG_CHALLENGER_VAL_LOSS: repr(val_loss)}

        def register() -> Any:
            # retried after an outage, the registry may have registered the version without the answer arriving
            registered = sweep_model_version(client, name, tracker.sweep_id) or mlflow.register_model(
                model_uri, name, tags={TAG_VAL_LOSS: repr(float(val_loss)), TAG_LOSS: loss, **compared,
                                       TAG_SWEEP_ID: tracker.sweep_id, **tags})
            kill_point("register")
            client.set_registered_model_alias(name, CHAMPION, registered.version)
            return registered

        registered = tracker.store.call("registry", register)
        result = Registration("registered", f"{reason}; alias '{CHAMPION}' set", str(registered.version))
    tracker.set_parent_tags({TAG_REGISTRATION: f"{result.decision}:{result.version or ''}"})
    return result


def sweep_model_version(client: MlflowClient, name: str, sweep_id: str) -> Any | None:
    """The version of registered model ``name`` tagged with ``sweep_id`` (None: none, or no such model). The
    tag is filtered here, not in the query: not every registry searches versions by tag."""
    quote = '"' if "'" in name else "'"
    token = None
    while True:
        page = client.search_model_versions(f"name = {quote}{name}{quote}", max_results=1000, page_token=token)
        for version in page:
            if version.tags.get(TAG_SWEEP_ID) == sweep_id:
                return version
        token = page.token
        if not token:
            return None


def _move_alias_unless_later(client: MlflowClient, name: str, version: int) -> bool:
    """Point the ``champion`` alias at ``version`` unless it points at a later one (a later sweep's champion
    stays); True when it points at ``version`` now."""
    try:
        current = int(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException as error:
        if error.error_code not in NOT_FOUND:
            raise
        current = 0
    if current > version:
        return False
    client.set_registered_model_alias(name, CHAMPION, str(version))
    return True
