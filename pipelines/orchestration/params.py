"""What a sweep records about its configuration: the parent run's parameters and the checkpoint's settings."""

from __future__ import annotations

from typing import Any

from pipelines.config import Config
from pipelines.lakehouse.reader import FeatureTable


def sweep_params(config: Config, table: FeatureTable, learning_rates: list[float]) -> dict[str, str]:
    """The parent run's parameters (strings, stable across reruns of the same sweep)."""
    train, sweep = config.train, config.sweep
    return {
        "table": table.ref.identifier,
        "table_version": str(table.ref.version),
        "since_version": "none" if table.ref.since_version is None else str(table.ref.since_version),
        "label": table.label,
        "num_features": str(len(table.features)),
        "features": ",".join(table.features),
        "features_left_out": ",".join(table.columns.left_out)[:6000],
        "loss": config.model.loss,
        "fit_intercept": str(config.model.fit_intercept),
        "reg_param": repr(config.model.reg_param),
        "l1_ratio": repr(config.model.l1_ratio),
        "reg_params": ",".join(repr(reg) for reg in dict.fromkeys(p.reg_param for p in config.penalty_axis())),
        "l1_ratios": ",".join(repr(l1) for l1 in dict.fromkeys(p.l1_ratio for p in config.penalty_axis())),
        "num_grid_points": str((len(learning_rates) if learning_rates else sweep.auto_num)
                               * len(config.penalty_axis())),
        "algorithm": train.algorithm,
        "train_loss": train.train_loss_curve,
        "batch_size": str(train.batch_size),
        "schedule": train.schedule.name,
        "optimizer": train.optimizer.name,
        "epochs": str(train.epochs),
        "warm_start": train.warm_start,
        "seed": str(train.seed),
        "seeds": ",".join(map(str, sweep.seeds or [train.seed])),
        "learning_rates": ",".join(repr(rate) for rate in learning_rates) if learning_rates else "auto",
        "num_learning_rates": str(len(learning_rates) if learning_rates else sweep.auto_num),
        "validation_fraction": repr(config.data.validation_fraction),
        "standardize": str(config.features.standardize),
        "early_stopping": str(sweep.early_stopping.enabled),
        "pruning": str(sweep.pruning.enabled),
        "divergence_factor": repr(sweep.divergence_factor),
        "rows": str(table.rows),
        **(auto_params(config) if not learning_rates else {}),
        **(pbt_params(config) if sweep.strategy == "pbt" else {}),
    }


def pbt_params(config: Config) -> dict[str, str]:
    """Population-based training's settings (a grid's parameters stay as they were)."""
    pbt = config.sweep.pbt
    return {"strategy": config.sweep.strategy, "pbt_interval": str(pbt.interval), "pbt_quantile": repr(pbt.quantile),
            "pbt_factors": ",".join(repr(factor) for factor in pbt.factors),
            "pbt_resample_probability": repr(pbt.resample_probability),
            "pbt_seed": str(config.train.seed if pbt.seed is None else pbt.seed)}


def auto_params(config: Config) -> dict[str, str]:
    """The settings of an ``auto`` grid: the range test's and the rounds'."""
    settings = config.range_test
    return {"auto_num": str(config.sweep.auto_num), "auto_span": repr(config.sweep.auto_span),
            "refine": str(config.sweep.refine), "range_test_min_lr": repr(settings.min_lr),
            "range_test_max_lr": repr(settings.max_lr), "range_test_num_steps": str(settings.num_steps),
            "range_test_smoothing": repr(settings.smoothing), "range_test_stop_factor": repr(settings.stop_factor)}


def sweep_settings(config: Config) -> dict[str, Any]:
    """The configuration that decides a sweep's bits, as JSON values: what a resumed sweep must share.

    Everything of ``data``, ``model``, ``features``, ``train`` (but ``checkpoint_every`` and where the tasks run,
    ``executor``, ``driver_max_*``: the same bits either way), ``sweep`` (but ``id``) and, for ``auto``
    grids, ``range_test``. Tracking, output and Spark settings may change between attempts.
    """
    dumped = config.model_dump(mode="json")
    settings = {section: dumped[section] for section in ("data", "model", "features", "train", "sweep")}
    for key in ("checkpoint_every", "executor", "driver_max_cells", "driver_max_bytes"):
        settings["train"].pop(key, None)
    settings["sweep"].pop("id", None)
    if config.sweep.strategy == "grid":  # a grid's settings are what they were before population-based training
        settings["sweep"].pop("strategy", None)
        settings["sweep"].pop("pbt", None)
    if config.sweep.learning_rates == "auto":
        settings["range_test"] = dumped["range_test"]
    return settings
