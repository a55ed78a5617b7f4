"""Helpers shared by the stage-2 tests: tiny stores, and the real CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ddk_store import tokenizer_fingerprint
from ddk_store.testing import make_tiny_store

REPO = Path(__file__).resolve().parents[2]
SEQ_LEN = 16
TOP_K = 8

def make_store(path: Path, tokenizer, **kw):
    kw.setdefault("fingerprint", tokenizer_fingerprint(tokenizer))
    kw.setdefault("vocab_size", len(tokenizer))
    kw.setdefault("seq_len", SEQ_LEN)
    kw.setdefault("top_k", TOP_K)
    return make_tiny_store(str(path), **kw)

def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["TQDM_DISABLE"] = "1"
    return env

def run_cli(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run the real ``ddk-student`` entry point in a fresh interpreter."""
    proc = subprocess.run([sys.executable, "-m", "stage2_student.cli", *args], cwd=REPO, env=cli_env(),
                          capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"ddk-student {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def train_args(store: str, student: Path, out: Path, **flags) -> list[str]:
    base = {"steps": 12, "interval": 4, "batch_size": 4, "lr": 3e-3, "seed": 0, "eval_batch_size": 4}
    base.update(flags)
    return train_argv(store, student, out, **base)


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
