"""Config files of the ``scae`` command: TOML or YAML whose keys are exactly a tool's keyword arguments."""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from pathlib import Path

#: Arguments a config file cannot set (the data and in-memory options).
NOT_CONFIGURABLE = ("adata", "model", "copy")


class ConfigError(ValueError):
    """A config file or command-line value that does not fit the tool's arguments (exit code 2)."""


def arguments(func) -> dict[str, tuple[inspect.Parameter, object]]:
    """Configurable keyword arguments of ``func`` with their resolved type hints, read from its signature."""
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # an annotation that cannot be resolved: accept any value for it
        hints = {}
    return {
        name: (p, hints.get(name, typing.Any))
        for name, p in inspect.signature(func).parameters.items()
        if name not in NOT_CONFIGURABLE and p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def read_config(path) -> dict:
    """Read a ``.toml`` (stdlib tomllib) or ``.yaml``/``.yml`` (PyYAML, safe loader) file into a dict."""
    path = Path(path)
    if not path.is_file():
        msg = f"config file not found: {path}"
        raise ConfigError(msg)
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib

            cfg = tomllib.loads(path.read_text())
        elif suffix in (".yaml", ".yml"):
            import yaml

            cfg = yaml.safe_load(path.read_text())
            cfg = {} if cfg is None else cfg
        else:
            msg = f"config file {path} must end in .toml, .yaml or .yml"
            raise ConfigError(msg)
    except ConfigError:
        raise
    except Exception as e:  # tomllib.TOMLDecodeError, yaml.YAMLError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        msg = f"cannot parse config file {path}: {first}"
        raise ConfigError(msg) from e
    if not isinstance(cfg, dict):
        msg = f"config file {path} must hold key = value pairs at top level, got {type(cfg).__name__}"
        raise ConfigError(msg)
    return cfg


def _type_name(hint) -> str:
    return (
        str(hint)
        .replace("collections.abc.", "")
        .replace("typing.", "")
        .replace("os.", "")
        .replace("<class '", "")
        .replace("'>", "")
    )


def _matches(value, hint) -> bool:
    if hint is typing.Any:
        return True
    if hint is type(None):
        return value is None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, list | tuple):
            return False
        inner = args[0] if args else typing.Any
        return all(_matches(v, inner) for v in value)
    if origin in (dict, collections.abc.Mapping):
        return isinstance(value, dict)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def check(values: dict, func, *, source: str) -> dict:
    """Return ``values`` after checking every key is an argument of ``func`` and every value fits its type."""
    args = arguments(func)
    for key, value in values.items():
        if key not in args:
            msg = (
                f"unknown key {key!r} in {source}; valid keys are the arguments of "
                f"{func.__module__}.{func.__name__}: {', '.join(args)}"
            )
            raise ConfigError(msg)
        hint = args[key][1]
        if isinstance(value, str) and not _matches(value, hint) and _matches(1.5, hint):
            try:  # PyYAML reads exponent floats without a dot (1e-3) as strings
                values[key] = value = float(value)
            except ValueError:
                pass
        if not _matches(value, hint):
            msg = f"{source}: {key!r} must be {_type_name(hint)}, got {type(value).__name__} {value!r}"
            raise ConfigError(msg)
    return values


def resolve(config_path, func, flags: dict, table) -> tuple[dict, dict]:
    """The options of a command: the config file's values overridden by the ``flags`` given (not ``None``).

    Both checked against ``func``'s signature, then every setting against ``table`` (:mod:`scae._settings`),
    before any input is read; a problem raises :class:`ConfigError`. Returns ``(values, config values)``.
    """
    from . import _settings

    cfg = check(read_config(config_path), func, source=config_path) if config_path else {}
    given = {k: v for k, v in flags.items() if v is not None}
    values = check({**cfg, **given}, func, source="the command line")
    try:
        _settings.check_given(table, func, values)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from e
    return values, cfg
