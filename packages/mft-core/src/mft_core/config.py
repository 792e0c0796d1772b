"""Frozen config dataclasses filled from defaults < YAML file < flags, with unknown keys rejected.

Every command has one frozen dataclass, the only declaration of its settings: each field is declared with
:func:`opt`, whose metadata holds the help text, the flag, whether the CLI shows it, and whether it counts toward
the "up to date" fingerprint and toward "the same run" on resume. :mod:`mft_core.cli_config` builds the Typer
command from it; :func:`fingerprint_config` gives the settings a manifest records. ``__post_init__`` checks field
combinations and raises :class:`ConfigError` naming the flags. This module does the layering and type coercion.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from .errors import ConfigError

T = TypeVar("T")
META = "mft"  # the key of a field's metadata that opt() fills


@dataclasses.dataclass(frozen=True)
class Setting:
    """What :func:`opt` records about one config field (``dataclasses.Field.metadata["mft"]``)."""

    help: str
    flags: tuple[str, ...] = ()  # Typer declarations; () = ``--field-name`` (bools: a plain ``--field-name`` switch)
    cli: bool = True  # a flag or argument of the command; False: YAML / ``--set`` only
    positional: bool = False  # an argument (tuples: one or more) instead of an option
    fingerprint: bool | Literal["non-default"] = True  # "non-default": counted only when not at its default
    same_run: bool = True  # False: may change between a checkpoint and its resume (logging, saving, paths)
    repeat: bool = False  # tuples: a repeatable option instead of one comma-separated value
    cli_type: Any = None  # the flag's type when it differs from the field's (see ``parse``)
    parse: Callable[[Any], Any] | None = None  # flag value -> field value
    aliases: Mapping[str, tuple[Any, str]] = dataclasses.field(default_factory=dict)  # switch -> (value, help)


def opt(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    flag: str | tuple[str, ...] | None = None,
    cli: bool = True,
    positional: bool = False,
    fingerprint: bool | Literal["non-default"] = True,
    same_run: bool = True,
    repeat: bool = False,
    cli_type: Any = None,
    parse: Callable[[Any], Any] | None = None,
    aliases: Mapping[str, tuple[Any, str]] | None = None,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
) -> Any:
    """A config field and everything said about it: ``out: str = opt("", help="Output folder.", fingerprint=False)``.

    ``flag``: Typer's declarations (``"--from"``, ``"--sym/--asym"``); default ``--field-name``, and for bools a
    switch that sets True. ``aliases``: extra switches that set a fixed value, ``{"--no-verify": ("none", help)}``.
    """
    flags = (flag,) if isinstance(flag, str) else tuple(flag or ())
    setting = Setting(help, flags, cli, positional, fingerprint, same_run, repeat, cli_type, parse, dict(aliases or {}))
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={META: setting})
    return dataclasses.field(default=default, metadata={META: setting})


def overwrite_opt() -> Any:
    """The ``--overwrite`` field every command that writes ``--out`` has."""
    return opt(False, help="Replace --out if it exists.", fingerprint=False, same_run=False)


def setting_of(f: dataclasses.Field) -> Setting | None:
    """The :class:`Setting` of a field declared with :func:`opt` (None for a plain field)."""
    return f.metadata.get(META)


def fingerprint_keys(config: Any) -> tuple[str, ...]:
    """The fields (of a config class or instance) that count toward the "up to date" fingerprint, in order.

    For an instance, ``fingerprint="non-default"`` fields are kept only when they differ from their default.
    """
    keys = []
    for f in dataclasses.fields(config):
        s = setting_of(f)
        counted = True if s is None else s.fingerprint
        if counted == "non-default":
            if isinstance(config, type) or getattr(config, f.name) == _default_of(f):
                continue
        elif not counted:
            continue
        keys.append(f.name)
    return tuple(keys)


def same_run_keys(config: Any) -> tuple[str, ...]:
    """The fields that must match for a resume to continue the same run (``same_run=False`` ones may change)."""
    return tuple(f.name for f in dataclasses.fields(config) if (setting_of(f) or Setting("")).same_run)


def fingerprint_config(config: Any) -> dict[str, Any]:
    """The settings an output records and is fingerprinted by: :func:`config_to_dict` on the fingerprint keys."""
    keys = fingerprint_keys(config)
    return {k: v for k, v in config_to_dict(config).items() if k in keys}


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


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
