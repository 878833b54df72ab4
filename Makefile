# lrsweep: two commands set everything up.
#   make demo   build .venv if missing, write the demo Delta table, run a sweep (MLflow store: mlflow.db)
#   make test   build .venv if missing, run the test suite (make test-fast: the unit tests only)
#   make score  score data.table with the champion model into output.predictions_table
# Java 17+ is the only prerequisite.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SUBMIT := $(VENV)/bin/spark-submit
ENV    ?= local
ARGS   ?=
PYTEST_ARGS ?=

# spark-submit (and Spark's Python workers) run this project's interpreter.
export PYSPARK_PYTHON := $(abspath $(PY))
export PYSPARK_DRIVER_PYTHON := $(abspath $(PY))

.PHONY: demo range-test score sync notebooks test test-fast test-spark test-e2e lint typecheck bench ui check-java clean fetch-jars

$(VENV)/.installed: pyproject.toml | check-java
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile -e '.[dev]'  # modules are compiled when first imported
	@# Delta's jars into $(VENV)/jars once, named in spark-defaults.conf: no session or spark-submit resolves them
	@# again (where they cannot be fetched, sessions fall back to resolving spark.jars.packages at start)
	$(PY) -m pipelines.session install-jars $(VENV)/jars > $(VENV)/jars.log 2>&1 \
	  || { echo "warning: Delta's jars could not be fetched (see $(VENV)/jars.log); Spark will resolve them at each start" >&2; \
	       $(PY) -m pipelines.session write-spark-defaults; }
	@touch $@

check-java:
	@java_bin=$${JAVA_HOME:+$$JAVA_HOME/bin/}java; \
	command -v $$java_bin >/dev/null 2>&1 || { echo "error: Java 17+ is required by Spark 4 and '$$java_bin' was not found; install a JDK 17 or newer (or set JAVA_HOME)" >&2; exit 2; }; \
	v=$$($$java_bin -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1); \
	[ "$${v:-0}" -ge 17 ] || { echo "error: Java $${v:-unknown} found ($$java_bin); Spark 4 needs Java 17 or newer" >&2; exit 2; }

demo: $(VENV)/.installed
	$(SUBMIT) jobs/make_demo_table.py --env $(ENV) $(ARGS)
	$(SUBMIT) jobs/train_sweep.py --env $(ENV) $(ARGS)

range-test: $(VENV)/.installed
	$(SUBMIT) jobs/range_test.py --env $(ENV) $(ARGS)

score: $(VENV)/.installed
	$(SUBMIT) jobs/score.py --env $(ENV) $(ARGS)

# Execute the three notebooks with papermill against the demo table (run `make demo` first); the executed
# copies go to data/notebooks/.
notebooks: $(VENV)/.installed
	@mkdir -p data/notebooks
	for notebook in notebooks/*.ipynb; do \
	  $(VENV)/bin/papermill --cwd notebooks --kernel python3 "$$notebook" "data/notebooks/$$(basename $$notebook)" \
	    -p WORKDIR "$(CURDIR)" || exit $$?; \
	done

sync: $(VENV)/.installed
	$(SUBMIT) jobs/sync_sweep.py --env $(ENV) $(ARGS)

# The pyramid: `unit` (tests/unit, no Spark), `spark` (tests/integration, one SparkSession per pytest process),
# `e2e` (tests/e2e, processes of their own). `make test` runs all three on TEST_WORKERS pytest processes side by
# side, each test module whole on one of them (its fixtures built once): the end-to-end modules mostly wait on
# JVM and server start-ups and slowed epochs, which the Spark-heavy integration modules fill. Modules are handed
# out in collection order (no reordering by size), so the long end-to-end ones start first.
TEST_WORKERS ?= 3
XDIST := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: $(VENV)/.installed
	$(PY) -m pytest $(XDIST) --durations=25 $(PYTEST_ARGS)

# The unit tests on two processes: on a fresh clone most of their time is numba compiling each kernel variant once
# into its disk cache (125 of them, ~1 s each), which two processes do side by side (185 s -> 123 s here).
test-fast: $(VENV)/.installed
	$(PY) -m pytest -m unit -n 2 $(PYTEST_ARGS)

test-spark: $(VENV)/.installed
	$(PY) -m pytest -m spark $(XDIST) --durations=25 $(PYTEST_ARGS)

test-e2e: $(VENV)/.installed
	$(PY) -m pytest -m e2e $(XDIST) --durations=25 $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check pipelines jobs tests bench

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

bench: $(VENV)/.installed
	$(SUBMIT) --master "local[2]" --driver-memory 8g bench/bench_sweep.py $(BENCH_ARGS)
	$(SUBMIT) --master "local[2]" --driver-memory 8g bench/bench_pbt.py $(PBT_BENCH_ARGS)

ui: $(VENV)/.installed
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --port 5000

fetch-jars: $(VENV)/.installed
	$(PY) -m pipelines.session fetch-jars jars

clean:
	rm -rf data mlruns mlartifacts spark-warehouse metastore_db derby.log .pytest_cache mlflow.db.lock
