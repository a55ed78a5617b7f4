"""Students of any vocabulary size and shape: a word-level tokenizer of exactly V tokens, and random Llama models
over it (for large-vocabulary tests and the GPU benchmark; the tiny BPE tokenizer of ``models`` has 384 tokens).

The tokenizer is real (`tokenizers` WordLevel, saved as a fast HF tokenizer): id i is the word ``w{i}``, id 0 the
end-of-text token, id 1 the unknown token, so any id can be written into a corpus as text.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def build_word_tokenizer(out_dir: str | Path, vocab_size: int):
    """Save a fast HF tokenizer of exactly ``vocab_size`` tokens in ``out_dir`` and return it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "<unk>": 1, **{f"w{i}": i for i in range(2, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   unk_token="<unk>")
    fast.save_pretrained(out_dir)
    return fast


def build_llama(out_dir: str | Path, tokenizer_dir: str | Path, *, vocab_size: int, hidden_size: int = 64,
                intermediate_size: int | None = None, num_layers: int = 2, num_heads: int = 1,
                num_kv_heads: int | None = None, max_positions: int = 512, rope_theta: float = 10000.0,
                seed: int = 0) -> Path:
    """Save a random-init, tied-embedding Llama causal LM of this shape in ``out_dir``, the tokenizer's files copied
    next to it (re-reading a large tokenizer costs seconds). Returns ``out_dir``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size,
                      intermediate_size=intermediate_size or 2 * hidden_size, num_hidden_layers=num_layers,
                      num_attention_heads=num_heads, num_key_value_heads=num_kv_heads or num_heads,
                      max_position_embeddings=max_positions, rope_theta=rope_theta, eos_token_id=0, bos_token_id=0,
                      tie_word_embeddings=True)
    torch.manual_seed(seed)
    out_dir = Path(out_dir)
    LlamaForCausalLM(cfg).save_pretrained(out_dir)
    for f in Path(tokenizer_dir).iterdir():
        shutil.copy(f, out_dir / f.name)
    return out_dir
