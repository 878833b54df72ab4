"""The pinned champion against this sweep: how far the data drifted from its training rows, and how it scores
on this sweep's validation rows (the registry's ``if_better`` compares the challenger with it)."""

from __future__ import annotations

from typing import Any

from pipelines.features.encoding import TableEncoding
from pipelines.features.split import VALIDATION
from pipelines.orchestration.champion import Champion, metric_name
from pipelines.orchestration.inputs import Say
from pipelines.orchestration.training import SplitEvaluator
from pipelines.sweep.grid import point_label
from pipelines.sweep.outcome import RateResult
from pipelines.tracking.export import LinearModel
from pipelines.tracking.registry import ChampionCheck
from pipelines.tracking.runs import SweepTracker


def report_drift(champion: Champion, tracker: SweepTracker, encoding: TableEncoding, threshold: float,
                 say: Say) -> None:
    """Each feature's drift (PSI) from the champion's training rows to this sweep's, on the parent
    (``drift_psi/<column>``, ``drift.json``) and printed; a warning names the features above ``threshold``
    (``tracking.drift_threshold``)."""
    found = champion.drift(encoding)
    if not found or not found[0]:
        return
    drifts, skipped = found
    tracker.log_parent_metrics({f"drift_psi/{metric_name(d.column)}": d.psi for d in drifts}, replace=True)
    tracker.log_table_once([{"column": d.column, "kind": d.kind, "psi": d.psi, "detail": d.detail,
                             "champion_version": champion.version} for d in drifts], "drift.json")
    above = [d for d in drifts if d.psi > threshold]
    against = f"drift against {champion.name} version {champion.version}'s training rows"
    if above:
        listed = "; ".join(f"{d.column} {d.psi:.3g} ({d.detail})" for d in above[:8])
        say(f"warning: {against}: {len(above)} of {len(drifts)} features above tracking.drift_threshold="
            f"{threshold:g}: {listed}")
    else:
        top = drifts[0]
        say(f"{against}: none of {len(drifts)} features above {threshold:g} (largest {top.column} "
            f"{top.psi:.3g}: {top.detail})")
    if skipped:
        say(f"drift not scored: {', '.join(skipped)}")


def challenge_champion(champion: Champion, tracker: SweepTracker, evaluator: SplitEvaluator, loss: str,
                       best: RateResult, classes: tuple[Any, ...], say: Say) -> ChampionCheck | None:
    """The pinned champion measured on this sweep's validation rows, with the sweep's metrics, logged on the
    parent (``champion_val_*``, ``challenger_val_loss``) and printed; None without a champion."""
    def measure(model: LinearModel) -> dict[str, float] | None:
        return evaluator.metrics(VALIDATION, model.encoding, model.weights, model.intercept)

    table = evaluator.table
    check = champion.check(table, loss, classes, measure)
    if check is None:
        return None
    if check.metrics is None:
        verb = "cannot be measured on this sweep's rows" if check.replaceable else "could not be loaded"
        say(f"champion: {champion.describe()} {verb}: {check.why_not}")
        return check
    challenger = best.final_metrics()["val_loss"]
    tracker.log_parent_metrics({"challenger_val_loss": challenger, **{
        f"champion_val_{metric}": value for metric, value in check.metrics.items() if metric != "count"}})
    say(f"champion: {champion.describe()} on this sweep's {int(check.metrics['count'])} validation "
        f"rows of {table.ref.describe()}: val_loss {check.metrics['loss']:.6g}; challenger "
        f"{point_label(best.point)}: {challenger:.6g}")
    return check
