"""Load the student (any Hugging Face causal LM) and check it can learn from the store's teacher.

Logit distillation needs the teacher's vocabulary: the student's tokenizer fingerprint must equal the store's (the
same ``ddk_store.tokenizer_fingerprint`` both stages use). A student whose model vocabulary is *larger* than the
store's only pads (extra embedding rows, e.g. rounded up to a multiple of 64); its logits are sliced to the store's V.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ddk_store import tokenizer_fingerprint
from ddk_store.errors import StudentError, describe
from ddk_store.paths import hub_snapshot, no_tokenizer_files


def model_dir(flag: str, name: str) -> str:
    """A local directory holding model ``name``: ``name`` itself, or its hub snapshot (cached, or downloaded).

    Without network and cache this fails within seconds in one line (transformers alone retries for a minute).
    """
    path = Path(name).expanduser()
    return str(path) if path.is_dir() else hub_snapshot(flag, name)


def load_tokenizer(name: str, *, trust_remote_code: bool = False, local_dir: str | None = None):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(local_dir or name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        if missing := no_tokenizer_files(name, local_dir):
            raise StudentError(f"cannot load the student tokenizer: {missing}") from None
        raise StudentError(
            f"cannot load the student tokenizer from {name!r}: {describe(e, with_type=False)}; pass a Hugging Face "
            f"model directory (with tokenizer files) or a hub id available offline"
        ) from None


def check_tokenizer(tok, meta, *, student: str, store: str) -> None:
    """Refuse a tokenizer that differs from the store's teacher tokenizer, naming both."""
    found = tokenizer_fingerprint(tok)
    want = meta.tokenizer.fingerprint
    if found != want:
        raise StudentError(
            f"student {student!r} has tokenizer fingerprint {found} but store {store!r} was dumped with teacher "
            f"tokenizer {meta.tokenizer.name!r} (fingerprint {want}); logit distillation needs the same vocabulary: "
            f"pick a student that shares the teacher's tokenizer"
        )


def check_context(model_config, meta, *, student: str) -> None:
    """Refuse a student whose context (``max_position_embeddings``) is shorter than the store's rows: it would train
    on positions it was never built for, without a word (RoPE models do not fail, they degrade)."""
    text_cfg = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    context = getattr(text_cfg, "max_position_embeddings", None)
    if isinstance(context, int) and context < meta.seq_len:
        raise StudentError(
            f"student {student!r} has a context of {context} tokens (max_position_embeddings) but the store's rows "
            f"are {meta.seq_len} tokens long; pick a student with max_position_embeddings >= {meta.seq_len}, or "
            f"train from a store dumped with --seq-len <= {context}"
        )


def model_vocab_size(model) -> int:
    emb = model.get_output_embeddings()
    return int(emb.weight.shape[0]) if emb is not None else int(model.config.vocab_size)


def load_student(name: str, meta, *, store: str, trust_remote_code: bool = False,
                 device: torch.device | str = "cpu", flag: str = "--student"):
    """Load (model, tokenizer) from ``name`` in fp32 on ``device``, after the cheap checks (tokenizer, context).

    Raises:
        ConfigError: a hub id that cannot be fetched.
        StudentError: unloadable, other tokenizer, a context shorter than the store's rows, or a model vocabulary
            smaller than the store's.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    local = model_dir(flag, name)
    tok = load_tokenizer(name, trust_remote_code=trust_remote_code, local_dir=local)
    check_tokenizer(tok, meta, student=name, store=store)

    def unloadable(e: Exception) -> StudentError:
        hint = ("; it needs its own modelling code: pass --trust-remote-code only if you trust its source"
                if "trust_remote_code" in str(e) else "")
        return StudentError(f"cannot load the student model from {name!r}: {describe(e, with_type=False)}{hint}")

    try:
        model_config = AutoConfig.from_pretrained(local, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise unloadable(e) from None
    check_context(model_config, meta, student=name)
    try:
        # fp32 master weights; on CUDA the loop runs the forward under bf16 autocast.
        model = AutoModelForCausalLM.from_pretrained(local, config=model_config, trust_remote_code=trust_remote_code,
                                                     dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise unloadable(e) from None
    vocab = model_vocab_size(model)
    if vocab < meta.tokenizer.vocab_size:
        raise StudentError(
            f"student {name!r} has {vocab} output logits but the store's vocabulary has {meta.tokenizer.vocab_size}; "
            f"the student's vocabulary must cover the teacher's (it may only be larger, by padding)"
        )
    return model.to(device), tok
