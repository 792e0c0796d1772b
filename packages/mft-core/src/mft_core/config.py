"""Frozen config dataclasses filled from defaults < YAML file < flags, with unknown keys rejected.

Every command has one frozen dataclass. Its ``__post_init__`` checks field combinations and raises
:class:`ConfigError` naming the flags. This module only does the layering and the type coercion.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from .errors import ConfigError

T = TypeVar("T")


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _unknown_key_error(key: str, cls: type, where: str) -> ConfigError:
    names = field_names(cls)
    close = difflib.get_close_matches(key, names, n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"known keys: {', '.join(names)}"
    return ConfigError(f"unknown config key '{key}' in {where}", fix=hint)


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert ``value`` (from YAML or a ``--set`` string) to ``annotation``; raise ConfigError naming ``key``."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if annotation is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(exc.message)
        raise ConfigError(f"{key}: {value!r} fits none of the allowed types ({'; '.join(errors)})")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if annotation is int:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, str))
            or (isinstance(value, str) and not value.strip().lstrip("-").isdigit())
        ):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if annotation is float:
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if origin is tuple:
        if isinstance(value, str):  # ``a,b`` or YAML flow ``[a, b]``
            text = value.strip()
            value = yaml.safe_load(text) if text.startswith("[") else [v.strip() for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(coerce(v, item, key) for v in value)
    if origin in (dict, Mapping, typing.Mapping) or annotation is dict:
        if isinstance(value, str):
            value = _parse_mapping_string(value, key)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        kt, vt = (args + (Any, Any))[:2] if args else (Any, Any)
        return {coerce(k, kt, key): coerce(v, vt, key) for k, v in value.items()}
    if annotation is Path:
        return Path(value)
    return value


def _parse_mapping_string(text: str, key: str) -> Mapping:
    """``a=1,b=2`` or YAML flow ``{a: 1, b: 2}``."""
    text = text.strip()
    if text.startswith("{"):
        return yaml.safe_load(text)
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part and ":" not in part:
            raise ConfigError(f"{key}: expected name=value pairs, got {part!r}")
        name, val = part.split("=", 1) if "=" in part else part.split(":", 1)
        out[name.strip()] = yaml.safe_load(val.strip())
    return out


def parse_set_pairs(pairs: Iterable[str]) -> dict[str, Any]:
    """``["lr=1e-4", "peft=none"]`` -> ``{"lr": "1e-4", "peft": "none"}`` (values are coerced later)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: expected key=value")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return data


def build_config(
    cls: type[T],
    yaml_path: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    sets: Iterable[str] = (),
    base: Mapping[str, Any] | None = None,
) -> T:
    """Resolve a config: dataclass defaults < ``base`` < YAML file < typed ``flags`` (None = not given) < ``--set``.

    Raises:
        ConfigError: unknown key (with a suggestion), value of the wrong type, or a check in ``__post_init__``.
    """
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    layers: list[tuple[str, Mapping[str, Any]]] = [("defaults", base or {})]
    if yaml_path is not None:
        layers.append((str(yaml_path), load_yaml(yaml_path)))
    layers.append(("flags", {k: v for k, v in (flags or {}).items() if v is not None}))
    layers.append(("--set", parse_set_pairs(sets)))
    for where, layer in layers:
        for key, value in layer.items():
            if key not in hints:
                raise _unknown_key_error(key, cls, where)
            values[key] = coerce(value, hints[key], key)
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from exc


def config_to_dict(config: Any) -> dict[str, Any]:
    """A plain, JSON-able dict of a config dataclass (paths as strings, tuples as lists)."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, Mapping):
            value = dict(value)
        out[f.name] = value
    return out
