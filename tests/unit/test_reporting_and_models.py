"""Pure pieces of tracking and reporting: summaries, result rows, finite histories, the sklearn model."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from pipelines.features.encoding import ColumnEncoding, TableEncoding
from pipelines.features.scaling import FeatureScaling
from pipelines.reporting.figures import loss_curves_figure, val_loss_vs_rate_figure
from pipelines.reporting.tables import format_summary, rate_summary, results_rows
from pipelines.sgd.losses import LOSS_NAMES, task_of
from pipelines.sweep.outcome import GridOutcome, RateResult
from pipelines.tracking.export import linear_parts, linear_pipeline
from pipelines.tracking.registry import ChampionCheck, challenge
from pipelines.tracking.runs import MAX_METRICS_PER_BATCH, chunks, metric_history, rate_metrics

NAN, INF = float("nan"), float("inf")


def _rate(learning_rate: float, status: str, train: list[float], val: list[float], kept: int) -> RateResult:
    curves = {"train_loss": np.array(train), "val_loss": np.array(val),
              "val_accuracy": np.full(3, 0.8), "val_auc": np.array([0.7, 0.75, 0.8])}
    ran = int(np.sum(~np.isnan(np.array(val))))
    return RateResult(learning_rate=learning_rate, status=status, epochs_run=ran,
                      stopped_epoch=2 if status == "diverged" else None, kept_epoch=kept, curves=curves,
                      curves_std={k: np.where(np.isnan(v), np.nan, 0.0) for k, v in curves.items()},
                      weights=np.zeros(2), intercept=0.0)


@pytest.fixture
def outcome() -> GridOutcome:
    return GridOutcome(rates=[_rate(0.01, "completed", [0.6, 0.5, 0.45], [0.61, 0.52, 0.47], 3),
                              _rate(1000.0, "diverged", [0.6, INF, NAN], [0.7, 1e9, NAN], 1)],
                       epochs=3, seeds=(42,), jobs=4, row_passes=10, full_grid_row_passes=12, seconds=1.0)


def test_summary_marks_the_best_rate_and_hides_non_finite_values(outcome: GridOutcome) -> None:
    rows = rate_summary(outcome, "logistic")
    assert [r["best"] for r in rows] == [True, False]
    assert rows[0]["val_loss"] == pytest.approx(0.47) and rows[0]["val_auc"] == pytest.approx(0.8)
    assert rows[1]["val_loss"] == pytest.approx(0.7)  # the diverged rate's last good (kept) epoch
    text = format_summary(rows, "logistic")
    lines = text.splitlines()
    assert lines[0].split() == ["point", "status", "epochs", "train_loss", "val_loss", "val_auc"]
    assert lines[2].startswith("* lr=0.01 ") and "completed" in lines[2] and "0.47000" in lines[2]
    assert lines[3].startswith("  lr=1000 ") and "diverged" in lines[3]
    outcome.rates[1].reg_param = 0.5  # a joint grid: every label shows the penalty
    lines = format_summary(rate_summary(outcome, "logistic"), "logistic").splitlines()
    assert lines[2].startswith("* lr=0.01 reg=0 ") and lines[3].startswith("  lr=1000 reg=0.5 ")


def test_result_rows_cover_run_epochs_with_none_for_non_finite(outcome: GridOutcome) -> None:
    rows = results_rows(outcome, "logistic", sweep_id="s", parent_run_id="p", child_run_ids=["a", "b"],
                        data_table="t", data_version=3)
    assert [(r["learning_rate"], r["epoch"]) for r in rows] == [(0.01, 1), (0.01, 2), (0.01, 3), (1000.0, 1),
                                                               (1000.0, 2)]
    assert rows[4]["train_loss"] is None and rows[4]["val_loss"] == 1e9 and rows[4]["val_rmse"] is None
    assert {r["child_run_id"] for r in rows[:3]} == {"a"} and rows[0]["is_best"] and not rows[3]["is_best"]
    with pytest.raises(ValueError, match="1 child run ids for 2 rates"):
        results_rows(outcome, "logistic", sweep_id="s", parent_run_id="p", child_run_ids=["a"], data_table="t",
                     data_version=3)


def test_histories_keep_only_finite_values_with_epoch_steps(outcome: GridOutcome) -> None:
    history = metric_history("train_loss", [0.6, INF, NAN, 0.3], 0)
    assert [(m.step, m.value) for m in history] == [(1, 0.6), (4, 0.3)]
    metrics = rate_metrics(outcome.rates[1], seeds=1, timestamp_ms=0)
    assert all(np.isfinite(m.value) for m in metrics)
    assert {m.key: m.value for m in metrics if m.step == 0}["diverged_at_epoch"] == 2.0
    assert not any(m.key.endswith("_std") for m in metrics)
    assert any(m.key == "val_loss_std" for m in rate_metrics(outcome.rates[0], seeds=3, timestamp_ms=0))
    assert [len(c) for c in chunks(list(range(2500)), MAX_METRICS_PER_BATCH)] == [1000, 1000, 500]


def test_figures_are_built_without_pyplot(outcome: GridOutcome) -> None:
    curves = loss_curves_figure(outcome, "logistic")
    versus = val_loss_vs_rate_figure(outcome)
    assert isinstance(curves, Figure) and curves.axes[0].get_yscale() == "log"
    assert isinstance(versus, Figure) and versus.axes[0].get_xscale() == "log"


def test_the_loss_figure_lists_every_rate_when_none_has_a_finite_loss() -> None:
    """Every rate diverged at its first epoch: nothing to draw, but the legend still names each rate and status."""
    diverged = GridOutcome(rates=[_rate(rate, "diverged", [INF, NAN, NAN], [INF, NAN, NAN], 0) for rate in (1.0, 10.0)],
                           epochs=3, seeds=(42,), jobs=1, row_passes=1, full_grid_row_passes=1, seconds=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figure = loss_curves_figure(diverged, "logistic")
    legend = figure.axes[0].get_legend()
    assert [text.get_text() for text in legend.get_texts()] == [f"{label} (diverged)" for label in diverged.labels]


@pytest.mark.parametrize("loss", ["logistic", "squared"])
def test_sklearn_pipeline_matches_the_raw_coefficients(loss: str) -> None:
    rng = np.random.default_rng(1)
    scaling = FeatureScaling(("a", "b", "c"), means=np.array([1.0, -2.0, 50.0]), scales=np.array([0.5, 3.0, 20.0]))
    weights, intercept = rng.normal(size=3), 0.3
    encoding = TableEncoding([ColumnEncoding(c, "number", 1, means=(m,), scales=(s,))
                              for c, m, s in zip(scaling.columns, scaling.means, scaling.scales, strict=True)])
    pipeline = linear_pipeline(encoding, weights, intercept, loss)
    X = pd.DataFrame(rng.normal(size=(40, 3)) * [1, 3, 20] + [1, -2, 50], columns=["a", "b", "c"])
    raw_weights, raw_intercepts = scaling.to_raw(weights[None, :], np.array([intercept]))
    margin = X.to_numpy() @ raw_weights[0] + raw_intercepts[0]
    if loss == "logistic":
        np.testing.assert_allclose(pipeline.predict_proba(X)[:, 1], 1 / (1 + np.exp(-margin)), atol=1e-12)
        assert set(pipeline.predict(X)) <= {0, 1}
    else:
        np.testing.assert_allclose(pipeline.predict(X), margin, atol=1e-9)
    with pytest.raises(ValueError, match="column 'a' is missing"):
        pipeline.predict(X.rename(columns={"a": "z"}))


def test_the_challenger_must_beat_the_champion_on_the_same_rows_by_the_margin() -> None:
    measured = ChampionCheck("4", {"loss": 0.5, "count": 800.0})
    assert challenge("if_better", 0.49, measured, 0.01)[0]  # 2% better than 0.5
    wins, reason = challenge("if_better", 0.4975, measured, 0.01)  # 0.5% better: not by 1%
    assert not wins and "on the same 800 validation rows" in reason and "+0.500%" in reason
    assert not challenge("if_better", 0.5, measured, 0.0)[0]  # a tie keeps the champion
    assert challenge("if_better", 0.4999, measured, 0.0)[0]
    assert not challenge("if_better", 0.6, measured, 0.0)[0]
    assert challenge("always", 0.6, measured, 0.5) == (True, "tracking.register_when is 'always'")
    assert challenge("if_better", 0.6, None, 0.01) == (True, "no champion yet")
    gone = ChampionCheck("4", None, "it uses column(s) 'x' that this sweep's rows ... do not have")
    wins, reason = challenge("if_better", 0.9, gone, 0.01)
    assert wins and reason.startswith("champion version 4 cannot be measured on this sweep's rows (it uses")
    assert challenge("if_better", 0.9, ChampionCheck("4", {"loss": float("nan"), "count": 8.0}), 0.01)[0]
    broken = ChampionCheck("4", None, "MlflowException: artifact not found", replaceable=False)
    wins, reason = challenge("if_better", 0.1, broken, 0.01)  # a champion that cannot be loaded is not replaced
    assert not wins and "could not be loaded" in reason and "move the alias" in reason


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_a_pipeline_comes_apart_into_the_coefficients_it_was_built_from(loss: str) -> None:
    rng = np.random.default_rng(3)
    encoding = TableEncoding([ColumnEncoding(c, "number", 1, means=(0.0,), scales=(1.0,)) for c in "abc"])
    classes = ("x", "y", "z") if task_of(loss) == "multiclass" else (0, 1)
    shape = (3, 3) if task_of(loss) == "multiclass" else (3,)
    weights = rng.normal(size=shape)
    intercept = rng.normal(size=3) if task_of(loss) == "multiclass" else 0.25
    parts = linear_parts(linear_pipeline(encoding, weights, intercept, loss, classes=classes), loss)
    assert parts[0] is encoding
    np.testing.assert_array_equal(parts[1], weights)
    np.testing.assert_array_equal(parts[2], intercept)
    assert type(parts[2]) is type(intercept)
    with pytest.raises(ValueError, match="not an lrsweep pipeline"):
        linear_parts(object(), loss)
