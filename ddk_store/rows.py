"""What a read returns: rows decoded (:class:`RowBatch`) or as stored (:class:`StoredRows`). Plain numpy records."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RowBatch:
    """Decoded rows. n rows, T = seq_len, P = T - 1 positions, K = top_k."""

    tokens: np.ndarray  #: int32 [n, T]
    topk_ids: np.ndarray  #: int32 [n, P, K]
    topk_logprobs: np.ndarray  #: float32 [n, P, K], nats; -inf in absent slots (encodings with an exact tail)
    target_logprobs: np.ndarray | None  #: float32 [n, P], teacher log-prob of tokens[:, 1:] (None: not read)
    #: float32 [n, P]: log of the exact mass outside the entries (None: it is 1 - sum(exp(topk_logprobs)))
    topk_log_tail: np.ndarray | None = None


@dataclass(frozen=True)
class StoredRows:
    """Rows as stored, checked but not decoded: n rows, T = seq_len, P = T - 1."""

    tokens: np.ndarray  #: int32 [n, T]
    target_logprobs: np.ndarray | None  #: float32 [n, P] (None: not read)
    #: the encoding's top-k arrays by name, with their stored dtypes and shapes (store-format.md, its encoding)
    topk: dict[str, np.ndarray]
