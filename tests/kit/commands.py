"""Command lines of the tiny dumps and training runs the tests and campaigns make."""

from __future__ import annotations

from pathlib import Path

#: Every dump of the tiny corpus: tiny rows, small units (dozens of resume points), few held-out rows, hf on CPU.
SEQ_LEN = 32
TOP_K = 8
HELDOUT = 4
UNIT_ROWS = 16
DUMP_FLAGS = ["--seq-len", str(SEQ_LEN), "--top-k", str(TOP_K), "--heldout-seqs", str(HELDOUT), "--backend", "hf",
              "--unit-rows", str(UNIT_ROWS), "--batch-tokens", str(4 * SEQ_LEN), "--device", "cpu",
              "--no-progress"]
#: The short run of the stage-2 tests (12 steps, an interval every 4).
SHORT_RUN = {"steps": 12, "interval": 4, "batch_size": 4, "lr": 3e-3, "seed": 0, "eval_batch_size": 4,
             "device": "cpu"}


def dump_argv(teacher: Path, corpora: Path, store: Path | str, *extra: str) -> list[str]:
    """`ddk-teacher dump` arguments with :data:`DUMP_FLAGS`, then ``extra``."""
    return ["dump", "--teacher", str(teacher), "--corpora", str(corpora), "--store", str(store), *DUMP_FLAGS, *extra]


def train_argv(store: str, student: Path, out: Path, **flags) -> list[str]:
    """`ddk-student train` arguments: each keyword becomes --flag VALUE (True: bare flag; False/None: left out)."""
    args = ["train", "--store", store, "--student", str(student), "--out", str(out)]
    for k, v in flags.items():
        flag = "--" + k.replace("_", "-")
        if v is True:
            args.append(flag)
        elif v is not False and v is not None:
            args += [flag, str(v)]
    return args


def train_args(store: str, student: Path, out: Path, **flags) -> list[str]:
    """:func:`train_argv` of :data:`SHORT_RUN`, ``flags`` added or overriding."""
    return train_argv(store, student, out, **{**SHORT_RUN, **flags})
