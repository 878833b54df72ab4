"""The one place a SparkSession is configured: Delta Lake, the project's Python, quiet logs.

Works the same from ``python`` and from ``spark-submit``. Precedence, highest first:

1. anything ``spark-submit`` was given (``--master``, ``--packages``, ``--jars``, ``--conf``);
2. the ``spark.*`` section of the configuration;
3. defaults here (``local[*]``, Delta's jars resolved for the installed pyspark/delta-spark).

Delta's jars come either from Spark's own package resolution (``spark.jars.packages``, as
``delta.configure_spark_with_delta_pip`` does) or, on air-gapped clusters, from pre-fetched jars
(``spark.jars`` in the configuration, ``--jars`` on spark-submit, or ``$LRSWEEP_SPARK_JARS``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from importlib import metadata
from typing import TYPE_CHECKING, Any

from pipelines.config import SparkConfig
from pipelines.console import jvm_output_filtered, spark_console_settings
from pipelines.errors import SparkSetupError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
MIN_JAVA = 17

#: Settings lrsweep applies unless the user set them: small local shuffles, Delta's snapshot
#: reconstruction on few partitions (its default of 50 dominates small jobs), Arrow on.
DEFAULT_CONF = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.databricks.delta.snapshotPartitions": "4",
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
    "spark.python.worker.reuse": "true",
    "spark.sql.session.timeZone": "UTC",
}


#: Spark's own console logging at WARN (spark-submit defaults to INFO); the console denies the JVM's known noise
#: (:data:`pipelines.console.JVM_NOISE`: loopback hostname, native-hadoop, truncated plan, local checkpoint, UI port)
#: unless ``$LRSWEEP_JVM_NOISE`` is ``NEUTRAL`` (``--verbose``), which the filter reads when the JVM starts.
LOG4J2_PROPERTIES = """\
rootLogger.level = warn
rootLogger.appenderRef.stdout.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex
appender.console.filter.noise.type = RegexFilter
appender.console.filter.noise.regex = (?s).*(resolves to a loopback address|Set SPARK_LOCAL_IP if you need to bind\
|Unable to load native-hadoop library|Truncated the string representation of a plan\
|was locally checkpointed, its lineage has been truncated|Service 'SparkUI' could not bind on port).*
appender.console.filter.noise.onMatch = ${env:LRSWEEP_JVM_NOISE:-DENY}
appender.console.filter.noise.onMismatch = NEUTRAL
logger.repl.name = org.apache.spark.repl.Main
logger.repl.level = warn
logger.ivy.name = org.apache.ivy
logger.ivy.level = error
"""


#: Loggers whose records repeat, with the whole Java stack, a failure that reaches the driver as an exception
#: (which the job reports in one line, or as a traceback when it is a bug): a task's exception (Executor), the
#: lost task (TaskSetManager) and, in Python, PySpark's log of every analysis error with its query context. They
#: go to :func:`debug_log_path` only; every other logger stays on the console at ``spark.log_level``.
TASK_FAILURE_LOGGERS = ("org.apache.spark.executor.Executor", "org.apache.spark.scheduler.TaskSetManager")
QUERY_CONTEXT_LOGGERS = ("DataFrameQueryContextLogger", "SQLQueryContextLogger")
DEBUG_LOG_APPENDER = "lrsweep-debug-log"


def debug_log_path() -> str:
    """Where the repeated Java stacks go: ``$LRSWEEP_DEBUG_LOG``, else ``<temp dir>/lrsweep-spark-debug.log``."""
    return os.environ.get("LRSWEEP_DEBUG_LOG") or os.path.join(tempfile.gettempdir(), "lrsweep-spark-debug.log")


def route_failure_stacks(spark: SparkSession | None = None) -> str:
    """Send the loggers that repeat a failing job's Java stack (:data:`TASK_FAILURE_LOGGERS`,
    :data:`QUERY_CONTEXT_LOGGERS`) to :func:`debug_log_path`, not the console; returns the path.

    The JVM's loggers are reconfigured at run time (log4j2's API through the gateway), so it works the same
    under ``spark-submit``, from ``python`` and whatever ``log4j2.properties`` the cluster ships; a Connect
    client has no JVM and only its Python loggers are routed.
    """
    path = debug_log_path()
    from pyspark.logger import PySparkLogger

    for name in QUERY_CONTEXT_LOGGERS:
        logger = PySparkLogger.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        file_handler = logging.FileHandler(path, delay=True)
        logger.addHandler(file_handler)
        logger.propagate = False
    jvm = getattr(getattr(spark, "sparkContext", None), "_jvm", None) if spark is not None else None
    if jvm is not None:
        _route_jvm_loggers(jvm, path)
    return path


def _route_jvm_loggers(jvm: Any, path: str) -> None:
    log4j = jvm.org.apache.logging.log4j
    context = log4j.LogManager.getContext(False)
    configuration = context.getConfiguration()
    if configuration.getAppender(DEBUG_LOG_APPENDER) is None:
        layout = log4j.core.layout.PatternLayout.newBuilder() \
            .withPattern("%d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex").withConfiguration(configuration).build()
        appender = log4j.core.appender.FileAppender.newBuilder().setName(DEBUG_LOG_APPENDER) \
            .withFileName(path).withAppend(True).setLayout(layout).setConfiguration(configuration).build()
        appender.start()
        configuration.addAppender(appender)
    appender = configuration.getAppender(DEBUG_LOG_APPENDER)
    for name in TASK_FAILURE_LOGGERS:
        logger = log4j.core.config.LoggerConfig.newBuilder().withLoggerName(name) \
            .withLevel(log4j.Level.WARN).withAdditivity(False).withConfig(configuration).build()
        logger.addAppender(appender, None, None)
        configuration.addLogger(name, logger)
    context.updateLoggers()


def delta_maven_coordinates() -> str:
    """Maven coordinates of the Delta jar matching the installed pyspark and delta-spark.

    The same rule as ``delta.configure_spark_with_delta_pip``: ``io.delta:delta-spark_<spark
    major.minor>_2.13:<delta-spark version>``.
    """
    import pyspark

    spark_major_minor = ".".join(pyspark.__version__.split(".")[:2])
    return f"io.delta:delta-spark_{spark_major_minor}_2.13:{metadata.version('delta-spark')}"


def check_java(minimum: int = MIN_JAVA) -> int:
    """Return the Java major version, or raise :class:`SparkSetupError` saying what to install."""
    java_home = os.environ.get("JAVA_HOME")
    java = os.path.join(java_home, "bin", "java") if java_home else shutil.which("java")
    if not java or not os.path.exists(java):
        raise SparkSetupError(
            f"Java {minimum}+ is required by Spark 4 and was not found (no 'java' on PATH"
            f"{', JAVA_HOME=' + java_home if java_home else ''}); install a JDK {minimum} or newer"
        )
    completed = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', completed.stderr + completed.stdout)
    if not match:
        raise SparkSetupError(f"could not read the Java version from '{java} -version'")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_392"
        major = int(match.group(2))
    if major < minimum:
        raise SparkSetupError(f"Java {major} found at {java}; Spark 4 needs Java {minimum} or newer")
    return major


def under_spark_submit() -> bool:
    """True when this interpreter was launched by ``spark-submit`` (its JVM is already running)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def remote_url(config: SparkConfig) -> str | None:
    """The Spark Connect server to use: ``spark.remote`` (or ``--remote``), else ``$SPARK_REMOTE``."""
    return config.remote or os.environ.get("SPARK_REMOTE") or None


def get_spark(config: SparkConfig | None = None) -> SparkSession:
    """Build (or return the running) SparkSession with Delta Lake configured.

    With a Spark Connect server (:func:`remote_url`) the session is a Connect client: the server owns its
    master, jars and Delta extension; lrsweep only sets its SQL settings on the session.

    Parameters
    ----------
    config
        The ``spark`` section; defaults apply when omitted.

    Raises
    ------
    SparkSetupError
        Java is missing or too old, or Delta's classes are not on the classpath under spark-submit.
    """
    from pyspark import SparkConf, SparkContext
    from pyspark.sql import SparkSession

    config = config or SparkConfig()
    remote = remote_url(config)
    if remote:
        return _connect_session(remote, config)
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if not under_spark_submit():
        check_java()
    # Python workers run the interpreter that runs this code: the project's virtualenv.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

    if under_spark_submit():
        SparkContext._ensure_initialized()  # connect to spark-submit's JVM to read what it was given
    given = SparkConf()  # spark-submit's settings (or spark-defaults.conf); empty in a plain python
    given_keys = {key for key, _ in given.getAll()}

    builder = SparkSession.builder.appName(config.app_name)
    settings: dict[str, str] = {
        "spark.master": config.master,
        "spark.sql.shuffle.partitions": str(config.shuffle_partitions),
        "spark.pyspark.python": os.environ["PYSPARK_PYTHON"],
        "spark.pyspark.driver.python": os.environ["PYSPARK_DRIVER_PYTHON"],
        **spark_console_settings(),
        **DEFAULT_CONF,
        **config.conf,
    }
    settings.update(_delta_settings(config, given))
    for key, value in settings.items():
        if key not in given_keys:
            builder = builder.config(key, value)
    spark = _start(builder)
    spark.sparkContext.setLogLevel(config.log_level)
    route_failure_stacks(spark)
    _check_delta_on_classpath(spark)
    _warn_unused_master(config, str(spark.sparkContext.master), given_keys)
    return spark


#: Session settings a Connect client may set (the server owns everything static).
CONNECT_SQL_CONF = ("spark.sql.shuffle.partitions", "spark.sql.execution.arrow.pyspark.enabled",
                    "spark.sql.session.timeZone")


def _connect_session(remote: str, config: SparkConfig) -> SparkSession:
    from pyspark.sql import SparkSession

    try:
        spark = SparkSession.builder.remote(remote).getOrCreate()
        settings = {"spark.sql.shuffle.partitions": str(config.shuffle_partitions), **DEFAULT_CONF, **config.conf}
        for key in CONNECT_SQL_CONF:
            if key in settings:
                spark.conf.set(key, settings[key])
        route_failure_stacks()
    except Exception as error:
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SparkSetupError(f"Spark Connect server {remote}: {text}") from None
    return spark


def _warn_unused_master(config: SparkConfig, running: str, given_keys: set[str]) -> None:
    """One line when a ``spark.master`` the user configured is not the master the session runs on."""
    if "master" in config.model_fields_set and config.master != running and "spark.master" in given_keys:
        print(f"warning: spark.master {config.master!r} of the configuration is not used: the session runs on "
              f"{running!r} (spark-submit's --master wins)", file=sys.stderr, flush=True)


def _start(builder: SparkSession.Builder) -> SparkSession:
    """``getOrCreate()``; a JVM started here (plain ``python``) ignores SIGTERM, as PySpark makes it ignore
    SIGINT, so a signal to the whole process group reaches only the Python driver, which stops the sweep at
    a safe point and still has Spark to save its work (:mod:`pipelines.orchestration.signals`)."""
    import threading

    if under_spark_submit() or threading.current_thread() is not threading.main_thread():
        return builder.getOrCreate()
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with jvm_output_filtered():  # the JVM starts here: its known noise is dropped (pipelines.console)
            return builder.getOrCreate()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _delta_settings(config: SparkConfig, given: object) -> dict[str, str]:
    from pyspark import SparkConf

    assert isinstance(given, SparkConf)
    settings: dict[str, str] = {}
    extensions = [e for e in (given.get("spark.sql.extensions") or "").split(",") if e]
    if DELTA_EXTENSION not in extensions:
        settings["spark.sql.extensions"] = ",".join([*extensions, DELTA_EXTENSION])
    settings["spark.sql.catalog.spark_catalog"] = DELTA_CATALOG
    if under_spark_submit():
        return settings  # jars cannot be added to a running JVM: spark-submit's --packages/--jars decide
    jars = list(config.jars) or [j for j in os.environ.get("LRSWEEP_SPARK_JARS", "").split(",") if j] \
        or installed_jars()
    user_args = os.environ.get("PYSPARK_SUBMIT_ARGS", "")
    already = given.get("spark.jars.packages") or given.get("spark.jars") or "--packages" in user_args
    if jars:
        settings["spark.jars"] = ",".join(jars)
    elif not already:
        settings["spark.jars.packages"] = delta_maven_coordinates()
    return settings


def _check_delta_on_classpath(spark: SparkSession) -> None:
    jvm = spark.sparkContext._jvm
    try:
        assert jvm is not None
        jvm.java.lang.Class.forName(
            "io.delta.tables.DeltaTable", True, jvm.Thread.currentThread().getContextClassLoader()
        )
    except Exception as error:
        raise SparkSetupError(
            "Delta Lake classes are not on Spark's classpath: run spark-submit with "
            f"--packages {delta_maven_coordinates()} (or --jars with pre-fetched Delta jars)"
        ) from error


def spark_submit_args() -> list[str]:
    """Arguments that make a bare ``spark-submit`` run lrsweep jobs: Delta's jars (the installed ones, which
    ``spark-defaults.conf`` names already, else the package to resolve), this Python."""
    return [
        *([] if installed_jars() else ["--packages", delta_maven_coordinates()]),
        "--conf", f"spark.pyspark.python={sys.executable}",
        "--conf", f"spark.pyspark.driver.python={sys.executable}",
    ]


def _defaults_path() -> str:
    import pyspark

    conf_dir = os.environ.get("SPARK_CONF_DIR") or os.path.join(os.path.dirname(pyspark.__file__), "conf")
    return os.path.join(conf_dir, "spark-defaults.conf")


def installed_jars() -> list[str]:
    """The Delta jars that ``spark-defaults.conf`` names (``make``'s install put them there), when every one of
    them is on disk; empty otherwise (sessions then resolve ``spark.jars.packages``)."""
    try:
        with open(_defaults_path()) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return []
    for line in lines:
        key, _, value = line.strip().partition(" ")
        if key == "spark.jars":
            jars = [jar.strip() for jar in value.split(",") if jar.strip()]
            if jars and all(os.path.isfile(jar.removeprefix("file:")) for jar in jars):
                return jars
    return []


def install_jars(target_dir: str) -> str:
    """Put Delta's jars in ``target_dir`` once (``$LRSWEEP_SPARK_JARS`` when set, else :func:`fetch_jars`, unless
    the folder holds them already) and write ``spark-defaults.conf`` naming them, so that no session or
    ``spark-submit`` resolves packages again. Returns the defaults file's path."""
    given = [j for j in os.environ.get("LRSWEEP_SPARK_JARS", "").split(",") if j]
    present = sorted(os.path.abspath(os.path.join(target_dir, name)) for name in os.listdir(target_dir)
                     if name.endswith(".jar")) if os.path.isdir(target_dir) else []
    group, artifact, version = delta_maven_coordinates().split(":")  # Spark names the file group_artifact-version
    has_delta = any(os.path.basename(jar) == f"{group}_{artifact}-{version}.jar" for jar in present)
    jars = given or (present if has_delta else fetch_jars(target_dir))
    return write_spark_defaults(jars)


def write_spark_defaults(jars: list[str] | None = None) -> str:
    """Write ``spark-defaults.conf`` for the installed pyspark, so a bare ``spark-submit`` has Delta.

    With ``jars`` (or ``$LRSWEEP_SPARK_JARS``) the pre-fetched jars are used instead of package
    resolution. Returns the file's path.
    """
    import pyspark

    jars = jars or [j for j in os.environ.get("LRSWEEP_SPARK_JARS", "").split(",") if j]
    conf_dir = os.environ.get("SPARK_CONF_DIR") or os.path.join(os.path.dirname(pyspark.__file__), "conf")
    os.makedirs(conf_dir, exist_ok=True)
    lines = [
        "# Written by `python -m pipelines.session write-spark-defaults` (lrsweep's make bootstrap).",
        f"spark.jars {','.join(jars)}" if jars else f"spark.jars.packages {delta_maven_coordinates()}",
        f"spark.sql.extensions {DELTA_EXTENSION}",
        f"spark.sql.catalog.spark_catalog {DELTA_CATALOG}",
        f"spark.pyspark.python {sys.executable}",
        f"spark.pyspark.driver.python {sys.executable}",
    ]
    path = os.path.join(conf_dir, "spark-defaults.conf")
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    with open(os.path.join(conf_dir, "log4j2.properties"), "w") as handle:
        handle.write(LOG4J2_PROPERTIES)
    return path


def fetch_jars(target_dir: str) -> list[str]:
    """Resolve Delta's jars through Spark's own package mechanism and copy them to ``target_dir``.

    For air-gapped clusters: run once where the Maven repository is reachable, ship the folder, and
    point ``spark.jars`` (or ``--jars``, or ``$LRSWEEP_SPARK_JARS``) at the copied files.
    """
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master("local[1]").appName("lrsweep-fetch-jars")
             .config("spark.jars.packages", delta_maven_coordinates())
             .config("spark.ui.enabled", "false").getOrCreate())
    try:
        resolved = [j for j in spark.sparkContext.getConf().get("spark.jars", "").split(",") if j]
    finally:
        spark.stop()
    os.makedirs(target_dir, exist_ok=True)
    copied = []
    for jar in resolved:
        source = jar.removeprefix("file://").removeprefix("file:")
        destination = os.path.join(target_dir, os.path.basename(source))
        shutil.copyfile(source, destination)
        copied.append(os.path.abspath(destination))
    return copied


if __name__ == "__main__":
    # `python -m pipelines.session COMMAND`: set-up helpers used by the Makefile.
    command = sys.argv[1] if len(sys.argv) > 1 else "submit-args"
    if command == "submit-args":
        print(" ".join(spark_submit_args()))
    elif command == "packages":
        print(delta_maven_coordinates())
    elif command == "write-spark-defaults":
        print(write_spark_defaults())
    elif command == "install-jars":
        print(install_jars(sys.argv[2] if len(sys.argv) > 2 else "jars"))
    elif command == "fetch-jars":
        print(",".join(fetch_jars(sys.argv[2] if len(sys.argv) > 2 else "jars")))
    elif command == "check-java":
        try:
            print(f"java {check_java()}")
        except SparkSetupError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
    else:
        print(f"unknown command {command!r}: submit-args | packages | write-spark-defaults | install-jars DIR | "
              "fetch-jars DIR | check-java", file=sys.stderr)
        sys.exit(2)
