"""A tracked sweep: read the pinned table, train the grid, log runs, write results, register the best model.

Data flows one way::

    config -> lakehouse.reader (pinned version) -> sweep.runner (features, engine, loop)
           -> tracking (runs, dataset, figures, model, registry) + lakehouse.writer (results table)

With ``sweep.learning_rates: auto`` the grid comes from Smith's range test (:mod:`pipelines.sweep.range_test`),
run on the same cached blocks: round 1 trains ``sweep.auto_num`` log-spaced rates spanning a factor
``sweep.auto_span`` centred on the suggestion; with ``sweep.refine`` round 2 trains a finer grid spanning
round 1's two neighbours of its best rate (an odd number of rates, so the best rate itself is retrained and
round 2 can only match or beat it). The range test and every round's rates are child runs of the one
parent run (roles ``range_test`` and ``child``, rounds tagged ``lrsweep.round``). The final round is the
sweep's result: its rows go to the results table, its best model is logged and registered, its curves
are the parent's figures and summary.

Rerunning with the same ``sweep.id`` completes what an earlier attempt left undone and duplicates nothing:
the data version is taken from the earlier attempt, FINISHED child runs are reused, the results are
appended with Delta's idempotent ``txnAppId``/``txnVersion``, and the model is logged and registered once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import SparkSession

from pipelines.config import Config
from pipelines.lakehouse.reader import FeatureTable, read_feature_table
from pipelines.lakehouse.writer import check_output_table, write_results
from pipelines.reporting.figures import loss_curves_figure, range_test_figure, val_loss_vs_rate_figure
from pipelines.reporting.tables import MAIN_METRIC, rate_summary, results_rows
from pipelines.sweep.range_test import RangeTestResult, auto_grid, refine_span
from pipelines.sweep.runner import PreparedData, SweepRun, prepare_data, range_test, train_grid
from pipelines.tracking.models import Registration, linear_pipeline, log_model, register_model
from pipelines.tracking.runs import SweepTracker, TrainingData
from pipelines.tracking.store import code_version, connect, tracking_uri

INPUT_EXAMPLE_ROWS = 5


@dataclass
class SweepReport:
    """What a tracked sweep did: run ids, results, the registry decision, where the time went."""

    sweep_id: str
    parent_run_id: str
    child_run_ids: list[str]
    run: SweepRun
    loss: str
    table: FeatureTable
    resumed: bool
    results_written: bool
    results_rows: int
    model_uri: str | None
    registration: Registration | None
    training_seconds: float
    tracking_seconds: float
    wall_seconds: float
    summary: list[dict[str, Any]] = field(default_factory=list)
    suggested_learning_rate: float | None = None  # 'auto' sweeps: the range test's suggestion
    range_test: RangeTestResult | None = None  # None when not run (explicit grid, or reused on a rerun)
    rounds: list[SweepRun] = field(default_factory=list)  # 'auto' sweeps: every round; `run` is the last
    phase_seconds: dict[str, float] = field(default_factory=dict)  # read, training, results_write
    tracking_by_label: dict[str, float] = field(default_factory=dict)  # connect, runs, children, model, ...

    @property
    def tracking_fraction(self) -> float:
        return self.tracking_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0


def sweep_params(config: Config, table: FeatureTable, learning_rates: list[float]) -> dict[str, str]:
    """The parent run's parameters (strings, stable across reruns of the same sweep)."""
    train = config.train
    return {
        "table": table.ref.identifier,
        "table_version": str(table.ref.version),
        "label": table.label,
        "num_features": str(len(table.features)),
        "features": ",".join(table.features),
        "loss": config.model.loss,
        "fit_intercept": str(config.model.fit_intercept),
        "reg_param": repr(config.model.reg_param),
        "l1_ratio": repr(config.model.l1_ratio),
        "algorithm": train.algorithm,
        "batch_size": str(train.batch_size),
        "schedule": train.schedule.name,
        "optimizer": train.optimizer.name,
        "epochs": str(train.epochs),
        "seed": str(train.seed),
        "seeds": ",".join(map(str, config.sweep.seeds or [train.seed])),
        "learning_rates": ",".join(repr(rate) for rate in learning_rates) if learning_rates else "auto",
        "num_learning_rates": str(len(learning_rates) if learning_rates else config.sweep.auto_num),
        "validation_fraction": repr(config.data.validation_fraction),
        "standardize": str(config.features.standardize),
        "early_stopping": str(config.sweep.early_stopping.enabled),
        "pruning": str(config.sweep.pruning.enabled),
        "divergence_factor": repr(config.sweep.divergence_factor),
        "rows": str(table.rows),
        **(auto_params(config) if not learning_rates else {}),
    }


def auto_params(config: Config) -> dict[str, str]:
    """The settings of an ``auto`` grid: the range test's and the rounds'."""
    settings = config.range_test
    return {"auto_num": str(config.sweep.auto_num), "auto_span": repr(config.sweep.auto_span),
            "refine": str(config.sweep.refine), "range_test_min_lr": repr(settings.min_lr),
            "range_test_max_lr": repr(settings.max_lr), "range_test_num_steps": str(settings.num_steps),
            "range_test_smoothing": repr(settings.smoothing), "range_test_stop_factor": repr(settings.stop_factor)}


@dataclass(frozen=True)
class AutoRounds:
    """What an ``auto`` sweep trained: the suggestion, the range test (if run now) and the rounds."""

    suggestion: float
    range_test: RangeTestResult | None
    rounds: list[SweepRun]


def run_auto_rounds(prepared: PreparedData, config: Config, tracker: SweepTracker,
                    progress: Callable[[str], None] | None) -> AutoRounds:
    """Range test (logged as a child run, or reused from an earlier attempt), round 1, optional round 2."""
    say = progress or (lambda line: None)
    suggestion = tracker.finished_range_test()
    result: RangeTestResult | None = None
    if suggestion is None:
        result = range_test(prepared, config.model, config.train, config.range_test)
        suggestion = result.suggestion
        tracker.log_range_test(result, range_test_figure(result), auto_params(config))
        say(f"range test: {result.steps} steps{' (stopped early)' if result.stopped_early else ''}, "
            f"minimum smoothed loss at lr={result.min_loss_rate:.4g}, suggested lr={suggestion:.4g}")
    else:
        say(f"range test: suggestion lr={suggestion:.4g} from the earlier attempt")
    grid = auto_grid(suggestion, config.sweep.auto_num, config.sweep.auto_span)
    rounds = [train_grid(prepared, config, grid, progress=progress)]
    best = rounds[0].outcome.best
    if config.sweep.refine and best is not None and len(grid) > 1:
        num = config.sweep.auto_num + (1 - config.sweep.auto_num % 2)  # odd: the best rate is retrained
        finer = auto_grid(best.learning_rate, num, refine_span(grid))
        say(f"refining around lr={best.learning_rate:.4g}: {len(finer)} rates from {finer[0]:.4g} to {finer[-1]:.4g}")
        rounds.append(train_grid(prepared, config, finer, progress=progress))
    elif config.sweep.refine:
        say("not refining: round 1 has no usable best rate")
    return AutoRounds(suggestion, result, rounds)


def run_tracked_sweep(spark: SparkSession, config: Config,
                      progress: Callable[[str], None] | None = print) -> SweepReport:
    """Run the configured sweep end to end; see the module docstring.

    Raises
    ------
    LrsweepError
        Bad configuration, table, output location or tracking store (runs already started end FAILED).
    """
    started = time.perf_counter()
    sweep_id = config.sweep.id or uuid.uuid4().hex
    auto = config.sweep.learning_rates == "auto"
    learning_rates = [] if auto else config.sweep.grid()
    # The table is read first: a bad table fails fast, before any MLflow store is touched.
    read_started = time.perf_counter()
    table = read_feature_table(spark, config.data, config.model.loss)
    connect_started = time.perf_counter()
    client, experiment_id = connect(config.tracking)
    tracker = SweepTracker(client, experiment_id, sweep_id)
    tracker.stopwatch.add("connect", time.perf_counter() - connect_started)  # store set-up counts as tracking
    recorded_version = tracker.recorded_param("table_version")
    if recorded_version is not None and config.data.version is None and int(recorded_version) != table.ref.version:
        # a rerun completes the sweep on the version its first attempt pinned, not on newer data
        pinned = config.data.model_copy(update={"version": int(recorded_version)})
        table = read_feature_table(spark, pinned, config.model.loss)
    phases: dict[str, float] = {"read": connect_started - read_started}
    data = TrainingData(table.dataframe, table.ref.identifier, table.ref.version, table.label, table.ref.is_path,
                        table.rows)
    loss = config.model.loss
    tags = {"lrsweep.code_version": code_version(), "lrsweep.spark_master": str(spark.sparkContext.master),
            "lrsweep.tracking_uri": tracking_uri(config.tracking)}
    say = progress or (lambda line: None)
    say(f"sweep {sweep_id}{' (resumed)' if tracker.resumed else ''}: {table.ref.identifier} at version "
        f"{table.ref.version}, {table.rows} rows, {len(table.features)} features, "
        f"{len(learning_rates) if learning_rates else 'auto'} rates")

    with tracker.parent_run(sweep_params(config, table, learning_rates), tags, data) as parent_run_id:
        check_output_table(spark, config.output.results_table, "output.results_table")
        training_started = time.perf_counter()
        prepared = prepare_data(spark, table, config.data, config.features, config.train)
        auto_rounds: AutoRounds | None = None
        try:
            if auto:
                auto_rounds = run_auto_rounds(prepared, config, tracker, progress)
                run = auto_rounds.rounds[-1]
            else:
                run = train_grid(prepared, config, learning_rates, progress=progress)
        finally:
            prepared.blocks.release()
        training_seconds = phases["training"] = time.perf_counter() - training_started
        outcome = run.outcome

        if auto_rounds is None:
            child_run_ids = tracker.log_rates(outcome, data)
        else:
            tracker.log_parent_params({"suggested_learning_rate": repr(auto_rounds.suggestion), **{
                f"round{number}_learning_rates": ",".join(repr(rate) for rate in round_run.learning_rates)
                for number, round_run in enumerate(auto_rounds.rounds, start=1)}})
            for number, round_run in enumerate(auto_rounds.rounds, start=1):
                child_run_ids = tracker.log_rates(round_run.outcome, data, round_number=number)
        rows = results_rows(outcome, loss, sweep_id=sweep_id, parent_run_id=parent_run_id,
                            child_run_ids=child_run_ids, data_table=table.ref.identifier,
                            data_version=table.ref.version)
        write_started = time.perf_counter()
        results_written = write_results(spark, rows, config.output.results_table, sweep_id)
        phases["results_write"] = time.perf_counter() - write_started

        summary = rate_summary(outcome, loss)
        tracker.log_figure(loss_curves_figure(outcome, loss), "figures/loss_curves.png")
        tracker.log_figure(val_loss_vs_rate_figure(outcome), "figures/val_loss_vs_learning_rate.png")
        tracker.log_table_once(summary, "results/rates.json")

        model_uri: str | None = None
        registration: Registration | None = None
        best = outcome.best
        if best is not None:
            pipeline = linear_pipeline(run.scaling, best.weights, best.intercept, loss, run.train_rows)
            example = table.dataframe.select(*table.features).limit(INPUT_EXAMPLE_ROWS).toPandas()
            model_uri = log_model(tracker, pipeline, example, loss, {
                "sweep_id": sweep_id, "learning_rate": best.learning_rate, "data_table": table.ref.identifier,
                "data_version": table.ref.version})
            best_val_loss = best.final_metrics()["val_loss"]
            registration = register_model(
                tracker, model_uri, config.tracking.registered_model, config.tracking.register_when,
                best_val_loss, loss, {"lrsweep.sweep_id": sweep_id, "lrsweep.learning_rate": repr(best.learning_rate),
                                      "lrsweep.data_table": table.ref.identifier,
                                      "lrsweep.data_version": str(table.ref.version)})

        wall_seconds = time.perf_counter() - started
        tracking_seconds = tracker.stopwatch.seconds
        summary_metrics: dict[str, float] = {
            "training_seconds": training_seconds, "tracking_seconds": tracking_seconds,
            "tracking_fraction": tracking_seconds / wall_seconds, "row_passes": float(outcome.row_passes),
            "full_grid_row_passes": float(outcome.full_grid_row_passes), "train_rows": float(run.train_rows),
            "validation_rows": float(run.validation_rows),
        }
        if auto_rounds is not None:
            summary_metrics["suggested_learning_rate"] = auto_rounds.suggestion
            summary_metrics["rounds"] = float(len(auto_rounds.rounds))
        summary_metrics.update({f"tracking_seconds_{label}": seconds
                                for label, seconds in tracker.stopwatch.by_label.items()})
        for status in ("completed", "diverged", "early_stopped", "pruned"):
            summary_metrics[f"rates_{status}"] = float(sum(r.status == status for r in outcome.rates))
        if best is not None:
            summary_metrics["best_learning_rate"] = best.learning_rate
            summary_metrics["best_epoch"] = float(best.kept_epoch)
            summary_metrics.update({f"best_{name}": value for name, value in best.final_metrics().items()})
        tracker.log_parent_metrics(summary_metrics)
        if best is None:
            tracker.set_parent_tags({"lrsweep.best": "none: every rate diverged or was stopped"})
        else:
            tracker.set_parent_tags({"lrsweep.best": f"lr={best.learning_rate!r}",
                                     "lrsweep.main_metric": MAIN_METRIC[loss]})

    return SweepReport(
        sweep_id=sweep_id, parent_run_id=parent_run_id, child_run_ids=child_run_ids, run=run, loss=loss,
        table=table, resumed=tracker.resumed, results_written=results_written, results_rows=len(rows),
        model_uri=model_uri, registration=registration, training_seconds=training_seconds,
        tracking_seconds=tracker.stopwatch.seconds, wall_seconds=time.perf_counter() - started, summary=summary,
        phase_seconds=phases, tracking_by_label=dict(tracker.stopwatch.by_label),
        suggested_learning_rate=None if auto_rounds is None else auto_rounds.suggestion,
        range_test=None if auto_rounds is None else auto_rounds.range_test,
        rounds=[run] if auto_rounds is None else auto_rounds.rounds)
