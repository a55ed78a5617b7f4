"""--on-bad-utf8 and byte-order-mark contracts that mutation campaign 16 found unchecked, on text_decode's own
functions: what is text (UTF-8 only, a BOM inside a document kept), what fails or is skipped and how it is counted,
and which files start with a BOM. Expected values are written by hand from the rules."""

from __future__ import annotations

import pytest

from ddk_store.errors import ConfigError
from stage1_teacher.text_decode import ReadStats, decode_text, starts_with_bom, unicode_ok


def test_valid_utf8_is_decoded_as_utf8_and_a_bom_inside_a_document_is_kept():
    """Multi-byte UTF-8 is decoded as UTF-8 (not Latin-1), and a leading U+FEFF of a document (not of a file)
    stays in its text: only the reader drops a BOM, at the start of a file."""
    stats = ReadStats()
    assert decode_text("caf\u00e9 \u4e2d".encode(), "f:1", "fail", stats) == "caf\u00e9 \u4e2d"
    assert decode_text(b"\xef\xbb\xbfx", "f:2", "fail", stats) == "\ufeffx"
    assert (stats.n_skipped, stats.skipped_where) == (0, [])


@pytest.mark.parametrize("bad", [b"ab\xffcd", b"\xc3", b"\xed\xa0\x80"])  # stray byte, cut sequence, surrogate
def test_invalid_utf8_fails_by_location_or_is_skipped_and_counted(bad):
    """on_bad_utf8='fail': one ConfigError naming the location and the skip flag; 'skip': None (never a text
    with replacement characters), counted once with its location."""
    with pytest.raises(ConfigError, match=r"^data.txt:7: not valid UTF-8 .*--on-bad-utf8 skip"):
        decode_text(bad, "data.txt:7", "fail", ReadStats())
    stats = ReadStats()
    assert decode_text(bad, "data.txt:7", "skip", stats) is None
    assert (stats.n_skipped, stats.skipped_where) == (1, ["data.txt:7"])


def test_a_lone_surrogate_in_decoded_text_fails_or_is_skipped():
    """A JSON \\ud800 escape (valid JSON, no UTF-8 text): refused by unicode_ok like invalid bytes; good text
    is returned as it is."""
    with pytest.raises(ConfigError, match=r"^d.jsonl:3: a lone surrogate"):
        unicode_ok("ok \ud800 no", "d.jsonl:3", "fail", ReadStats())
    stats = ReadStats()
    assert unicode_ok("ok \ud800 no", "d.jsonl:3", "skip", stats) is None
    assert unicode_ok("fine \U0001f600", "d.jsonl:4", "skip", stats) == "fine \U0001f600"
    assert (stats.n_skipped, stats.skipped_where) == (1, ["d.jsonl:3"])


def test_every_skip_is_counted_but_only_the_first_five_locations_are_kept():
    """Seven skipped documents: n_skipped is 7, skipped_where the first five locations, in order."""
    stats = ReadStats()
    for i in range(7):
        assert decode_text(b"\xff", f"f:{i}", "skip", stats) is None
    assert stats.n_skipped == 7 and stats.skipped_where == [f"f:{i}" for i in range(5)]


@pytest.mark.parametrize("head, has_bom", [(b"\xef\xbb\xbfhello", True), (b"\xef\xbb\xbf", True),
                                           (b"\xef\xbb\xbehello", False), (b"\xef\xbb", False), (b"", False),
                                           (b"hello \xef\xbb\xbf", False)])
def test_a_file_starts_with_a_bom_only_when_its_first_three_bytes_are_ef_bb_bf(tmp_path, head, has_bom):
    """starts_with_bom (the plan's ``utf8_bom: dropped`` note) looks at exactly the first three bytes: U+FEFE
    (EF BB BE, valid UTF-8 text), a cut mark or a mark later in the file are no BOM."""
    p = tmp_path / "f.txt"
    p.write_bytes(head)
    assert starts_with_bom(str(p)) is has_bom
