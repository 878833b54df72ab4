"""What a valid configuration is: the sections (pydantic models), their rules, and the one-line messages.

The merged mapping is validated once, before Spark starts. An invalid value raises
:class:`~pipelines.errors.ConfigError` naming the dotted key, the value and the rule
(:func:`format_validation_error`).

The engine's specs are built here, at load time, and their rules are the only ones: ``train.schedule`` *is*
a :class:`~pipelines.sgd.schedules.ScheduleSpec`, ``train.optimizer`` an
:class:`~pipelines.sgd.optimizers.OptimizerSpec`, ``model.reg_param``/``model.l1_ratio`` make a
:class:`~pipelines.sgd.regularization.Regularization`, and :attr:`Config.problem` is the
:class:`~pipelines.sgd.problem.TrainingProblem` every task receives. A value the engine would refuse is
refused by :func:`~pipelines.config.loading.load_config`, e.g.
``conf: train.schedule.div_factor = 0.5: must be a number >= 1``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from pipelines.errors import ConfigError
from pipelines.identifiers import MAX_NAME_PARTS, table_name_parts
from pipelines.sgd._validation import OneOf, SpecError, build_spec
from pipelines.sgd.losses import CLASSIFICATION_LOSSES, DEFAULT_EPSILON, LOSS_NAMES, task_of
from pipelines.sgd.optimizers import OptimizerSpec
from pipelines.sgd.problem import TrainingProblem
from pipelines.sgd.regularization import Regularization
from pipelines.sgd.schedules import ScheduleSpec


class _Section(BaseModel):
    """A configuration section: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _table_identifier(value: str | None) -> str | None:
    """A table path (any character) or a catalog name Spark SQL can take quoted; anything else is refused here,
    so no other text ever reaches SQL in a table's place."""
    if value is None or is_path(value) or table_name_parts(value) is not None:
        return value
    raise ValueError(f"must be a table path (containing '/') or a catalog name of 1 to {MAX_NAME_PARTS} "
                     "dot-separated parts, each of letters, digits and _ or in backticks")


class DataConfig(_Section):
    """Which feature table to read and how (``data.*``)."""

    table: str = Field(min_length=1, description="Delta path or catalog table name")
    version: int | str | None = Field(
        default=None, description="Delta version number or timestamp; latest at job start when omitted"
    )
    since_version: int | Literal["champion"] | None = Field(
        default=None, description="train on the rows added after this version (up to the pinned one): a "
        "number, or champion (the version the champion was trained on); change data feed when the table has it")
    label: str = Field(min_length=1)
    features: list[str] | None = Field(
        default=None, description="feature columns; every usable column but the label and exclusions when omitted"
    )
    exclude: list[str] = Field(default_factory=list, description="columns never used as features (ids)")
    weight: str | None = Field(default=None, min_length=1, description="a column of non-negative row weights")
    on_null: Literal["drop", "fail"] = Field(default="drop", description="rows with a null label or feature")
    on_invalid: Literal["drop", "fail"] = Field(
        default="drop", description="rows with NaN or +-inf in the label or a feature")
    validation_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    split: Literal["hash", "stratified", "time", "column"] = Field(
        default="hash", description="hash of row content | stratified by label | time (data.time_column) | column")
    time_column: str | None = Field(default=None, min_length=1, description="split=time: oldest rows train")
    split_column: str | None = Field(default=None, min_length=1,
                                     description="split=column: a column of train / validation / test")
    test_fraction: float = Field(default=0.0, ge=0.0, lt=1.0,
                                 description="held-out rows, never used for selection (hash, stratified, time)")
    min_validation_rows: int = Field(
        default=30, ge=1, description="fewer validation rows than this fail the job: too few to judge a model")

    @field_validator("table")
    @classmethod
    def _table_name(cls, table: str) -> str | None:
        return _table_identifier(table)

    @field_validator("version")
    @classmethod
    def _version_non_negative(cls, version: int | str | None) -> int | str | None:
        if isinstance(version, int) and version < 0:
            raise ValueError("must be a version number >= 0 or a timestamp such as '2026-11-29 10:00:00'")
        return version

    @field_validator("since_version")
    @classmethod
    def _since_non_negative(cls, since: int | str | None) -> int | str | None:
        if isinstance(since, int) and since < 0:
            raise ValueError("must be a version number >= 0 or 'champion'")
        return since

    @model_validator(mode="after")
    def _split_settings(self) -> DataConfig:
        def error(parameter: str, value: Any, rule: str) -> PydanticCustomError:
            return PydanticCustomError("spec", "{rule}", {"parameter": parameter, "value": value, "rule": rule})

        if self.split == "time" and self.time_column is None:
            raise error("time_column", None, "data.split=time needs the column that orders the rows")
        if self.split == "column" and self.split_column is None:
            raise error("split_column", None, "data.split=column needs the column naming each row's split")
        if self.split != "column" and self.validation_fraction + self.test_fraction >= 1.0:
            raise error("test_fraction", self.test_fraction,
                        f"validation_fraction + test_fraction must be < 1 (validation_fraction is "
                        f"{self.validation_fraction})")
        return self

    @field_validator("features")
    @classmethod
    def _features_non_empty(cls, features: list[str] | None) -> list[str] | None:
        if features is not None and len(features) == 0:
            raise ValueError("must list at least one column, or be omitted to use every usable column")
        if features is not None and len(set(features)) != len(features):
            raise ValueError("must not list a column twice")
        return features


class ModelConfig(_Section):
    """The linear model (``model.*``): objective = mean loss + reg_param * elastic-net penalty.

    ``reg_param`` and ``l1_ratio`` follow :data:`Regularization.RULES <pipelines.sgd.regularization.Regularization>`;
    :attr:`regularization` is built from them when the configuration is loaded.
    """

    loss: str = "logistic"
    fit_intercept: bool = True
    reg_param: float = 0.0
    l1_ratio: float = 0.0
    epsilon: float = Field(
        default=DEFAULT_EPSILON, description="huber: the quadratic zone (> 0); epsilon_insensitive and "
        "squared_epsilon_insensitive: the dead zone (>= 0)")
    class_weight: Literal["balanced"] | dict[str, float] | None = Field(
        default=None, description="logistic: 'balanced' (n / (2 n_class)) or {label value: weight}")

    @field_validator("class_weight", mode="before")
    @classmethod
    def _class_weight_keys(cls, value: Any) -> Any:
        if isinstance(value, dict):
            if not value:
                raise ValueError("must map at least one label value to a weight, or be 'balanced' or null")
            weights = {}
            for key, weight in value.items():
                if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight >= 0:
                    raise ValueError(f"the weight of class {key!r} must be a number >= 0, got {weight!r}")
                weights[str(int(key)) if isinstance(key, float) and key.is_integer() else str(key)] = float(weight)
            return weights
        return value

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, loss: str) -> str:
        rule = OneOf(LOSS_NAMES)
        if not rule.accepts(loss):
            raise ValueError(rule.describe())
        return loss

    @model_validator(mode="after")
    def _regularization_rules(self) -> ModelConfig:
        try:
            Regularization(self.reg_param, self.l1_ratio)
            TrainingProblem(self.loss, epsilon=self.epsilon)
        except SpecError as error:
            raise _spec_error(error) from None
        if self.class_weight is not None and task_of(self.loss) != "binary":
            raise PydanticCustomError("spec", "{rule}", {
                "parameter": "class_weight", "value": self.class_weight,
                "rule": f"needs a classification loss ({', '.join(CLASSIFICATION_LOSSES)}); model.loss is "
                        f"{self.loss!r}"})
        return self

    @property
    def regularization(self) -> Regularization:
        """The penalty of the objective (validated at load)."""
        return Regularization(self.reg_param, self.l1_ratio)


class FeaturesConfig(_Section):
    """Feature preparation (``features.*``)."""

    standardize: bool = Field(default=True, description="numbers, booleans, dates and array elements")
    max_categories: int = Field(
        default=50, ge=1, description="one-hot: the most frequent categories kept; the rest share an 'other' slot")
    hash_threshold: int = Field(
        default=1000, ge=2, description="a string column with more distinct values (in training) is hashed")
    hash_buckets: int = Field(default=65_536, ge=2, le=2**24, description="slots of a hashed string column")


def _spec_error(error: SpecError) -> PydanticCustomError:
    """A core spec's rule violation as a validation error that names the parameter under its section."""
    return PydanticCustomError("spec", "{rule}", {"parameter": error.parameter, "value": error.value,
                                                  "rule": error.rule})


def _spec_builder(cls: type[Any]) -> Any:
    """A validator that builds the core spec ``cls`` (and so applies its rules) from a name or a mapping."""

    def build(value: Any) -> Any:
        try:
            return build_spec(cls, value)
        except SpecError as error:
            raise _spec_error(error) from None
        except TypeError as error:  # e.g. a parameter given a list
            raise ValueError(str(error)) from None

    return build


def _schedule_fields(spec: ScheduleSpec) -> dict[str, Any]:
    """A schedule as the configuration shows and records it: ``piecewise``'s pieces only when it is piecewise (a
    sweep's recorded settings do not change with a key its schedule does not use)."""
    fields = dataclasses.asdict(spec)
    if spec.name != "piecewise":
        del fields["epochs"], fields["rates"]
    return fields


#: Configuration fields that *are* the core specs, built (and so validated) when the configuration is loaded.
ScheduleField = Annotated[ScheduleSpec, PlainValidator(_spec_builder(ScheduleSpec)),
                          PlainSerializer(lambda spec: _schedule_fields(spec))]
OptimizerField = Annotated[OptimizerSpec, PlainValidator(_spec_builder(OptimizerSpec)),
                           PlainSerializer(dataclasses.asdict)]


class TrainConfig(_Section):
    """How each model of the grid is trained (``train.*``).

    ``schedule`` (:class:`~pipelines.sgd.schedules.ScheduleSpec`, durations in epochs) and ``optimizer``
    (:class:`~pipelines.sgd.optimizers.OptimizerSpec`) accept a bare name or a mapping of parameters.
    ``batch_size``, ``sync_every``, ``sync_state`` and ``train_loss`` are local_sgd's settings; ``batch_fraction``
    is gd's.
    """

    algorithm: Literal["local_sgd", "gd"] = "local_sgd"
    epochs: int = Field(default=10, ge=1, le=100_000)
    batch_size: int = Field(default=256, ge=1)
    min_steps_per_epoch: int = Field(
        default=10, ge=0, description="local_sgd: a smaller batch than batch_size when the largest partition's "
        "training rows would give fewer steps per epoch (0: always batch_size)")
    schedule: ScheduleField = Field(default_factory=ScheduleSpec)
    optimizer: OptimizerField = Field(default_factory=OptimizerSpec)
    seed: int = Field(default=42, ge=0)
    sync_every: int | None = Field(
        default=None, ge=1, description="local_sgd: average models every N local steps (default: each epoch)"
    )
    sync_state: Literal["average", "reset"] = Field(
        default="average", description="local_sgd: optimizer state at a synchronization point"
    )
    train_loss: Literal["progressive", "exact"] = Field(
        default="progressive", description="local_sgd: the train_loss curve, progressive (each batch's loss at the "
        "margins its update is computed from, summed over the epoch as it trains: no extra pass) or exact (a pass "
        "over the training rows at each epoch's models); gd's is exact either way (its gradient pass gives it)")
    batch_fraction: float = Field(default=1.0, gt=0.0, le=1.0, description="gd: sampled fraction per step")
    num_partitions: int | None = Field(default=None, ge=1, description="partitions of the training data")
    warm_start: Literal["none", "champion"] = Field(
        default="none", description="champion: every grid point (and the range test) starts from the registered "
        "champion's model, carried onto this sweep's encoding; without a champion, a cold start (said)")
    dtype: Literal["float64", "float32"] = Field(
        default="float64", description="storage of the dense inputs in the cached blocks: float32 halves their "
        "memory and the epoch's memory traffic; weights, sums and updates stay float64")
    executor: Literal["auto", "spark", "driver"] = Field(
        default="auto", description="where the engine's tasks run: spark (a Spark job per synchronization), driver "
        "(the same tasks in the driver process, on the blocks collected once: small tables) or auto (the driver "
        "when the blocks fit it and either the master is local or training rows x model rows x inputs <= "
        "driver_max_cells)")
    driver_max_cells: int = Field(
        default=200_000_000, ge=0, description="auto on a master that is not local: the largest training rows x "
        "model rows x inputs run in the driver (measured: below it an epoch costs less than a Spark job's overhead)")
    driver_max_bytes: int | None = Field(
        default=None, ge=0, description="the most bytes of blocks the driver executor collects (default: a quarter "
        "of spark.driver.memory, at most 90% of spark.driver.maxResultSize); train.executor=driver above it exits 2 "
        "before the blocks are built")
    checkpoint_every: int | Literal["auto"] = Field(
        default="auto", description="epochs between checkpoints and journal appends (also on signals and at the "
        "end); 'auto': as often as keeps their measured cost under 5% of the training time")

    @property
    def train_loss_curve(self) -> Literal["progressive", "exact"]:
        """What the ``train_loss`` curve is: ``train_loss`` under local_sgd, ``exact`` under gd."""
        return self.train_loss if self.algorithm == "local_sgd" else "exact"

    @field_validator("checkpoint_every")
    @classmethod
    def _positive_interval(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be an integer >= 1 or 'auto'")
        return value


class LearningRateRange(_Section):
    """A log-spaced grid: ``num`` rates from ``min`` to ``max`` inclusive."""

    min: float = Field(gt=0.0)
    max: float = Field(gt=0.0)
    num: int = Field(ge=1, le=1024)

    @model_validator(mode="after")
    def _ordered(self) -> LearningRateRange:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self

    def rates(self) -> list[float]:
        """The grid, ascending: ``geomspace(min, max, num)``."""
        return [float(rate) for rate in np.geomspace(self.min, self.max, self.num)]


class EarlyStoppingConfig(_Section):
    """Per-rate early stopping on validation loss (``sweep.early_stopping.*``)."""

    enabled: bool = False
    patience: int = Field(default=3, ge=1)
    min_delta: float = Field(default=0.0, ge=0.0)


class PruningConfig(_Section):
    """Successive halving across the grid (``sweep.pruning.*``): rungs at epochs r, r*eta, r*eta^2 ..."""

    enabled: bool = False
    min_epochs: int = Field(default=1, ge=1, description="r: the first rung")
    eta: int = Field(default=3, ge=2, description="keep the best 1/eta rates at each rung")


class PbtConfig(_Section):
    """Population-based training over the grid's points (``sweep.pbt.*``, with ``sweep.strategy: pbt``).

    After every ``interval`` epochs the points are ranked by validation loss; the bottom ``quantile`` take a
    top-``quantile`` point's models and optimizer state and explore: the learning rate (and ``reg_param`` when it
    is a grid axis) times one of ``factors``, or, with probability ``resample_probability``, a log-uniform draw
    from the configured range (:mod:`pipelines.sweep.pbt`).
    """

    interval: int = Field(default=2, ge=1, description="epochs between rankings (at most train.epochs - 2)")
    quantile: float = Field(default=0.25, gt=0.0, le=0.5, description="share of the points replaced (and copied)")
    factors: list[float] = Field(default_factory=lambda: [0.8, 1.2], description="perturbation factors")
    resample_probability: float = Field(default=0.25, ge=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, description="the population's draws (default: train.seed)")

    @field_validator("factors")
    @classmethod
    def _factors_move_the_rate(cls, factors: list[float]) -> list[float]:
        if not factors:
            raise ValueError("must list at least one factor")
        still = [factor for factor in factors if not (math.isfinite(factor) and factor > 0 and factor != 1.0)]
        if still:
            raise ValueError(f"every factor must be finite, > 0 and != 1 (one that does not move the rate), "
                             f"got {still}")
        return factors


class SweepConfig(_Section):
    """The learning-rate grid and the policies applied across it (``sweep.*``)."""

    id: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
    strategy: Literal["grid", "pbt"] = Field(
        default="grid", description="grid: every point keeps its rate; pbt: population-based training (sweep.pbt)")
    pbt: PbtConfig = Field(default_factory=PbtConfig)
    learning_rates: list[float] | LearningRateRange | Literal["auto"] = Field(
        default_factory=lambda: LearningRateRange(min=1e-4, max=1.0, num=8)
    )
    divergence_factor: float = Field(default=4.0, gt=1.0)
    seeds: list[int] | None = Field(default=None, description="repeat every rate with these seeds")
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    pruning: PruningConfig = Field(default_factory=PruningConfig)
    auto_num: int = Field(default=5, ge=1, le=64, description="'auto': rates in the grid around the suggestion")
    auto_span: float = Field(default=10.0, gt=1.0, description="'auto': grid spans suggestion/span..*span")
    refine: bool = Field(default=False, description="run a second, finer grid around the best rate")
    reg_params: list[float] | None = Field(
        default=None, description="a joint grid: every learning rate with each of these reg_params (default: "
        "model.reg_param only)")
    l1_ratios: list[float] | None = Field(
        default=None, description="a joint grid: every learning rate and reg_param with each of these l1_ratios "
        "(default: model.l1_ratio only)")

    @field_validator("reg_params", "l1_ratios", mode="before")
    @classmethod
    def _scalar_axis(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return [float(value)]
        return value

    @field_validator("reg_params", "l1_ratios")
    @classmethod
    def _penalty_axis(cls, values: list[float] | None, info: ValidationInfo) -> list[float] | None:
        if values is None:
            return None
        if not values or len(set(values)) != len(values):
            raise ValueError("must be a non-empty list of distinct numbers")
        parameter = "reg_param" if info.field_name == "reg_params" else "l1_ratio"
        rule = Regularization.RULES[parameter]
        bad = [value for value in values if not rule.accepts(value)]
        if bad:
            raise ValueError(f"every {parameter} must be {rule.describe()}, got {bad}")
        return values

    @field_validator("learning_rates", mode="before")
    @classmethod
    def _parse_scalar(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return [float(value)]
        return value

    @field_validator("learning_rates")
    @classmethod
    def _positive_rates(
        cls, value: list[float] | LearningRateRange | str
    ) -> list[float] | LearningRateRange | str:
        if isinstance(value, list):
            if not value:
                raise ValueError("must list at least one learning rate")
            bad = [rate for rate in value if not (math.isfinite(rate) and rate > 0)]
            if bad:
                raise ValueError(f"every learning rate must be finite and > 0, got {bad}")
            if len(set(value)) != len(value):
                raise ValueError("must not list a learning rate twice")
        return value

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int] | None) -> list[int] | None:
        if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
            raise ValueError("must be a non-empty list of distinct integers")
        return seeds

    def grid(self) -> list[float]:
        """The explicit grid, ascending. ``auto`` grids are built by the range test instead."""
        if isinstance(self.learning_rates, LearningRateRange):
            return self.learning_rates.rates()
        if isinstance(self.learning_rates, list):
            return sorted(self.learning_rates)
        raise ConfigError("sweep.learning_rates is 'auto': the grid comes from the range test")


class RangeTestConfig(_Section):
    """Smith's learning-rate range test (``range_test.*``)."""

    min_lr: float = Field(default=1e-6, gt=0.0)
    max_lr: float = Field(default=10.0, gt=0.0)
    num_steps: int = Field(default=100, ge=10)
    smoothing: float = Field(default=0.98, ge=0.0, lt=1.0)
    stop_factor: float = Field(default=4.0, gt=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> RangeTestConfig:
        if self.max_lr <= self.min_lr:
            raise ValueError(f"max_lr ({self.max_lr}) must be > min_lr ({self.min_lr})")
        return self


class TrackingConfig(_Section):
    """MLflow (``tracking.*``). ``uri`` falls back to $MLFLOW_TRACKING_URI, then ``mlflow.db`` here."""

    uri: str | None = None
    experiment: str = Field(default="lrsweep", min_length=1)
    registered_model: str = Field(default="lrsweep_model", min_length=1)
    register_when: Literal["always", "if_better", "never"] = "if_better"
    min_improvement: float = Field(
        default=0.001, ge=0.0, lt=1.0, description="if_better: the relative margin by which the challenger's "
        "validation loss must beat the champion's, both measured on this sweep's validation rows")
    drift_threshold: float = Field(
        default=0.25, gt=0.0, description="a feature whose population stability index against the champion's "
        "training rows is above this is warned about")
    retry_seconds: float = Field(
        default=60.0, ge=0.0, description="per outage: how long MLflow calls are retried before the job goes on "
        "without it (live logging) or gives up (the end of the job, exit 4)")
    connect_timeout_seconds: float = Field(
        default=10.0, gt=0.0, description="at start: how long to wait for the tracking store to answer")


class OutputConfig(_Section):
    """Where results go (``output.*``)."""

    results_table: str = Field(min_length=1)
    predictions_table: str = Field(min_length=1)
    checkpoints: str = Field(
        default="data/checkpoints", min_length=1,
        description="folder or URI (file:, s3://, gs://, hdfs://, abfs://) of the sweeps' checkpoints")
    lease_seconds: float = Field(
        default=60.0, gt=0,
        description="how long a sweep id's lease (in output.checkpoints) lives without renewal; renewed every third")

    @field_validator("results_table", "predictions_table")
    @classmethod
    def _table_name(cls, table: str) -> str | None:
        return _table_identifier(table)


class ScoringConfig(_Section):
    """Batch scoring (``scoring.*``); the input defaults to ``data.table`` at its latest version."""

    model_uri: str | None = Field(default=None, description="default: models:/<registered_model>@champion")
    input_table: str | None = None

    @field_validator("input_table")
    @classmethod
    def _table_name(cls, table: str | None) -> str | None:
        return _table_identifier(table)


class SparkConfig(_Section):
    """Spark settings that lrsweep owns (``spark.*``); ``spark-submit`` flags take precedence."""

    master: str = "local[*]"
    remote: str | None = Field(default=None, description="Spark Connect server (sc://host:port); also SPARK_REMOTE")
    app_name: str = "lrsweep"
    shuffle_partitions: int = Field(default=8, ge=1)
    jars: list[str] = Field(default_factory=list, description="pre-fetched jars (air-gapped clusters)")
    conf: dict[str, str] = Field(default_factory=dict)
    log_level: Literal["ERROR", "WARN", "INFO", "DEBUG"] = "WARN"


class DemoConfig(_Section):
    """The demo feature table (``demo.*``), written to ``data.table``."""

    rows: int = Field(default=200_000, ge=10)
    append_rows: int = Field(default=20_000, ge=1)
    seed: int = Field(default=7, ge=0)
    partitions: int = Field(default=4, ge=1)
    null_fraction: float = Field(default=0.005, ge=0.0, lt=0.5)


class Config(_Section):
    """The whole validated configuration; each step receives only its section."""

    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    range_test: RangeTestConfig = Field(default_factory=RangeTestConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    output: OutputConfig
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    spark: SparkConfig = Field(default_factory=SparkConfig)
    demo: DemoConfig = Field(default_factory=lambda: DemoConfig())

    @model_validator(mode="after")
    def _stratified_needs_classes(self) -> Config:
        if self.data.split == "stratified" and task_of(self.model.loss) not in ("binary", "multiclass"):
            raise PydanticCustomError("spec", "{rule}", {
                "parameter": "data.split", "value": "stratified",
                "rule": f"stratifies by class: it needs a classification loss ({', '.join(CLASSIFICATION_LOSSES)}, "
                        f"multinomial); model.loss is {self.model.loss!r}"})
        return self

    @model_validator(mode="after")
    def _pbt_settings(self) -> Config:
        if self.sweep.strategy == "pbt":
            _check_pbt(self.sweep, self.train, len(self.penalty_axis()))
        return self

    def penalty_axis(self) -> list[Regularization]:
        """The grid's penalties: ``sweep.reg_params`` x ``sweep.l1_ratios`` (each defaulting to the single
        ``model.*`` value), reg-major."""
        return [Regularization(reg, l1) for reg in self.sweep.reg_params or [self.model.reg_param]
                for l1 in self.sweep.l1_ratios or [self.model.l1_ratio]]

    @property
    def problem(self) -> TrainingProblem:
        """The training problem every task receives, from ``model.*`` and ``train.schedule``/``optimizer``."""
        return TrainingProblem(self.model.loss, self.model.fit_intercept, self.model.regularization,
                               self.train.optimizer, self.train.schedule, self.model.epsilon)


def _check_pbt(sweep: SweepConfig, train: TrainConfig, penalties: int) -> None:
    """``sweep.strategy: pbt``'s rules across sections (one message each, naming the key)."""
    def error(parameter: str, value: Any, rule: str) -> PydanticCustomError:
        return PydanticCustomError("spec", "{rule}", {"parameter": parameter, "value": value, "rule": rule})

    if sweep.pbt.interval > train.epochs - 2:
        raise error("sweep.pbt.interval", sweep.pbt.interval,
                    f"must be <= train.epochs - 2 = {train.epochs - 2} (points ranked after epoch k*interval take "
                    "their copy after the next epoch and need one more to train at their explored rate)")
    rates = sweep.auto_num if sweep.learning_rates == "auto" else len(sweep.grid())
    if rates * penalties < 4:
        raise error("sweep.learning_rates", sweep.learning_rates,
                    f"sweep.strategy=pbt needs a population of at least 4 points, the grid has {rates * penalties}")
    if sweep.pruning.enabled:
        raise error("sweep.pruning.enabled", True, "successive halving removes the members population-based "
                    "training copies from and replaces: use sweep.strategy=pbt or pruning, not both")
    if sweep.learning_rates == "auto" and sweep.refine:
        raise error("sweep.refine", True, "a second, finer grid around the best rate is a grid's refinement; "
                    "sweep.strategy=pbt moves its points' rates itself")
    schedule = train.schedule
    if schedule.name != "constant" or schedule.warmup_epochs:
        raise error("train.schedule", schedule.name if not schedule.warmup_epochs else
                    f"{schedule.name} with warmup_epochs={schedule.warmup_epochs}",
                    "sweep.strategy=pbt sets each point's rate itself: the schedule must be constant (no warm-up)")


# -------------------------------------------------------------------------------------------- messages


def format_validation_error(error: ValidationError) -> str:
    """One line per offending key: ``conf: <dotted.key> = <value>: <rule>``, named at the deepest key that
    breaks a rule (``conf: sweep.learning_rates.min = -1: must be > 0``).

    For a key that accepts several shapes (a list or a range, say), a broken rule of the shape the user
    wrote wins over "is not the other shape": the shapes the value is not are dropped whenever an error
    deeper inside the value (a field of the mapping given) says what is wrong with it.
    """
    by_key: dict[str, list[Any]] = {}
    for problem in error.errors():
        key = ".".join(str(part) for part in problem["loc"] if not _is_union_tag(part))
        by_key.setdefault(key, []).append(problem)
    for key in [k for k, problems in by_key.items()
                if all(p["type"] in _SHAPE_ERRORS for p in problems)
                and any(other.startswith(f"{k}.") for other in by_key if k)]:
        del by_key[key]
    lines = []
    for key, problems in by_key.items():
        value_errors = [p for p in problems if p["type"] in ("value_error", "assertion_error")]
        if value_errors or len(problems) == 1:
            chosen = value_errors or problems
            rule = "; ".join(dict.fromkeys(_rule(p) for p in chosen))
        else:
            rule = "expected one of: " + " | ".join(dict.fromkeys(_rule(p) for p in problems))
        first = problems[0]
        if first["type"] == "spec":
            context = first.get("ctx", {})
            parameter = ".".join(part for part in (key, str(context.get("parameter", ""))) if part)
            if context.get("rule") == "unknown key":
                lines.append(f"conf: {parameter}: unknown key")
            else:
                lines.append(f"conf: {parameter} = {context.get('value')!r}: {context.get('rule')}")
        elif first["type"] == "extra_forbidden":
            lines.append(f"conf: {key}: unknown key")
        elif first["type"] == "missing":
            lines.append(f"conf: {key}: required key is missing")
        else:
            lines.append(f"conf: {key} = {first.get('input')!r}: {rule}")
    return "\n".join(lines)


#: pydantic's errors that say a value has another shape than one the key takes (not that it breaks a rule).
_SHAPE_ERRORS = frozenset({"list_type", "dict_type", "model_type", "model_attributes_type", "literal_error",
                           "float_type", "float_parsing", "int_type", "int_parsing", "string_type", "bool_type",
                           "bool_parsing", "is_instance_of", "union_tag_invalid"})

#: pydantic's bounds as the rule a user reads (``must be > 0``), the same words as the engine's specs use.
_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="), "less_than": ("lt", "<"),
           "less_than_equal": ("le", "<=")}


def _rule(problem: Mapping[str, Any]) -> str:
    """The rule a validation problem states: a bound as ``must be > 0``, any other in pydantic's words."""
    if problem["type"] in _BOUNDS:
        name, symbol = _BOUNDS[problem["type"]]
        bound = problem.get("ctx", {}).get(name)
        shown = int(bound) if isinstance(bound, float) and bound.is_integer() else bound
        return f"must be {symbol} {shown}"
    return str(problem["msg"]).removeprefix("Value error, ")


def _is_union_tag(part: int | str) -> bool:
    # pydantic names the union member it tried ("list[float]", "LearningRateRange", "literal['auto']")
    return isinstance(part, str) and ("[" in part or part[:1].isupper() or part in _SCALAR_TAGS)


_SCALAR_TAGS = frozenset({"int", "str", "float", "bool", "none"})


# ----------------------------------------------------------------------------------------- table paths


def is_path(identifier: str) -> bool:
    """A table identifier is a path when it has a URI scheme or a slash; else it is a catalog name."""
    return "://" in identifier or identifier.startswith(("file:", "/", ".")) or "/" in identifier
