"""The parquet reader of CORPORA.yaml's file formats: a file's text column, one row group at a time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from ddk_store.errors import ConfigError, describe

if TYPE_CHECKING:
    from .corpus import DomainSource, ReadStats


def read_parquet(path: str, src: DomainSource, stats: ReadStats) -> Iterator[str]:
    """The non-blank strings of ``src.text_field`` in parquet file ``path``, in file order; counted in ``stats``."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a non-parquet file
        raise ConfigError(f"domain {src.name!r}: {path}: not a readable parquet file ({describe(e)})") from None
    names = pf.schema_arrow.names
    if src.text_field not in names:
        raise ConfigError(f"domain {src.name!r}: {path}: no column {src.text_field!r} (columns: {names}); "
                          f"fix 'text_field' in the corpora file")
    # Row groups one at a time: memory stays bounded for large files; order is the file's order.
    for i in range(pf.num_row_groups):
        for text in pf.read_row_group(i, columns=[src.text_field]).column(0).to_pylist():
            if isinstance(text, str) and text.strip():
                stats.n_documents += 1
                yield text
