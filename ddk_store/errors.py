"""Typed errors for ddk: every user-facing failure is a DdkError subclass with an actionable message."""

from __future__ import annotations

import re


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


class StudentError(DdkError):
    """The student model cannot be used with this store (tokenizer, vocabulary, context, architecture)."""


class TrainingDiverged(DdkError):
    """Training produced a non-finite loss or held-out perplexity: the learning rate (or the data) made it diverge."""


class ReportError(DdkError):
    """A run directory cannot be reported on (missing or malformed metrics.jsonl / config.yaml)."""


class CorpusError(DdkError):
    """The built-in corpus cannot be built (unknown domain, bad size cap, missing sources or Debian packages)."""


class PeerFailed(DdkError):
    """Another process of a distributed run (a torchrun rank) stopped or lost its connection mid-run."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM), carrying the command's own advice on how to continue: the entry wrapper prints it instead
    of the generic "rerun the same command"; the exit status is unchanged (130, or 143 after SIGTERM)."""


def describe(exc: BaseException, limit: int = 200, *, with_type: bool = True) -> str:
    """One line for a foreign exception inside a ddk message: ``Type: text``, whitespace folded, shortened.

    The single place that turns a third-party exception (zarr, botocore, transformers, OSError) into text. A text
    longer than ``limit`` is cut at its last sentence end before the limit when there is one (so a message is not
    cut mid-sentence), else at a word boundary, and marked with an ellipsis.
    """
    text = " ".join(str(exc).split()) or repr(exc)
    if len(text) > limit:
        head = text[:limit]
        ends = [m.end() for m in re.finditer(r"[.;:!?](?=\s)", head)]
        if ends and ends[-1] >= limit // 3:
            text = head[: ends[-1]]
        else:
            text = head.rsplit(" ", 1)[0] + " ..."
    return f"{type(exc).__name__}: {text}" if with_type else text
