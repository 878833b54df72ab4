"""A trained sweep made public: MLflow brought up to it (children, figures, held-out metrics, drift, model,
registry, summary), then each rate's final columns on its results rows.

MLflow is a view of the lakehouse: an outage longer than ``tracking.retry_seconds`` leaves the rest for a rerun
(:attr:`Published.tracking_problem`, exit 4), and the results rows are finalized all the same.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd
from pyspark.sql import SparkSession

from pipelines.config import Config
from pipelines.errors import TrackingError, TrackingUnavailableError
from pipelines.features.columns import model_input
from pipelines.features.split import TEST
from pipelines.lakehouse.history import learning_rate_history
from pipelines.lakehouse.writer import finalize_results
from pipelines.orchestration.challenge import challenge_champion, report_drift
from pipelines.orchestration.inputs import Say, Tracking
from pipelines.orchestration.journal import Journal
from pipelines.orchestration.params import auto_params
from pipelines.orchestration.recorder import DataFacts
from pipelines.orchestration.rounds import ParentRun, Trained, TrainedRound
from pipelines.orchestration.training import SplitEvaluator, problem_for
from pipelines.reporting.figures import (
    learning_rate_history_figure,
    loss_curves_figure,
    pbt_learning_rates_figure,
    penalty_heatmap_figure,
    range_test_figure,
    val_loss_vs_rate_figure,
)
from pipelines.reporting.tables import feature_rows, final_rows, rate_summary, summary_metrics
from pipelines.sgd.metrics import MAIN_METRIC
from pipelines.sweep.checkpoint import SweepCheckpoint
from pipelines.sweep.grid import point_label
from pipelines.sweep.outcome import GridOutcome, RateResult
from pipelines.sweep.pbt import winner_schedule
from pipelines.tracking.export import linear_pipeline, log_model
from pipelines.tracking.registry import (
    TAG_REGISTRATION,
    Registration,
    register_model,
    registration_decided,
)
from pipelines.tracking.runs import FAILED, FINISHED, KILLED, SweepTracker

TAG_TEST_METRICS = "lrsweep.test_metrics"

INPUT_EXAMPLE_ROWS = 5


@dataclass(frozen=True)
class Lineage:
    """Where the sweep's model comes from: the sweep, its grid point and the pinned data. The logged model's
    metadata (:meth:`model_params`) and the registered version's tags (:meth:`registry_tags`) both say it."""

    sweep_id: str
    learning_rate: float
    reg_param: float
    l1_ratio: float
    data_table: str
    data_version: int
    data_since_version: int | None
    columns: Mapping[str, str]  # the used columns and their families
    classes: tuple[Any, ...]

    @classmethod
    def of(cls, sweep_id: str, best: RateResult, facts: DataFacts, classes: tuple[Any, ...]) -> Lineage:
        ref = facts.table.ref
        return cls(sweep_id, best.learning_rate, best.reg_param, best.l1_ratio, ref.identifier, ref.version,
                   ref.since_version, facts.table.columns.used, classes)

    def model_params(self) -> dict[str, Any]:
        """The model's metadata (``lrsweep_columns`` and ``lrsweep_classes`` as JSON)."""
        return {"sweep_id": self.sweep_id, "learning_rate": self.learning_rate, "reg_param": self.reg_param,
                "l1_ratio": self.l1_ratio, "data_table": self.data_table, "data_version": self.data_version,
                "data_since_version": self.data_since_version, "lrsweep_columns": json.dumps(self.columns),
                "lrsweep_classes": json.dumps(list(self.classes))}

    def registry_tags(self) -> dict[str, str]:
        """The registered version's ``lrsweep.*`` tags (numbers as ``repr``; no since-version: none)."""
        since = {} if self.data_since_version is None else {"lrsweep.data_since_version": str(self.data_since_version)}
        return {"lrsweep.sweep_id": self.sweep_id, "lrsweep.learning_rate": repr(self.learning_rate),
                "lrsweep.reg_param": repr(self.reg_param), "lrsweep.l1_ratio": repr(self.l1_ratio),
                "lrsweep.data_table": self.data_table, "lrsweep.data_version": str(self.data_version), **since}


@dataclass(frozen=True)
class Published:
    """What MLflow holds of the sweep: every round with its child runs, the logged model and the registry's
    decision, and why MLflow is incomplete (None: it is complete)."""

    rounds: tuple[TrainedRound, ...]
    model_uri: str | None = None
    registration: Registration | None = None
    tracking_problem: str | None = None

    def decision(self, tracker: SweepTracker) -> str | None:
        """The registry's decision as the parent records it (``registered:7``, ``kept_champion:``), if taken."""
        return recorded_decision(tracker, self.registration) if self.tracking_problem is None else None


def recorded_decision(tracker: SweepTracker, registration: Registration | None) -> str | None:
    """The parent's ``lrsweep.registration`` once ``registration`` was decided (None while MLflow is away)."""
    if registration is None:
        return None
    try:
        return tracker.parent_tags().get(TAG_REGISTRATION)
    except TrackingUnavailableError:
        return None


class Publisher:
    """Brings MLflow up to a trained sweep; what every part of that shares is bound here."""

    def __init__(self, spark: SparkSession, config: Config, sweep_id: str, tracking: Tracking, facts: DataFacts,
                 parent: ParentRun, checkpoint: SweepCheckpoint | None, say: Say) -> None:
        self.spark, self.config, self.sweep_id, self.facts, self.parent = spark, config, sweep_id, facts, parent
        self.tracker, self.champion, self.say = tracking.tracker, tracking.champion, say
        self.resumed_from_epoch = None if checkpoint is None else checkpoint.epoch
        self.auto = config.sweep.learning_rates == "auto"
        self.evaluator = SplitEvaluator(facts.table, config.data, config.train.seed, config.model.class_weight,
                                        problem_for(config.problem, facts.classes).loss_function, facts.classes)

    def publish(self, trained: Trained, timings: Callable[[], dict[str, float]]) -> Published:
        """Every child's curves and outcome, figures, model, registry, summary; an outage longer than
        ``tracking.retry_seconds`` leaves the rest for a rerun."""
        tracker, rounds = self.tracker, list(trained.rounds)
        model_uri: str | None = None
        registration: Registration | None = None
        try:
            for index, done in enumerate(rounds):
                if any(run_id is None for run_id in done.child_run_ids):
                    rounds[index] = done = replace(done, child_run_ids=tuple(tracker.open_round(
                        done.number, list(done.points), self.parent.dataset, tag_round=self.auto)))
                tracker.sync(done.number, done.outcome, final=True)
            if self.auto:
                self.log_auto_rounds(trained, rounds)
            self.log_figures(trained.final)
            test_metrics = self.held_out(trained.final)
            report_drift(self.champion, tracker, self.facts.encoding, self.config.tracking.drift_threshold,
                         self.say)
            if test_metrics is not None:
                tracker.log_parent_metrics({f"test_{name}": value for name, value in test_metrics.items()})
            model_uri, registration = self.log_and_register(trained.final, test_metrics)
            self.log_history(trained.final, registration)
            self.log_summary(trained)
            tracker.log_system_metrics(timings())
            tracker.end(FINISHED, wait=True)
        except TrackingUnavailableError as error:
            tracker.end(KILLED)  # if MLflow is back for a moment; a rerun (or sync) completes them
            self.say(f"warning: {error}; MLflow is incomplete")
            return Published(tuple(rounds), model_uri, registration, str(error))
        except Exception:
            with contextlib.suppress(TrackingUnavailableError, TrackingError):
                tracker.end(FAILED)  # no run is left RUNNING; a rerun completes what is missing
            raise
        return Published(tuple(rounds), model_uri, registration)

    def log_auto_rounds(self, trained: Trained, rounds: list[TrainedRound]) -> None:
        test = trained.range_test
        assert test is not None
        self.tracker.log_parent_params({"suggested_learning_rate": repr(test.suggestion), **{
            f"round{done.number}_learning_rates": ",".join(
                repr(rate) for rate in dict.fromkeys(point.learning_rate for point in done.points))
            for done in rounds}})
        if self.tracker.finished_range_test() is None:
            self.tracker.log_range_test(test, range_test_figure(test), auto_params(self.config))

    def log_figures(self, final: TrainedRound) -> None:
        """The final round's curves, rates and penalties figures, its summary table and the features."""
        tracker, outcome, loss = self.tracker, final.outcome, self.config.model.loss
        tracker.log_figure(loss_curves_figure(outcome, loss), "figures/loss_curves.png")
        tracker.log_figure(val_loss_vs_rate_figure(outcome), "figures/val_loss_vs_learning_rate.png")
        heatmap = penalty_heatmap_figure(outcome)
        if heatmap is not None:
            tracker.log_figure(heatmap, "figures/val_loss_heatmap.png")
        log_population(tracker, outcome)
        tracker.log_table_once(rate_summary(outcome, loss), "results/rates.json")
        tracker.log_table_once(feature_rows(self.facts.table.columns, self.facts.encoding), "features.json")

    def held_out(self, final: TrainedRound) -> dict[str, float] | None:
        """The champion's metrics on the held-out test rows (None without any): measured once, after the choice
        (a rerun reads them back from the parent), never used to choose."""
        data, best = self.config.data, final.outcome.best
        if best is None or not (data.test_fraction > 0 or data.split == "column"):
            return None
        recorded = self.tracker.parent_tags().get(TAG_TEST_METRICS)
        if recorded:
            return dict(json.loads(recorded))
        metrics = self.evaluator.metrics(TEST, self.facts.encoding, best.weights, best.intercept)
        if metrics is None:
            self.say("test: the test split is empty; no held-out metrics")
            return None
        self.tracker.set_parent_tags({TAG_TEST_METRICS: json.dumps(metrics)})
        shown = ", ".join(f"{name} {value:.4g}" for name, value in metrics.items())
        self.say(f"test (held out, the champion {point_label(best.point)} only): {shown}")
        return metrics

    def log_and_register(self, final: TrainedRound, test_metrics: dict[str, float] | None
                         ) -> tuple[str | None, Registration | None]:
        """The best model logged on the parent with its lineage, and the registry's decision on it."""
        best = final.outcome.best
        if best is None:
            return None, None
        loss, table, tracking = self.config.model.loss, self.facts.table, self.config.tracking
        classes = self.facts.classes or table.label_classes or (0, 1)
        lineage = Lineage.of(self.sweep_id, best, self.facts, classes)
        pipeline = linear_pipeline(self.facts.encoding, best.weights, best.intercept, loss, classes=classes,
                                   epsilon=self.config.model.epsilon)
        example = table.dataframe.select(*[model_input(c, family) for c, family in table.columns.used.items()]) \
            .limit(INPUT_EXAMPLE_ROWS).toPandas()
        model_uri = log_model(self.tracker, pipeline, example, loss, lineage.model_params())
        check = None if tracking.register_when == "never" or registration_decided(self.tracker) \
            else challenge_champion(self.champion, self.tracker, self.evaluator, loss, best, classes, self.say)
        registration = register_model(
            self.tracker, model_uri, tracking.registered_model, tracking.register_when,
            best.final_metrics()["val_loss"], loss,
            {**lineage.registry_tags(),
             **{f"lrsweep.test_{name}": repr(value) for name, value in (test_metrics or {}).items()},
             **{f"lrsweep.{name}": repr(float(value)) for name, value in best.final_metrics().items()
                if name.startswith("val_") and name != "val_loss"}},
            check=check, min_improvement=tracking.min_improvement)
        return model_uri, registration

    def log_history(self, final: TrainedRound, registration: Registration | None) -> None:
        """``figures/learning_rate_history.png`` on the parent: this table's earlier sweeps (from the results
        table) and this one."""
        best, table = final.outcome.best, self.facts.table
        if best is None:
            return
        earlier = learning_rate_history(self.spark, self.config.output.results_table, table.ref.identifier)
        now = pd.DataFrame([{
            "sweep_id": self.sweep_id, "data_version": table.ref.version, "data_since_version": table.ref.since_version,
            "best_learning_rate": best.learning_rate, "best_reg_param": best.reg_param,
            "best_val_loss": best.final_metrics()["val_loss"],
            "registration": recorded_decision(self.tracker, registration),
            "finished": pd.Timestamp.now(tz="UTC").tz_localize(None)}])
        earlier = earlier[earlier["sweep_id"] != self.sweep_id]
        history = now if earlier.empty else pd.concat([earlier, now], ignore_index=True)
        history = history.sort_values(["data_version", "finished"], kind="stable", ignore_index=True)
        self.tracker.log_figure(learning_rate_history_figure(history), "figures/learning_rate_history.png")

    def log_summary(self, trained: Trained) -> None:
        """The parent's model metrics (best rate, counts by status, data sizes) and its ``lrsweep.best`` tags."""
        outcome, tracker = trained.final.outcome, self.tracker
        metrics = summary_metrics(outcome, train_rows=self.facts.train_rows, validation_rows=self.facts.validation_rows,
                                  suggested_learning_rate=trained.range_test.suggestion if trained.range_test else None,
                                  rounds=len(trained.rounds))
        tracker.log_parent_metrics(metrics)
        if self.resumed_from_epoch is not None:
            tracker.log_parent_metrics({"resumed_from_epoch": float(self.resumed_from_epoch)}, replace=True)
        best = outcome.best
        if best is None:
            tracker.set_parent_tags({"lrsweep.best": "none: every rate diverged or was stopped; nothing registered"})
        else:
            tracker.set_parent_tags({"lrsweep.best": best.point.exact_label,
                                     "lrsweep.main_metric": MAIN_METRIC[self.config.model.loss]})


def finalize(spark: SparkSession, results_table: str, sweep_id: str, parent: ParentRun, published: Published,
             decision: str | None, journal: Journal) -> None:
    """Each rate's final status, kept epoch, best flag and run ids, and the registry's ``decision`` on the best
    point, on its rows (one MERGE), unless every row holds them already: rows the journal appended with their
    final values (:meth:`Journal.release`) need none. (A refining sweep whose second round was not needed appended
    its only round as a first round, without the best flag: the MERGE sets it.)"""
    if not journal.provisional and journal.released_round == published.rounds[-1].number:
        return
    rows = []
    for done in published.rounds:
        rows += final_rows(done.outcome, sweep_id=sweep_id, round_number=done.number, parent_run_id=parent.run_id,
                           child_run_ids=done.child_run_ids, is_final_round=done is published.rounds[-1],
                           registration=decision)
    finalize_results(spark, rows, results_table, sweep_id, pending=True if journal.unfinished else None)


def log_population(tracker: SweepTracker, outcome: GridOutcome) -> None:
    """Population-based training's parent artifacts: every point's learning rate per epoch with the copies
    marked (``figures/pbt_learning_rates.png``) and the winner's lineage with its replay settings
    (``pbt/winner_schedule.json``); nothing for a grid."""
    figure = pbt_learning_rates_figure(outcome)
    if figure is None or outcome.lineage is None:
        return
    tracker.log_figure(figure, "figures/pbt_learning_rates.png")
    best = outcome.best_index
    if best is not None and outcome.rates[best].kept_epoch >= 1:
        path = outcome.lineage.path(best, outcome.rates[best].kept_epoch)
        tracker.log_dict(winner_schedule(path, outcome.labels), "pbt/winner_schedule.json")
