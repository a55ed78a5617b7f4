"""Load the student (any Hugging Face causal LM) and check it can learn from the store's teacher.

Logit distillation needs the teacher's vocabulary: the student's tokenizer fingerprint must equal the store's (the
same ``ddk_store.tokenizer_fingerprint`` both stages use). A student whose model vocabulary is *larger* than the
store's only pads (extra embedding rows, e.g. rounded up to a multiple of 64); its logits are sliced to the store's V.
"""

from __future__ import annotations

import torch

from ddk_store import tokenizer_fingerprint
from ddk_store.errors import StudentError



def load_tokenizer(name: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise StudentError(
            f"cannot load the student tokenizer from {name!r}: {str(e).splitlines()[0]}; pass a Hugging Face model "
            f"directory (with tokenizer files) or a hub id available offline"
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


def model_vocab_size(model) -> int:
    emb = model.get_output_embeddings()
    return int(emb.weight.shape[0]) if emb is not None else int(model.config.vocab_size)


def load_student(name: str, meta, *, store: str, trust_remote_code: bool = False,
                 device: torch.device | str = "cpu"):
    """Load (model, tokenizer) from ``name`` in fp32 on ``device``, after the tokenizer check (cheap, so first).

    Raises:
        StudentError: unloadable, other tokenizer, or a model vocabulary smaller than the store's.
    """
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(name, trust_remote_code=trust_remote_code)
    check_tokenizer(tok, meta, student=name, store=store)
    try:
        # fp32 master weights; on CUDA the loop runs the forward under bf16 autocast.
        model = AutoModelForCausalLM.from_pretrained(name, trust_remote_code=trust_remote_code, dtype=torch.float32)
    except (OSError, ValueError) as e:
        hint = ("; it needs its own modelling code: pass --trust-remote-code only if you trust its source"
                if "trust_remote_code" in str(e) else "")
        raise StudentError(f"cannot load the student model from {name!r}: {str(e).splitlines()[0]}{hint}") from None
    vocab = model_vocab_size(model)
    if vocab < meta.tokenizer.vocab_size:
        raise StudentError(
            f"student {name!r} has {vocab} output logits but the store's vocabulary has {meta.tokenizer.vocab_size}; "
            f"the student's vocabulary must cover the teacher's (it may only be larger, by padding)"
        )
    return model.to(device), tok
