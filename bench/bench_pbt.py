"""Benchmark: population-based training against the best fixed rate of the same grid, same epochs.

    make bench                                     # bench_sweep.py, then this (both problems)
    spark-submit --master "local[2]" bench/bench_pbt.py --demo-rows 50000 --noisy-rows 50000   # a quick run

Two problems, each with the same 8 log-spaced rates (1e-3 .. 3), 10 epochs of local_sgd, batch 256, on
``local[2]``:

* ``demo``: the demo churn table (:func:`~pipelines.lakehouse.demo_data.write_demo_table`, ``--demo-rows``
  customers), its default model (logistic, every usable column);
* ``noisy``: a harder synthetic one: ``--noisy-rows`` x 32 Gaussian features, a large-margin logistic label (the
  optimum has large weights: a large rate gets there sooner) with 10% of the labels flipped (the gradient noise of a
  large constant rate keeps the loss above its floor), batches of 64: a rate that decays after the first epochs
  does better than any constant one (what PBT should find).

For each, one prepared set of cached blocks; the grid (``sweep.strategy=grid``) and the population
(``sweep.strategy=pbt``, default ``sweep.pbt`` settings) are timed alternately ``--repeats`` (3) times after a
warm-up (numba's compilations), each the best of its runs:

* ``pbt_vs_best_fixed_val_loss``: the population's best validation loss / the grid's best (lower is better; < 1:
  PBT found a schedule better than every constant rate);
* ``pbt_cost_ratio``: wall(PBT sweep) / wall(grid sweep) (target <= 1.1: exploit is a row copy in the driver and
  a copied point's discarded epoch is the only extra work).

The last line is one JSON object with both figures per problem.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import Config, load_config
from pipelines.lakehouse.demo_data import write_demo_table
from pipelines.lakehouse.reader import read_feature_table
from pipelines.orchestration.training import prepare_data, train_grid
from pipelines.session import get_spark
from pipelines.sweep.grid import joint_grid
from pipelines.sweep.outcome import GridOutcome

COST_TARGET = 1.1
RATES = "{min: 0.001, max: 3.0, num: 8}"


def noisy_table(spark: Any, path: Path, rows: int, features: int = 32, flip: float = 0.1, scale: float = 10.0,
                seed: int = 3) -> None:
    """A logistic problem of margin ``scale`` (in standard deviations) with ``flip`` of its labels flipped, as a Delta
    table at ``path``."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, features))
    margin = X @ rng.normal(size=features) / np.sqrt(features) * scale
    label = (rng.random(rows) < 1 / (1 + np.exp(-margin))).astype(np.int64)
    label = np.where(rng.random(rows) < flip, 1 - label, label)
    frame = pd.DataFrame(X, columns=[f"x{j}" for j in range(features)])
    frame["label"] = label
    spark.createDataFrame(frame).repartition(2).write.format("delta").mode("overwrite").save(str(path))


def config_for(table: Path, workdir: Path, *extra: str) -> Config:
    return load_config(overrides=[
        f"data.table={table}", f"output.results_table={workdir / 'results'}",
        f"output.predictions_table={workdir / 'predictions'}", f"output.checkpoints={workdir / 'checkpoints'}",
        f"sweep.learning_rates={RATES}", "train.epochs=10", "train.num_partitions=2", *extra])


def measure(spark: Any, config: Config, repeats: int) -> dict[str, float]:
    """The grid's and the population's best validation loss and wall time on one prepared set of blocks."""
    table = read_feature_table(spark, config.data, config.model.loss)
    prepared = prepare_data(spark, table, config.data, config.features, config.train)
    points = joint_grid(config.sweep.grid(), config.penalty_axis())
    pbt_sweep = config.sweep.model_copy(update={"strategy": "pbt"})

    def run(strategy: str) -> tuple[GridOutcome, float]:
        start = time.perf_counter()
        outcome = train_grid(prepared, config.problem, config.train, pbt_sweep if strategy == "pbt" else config.sweep,
                             points)
        return outcome, time.perf_counter() - start

    try:
        run("grid")  # warm-up: the kernels' compilations
        seconds: dict[str, list[float]] = {"grid": [], "pbt": []}
        outcomes: dict[str, GridOutcome] = {}
        for _ in range(repeats):
            for strategy in ("grid", "pbt"):
                outcomes[strategy], elapsed = run(strategy)
                seconds[strategy].append(elapsed)
        print(f"  executor {prepared.executor_choice.name}, {prepared.blocks.total_train_rows} training rows, "
              f"{len(points)} points", flush=True)
    finally:
        prepared.blocks.release()
    losses = {strategy: best_val_loss(outcome) for strategy, outcome in outcomes.items()}
    pbt = outcomes["pbt"]
    winner = pbt.best_index
    assert winner is not None and pbt.lineage is not None
    path = pbt.lineage.path(winner, pbt.rates[winner].kept_epoch)
    grid_best = outcomes["grid"].best
    print(f"  grid: best lr={grid_best.learning_rate if grid_best else float('nan'):.4g} val_loss "
          f"{losses['grid']:.6f} in {min(seconds['grid']):.2f} s", flush=True)
    print(f"  pbt:  winner {pbt.labels[winner]} val_loss {losses['pbt']:.6f} in {min(seconds['pbt']):.2f} s; "
          f"lineage rates {', '.join(f'{rate:.3g}' for rate in path.learning_rates)} "
          f"({len(path.exploits)} copies)", flush=True)
    return {"pbt_vs_best_fixed_val_loss": losses["pbt"] / losses["grid"],
            "pbt_cost_ratio": min(seconds["pbt"]) / min(seconds["grid"]),
            "grid_best_val_loss": losses["grid"], "pbt_best_val_loss": losses["pbt"],
            "grid_seconds": min(seconds["grid"]), "pbt_seconds": min(seconds["pbt"])}


def best_val_loss(outcome: GridOutcome) -> float:
    best = outcome.best
    return float("nan") if best is None else best.final_metrics()["val_loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-rows", type=int, default=200_000)
    parser.add_argument("--noisy-rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    spark = get_spark(load_config(overrides=["spark.master=local[2]"]).spark)
    spark.sparkContext.setLogLevel("ERROR")
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="lrsweep-bench-pbt-") as folder:
        workdir = Path(folder)
        demo = config_for(workdir / "churn_features", workdir, f"demo.rows={args.demo_rows}",
                          f"demo.append_rows={max(1, args.demo_rows // 10)}")
        write_demo_table(spark, demo.demo, demo.data.table)
        noisy_table(spark, workdir / "noisy", args.noisy_rows)
        noisy = config_for(workdir / "noisy", workdir, "data.label=label", "data.exclude=[]", "train.batch_size=64")
        for name, config in (("demo", demo), ("noisy", noisy)):
            print(f"{name}:", flush=True)
            results[name] = measure(spark, config, args.repeats)
    for name, figures in results.items():
        ratio, cost = figures["pbt_vs_best_fixed_val_loss"], figures["pbt_cost_ratio"]
        print(f"{name:6s} pbt_vs_best_fixed_val_loss {ratio:.4f} (lower is better; < 1: PBT beats every fixed rate)  "
              f"pbt_cost_ratio {cost:.3f} (target <= {COST_TARGET}){'' if cost <= COST_TARGET else '  MISSED'}")
    print(json.dumps({f"{name}_{key}": round(value, 6) for name, figures in results.items()
                      for key, value in figures.items()}))
    spark.stop()


if __name__ == "__main__":
    main()
