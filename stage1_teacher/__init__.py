"""Stage 1 of ddk: run a teacher over domain corpora and write its top-k log-probs into a ddk store."""

import multiprocessing as _mp

__all__ = ["Stage1Config", "DumpSummary", "run"]

# A spawned worker imports this package while it unpickles its start-up data, before parent_process() is set:
# `_inheriting` is true then (multiprocessing.spawn._main).
if _mp.parent_process() is None and not getattr(_mp.current_process(), "_inheriting", False):
    from .config import Stage1Config
    from .run import DumpSummary, run
else:  # a tokenizer worker (tokenize.py) imports only what it uses: not the store and engine stack (~1 CPU-s each)

    def __getattr__(name: str):
        if name == "Stage1Config":
            from .config import Stage1Config

            return Stage1Config
        if name in ("DumpSummary", "run"):
            from . import run as module

            globals().update(DumpSummary=module.DumpSummary, run=module.run)
            return globals()[name]
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
