"""--on-bad-utf8: documents decoded as UTF-8 text, and what is skipped counted (a read's :class:`ReadStats`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ddk_store.errors import ConfigError


@dataclass
class ReadStats:
    """Counters filled while a domain's documents are read."""

    n_documents: int = 0
    n_skipped: int = 0  # documents dropped for invalid UTF-8 (on_bad_utf8="skip")
    skipped_where: list[str] = field(default_factory=list)  # first few locations, for the summary



#: The UTF-8 byte-order mark. Editors on Windows start text files with it: at the start of a file it marks the
#: encoding and is dropped (it is no text, and would become a token of the file's first document, or of every
#: document of a ``files`` domain); anywhere else it is kept, as the character U+FEFF.
UTF8_BOM = b"\xef\xbb\xbf"


def without_bom(raw: bytes) -> bytes:
    """``raw``, the first line or whole contents of a file, without a leading UTF-8 byte-order mark."""
    return raw[len(UTF8_BOM):] if raw.startswith(UTF8_BOM) else raw


def starts_with_bom(path: str) -> bool:
    """Whether the file at ``path`` starts with a UTF-8 byte-order mark."""
    with open(path, "rb") as f:
        return f.read(len(UTF8_BOM)) == UTF8_BOM


def decode_text(raw: bytes, where: str, on_bad_utf8: str, stats: ReadStats) -> str | None:
    """``raw`` as UTF-8 text, or None (counted) when it is not valid UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return _bad_text(f"not valid UTF-8 ({e.reason} at byte {e.start})", where, on_bad_utf8, stats)


def unicode_ok(text: str, where: str, on_bad_utf8: str, stats: ReadStats) -> str | None:
    """``text``, or None (counted) when it holds a lone surrogate: a JSON escape such as \\ud800 (half of an emoji
    cut by a scraper) is valid JSON and valid UTF-8 bytes, but no UTF-8 text, and tokenizers refuse it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return _bad_text(f"a lone surrogate {text[e.start]!r} at character {e.start} (a broken \\u escape), not "
                         f"valid UTF-8 text", where, on_bad_utf8, stats)
    return text


def _bad_text(what: str, where: str, on_bad_utf8: str, stats: ReadStats) -> None:
    """--on-bad-utf8: fail naming ``where`` and ``what``, or skip the document and count it."""
    if on_bad_utf8 == "fail":
        raise ConfigError(f"{where}: {what}; fix the file, or pass --on-bad-utf8 skip to skip and count such "
                          f"documents")
    stats.n_skipped += 1
    if len(stats.skipped_where) < 5:
        stats.skipped_where.append(where)
    return None
