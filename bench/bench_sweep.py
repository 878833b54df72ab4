"""Benchmark: the whole learning-rate grid in one pass, against its peers measured in the same run.

    make bench                                   # 1M x 32, 8 rates, 10 epochs, local[2]; then 8M rows
    make bench BENCH_ARGS="--rows 200000 --large-rows 0 --hashed-rows 0"   # a quick run
    make bench BENCH_ARGS="--scaling"            # bench/results/scaling.png (rows, grid, features)
    make bench BENCH_ARGS="--breakdown"          # where an epoch's time goes (fixed cost, training, evaluation)
    make bench BENCH_ARGS="--only small-tables"  # the tiny and small tables against scikit-learn (minutes)
    make bench BENCH_ARGS="--only demo"          # `make demo`'s sweep: training share, read + prepare vs one query
    make bench BENCH_ARGS="--only kernels"       # the epoch figures only: grids, anchors, flop efficiency, multinomial

Peers, all on the same training rows (already in memory for every contender):

* ``grid_amortization``     wall(8-rate local_sgd sweep) / wall(1-rate run);
* ``grid_amortization_64``  wall(64-point grid: 16 rates x 4 reg_params, one pass) / wall(1-rate run);
* ``vs_mllib_speedup``      wall(loop of ``LogisticRegressionWithSGD.train`` over the 8 rates, 10
                            iterations, miniBatchFraction=1.0, regParam=0.0, convergenceTol=0.0 so it
                            runs all 10) / wall(our 8-rate ``gd`` run with the same settings);
                            ``vs_mllib_max_rel_loss_diff`` compares the final training losses;
* ``vs_sklearn_speedup``    wall(loop of ``SGDClassifier(loss="log_loss", learning_rate="constant",
                            eta0=rate, max_iter=10, tol=None)`` over the 8 rates) / wall(our 8-rate
                            ``local_sgd`` sweep), training only; ``vs_sklearn_best_val_loss_ratio`` =
                            our best validation log-loss / scikit-learn's best;
* ``vs_numpy_epoch_ratio``  our median per-epoch wall (2 cores, training and evaluation) / one epoch of an
                            independent one-process numpy loop written here (:func:`numpy_anchor_epoch`: one
                            ``(B, d) @ (d, K)`` product per batch for all 8 rates, not our kernels) over the same
                            training rows; ``vs_numpy_epoch_ratio_8m`` the same at ``--large-rows``;
* ``vs_spark_ml_lbfgs_time_ratio`` wall(our 8-rate sweep) / wall(Spark ML ``LogisticRegression`` fit, L-BFGS
                            to convergence (tol 1e-6, at most 100 iterations) on the same cached training rows):
                            what a user would run instead for one model; ``vs_spark_ml_lbfgs_val_loss_ratio`` =
                            our best validation log-loss / its;
* ``driver_peak_rss_mb``    peak RSS of the Python driver during our sweeps (the data stays in Spark), at 1M and
                            at ``--large-rows`` (``driver_peak_rss_mb_8m``);
* ``joint_grid_cost_ratio`` wall(8 rates x 4 reg_params joint grid, one pass) / wall(the 8-rate sweep): what the
                            regularization axis costs when its points share the pass;
* ``sparse_epoch_ratio``    (``--hashed-rows``, its own spark-submit): median epoch of an 8-rate sweep on a
                            table whose model has 2^18 + 20 inputs (a string hashed into 2^18 buckets, a 3-value
                            one-hot string, 16 numbers: ~19 non-zeros per row) / the same on the dense 32-number
                            table of as many rows; ``hashed_vs_dense_block_bytes_ratio`` compares the cached
                            blocks' bytes (sparse inputs are stored as CSR: they grow with the non-zeros);
* ``flop_efficiency``       our epoch's useful arithmetic rate (``4 n d K`` flops per epoch: the training rows'
                            margins and gradients, ``n`` rows, ``d`` inputs, ``K`` points) over this machine's dense
                            GEMM rate (``gemm_gflops``: the best of a few float64 ``matmul`` of 3072 x 3072 matrices,
                            all cores), at 8 points; ``flop_efficiency_64`` at the 64-point grid. The JSON records
                            ``cpu_model`` and ``blas`` (threadpoolctl: the BLAS library, its kernel and threads);
* the numpy anchors (the epochs below and the GEMM rate) run in a process of their own whose environment has neither
                            ``OPENBLAS_CORETYPE`` nor ``OPENBLAS_L2_SIZE`` (unset together: where a machine sets
                            them for old OpenBLAS builds they slow a current numpy, which would flatter a ratio);
* ``multinomial_epoch_vs_numpy`` our median epoch of an 8-rate sweep of 10-class multinomial models (``--rows`` x
                            ``--features``, ``--multinomial-epochs``) / one epoch of an independent numpy softmax
                            loop (:func:`numpy_softmax_epoch`: per batch one ``(B, d) @ (d, 10 K)`` GEMM, the
                            softmax, one ``(d, B) @ (B, 10 K)`` GEMM) over the same training rows;
* ``float32_epoch_ratio``, ``float32_best_val_loss_rel_diff``: the 8-rate sweep with ``train.dtype=float32``
                            against float64 (epoch time, and the relative change of the best validation loss).
* ``tiny_table_vs_sklearn`` (``--only small-tables`` runs just these): on a 1k-row, 30-feature table, 8 rates x
                            200 epochs, wall(a loop of ``SGDClassifier(loss="log_loss", learning_rate="constant",
                            eta0=rate).partial_fit`` over the 8 rates x 200 epochs, the same training rows in this
                            process) / wall(our training: ``train_grid`` with the executor ``train.executor=auto``
                            picks, each epoch's evaluation included); ``small_table_vs_sklearn`` the same on 200k x 32,
                            8 rates x 10 epochs; ``driver_executor_bit_identical``: both tables' curves and models are
                            equal whether the tasks ran in the driver or through Spark jobs.
* ``demo_training_share`` (``--only demo`` runs just these): `make demo`'s two ``spark-submit``s in a new folder
                            (the demo table, then the sweep on its settings); training / wall of the sweep, both from
                            the sweep's own ``time:`` line;
* ``prepare_vs_one_aggregation``: that sweep's read + prepare / one Spark aggregation written here
                            (:func:`one_aggregation`, not our code) of the statistics read and prepare need, over the
                            same table version in a ``spark-submit`` of its own (its JVM as cold as the sweep's): row
                            count, per column its nulls, per number its NaN/inf count, sum and sum of squares, per
                            array its length range, and per string column (and the label) its value counts, as
                            grouping sets of one ``groupBy``.

The figures at ``--large-rows`` (default 8M) come from a second spark-submit of this script, so each
driver's peak RSS is its own. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.config import Config, load_config
from pipelines.distributed.blocks import BlockSet, collect_arrays, load_staged
from pipelines.distributed.engine import GridTrainer, ModelRows
from pipelines.distributed.executors import DataSize, DriverExecutor, SparkExecutor, choose_executor
from pipelines.distributed.strategies import GradientDescent
from pipelines.lakehouse.reader import read_feature_table
from pipelines.orchestration.training import PreparedData, driver_limit_bytes, prepare_data, train_grid
from pipelines.session import get_spark, spark_submit_args
from pipelines.sgd import objective
from pipelines.sgd.problem import TrainingProblem
from pipelines.sweep.grid import joint_grid
from pipelines.sweep.outcome import GridOutcome

BENCH_DIR = Path(__file__).resolve().parent / "results"


def peak_rss_mb() -> float:
    """Peak resident set size of this process (VmHWM), in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def make_table(spark: Any, path: Path, rows: int, features: int, partitions: int) -> None:
    """A logistic problem with ``features`` standard-normal-ish columns on mixed scales, as Delta."""
    from pyspark.sql import functions as F

    if (path / "_delta_log").exists():
        return
    frame = spark.range(rows, numPartitions=partitions)
    columns = [(F.randn(seed=100 + j) * (10.0 ** (j % 4 - 1))).alias(f"x{j}") for j in range(features)]
    frame = frame.select(*columns)
    true_weights = np.random.default_rng(0).normal(size=features) / np.sqrt(features) * 3
    terms = [float(w) * F.col(f"x{j}") / (10.0 ** (j % 4 - 1)) for j, w in enumerate(true_weights)]
    while len(terms) > 1:  # a balanced sum: a chain of 512 additions overflows the JVM analyzer's stack
        terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i] for i in range(0, len(terms), 2)]
    frame = frame.withColumn("label", (F.rand(seed=7) < 1 / (1 + F.exp(-terms[0]))).cast("int"))
    frame.write.format("delta").mode("overwrite").save(str(path))


def make_hashed_table(spark: Any, path: Path, rows: int, partitions: int) -> None:
    """16 numbers, a 3-value ``plan`` and a ``device`` string of about rows/2 distinct values, as Delta."""
    from pyspark.sql import functions as F

    if (path / "_delta_log").exists():
        return
    frame = spark.range(rows, numPartitions=partitions)
    numbers = [F.randn(seed=300 + j).alias(f"x{j}") for j in range(16)]
    plan = F.element_at(F.array(F.lit("basic"), F.lit("standard"), F.lit("premium")),
                        (F.floor(F.rand(seed=5) * 3) + 1).cast("int")).alias("plan")
    device = F.concat(F.lit("device-"), F.floor(F.rand(seed=6) * (rows // 2)).cast("long").cast("string"))
    frame = frame.select(*numbers, plan, device.alias("device"))
    z = F.when(F.col("plan") == "basic", 0.5).otherwise(-0.2) + (F.xxhash64("device") % 7 - 3) * 0.2
    for j in range(8):
        z = z + 0.3 * F.col(f"x{j}")
    frame = frame.withColumn("label", (F.rand(seed=8) < 1 / (1 + F.exp(-z))).cast("int"))
    frame.write.format("delta").mode("overwrite").save(str(path))


def block_bytes(blocks: BlockSet) -> int:
    """Bytes of the cached blocks' arrays (dense inputs, CSR parts, labels)."""
    from pyspark.sql import functions as F

    sizes = [F.length(c) for c in ("features", "labels", "sparse_indptr", "sparse_indices", "sparse_values")]
    return int(blocks.dataframe.select(sum(sizes[1:], sizes[0]).alias("bytes")).agg(F.sum("bytes")).collect()[0][0])


def measure_sweep(spark: Any, config: Config, rates: list[float]) -> dict[str, Any]:
    """Prepare the configured table and time a sweep of ``rates`` on it (after a one-epoch warm-up)."""
    table = read_feature_table(spark, config.data, "logistic")
    prepared, prepare_seconds = timed(lambda: prepare_data(spark, table, config.data, config.features, config.train))
    warm_up = config.model_copy(update={"train": config.train.model_copy(update={"epochs": 1})})
    sweep(prepared, warm_up, rates[:1])
    run = sweep(prepared, config, rates)
    best = run.best
    figures = {"inputs": prepared.encoding.n_inputs, "sparse_inputs": prepared.encoding.sparse_width,
               "epoch_seconds": float(np.median(run.epoch_seconds)),
               "block_bytes": block_bytes(prepared.blocks), "prepare_seconds": prepare_seconds,
               "best_val_loss": best.final_metrics()["val_loss"] if best else float("nan")}
    prepared.blocks.release()
    return figures


def make_multiclass_table(spark: Any, path: Path, rows: int, features: int, classes: int, partitions: int) -> None:
    """A ``classes``-class problem on ``features`` standard-normal columns, as Delta: the label is the bin of a
    noisy linear score (``classes`` bins of equal width over +-3 score units, the outer bins open)."""
    from pyspark.sql import functions as F

    if (path / "_delta_log").exists():
        return
    frame = spark.range(rows, numPartitions=partitions)
    frame = frame.select(*[F.randn(seed=500 + j).alias(f"x{j}") for j in range(features)])
    true_weights = np.random.default_rng(1).normal(size=features) / np.sqrt(features) * 2
    score = sum(float(w) * F.col(f"x{j}") for j, w in enumerate(true_weights)) + F.randn(seed=9) * 0.5
    binned = F.floor((score + 3.0) / 6.0 * classes)
    frame = frame.withColumn("label", F.least(F.greatest(binned, F.lit(0)), F.lit(classes - 1)).cast("int"))
    frame.write.format("delta").mode("overwrite").save(str(path))


def run_multinomial(spark: Any, args: argparse.Namespace) -> dict[str, Any]:
    """``multinomial_epoch_vs_numpy``: our median epoch of an 8-rate sweep of ``--classes``-class models against
    :func:`numpy_softmax_epoch` over the same training rows."""
    table = BENCH_DIR / f"table_{args.rows}x{args.features}_{args.classes}classes"
    make_multiclass_table(spark, table, args.rows, args.features, args.classes, args.partitions)
    rates = [float(r) for r in np.geomspace(args.min_rate, args.max_rate, args.rates)]
    config = bench_config(table, rates, args.multinomial_epochs, args.partitions, f"train.batch_size={args.batch_size}",
                          "model.loss=multinomial")
    prepared = prepare_data(spark, read_feature_table(spark, config.data, "multinomial"), config.data,
                            config.features, config.train)
    sweep(prepared, config.model_copy(update={"train": config.train.model_copy(update={"epochs": 1})}), rates[:1])
    run = sweep(prepared, config, rates)
    ours = float(np.median(run.epoch_seconds))
    X, y, _, _ = local_rows(prepared)
    prepared.blocks.release()
    anchor = run_anchors(X, y, [{"kind": "softmax", "rates": rates, "classes": args.classes,
                                 "batch_size": args.batch_size, "seeds": 3}])["epochs"][0]
    print(f"multinomial ({args.classes} classes, {args.rates} rates): median epoch {ours:.3f} s, numpy softmax anchor "
          f"{anchor:.3f} s", flush=True)
    return {"multinomial_epoch_seconds": ours, "multinomial_numpy_epoch_seconds": anchor,
            "multinomial_epoch_vs_numpy": ours / anchor}


def run_hashed(args: argparse.Namespace) -> dict[str, Any]:
    """Epoch time and block bytes: the 2^18-bucket hashed table against the dense 32-number one (same rows)."""
    spark = get_spark(load_config(overrides=["spark.master=local[2]"]).spark)
    spark.sparkContext.setLogLevel("ERROR")
    rows = args.hashed_rows
    rates = [float(r) for r in np.geomspace(args.min_rate, args.max_rate, args.rates)]
    figures: dict[str, Any] = {"hashed_rows": rows}
    for name, path, extra in (
            ("dense", BENCH_DIR / f"table_{rows}x{args.features}", ()),
            ("hashed", BENCH_DIR / f"table_{rows}_hashed", ("features.hash_buckets=262144",))):
        if name == "dense":
            make_table(spark, path, rows, args.features, args.partitions)
        else:
            make_hashed_table(spark, path, rows, args.partitions)
        config = bench_config(path, rates, args.hashed_epochs, args.partitions,
                              f"train.batch_size={args.batch_size}", *extra)
        figures.update({f"{name}_{key}": value for key, value in measure_sweep(spark, config, rates).items()})
        print(f"{name}: {figures[f'{name}_inputs']} inputs ({figures[f'{name}_sparse_inputs']} sparse), prepared in "
              f"{figures[f'{name}_prepare_seconds']:.1f} s, blocks {figures[f'{name}_block_bytes'] / 2**20:.1f} MiB, "
              f"median epoch {figures[f'{name}_epoch_seconds']:.2f} s", flush=True)
    figures["hashed_vs_dense_epoch_ratio"] = figures["hashed_epoch_seconds"] / figures["dense_epoch_seconds"]
    figures["hashed_vs_dense_block_bytes_ratio"] = figures["hashed_block_bytes"] / figures["dense_block_bytes"]
    figures["hashed_driver_peak_rss_mb"] = peak_rss_mb()
    return figures


def timed(function: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def bench_config(table: Path, rates: list[float], epochs: int, partitions: int, *extra: str) -> Config:
    return load_config(overrides=[
        f"data.table={table}", "data.label=label", "data.exclude=[]", "data.validation_fraction=0.1",
        "model.loss=logistic", f"train.epochs={epochs}", f"train.num_partitions={partitions}",
        f"sweep.learning_rates={rates}", "sweep.divergence_factor=1e12", *extra,
    ])


def final_train_loss(blocks: BlockSet, config: Config, weights: np.ndarray) -> np.ndarray:
    """Training objective of given weights, computed by the engine on the cached blocks."""
    problem = config.problem
    models = ModelRows.zeros([1.0] * weights.shape[0], [0] * weights.shape[0],
                             problem.regularization.rows(weights.shape[0]), blocks.n_features, problem.optimizer)
    models.weights = weights.copy()
    trainer = GridTrainer(SparkExecutor(blocks), problem, GradientDescent(), models, epochs=1)
    return trainer.evaluate(list(range(weights.shape[0]))).train_loss


def sweep(prepared: PreparedData, config: Config, rates: list[float]) -> GridOutcome:
    return train_grid(prepared, config.problem, config.train, config.sweep, joint_grid(rates, config.penalty_axis()))


def run_main(args: argparse.Namespace) -> dict[str, Any]:
    spark = get_spark(load_config(overrides=["spark.master=local[2]"]).spark)
    spark.sparkContext.setLogLevel("ERROR")
    table = BENCH_DIR / f"table_{args.rows}x{args.features}"
    _, seconds = timed(lambda: make_table(spark, table, args.rows, args.features, args.partitions))
    print(f"table {table}: {args.rows} x {args.features} ({seconds:.1f} s)", flush=True)
    rates = [float(r) for r in np.geomspace(args.min_rate, args.max_rate, args.rates)]
    batch = f"train.batch_size={args.batch_size}"

    sgd_config = bench_config(table, rates, args.epochs, args.partitions, batch)
    data = read_feature_table(spark, sgd_config.data, "logistic")
    prepared, prepare_seconds = timed(lambda: prepare_data(spark, data, sgd_config.data, sgd_config.features,
                                                           sgd_config.train))
    print(f"prepared {prepared.blocks.total_train_rows} train / {prepared.blocks.total_val_rows} val rows "
          f"in {prepared.blocks.num_partitions} partitions ({prepare_seconds:.1f} s)", flush=True)

    results: dict[str, Any] = {"rows": args.rows, "features": args.features, "rates": args.rates,
                               "epochs": args.epochs, "partitions": args.partitions}
    warm_up = sgd_config.model_copy(update={"train": sgd_config.train.model_copy(update={"epochs": 1})})
    sweep(prepared, warm_up, rates[:1])  # warm up Python workers (and load the compiled kernel)
    sweep_run, sweep_seconds = timed(lambda: sweep(prepared, sgd_config, rates))
    single_config = bench_config(table, rates[:1], args.epochs, args.partitions, batch)
    single_run, single_seconds = timed(lambda: sweep(prepared, single_config, rates[:1]))
    results["grid_amortization"] = sweep_seconds / single_seconds
    epoch_seconds = float(np.median(sweep_run.epoch_seconds))
    results["epoch_seconds"] = epoch_seconds
    results["single_epoch_seconds"] = float(np.median(single_run.epoch_seconds))
    results["driver_peak_rss_mb"] = peak_rss_mb()
    print(f"local_sgd sweep: {args.rates} rates {sweep_seconds:.2f} s, 1 rate {single_seconds:.2f} s, "
          f"median epoch {epoch_seconds:.3f} s (1 rate {results['single_epoch_seconds']:.3f} s)", flush=True)
    X, y, X_val, y_val = local_rows(prepared)
    anchors = run_anchors(X, y, [{"kind": "logistic", "rates": rates, "batch_size": args.batch_size, "seeds": 3}])
    numpy_epoch = anchors["epochs"][0]
    results["numpy_epoch_seconds"] = numpy_epoch
    results["vs_numpy_epoch_ratio"] = epoch_seconds / numpy_epoch
    results.update({key: anchors[key] for key in ("gemm_gflops", "cpu_model", "blas", "anchor_unset")})
    train_rows, inputs = prepared.blocks.total_train_rows, prepared.encoding.n_inputs
    results["flop_efficiency"] = useful_gflops(train_rows, inputs, args.rates, epoch_seconds) / anchors["gemm_gflops"]
    kernels = ", ".join(str(blas["architecture"]) for blas in anchors["blas"])
    print(f"numpy anchor epoch ({args.rates} rates, one process) {numpy_epoch:.3f} s; GEMM "
          f"{anchors['gemm_gflops']:.1f} GFLOP/s ({anchors['cpu_model']}, {kernels})", flush=True)
    if args.epoch_only:
        prepared.blocks.release()
        return results

    if args.reg_params:
        joint_config = bench_config(table, rates, args.epochs, args.partitions, batch,
                                    f"sweep.reg_params={args.reg_params}")
        _, joint_seconds = timed(lambda: sweep(prepared, joint_config, rates))
        results["joint_grid_cost_ratio"] = joint_seconds / sweep_seconds
        print(f"joint grid: {args.rates} rates x {len(args.reg_params)} reg_params {joint_seconds:.2f} s "
              f"({results['joint_grid_cost_ratio']:.2f} x the {args.rates}-rate sweep)", flush=True)
        rates_16 = [float(r) for r in np.geomspace(args.min_rate, args.max_rate, 64 // len(args.reg_params))]
        grid_64 = bench_config(table, rates_16, args.epochs, args.partitions, batch,
                               f"sweep.reg_params={args.reg_params}")
        run_64, seconds_64 = timed(lambda: sweep(prepared, grid_64, rates_16))
        results["grid_amortization_64"] = seconds_64 / single_seconds
        points_64 = len(rates_16) * len(args.reg_params)
        results["epoch_seconds_64"] = float(np.median(run_64.epoch_seconds))
        results["flop_efficiency_64"] = useful_gflops(train_rows, inputs, points_64, results["epoch_seconds_64"]) / \
            anchors["gemm_gflops"]
        print(f"64-point grid ({len(rates_16)} rates x {len(args.reg_params)} reg_params) {seconds_64:.2f} s, median "
              f"epoch {results['epoch_seconds_64']:.3f} s", flush=True)
    if args.only == "kernels":
        prepared.blocks.release()
        results.update(run_multinomial(spark, args))
        return results

    narrow_config = bench_config(table, rates, args.epochs, args.partitions, batch, "train.dtype=float32")
    narrow = prepare_data(spark, data, narrow_config.data, narrow_config.features, narrow_config.train)
    sweep(narrow, warm_up, rates[:1])
    narrow_run = sweep(narrow, narrow_config, rates)
    narrow.blocks.release()
    best, narrow_best = sweep_run.best, narrow_run.best
    ours_best = best.final_metrics()["val_loss"] if best else float("nan")
    narrow_val = narrow_best.final_metrics()["val_loss"] if narrow_best else float("nan")
    results["float32_epoch_ratio"] = float(np.median(narrow_run.epoch_seconds)) / epoch_seconds
    results["float32_best_val_loss_rel_diff"] = abs(narrow_val - ours_best) / ours_best
    print(f"float32 inputs: median epoch {np.median(narrow_run.epoch_seconds):.3f} s, best val loss "
          f"{narrow_val:.7f} (float64 {ours_best:.7f})", flush=True)

    gd_config = bench_config(table, rates, args.epochs, args.partitions, "train.algorithm=gd",
                             "train.schedule=inv_sqrt", "model.fit_intercept=false", "features.standardize=false")
    raw = read_feature_table(spark, gd_config.data, "logistic")
    raw_prepared = prepare_data(spark, raw, gd_config.data, gd_config.features, gd_config.train)
    sweep(raw_prepared, gd_config.model_copy(update={"train": gd_config.train.model_copy(update={"epochs": 1})}),
          rates[:1])  # warm up as for the sweep (the workers load or compile the gradient kernel)
    gd_run, gd_seconds = timed(lambda: sweep(raw_prepared, gd_config, rates))
    mllib_seconds, mllib_weights = bench_mllib(spark, raw_prepared, rates, args.epochs)
    ours = np.array([rate.weights for rate in gd_run.rates])
    losses = final_train_loss(raw_prepared.blocks, gd_config, np.vstack([ours, mllib_weights]))
    ours_loss, mllib_loss = losses[: len(rates)], losses[len(rates):]
    results["vs_mllib_speedup"] = mllib_seconds / gd_seconds
    results["vs_mllib_max_rel_loss_diff"] = float(np.max(np.abs(ours_loss - mllib_loss) / np.abs(mllib_loss)))
    print(f"gd: ours {gd_seconds:.2f} s, MLlib loop {mllib_seconds:.2f} s", flush=True)
    raw_prepared.blocks.release()

    results.update(run_multinomial(spark, args))
    lbfgs_seconds, lbfgs_val_loss = bench_lbfgs(spark, prepared, X_val, y_val)
    results["vs_spark_ml_lbfgs_time_ratio"] = sweep_seconds / lbfgs_seconds
    results["vs_spark_ml_lbfgs_val_loss_ratio"] = ours_best / lbfgs_val_loss
    print(f"Spark ML L-BFGS fit {lbfgs_seconds:.2f} s, val log-loss {lbfgs_val_loss:.6f} (ours {ours_best:.6f})",
          flush=True)

    sklearn_seconds, sklearn_best = bench_single_process(X, y, X_val, y_val, sgd_config, rates, args)
    results["vs_sklearn_speedup"] = sklearn_seconds / sweep_seconds
    results["vs_sklearn_best_val_loss_ratio"] = ours_best / sklearn_best
    print(f"scikit-learn loop {sklearn_seconds:.2f} s (best val log-loss {sklearn_best:.5f}; "
          f"ours {ours_best:.5f})", flush=True)
    prepared.blocks.release()
    return results


def numpy_anchor_epoch(X: np.ndarray, y: np.ndarray, rates: list[float], batch_size: int, seed: int = 0) -> float:
    """Seconds of one epoch of plain mini-batch SGD on the logistic loss for all ``rates`` at once, in one
    process, written independently of ``pipelines.sgd``: a shuffled order, then per batch one ``(B, d) @ (d, K)``
    product for the margins and one ``(d, B) @ (B, K)`` for the gradients."""
    K = len(rates)
    step = np.asarray(rates, dtype=np.float64)
    W = np.zeros((X.shape[1], K))
    b = np.zeros(K)
    start = time.perf_counter()
    order = np.random.default_rng(seed).permutation(X.shape[0])
    for first in range(0, X.shape[0], batch_size):
        rows = order[first : first + batch_size]
        xb = X[rows]
        residual = 1.0 / (1.0 + np.exp(-(xb @ W + b))) - y[rows][:, np.newaxis]
        W -= (xb.T @ residual) * (step / rows.size)
        b -= residual.sum(axis=0) * (step / rows.size)
    return time.perf_counter() - start


def numpy_softmax_epoch(X: np.ndarray, y: np.ndarray, rates: list[float], classes: int, batch_size: int,
                        seed: int = 0) -> float:
    """Seconds of one epoch of plain mini-batch SGD on the softmax cross-entropy of ``classes`` classes for all
    ``rates`` at once, in one process, written independently of ``pipelines.sgd``: per batch one
    ``(B, d) @ (d, C K)`` product for the margins, the softmax shifted by each model's largest margin, and one
    ``(d, B) @ (B, C K)`` product for the gradients."""
    K = len(rates)
    step = np.repeat(np.asarray(rates, dtype=np.float64), classes)
    W = np.zeros((X.shape[1], K * classes))
    b = np.zeros(K * classes)
    labels = y.astype(np.int64)
    start = time.perf_counter()
    order = np.random.default_rng(seed).permutation(X.shape[0])
    for first in range(0, X.shape[0], batch_size):
        rows = order[first : first + batch_size]
        xb = X[rows]
        margins = (xb @ W + b).reshape(rows.size, K, classes)
        exponentials = np.exp(margins - margins.max(axis=2, keepdims=True))
        probabilities = exponentials / exponentials.sum(axis=2, keepdims=True)
        probabilities[np.arange(rows.size), :, labels[rows]] -= 1.0
        residual = probabilities.reshape(rows.size, K * classes)
        W -= (xb.T @ residual) * (step / rows.size)
        b -= residual.sum(axis=0) * (step / rows.size)
    return time.perf_counter() - start


def gemm_gflops(size: int = 3072, repeats: int = 3) -> float:
    """This machine's dense float64 GEMM rate in GFLOP/s: the best of ``repeats`` ``(size, size) @ (size, size)``
    products by numpy's BLAS on every core (``2 size^3`` flops each), after one warm-up product."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((size, size)), rng.standard_normal((size, size))
    np.matmul(a, b)
    best = min(timed(lambda: np.matmul(a, b))[1] for _ in range(repeats))
    return 2.0 * size**3 / best / 1e9


def blas_kernels() -> list[dict[str, Any]]:
    """The BLAS libraries numpy loaded, as threadpoolctl reports them (library, version, kernel, threads)."""
    from threadpoolctl import threadpool_info

    keys = ("internal_api", "version", "architecture", "num_threads", "threading_layer")
    return [{key: info.get(key) for key in keys} for info in threadpool_info() if info.get("user_api") == "blas"]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else :func:`platform.processor`)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


#: Unset together in the anchors' process (either alone, or both where set for an old OpenBLAS build, slow a
#: current numpy's BLAS).
ANCHOR_UNSET = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def run_anchors(X: np.ndarray | None, y: np.ndarray | None, jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """The numpy anchors in a process of their own, its environment without :data:`ANCHOR_UNSET`: ``jobs`` are
    ``{"kind": "logistic" | "softmax", "rates": [...], "classes": C, "batch_size": B, "seeds": S}`` (each the median
    of ``S`` seeds' epochs over ``X``, ``y``); the answer also holds ``gemm_gflops``, ``cpu_model``, ``blas`` and
    what the parent's environment had set of :data:`ANCHOR_UNSET` (``anchor_unset``)."""
    folder = Path(tempfile.mkdtemp(prefix="bench-anchor-"))
    try:
        if X is not None and y is not None:
            np.save(folder / "X.npy", X)
            np.save(folder / "y.npy", y)
        (folder / "jobs.json").write_text(json.dumps(jobs))
        environment = {key: value for key, value in os.environ.items() if key not in ANCHOR_UNSET}
        completed = subprocess.run([sys.executable, __file__, "--anchor-process", str(folder)], env=environment,
                                   capture_output=True, text=True, check=False)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if completed.returncode != 0:
        print(completed.stdout[-3000:], completed.stderr[-3000:], file=sys.stderr)
        raise RuntimeError(f"the numpy anchors' process failed with exit code {completed.returncode}")
    answer = dict(json.loads(completed.stdout.splitlines()[-1]))
    answer["anchor_unset"] = {key: os.environ[key] for key in ANCHOR_UNSET if key in os.environ}
    return answer


def anchor_process(folder: Path) -> dict[str, Any]:
    """:func:`run_anchors`' child: the jobs of ``folder/jobs.json`` over ``folder/X.npy``, ``y.npy``."""
    jobs = json.loads((folder / "jobs.json").read_text())
    X = np.load(folder / "X.npy") if (folder / "X.npy").exists() else None
    y = np.load(folder / "y.npy") if (folder / "y.npy").exists() else None
    epochs = []
    for job in jobs:
        assert X is not None and y is not None
        if job["kind"] == "logistic":
            times = [numpy_anchor_epoch(X, y, job["rates"], job["batch_size"], seed) for seed in range(job["seeds"])]
        else:
            times = [numpy_softmax_epoch(X, y, job["rates"], job["classes"], job["batch_size"], seed)
                     for seed in range(job["seeds"])]
        epochs.append(float(np.median(times)))
    return {"epochs": epochs, "gemm_gflops": gemm_gflops(), "cpu_model": cpu_model(), "blas": blas_kernels()}


def useful_gflops(train_rows: int, inputs: int, points: int, epoch_seconds: float) -> float:
    """An epoch's useful arithmetic rate: ``4 n d K`` flops (the training rows' margins and gradients) per epoch."""
    return 4.0 * train_rows * inputs * points / epoch_seconds / 1e9


def local_rows(prepared: PreparedData) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Training and validation rows in this process (local mode: the executors' staged copies on this host's
    disk, written by the first training job, rather than gigabytes collected through Spark)."""
    parts = [load_staged(prepared.blocks.staging_dir, p) or collect_arrays(prepared.blocks)[p]
             for p in range(prepared.blocks.num_partitions)]
    return (np.concatenate([p.X_train for p in parts]).astype(np.float64, copy=False),
            np.concatenate([p.y_train for p in parts]),
            np.concatenate([p.X_val for p in parts]).astype(np.float64, copy=False),
            np.concatenate([p.y_val for p in parts]))


def training_points(prepared: PreparedData, point: Any) -> Any:
    """An RDD of ``point(label, features)`` for every training row of the cached (float64) blocks."""
    n_features = prepared.blocks.n_features

    def points(row: Any) -> list[Any]:
        if row["is_validation"]:
            return []
        X = np.frombuffer(row["features"], dtype=np.float64).reshape(int(row["rows"]), n_features)
        y = np.frombuffer(row["labels"], dtype=np.float64)
        return [point(label, features) for label, features in zip(y, X, strict=True)]

    return prepared.blocks.dataframe.rdd.flatMap(points)


def bench_lbfgs(spark: Any, prepared: PreparedData, X_val: np.ndarray, y_val: np.ndarray) -> tuple[float, float]:
    """Spark ML's LogisticRegression (L-BFGS to convergence) on the same cached training rows: (fit seconds,
    validation log-loss of its model)."""
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.linalg import Vectors

    points = training_points(prepared, lambda label, features: (float(label), Vectors.dense(features)))
    frame = points.toDF(["label", "features"]).cache()
    frame.count()
    estimator = LogisticRegression(maxIter=100, tol=1e-6, regParam=0.0, standardization=False, fitIntercept=True)
    model, seconds = timed(lambda: estimator.fit(frame))
    frame.unpersist()
    weights = model.coefficients.toArray()[np.newaxis, :]
    val_loss = objective(TrainingProblem("logistic"), X_val, y_val, weights, np.array([model.intercept]))
    return seconds, float(val_loss[0])


def bench_mllib(spark: Any, prepared: PreparedData, rates: list[float], iterations: int) -> tuple[float, np.ndarray]:
    """Loop MLlib's LogisticRegressionWithSGD over the rates on the same (cached) training rows."""
    from pyspark.mllib.classification import LogisticRegressionWithSGD
    from pyspark.mllib.regression import LabeledPoint

    rdd = training_points(prepared, LabeledPoint).cache()
    rdd.count()
    weights = []
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for rate in rates:
            model = LogisticRegressionWithSGD.train(rdd, iterations=iterations, step=rate, miniBatchFraction=1.0,
                                                    regParam=0.0, intercept=False, convergenceTol=0.0)
            weights.append(model.weights.toArray())
    seconds = time.perf_counter() - start
    rdd.unpersist()
    return seconds, np.array(weights)


def bench_single_process(X: np.ndarray, y: np.ndarray, X_val: np.ndarray, y_val: np.ndarray, config: Config,
                         rates: list[float], args: argparse.Namespace) -> tuple[float, float]:
    """scikit-learn's loop over the rates on the same rows held in this process: (seconds, best val loss)."""
    from sklearn.linear_model import SGDClassifier

    models = []
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for rate in rates:
            models.append(SGDClassifier(loss="log_loss", learning_rate="constant", eta0=rate, max_iter=args.epochs,
                                        tol=None, random_state=0).fit(X, y))
    seconds = time.perf_counter() - start
    val_losses = objective(TrainingProblem("logistic", regularization=config.problem.regularization), X_val, y_val,
                           np.vstack([m.coef_ for m in models]), np.concatenate([m.intercept_ for m in models]))
    finite = val_losses[np.isfinite(val_losses)]
    return seconds, float(finite.min()) if finite.size else float("nan")


def run_scaling(args: argparse.Namespace) -> dict[str, Any]:
    """Median epoch (ours, 2 cores, training and evaluation) and the numpy anchor's epoch (one process) along
    three axes: rows (8 rates, ``--features``), grid points (``--rows``, ``--features``) and features (8 rates,
    ``--scaling-feature-rows``); written to ``bench/results/scaling.json`` and ``scaling.png``, with the epoch this
    machine's GEMM rate would take for the same useful flops (``4 n d K``: the GEMM-peak line)."""
    spark = get_spark(load_config(overrides=["spark.master=local[2]"]).spark)
    spark.sparkContext.setLogLevel("ERROR")
    machine = run_anchors(None, None, [])
    axes: dict[str, list[tuple[int, int, int]]] = {
        "rows": [(rows, 8, args.features) for rows in args.scaling_rows],
        "grid points": [(args.rows, points, args.features) for points in (1, 8, 64)],
        "features": [(args.scaling_feature_rows, 8, features) for features in (32, 128, 512)],
    }
    # every measured point is kept in scaling_points.json, so an interrupted run goes on where it stopped
    # (--scaling-fresh measures everything again)
    points_file = BENCH_DIR / "scaling_points.json"
    saved = [] if args.scaling_fresh or not points_file.exists() else json.loads(points_file.read_text())
    measured = {(p["rows"], p["points"], p["features"]): {"ours": p["ours"], "numpy": p["numpy"]} for p in saved}
    by_table: dict[tuple[int, int], list[int]] = {}
    for points in axes.values():
        for rows, grid, features in points:
            if (rows, grid, features) not in measured:
                by_table.setdefault((rows, features), []).append(grid)
    for (rows, features), grids in sorted(by_table.items()):
        table = BENCH_DIR / f"table_{rows}x{features}"
        make_table(spark, table, rows, features, args.partitions)
        config = bench_config(table, [1.0], args.scaling_epochs, args.partitions, f"train.batch_size={args.batch_size}")
        prepared = prepare_data(spark, read_feature_table(spark, config.data, "logistic"), config.data,
                                config.features, config.train)
        for grid in sorted(set(grids)):
            rates = [float(r) for r in np.geomspace(args.min_rate, args.max_rate, grid)]
            grid_config = bench_config(table, rates, args.scaling_epochs, args.partitions,
                                       f"train.batch_size={args.batch_size}")
            sweep(prepared, grid_config.model_copy(update={"train": grid_config.train.model_copy(
                update={"epochs": 1})}), rates[:1])  # also stages the partitions local_rows reads
            run = sweep(prepared, grid_config, rates)
            ours = float(np.median(run.epoch_seconds))
            X, y, _, _ = local_rows(prepared)
            anchor = run_anchors(X, y, [{"kind": "logistic", "rates": rates, "batch_size": args.batch_size,
                                         "seeds": 1}])["epochs"][0]
            del X, y
            measured[(rows, grid, features)] = {"ours": ours, "numpy": anchor}
            points_file.write_text(json.dumps([{"rows": r, "points": g, "features": f, **v}
                                               for (r, g, f), v in sorted(measured.items())], indent=1))
            print(f"scaling: {rows} rows x {features} features, {grid} points: epoch {ours:.3f} s, numpy anchor "
                  f"{anchor:.3f} s", flush=True)
        prepared.blocks.release()
    train_share = 1.0 - bench_config(BENCH_DIR, [1.0], 1, 1).data.validation_fraction
    figures = {axis: [{"rows": r, "points": g, "features": f, **measured[(r, g, f)],
                       "gemm_peak": useful_gflops(int(r * train_share), f, g, 1.0) / machine["gemm_gflops"]}
                      for r, g, f in points]
               for axis, points in axes.items()}
    facts = {key: machine[key] for key in ("gemm_gflops", "cpu_model", "blas", "anchor_unset")}
    (BENCH_DIR / "scaling.json").write_text(json.dumps({**figures, "machine": facts}, indent=1))
    plot_scaling(figures, BENCH_DIR / "scaling.png", machine["gemm_gflops"])
    return {"scaling": figures, "machine": facts}


def run_breakdown(args: argparse.Namespace) -> dict[str, Any]:
    """Where an epoch's time goes on ``--rows`` x ``--features`` (local[2]): a job that does nothing (RDD manifest,
    and the DataFrame manifest Spark Connect uses), opening the staged arrays, and for 1 and 8 rates the epoch
    (training and evaluation), training alone, evaluation alone, the closure and result sizes and the driver's
    merge; medians of 7."""
    import pipelines.distributed.blocks as blocks_module
    from pipelines.distributed.blocks import map_partitions

    spark = get_spark(load_config(overrides=["spark.master=local[2]"]).spark)
    spark.sparkContext.setLogLevel("ERROR")
    table = BENCH_DIR / f"table_{args.rows}x{args.features}"
    make_table(spark, table, args.rows, args.features, args.partitions)
    config = bench_config(table, [1.0], 1, args.partitions, f"train.batch_size={args.batch_size}")
    prepared = prepare_data(spark, read_feature_table(spark, config.data, "logistic"), config.data, config.features,
                            config.train)
    blocks = prepared.blocks

    def median(function: Any) -> float:
        times = [timed(function)[1] for _ in range(7)]
        return float(np.median(times))

    figures: dict[str, Any] = {}
    map_partitions(blocks, lambda part: part.partition)  # stages the partitions
    figures["empty_job_rdd_seconds"] = median(lambda: map_partitions(blocks, lambda part: part.partition))
    classic_context = blocks_module._spark_context
    blocks_module._spark_context = lambda session: None  # type: ignore[assignment]
    try:
        figures["empty_job_dataframe_seconds"] = median(lambda: map_partitions(blocks, lambda part: part.partition))
    finally:
        blocks_module._spark_context = classic_context
    figures["open_staged_seconds"] = median(lambda: [load_staged(blocks.staging_dir, p)
                                                     for p in range(blocks.num_partitions)])
    problem = prepared.problem(config.problem)
    for K in (1, 8, 64):
        figures.update({f"k{K}_{key}": value for key, value in breakdown_of_rows(blocks, problem, K, args).items()})
    prepared.blocks.release()
    for key, value in figures.items():
        print(f"{key:34s} {value:12.4g}", flush=True)
    return figures


def breakdown_of_rows(blocks: BlockSet, problem: Any, K: int, args: argparse.Namespace) -> dict[str, float]:
    """:func:`run_breakdown`'s figures of ``K`` rates."""
    from pyspark import cloudpickle

    from pipelines.distributed.strategies import LocalSGD

    def median(function: Any) -> float:
        return float(np.median([timed(function)[1] for _ in range(7)]))

    rates = [float(r) for r in np.geomspace(args.min_rate, args.max_rate, K)]
    models = ModelRows.zeros(rates, [0] * K, problem.regularization.rows(K), blocks.n_features, problem.optimizer)
    trainer = GridTrainer(SparkExecutor(blocks), problem, LocalSGD(args.batch_size, train_loss=args.train_loss), models,
                          epochs=100)
    epoch = iter(range(1, 100))
    rows = list(range(K))
    trainer.run_epoch(next(epoch), rows, rows)  # warm-up
    figures = {"epoch_seconds": median(lambda: trainer.run_epoch(next(epoch), rows, rows)),
               "train_only_seconds": median(lambda: trainer.run_epoch(next(epoch), rows, [])),
               "eval_only_seconds": median(lambda: trainer.evaluate(rows))}
    job = trainer._train_job(trainer.models, 1, np.arange(K), None)
    results = trainer._run(trainer.models, job, np.arange(K), np.arange(K))
    parts = [(result.train_rows, result.training) for result in results if result.training is not None]
    figures["closure_bytes"] = len(cloudpickle.dumps(job))
    figures["result_bytes"] = sum(len(cloudpickle.dumps(result)) for result in results)
    figures["combine_seconds"] = median(lambda: trainer.strategy.combine(job, parts))
    return figures


SMALL_TABLES = (("tiny", 1_000, 30, 200), ("small", 200_000, 32, 10))  # name, rows, features, epochs


def run_small_tables(args: argparse.Namespace) -> dict[str, Any]:
    """The small-table path: our training time (the executor ``auto`` picks; both executors measured) against a
    scikit-learn ``partial_fit`` loop over the same rates and epochs, and the two executors' bits compared."""
    spark = get_spark(load_config(overrides=["spark.master=local[2]"]).spark)
    spark.sparkContext.setLogLevel("ERROR")
    rates = [float(r) for r in np.geomspace(args.min_rate, args.max_rate, args.rates)]
    figures: dict[str, Any] = {}
    identical = True
    for name, rows, features, epochs in SMALL_TABLES:
        table_figures, same = measure_small_table(spark, BENCH_DIR / f"table_{rows}x{features}", rows, features,
                                                  epochs, rates, args)
        figures.update({f"{name}_{key}": value for key, value in table_figures.items()})
        identical = identical and same
    figures["driver_executor_bit_identical"] = identical
    # the measured ground of train.driver_max_cells: the cells at which a driver epoch costs what an empty Spark job
    # costs (the per-cell cost from the small table, where the epoch's arithmetic dominates its fixed costs)
    per_cell = figures["small_driver_epoch_seconds"] / figures["small_cells"]
    figures["driver_breakeven_cells"] = figures["small_empty_job_seconds"] / per_cell
    print(f"a driver epoch costs an empty Spark job ({figures['small_empty_job_seconds']:.3f} s) at about "
          f"{figures['driver_breakeven_cells']:,.0f} cells ({per_cell * 1e9:.2f} ns a cell); train.driver_max_cells "
          f"is {load_config().train.driver_max_cells:,}", flush=True)
    return figures


def measure_small_table(spark: Any, table: Path, rows: int, features: int, epochs: int, rates: list[float],
                        args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    """:func:`run_small_tables`' figures of one table, and whether both executors gave the same bits."""
    from dataclasses import replace

    make_table(spark, table, rows, features, args.partitions)
    settings = (f"train.batch_size={args.batch_size}",)
    config = bench_config(table, rates, epochs, args.partitions, *settings, "train.executor=spark")
    data = read_feature_table(spark, config.data, "logistic")
    prepared, prepare_seconds = timed(lambda: prepare_data(spark, data, config.data, config.features, config.train,
                                                           model_rows=len(rates)))
    blocks = prepared.blocks
    auto = bench_config(table, rates, epochs, args.partitions, *settings).train
    chosen = choose_executor("auto", DataSize(blocks.total_train_rows, len(rates), blocks.n_features,
                                              block_bytes(blocks), driver_limit_bytes(spark, auto)),
                             auto.driver_max_cells)
    driver, collect_seconds = timed(lambda: DriverExecutor.collected(blocks))
    in_driver = replace(prepared, executor=driver)
    warm_up = config.model_copy(update={"train": config.train.model_copy(update={"epochs": 1})})
    sweep(prepared, warm_up, rates[:1])  # Python workers, staged partitions, compiled kernels
    sweep(in_driver, warm_up, rates[:1])
    spark_run, spark_seconds = timed(lambda: sweep(prepared, config, rates))
    driver_run, driver_seconds = timed(lambda: sweep(in_driver, config, rates))
    X, y, _, _ = local_rows(prepared)
    sklearn_seconds = sklearn_partial_fit_seconds(X, y, rates, epochs)
    ours = driver_seconds if chosen.name == "driver" else spark_seconds
    empty_job = float(np.median([timed(lambda: SparkExecutor(blocks).map(lambda part: part.partition))[1]
                                 for _ in range(7)]))
    cells = blocks.total_train_rows * len(rates) * blocks.n_features
    print(f"table {rows} x {features}, {len(rates)} rates x {epochs} epochs: {chosen.line()}; training in the "
          f"driver {driver_seconds:.2f} s (blocks collected in {collect_seconds:.2f} s), through Spark "
          f"{spark_seconds:.2f} s; scikit-learn partial_fit loop {sklearn_seconds:.2f} s", flush=True)
    blocks.release()
    driver_epoch = float(np.median(driver_run.epoch_seconds))
    spark_epoch = float(np.median(spark_run.epoch_seconds))
    print(f"  median epoch: driver {driver_epoch:.4f} s, Spark {spark_epoch:.4f} s; an empty Spark job "
          f"{empty_job:.4f} s; driver epoch per cell {driver_epoch / cells * 1e9:.2f} ns ({cells:,} cells)", flush=True)
    return ({"rows": rows, "train_rows": blocks.total_train_rows, "cells": cells, "prepare_seconds": prepare_seconds,
             "collect_seconds": collect_seconds, "spark_seconds": spark_seconds, "driver_seconds": driver_seconds,
             "driver_epoch_seconds": driver_epoch, "spark_epoch_seconds": spark_epoch, "empty_job_seconds": empty_job,
             "sklearn_seconds": sklearn_seconds, "executor": chosen.name, "table_vs_sklearn": sklearn_seconds / ours},
            same_bits(driver_run, spark_run))


def same_bits(one: GridOutcome, other: GridOutcome) -> bool:
    """Whether two runs' curves, statuses and models are equal bit for bit (NaN where a rate did not run)."""
    for a, b in zip(one.rates, other.rates, strict=True):
        if a.status != b.status or not np.array_equal(a.weights, b.weights) or a.intercept != b.intercept:
            return False
        if any(not np.array_equal(a.curves[key], b.curves[key], equal_nan=True) for key in b.curves):
            return False
    return True


def sklearn_partial_fit_seconds(X: np.ndarray, y: np.ndarray, rates: list[float], epochs: int) -> float:
    """Wall of scikit-learn's ``SGDClassifier.partial_fit`` loop: every rate, ``epochs`` passes over the rows."""
    from sklearn.linear_model import SGDClassifier

    classes = np.unique(y)
    start = time.perf_counter()
    for rate in rates:
        model = SGDClassifier(loss="log_loss", learning_rate="constant", eta0=rate, random_state=0)
        for _ in range(epochs):
            model.partial_fit(X, y, classes=classes)
    return time.perf_counter() - start


def plot_scaling(figures: dict[str, list[dict[str, float]]], path: Path, gemm_gflops: float) -> None:
    """One log-log panel per axis: seconds per epoch of ours and of the numpy anchor, a line of slope 1, and the
    epoch at this machine's GEMM rate (``gemm_gflops``) for the same useful flops."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = {"rows": "rows", "grid points": "points", "features": "features"}
    fig, panels = plt.subplots(1, 3, figsize=(15, 4.5))
    for panel, (axis, points) in zip(panels, figures.items(), strict=True):
        x = np.array([p[keys[axis]] for p in points], dtype=float)
        for name, style in (("ours", "o-"), ("numpy", "s--")):
            label = "lrsweep, 2 cores (Spark local[2])" if name == "ours" else "numpy anchor, 1 process"
            panel.plot(x, [p[name] for p in points], style, label=label)
        panel.plot(x, points[0]["ours"] * x / x[0], ":", color="grey", label="linear in work (from ours)")
        panel.plot(x, [p["gemm_peak"] for p in points], "-.", color="black",
                   label=f"at the GEMM peak ({gemm_gflops:.0f} GFLOP/s, 4ndK flops)")
        fixed = {k: v for k, v in points[0].items() if k not in (keys[axis], "ours", "numpy", "gemm_peak")}
        panel.set(xscale="log", yscale="log", xlabel=axis, ylabel="seconds per epoch",
                  title=f"{axis} ({', '.join(f'{k} {v:g}' for k, v in fixed.items())})")
        panel.set_xticks(x, [f"{v:g}" for v in x], minor=False)
        panel.set_xticks([], minor=True)
        panel.grid(True, which="both", alpha=0.3)
        panel.legend(fontsize=8)
    fig.suptitle("Time per epoch as the work grows: mini-batch SGD, logistic loss, batch 256")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    """`make demo` in a new folder, and the aggregation anchor on the table it wrote (see the module docstring)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    root = Path(__file__).resolve().parent.parent
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}

    def submitted(*command: str) -> str:
        return spark_submitted(list(command), cwd=folder, env=env)

    submitted(str(root / "jobs" / "make_demo_table.py"), "--env", "local")
    timing = sweep_time_line(submitted(str(root / "jobs" / "train_sweep.py"), "--env", "local"))
    anchor = json.loads(submitted(__file__, "--aggregation-anchor").splitlines()[-1])
    read_prepare = timing["read"] + timing["prepare"]
    print(f"demo sweep: {timing['wall']:.1f} s wall, read {timing['read']:.1f} s + prepare {timing['prepare']:.1f} "
          f"s, training {timing['training']:.1f} s; one aggregation {anchor['seconds']:.1f} s", flush=True)
    return {"demo_training_share": timing["training"] / timing["wall"],
            "prepare_vs_one_aggregation": read_prepare / anchor["seconds"],
            "demo_time_line": timing, "one_aggregation_seconds": anchor["seconds"]}


def sweep_time_line(output: str) -> dict[str, float]:
    """The figures of a sweep's ``time:`` line: ``wall`` and each ``name seconds`` pair in it."""
    line = next(line for line in output.splitlines() if line.startswith("time: "))
    figures = {"wall": float(line.split()[1])}
    figures.update({name: float(value) for name, value in re.findall(r"([a-z][\w.]*) ([\d.]+) s", line)})
    return figures


def one_aggregation() -> dict[str, float]:
    """The anchor of ``prepare_vs_one_aggregation``: the statistics read and prepare need, in one Spark query over
    the demo table's latest version (run in a ``spark-submit`` of its own; the session's start is not timed)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    config = load_config(env="local")
    spark = get_spark(config.spark)
    spark.sparkContext.setLogLevel("ERROR")
    started = time.perf_counter()
    table = spark.read.format("delta").load(config.data.table)
    fields = [f for f in table.schema.fields if f.name not in config.data.exclude]
    groups = [f.name for f in fields if isinstance(f.dataType, T.StringType) or f.name == config.data.label]
    measures = [F.count(F.lit(1)).alias("rows")]
    for f in fields:
        c = F.col(f"`{f.name}`")
        measures.append(F.count_if(c.isNull()).alias(f"{f.name}__nulls"))
        if isinstance(f.dataType, T.NumericType | T.BooleanType | T.DateType | T.TimestampType):
            number = c.cast("timestamp").cast("double") if isinstance(f.dataType, T.DateType) else c.cast("double")
            measures += [F.count_if(F.isnan(number) | (F.abs(number) == float("inf"))).alias(f"{f.name}__invalid"),
                         F.sum(number).alias(f"{f.name}__sum"), F.sum(number * number).alias(f"{f.name}__squares")]
        elif isinstance(f.dataType, T.ArrayType):
            measures += [F.min(F.size(c)).alias(f"{f.name}__shortest"), F.max(F.size(c)).alias(f"{f.name}__longest")]
    sets = [[], *[[F.col(f"`{name}`")] for name in groups]]
    rows = table.groupingSets(sets, *[F.col(f"`{name}`") for name in groups]).agg(*measures).collect()
    return {"seconds": time.perf_counter() - started, "result_rows": float(len(rows))}


def run_large(args: argparse.Namespace, *mode: str) -> dict[str, Any]:
    """The epoch ratio and driver RSS at ``--large-rows`` (or ``mode``'s figures), in a separate spark-submit."""
    command = ["--master", "local[2]", "--driver-memory", args.driver_memory, __file__, "--rows", str(args.large_rows),
               "--large-rows", "0", "--epochs", str(args.large_epochs), "--hashed-rows", str(args.hashed_rows),
               "--rates", str(args.rates), "--features", str(args.features), "--partitions", str(args.partitions),
               *(mode or ("--epoch-only",))]
    lines = [line for line in spark_submitted(command).splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError("the large benchmark printed no figures")
    return dict(json.loads(lines[-1]))


def spark_submitted(command: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """The standard output of ``spark-submit <command>`` run with this interpreter as the driver's and the
    workers' Python; a failure prints the output's tails and raises."""
    submit = [str(Path(sys.executable).parent / "spark-submit"), *spark_submit_args()]
    environment = {**(os.environ if env is None else env), "PYSPARK_PYTHON": sys.executable,
                   "PYSPARK_DRIVER_PYTHON": sys.executable}
    completed = subprocess.run([*submit, *command], cwd=cwd, capture_output=True, text=True, check=False,
                               env=environment)
    if completed.returncode != 0:
        print(completed.stdout[-3000:], completed.stderr[-3000:], file=sys.stderr)
        raise RuntimeError(f"spark-submit {command[-1] if command else ''} failed with exit code "
                           f"{completed.returncode}")
    return completed.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--large-rows", type=int, default=8_000_000, help="0 to skip")
    parser.add_argument("--large-epochs", type=int, default=3)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--rates", type=int, default=8)
    parser.add_argument("--min-rate", type=float, default=1e-3)
    parser.add_argument("--max-rate", type=float, default=3.0)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--driver-memory", default="8g")
    parser.add_argument("--hashed-rows", type=int, default=1_000_000, help="the hashed 2^18 table's rows; 0 to skip")
    parser.add_argument("--hashed-epochs", type=int, default=3)
    parser.add_argument("--reg-params", type=lambda text: [float(v) for v in text.split(",") if v],
                        default=[0.0, 1e-4, 1e-3, 1e-2], help="the joint grid's reg axis (comma-separated; '' skips)")
    parser.add_argument("--epoch-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scaling", action="store_true", help="only the scaling figure (bench/results/scaling.png)")
    parser.add_argument("--scaling-rows", type=lambda text: [int(v) for v in text.split(",")],
                        default=[1_000_000, 2_000_000, 4_000_000, 8_000_000])
    parser.add_argument("--scaling-feature-rows", type=int, default=250_000)
    parser.add_argument("--scaling-epochs", type=int, default=3)
    parser.add_argument("--scaling-fresh", action="store_true", help="measure every scaling point again")
    parser.add_argument("--breakdown", action="store_true", help="only where an epoch's time goes (--rows)")
    parser.add_argument("--train-loss", choices=["progressive", "exact"], default="progressive",
                        help="--breakdown: local_sgd's train.train_loss")
    parser.add_argument("--hashed-only", action="store_true", help="only the hashed vs dense figures")
    parser.add_argument("--only", choices=["small-tables", "demo", "kernels"], help="only these keys (small-tables: "
                        "the tiny and small tables against scikit-learn, and the executors' bits; demo: `make demo`'s "
                        "sweep; kernels: the epoch figures, the grids, anchors, flop efficiency, multinomial, sparse)")
    parser.add_argument("--classes", type=int, default=10, help="the multinomial figure's classes")
    parser.add_argument("--multinomial-epochs", type=int, default=3)
    parser.add_argument("--aggregation-anchor", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--anchor-process", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.anchor_process:
        print(json.dumps(anchor_process(args.anchor_process)), flush=True)
        return
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    if args.aggregation_anchor:
        print(json.dumps(one_aggregation()), flush=True)
        return
    if args.only == "small-tables":
        print_figures(run_small_tables(args))
        return
    if args.only == "demo":
        print_figures(run_demo(args))
        return
    if args.only == "kernels":
        results = run_main(args)
        if args.hashed_rows:
            results.update(run_large(args, "--hashed-only"))
            results["sparse_epoch_ratio"] = results["hashed_vs_dense_epoch_ratio"]
        print_figures(results)
        return
    if args.hashed_only:
        print(json.dumps(run_hashed(args)), flush=True)
        return
    if args.scaling:
        print(json.dumps(run_scaling(args)), flush=True)
        return
    if args.breakdown:
        print(json.dumps(run_breakdown(args)), flush=True)
        return
    results = run_main(args)
    if args.epoch_only:
        print(json.dumps(results), flush=True)
        return
    if args.large_rows:
        large = run_large(args)
        results["vs_numpy_epoch_ratio_8m"] = large["vs_numpy_epoch_ratio"]
        results["driver_peak_rss_mb_8m"] = large["driver_peak_rss_mb"]
        results["epoch_seconds_8m"] = large["epoch_seconds"]
        results["large_rows"] = args.large_rows
    if args.hashed_rows:
        results.update(run_large(args, "--hashed-only"))
        results["sparse_epoch_ratio"] = results["hashed_vs_dense_epoch_ratio"]
    results.update(run_small_tables(args))
    results.update(run_demo(args))
    print_figures(results)


def print_figures(results: dict[str, Any]) -> None:
    """The keys of :data:`TARGETS` measured, beside their targets; then every figure as one JSON line."""
    print()
    print(f"{'figure':34s} {'value':>12s}  target")
    for key, target in TARGETS.items():
        if key in results:
            value = results[key]
            shown = f"{str(value).lower():>12s}" if isinstance(value, bool) else f"{value:12.4g}"
            print(f"{key:34s} {shown}  {target}")
    print(json.dumps(results), flush=True)


TARGETS = {
    "grid_amortization": "<= 1.3", "grid_amortization_64": "<= 4", "vs_mllib_speedup": ">= 15",
    "vs_mllib_max_rel_loss_diff": "<= 1e-6", "vs_sklearn_speedup": ">= 10", "vs_sklearn_best_val_loss_ratio": "<= 1.01",
    "vs_numpy_epoch_ratio": "<= 0.6", "vs_numpy_epoch_ratio_8m": "<= 0.6", "vs_spark_ml_lbfgs_time_ratio": "<= 0.5",
    "multinomial_epoch_vs_numpy": "<= 0.75", "flop_efficiency": "(report)", "flop_efficiency_64": ">= 0.2",
    "gemm_gflops": "(report)",
    "vs_spark_ml_lbfgs_val_loss_ratio": "<= 1.005", "sparse_epoch_ratio": "<= 2", "driver_peak_rss_mb": "flat in rows",
    "driver_peak_rss_mb_8m": "flat in rows", "joint_grid_cost_ratio": "(report)", "float32_epoch_ratio": "(report)",
    "float32_best_val_loss_rel_diff": "(report)", "hashed_vs_dense_block_bytes_ratio": "(report)",
    "tiny_table_vs_sklearn": ">= 1", "small_table_vs_sklearn": ">= 5", "driver_executor_bit_identical": "true",
    "driver_breakeven_cells": "(report)", "prepare_vs_one_aggregation": "<= 1.5", "demo_training_share": ">= 0.5",
}


if __name__ == "__main__":
    main()
