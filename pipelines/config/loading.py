"""Where the configuration comes from: packaged defaults, a project's ``conf/`` overlays, ``--set`` overrides.

Loading order (later wins, mappings merge key by key)::

    pipelines/conf/base/*.yml (the defaults, shipped in the package)
      ->  <conf dir>/base/*.yml  ->  <conf dir>/<env>/*.yml  ->  --set dotted.key=value ...

The conf dir is ``./conf`` of the working directory unless given (``--conf-dir``); it is optional, and in
this repository ``conf/base`` is the packaged defaults themselves. Relative paths (tables, checkpoints, the
sqlite store) are taken from the working directory when the configuration is loaded, never from where the
package is installed. A file that is not valid YAML is named with ``:<line>:<column>``; the merged mapping
is validated by :mod:`pipelines.config.schema`.
"""

from __future__ import annotations

import datetime
import importlib.resources
import os
from collections.abc import Iterable, Mapping, Sequence
from importlib.abc import Traversable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipelines.config.schema import Config, format_validation_error, is_path
from pipelines.errors import ConfigError

#: The defaults shipped in the package (read through importlib.resources: they load from a zip on
#: ``--py-files`` too).
PACKAGED_DEFAULTS: Traversable = importlib.resources.files("pipelines") / "conf" / "base"
DEFAULT_CONF_DIR = "conf"  # relative to the working directory
DEFAULT_ENV = "local"


def load_config(
    env: str = DEFAULT_ENV,
    overrides: Sequence[str] = (),
    conf_dir: Path | str | None = None,
) -> Config:
    """Load the packaged defaults, overlay ``<conf_dir>/base`` and ``<conf_dir>/<env>``, apply ``key=value``
    overrides and validate.

    Parameters
    ----------
    env
        Name of the overlay folder under ``conf_dir``. ``local`` may be absent; any other must exist.
    overrides
        ``dotted.key=value`` strings; values are parsed as YAML (``[1e-3, 1e-2]``, ``true``, ``null``).
    conf_dir
        Folder holding ``base/`` and the overlays; default ``./conf``, which may be absent.

    Raises
    ------
    ConfigError
        A file cannot be parsed, an override is malformed, a named folder is missing, or a value breaks its
        rule.
    """
    folder = Path(conf_dir if conf_dir is not None else DEFAULT_CONF_DIR)
    if conf_dir is not None and not folder.is_dir():
        raise ConfigError(f"--conf-dir {folder}: no such folder")
    merged = _read_folder(PACKAGED_DEFAULTS)
    base_dir = folder / "base"
    if _is_project_base(base_dir):
        merged = deep_merge(merged, _read_folder(base_dir))
    env_dir = folder / env
    if env_dir.is_dir():
        merged = deep_merge(merged, _read_folder(env_dir))
    elif env != DEFAULT_ENV:
        available = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name != "base") \
            if folder.is_dir() else []
        raise ConfigError(f"--env {env!r}: no folder {env_dir.resolve()} (environments there: {available})")
    for override in overrides:
        merged = deep_merge(merged, parse_override(override))
    return validate_config(merged)


def configuration_files(env: str = DEFAULT_ENV, conf_dir: Path | str | None = None) -> list[Traversable]:
    """The files :func:`load_config` reads, in order (what ``lrsweep config`` shows)."""
    folder = Path(conf_dir if conf_dir is not None else DEFAULT_CONF_DIR)
    folders: list[Traversable] = [PACKAGED_DEFAULTS]
    if _is_project_base(folder / "base"):
        folders.append(folder / "base")
    if (folder / env).is_dir():
        folders.append(folder / env)
    return [path for directory in folders for path in _yaml_files(directory)]


def _is_project_base(base_dir: Path) -> bool:
    """A ``base/`` of the project's own, not the packaged defaults (this repository links to them)."""
    return base_dir.is_dir() and str(base_dir.resolve()) != str(PACKAGED_DEFAULTS)


def validate_config(raw: Mapping[str, Any]) -> Config:
    """Validate a merged mapping into :class:`Config`, resolving relative table paths."""
    try:
        config = Config.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error)) from None
    return _resolve_paths(config)


def parse_override(override: str) -> dict[str, Any]:
    """``"train.epochs=5"`` -> ``{"train": {"epochs": 5}}``; the value is parsed as YAML."""
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {override!r}: expected dotted.key=value, e.g. --set train.epochs=5")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {override!r}: value is not valid YAML ({_yaml_problem(error)})") from None
    value = _yaml_float(value)
    nested: dict[str, Any] = {}
    cursor = nested
    parts = key.split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return nested


def _yaml_float(value: Any) -> Any:
    # YAML 1.1 reads "1e-3" as a string (users mean a number) and 2026-11-29 as a date (keep the text).
    if isinstance(value, datetime.date):
        return value.isoformat(sep=" ") if isinstance(value, datetime.datetime) else value.isoformat()
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if isinstance(value, list):
        return [_yaml_float(item) for item in value]
    if isinstance(value, dict):
        return {key: _yaml_float(item) for key, item in value.items()}
    return value


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``overlay`` into ``base``: mappings merge recursively, anything else is replaced."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _yaml_files(folder: Traversable) -> list[Traversable]:
    files = [entry for entry in folder.iterdir() if entry.is_file() and entry.name.endswith((".yml", ".yaml"))]
    return sorted(files, key=lambda entry: (not entry.name.endswith(".yml"), entry.name))


def _yaml_position(error: yaml.YAMLError) -> str:
    """``:<line>:<column>`` (1-based, as editors count) where the parser stopped, or ``""`` when unknown."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    return f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""


def _yaml_problem(error: yaml.YAMLError) -> str:
    """What the YAML parser found wrong, on one line (``mapping values are not allowed here``)."""
    problem = getattr(error, "problem", None)
    context = getattr(error, "context", None)
    text = "; ".join(str(part) for part in (context, problem) if part) or str(error)
    return " ".join(text.split())


def _read_folder(folder: Traversable) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path in _yaml_files(folder):
        try:
            content = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}{_yaml_position(error)}: not valid YAML: {_yaml_problem(error)}") from None
        if not isinstance(content, Mapping):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
        merged = deep_merge(merged, _yaml_float(content))
    return merged


# ----------------------------------------------------------------------------------------- table paths


def resolve_table(identifier: str, base: Path | None = None) -> str:
    """A relative local path made absolute against ``base`` (default: the working directory)."""
    if is_path(identifier) and "://" not in identifier and not identifier.startswith("file:"):
        path = Path(identifier)
        return str(path if path.is_absolute() else ((base or Path.cwd()) / path).resolve())
    return identifier


def resolve_tracking_uri(uri: str | None) -> str:
    """``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<working directory>/mlflow.db``; a
    relative sqlite path is made absolute against the working directory."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(Path.cwd() / uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def _resolve_paths(config: Config) -> Config:
    def table(value: str | None) -> str | None:
        return None if value is None else resolve_table(value)

    return config.model_copy(
        update={
            "data": config.data.model_copy(update={"table": table(config.data.table)}),
            "output": config.output.model_copy(
                update={
                    "results_table": table(config.output.results_table),
                    "predictions_table": table(config.output.predictions_table),
                    "checkpoints": table(config.output.checkpoints),
                }
            ),
            "scoring": config.scoring.model_copy(update={"input_table": table(config.scoring.input_table)}),
            "tracking": config.tracking.model_copy(update={"uri": resolve_tracking_uri(config.tracking.uri)}),
        }
    )


def overrides_from_pairs(pairs: Iterable[tuple[str, Any]]) -> list[str]:
    """Build ``--set`` strings from Python values (for notebooks and tests)."""
    return [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
            for key, value in pairs]
