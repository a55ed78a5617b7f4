"""Tiny real models: a BPE tokenizer trained on a few lines and random-init Llama causal LMs (teacher, student).

Nothing is mocked and nothing is downloaded: the tokenizer is trained with `tokenizers`, the models are real
`transformers` Llama models saved with `save_pretrained`. head_dim is 64 because vLLM's CPU attention runs only
the sizes of stage1_teacher.backends.VLLM_CPU_HEAD_SIZES (a dump checks that before vLLM starts).
"""

from __future__ import annotations

from pathlib import Path

TINY_TEXT = {
    "scripture": [
        "In the beginning God created the heaven and the earth.",
        "And the earth was without form, and void; and darkness was upon the face of the deep.",
        "And God said, Let there be light: and there was light.",
        "And God saw the light, that it was good: and God divided the light from the darkness.",
    ],
    "python": [
        "def add(a, b):\n    return a + b\n",
        "for i in range(10):\n    print(i * i)\n",
        "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
        "import os\nprint(os.path.join('a', 'b'))\n",
    ],
    "legal": [
        "Permission is hereby granted, free of charge, to any person obtaining a copy of this software.",
        "THE SOFTWARE IS PROVIDED AS IS, WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED.",
        "Licensed under the Apache License, Version 2.0 (the License); you may not use this file except in compliance.",
        "Redistribution and use in source and binary forms, with or without modification, are permitted.",
    ],
}


def build_tiny_tokenizer(out_dir: str | Path, vocab_size: int = 384):
    """Train a byte-level BPE tokenizer on TINY_TEXT and save it as a fast HF tokenizer in ``out_dir``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line for texts in TINY_TEXT.values() for line in texts] * 4
    tok.train_from_iterator(lines, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_llama(
    out_dir: str | Path,
    tokenizer_dir: str | Path,
    *,
    num_layers: int = 2,
    hidden_size: int = 128,
    num_heads: int = 2,
    seed: int = 0,
    vocab_pad: int = 0,
):
    """Save a random-init Llama causal LM (head_dim = hidden/heads = 64) plus the tokenizer into ``out_dir``.

    ``vocab_pad`` adds unused rows to the embedding, as some students pad their vocabulary.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cfg = LlamaConfig(
        vocab_size=len(tok) + vocab_pad,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=512,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


#: The student of the stage-2 and reliability tests: one layer, 64 wide, one head.
TINY_STUDENT = {"num_layers": 1, "hidden_size": 64, "num_heads": 1}


def build_tiny_student(out_dir: str | Path, tokenizer_dir: str | Path, **kw) -> Path:
    """A :data:`TINY_STUDENT` Llama (``kw`` overrides, e.g. ``vocab_pad``) plus the tokenizer, saved in ``out_dir``."""
    return build_tiny_llama(out_dir, tokenizer_dir, **{**TINY_STUDENT, **kw})


def build_tiny_teacher(root: str | Path) -> Path:
    """The tiny teacher (default :func:`build_tiny_llama`, its tokenizer in ``root/tok``) in ``root/model``; kept
    when already there. Returns the model directory."""
    root = Path(root)
    if not (root / "model" / "config.json").exists():
        build_tiny_tokenizer(root / "tok")
        build_tiny_llama(root / "model", root / "tok")
    return root / "model"
