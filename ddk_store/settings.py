"""Settings dataclasses as command-line options and YAML files: the one kit behind every ddk command's flags.

A command's settings are one frozen dataclass whose fields are declared with :func:`setting` (default, help, and
optionally choices, required, path kind, flag name). From that dataclass this module makes, the same way for every
command:

- one click option per field: ``seq_len`` -> ``--seq-len``; booleans as ``--x/--no-x`` (so a ``true`` from a file
  can be switched off on the command line); a mapping as a repeatable ``--flag KEY=VALUE``; help text from the
  field, with ``[required]`` or ``[default: ...]``; plus ``--config FILE``;
- the precedence: defaults < ``--config FILE`` < flags actually typed on the command line;
- ``--config`` reading: keys written as fields or as flags (``seq-len`` == ``seq_len``), unknown keys reported with
  a "did you mean", values type-checked, relative paths resolved against the config file's folder;
- the checks every field gets (type, choices, required), run with the stage's own cross-field rules as one
  :class:`~ddk_store.errors.ConfigError` listing every problem.

Each stage keeps only its dataclass and its cross-field rules. No deep-learning imports.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from .entry import storage_options_callback
from .errors import ConfigError
from .paths import looks_like_path, resolve_against
from .yamlio import read_yaml

#: The click parameter name of ``--config FILE`` on every command built from a settings dataclass.
CONFIG_PARAM = "config_file"
#: Path kinds of a field (``setting(path=...)``): a local path or store URL, or a model (local directory or hub id).
PATH, MODEL = "path", "model"
#: Keys of a mapping setting (storage options) never written to a saved settings file: credentials.
_SECRET = re.compile(r"key|secret|token|password|credential|session", re.IGNORECASE)


def looks_secret(name: str) -> bool:
    """Whether an option's name marks a credential (``key``, ``aws_secret_access_key``, ``session_token``...): never
    written to a file or echoed into a suggested command."""
    return bool(_SECRET.search(str(name)))
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
#: Help of the storage-options setting of every command that opens a store.
STORAGE_OPTION_HELP = ("Option for s3:// stores as KEY=VALUE, e.g. endpoint_url=http://127.0.0.1:8333 (in a --config "
                       "file: a mapping storage_options: {endpoint_url: ...}); AWS_* environment variables are read as "
                       "usual.")


def setting(default: Any, help: str, *, choices: tuple[str, ...] | None = None, required: bool = False,
            path: str | None = None, flag: str | None = None, aliases: tuple[str, ...] = (),
            metavar: str | None = None, typed_only: bool = False) -> Any:
    """A settings field: its default and help text (the single source of the option's help and the docs).

    ``required``: must be given (flag or --config); shown as ``[required]``. ``path``: :data:`PATH` or :data:`MODEL`;
    relative values in a --config file are read from the file's folder. ``flag``: the spelling of the option in
    messages and docs when it is not the field's name with dashes (which is accepted too). ``aliases``: more option
    names for the same field. ``metavar``: the value's name in --help (e.g. ``URL``). ``typed_only``: a switch that
    is on only when typed: a settings file (which a teammate could have edited) may not turn it on
    (:func:`read_config`).
    """
    meta: dict[str, Any] = {"help": help}
    if choices:
        meta["choices"] = tuple(choices)
    if required:
        meta["required"] = True
    if path:
        meta["path"] = path
    if flag:
        meta["flag"] = flag
    if aliases:
        meta["aliases"] = tuple(aliases)
    if metavar:
        meta["metavar"] = metavar
    if typed_only:
        meta["typed_only"] = True
    return dataclasses.field(default=default, metadata=meta)


# ----------------------------------------------------------------------------------------------- field kinds
def kind(f: dataclasses.Field) -> tuple[str, bool]:
    """(base type, optional) of a field annotated ``int``, ``float``, ``str``, ``bool``, ``dict[...]``, ``X | None``."""
    text = str(f.type).replace(" ", "")
    optional = "|None" in text or "None|" in text
    base = text.replace("|None", "").replace("None|", "")
    return ("mapping" if base.startswith(("dict", "Mapping")) else base), optional


def flag_of(f: dataclasses.Field) -> str:
    """The command-line flag of a field: ``--seq-len`` for ``seq_len`` unless the field names its own."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def fields_of(cls_or_obj: Any) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls_or_obj)}


def _type_ok(base: str, value: Any) -> bool:
    if base == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if base == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if base == "mapping":
        return isinstance(value, Mapping) and all(isinstance(k, str) for k in value)
    return isinstance(value, {"str": str, "bool": bool}[base])


def _type_problem(f: dataclasses.Field, value: Any) -> str | None:
    base, optional = kind(f)
    if value is None and optional:
        return None
    if _type_ok(base, value):
        if base == "float" and not math.isfinite(value):  # (an infinite size or rate crashes far from its flag)
            return f"{flag_of(f)} must be a finite number, got {value!r}"
        return None
    want = "a mapping of KEY: VALUE" if base == "mapping" else base
    return f"field {f.name!r}: expected {want}, got {value!r} ({flag_of(f)}: expected {want})"


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """A YAML value as the field's type where that is lossless: ints and number-like text (YAML 1.1 reads ``3e-4``
    as a string) for floats."""
    if kind(f)[0] == "float" and not isinstance(value, bool):
        if isinstance(value, int):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return value
    return value


# ----------------------------------------------------------------------------------------------- checks
def type_problems(obj: Any) -> list[str]:
    """Every field of ``obj`` whose value is not of the field's type, naming the field and its flag."""
    return [p for f in dataclasses.fields(obj) if (p := _type_problem(f, getattr(obj, f.name)))]


def value_problems(obj: Any) -> list[str]:
    """Every required field left empty and every value outside its field's choices, naming the flag."""
    problems = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.metadata.get("required") and value in ("", None):
            problems.append(f"{flag_of(f)} is required")
        choices = f.metadata.get("choices")
        if choices and value is not None and value not in choices:
            problems.append(f"{flag_of(f)} must be one of {', '.join(choices)}, got {value!r}")
    return problems


def check(obj: Any, rules: Callable[[Any], list[str]] | None, what: str) -> None:
    """Raise one ConfigError listing every problem of ``obj`` (call it from ``__post_init__``): wrong types alone
    when there are any (the rest assumes the types), else empty required fields, values outside their choices and
    the stage's own ``rules`` (ranges, cross-field)."""
    problems = type_problems(obj) or value_problems(obj) + (rules(obj) if rules is not None else [])
    if problems:
        raise ConfigError(f"invalid {what}: " + "; ".join(problems))


def device_problem(flag: str, device: str, cuda_available: bool) -> str | None:
    """``--device cuda`` where torch sees no CUDA device (the caller asks torch; this module imports no torch)."""
    if device == "cuda" and not cuda_available:
        return (f"{flag} cuda: no CUDA device is available on this machine (torch.cuda.is_available() is False); "
                f"use {flag} cpu, or {flag} auto to use a GPU only when there is one")
    return None


# ----------------------------------------------------------------------------------------------- mappings, files
def unknown_key_hints(unknown: Sequence[str], valid: Sequence[str], valid_text: str | None = None) -> list[str]:
    """One message per unknown key, each named once: with the valid key it probably meant, and the valid keys
    (``valid_text``, default the list) once, after the last key without such a guess."""
    hints, unguessed = [], None
    for key in unknown:
        guess = difflib.get_close_matches(str(key).replace("-", "_"), list(valid), n=1, cutoff=0.6)
        hints.append(f"unknown key {str(key)!r} (did you mean {guess[0]!r}?)" if guess else f"unknown key {str(key)!r}")
        unguessed = unguessed if guess else len(hints) - 1
    if unguessed is not None:
        hints[unguessed] += f" (valid keys: {valid_text or ', '.join(valid)})"
    return hints


def normalize(cls: type, data: Mapping[Any, Any], where: str, *, base_dir: Path | None = None) -> dict[str, Any]:
    """``data`` (e.g. a YAML mapping) as field values of ``cls``: keys as fields or flags (``seq-len`` == ``seq_len``),
    values coerced and type-checked, relative paths read from ``base_dir`` when given.

    Raises:
        ConfigError: naming ``where``, with every unknown key (and the field it probably meant), key written twice
            and wrong type at once.
    """
    fs = fields_of(cls)
    by_flag = {flag_of(f)[2:].replace("-", "_"): name for name, f in fs.items()}
    out: dict[str, Any] = {}
    unknown: list[str] = []
    problems: list[str] = []
    for raw_key, value in data.items():
        key = str(raw_key).strip().replace("-", "_")
        key = key if key in fs else by_flag.get(key, key)
        if key not in fs:
            unknown.append(str(raw_key))
            continue
        if key in out:
            problems.append(f"key {raw_key!r} sets {key!r} a second time")
            continue
        out[key] = _coerce(fs[key], value)
        if problem := _type_problem(fs[key], out[key]):
            problems.append(problem)
    problems[:0] = unknown_key_hints(unknown, list(fs))
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems))
    return resolve_paths(cls, out, base_dir) if base_dir is not None else out


def read_config(cls: type, path: str | Path, *, flag: str = "--config", saved: bool = False,
                typed: Collection[str] = ()) -> dict[str, Any]:
    """The field values in a YAML settings file (see :func:`normalize`); relative paths are read from its folder.

    A ``typed_only`` field (:func:`setting`) is never taken from the file: off, it is dropped; on, it is refused (a
    file anyone who can write it could have edited), unless its flag was typed too (``typed``) or the file is
    ``saved`` (a run's own record of what it used, read to compare or resume).
    """
    data = read_yaml(Path(path).expanduser(), flag)  # (no shell expands the ~ of --config=~/x.yaml)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{flag} {path}: expected a mapping of field: value, got {type(data).__name__}")
    values = normalize(cls, data, f"{flag} {path}", base_dir=Path(path).expanduser().resolve().parent)
    for name, f in fields_of(cls).items():
        if f.metadata.get("typed_only") and name in values:
            if values.pop(name) and not saved and name not in typed:
                option = flag_of(f)
                raise ConfigError(f"{flag} {path}: {name}: true is not taken from a file, which anyone who can "
                                  f"write it could have edited; type {option} to turn it on")
    return values


def resolve_paths(cls: type, values: Mapping[str, Any], base_dir: Path) -> dict[str, Any]:
    """``values`` with every relative local path of a path-valued field taken relative to ``base_dir``.

    URLs (``s3://``, ``file://``, ``memory://``) and absolute paths are kept; a model value is resolved only when it
    is written as a path or names an existing entry under ``base_dir`` (otherwise it is a hub id).
    """
    fs = fields_of(cls)
    out = dict(values)
    for name, value in values.items():
        path_kind = fs[name].metadata.get("path") if name in fs else None
        if not path_kind or not isinstance(value, str) or not value or _SCHEME.match(value):
            continue
        if path_kind == MODEL and not (looks_like_path(value) or (base_dir / value).exists()):
            continue
        out[name] = resolve_against(value, base_dir)
    return out


def saved_dict(obj: Any) -> dict[str, Any]:
    """``obj`` as a mapping to write into a settings file: local paths absolute (the file can be used from any
    directory), credentials left out of mappings (storage options)."""
    values = resolve_paths(type(obj), dataclasses.asdict(obj), Path.cwd())
    for name, f in fields_of(obj).items():
        if kind(f)[0] == "mapping" and isinstance(values[name], Mapping):
            values[name] = without_secrets(values[name]) or None
    return values


def without_secrets(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` without the entries whose name looks like a credential, at any depth (``client_kwargs`` may hold
    ``aws_secret_access_key``)."""
    return {k: without_secrets(v) if isinstance(v, Mapping) else v for k, v in options.items()
            if not looks_secret(k)}


def build(cls: type, *layers: Mapping[str, Any]) -> Any:
    """An instance of ``cls`` from layers of field values, each overriding the ones before (defaults first)."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    return cls(**merged)


def from_mapping(cls: type, data: Mapping[Any, Any], where: str = "config") -> Any:
    """An instance of ``cls`` from one mapping (a saved config.yaml, a state file): :func:`normalize` then build."""
    return build(cls, normalize(cls, data, where))


def resolve(cls: type, typed: Mapping[str, Any], config: str | Path | None = None) -> Any:
    """defaults < ``config`` (a --config YAML file) < ``typed`` (flags typed on the command line; None = not typed)."""
    typed = {k: v for k, v in typed.items() if v is not None}
    return build(cls, read_config(cls, config, typed=typed) if config else {}, typed)


# ----------------------------------------------------------------------------------------------- click
def _default_text(f: dataclasses.Field) -> str:
    if f.metadata.get("required"):
        return " [required]"
    if kind(f)[0] == "bool" and f.default is not None:  # None: decided at run time (the help says how)
        return f" [default: {'on' if f.default else 'off'}]"
    if f.default in (None, "") or kind(f)[0] == "mapping":
        return ""
    return f" [default: {f.default}]"


def _option(f: dataclasses.Field) -> Callable:
    base, _ = kind(f)
    flag = flag_of(f)
    # ``flag`` is the spelling used in messages and docs, so --help lists it first; the field's own name as a flag
    # always works too (a test mirrors fields and flags), and ``aliases`` are further spellings.
    names = list(dict.fromkeys([flag, "--" + f.name.replace("_", "-"), *f.metadata.get("aliases", ())]))
    help_text = f.metadata["help"] + _default_text(f)
    if base == "bool":
        return click.option(*(f"{n}/--no-{n[2:]}" for n in names), f.name, default=None, help=help_text)
    if base == "mapping":
        return click.option(*names, f.name, multiple=True, metavar="KEY=VALUE", callback=storage_options_callback(flag, none_when_empty=True),
                            help=help_text + " Repeatable.")
    ptype: Any = click.Choice(f.metadata["choices"]) if "choices" in f.metadata else {
        "int": int, "float": float, "str": str}[base]
    return click.option(*names, f.name, type=ptype, default=None, metavar=f.metadata.get("metavar"), help=help_text)


def options(cls: type) -> Callable[[Callable], Callable]:
    """Decorator: ``--config FILE`` plus one option per field of ``cls`` (in field order, every default None so that
    a flag left out is told from a flag typed)."""
    def decorate(fn: Callable) -> Callable:
        for f in reversed(dataclasses.fields(cls)):
            fn = _option(f)(fn)
        return click.option(
            "--config", CONFIG_PARAM, type=click.Path(dir_okay=False), default=None, metavar="FILE",
            help="YAML file of these settings (keys as the flags, '-' or '_'; relative paths are read from the "
                 "file's folder); flags typed here override it.")(fn)
    return decorate


def typed_params(ctx: click.Context, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` whose flag was typed on the command line (or came from the environment)."""
    typed = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    return {name: ctx.params[name] for name in fields_of(cls)
            if name in ctx.params and ctx.get_parameter_source(name) in typed}


def from_command(cls: type, ctx: click.Context | None = None) -> Any:
    """The settings of the running command: defaults < its --config file < the flags typed."""
    ctx = ctx or click.get_current_context()
    return resolve(cls, typed_params(ctx, cls), ctx.params.get(CONFIG_PARAM))

