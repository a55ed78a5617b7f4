"""Typed errors for ddk: every user-facing failure is a DdkError subclass with an actionable message."""

from __future__ import annotations


class DdkError(ValueError):
    """Root of all ddk errors. CLIs print ``str(err)`` on one line and exit non-zero, without a traceback."""


class StoreFormatError(DdkError):
    """Store metadata or array layout does not match docs/store-format.md."""


class StoreVersionError(StoreFormatError):
    """The store was written with a format major version or an encoding this reader does not know."""


class StoreNotFoundError(DdkError, FileNotFoundError):
    """No ddk store at the given URL."""


class StoreExistsError(DdkError, FileExistsError):
    """A store (or other data) already exists where a new store should be created."""


class StoreIncompleteError(DdkError):
    """The store is still being written (or its writer died): it must be resumed or finalized first."""


class StoreCorruptError(DdkError):
    """Stored data fails its checksums or invariants."""


class ReadOnlyError(DdkError, PermissionError):
    """A write was attempted through a read-only handle."""


class InvalidNameError(DdkError):
    """A name that becomes a path component (domain, split) is not allowed."""


class ConfigError(DdkError):
    """A configuration value (flag, YAML field) is invalid."""


class MissingDependencyError(DdkError, ImportError):
    """An optional dependency needed by the requested feature is not installed."""


class StoreIOError(DdkError):
    """A store operation failed for a reason outside ddk (network, permissions); the message ends with how to resume.

    ``detail`` says what failed and why, ``hint`` how to continue; a caller that resumes differently (the trainer's
    ``--resume``) swaps the hint with :meth:`with_hint`.
    """

    default_hint = "rerun the same command to resume"

    def __init__(self, detail: str, hint: str | None = None) -> None:
        self.detail, self.hint = detail, hint or self.default_hint
        super().__init__(f"{detail}; {self.hint}")

    def with_hint(self, hint: str) -> StoreIOError:
        """The same error with another way to resume."""
        return type(self)(self.detail, hint)


class StoreUnreachableError(StoreIOError, ConnectionError):
    """The store (usually an object store) kept failing with transient errors for longer than the retry budget."""

    default_hint = "rerun the same command to resume once it is reachable"


class StoreAccessError(StoreIOError, PermissionError):
    """The store refused an operation for lack of permission (S3 403, wrong credentials, a read-only directory)."""

    default_hint = "then rerun the same command to resume"


class StoreNoSpaceError(DdkError, OSError):
    """A write failed because the filesystem holding the store is full (or over quota)."""
