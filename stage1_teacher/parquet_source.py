"""The parquet reader of CORPORA.yaml's file formats: a file's text column, one row group at a time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from ddk_store.errors import ConfigError, describe

from .text_decode import ReadStats, decode_text

if TYPE_CHECKING:
    from .corpus import DomainSource


def read_parquet(path: str, src: DomainSource, stats: ReadStats, on_bad_utf8: str) -> Iterator[str]:
    """The non-blank texts of ``src.text_field`` in parquet file ``path``, in file order; counted in ``stats``.

    The column (string or binary) is read as bytes and each value decoded: invalid UTF-8 (writers outside Arrow do
    not always check it) is skipped or refused as ``on_bad_utf8`` (--on-bad-utf8) says, naming the row.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a non-parquet file
        raise ConfigError(f"domain {src.name!r}: {path}: not a readable parquet file ({describe(e)})") from None
    names = pf.schema_arrow.names
    if src.text_field not in names:
        raise ConfigError(f"domain {src.name!r}: {path}: no column {src.text_field!r} (columns: {names}); "
                          f"fix 'text_field' in the corpora file")
    if names.count(src.text_field) > 1:  # (pyarrow would raise a KeyError saying the column does not exist)
        raise ConfigError(f"domain {src.name!r}: {path}: {names.count(src.text_field)} columns are named "
                          f"{src.text_field!r}; write the file with one column of that name")
    kind = pf.schema_arrow.field(src.text_field).type
    # text as it is stored: plain, large, dictionary-encoded (a pandas categorical) or view strings, or bytes
    values = kind.value_type if pa.types.is_dictionary(kind) else kind
    if not (pa.types.is_string(values) or pa.types.is_large_string(values) or pa.types.is_binary(values)
            or pa.types.is_large_binary(values) or str(values) in ("string_view", "binary_view")):
        raise ConfigError(f"domain {src.name!r}: {path}: column {src.text_field!r} holds {kind}, not text; fix "
                          f"'text_field' in the corpora file")
    # Row groups one at a time: memory stays bounded for large files; order is the file's order.
    row = 0
    for i in range(pf.num_row_groups):
        try:  # the footer read above is whole; a damaged page is found only as its row group is read
            column = pf.read_row_group(i, columns=[src.text_field]).column(0)
        except Exception as e:  # (OSError or ArrowInvalid, by the damage)
            raise ConfigError(f"domain {src.name!r}: {path}: row group {i + 1} of {pf.num_row_groups} is damaged "
                              f"({describe(e)}); write the file again") from None
        if pa.types.is_dictionary(column.type) or str(column.type).endswith("_view"):
            column = column.cast(pa.large_binary() if "binary" in str(values) else pa.large_string())
        column = column.cast(pa.large_binary())  # (no UTF-8 check: each value is decoded below, named by row)
        for raw in column.to_pylist():
            row += 1
            text = None if raw is None else decode_text(raw, f"{path}: row {row}", on_bad_utf8, stats)
            if text is not None and text.strip():
                stats.n_documents += 1
                yield text
