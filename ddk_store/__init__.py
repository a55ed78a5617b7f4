"""ddk_store: the shared, self-describing teacher-logit store (numpy + zarr only; see docs/store-format.md)."""

from ._version import __version__
from .errors import (
    ConfigError,
    DdkError,
    InvalidNameError,
    MissingDependencyError,
    ReadOnlyError,
    StoreCorruptError,
    StoreExistsError,
    StoreFormatError,
    StoreIncompleteError,
    StoreAccessError,
    StoreIOError,
    StoreNoSpaceError,
    StoreNotFoundError,
    StoreUnreachableError,
    StoreVersionError,
)
from .fingerprint import tokenizer_fingerprint
from .layout import Unit
from .meta import DomainInfo, SourceInfo, StoreMeta, TeacherInfo, TokenizerInfo, validate_domain_name
from .reader import RowBatch, StoredRows, StoreReader, open_store
from .writer import StoreWriter

__all__ = [
    "__version__", "ConfigError", "DdkError", "InvalidNameError", "MissingDependencyError", "ReadOnlyError",
    "StoreAccessError", "StoreCorruptError", "StoreIOError", "StoreExistsError", "StoreFormatError", "StoreIncompleteError", "StoreNoSpaceError", "StoreNotFoundError", "StoreUnreachableError",
    "StoreVersionError", "tokenizer_fingerprint", "Unit", "DomainInfo", "SourceInfo", "StoreMeta", "TeacherInfo",
    "TokenizerInfo", "validate_domain_name", "RowBatch", "StoredRows", "StoreReader", "open_store", "StoreWriter",
]
