"""Whether a run may resume an existing store: the first difference between two store identities, in user terms.

The one place that compares a new run's :class:`StoreMeta` with the one already in a store. A writer names the
difference by its dotted path (``meta.seq_len: store has 16, this run has 8``); a command that knows its flags
passes ``names`` (identity path -> flag, in the order a user thinks of them), and a difference among those is
named by the flag instead (``--top-k was 8, this run has 4``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .meta import StoreMeta

#: Top-level identity fields in the order a difference is looked for: settings a user chooses on the command line
#: first (they are what to fix), then what follows from them (teacher, tokenizer, per-domain provenance).
DIFF_FIRST = ("seq_len", "top_k", "encoding", "logprob_scale", "settings", "teacher", "tokenizer", "domains")

#: How long a value may be written into a difference message before it is shortened.
_SHOW = 80


def _diff_order(key: Any) -> tuple[int, str]:
    return (DIFF_FIRST.index(key) if key in DIFF_FIRST else len(DIFF_FIRST), str(key))


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """Dotted path and values of the first difference between two JSON-like values (``DIFF_FIRST`` keys first).

    Lists and tuples of equal contents are equal (one side may come from JSON, the other from dataclasses).
    """
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in sorted(set(a) | set(b), key=_diff_order):
            sub = f"{path}.{key}" if path else str(key)
            if key not in a or key not in b:
                return f"{sub}: store has {a.get(key, '<absent>')!r}, this run has {b.get(key, '<absent>')!r}"
            diff = first_difference(a[key], b[key], sub)
            if diff:
                return diff
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            diff = first_difference(x, y, f"{path}[{i}]")
            if diff:
                return diff
        return None
    return None if a == b else f"{path}: store has {a!r}, this run has {b!r}"


def value_at(doc: Any, path: str) -> Any:
    """The value at a dotted ``path`` of a JSON-like document; ``*`` maps over a list; None where it is absent.

    ``value_at(identity, "settings.heldout_seqs")``, ``value_at(identity, "domains.*.sources")``.
    """
    head, _, rest = path.partition(".")
    if head == "*":
        if not isinstance(doc, (list, tuple)):
            return None
        return [value_at(item, rest) if rest else item for item in doc]
    value = doc.get(head) if isinstance(doc, Mapping) else None
    return value_at(value, rest) if rest else value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) < _SHOW else text[: _SHOW - 3] + "..."


def identity_difference(existing: StoreMeta, new: StoreMeta, names: Mapping[str, str] | None = None) -> str | None:
    """The first difference between the identity of the store there and this run's (None: the run may resume it).

    Args:
        existing: the metadata in the store.
        new: the metadata this run would write.
        names: dotted identity path -> the setting's name for the user (a flag), checked first in this order.

    Returns:
        ``"--flag was OLD, this run has NEW"`` for a named setting, else ``"meta.PATH: store has OLD, this run has
        NEW"``, or None when the identities match.
    """
    a, b = existing.identity(), new.identity()
    for path, name in (names or {}).items():
        old, ours = value_at(a, path), value_at(b, path)
        if first_difference(old, ours) is not None:
            return f"{name} was {_show(old)}, this run has {_show(ours)}"
    return first_difference({"meta": a}, {"meta": b})
