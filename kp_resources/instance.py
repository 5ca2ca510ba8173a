"""The Dagster instance configuration (``$DAGSTER_HOME/dagster.yaml``), checked before start.

Dagster reports some mistakes in an instance file without the file or the key: an environment
variable that is not set ("You have attempted to fetch the environment variable ..."), a
misspelt key inside the ``config`` of a ``run_coordinator`` or ``compute_logs`` class ("at the
root"), a class that does not exist (only when it is first used, possibly mid-run).
:func:`check_instance_config` finds all of those up front and raises
:class:`InstanceConfigError`, whose message is ``"<file>: <key>: <problem>"``.

``make ui`` runs ``python -m kp_resources.instance`` before ``dagster dev``; ``kp demo`` opens
its instance through :func:`load_instance`.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from kp_resources.locations import REPO_ROOT

CONFIG_FILE = "dagster.yaml"
# top-level keys whose value is a configurable class: {module, class, config}
_CLASS_KEYS = (
    "local_artifact_storage",
    "compute_logs",
    "run_storage",
    "event_log_storage",
    "schedule_storage",
    "scheduler",
    "run_coordinator",
    "run_launcher",
    "defs_state_storage",
    "secrets",
    "instance_class",
)


class InstanceConfigError(ValueError):
    """A mistake in a Dagster instance file: ``str(err)`` is ``"<file>: <key>: <problem>"``."""

    def __init__(self, path: str | os.PathLike[str], key: str, problem: str):
        self.path, self.key, self.problem = str(path), key, problem
        super().__init__(f"{self.path}: {key}: {problem}")

    def __reduce__(self):
        return (type(self), (self.path, self.key, self.problem))


def instance_home() -> Path:
    """``$DAGSTER_HOME``, or the repository folder (where kp's ``dagster.yaml`` is)."""
    return Path(os.environ.get("DAGSTER_HOME") or REPO_ROOT).resolve()


def _env_references(value: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """``(key, variable)`` of every ``{env: VARIABLE}`` in a parsed config."""
    if isinstance(value, dict):
        if set(value) == {"env"} and isinstance(value["env"], str):
            yield key, value["env"]
            return
        for k, v in value.items():
            yield from _env_references(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _env_references(v, f"{key}[{i}]")


def _error_key(error: Any, prefix: str = "") -> str:
    """The dotted key of a Dagster config ``EvaluationError`` (plus the offending field)."""
    from dagster._config.stack import (
        EvaluationStackListItemEntry,
        EvaluationStackMapKeyEntry,
        EvaluationStackMapValueEntry,
        EvaluationStackPathEntry,
    )

    parts = [prefix] if prefix else []
    for entry in error.stack.entries:
        if isinstance(entry, EvaluationStackPathEntry):
            parts.append(entry.field_name)
        elif isinstance(entry, EvaluationStackListItemEntry):
            parts[-1:] = [f"{parts[-1] if parts else ''}[{entry.list_index}]"]
        elif isinstance(entry, EvaluationStackMapKeyEntry | EvaluationStackMapValueEntry):
            parts.append(str(entry.map_key))
    data = error.error_data
    names = getattr(data, "field_names", None) or (
        [data.field_name] if getattr(data, "field_name", None) else []
    )
    key = ".".join(parts)
    if names:
        key = ", ".join(f"{key}.{n}" if key else n for n in names)
    return key or "(top level)"


def _leaf_keys(value: Any, key: str = "") -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaf_keys(v, f"{key}.{k}" if key else str(k))
    elif key:
        yield key


def _key_named_in(config: dict[str, Any], message: str, default: str) -> str:
    """The deepest key of ``config`` whose last part the error message names, else ``default``."""
    words = set(re.findall(r"\w+", message)) - {"module", "class", "config", "env"}
    named = [k for k in _leaf_keys(config) if k.rsplit(".", 1)[-1] in words]
    return max(named, key=lambda k: k.count(".")) if named else default


def _check_schema(path: Path, schema: Any, value: Any, prefix: str = "") -> None:
    from dagster._config.validate import validate_config

    result = validate_config(schema, value)
    if not result.success:
        error = result.errors[0]
        raise InstanceConfigError(path, _error_key(error, prefix), error.message)


def _check_class(path: Path, key: str, spec: Any) -> None:
    """A ``{module, class, config}`` entry: the class exists and its config is valid."""
    if not isinstance(spec, dict) or not {"module", "class"} <= set(spec):
        return  # Dagster's schema check reports the shape
    try:
        module = importlib.import_module(spec["module"])
    except ImportError as e:
        raise InstanceConfigError(
            path, f"{key}.module", f"cannot import module {spec['module']!r} ({e})"
        ) from e
    klass = getattr(module, spec["class"], None)
    if klass is None:
        raise InstanceConfigError(
            path, f"{key}.class", f"module {spec['module']!r} has no class {spec['class']!r}"
        )
    config_type = getattr(klass, "config_type", None)
    if callable(config_type):
        _check_schema(path, config_type(), spec.get("config") or {}, prefix=f"{key}.config")


def check_instance_config(home: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Check ``<home>/dagster.yaml`` (``home`` defaults to :func:`instance_home`) without
    opening any storage; returns the parsed file. Raises :class:`InstanceConfigError`."""
    from dagster._core.errors import DagsterInvalidConfigError
    from dagster._core.instance.config import dagster_instance_config

    home = Path(home) if home is not None else instance_home()
    path = home / CONFIG_FILE
    if not path.is_file():
        raise InstanceConfigError(
            path,
            "(file)",
            "not found: DAGSTER_HOME must be a folder holding a dagster.yaml "
            "(the repository's, or a link to dagster.postgres.yaml)",
        )
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        raise InstanceConfigError(path, where, f"not valid YAML: {e.problem or e}") from e
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as e:
        raise InstanceConfigError(path, "(file)", f"cannot be read: {e}") from e
    if not isinstance(config, dict):
        raise InstanceConfigError(path, "(top level)", "must be a mapping of settings")

    for key, variable in _env_references(config):
        if variable not in os.environ:
            raise InstanceConfigError(path, key, f"environment variable {variable} is not set")

    try:
        dagster_instance_config(str(home), CONFIG_FILE)
    except DagsterInvalidConfigError as e:
        if e.errors:
            error = e.errors[0]
            raise InstanceConfigError(path, _error_key(error), error.message) from e
        raise InstanceConfigError(path, "(top level)", str(e).splitlines()[0]) from e

    for key in _CLASS_KEYS:
        if key in config:
            _check_class(path, key, config[key])
    storage = config.get("storage")
    if isinstance(storage, dict) and "custom" in storage:
        _check_class(path, "storage.custom", storage["custom"])
    if isinstance(storage, dict) and "postgres" in storage:
        try:
            importlib.import_module("dagster_postgres")
        except ImportError as e:
            raise InstanceConfigError(
                path, "storage.postgres", "needs the dagster-postgres package (make install)"
            ) from e
    return config


def load_instance(home: str | os.PathLike[str] | None = None):
    """The :class:`dagster.DagsterInstance` of ``home`` (default :func:`instance_home`), after
    :func:`check_instance_config`; its storage, run coordinator and launcher are opened here,
    so a wrong database address fails now, naming the file, not in the middle of a run."""
    import dagster as dg

    home = Path(home) if home is not None else instance_home()
    config = check_instance_config(home)
    path = home / CONFIG_FILE
    try:
        instance = dg.DagsterInstance.from_config(str(home))
    except Exception as e:
        message = f"{type(e).__name__}: {e}"
        raise InstanceConfigError(path, _key_named_in(config, message, "storage"), message) from e
    for key, attribute in (
        ("run_coordinator", "run_coordinator"),
        ("run_launcher", "run_launcher"),
        ("compute_logs", "compute_log_manager"),
        ("local_artifact_storage", "_local_artifact_storage"),
    ):
        try:
            getattr(instance, attribute)
        except Exception as e:
            instance.dispose()
            raise InstanceConfigError(path, key, f"{type(e).__name__}: {e}") from e
    return instance


def describe(home: str | os.PathLike[str] | None = None) -> str:
    """One line on the checked instance: file, storage kind, run limit."""
    home = Path(home) if home is not None else instance_home()
    config = check_instance_config(home)
    storage = next(iter(config.get("storage") or {"sqlite": None}))
    limit = ((config.get("concurrency") or {}).get("runs") or {}).get("max_concurrent_runs")
    coordinator = (config.get("run_coordinator") or {}).get("class", "default run coordinator")
    return (
        f"{home / CONFIG_FILE}: ok ({storage} storage, {coordinator}, "
        f"max_concurrent_runs {limit if limit is not None else 'default'})"
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m kp_resources.instance [DAGSTER_HOME]``: exit 0 and one line if the instance
    file is usable, else exit 2 with ``<file>: <key>: <problem>`` on stderr."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        print(describe(argv[0] if argv else None))
    except InstanceConfigError as e:
        print(f"Dagster instance configuration error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
