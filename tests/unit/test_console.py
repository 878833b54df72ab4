"""What a person sees, without Spark: the progress bar and the plain epoch lines, the features summary, the JVM's
noise filter and the closing lines that say where to look."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest

from pipelines.console import Console, is_noise, resolve_mode, show_epoch
from pipelines.features.columns import ColumnChoice
from pipelines.features.encoding import ColumnEncoding, TableEncoding
from pipelines.orchestration.report import where_to_look
from pipelines.reporting.progress import bar_text, clock, epoch_status, features_detail, features_summary, human_count
from pipelines.reporting.tables import progress_line
from pipelines.sweep.grid import GridPoint
from pipelines.sweep.state import GridState, grid_state
from pipelines.sweep.status import RUNNING

VAL_LOSSES = [[0.69, 0.69, 0.69], [0.60, 0.52, 0.71], [0.55, 0.49, np.nan], [0.53, 0.48, np.nan], [0.52, 0.48, np.nan]]


def state_after(epoch: int) -> GridState:
    """Three rates, 4 epochs; the third diverges at epoch 2 (NaN from then on), each epoch takes 2 s."""
    state = grid_state([GridPoint(rate) for rate in (0.01, 0.1, 1.0)], [0], 4, "logistic", n_features=3)
    for done in range(epoch + 1):
        state.curves["val_loss"][done] = VAL_LOSSES[done]
    state.recorded_epoch, state.trained_epoch = epoch, epoch
    state.epoch_seconds = [2.0] * epoch
    state.status = np.array([RUNNING, RUNNING, RUNNING if epoch < 2 else "diverged"]).astype("<U16")
    if epoch == 4:
        state.status[:2] = "completed"
    return state


def test_the_epoch_status_has_the_best_point_the_active_ones_the_speed_and_the_time_left() -> None:
    status = epoch_status(state_after(2), train_rows=10_000, round_number=1)
    assert (status.epoch, status.epochs, status.best_label, status.active, status.stopped) == (2, 4, "lr=0.1", 2, 1)
    assert status.best_val_loss == pytest.approx(0.49)
    assert status.rows_per_second == pytest.approx(5_000.0) and status.eta_seconds == pytest.approx(4.0)
    assert bar_text(status) == ("round 1 epoch 2/4",
                                "5k rows/s, ETA 0:04, best lr=0.1 val_loss=0.49000, 2/3 active, 1 stopped")
    done = epoch_status(state_after(4), train_rows=10_000)
    assert done.eta_seconds == 0.0 and done.active == 0 and done.stopped == 1  # 2 completed, 1 diverged
    assert bar_text(epoch_status(state_after(0), 10))[1] == "best lr=0.01 val_loss=0.69000, 3/3 active, 0 stopped"
    assert [human_count(v) for v in (950, 12_400, 3_100_000)] == ["950", "12.4k", "3.1M"]
    assert [clock(v) for v in (7, 760, 3723)] == ["0:07", "12:40", "1:02:03"]


def test_not_on_a_terminal_the_epochs_are_todays_lines_without_carriage_returns() -> None:
    stream = io.StringIO()
    console = Console("auto", stream)  # a StringIO is no terminal: one line per epoch
    assert console.mode == "lines"
    console("sweep s1: starting")
    for epoch in range(1, 5):
        show_epoch(console, state_after(epoch), 1, train_rows=10_000)
    console.close()
    assert "\r" not in stream.getvalue()
    assert stream.getvalue().splitlines() == [
        "sweep s1: starting",
        "epoch 1/4: best lr=0.1 val_loss=0.52000; 3/3 points active",
        "epoch 2/4: best lr=0.1 val_loss=0.49000; 2/3 points active",
        "epoch 3/4: best lr=0.1 val_loss=0.48000; 2/3 points active",
        "epoch 4/4: best lr=0.1 val_loss=0.48000; 0/3 points active",
    ]
    lines: list[str] = []  # a plain callable (library callers, tests): the same line
    show_epoch(lines.append, state_after(1), 1, 10_000)
    assert lines == [progress_line(state_after(1))]
    quiet = io.StringIO()
    show_epoch(Console("off", quiet), state_after(1), 1, 10_000)
    assert quiet.getvalue() == ""


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_one_bar_is_redrawn_per_round_and_lines_go_above_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # a terminal of 150 columns, whatever this process's own is (the bar is cut to the width; CI's was 80)
    monkeypatch.setattr("pipelines.console.terminal_columns", lambda stream: 150)
    stream = Terminal()
    console = Console("auto", stream)
    assert console.mode == "bar" and resolve_mode("lines", stream) == "lines"
    for epoch in (1, 2):
        console.epoch(state_after(epoch), 1, train_rows=10_000)
    console("warning: a line while the bar is drawn")
    console.epoch(state_after(3), 1, 10_000)
    console.epoch(state_after(4), 1, 10_000)  # the round's end: the bar stays as its last state
    console("results: after the bar")
    screen = stream.getvalue()
    frames = [frame for frame in screen.replace("\n", "\r").split("\r") if frame.strip()]
    assert "epoch " not in "".join(f for f in frames if f.startswith("epoch "))  # no plain epoch lines
    bars = [frame for frame in frames if frame.startswith("round 1 epoch")]
    assert bars[0].startswith("round 1 epoch 1/4 ") and "3/3 active, 0 stopped" in bars[0]
    assert "round 1 epoch 2/4" in screen and "5k rows/s, ETA 0:04, best lr=0.1 val_loss=0.49000" in screen
    assert bars[-1].startswith("round 1 epoch 4/4 ") and "ETA 0:00" in bars[-1] and "0/3 active, 1 stopped" in bars[-1]
    assert "warning: a line while the bar is drawn" in frames
    assert screen.rstrip("\n").endswith("results: after the bar")
    assert screen.count("\n") == 3  # the line above the bar, the bar left on screen, the line after it
    assert Console.live is None


def demo_encoding() -> tuple[ColumnChoice, TableEncoding]:
    used = {"tenure": "number", "charges": "number", "plan": "string", "city": "string", "joined": "date",
            "usage": "array"}
    columns = ColumnChoice(used, {"customer_id": "listed in data.exclude", "tags": "type map<string,int> is not "
                                  "supported (a map column cannot be a feature)"})
    encoding = TableEncoding([
        ColumnEncoding("tenure", "number", 1, means=(0.0,), scales=(1.0,)),
        ColumnEncoding("charges", "number", 1, means=(0.0,), scales=(1.0,)),
        ColumnEncoding("plan", "onehot", 3, categories=("gold", "basic")),
        ColumnEncoding("city", "hashed", 16, buckets=16),
        ColumnEncoding("joined", "date", 1, means=(0.0,), scales=(1.0,)),
        ColumnEncoding("usage", "array", 4, means=(0.0,) * 4, scales=(1.0,) * 4),
    ])
    return columns, encoding


def test_the_features_are_one_line_of_counts_by_family_and_the_columns_left_out() -> None:
    columns, encoding = demo_encoding()
    assert features_summary(columns, encoding) == [
        "features: 6 columns: 2 number, 2 string, 1 date, 1 array -> 26 model inputs (19 sparse)",
        "left out: customer_id: listed in data.exclude; tags: type map<string,int> is not supported (a map column "
        "cannot be a feature)",
    ]
    assert features_summary(ColumnChoice({"tenure": "number"}), TableEncoding(encoding.columns[:1])) == \
        ["features: 1 columns: 1 number -> 1 model inputs"]
    assert features_detail(encoding).startswith("encoding: tenure: number; charges: number; plan: onehot (2 "
                                                "categories + other); city: hashed into 16 buckets")


def test_the_jvms_known_noise_is_dropped_and_real_warnings_are_not() -> None:
    noise = [
        "WARNING: Using incubator modules: jdk.incubator.vector",
        "26/12/06 08:09:42 WARN Utils: Your hostname, vm, resolves to a loopback address: 127.0.0.1; using "
        "192.0.2.2 instead (on interface eth0)",
        "26/12/06 08:09:42 WARN Utils: Set SPARK_LOCAL_IP if you need to bind to another address",
        "26/12/06 08:09:43 WARN NativeCodeLoader: Unable to load native-hadoop library for your platform... using "
        "builtin-java classes where applicable",
        "26/12/06 08:10:09 WARN SparkStringUtils: Truncated the string representation of a plan since it was too "
        "large.",
        ":: loading settings :: url = jar:file:/x/ivy-2.5.3.jar!/org/apache/ivy/core/settings/ivysettings.xml",
        "Ivy Default Cache set to: /root/.ivy2.5.2/cache",
        "io.delta#delta-spark_4.2_2.13 added as a dependency",
        "\tfound io.delta#delta-storage;4.4.0 in central",
        "\t|      default     |   33  |   0   |   0   |   0   ||   33  |   0   |",
        "\t0 artifacts copied, 33 already retrieved (0kB/12ms)",
        "26/12/06 08:23:22 WARN Utils: Service 'SparkUI' could not bind on port 4040. Attempting port 4041.",
    ]
    real = ["26/12/06 08:11:22 WARN TaskSetManager: Lost task 0.0 in stage 3.0: java.io.IOException: disk full",
            "26/12/06 08:11:22 ERROR Executor: Exception in task 1.0", "error: data.table: no Delta table at /x"]
    assert [line for line in noise if not is_noise(line)] == []
    assert [line for line in real if is_noise(line)] == []


def test_the_last_lines_say_where_to_look() -> None:
    local = where_to_look("sqlite:////work/mlflow.db", "3", "abc", "/work/data/delta/sweep_results", "nightly-1")
    assert local == [
        "MLflow: mlflow ui --backend-store-uri sqlite:////work/mlflow.db --port 5000, then "
        "http://127.0.0.1:5000/#/experiments/3/runs/abc",
        "Delta: lrsweep show nightly-1, or SELECT * FROM delta.`/work/data/delta/sweep_results` WHERE sweep_id = "
        "'nightly-1'"]
    server = where_to_look("https://mlflow.example.com/", "3", "abc", "lake.sweep_results", "n")
    assert server[0] == "MLflow: https://mlflow.example.com/#/experiments/3/runs/abc"
    assert server[1].startswith("Delta: lrsweep show n, or SELECT * FROM `lake`.`sweep_results`")


def test_the_installed_log4j2_configuration_denies_the_same_warnings_unless_asked() -> None:
    from pipelines.session import LOG4J2_PROPERTIES

    settings = dict(line.split(" = ", 1) for line in LOG4J2_PROPERTIES.splitlines() if " = " in line)
    denied = re.compile(settings["appender.console.filter.noise.regex"])  # log4j2 matches the whole message
    messages = ["Your hostname, vm, resolves to a loopback address: 127.0.0.1; using 192.0.2.2 instead",
                "Set SPARK_LOCAL_IP if you need to bind to another address",
                "Unable to load native-hadoop library for your platform... using builtin-java classes",
                "Truncated the string representation of a plan since it was too large.",
                "RDD 202 was locally checkpointed, its lineage has been truncated and cannot be recomputed",
                "Service 'SparkUI' could not bind on port 4040. Attempting port 4041."]
    assert all(denied.fullmatch(message) for message in messages)
    assert not denied.fullmatch("Lost task 0.0 in stage 3.0 (TID 7): java.io.IOException: No space left on device")
    assert settings["appender.console.filter.noise.onMatch"] == "${env:LRSWEEP_JVM_NOISE:-DENY}"


def test_verbose_shows_each_columns_encoding_and_the_jvms_noise_and_quiet_does_not(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    import logging

    from pipelines import console

    monkeypatch.setattr(console, "_settings", console._settings)  # restored after the test
    monkeypatch.setenv(console.JVM_NOISE_ENV, "DENY")
    for name in ("pipelines", *console.QUIET_LOGGERS):
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "level", logger.level)
    inputs = logging.getLogger("pipelines.orchestration.inputs")  # where the job logs the encoding
    console.configure_output(verbose=False)
    inputs.info("encoding: tenure: number")
    inputs.warning("something a user must see")
    assert capsys.readouterr().out.splitlines() == ["warning: something a user must see"]
    assert console.spark_console_settings() == {"spark.ui.showConsoleProgress": "false"}
    console.configure_output(verbose=True)
    inputs.info("encoding: tenure: number")
    assert capsys.readouterr().out.splitlines() == ["encoding: tenure: number"]
    assert console.spark_console_settings() == {"spark.ui.showConsoleProgress": "true"}
    assert console.os.environ[console.JVM_NOISE_ENV] == "NEUTRAL" and not console._settings.filter_jvm
