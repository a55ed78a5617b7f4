"""Whether a domain has text enough for --seq-len and --heldout-seqs, and what pack says when it has not (or when
its held-out documents hold more than their rows use). Messages only; packing.py and pack_stream.py measure."""

from __future__ import annotations

from collections.abc import Sequence

from ddk_store.errors import ConfigError


def check_domain_size(domain: str, n_tokens: int, seq_len: int, skipped: int = 0) -> None:
    """Raises ConfigError when a domain's documents give fewer tokens than one row (``skipped``: documents left out
    as invalid UTF-8, named in the message since they may be why)."""
    if n_tokens < seq_len:
        why = (f" ({skipped} document(s) were skipped as invalid UTF-8: convert the files to UTF-8)" if skipped
               else "")
        raise ConfigError(f"domain {domain!r} is empty: its documents give {n_tokens} tokens, fewer than one row of "
                          f"--seq-len {seq_len}{why}; add text to the domain or remove it from the corpora file")


def check_split_size(domain: str, n_tokens: int, seq_len: int, heldout_seqs: int, heldout_rows: int,
                     train_rows: int, *, held_documents: int | None = None, train_tokens: int | None = None) -> None:
    """Raises ConfigError when the held-out rows are not all filled or no training row is left.

    ``held_documents`` and ``train_tokens`` (the documents the held-out rows took, the tokens left for training),
    when known, tell a domain of too few documents from one of too few tokens: held-out rows take whole documents,
    so lowering --heldout-seqs does not help a domain whose one document fills them."""
    if heldout_rows >= heldout_seqs and train_rows == 0 and held_documents is not None and train_tokens is not None:
        raise ConfigError(f"domain {domain!r} has too few documents: its held-out rows take whole documents, and the "
                          f"{held_documents} that fill --heldout-seqs {heldout_seqs} leave {train_tokens} tokens for "
                          f"training, fewer than one row of --seq-len {seq_len}; add documents to it (a file read "
                          f"with `format: files` is one document, `format: lines` makes one per line)"
                          + (", or lower --heldout-seqs" if held_documents > 1 else ""))
    if heldout_rows < heldout_seqs or train_rows == 0:
        n = n_tokens // seq_len
        lower = (f"lower --heldout-seqs (to at most {n - 1}) or --seq-len" if n >= 2 else "lower --seq-len (one row "
                 "is too few to hold out any)")
        raise DomainTooSmall(f"domain {domain!r} is too small: {n} rows of --seq-len {seq_len} but --heldout-seqs "
                             f"{heldout_seqs} plus at least one training row are needed (held-out rows take whole "
                             f"documents); {lower}, or add text", domain, n, seq_len, heldout_seqs)


class DomainTooSmall(ConfigError):
    """A domain of too few rows of --seq-len (``rows``) for --heldout-seqs plus one training row."""

    def __init__(self, message: str, domain: str, rows: int, seq_len: int, heldout_seqs: int) -> None:
        super().__init__(message)
        self.domain, self.rows, self.seq_len, self.heldout_seqs = domain, rows, seq_len, heldout_seqs


def too_small_together(errors: Sequence[DomainTooSmall]) -> str:
    """One line for the domains too small for the same --heldout-seqs and --seq-len: one domain's own sentence; for
    several, the need said once, then each domain's rows, then the --heldout-seqs that all of them could give."""
    if len(errors) == 1:
        return str(errors[0])
    need, seq_len = errors[0].heldout_seqs, errors[0].seq_len
    most = min(e.rows for e in errors) - 1
    counts = ", ".join(f"{e.domain} {'has ' if i == 0 else ''}{e.rows}" for i, e in enumerate(errors))
    lower = f"lower --heldout-seqs (to at most {most}) or --seq-len" if most >= 1 else "lower --seq-len"
    return (f"{len(errors)} domains are too small: --heldout-seqs {need} needs at least {need + 1} rows of --seq-len "
            f"{seq_len} tokens per domain (held-out rows take whole documents, and one row must be left to train "
            f"on); {counts}; {lower}, or add text")


#: What one document of a domain is, by its format (the held-out note says to split long ones).
_DOCUMENTS = {"lines": "lines", "files": "files", "jsonl": "records", "parquet": "records", "dataset": "records"}


def heldout_leftover_note(domain: str, fmt: str, *, docs: int, held_tokens: int, rows: int, seq_len: int) -> str | None:
    """The note for a domain whose ``docs`` held-out documents (``held_tokens`` tokens) hold more than a row beyond
    its ``rows`` held-out rows (a long last document): those tokens go to neither split. None when they do not. The
    same documents stay held out up to --heldout-seqs held_tokens // seq_len, whose rows take them all."""
    unused = held_tokens - rows * seq_len
    if unused <= seq_len:  # at most the remainder of a row
        return None
    return (f"note: domain {domain}: its held-out documents ({docs}) hold {unused:,} tokens beyond the {rows} held-out "
            f"rows, used in neither split (held-out rows take whole documents, and none trains); to keep them, split "
            f"long {_DOCUMENTS[fmt]} into shorter ones, or raise --heldout-seqs (up to {held_tokens // seq_len}; it "
            f"applies to every domain) so the held-out rows use them")


#: Source files per domain beyond which a dump says that its store's metadata grows large (docs/stage1.md).
MANY_FILES = 100_000


def many_files_note(domain: str, files: Sequence[str]) -> str | None:
    """The note for a domain read from more than :data:`MANY_FILES` files: the store's root metadata lists each
    (its URI, SHA-256 and size, some 110 bytes besides the path), and every reader loads it when it opens the
    store. None for fewer files."""
    if len(files) <= MANY_FILES:
        return None
    size = sum(len(f) + 110 for f in files)
    return (f"note: domain {domain}: {len(files):,} source files; the store's metadata lists each (about "
            f"{size / 1e6:,.0f} MB that every reader of the store loads when it opens it): give this many documents "
            f"as JSONL or Parquet shards instead (docs/stage1.md, corpora)")
