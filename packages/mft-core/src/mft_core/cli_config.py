"""Typer commands generated from a config dataclass: its fields declared with :func:`mft_core.config.opt` are the
command's arguments and options, plus ``--config FILE`` (YAML) and ``--set key=value`` for every key.

    @config_command(app, GPTQConfig)
    def gptq(cfg: GPTQConfig) -> None:
        \"\"\"GPTQ-quantize MODEL ...\"\"\"  # the command's help

Precedence: dataclass defaults < ``base`` < the YAML file < flags < ``--set`` (see
:func:`mft_core.config.build_config`). A flag left out is not a value, so YAML keys are never overridden by a
flag's default. Types on the command line: tuples are one comma-separated value (or a repeatable option with
``repeat=True``, or one or more arguments when positional), ``Literal`` and mappings are text checked by the
config, bools are switches unless ``flag`` says ``--x/--no-x``.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import typer

from .config import Setting, build_config, setting_of
from .ui import cli_errors

C = TypeVar("C")
CONFIG_PARAM = "mft_config_file"  # the Typer parameter names of --config and --set (never field names)
SETS_PARAM = "mft_set_pairs"
CONFIG_HELP = "YAML file with this command's settings (any config key); flags win."
_ANNOTATED: Any = Annotated  # annotations built at run time (mypy checks written ones only)
_NO_VALUE = object()  # a flag's binding (not an alias's fixed value)
SETS_HELP = "Set any config key, YAML-only ones included: --set key=value (repeatable; wins over flags)."


@dataclasses.dataclass(frozen=True)
class Binding:
    """One generated Typer parameter: the field it sets, and how (a flag's value, or an alias's fixed value)."""

    field: str
    parse: Callable[[Any], Any] | None = None
    alias_value: Any = _NO_VALUE


def cli_settings(cls: type) -> list[tuple[dataclasses.Field, Setting]]:
    """The fields of ``cls`` shown on the command line, in declaration order (a base class's first)."""
    return [(f, s) for f in dataclasses.fields(cls) if (s := setting_of(f)) is not None and s.cli]


def _strip_optional(hint: Any) -> Any:
    if get_origin(hint) in (Union, types.UnionType):
        rest = [a for a in get_args(hint) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return hint


def _cli_type(hint: Any, s: Setting) -> Any:
    if s.cli_type is not None:
        return s.cli_type
    base = _strip_optional(hint)
    origin = get_origin(base)
    if origin is tuple:
        return list[str] if (s.repeat or s.positional) else str
    if origin is Literal:
        kinds = {type(a) for a in get_args(base)}
        return kinds.pop() if len(kinds) == 1 and kinds <= {int, float, str} else str
    if base in (bool, int, float, str, Path):
        return base
    return str  # unions, mappings: text the config coerces and checks


def _flag_decls(f: dataclasses.Field, s: Setting) -> tuple[str, ...]:
    return s.flags or ("--" + f.name.replace("_", "-"),)


def command_params(cls: type, only: Iterable[str] | None = None) -> tuple[list[inspect.Parameter], dict[str, Binding]]:
    """The Typer parameters of ``cls`` (annotated ``typer.Argument``/``typer.Option``) and what each one sets;
    ``only``: just these of its CLI fields (a command that shares its dataclass with others)."""
    chosen = None if only is None else set(only)
    hints = typing.get_type_hints(cls)
    positional: list[inspect.Parameter] = []
    options: list[inspect.Parameter] = []
    bindings: dict[str, Binding] = {}
    kw = inspect.Parameter.KEYWORD_ONLY
    for f, s in cli_settings(cls):
        if chosen is not None and f.name not in chosen:
            continue
        t = _cli_type(hints[f.name], s)
        if s.positional:
            ann = _ANNOTATED[t, typer.Argument(help=s.help, show_default=False)]
            positional.append(inspect.Parameter(f.name, kw, annotation=ann))
        else:
            ann = _ANNOTATED[t | None, typer.Option(*_flag_decls(f, s), help=s.help, show_default=False)]
            options.append(inspect.Parameter(f.name, kw, default=None, annotation=ann))
        bindings[f.name] = Binding(f.name, s.parse)
        for i, (switch, (value, alias_help)) in enumerate(s.aliases.items()):
            name = f"{f.name}__alias{i}"
            ann = _ANNOTATED[bool, typer.Option(switch, help=alias_help, show_default=False)]
            options.append(inspect.Parameter(name, kw, default=False, annotation=ann))
            bindings[name] = Binding(f.name, alias_value=value)
    return positional + options, bindings


def flags_from_params(values: Mapping[str, Any], bindings: Mapping[str, Binding]) -> dict[str, Any]:
    """Typer's keyword arguments -> ``{field: value}`` for the flags given (an alias wins over its field's flag)."""
    flags: dict[str, Any] = {}
    for name, value in values.items():
        b = bindings[name]
        if b.alias_value is _NO_VALUE and value is not None:
            flags[b.field] = b.parse(value) if b.parse else value
    for name, value in values.items():
        b = bindings[name]
        if b.alias_value is not _NO_VALUE and value:
            flags[b.field] = b.alias_value
    return flags


def config_command(
    app: typer.Typer,
    cls: type[C],
    *,
    name: str | None = None,
    base: Mapping[str, Any] | None = None,
    config_argument: str | None = None,
    only: Iterable[str] | None = None,
    generic: bool = True,
) -> Callable[[Callable[[C], Any]], Callable[[C], Any]]:
    """Register ``fn(cfg)`` as a command of ``app`` whose parameters are generated from ``cls``.

    ``base``: defaults of this command over the dataclass's (a YAML file, flags and ``--set`` still win).
    ``config_argument``: make the YAML file a required argument with this help instead of ``--config``.
    ``only``: expose just these CLI fields (the others stay YAML / ``--set`` keys). ``generic=False``: no
    ``--config``/``--set`` (a command whose own fields are named so, e.g. a launcher passing them on).
    The registered callback carries ``mft_config`` (the class), ``mft_bindings`` (parameter -> field) and
    ``mft_fields`` (the fields it exposes).
    """

    def decorate(fn: Callable[[C], Any]) -> Callable[[C], Any]:
        params, bindings = command_params(cls, only)
        kw = inspect.Parameter.KEYWORD_ONLY
        if generic and config_argument is not None:
            config_param = inspect.Parameter(
                CONFIG_PARAM,
                kw,
                annotation=_ANNOTATED[Path, typer.Argument(help=config_argument, metavar="config", show_default=False)],
            )
            params.insert(0, config_param)
        elif generic:
            ann = _ANNOTATED[Path | None, typer.Option("--config", help=CONFIG_HELP, show_default=False)]
            params.append(inspect.Parameter(CONFIG_PARAM, kw, default=None, annotation=ann))
        if generic:
            ann = _ANNOTATED[list[str] | None, typer.Option("--set", help=SETS_HELP, show_default=False)]
            params.append(inspect.Parameter(SETS_PARAM, kw, default=None, annotation=ann))

        def callback(**values: Any) -> Any:
            yaml_path = values.pop(CONFIG_PARAM, None)
            sets = values.pop(SETS_PARAM, None) or ()
            cfg = build_config(cls, yaml_path, flags_from_params(values, bindings), sets, base=base)
            return fn(cfg)

        callback.__name__ = fn.__name__
        callback.__qualname__ = fn.__qualname__
        callback.__doc__ = fn.__doc__
        callback.__module__ = fn.__module__
        callback.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        callback.__annotations__ = {p.name: p.annotation for p in params}
        callback.mft_config = cls  # type: ignore[attr-defined]
        callback.mft_bindings = bindings  # type: ignore[attr-defined]
        callback.mft_fields = frozenset(b.field for b in bindings.values())  # type: ignore[attr-defined]
        app.command(name)(cli_errors(callback))
        return fn

    return decorate
