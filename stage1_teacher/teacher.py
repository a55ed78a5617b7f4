"""Teacher identity: find the teacher's files (local directory or hub snapshot), hash them, load and check its
tokenizer, and check the run's settings against the teacher, all without loading its weights."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ddk_store.errors import ConfigError, describe
from ddk_store.paths import looks_like_path, no_tokenizer_files

from .filehash import WEIGHTS_KIND, cache_entry_path, cached, file_sha256, stat_key

#: Files of a model directory that define its weights (with config.json): the revision of a local teacher.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


@dataclass(frozen=True)
class Teacher:
    """A resolved teacher: local dir, identity and the numbers validated before it is loaded."""

    name: str
    model_dir: str
    revision: str
    vocab_size: int  # V of the teacher's output layer
    max_context: int | None


def resolve_teacher(name: str, *, revision: str = "", trust_remote_code: bool = False,
                    weights: bool = True) -> Teacher:
    """Find the teacher's files and identity without loading its weights.

    Args:
        name: ``--teacher``: a Hugging Face model directory or hub id.
        revision: ``--teacher-revision`` of a hub id ('' = main).
        trust_remote_code: whether the model's own configuration code may run.
        weights: False for a caller that needs only the config and tokenizer (`ddk-teacher pack`): a local
            teacher's weights are not hashed (``revision`` is then ''), a hub teacher's not downloaded.

    Raises:
        ConfigError: not a model directory, no weights in it (when ``weights``), an unreachable or unknown hub id,
            an unreadable config, not a causal LM.
    """
    from transformers import AutoConfig

    from ddk_store.jsonfields import has_control_chars

    if has_control_chars(name):  # the store records it; readers refuse those
        raise ConfigError(f"--teacher {name!r}: holds control characters; rename the directory (or link it under a "
                          "plain name) and pass that")
    path = Path(name).expanduser()
    if path.is_dir():
        model_dir, rev = str(path), weights_hash(path) if weights else ""
    elif path.exists() or looks_like_path(name):
        raise ConfigError(f"--teacher {name}: not a model directory (expected a directory with config.json)")
    else:
        model_dir, rev = _hub_snapshot(name, revision or None, weights=weights)
    if not (Path(model_dir) / "config.json").is_file():
        raise ConfigError(f"--teacher {name}: {model_dir} has no config.json; give a Hugging Face model "
                          f"directory (save_pretrained output) or hub id")
    try:
        mcfg = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except Exception as e:  # unknown architecture, remote code refused, bad JSON: one user-facing error
        raise ConfigError(f"--teacher {name}: cannot read its config ({describe(e, 300)})"
                          + ("; pass --trust-remote-code if you trust its code" if "remote" in str(e) else "")
                          ) from None
    text_cfg = mcfg.get_text_config() if hasattr(mcfg, "get_text_config") else mcfg
    if not isinstance(getattr(text_cfg, "vocab_size", None), int):
        raise ConfigError(f"--teacher {name}: not a causal language model (its {type(mcfg).__name__} has no "
                          "vocab_size); give a decoder LM such as a Llama-style model directory")
    if weights and not any(p.suffix in WEIGHT_SUFFIXES for p in Path(model_dir).iterdir()):
        if not path.is_dir():  # a hub snapshot: only *.safetensors are fetched (a .bin is a pickle file)
            raise ConfigError(f"--teacher {name}: the hub repository has no *.safetensors weights at this revision "
                              "(ddk fetches safetensors only: .bin weights are pickle files, which it never loads); "
                              "use a revision or repository that ships safetensors, or a local directory that "
                              "save_pretrained wrote")
        raise ConfigError(f"--teacher {name}: {model_dir} has a config.json but no weights (no "
                          f"{', '.join('*' + s for s in WEIGHT_SUFFIXES)} file); copy the model's weights there "
                          "(save_pretrained writes model.safetensors)")
    return Teacher(name=name.rstrip("/"), model_dir=model_dir, revision=rev, vocab_size=int(text_cfg.vocab_size),
                   max_context=getattr(text_cfg, "max_position_embeddings", None))


def weights_hash(model_dir: Path) -> str:
    """``sha256:`` over config.json and the weight files: the teacher revision of a local directory.

    Computed once, then reused while every such file keeps its name, size and modification time (see
    :mod:`.filehash`): a 70B teacher's 140 GB are read once, not at every start, resume and shard.
    """
    files = _weight_files(model_dir)
    return cached(WEIGHTS_KIND, model_dir, stat_key(files), lambda: _hash_files(files))


def _weight_files(model_dir: Path) -> list[Path]:
    return sorted(p for p in model_dir.iterdir()
                  if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name == "config.json"))


def _hash_files(files: list[Path]) -> str:
    h = hashlib.sha256()
    for p in files:
        digest, _ = file_sha256(str(p))
        h.update(f"{p.name}\0{digest}\n".encode())
    return "sha256:" + h.hexdigest()


def weights_hash_cache_path(model_dir: Path) -> Path:
    """Where the cached weights hash of ``model_dir`` lives: ``$DDK_CACHE/weights-hash/<sha256 of its path>.json``."""
    return cache_entry_path(WEIGHTS_KIND, model_dir)


def _hub_snapshot(repo_id: str, revision: str | None, *, weights: bool = True) -> tuple[str, str]:
    """(local snapshot directory, commit hash) of a hub model, downloading its config, tokenizer and (with
    ``weights``) weights."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        local = snapshot_download(repo_id, revision=revision,
                                  allow_patterns=["*.json", "*.model", "*.txt", "*.py"]
                                  + (["*.safetensors"] if weights else []))
    except LocalEntryNotFoundError as e:  # offline (no network, or HF_HUB_OFFLINE=1) and nothing cached
        why = describe(e.__cause__ or e)
        raise ConfigError(f"--teacher {repo_id}: not a local directory, and the hub cannot be reached ({why}) "
                          f"while no copy is cached; pass a local model directory, or rerun with network access"
                          ) from None
    except Exception as e:  # unknown or gated repository, bad revision
        raise ConfigError(f"--teacher {repo_id}: not a local directory, and the hub snapshot could not be fetched "
                          f"({describe(e, 300)}); pass a local model directory") from None
    return local, Path(local).name  # snapshot dirs are named by commit hash


def load_tokenizer(teacher: Teacher, *, trust_remote_code: bool = False):
    """The teacher's tokenizer, which must define EOS (it separates packed documents)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(teacher.model_dir, trust_remote_code=trust_remote_code)
    except Exception as e:
        if missing := no_tokenizer_files(teacher.name, teacher.model_dir):
            raise ConfigError(f"--teacher {missing}") from None
        raise ConfigError(f"--teacher {teacher.name}: cannot load its tokenizer ({describe(e, 300)})") from None
    if tok.eos_token_id is None:
        raise ConfigError(f"--teacher {teacher.name}: its tokenizer has no EOS token, which separates packed "
                          f"documents; set eos_token in its tokenizer_config.json")
    return tok


def fit_problems(teacher: Teacher, id_bound: int, backend, *, seq_len: int, top_k: int) -> list[str]:
    """What keeps ``backend`` (a TeacherBackend class) from scoring rows of ``seq_len`` with ``top_k`` for
    ``teacher``, and a tokenizer whose ids (``id_bound``, :func:`token_id_bound`) do not fit its output layer
    (flag-named)."""
    problems = []
    most = backend.max_seq_len(teacher.max_context) if teacher.max_context is not None else None
    if most is not None and seq_len > most:
        problems.append(f"--seq-len {seq_len} exceeds the teacher's context of {teacher.max_context} tokens "
                        f"(max_position_embeddings in {teacher.model_dir}/config.json)"
                        + (f"; the {backend.name} backend can score rows of at most {most} tokens" if most !=
                           teacher.max_context else "") + f"; use --seq-len <= {most}")
    limit = backend.max_top_k(teacher.vocab_size)
    if top_k > limit:
        problems.append(f"--top-k {top_k} exceeds the {backend.name} backend's limit for this teacher "
                        f"(vocabulary of {teacher.vocab_size}); use --top-k <= {limit}")
    if problem := tokenizer_fit_problem(teacher, id_bound):
        problems.append(problem)
    return problems


def token_id_bound(tokenizer) -> int:
    """One more than the largest id ``tokenizer`` can give: its length for a dense vocabulary, more where a
    hand-built vocabulary's ids have gaps (the teacher's output layer must have every id, not only as many)."""
    return max(len(tokenizer), max(tokenizer.get_vocab().values(), default=-1) + 1)


def tokenizer_fit_problem(teacher: Teacher, id_bound: int) -> str | None:
    """A tokenizer whose ids (``id_bound``, :func:`token_id_bound`) reach beyond the teacher's output layer, or
    None."""
    if id_bound > teacher.vocab_size:
        return (f"--teacher {teacher.name}: tokenizer has token ids 0-{id_bound - 1} but the model outputs only "
                f"{teacher.vocab_size}; tokenizer and model do not match")
    return None
