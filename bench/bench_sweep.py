"""Benchmark: the whole learning-rate grid in one pass, against its peers measured in the same run.

    make bench                                   # 1M x 32, 8 rates, 10 epochs, local[2]; then 8M rows
    make bench BENCH_ARGS="--rows 200000 --large-rows 0"   # a quick run

Peers, all on the same training rows (already in memory for every contender):

* ``grid_amortization``     wall(8-rate local_sgd sweep) / wall(1-rate run);
* ``vs_mllib_speedup``      wall(loop of ``LogisticRegressionWithSGD.train`` over the 8 rates, 10
                            iterations, miniBatchFraction=1.0, regParam=0.0, convergenceTol=0.0 so it
                            runs all 10) / wall(our 8-rate ``gd`` run with the same settings);
                            ``vs_mllib_max_rel_loss_diff`` compares the final training losses;
* ``vs_sklearn_speedup``    wall(loop of ``SGDClassifier(loss="log_loss", learning_rate="constant",
                            eta0=rate, max_iter=10, tol=None)`` over the 8 rates) / wall(our 8-rate
                            ``local_sgd`` sweep), training only; ``vs_sklearn_best_val_loss_ratio`` =
                            our best validation log-loss / scikit-learn's best;
* ``vs_numpy_epoch_ratio``  our median per-epoch wall / one single-process vectorized numpy epoch
                            (:func:`pipelines.sgd.kernels.minibatch_epoch`, all 8 rates) over the same rows;
* ``driver_peak_rss_mb``    peak RSS of the Python driver during our sweeps (the data stays in Spark);
* ``joint_grid_cost_ratio`` wall(8 rates x 4 reg_params joint grid, one pass) / wall(the 8-rate sweep): what the
                            regularization axis costs when its points share the pass;
* ``hashed_vs_dense_epoch_ratio`` (``--hashed-rows``, its own spark-submit): median epoch of an 8-rate sweep on a
                            table whose model has 2^18 + 20 inputs (a string hashed into 2^18 buckets, a 3-value
                            one-hot string, 16 numbers: ~19 non-zeros per row) / the same on the dense 32-number
                            table of as many rows; ``hashed_vs_dense_block_bytes_ratio`` compares the cached
                            blocks' bytes (sparse inputs are stored as CSR: they grow with the non-zeros).

The figures at ``--large-rows`` (default 8M) come from a second spark-submit of this script, so each
driver's peak RSS is its own. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.config import Config, load_config
from pipelines.distributed.blocks import BlockSet, collect_arrays, load_staged
from pipelines.distributed.engine import GridTrainer, ModelRows
from pipelines.distributed.strategies import GradientDescent
from pipelines.lakehouse.reader import read_feature_table
from pipelines.orchestration.training import PreparedData, SweepRun, prepare_data, train_grid
from pipelines.session import get_spark, spark_submit_args
from pipelines.sgd import minibatch_epoch, objective
from pipelines.sweep.grid import joint_grid

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
    z = sum(float(w) * F.col(f"x{j}") / (10.0 ** (j % 4 - 1)) for j, w in enumerate(true_weights))
    frame = frame.withColumn("label", (F.rand(seed=7) < 1 / (1 + F.exp(-z))).cast("int"))
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
    best = run.outcome.best
    figures = {"inputs": prepared.encoding.n_inputs, "sparse_inputs": prepared.encoding.sparse_width,
               "epoch_seconds": float(np.median(run.outcome.epoch_seconds)),
               "block_bytes": block_bytes(prepared.blocks), "prepare_seconds": prepare_seconds,
               "best_val_loss": best.final_metrics()["val_loss"] if best else float("nan")}
    prepared.blocks.release()
    return figures


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
    trainer = GridTrainer(blocks, problem, GradientDescent(), models, epochs=1)
    return trainer.evaluate(list(range(weights.shape[0]))).train_loss


def sweep(prepared: PreparedData, config: Config, rates: list[float]) -> SweepRun:
    return train_grid(prepared, config.problem, config.train, config.sweep, joint_grid(rates, config.penalty_axis()))


def run_main(args: argparse.Namespace) -> dict[str, Any]:
    spark = get_spark(load_config(overrides=["spark.master=local[2]"]).spark)
    spark.sparkContext.setLogLevel("ERROR")
    table = BENCH_DIR / f"table_{args.rows}x{args.features}"
    _, seconds = timed(lambda: make_table(spark, table, args.rows, args.features, args.partitions))
    print(f"table {table}: {args.rows} x {args.features} ({seconds:.1f} s)", flush=True)
    rates = [float(r) for r in np.geomspace(args.min_rate, args.max_rate, args.rates)]

    sgd_config = bench_config(table, rates, args.epochs, args.partitions, f"train.batch_size={args.batch_size}")
    data = read_feature_table(spark, sgd_config.data, "logistic")
    prepared, prepare_seconds = timed(lambda: prepare_data(spark, data, sgd_config.data, sgd_config.features,
                                                           sgd_config.train))
    print(f"prepared {prepared.blocks.total_train_rows} train / {prepared.blocks.total_val_rows} val rows "
          f"in {prepared.blocks.num_partitions} partitions ({prepare_seconds:.1f} s)", flush=True)

    results: dict[str, Any] = {"rows": args.rows, "features": args.features, "rates": args.rates,
                               "epochs": args.epochs, "partitions": args.partitions}
    warm_up = sgd_config.model_copy(update={"train": sgd_config.train.model_copy(update={"epochs": 1})})
    sweep(prepared, warm_up, rates[:1])  # warm up Python workers
    sweep_run, sweep_seconds = timed(lambda: sweep(prepared, sgd_config, rates))
    single_config = bench_config(table, rates[:1], args.epochs, args.partitions, f"train.batch_size={args.batch_size}")
    _, single_seconds = timed(lambda: sweep(prepared, single_config, rates[:1]))
    results["grid_amortization"] = sweep_seconds / single_seconds
    epoch_seconds = float(np.median(sweep_run.outcome.epoch_seconds))
    print(f"local_sgd sweep: {args.rates} rates {sweep_seconds:.2f} s, 1 rate {single_seconds:.2f} s, "
          f"median epoch {epoch_seconds:.3f} s", flush=True)
    if args.reg_params:
        joint_config = bench_config(table, rates, args.epochs, args.partitions, f"train.batch_size={args.batch_size}",
                                    f"sweep.reg_params={args.reg_params}")
        _, joint_seconds = timed(lambda: sweep(prepared, joint_config, rates))
        results["joint_grid_cost_ratio"] = joint_seconds / sweep_seconds
        print(f"joint grid: {args.rates} rates x {len(args.reg_params)} reg_params {joint_seconds:.2f} s "
              f"({results['joint_grid_cost_ratio']:.2f} x the {args.rates}-rate sweep)", flush=True)

    if not args.epoch_only:
        gd_config = bench_config(table, rates, args.epochs, args.partitions, "train.algorithm=gd",
                                 "train.schedule=inv_sqrt", "model.fit_intercept=false", "features.standardize=false")
        raw = read_feature_table(spark, gd_config.data, "logistic")
        raw_prepared = prepare_data(spark, raw, gd_config.data, gd_config.features, gd_config.train)
        gd_run, gd_seconds = timed(lambda: sweep(raw_prepared, gd_config, rates))
        results["driver_peak_rss_mb"] = peak_rss_mb()
        mllib_seconds, mllib_weights = bench_mllib(spark, raw_prepared, rates, args.epochs)
        ours = np.array([rate.weights for rate in gd_run.outcome.rates])
        losses = final_train_loss(raw_prepared.blocks, gd_config, np.vstack([ours, mllib_weights]))
        ours_loss, mllib_loss = losses[: len(rates)], losses[len(rates):]
        results["vs_mllib_speedup"] = mllib_seconds / gd_seconds
        results["vs_mllib_max_rel_loss_diff"] = float(np.max(np.abs(ours_loss - mllib_loss) / np.abs(mllib_loss)))
        print(f"gd: ours {gd_seconds:.2f} s, MLlib loop {mllib_seconds:.2f} s", flush=True)
        raw_prepared.blocks.release()

        sklearn_seconds, sklearn_best, numpy_epoch = bench_single_process(prepared, sgd_config, rates, args)
        best = sweep_run.outcome.best
        ours_best = best.final_metrics()["val_loss"] if best else float("nan")
        results["vs_sklearn_speedup"] = sklearn_seconds / sweep_seconds
        results["vs_sklearn_best_val_loss_ratio"] = ours_best / sklearn_best
        print(f"scikit-learn loop {sklearn_seconds:.2f} s (best val log-loss {sklearn_best:.5f}; "
              f"ours {ours_best:.5f})", flush=True)
    else:
        results["driver_peak_rss_mb"] = peak_rss_mb()
        _, _, numpy_epoch = bench_single_process(prepared, sgd_config, rates, args, sklearn=False)
    results["vs_numpy_epoch_ratio"] = epoch_seconds / numpy_epoch
    results["epoch_seconds"] = epoch_seconds
    results["numpy_epoch_seconds"] = numpy_epoch
    prepared.blocks.release()
    return results


def bench_mllib(spark: Any, prepared: PreparedData, rates: list[float], iterations: int) -> tuple[float, np.ndarray]:
    """Loop MLlib's LogisticRegressionWithSGD over the rates on the same (cached) training rows."""
    from pyspark.mllib.classification import LogisticRegressionWithSGD
    from pyspark.mllib.regression import LabeledPoint

    n_features = prepared.blocks.n_features

    def points(row: Any) -> list[Any]:
        if row["is_validation"]:
            return []
        X = np.frombuffer(row["features"], dtype=np.float64).reshape(int(row["rows"]), n_features)
        y = np.frombuffer(row["labels"], dtype=np.float64)
        return [LabeledPoint(label, features) for label, features in zip(y, X, strict=True)]

    rdd = prepared.blocks.dataframe.rdd.flatMap(points).cache()
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


def bench_single_process(prepared: PreparedData, config: Config, rates: list[float], args: argparse.Namespace,
                         sklearn: bool = True) -> tuple[float, float, float]:
    """scikit-learn's loop and one vectorized numpy epoch, on the same rows held in this process."""
    # local mode: read the executors' staged copies from this host's disk rather than collecting
    # gigabytes through Spark (spark.driver.maxResultSize)
    parts = [load_staged(prepared.blocks.staging_dir, p) or collect_arrays(prepared.blocks)[p]
             for p in range(prepared.blocks.num_partitions)]
    X = np.concatenate([p.X_train for p in parts])
    y = np.concatenate([p.y_train for p in parts])
    X_val = np.concatenate([p.X_val for p in parts])
    y_val = np.concatenate([p.y_val for p in parts])
    problem = config.problem
    K = len(rates)
    from pipelines.sgd import init_state

    _, numpy_epoch = timed(lambda: minibatch_epoch(
        X, y, np.zeros((K, X.shape[1])), np.zeros(K), init_state(problem.optimizer, K, X.shape[1]),
        loss="logistic", optimizer=problem.optimizer, regularization=problem.regularization,
        learning_rates=np.array(rates), schedule=problem.schedule.per_step(1), total_steps=10**6,
        batch_size=args.batch_size, seed=0, epoch=0))
    if not sklearn:
        return float("nan"), float("nan"), numpy_epoch
    from sklearn.linear_model import SGDClassifier

    models = []
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for rate in rates:
            models.append(SGDClassifier(loss="log_loss", learning_rate="constant", eta0=rate, max_iter=args.epochs,
                                        tol=None, random_state=0).fit(X, y))
    seconds = time.perf_counter() - start
    val_losses = objective(X_val, y_val, np.vstack([m.coef_ for m in models]),
                           np.concatenate([m.intercept_ for m in models]), "logistic", problem.regularization)
    finite = val_losses[np.isfinite(val_losses)]
    return seconds, float(finite.min()) if finite.size else float("nan"), numpy_epoch


def run_large(args: argparse.Namespace, *mode: str) -> dict[str, Any]:
    """The epoch ratio and driver RSS at ``--large-rows`` (or ``mode``'s figures), in a separate spark-submit."""
    command = [str(Path(sys.executable).parent / "spark-submit"), "--master", "local[2]", "--driver-memory",
               args.driver_memory, *spark_submit_args(), __file__, "--rows", str(args.large_rows),
               "--large-rows", "0", "--epochs", str(args.large_epochs), "--hashed-rows", str(args.hashed_rows),
               "--rates", str(args.rates), "--features", str(args.features), "--partitions", str(args.partitions),
               *(mode or ("--epoch-only",))]
    completed = subprocess.run(command, capture_output=True, text=True, check=False,
                               env={**os.environ, "PYSPARK_PYTHON": sys.executable})
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        print(completed.stdout[-3000:], completed.stderr[-3000:], file=sys.stderr)
        raise RuntimeError(f"large benchmark failed with exit code {completed.returncode}")
    return dict(json.loads(lines[-1]))


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
    parser.add_argument("--hashed-only", action="store_true", help="only the hashed vs dense figures")
    args = parser.parse_args()
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    if args.hashed_only:
        print(json.dumps(run_hashed(args)), flush=True)
        return
    results = run_main(args)
    if args.epoch_only:
        print(json.dumps(results), flush=True)
        return
    if args.large_rows:
        large = run_large(args)
        results["vs_numpy_epoch_ratio_large"] = large["vs_numpy_epoch_ratio"]
        results["driver_peak_rss_mb_large"] = large["driver_peak_rss_mb"]
        results["large_rows"] = args.large_rows
    if args.hashed_rows:
        results.update(run_large(args, "--hashed-only"))
    print()
    print(f"{'figure':34s} {'value':>12s}  target")
    targets = {"grid_amortization": "<= 1.5", "vs_mllib_speedup": ">= 10", "vs_mllib_max_rel_loss_diff": "<= 1e-6",
               "vs_sklearn_speedup": ">= 5", "vs_sklearn_best_val_loss_ratio": "<= 1.01",
               "vs_numpy_epoch_ratio": "<= 3", "vs_numpy_epoch_ratio_large": "(report)",
               "driver_peak_rss_mb": "flat in rows", "driver_peak_rss_mb_large": "flat in rows",
               "hashed_vs_dense_epoch_ratio": "(report)", "hashed_vs_dense_block_bytes_ratio": "(report)",
               "hashed_driver_peak_rss_mb": "(report)", "joint_grid_cost_ratio": "(report)"}
    for key, target in targets.items():
        if key in results:
            print(f"{key:34s} {results[key]:12.4g}  {target}")
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
