"""Stage 1 of ddk: run a teacher over domain corpora and write its top-k log-probs into a ddk store."""

from .config import Stage1Config
from .run import DumpSummary, run

__all__ = ["Stage1Config", "DumpSummary", "run"]
