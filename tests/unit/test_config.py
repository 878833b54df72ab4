"""Configuration: base + overlay + overrides, validated with messages naming key, value and rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines import PROJECT_ROOT
from pipelines.config import PACKAGED_DEFAULTS, LearningRateRange, load_config, parse_override
from pipelines.errors import ConfigError


def test_base_configuration_loads_with_documented_keys() -> None:
    config = load_config()
    assert config.data.table == str(Path.cwd() / "data/delta/churn_features")
    assert config.data.version is None
    assert config.data.label == "churned"
    assert config.data.features is None
    assert config.model.loss == "logistic"
    assert config.model.fit_intercept is True
    assert config.model.reg_param == 0.0
    assert config.features.standardize is True
    assert config.train.algorithm == "local_sgd"
    assert config.train.schedule.name == "constant"
    assert isinstance(config.sweep.learning_rates, LearningRateRange)
    assert config.sweep.grid() == pytest.approx(list(__import__("numpy").geomspace(1e-4, 1.0, 8)))
    assert config.tracking.experiment
    assert config.output.results_table.endswith("data/delta/sweep_results")


def test_overrides_are_parsed_as_yaml_and_numbers() -> None:
    config = load_config(overrides=[
        "train.epochs=3", "sweep.learning_rates=[1e-3, 0.1]", "model.loss=squared",
        "data.features=[a, b]", "data.version=2", "train.schedule=cosine", "train.optimizer=adam",
    ])
    assert config.train.epochs == 3
    assert config.sweep.grid() == [1e-3, 0.1]
    assert config.model.loss == "squared"
    assert config.data.features == ["a", "b"]
    assert config.data.version == 2
    assert config.train.schedule.name == "cosine"
    assert config.train.optimizer.name == "adam"


def test_range_grid_is_log_spaced_and_inclusive() -> None:
    config = load_config(overrides=["sweep.learning_rates={min: 0.001, max: 0.1, num: 3}"])
    assert config.sweep.grid() == pytest.approx([1e-3, 1e-2, 1e-1])


def test_packaged_defaults_then_a_projects_base_then_its_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "train.yml").write_text("train:\n  epochs: 7\n")  # a project's own base
    (tmp_path / "prod").mkdir()
    (tmp_path / "prod" / "data.yml").write_text("data:\n  table: main.features.churn\n  on_null: fail\n")
    config = load_config(env="prod", conf_dir=tmp_path)
    assert config.data.table == "main.features.churn"  # a catalog name stays a name
    assert config.data.on_null == "fail" and config.train.epochs == 7
    assert config.data.label == "churned"  # untouched keys keep the packaged default
    config = load_config(env="prod", conf_dir=tmp_path, overrides=["data.on_null=drop"])
    assert config.data.on_null == "drop"  # --set wins over the overlay


def test_relative_paths_and_the_default_store_are_the_working_directorys(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = load_config()  # no conf/ here: the packaged defaults alone
    assert config.data.table == str(tmp_path / "data/delta/churn_features")
    assert config.output.checkpoints == str(tmp_path / "data/checkpoints")
    assert config.tracking.uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert load_config(overrides=["tracking.uri=sqlite:///stores/x.db"]).tracking.uri == \
        f"sqlite:///{tmp_path / 'stores/x.db'}"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.epochs=0", "conf: train.epochs = 0: must be >= 1"),
        ("model.loss=tweedie", "conf: model.loss = 'tweedie': must be one of logistic, hinge, squared_hinge,"),
        ("model.epsilon=-1", "conf: model.epsilon = -1.0: must be a number >= 0"),
        ("sweep.reg_params=[]", "conf: sweep.reg_params = []: must be a non-empty list of distinct numbers"),
        ("trian.epochs=3", "conf: trian: unknown key"),
        ("train.epoch=3", "conf: train.epoch: unknown key"),
        ("sweep.learning_rates=[0.1, -1]",
         "conf: sweep.learning_rates = [0.1, -1]: every learning rate must be finite and > 0"),
        ("sweep.learning_rates={min: 1, max: 0.1, num: 3}", "max (0.1) must be >= min (1.0)"),
        ("data.validation_fraction=1.5", "conf: data.validation_fraction = 1.5: must be < 1"),
        ("data.on_null=ignore", "conf: data.on_null = 'ignore': Input should be 'drop' or 'fail'"),
        ("train.algorithm=adam", "conf: train.algorithm = 'adam'"),
        ("train.train_loss=exactly", "conf: train.train_loss = 'exactly': Input should be 'progressive' or 'exact'"),
        ("data.version=-1", "conf: data.version = -1"),
        ("data.features=[]", "conf: data.features = []: must list at least one column"),
        ("sweep.divergence_factor=1", "conf: sweep.divergence_factor = 1"),
        # the engine's own rules, applied when the configuration is loaded
        ("train.schedule.div_factor=0.5", "conf: train.schedule.div_factor = 0.5: must be a number >= 1"),
        ("train.schedule.final_div_factor=0.9", "conf: train.schedule.final_div_factor = 0.9: must be a number >= 1"),
        ("train.schedule.name=linear", "conf: train.schedule.name = 'linear': must be one of constant,"),
        ("train.schedule.gamma=0", "conf: train.schedule.gamma = 0: must be a number in (0, 1]"),
        ("train.schedule.warmup_epochs=-1", "conf: train.schedule.warmup_epochs = -1: must be a number >= 0"),
        ("train.schedule.n_iter_no_change=0", "conf: train.schedule.n_iter_no_change = 0: must be an integer >= 1"),
        ("train.schedule.bogus=1", "conf: train.schedule.bogus: unknown key"),
        ("train.optimizer=lbfgs", "conf: train.optimizer.name = 'lbfgs': must be one of sgd, momentum,"),
        ("train.optimizer.beta1=1", "conf: train.optimizer.beta1 = 1: must be a number in [0, 1)"),
        ("train.optimizer.eps=0", "conf: train.optimizer.eps = 0: must be a number > 0"),
        ("model.reg_param=-0.5", "conf: model.reg_param = -0.5: must be a number >= 0"),
        ("model.l1_ratio=2", "conf: model.l1_ratio = 2.0: must be a number in [0, 1]"),
        ("data.on_invalid=keep", "conf: data.on_invalid = 'keep': Input should be 'drop' or 'fail'"),
        ("tracking.retry_seconds=-1", "conf: tracking.retry_seconds = -1"),
        ("train.checkpoint_every=0", "conf: train.checkpoint_every = 0"),
        ("output.lease_seconds=0", "conf: output.lease_seconds = 0: must be > 0"),
    ],
)
def test_invalid_values_name_key_value_and_rule(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(overrides=[override])
    assert expected in str(raised.value)


def test_huber_needs_a_positive_epsilon_the_epsilon_insensitive_losses_accept_zero() -> None:
    with pytest.raises(ConfigError, match=r"conf: model.epsilon = 0.0: must be > 0 for the huber loss"):
        load_config(overrides=["model.loss=huber", "model.epsilon=0"])
    assert load_config(overrides=["model.loss=epsilon_insensitive", "model.epsilon=0"]).problem.epsilon == 0.0


def test_engine_specs_are_built_at_load_with_one_default_each() -> None:
    config = load_config(overrides=["train.schedule={name: one_cycle, div_factor: 10}", "train.optimizer=adagrad",
                                    "model.reg_param=0.1", "model.l1_ratio=0.5"])
    problem = config.problem
    assert problem.schedule is config.train.schedule and problem.schedule.div_factor == 10
    assert problem.optimizer.name == "adagrad" and problem.optimizer.resolved_eps == 1e-10  # not the config's
    assert (problem.regularization.reg_param, problem.regularization.l1_ratio) == (0.1, 0.5)
    assert config.train.sync_state == "average"  # a local_sgd setting, beside sync_every


def test_each_configuration_file_holds_one_section() -> None:
    import yaml

    for path in sorted((PROJECT_ROOT / "conf").glob("*/*.yml")) + sorted(Path(str(PACKAGED_DEFAULTS)).glob("*.yml")):
        sections = list(yaml.safe_load(path.read_text()) or {})
        assert sections == [path.stem], f"{path} holds {sections}"


def test_malformed_override_and_missing_env_are_clear() -> None:
    with pytest.raises(ConfigError, match=r"--set 'epochs': expected dotted.key=value"):
        parse_override("epochs")
    with pytest.raises(ConfigError,
                       match=r"--env 'staging': no folder .*\(environments there: \['ci', 'cluster', 'local'\]\)"):
        load_config(env="staging")
    with pytest.raises(ConfigError, match=r"--conf-dir /nowhere: no such folder"):
        load_config(conf_dir="/nowhere")


def test_invalid_yaml_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "broken.yml").write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yml:2:1: not valid YAML"):
        load_config(conf_dir=tmp_path)


@pytest.mark.parametrize(("text", "position", "problem"), [
    ("train:\n  epochs: 3\n   seed: 4\n", ":3:8:", "mapping values are not allowed here"),
    ("train:\n  epochs: [3\n  seed: 4\n", ":3:7:", "expected ',' or ']'"),
    ("train:\n\tepochs: 3\n", ":2:1:", "found character '\\t' that cannot start any token"),
])
def test_a_yaml_syntax_error_is_one_line_with_file_line_and_column(tmp_path: Path, text: str, position: str,
                                                                   problem: str) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "train.yml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(conf_dir=tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'base' / 'train.yml'}{position} not valid YAML: ")
    assert problem in message
    with pytest.raises(ConfigError) as override:
        load_config(overrides=["train.epochs=[3"])
    assert "\n" not in str(override.value) and "expected ',' or ']'" in str(override.value)


@pytest.mark.parametrize(("override", "expected"), [
    ("sweep.learning_rates={min: -1, max: 1, num: 3}", "conf: sweep.learning_rates.min = -1: must be > 0"),
    ("sweep.learning_rates={min: 1e-3, max: 0, num: 3}", "conf: sweep.learning_rates.max = 0: must be > 0"),
    ("sweep.learning_rates={min: 1e-3, max: 1, num: 0}", "conf: sweep.learning_rates.num = 0: must be >= 1"),
    ("sweep.learning_rates={min: 1e-3, max: 1, num: 2000}",
     "conf: sweep.learning_rates.num = 2000: must be <= 1024"),
    ("sweep.learning_rates={min: 1e-3, max: 1, count: 3}", "conf: sweep.learning_rates.count: unknown key"),
    ("sweep.learning_rates={min: 1, max: 0.1, num: 3}",
     "conf: sweep.learning_rates = {'min': 1, 'max': 0.1, 'num': 3}: max (0.1) must be >= min (1.0)"),
    ("data.validation_fraction=0", "conf: data.validation_fraction = 0: must be > 0"),
])
def test_a_range_bound_is_named_at_its_own_key_with_the_rule(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=[override])
    assert str(caught.value) == expected


@pytest.mark.parametrize("key", ["data.table", "output.results_table", "output.predictions_table",
                                 "scoring.input_table"])
@pytest.mark.parametrize("name", ["x; DROP TABLE y", "a.b.c.d", "sales.churn features", "`unclosed", "a..b",
                                  "sales.`x` y", ""])
def test_a_name_that_cannot_be_a_table_is_refused_at_load_naming_the_key(key: str, name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=[f"{key}={name!r}" if name else f"{key}=''"])
    message = str(caught.value)
    assert message.startswith(f"conf: {key} = {name!r}: ") and "\n" not in message


@pytest.mark.parametrize(("name", "parts"), [
    ("churn", ["churn"]), ("sales.churn_2026", ["sales", "churn_2026"]), ("cat.db.t", ["cat", "db", "t"]),
    ("sales.`churn features`", ["sales", "churn features"]), ("`we``ird`.`a.b`", ["we`ird", "a.b"]),
])
def test_catalog_names_and_paths_with_any_character_are_taken(name: str, parts: list[str]) -> None:
    from pipelines.identifiers import quote_table_name, table_name_parts

    assert table_name_parts(name) == parts
    assert quote_table_name(name) == ".".join("`" + part.replace("`", "``") + "`" for part in parts)
    config = load_config(overrides=[f"data.table={name!r}", "output.results_table='/tmp/we`ird; DROP/results'"])
    assert config.data.table == name
    assert config.output.results_table == "/tmp/we`ird; DROP/results"


def test_sql_names_quote_paths_and_catalog_names() -> None:
    from pipelines.lakehouse.delta import sql_name

    assert sql_name("/tmp/we`ird/t") == "delta.`/tmp/we``ird/t`"
    assert sql_name("s3://bucket/a b/t") == "delta.`s3://bucket/a b/t`"
    assert sql_name("sales.churn") == "`sales`.`churn`"


@pytest.mark.parametrize(("overrides", "expected"), [
    (["sweep.pbt.quantile=0"], "conf: sweep.pbt.quantile = 0: must be > 0"),
    (["sweep.pbt.quantile=0.75"], "conf: sweep.pbt.quantile = 0.75: must be <= 0.5"),
    (["sweep.pbt.interval=0"], "conf: sweep.pbt.interval = 0: must be >= 1"),
    (["train.epochs=6", "sweep.pbt.interval=5"], "conf: sweep.pbt.interval = 5: must be <= train.epochs - 2 = 4"),
    (["sweep.learning_rates=[0.01, 0.1, 1.0]"],
     "conf: sweep.learning_rates = [0.01, 0.1, 1.0]: sweep.strategy=pbt needs a population of at least 4 points"),
    (["sweep.pbt.factors=[1.0, 1]"], "conf: sweep.pbt.factors = [1.0, 1]: every factor must be finite, > 0 and != 1"),
    (["sweep.pbt.factors=[]"], "conf: sweep.pbt.factors = []: must list at least one factor"),
    (["sweep.pbt.resample_probability=1.5"], "conf: sweep.pbt.resample_probability = 1.5: must be <= 1"),
    (["sweep.pruning.enabled=true"],
     "conf: sweep.pruning.enabled = True: successive halving removes the members population-based training"),
    (["train.schedule=cosine"], "conf: train.schedule = 'cosine': sweep.strategy=pbt sets each point's rate itself"),
    (["sweep.learning_rates=auto", "sweep.refine=true"], "conf: sweep.refine = True: a second, finer grid"),
])
def test_population_based_training_refuses_bad_settings_in_one_line_naming_the_key(
        overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(overrides=["sweep.strategy=pbt", *overrides])
    assert str(raised.value).startswith(expected) and "\n" not in str(raised.value)


def test_population_based_training_defaults_and_a_joint_grid_population() -> None:
    config = load_config(overrides=["sweep.strategy=pbt", "sweep.learning_rates=[0.01, 0.1]",
                                    "sweep.reg_params=[0.001, 0.01]"])  # 2 x 2 points: a population of 4
    assert config.sweep.strategy == "pbt" and config.sweep.pbt.factors == [0.8, 1.2]
    assert (config.sweep.pbt.interval, config.sweep.pbt.quantile, config.sweep.pbt.seed) == (2, 0.25, None)
    assert load_config().sweep.strategy == "grid"


def test_a_piecewise_schedule_is_validated_at_load_naming_its_keys() -> None:
    config = load_config(overrides=["train.schedule={name: piecewise, epochs: [1, 4], rates: [0.1, 0.01]}"])
    assert (config.train.schedule.epochs, config.train.schedule.rates) == ((1, 4), (0.1, 0.01))
    with pytest.raises(ConfigError, match=r"^conf: train.schedule.epochs = \[2\]: piecewise needs the first epoch"):
        load_config(overrides=["train.schedule={name: piecewise, epochs: [2], rates: [0.1]}"])
    with pytest.raises(ConfigError, match=r"^conf: train.schedule.rates = \[0.1\]: piecewise needs one finite rate"):
        load_config(overrides=["train.schedule={name: piecewise, epochs: [1, 3], rates: [0.1]}"])
