"""Typed configuration: what a valid one is (:mod:`.schema`) and where it is read from (:mod:`.loading`).

``load_config(env, overrides)`` reads the packaged defaults, ``<conf dir>/base``, ``<conf dir>/<env>`` and
``--set`` overrides, then validates the merged mapping once, before Spark starts, into a frozen
:class:`Config`. Callers import from here; the two modules are how the package is kept, not two interfaces.
"""

from pipelines.config.loading import (
    DEFAULT_CONF_DIR,
    DEFAULT_ENV,
    PACKAGED_DEFAULTS,
    configuration_files,
    deep_merge,
    load_config,
    overrides_from_pairs,
    parse_override,
    resolve_table,
    resolve_tracking_uri,
    validate_config,
)
from pipelines.config.schema import (
    Config,
    DataConfig,
    DemoConfig,
    EarlyStoppingConfig,
    FeaturesConfig,
    LearningRateRange,
    ModelConfig,
    OptimizerField,
    OutputConfig,
    PbtConfig,
    PruningConfig,
    RangeTestConfig,
    ScheduleField,
    ScoringConfig,
    SparkConfig,
    SweepConfig,
    TrackingConfig,
    TrainConfig,
    format_validation_error,
    is_path,
)

__all__ = [
    "DEFAULT_CONF_DIR", "DEFAULT_ENV", "PACKAGED_DEFAULTS", "Config", "DataConfig", "DemoConfig",
    "EarlyStoppingConfig", "FeaturesConfig", "LearningRateRange", "ModelConfig", "OptimizerField", "OutputConfig",
    "PbtConfig", "PruningConfig", "RangeTestConfig", "ScheduleField", "ScoringConfig", "SparkConfig", "SweepConfig",
    "TrackingConfig", "TrainConfig", "configuration_files", "deep_merge", "format_validation_error", "is_path",
    "load_config", "overrides_from_pairs", "parse_override", "resolve_table", "resolve_tracking_uri",
    "validate_config",
]
