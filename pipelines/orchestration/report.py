"""What a tracked sweep reports: run ids, results, the registry decision, where the time went, its exit."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pipelines.errors import NoUsableModelError, TrackingUnavailableError
from pipelines.lakehouse.delta import sql_name
from pipelines.lakehouse.reader import FeatureTable
from pipelines.orchestration.recorder import DataFacts
from pipelines.orchestration.rounds import TrainedRound
from pipelines.reporting.tables import format_summary
from pipelines.sweep.outcome import GridOutcome
from pipelines.sweep.range_test import RangeTestResult
from pipelines.tracking.registry import Registration


@dataclass(frozen=True)
class SweepReport:
    """What a tracked sweep did: run ids, results, the registry decision, where the time went."""

    sweep_id: str
    parent_run_id: str
    rounds: tuple[TrainedRound, ...]  # 'auto' sweeps: every round; the last one is the sweep's result
    facts: DataFacts  # the pinned table and how its rows were split
    loss: str
    resumed: bool  # an earlier attempt of this sweep id existed (checkpoint or runs)
    resumed_from_epoch: int | None  # the epoch the checkpoint restored (None: trained from scratch)
    results_rows: int
    results_written: bool  # rows were appended by this attempt
    model_uri: str | None
    registration: Registration | None
    tracking_problem: str | None  # why MLflow is incomplete (exit 4), None when it is complete
    registered_model: str
    results_table: str
    wall_seconds: float
    phase_seconds: dict[str, float]
    checkpoint_seconds: float  # checkpoint files and journal rows, on the training path
    journal_seconds: float  # the journal's Delta appends, on a background thread
    tracking_seconds: float
    tracking_by_label: dict[str, float]
    summary: list[dict[str, Any]] = field(default_factory=list)
    suggested_learning_rate: float | None = None  # 'auto' sweeps: the range test's suggestion
    range_test: RangeTestResult | None = None
    tracking_uri: str = ""  # the store's URI, redacted (where to look next)
    experiment_id: str = ""

    @property
    def outcome(self) -> GridOutcome:
        """The last round's outcome: every rate's curves, status and kept model."""
        return self.rounds[-1].outcome

    @property
    def child_run_ids(self) -> tuple[str | None, ...]:
        """The last round's child runs, one per grid point."""
        return self.rounds[-1].child_run_ids

    @property
    def table(self) -> FeatureTable:
        return self.facts.table

    @property
    def tracking_fraction(self) -> float:
        return self.tracking_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def outcome_error(self) -> NoUsableModelError | TrackingUnavailableError | None:
        """The exit condition of a sweep that ran to its end: 3 without a usable model, 4 if MLflow lags."""
        if self.tracking_problem is not None:
            return TrackingUnavailableError(
                f"{self.tracking_problem}; results and checkpoint are saved: rerun with sweep.id={self.sweep_id} "
                "(or the sync job) when MLflow is back to complete it")
        if self.outcome.best is None:
            return NoUsableModelError(f"sweep {self.sweep_id}: every rate diverged or was stopped; nothing was "
                                      "registered (see the summary; try lower learning rates)")
        return None

    def describe(self) -> list[str]:
        """The job's closing lines: summary table, where the results went, the registry, compute and time."""
        outcome = self.outcome
        resumed = f" (resumed from epoch {self.resumed_from_epoch})" if self.resumed_from_epoch is not None \
            else " (resumed)" if self.resumed else ""
        lines = [format_summary(self.summary, self.loss),
                 f"sweep {self.sweep_id}: parent run {self.parent_run_id}{resumed}",
                 f"results: {self.results_rows} rows {'appended to' if self.results_written else 'already in'} "
                 f"{self.results_table}" if self.results_rows else f"results: no rows in {self.results_table}"]
        if self.registration is not None:
            lines.append(self.registration.describe(self.registered_model))
        elif outcome.best is None:
            lines.append("no model logged: every rate diverged or was stopped")
        saved = 100 * (1 - outcome.row_passes / outcome.full_grid_row_passes) if outcome.full_grid_row_passes else 0
        lines.append(f"compute: {outcome.row_passes:,} row-passes of {outcome.full_grid_row_passes:,} for the full "
                     f"grid ({saved:.1f}% saved by stopping rates)")
        phases = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.phase_seconds.items())
        lines.append(f"durability: checkpoints {self.checkpoint_seconds:.2f} s on the training path, journal appends "
                     f"{self.journal_seconds:.2f} s in the background")
        labels = ", ".join(f"{label} {seconds:.2f} s" for label, seconds in self.tracking_by_label.items())
        lines.append(f"time: {self.wall_seconds:.1f} s wall ({phases}), {self.tracking_seconds:.2f} s tracking "
                     f"({100 * self.tracking_fraction:.1f}% of wall time: {labels})")
        return lines + where_to_look(self.tracking_uri, self.experiment_id, self.parent_run_id, self.results_table,
                                     self.sweep_id)


def where_to_look(tracking_uri: str, experiment_id: str, run_id: str, results_table: str, sweep_id: str) -> list[str]:
    """The closing lines: how to open the sweep in MLflow (the UI command for a local store, the run's URL on a
    tracking server) and in the lakehouse (``lrsweep show`` and the SQL)."""
    lines = []
    route = f"#/experiments/{experiment_id}/runs/{run_id}"
    scheme = urlsplit(tracking_uri).scheme
    if scheme in ("http", "https"):
        lines.append(f"MLflow: {tracking_uri.rstrip('/')}/{route}")
    elif scheme in ("", "file", "sqlite", "postgresql", "mysql", "mssql"):
        lines.append(f"MLflow: mlflow ui --backend-store-uri {tracking_uri} --port 5000, then "
                     f"http://127.0.0.1:5000/{route}")
    elif tracking_uri:
        lines.append(f"MLflow: run {run_id} of experiment {experiment_id} in {tracking_uri}")
    lines.append(f"Delta: lrsweep show {sweep_id}, or SELECT * FROM {sql_name(results_table)} "
                 f"WHERE sweep_id = '{sweep_id}'")
    return lines
