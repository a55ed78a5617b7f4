"""Whether a store's rows can serve a run's settings, checked before any model is loaded: training rows in every
domain the mixture samples, an epoch cap the steps can keep, held-out rows in every domain (Eq. 1 steers by them)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ddk_store.errors import ConfigError

from . import reweighting as rw
from .config import Stage2Config
from .evaluate import heldout_row_count


def check_store_rows(cfg: Stage2Config, reader, num_rows: Sequence[int], static: np.ndarray | None,
                     rows_per_step: int) -> None:
    """ConfigError, naming the domain and the way out, when the store ``reader`` (training rows ``num_rows`` per
    domain) cannot serve ``cfg`` (``static``: its --static-weights vector, or None)."""
    domains = reader.domains
    if not sum(num_rows):
        raise ConfigError(f"store {cfg.store}: no domain has training rows (its domains: {', '.join(domains)}); dump "
                          "the store again with more text per domain or a shorter --seq-len")
    rw.check_epoch_cap(cfg.max_epochs_per_domain, num_rows, steps=cfg.steps, rows_per_step=rows_per_step,
                       sampled=None if static is None else [w > 0 for w in static], why="--static-weights")
    for i, (d, n) in enumerate(zip(domains, num_rows)):
        if n == 0 and (cfg.mixing in ("ddk", "wo-fs", "uniform") or (static is not None and static[i] > 0)):
            raise ConfigError(f"store {cfg.store}: domain {d!r} has no training rows; mixing {cfg.mixing!r} samples "
                              + ("every domain" if static is None else f"it at weight {static[i]:g} (--static-weights: "
                                 f"give {d} weight 0)"))
        if heldout_row_count(reader, d, cfg.heldout_rows) == 0:
            raise ConfigError(f"store {cfg.store}: domain {d!r} has no held-out rows; every domain's held-out "
                              "perplexity is measured (and Eq. 1 steers by it)")
