"""Parsing fields of a decoded JSON document, each failure a StoreFormatError that names the field's dotted path.

General helpers with no knowledge of the store's documents; meta.py and schema.py build their parsers from them.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any, Mapping

from .errors import StoreFormatError


def shorten(text: str, limit: int = 80) -> str:
    """``text`` cut to at most ``limit`` characters, marked with '...' when cut (a damaged field can be huge)."""
    return text if len(text) <= limit else text[: max(0, limit - 3)] + "..."


def short_repr(value: Any, limit: int = 80) -> str:
    """repr of a received value for a message, cut short."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # ints beyond Python's digit limit, absurdly nested containers
        return f"<{type(value).__name__} too large to show>"
    return shorten(text, limit)


def field_path(ctx: str, key: str) -> str:
    return f"{ctx}.{key}" if ctx else key


def require(d: Mapping[str, Any], key: str, ctx: str) -> Any:
    """``d[key]``; StoreFormatError if ``d`` is not an object or has no ``key``."""
    if not isinstance(d, Mapping):
        raise StoreFormatError(f"field '{ctx or '<root>'}': expected an object, got {type(d).__name__}")
    if key not in d:
        raise StoreFormatError(f"field '{field_path(ctx, key)}' is missing")
    return d[key]


def has_control_chars(text: str) -> bool:
    """Whether ``text`` holds a C0 or C1 control character (a terminal escape, a newline): no name ddk records does."""
    return any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in text)


def parse_str(d: Mapping[str, Any], key: str, ctx: str = "", *, allow_empty: bool = True) -> str:
    value = require(d, key, ctx)
    if not isinstance(value, str) or (not allow_empty and not value):
        kind = "a non-empty string" if not allow_empty else "a string"
        raise StoreFormatError(f"field '{field_path(ctx, key)}': expected {kind}, got {short_repr(value)}")
    if has_control_chars(value):  # printed by `ddk-store info`: no escapes
        raise StoreFormatError(f"field '{field_path(ctx, key)}': holds control characters, which no name, path or "
                               f"value a writer records has ({short_repr(value)}); the metadata was tampered with")
    return value


def parse_int(d: Mapping[str, Any], key: str, ctx: str = "", *, lo: int | None = None, hi: int | None = None,
              optional: bool = False) -> int | None:
    if optional and d.get(key) is None:
        return None
    value = require(d, key, ctx)
    if isinstance(value, bool) or not isinstance(value, int) or (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f" in [{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise StoreFormatError(f"field '{field_path(ctx, key)}': expected int{rng}, got {short_repr(value)}")
    return value


def parse_float(d: Mapping[str, Any], key: str, ctx: str = "", *, optional: bool = False) -> float | None:
    if optional and d.get(key) is None:
        return None
    value = require(d, key, ctx)
    try:
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    except OverflowError:  # an int beyond float range
        number = math.nan
    if not math.isfinite(number):
        raise StoreFormatError(f"field '{field_path(ctx, key)}': expected a finite number, got {short_repr(value)}")
    return number


def reject_unknown(d: Mapping[str, Any], cls: type, ctx: str) -> None:
    """Refuse keys of ``d`` that are not fields of the dataclass ``cls`` (extensions named ``x_...`` pass)."""
    if not isinstance(d, Mapping):
        raise StoreFormatError(f"field '{ctx or '<root>'}': expected an object, got {type(d).__name__}")
    known = {f.name for f in fields(cls)}
    # Extensions are allowed under "x_..." keys (readers that do not understand them MUST ignore them).
    unknown = sorted(k for k in d if k not in known and not str(k).startswith("x_"))
    if unknown:
        raise StoreFormatError(
            f"unknown field(s) {unknown} in '{ctx or '<root>'}': this store was written by a newer ddk or edited by hand; "
            "extensions must be named 'x_...'"
        )
