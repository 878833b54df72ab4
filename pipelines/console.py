"""What a person sees: how verbose a job is, its progress display, and the JVM's known noise kept off the screen.

The one place output is decided. :func:`configure_output` (the CLI calls it once, from ``--verbose``) sets

* the Python logging of our modules (``pipelines.*``: INFO lines such as the per-column encoding only with
  ``--verbose``; warnings always) and of chatty libraries (:data:`QUIET_LOGGERS`);
* what Spark shows (:func:`spark_console_settings`, applied by :func:`pipelines.session.get_spark`): its own
  console stage bars off (``spark.ui.showConsoleProgress``: they are drawn with carriage returns into the
  job's stream), on again with ``--verbose``;
* the JVM's known noise (:data:`JVM_NOISE`): the loopback-hostname, native-hadoop and truncated-plan
  warnings are denied by the filters of the ``log4j2.properties`` the install writes
  (:data:`pipelines.session.LOG4J2_PROPERTIES`) unless ``$LRSWEEP_JVM_NOISE`` is ``NEUTRAL`` (``--verbose``
  sets it); when ``lrsweep`` starts the JVM itself (not under ``spark-submit``) the JVM's own output also
  passes :func:`jvm_output_filtered`, which drops the incubator-module warning and Ivy's package listing.
  Real warnings and errors still reach stderr.

:class:`Console` is the ``say`` a job prints through: lines as they are, and each epoch as a live progress bar
(tqdm) on a terminal, or as today's one line per epoch (``epoch 3/10: best ...``) elsewhere (``--progress
auto|bar|lines|off``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TextIO

if TYPE_CHECKING:  # pipelines.session imports this module: no pyspark or numpy at import time
    from pipelines.sweep.state import GridState

ProgressMode = Literal["auto", "bar", "lines", "off"]
PROGRESS_MODES: tuple[ProgressMode, ...] = ("auto", "bar", "lines", "off")

#: Libraries whose INFO lines would bury a job's own output (a new sqlite store's migrations, the registry's
#: "Created version" that the job's own ``model registry:`` line says again).
QUIET_LOGGERS = ("mlflow.store.db.utils", "alembic", "py4j", "mlflow.tracking._model_registry.fluent")

#: The environment variable the log4j2 filters read: ``DENY`` (default) hides :data:`JVM_NOISE`, ``NEUTRAL``
#: lets it through.
JVM_NOISE_ENV = "LRSWEEP_JVM_NOISE"

#: Lines of the JVM that say nothing a user can act on (regular expressions, searched in each line).
JVM_NOISE = (
    r"^WARNING: Using incubator modules",
    r"WARN Utils: Your hostname, .* resolves to a loopback address",
    r"WARN Utils: Set SPARK_LOCAL_IP if you need to bind to another address",
    r"WARN NativeCodeLoader: Unable to load native-hadoop library",
    r"WARN SparkStringUtils: Truncated the string representation of a plan",
    r"WARN MapPartitionsRDD: RDD \d+ was locally checkpointed",
    r"WARN Utils: Service 'SparkUI' could not bind on port \d+\. Attempting port",
    # Ivy's package resolution (when Delta's jars must still be resolved)
    r"^:: ", r"^Ivy Default Cache set to", r"^The jars for the packages stored in", r"\S+#\S+ added as a dependency$",
    r"^\s*confs: \[", r"^\s*found \S+#\S+;", r"^\s*(downloading|\[SUCCESSFUL \])", r"^\s*\|", r"^\s*-{10,}",
    r"artifacts copied, \d+ already retrieved",
)
_NOISE = re.compile("|".join(f"(?:{pattern})" for pattern in JVM_NOISE))


@dataclass(frozen=True)
class OutputSettings:
    verbose: bool = False
    filter_jvm: bool = False  # the CLI's quiet mode: the JVM lrsweep starts passes jvm_output_filtered


_settings = OutputSettings()


def configure_output(verbose: bool) -> None:
    """Set, once per command, how much our modules, the libraries and Spark say (see the module docstring)."""
    global _settings
    _settings = OutputSettings(verbose=verbose, filter_jvm=not verbose)
    os.environ[JVM_NOISE_ENV] = "NEUTRAL" if verbose else "DENY"
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    ours = logging.getLogger("pipelines")
    if not any(isinstance(handler, _ConsoleHandler) for handler in ours.handlers):
        ours.addHandler(_ConsoleHandler())
        ours.propagate = False
    ours.setLevel(logging.INFO if verbose else logging.WARNING)


class _ConsoleHandler(logging.Handler):
    """Our modules' records as plain lines on stdout (above the progress bar when one is drawn), warnings
    prefixed like the job's own ``warning:`` lines."""

    def emit(self, record: logging.LogRecord) -> None:
        prefix = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
        line = prefix + record.getMessage()
        console = Console.live
        if console is not None:
            console(line)
        else:
            with contextlib.suppress(OSError, ValueError):
                print(line, file=sys.stdout, flush=True)


def verbose() -> bool:
    return _settings.verbose


def spark_console_settings() -> dict[str, str]:
    """Spark settings of the console: its stage bars only with ``--verbose`` (we draw our own progress)."""
    return {"spark.ui.showConsoleProgress": "true" if _settings.verbose else "false"}


def is_noise(line: str) -> bool:
    """Whether a line of the JVM's output is :data:`JVM_NOISE`."""
    return bool(_NOISE.search(line))


@contextlib.contextmanager
def jvm_output_filtered() -> Iterator[None]:
    """While a JVM starts here, give it a pipe as stdout and stderr (it inherits them) and forward its lines,
    but :data:`JVM_NOISE`, to this process's stderr for as long as it runs. A no-op unless
    :func:`configure_output` asked for quiet output."""
    if not _settings.filter_jvm:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    target = os.dup(2)
    saved = [os.dup(1), os.dup(2)]
    threading.Thread(target=_forward, args=(read_end, target), name="lrsweep-jvm-output", daemon=True).start()
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)
    try:
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for descriptor in (*saved, write_end):
            os.close(descriptor)


def _forward(read_end: int, target: int) -> None:
    with os.fdopen(read_end, "r", errors="replace") as lines, os.fdopen(target, "w") as out:
        for line in lines:
            if is_noise(line):
                continue
            with contextlib.suppress(OSError, ValueError):
                console = Console.live
                if console is not None:
                    console(line.rstrip("\n"), stream=out)
                else:
                    out.write(line)
                    out.flush()


def resolve_mode(mode: ProgressMode, stream: TextIO) -> ProgressMode:
    """``auto``: a bar when ``stream`` is a terminal (or, under ``spark-submit``, which pipes the driver's output
    through its JVM, when the JVM's is: :func:`submitter_terminal`), one line per epoch otherwise."""
    if mode != "auto":
        return mode
    try:
        terminal = stream.isatty() or (stream is sys.stdout and submitter_terminal() is not None)
    except (AttributeError, ValueError):
        terminal = False
    return "bar" if terminal else "lines"


def submitter_terminal() -> str | None:
    """The terminal ``spark-submit``'s JVM writes to when this Python driver is its child (the JVM copies the
    driver's piped stdout there), else None. Linux's ``/proc``; elsewhere None (one line per epoch)."""
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        return None
    try:
        target = os.readlink(f"/proc/{os.getppid()}/fd/1")
    except OSError:
        return None
    return target if target.startswith(("/dev/pts/", "/dev/tty")) else None


def terminal_columns(stream: TextIO) -> int:
    """The width of the terminal the bar is drawn on (120 when it cannot be told, or a pty reports 0)."""
    for path in (None, submitter_terminal()):
        try:
            if path is None:
                columns = os.get_terminal_size(stream.fileno()).columns
            else:
                with open(path, "rb") as terminal:
                    columns = os.get_terminal_size(terminal.fileno()).columns
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            continue
        if columns > 0:
            return columns
    return shutil.get_terminal_size((120, 24)).columns or 120


class Console:
    """A job's ``say``: prints lines, and shows each epoch as :attr:`mode` says (see the module docstring).

    With a bar on screen a line is written above it (the bar is redrawn below); a round's bar stays on screen
    when the round ends, as its last state.
    """

    live: Console | None = None  # the console whose bar is on screen (the JVM's forwarded lines go above it)

    def __init__(self, mode: ProgressMode = "auto", stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.mode = resolve_mode(mode, self.stream)
        self._bar: object | None = None  # tqdm's bar of the current round
        self._round = 0
        self._lock = threading.RLock()

    def __call__(self, line: str, stream: TextIO | None = None) -> None:
        """Print ``line`` (above the bar when one is drawn); a closed stream (spark-submit's JVM gone) is fine."""
        with self._lock, contextlib.suppress(BrokenPipeError, OSError, ValueError):
            if self._bar is not None:
                from tqdm import tqdm

                tqdm.write(line, file=self.stream)
            else:
                print(line, file=stream or self.stream, flush=True)

    def epoch(self, state: GridState, round_number: int, train_rows: int) -> None:
        """Show the round's last recorded epoch."""
        from pipelines.reporting.tables import progress_line

        if self.mode == "lines":
            self(progress_line(state))
        elif self.mode == "bar":
            with self._lock, contextlib.suppress(BrokenPipeError, OSError, ValueError):
                self._draw(state, round_number, train_rows)

    def _draw(self, state: GridState, round_number: int, train_rows: int) -> None:
        from tqdm import tqdm

        from pipelines.reporting.progress import bar_text, epoch_status

        status = epoch_status(state, train_rows, round_number)
        prefix, postfix = (text.replace("{", "{{").replace("}", "}}") for text in bar_text(status))
        bar_format = f"{prefix} {{bar:20}} {postfix}"
        if self._bar is None or round_number != self._round:
            self.close()
            self._bar = tqdm(total=status.epochs, initial=status.epoch, file=self.stream,
                             ncols=terminal_columns(self.stream), leave=True,
                             mininterval=0, bar_format=bar_format)
            self._round = round_number
            Console.live = self
        bar = self._bar
        assert isinstance(bar, tqdm)
        bar.bar_format = bar_format
        bar.n = status.epoch
        bar.refresh()
        if status.active == 0 or status.epoch >= status.epochs:
            self.close()

    def close(self) -> None:
        """End the bar on screen (it stays as its last state)."""
        with self._lock:
            bar, self._bar = self._bar, None
            if Console.live is self:
                Console.live = None
            if bar is not None:
                with contextlib.suppress(BrokenPipeError, OSError, ValueError):
                    bar.close()  # type: ignore[attr-defined]


def show_epoch(say: object, state: GridState, round_number: int, train_rows: int) -> None:
    """An epoch boundary for a person: the :class:`Console`'s bar or line, else ``say(progress_line(state))``
    (library callers, tests: the one line per epoch)."""
    from pipelines.reporting.tables import progress_line

    if isinstance(say, Console):
        say.epoch(state, round_number, train_rows)
    elif callable(say):
        say(progress_line(state))
