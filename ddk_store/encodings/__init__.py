"""The registry of top-k encodings: one entry per name a store may record (docs/store-format.md, section 4).

Readers refuse a name that is not here. Adding an encoding (a sampled one, say) is one :class:`Encoding` subclass in
its own module and one entry below; the schema, writer, reader, validator and ``ddk-store info`` follow it.
"""

from __future__ import annotations

from .. import spec
from ..errors import StoreVersionError
from .base import PER_ENTRY, PER_POSITION, Encoding, StoredArray, TopK, id_dtype, id_fill
from .floor_tail import IdSortQ8Tail
from .sampled import Sampled
from .v1 import IdSortQ8, RankF16

#: name -> encoding, in spec.ENCODINGS order (with default parameters: :func:`encoding_for` binds a store's).
REGISTRY: dict[str, Encoding] = {e.name: e for e in (IdSortQ8Tail(), IdSortQ8(), RankF16(), Sampled())}
assert tuple(REGISTRY) == spec.ENCODINGS, "spec.ENCODINGS and the registry must list the same encodings"


def get_encoding(name: str) -> Encoding:
    """The encoding called ``name``; StoreVersionError naming it (and the known ones) if this ddk does not know it."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise StoreVersionError(f"unknown top-k encoding {name!r}; this ddk knows {list(REGISTRY)}: upgrade ddk to "
                                "read this store") from None


def encoding_for(meta) -> Encoding:
    """The encoding of a store (StoreMeta) with the parameters its metadata records (``sampling``)."""
    return get_encoding(meta.encoding).bind(meta)


__all__ = ["Encoding", "PER_ENTRY", "PER_POSITION", "REGISTRY", "StoredArray", "TopK", "encoding_for", "get_encoding",
           "id_dtype", "id_fill"]
