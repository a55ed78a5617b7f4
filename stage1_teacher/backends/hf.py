"""transformers teacher backend: fp32 log-softmax + top-k over batches sized by a token budget (CPU or CUDA).

Two paths with bitwise-identical results:

- :meth:`HFBackend.score_simple`: forward, top-k, copy, batch after batch (the CPU path; the reference).
- :meth:`HFBackend.score_iter`: the pipeline (the CUDA path). Batch i's fp32 log-softmax + top-k run on a second CUDA
  stream while the default stream already computes batch i+1's forward (the next unit's first batch included); the
  three results are packed into one int32 ``[b, P, 2K+1]`` device buffer and come back in ONE device-to-host copy
  into pinned host buffers reused across batches (two slots). The host waits only on that copy's event, one batch
  behind, so the queue of GPU work never runs dry. On CPU the same code runs without streams (for the test).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable, Iterator

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
        self._pipe: _Pipe | None = None  # streams and buffers of score_iter, made on first use

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
        """Scores of one unit's rows: the pipeline on CUDA, the simple path on CPU (same values either way)."""
        if self.device.type == "cuda":
            return next(iter(self.score_iter([tokens])))
        return self.score_simple(tokens)

    def _topk_into(self, logits, x, k: int, put) -> None:
        """Top-k of a forward batch in groups of ``topk_rows`` rows; ``put(j, TopK)`` takes group j's result."""
        from ..topk import topk_logprobs

        # Position p predicts token p + 1: drop the last position's logits, shift the targets.
        g = self.topk_rows or x.shape[0]
        for j in range(0, x.shape[0], g):
            put(j, topk_logprobs(logits[j : j + g, :-1], k, targets=x[j : j + g, 1:], consume=True))

    def score_simple(self, tokens: np.ndarray) -> ScoredRows:
        """Forward, top-k and copy, batch after batch, no streams: the reference the pipeline must equal bitwise."""
        import torch

        n, t = tokens.shape
        k = self.opts.top_k
        out = ScoredRows.empty(n, t, k)
        with torch.inference_mode():
            for i in range(0, n, self.rows_per_batch):
                x = torch.from_numpy(np.ascontiguousarray(tokens[i : i + self.rows_per_batch])).long()
                x = x.to(self.device)  # [b, T]
                logits = self.forward_logits(x)  # [b, T, V]

                def put(j, tk, i=i):
                    rows = slice(i + j, i + j + tk.ids.shape[0])
                    out.topk_ids[rows] = tk.ids.cpu().numpy()  # one device-to-host copy per group
                    out.topk_logprobs[rows] = tk.logprobs.cpu().numpy()
                    out.target_logprobs[rows] = tk.target_logprobs.cpu().numpy()

                self._topk_into(logits, x, k, put)
                del logits
        return out

    def score_iter(self, units: Iterable[np.ndarray]) -> Iterator[ScoredRows]:
        """Score each int32 ``[n, T]`` array of ``units`` in order, yielding its :class:`ScoredRows` (the pipeline).

        The next batch, possibly the next unit's first, is queued on the GPU before the host waits for this batch's
        results, so a caller that passes all its units through one call keeps the GPU busy across unit boundaries.
        """
        k = self.opts.top_k
        in_flight: tuple | None = None  # (out, row offset, rows, (host buffer, event), last batch of its unit)
        slot = 0
        for out, i, rows, last in self._batches(units, k):
            launched = (out, i, rows.shape[0], self._launch(rows, k, slot), last)
            if in_flight is not None:
                yield from self._drain(*in_flight)
            in_flight, slot = launched, 1 - slot
        if in_flight is not None:
            yield from self._drain(*in_flight)

    def _batches(self, units: Iterable[np.ndarray], k: int):
        for tokens in units:
            n, t = tokens.shape
            out = ScoredRows.empty(n, t, k)
            starts = list(range(0, n, self.rows_per_batch)) or [0]  # an empty unit still yields its (empty) result
            for i in starts:
                yield out, i, tokens[i : i + self.rows_per_batch], i == starts[-1]

    def _launch(self, rows: np.ndarray, k: int, slot: int):
        """Queue one batch: forward on the default stream, top-k + packing + one copy to host on the side stream.
        Returns (the batch's host buffer, the event that marks it filled; None on CPU: already done)."""
        import torch

        b, t = rows.shape
        if b == 0:
            return None, None
        with torch.inference_mode():  # here, not around score_iter's yields: grad mode must not leak to the caller
            return self._queue(rows, k, slot)

    def _queue(self, rows: np.ndarray, k: int, slot: int):
        import torch

        b, t = rows.shape
        pipe = self._pipe = self._pipe if self._pipe is not None and self._pipe.fits(t, k) else _Pipe(
            self.device, self.rows_per_batch, t, k)
        x = torch.from_numpy(np.ascontiguousarray(rows))
        if pipe.side is None:
            x = x.long()
            logits = self.forward_logits(x)  # [b, T, V]
            self._topk_into(logits, x, k, lambda j, tk: pipe.pack(pipe.host[slot], j, tk, k))
            return pipe.host[slot][:b], None
        x = x.pin_memory().to(self.device, non_blocking=True).long()  # [b, T]
        logits = self.forward_logits(x)  # [b, T, V], queued on the default stream
        ready = torch.cuda.Event()
        ready.record()
        with torch.cuda.stream(pipe.side):
            pipe.side.wait_event(ready)
            # The side stream uses tensors the default stream allocated: keep their memory until it is done.
            logits.record_stream(pipe.side)
            x.record_stream(pipe.side)
            self._topk_into(logits, x, k, lambda j, tk: pipe.pack(pipe.stage, j, tk, k))
            pipe.host[slot][:b].copy_(pipe.stage[:b], non_blocking=True)  # the batch's one device-to-host copy
            done = torch.cuda.Event()
            done.record(pipe.side)
        del logits
        return pipe.host[slot][:b], done

    def _drain(self, out: ScoredRows, i: int, b: int, launched: tuple, last: bool) -> Iterator[ScoredRows]:
        """Wait for a launched batch's copy, unpack it into its unit's arrays; yield the unit after its last batch."""
        host, done = launched
        if b:
            if done is not None:
                done.synchronize()
            h = host.numpy()  # int32 [b, P, 2K+1]
            k = self.opts.top_k
            out.topk_ids[i : i + b] = h[..., :k]
            out.topk_logprobs[i : i + b] = h[..., k : 2 * k].view(np.float32)
            out.target_logprobs[i : i + b] = h[..., 2 * k].view(np.float32)
        if last:
            yield out

    def close(self) -> None:
        self._pipe = None
        del self.model


class _Pipe:
    """The pipeline's reusable state: the side stream, one device staging buffer, two pinned host slots."""

    def __init__(self, device, rows: int, t: int, k: int) -> None:
        import torch

        self.t, self.k = t, k
        cuda = device.type == "cuda"
        self.side = torch.cuda.Stream(device) if cuda else None
        shape = (rows, t - 1, 2 * k + 1)  # ids | log-probs (fp32 bits) | target log-prob (fp32 bits)
        self.stage = torch.empty(shape, dtype=torch.int32, device=device) if cuda else None
        self.host = [torch.empty(shape, dtype=torch.int32, pin_memory=cuda) for _ in range(2)]

    def fits(self, t: int, k: int) -> bool:
        return (t, k) == (self.t, self.k)

    @staticmethod
    def pack(buf, j: int, tk, k: int) -> None:
        """Write one top-k group at row ``j`` of ``buf`` (int32 [rows, P, 2K+1]); bit-exact for the fp32 parts."""
        import torch

        g = tk.ids.shape[0]
        rows = buf[j : j + g]
        rows[..., :k].copy_(tk.ids)  # int64 -> int32 (ids < V < 2**31)
        rows[..., k : 2 * k].view(torch.float32).copy_(tk.logprobs)
        rows[..., 2 * k].view(torch.float32).copy_(tk.target_logprobs)
