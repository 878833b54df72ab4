"""spark-submit driver for the cluster tests: one sweep, its curves and models written as JSON.

    spark-submit --master spark://... tests/e2e/cluster_driver.py OUTPUT.json --set key=value ...
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pyspark.sql import SparkSession

from pipelines.cli import config_from_args, job_parser, run_job
from pipelines.config import Config
from pipelines.lakehouse.reader import read_feature_table
from pipelines.orchestration.training import prepare_data, train_grid
from pipelines.session import get_spark
from pipelines.sweep.grid import joint_grid


def sweep_rates(spark: SparkSession, config: Config) -> tuple[list[dict[str, Any]], int]:
    """The sweep's rates (status, curves, weights, intercept, as JSON values) and the number of executors that
    were registered when the data was prepared (before any fault of the training can cost one)."""
    table = read_feature_table(spark, config.data, config.model.loss)
    prepared = prepare_data(spark, table, config.data, config.features, config.train)
    executors = spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1  # minus the driver
    outcome = train_grid(prepared, config.problem, config.train, config.sweep,
                     joint_grid(config.sweep.grid(), config.penalty_axis()))
    rates = [
        {"learning_rate": rate.learning_rate, "status": rate.status,
         "curves": {name: curve.tolist() for name, curve in rate.curves.items()},
         "weights": rate.weights.tolist(), "intercept": rate.intercept}
        for rate in outcome.rates
    ]
    return json.loads(json.dumps(rates)), executors  # as the JSON file holds them


def main(argv: list[str]) -> int:
    parser = job_parser("cluster test driver")
    parser.add_argument("output")
    args = parser.parse_args(argv)
    config = config_from_args(args)
    spark = get_spark(config.spark)
    rates, executors = sweep_rates(spark, config)
    with open(args.output, "w") as handle:
        json.dump({"master": spark.sparkContext.master, "executors": executors, "rates": rates}, handle)
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
