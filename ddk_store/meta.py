"""Store metadata: frozen dataclasses with to_dict/from_dict and one parse function per field."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

from . import spec
from .errors import InvalidNameError, StoreFormatError, StoreVersionError
from .jsonfields import parse_float, parse_int, parse_str, reject_unknown, require, short_repr, shorten


def validate_domain_name(name: object) -> str:
    """Return ``name`` if it is a valid domain name (it becomes a path component), else raise InvalidNameError."""
    # fullmatch: with match(), the pattern's "$" also accepts a trailing newline ("alpha\n" would become a path).
    if not isinstance(name, str) or not spec.DOMAIN_NAME_RE.fullmatch(name):
        raise InvalidNameError(
            f"invalid domain name {name!r}: use 1-64 characters from [a-z0-9_.-], starting with a letter or digit "
            "(domain names become paths in the store)"
        )
    if name in spec.RESERVED_DOMAIN_NAMES or name.endswith(".partial"):
        raise InvalidNameError(f"invalid domain name {name!r}: the store's own files use that name; choose another")
    return name


@dataclass(frozen=True)
class TeacherInfo:
    """Which teacher produced the log-probabilities, and how."""

    name: str  #: hub id or local path as given by the user
    revision: str  #: hub revision, or "sha256:<hex>" content hash of the weight files
    dtype: str  #: compute dtype of the teacher, e.g. "float32", "bfloat16"
    backend: str  #: "vllm" or "hf"
    engine: str  #: engine and version, e.g. "vllm 0.32.0"

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], ctx: str = "teacher") -> "TeacherInfo":
        reject_unknown(d, cls, ctx)
        return cls(**{f.name: parse_str(d, f.name, ctx) for f in fields(cls)})


_FINGERPRINT_RE = re.compile(r"^[a-z0-9]+:[0-9a-zA-Z_.-]+$")


@dataclass(frozen=True)
class TokenizerInfo:
    """The teacher tokenizer; stage 2 refuses a student whose fingerprint differs."""

    name: str
    vocab_size: int  #: V: number of token ids the teacher can emit (ids are in [0, V))
    fingerprint: str  #: "sha256:<hex>" of the vocabulary and special tokens (see fingerprint.py)
    eos_token_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], ctx: str = "tokenizer") -> "TokenizerInfo":
        reject_unknown(d, cls, ctx)
        fp = parse_str(d, "fingerprint", ctx, allow_empty=False)
        if not _FINGERPRINT_RE.fullmatch(fp):
            raise StoreFormatError(f"field '{ctx}.fingerprint': expected '<algo>:<hex>', got {short_repr(fp)}")
        vocab = parse_int(d, "vocab_size", ctx, lo=1, hi=2**31 - 1)
        return cls(
            name=parse_str(d, "name", ctx),
            vocab_size=vocab,
            fingerprint=fp,
            eos_token_id=parse_int(d, "eos_token_id", ctx, lo=0, hi=vocab - 1, optional=True),
        )


@dataclass(frozen=True)
class SourceInfo:
    """One corpus source of a domain: a file (with its hash) or a dataset reference."""

    uri: str
    sha256: str = ""
    bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "sha256": self.sha256, "bytes": self.bytes}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], ctx: str = "source") -> "SourceInfo":
        reject_unknown(d, cls, ctx)
        return cls(uri=parse_str(d, "uri", ctx, allow_empty=False), sha256=parse_str(d, "sha256", ctx),
                   bytes=parse_int(d, "bytes", ctx, lo=0))


@dataclass(frozen=True)
class DomainInfo:
    """Provenance and teacher statistics of one domain."""

    name: str
    sources: tuple[SourceInfo, ...] = ()
    n_documents: int = 0
    n_tokens: int = 0  #: tokens of the domain's corpus after tokenization (before packing/truncation)
    n_skipped: int = 0  #: documents skipped (e.g. invalid UTF-8)
    heldout_nll: float | None = None  #: teacher mean NLL (nats/token) over the held-out split; set by finalize
    heldout_ppl: float | None = None  #: exp(heldout_nll)

    def __post_init__(self) -> None:
        validate_domain_name(self.name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sources": [s.to_dict() for s in self.sources],
            "n_documents": self.n_documents,
            "n_tokens": self.n_tokens,
            "n_skipped": self.n_skipped,
            "heldout_nll": self.heldout_nll,
            "heldout_ppl": self.heldout_ppl,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], ctx: str = "domain") -> "DomainInfo":
        reject_unknown(d, cls, ctx)
        name = parse_str(d, "name", ctx)
        try:
            validate_domain_name(name)
        except InvalidNameError as e:
            raise StoreFormatError(f"field '{ctx}.name': {e}") from None
        ctx = f"domains[{name}]"
        srcs = require(d, "sources", ctx)
        if not isinstance(srcs, list):
            raise StoreFormatError(f"field '{ctx}.sources': expected a list, got {type(srcs).__name__}")
        return cls(
            name=name,
            sources=tuple(SourceInfo.from_dict(s, f"{ctx}.sources[{i}]") for i, s in enumerate(srcs)),
            n_documents=parse_int(d, "n_documents", ctx, lo=0),
            n_tokens=parse_int(d, "n_tokens", ctx, lo=0),
            n_skipped=parse_int(d, "n_skipped", ctx, lo=0),
            heldout_nll=parse_float(d, "heldout_nll", ctx, optional=True),
            heldout_ppl=parse_float(d, "heldout_ppl", ctx, optional=True),
        )


@dataclass(frozen=True)
class SamplingInfo:
    """(format 1.2) The draws of a ``topk-sampled`` store: ``samples`` (N) per position, and the ``seed`` from which
    the writer derives every row's random stream (encodings/sampled.py)."""

    samples: int
    seed: int

    def __post_init__(self) -> None:
        if not 1 <= self.samples <= spec.MAX_SAMPLES:
            raise StoreFormatError(f"field 'sampling.samples': expected int in [1, {spec.MAX_SAMPLES}] (uint8 counts, "
                                   f"255 is the fill value), got {self.samples}")
        if not 0 <= self.seed < 2**63:
            raise StoreFormatError(f"field 'sampling.seed': expected int in [0, 2^63), got {self.seed}")

    def to_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "seed": self.seed}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], ctx: str = "sampling") -> "SamplingInfo":
        reject_unknown(d, cls, ctx)
        return cls(samples=parse_int(d, "samples", ctx, lo=1, hi=spec.MAX_SAMPLES),
                   seed=parse_int(d, "seed", ctx, lo=0, hi=2**63 - 1))


def parse_format(d: Mapping[str, Any]) -> str:
    fmt = parse_str(d, "format", "")
    if fmt != spec.FORMAT_NAME:
        raise StoreFormatError(f"field 'format': expected {spec.FORMAT_NAME!r}, got {short_repr(fmt)}: "
                               "not a ddk teacher store")
    return fmt


def parse_format_version(d: Mapping[str, Any]) -> str:
    version = parse_str(d, "format_version", "")
    m = re.fullmatch(r"([0-9]+)\.([0-9]+)", version)
    if not m:
        raise StoreFormatError(f"field 'format_version': expected 'MAJOR.MINOR', got {short_repr(version)}")
    # Compared as text: int() of thousands of digits raises (Python's int-string limit).
    major = m.group(1).lstrip("0") or "0"
    if major != str(spec.FORMAT_MAJOR):
        shown = shorten(version, 20)
        raise StoreVersionError(
            f"store format version {shown} is not supported: this ddk reads major version {spec.FORMAT_MAJOR} "
            f"(format {spec.FORMAT_VERSION}); use a ddk release that supports version {shown.split('.')[0]}.x"
        )
    return version


def version_before(version: str, since: tuple[int, int]) -> bool:
    """Whether ``"MAJOR.MINOR"`` (already parsed) is older than ``since`` (compared as text: no int of huge digits)."""
    parts = [p.lstrip("0") or "0" for p in version.split(".")]
    key = tuple((len(p), p) for p in parts)
    return key < tuple((len(str(x)), str(x)) for x in since)


def parse_encoding(d: Mapping[str, Any]) -> str:
    enc = parse_str(d, "encoding", "")
    if enc not in spec.ENCODINGS:
        raise StoreVersionError(
            f"field 'encoding': unknown top-k encoding {short_repr(enc)}; this ddk knows {list(spec.ENCODINGS)}: "
            "upgrade ddk to read this store"
        )
    return enc


def parse_status(d: Mapping[str, Any]) -> str:
    status = parse_str(d, "status", "")
    if status not in spec.STATUSES:
        raise StoreFormatError(f"field 'status': expected one of {list(spec.STATUSES)}, got {short_repr(status)}")
    return status


@dataclass(frozen=True)
class StoreMeta:
    """The root metadata document of a store (the ``ddk`` attribute of the root group)."""

    teacher: TeacherInfo
    tokenizer: TokenizerInfo
    seq_len: int  #: T: tokens per row; a row has P = T - 1 teacher positions
    top_k: int  #: K
    domains: tuple[DomainInfo, ...]
    encoding: str = spec.DEFAULT_ENCODING
    logprob_scale: int | None = None  #: quantization scale; None: the encoding's default (encodings registry)
    settings: Mapping[str, Any] = field(default_factory=dict)  #: stage-1 settings that must match on resume
    status: str = spec.STATUS_WRITING
    tool_version: str = ""
    created_at: str = ""
    format: str = spec.FORMAT_NAME
    format_version: str = spec.FORMAT_VERSION
    sampling: SamplingInfo | None = None  #: (1.2) N and seed of a ``topk-sampled`` store; None for other encodings

    def __post_init__(self) -> None:
        names = [d.name for d in self.domains]
        if len(set(names)) != len(names):
            raise StoreFormatError(f"field 'domains': duplicate domain names in {names}")
        if not names:
            raise StoreFormatError("field 'domains': a store needs at least one domain")
        if self.seq_len < 2:
            raise StoreFormatError(f"field 'seq_len': expected int >= 2, got {self.seq_len}")
        if not 1 <= self.top_k <= self.tokenizer.vocab_size:
            raise StoreFormatError(f"field 'top_k': expected int in [1, vocab_size={self.tokenizer.vocab_size}], "
                                   f"got {self.top_k}")
        if self.encoding not in spec.ENCODINGS:
            raise StoreVersionError(f"field 'encoding': unknown top-k encoding {self.encoding!r}; known: {list(spec.ENCODINGS)}")
        if self.logprob_scale is None:
            from .encodings import get_encoding

            scale = get_encoding(self.encoding).default_scale or spec.DEFAULT_LOGPROB_SCALE
            object.__setattr__(self, "logprob_scale", scale)
        if not 1 <= self.logprob_scale <= 1024:
            raise StoreFormatError(f"field 'logprob_scale': expected int in [1, 1024], got {self.logprob_scale}")
        if (self.sampling is not None) != (self.encoding == spec.ENC_SAMPLED):
            raise StoreFormatError(f"field 'sampling': required with encoding {spec.ENC_SAMPLED!r} and only with it "
                                   f"(encoding {self.encoding!r}, sampling {self.sampling})")
        for name, added, has in (("sampling", spec.SAMPLED_SINCE, self.sampling is not None),
                                 ("encoding", spec.TAIL_SINCE, self.encoding == spec.ENC_IDSORT_Q8_TAIL)):
            if has and version_before(self.format_version, added):
                raise StoreFormatError(f"field {name!r}: a store of format {self.format_version} cannot have it (added "
                                       f"in {'.'.join(map(str, added))}): the metadata was edited")

    @property
    def domain_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.domains)

    @property
    def positions(self) -> int:
        """P: teacher positions per row."""
        return self.seq_len - 1

    def domain(self, name: str) -> DomainInfo:
        for d in self.domains:
            if d.name == name:
                return d
        raise KeyError(f"no domain {name!r} in this store; domains: {list(self.domain_names)}")

    def replace(self, **changes: Any) -> "StoreMeta":
        return replace(self, **changes)

    def identity(self) -> dict[str, Any]:
        """The fields that define *what* the store holds (used to decide whether a rerun may resume it).

        ``format_version`` is not one of them: a newer minor version only adds encodings, so a store of an older minor
        version is resumed as it is (its encoding decides what is written). Nor are the names the teacher and its
        tokenizer were given by where their content identifies them: a local teacher's ``revision`` is the hash of
        its weights and the tokenizer's ``fingerprint`` that of its files, so the same teacher through another path
        (relative, absolute, a link) resumes the store. A hub teacher's name stays (its revision is a commit).
        """
        d = self.to_dict()
        for volatile in ("status", "tool_version", "created_at", "format_version"):
            d.pop(volatile)
        d["tokenizer"].pop("name", None)
        if str(d["teacher"].get("revision", "")).startswith("sha256:"):
            d["teacher"].pop("name", None)
        for dom in d["domains"]:
            dom.pop("heldout_nll")
            dom.pop("heldout_ppl")
        return d

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "format_version": self.format_version,
            "status": self.status,
            "teacher": self.teacher.to_dict(),
            "tokenizer": self.tokenizer.to_dict(),
            "seq_len": self.seq_len,
            "top_k": self.top_k,
            "encoding": self.encoding,
            "logprob_scale": self.logprob_scale,
            "domains": [d.to_dict() for d in self.domains],
            "settings": dict(self.settings),
            "tool_version": self.tool_version,
            "created_at": self.created_at,
            **({"sampling": self.sampling.to_dict()} if self.sampling is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StoreMeta":
        if not isinstance(d, Mapping):
            raise StoreFormatError(f"store metadata: expected an object, got {type(d).__name__}")
        # Format and version first, so a newer store fails with the version message, not an unknown-field one.
        fmt = parse_format(d)
        version = parse_format_version(d)
        reject_unknown(d, cls, "")
        doms = require(d, "domains", "")
        if not isinstance(doms, list):
            raise StoreFormatError(f"field 'domains': expected a list, got {type(doms).__name__}")
        settings = require(d, "settings", "")
        if not isinstance(settings, Mapping):
            raise StoreFormatError(f"field 'settings': expected an object, got {type(settings).__name__}")
        tokenizer = TokenizerInfo.from_dict(require(d, "tokenizer", ""))
        return cls(
            teacher=TeacherInfo.from_dict(require(d, "teacher", "")),
            tokenizer=tokenizer,
            seq_len=parse_int(d, "seq_len", "", lo=2, hi=2**24),
            top_k=parse_int(d, "top_k", "", lo=1, hi=tokenizer.vocab_size),
            domains=tuple(DomainInfo.from_dict(x, f"domains[{i}]") for i, x in enumerate(doms)),
            encoding=parse_encoding(d),
            logprob_scale=parse_int(d, "logprob_scale", "", lo=1, hi=1024),
            settings=dict(settings),
            status=parse_status(d),
            tool_version=parse_str(d, "tool_version", ""),
            created_at=parse_str(d, "created_at", ""),
            format=fmt,
            format_version=version,
            sampling=SamplingInfo.from_dict(d["sampling"]) if d.get("sampling") is not None else None,
        )
