"""``--report-to``: where a run's records go besides metrics.jsonl, which stays the record.

``none`` (the default) writes nothing more. ``tensorboard`` writes every record as TensorBoard scalars, through
``torch.utils.tensorboard``, into ``RUN/tensorboard/`` (watch it with ``tensorboard --logdir RUN/tensorboard``):

    step records           train/loss, train/ce, train/kl, train/lr, train/grad_norm, train/tokens_per_s
    interval and final     ratio/<domain>, weights/<domain>, factor/<domain>, ppl_student/<domain>, cap/<domain>
                           (with --max-epochs-per-domain), and summary/mean, summary/natural_mean, summary/geo_mean,
                           summary/worst (:mod:`stage2_student.summary`)

each at the record's step, plus a custom-scalars layout (TensorBoard's "Custom Scalars" tab) that draws all domains of
ratio and of weights on one chart each. ``tokens_per_s`` is left out where the record has 0.0 (runs of earlier
versions wrote it for a last step off the --log-every grid, which they did not measure).

The event files are a view of metrics.jsonl: at the first record of a process the sink deletes ``RUN/tensorboard/``
and writes every record metrics.jsonl holds (a resumed run's kept records, after the resume dropped the rest, and
the record just appended), then each record as it is appended. A resumed run therefore leaves no stale points.
Interval records are flushed at once, step records every 10 s; a final record closes the writer.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ddk_store.errors import MissingDependencyError

from . import rundir
from .summary import summarize

#: Every value of ``Stage2Config.report_to``.
REPORT_TO = ("none", "tensorboard")
STEP_TAGS = ("loss", "ce", "kl", "lr", "grad_norm", "tokens_per_s")
#: Per-domain keys of interval/final records written as ``<key>/<domain>``.
DOMAIN_TAGS = ("ratio", "weights", "factor", "ppl_student", "cap")


def open_sink(report_to: str, run_dir: str | Path) -> rundir.RecordSink | None:
    """The sink of ``--report-to`` (None for ``none``). Checks its package now, before a model is loaded; it opens
    its files at the first record."""
    if report_to == "none":
        return None
    if report_to == "tensorboard":
        return TensorBoardSink(run_dir)
    raise ValueError(f"unknown report_to {report_to!r}; expected one of {REPORT_TO}")


def scalars(record: dict[str, Any]) -> list[tuple[str, float]]:
    """The (tag, value) pairs one metrics.jsonl record becomes (pure; the layout in the module docstring)."""
    event = record.get("event")
    if event == rundir.STEP:
        return [(f"train/{k}", float(record[k])) for k in STEP_TAGS
                if k in record and not (k == "tokens_per_s" and record[k] == 0.0)]  # (older runs' unmeasured)
    if event not in (rundir.INTERVAL, rundir.FINAL):
        return []
    out = [(f"{key}/{d}", float(v)) for key in DOMAIN_TAGS if key in record
           for d, v in zip(record["domains"], record[key])]
    summary = summarize(record["ratio"], record.get("train_rows"))
    return out + [(f"summary/{k}", float(v)) for k, v in summary.items() if v is not None]


#: TensorBoard's custom-scalars layout: every domain of a per-domain quantity on one chart.
LAYOUT = {"DDK": {"ratio (student/teacher ppl; lower is better, 1 = teacher)": ["Multiline", [r"ratio/.*"]],
                  "sampling weights": ["Multiline", [r"weights/.*"]],
                  "summary of the ratios": ["Multiline", [r"summary/.*"]]}}


class TensorBoardSink:
    """Writes each record's :func:`scalars` into ``RUN/tensorboard/`` (see the module docstring)."""

    def __init__(self, run_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise MissingDependencyError(
                "--report-to tensorboard needs the tensorboard package; install it (pip install tensorboard, or "
                "pip install -e '.[tensorboard]' in the ddk checkout) or use --report-to none") from None
        self._summary_writer = SummaryWriter
        self.run_dir = Path(run_dir)
        self.log_dir = self.run_dir / rundir.TENSORBOARD_DIR
        self._writer: Any = None

    def write(self, record: dict[str, Any]) -> None:
        if self._writer is None:  # first record of this process: mirror metrics.jsonl as it stands (ends in it)
            shutil.rmtree(self.log_dir, ignore_errors=True)
            self._writer = self._summary_writer(str(self.log_dir), flush_secs=10)
            self._writer.add_custom_scalars(LAYOUT)
            for rec in rundir.read_records(self.run_dir):
                self._add(rec)
        else:
            self._add(record)
        if record.get("event") in (rundir.INTERVAL, rundir.FINAL):
            self._writer.flush()
        if record.get("event") == rundir.FINAL:
            self.close()

    def _add(self, record: dict[str, Any]) -> None:
        for tag, value in scalars(record):
            self._writer.add_scalar(tag, value, global_step=int(record["step"]))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
