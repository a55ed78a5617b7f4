"""transformers teacher backend: fp32 log-softmax + top-k over batches sized by a token budget (CPU or CUDA)."""

from __future__ import annotations

import importlib.metadata

import numpy as np

from . import BackendOptions, ScoredRows


class HFBackend:
    """The reference backend: plain `AutoModelForCausalLM` forward passes, no padding (rows are full)."""

    name = "hf"

    def __init__(self, opts: BackendOptions) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.opts = opts
        want_cuda = opts.device == "cuda" or (opts.device == "auto" and torch.cuda.is_available())
        if opts.device == "cuda" and not torch.cuda.is_available():
            from ddk_store.errors import ConfigError

            raise ConfigError("--device cuda: no CUDA device is visible to torch; use --device cpu or auto")
        self.device = torch.device("cuda" if want_cuda else "cpu")
        self.model = AutoModelForCausalLM.from_pretrained(
            opts.model_dir, dtype=getattr(torch, opts.dtype), trust_remote_code=opts.trust_remote_code
        ).to(self.device)
        self.model.eval()
        # Rows per forward: the token budget bounds the [b, T, V] logits tensor (b*T*V*4 bytes in fp32).
        self.rows_per_batch = max(1, opts.batch_tokens // opts.seq_len)
        # Rows per top-k call (0 = the whole forward batch). On CPU one row at a time keeps the work buffer in
        # cache and memory small; on a GPU one call and one device-to-host copy per batch avoid a sync per row.
        self.topk_rows = 1 if self.device.type == "cpu" else 0

    @staticmethod
    def engine() -> str:
        return f"transformers {importlib.metadata.version('transformers')}"

    @staticmethod
    def max_top_k(vocab_size: int) -> int:
        return vocab_size

    @staticmethod
    def max_seq_len(context: int) -> int:
        return context

    def forward_logits(self, x):
        """Bare teacher forward: int64 [b, T] on device -> logits [b, T, V] (the benchmark's baseline)."""
        return self.model(input_ids=x, use_cache=False).logits

    def score(self, tokens: np.ndarray) -> ScoredRows:
        import torch

        from ..topk import topk_logprobs

        n, t = tokens.shape
        k = self.opts.top_k
        out = ScoredRows.empty(n, t, k)
        with torch.inference_mode():
            for i in range(0, n, self.rows_per_batch):
                x = torch.from_numpy(np.ascontiguousarray(tokens[i : i + self.rows_per_batch])).long()
                x = x.to(self.device)  # [b, T]
                logits = self.forward_logits(x)  # [b, T, V]
                # Position p predicts token p + 1: drop the last position's logits, shift the targets.
                g = self.topk_rows or x.shape[0]
                for j in range(0, x.shape[0], g):
                    tk = topk_logprobs(logits[j : j + g, :-1], k, targets=x[j : j + g, 1:], consume=True)
                    rows = slice(i + j, i + j + tk.ids.shape[0])
                    out.topk_ids[rows] = tk.ids.cpu().numpy()  # one device-to-host copy per group
                    out.topk_logprobs[rows] = tk.logprobs.cpu().numpy()
                    out.target_logprobs[rows] = tk.target_logprobs.cpu().numpy()
                del logits
        return out

    def close(self) -> None:
        del self.model
