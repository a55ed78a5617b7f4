"""Tokenizer fingerprint: a hash of the vocabulary and special tokens, shared by both stages."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def tokenizer_fingerprint(tok: Any) -> str:
    """``"sha256:<hex>"`` over the token->id map and the special tokens of a HF tokenizer (duck-typed).

    Two tokenizers with the same fingerprint map every token string to the same id, which is what logit
    distillation needs. Normalizer or pre-tokenizer settings are not hashed.
    """
    vocab = dict(tok.get_vocab())
    special = sorted({str(t): vocab.get(t) for t in getattr(tok, "all_special_tokens", []) or []}.items())
    payload = {"vocab": sorted(((str(k), int(v)) for k, v in vocab.items()), key=lambda kv: (kv[1], kv[0])),
               "special": special}
    blob = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return "sha256:" + hashlib.sha256(blob).hexdigest()
