"""The bad-input table: every case over the three CLIs, the tiny assets they use, and an in-process runner.

tests/reliability/test_bad_inputs.py asserts on these cases and bench/chaos/bad_inputs_table.py prints them as the
markdown table of docs/reliability_bad_inputs.md, so the documented error lines are exactly the tested ones.

A case builds its argv (and any bad file it needs) in a fresh directory, runs the real console entry in-process and
must end with a non-zero exit, exactly one error line (``error: ...`` for ddk's own checks, ``Error: ...`` for click's
parameter-type errors), no traceback, and every path named on its command line exactly as it was before.

``workspace``: the tiny assets every case shares; ``cases``: the table; ``runner``: one case run and what it left.
"""

from .cases import CASES, ENTRY_POINTS, MARKER, BadInput, is_root
from .runner import Outcome, run_case
from .workspace import DUMP_FLAGS, TRAIN_FLAGS, Workspace

__all__ = ["CASES", "ENTRY_POINTS", "MARKER", "BadInput", "is_root", "Outcome", "run_case", "DUMP_FLAGS",
           "TRAIN_FLAGS", "Workspace"]
