"""SIGKILL a real pack process at several moments of the pack phase, run it again to the end: the packed rows and
the pack document must equal an uninterrupted pack's. Small chunks (4 rows) give dozens of resume points."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ddk_store.packed import PACK_ATTR, PACK_PREFIX, PackedRows
from ddk_testkit.corpora import write_corpus
from ddk_testkit.models import build_tiny_teacher

SCRIPT = """
import sys
from ddk_store import tokenizer_fingerprint
from stage1_teacher.corpus import load_corpora
from stage1_teacher.pack import pack_corpora, pack_identity
from stage1_teacher.plan import settings_of
from stage1_teacher.teacher import load_tokenizer, resolve_teacher
from stage1_teacher.tokenize import DocTokenizer, bos_to_add

import stage1_teacher.pack
stage1_teacher.pack.SAVE_EVERY_S = stage1_teacher.pack.SAVE_COST_FACTOR = 0  # a cursor after every chunk
teacher, corpora_yaml, store = sys.argv[1:4]
tok = load_tokenizer(resolve_teacher(teacher))
corpora = load_corpora(corpora_yaml)
bos = bos_to_add(tok)
settings = settings_of(corpora, heldout_seqs=4, max_rows_per_domain=0, on_bad_utf8="skip", trust_remote_code=False,
                       bos_token_id=bos)
identity = pack_identity(seq_len=32, fingerprint=tokenizer_fingerprint(tok), eos_token_id=tok.eos_token_id,
                         settings=settings)
with DocTokenizer(tok, workers=2, batch=16) as coder:
    pack_corpora(store, corpora, coder, identity=identity, heldout_seqs=4, max_rows_per_domain=0, on_bad_utf8="skip",
                 eos_id=tok.eos_token_id, bos_id=bos, vocab_size=len(tok), chunk_rows=4, echo=lambda m: None)
"""


def pack_argv(teacher: Path, corpora: Path, store: Path) -> list[str]:
    return [sys.executable, "-c", SCRIPT, str(teacher), str(corpora), str(store)]


def progress(store: Path) -> tuple[int, int]:
    """(domains packed, training rows of the domain being packed) as the pack document on disk says."""
    try:
        doc = json.loads((store / PACK_PREFIX / "zarr.json").read_text())["attributes"][PACK_ATTR]
    except (OSError, ValueError, KeyError):
        return -1, 0
    states = list(doc["domains"].values())
    packed = sum(s["state"] == "packed" for s in states)
    rows = next((s["cursor"]["rows"] for s in states if s["state"] == "training"), 0)
    return packed, rows


def snapshot(store: Path) -> dict:
    pack = PackedRows(str(store), read_only=True)
    state = pack.read_state()
    out = {"state": json.dumps(state, sort_keys=True)}
    for d, st in state["domains"].items():
        for split in ("train", "heldout"):
            out[f"{d}/{split}"] = pack.read_rows(d, split, 0, st[f"{split}_rows"], seq_len=32,
                                                 chunk_rows=st["chunk_rows"], dtype=np.dtype("<u2"))
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pack_kills")
    teacher = build_tiny_teacher(root / "teacher")
    corpora = write_corpus(root / "corpus", n_docs=200)
    ref = root / "ref"
    subprocess.run(pack_argv(teacher, corpora, ref), check=True, capture_output=True, timeout=300)
    return teacher, corpora, snapshot(ref)


def kill_when(argv: list[str], due) -> bool:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and not due():
        time.sleep(0.002)
    fired = proc.poll() is None
    if fired:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return fired


def test_sigkill_pack_at_five_moments_then_rerun_is_identical(inputs, tmp_path):
    teacher, corpora, reference = inputs
    store = tmp_path / "store"
    argv = pack_argv(teacher, corpora, store)
    t0 = [0.0]
    moments = {  # one store killed five times in a row: each rerun is the next victim
        # 3 s in (imports, or the first select pass), or as soon as the first pack document appears
        "start-up or first select pass": lambda: time.monotonic() - t0[0] > 3.0 or (store / PACK_PREFIX).exists(),
        "after 2 training chunks": lambda: progress(store)[1] >= 8,
        "after the first domain is packed": lambda: progress(store)[0] >= 1,
        "mid-training of the second domain": lambda: progress(store)[0] == 1 and progress(store)[1] >= 4,
        "after two domains": lambda: progress(store)[0] >= 2,
    }
    fired = []
    for name, due in moments.items():
        t0[0] = time.monotonic()
        fired.append((name, kill_when(argv, due), progress(store)))
    subprocess.run(argv, check=True, capture_output=True, timeout=300)
    got = snapshot(store)
    assert sorted(got) == sorted(reference)
    for k in reference:
        same = got[k] == reference[k] if isinstance(reference[k], str) else np.array_equal(got[k], reference[k])
        assert same, (k, fired)
    assert sum(f for _, f, _ in fired) >= 4, fired  # the kills hit live processes


POOL_SCRIPT = """
import sys, time
from stage1_teacher.teacher import load_tokenizer, resolve_teacher
from stage1_teacher.tokenize import DocTokenizer
coder = DocTokenizer(load_tokenizer(resolve_teacher(sys.argv[1])), workers=2, batch=4)
list(coder.encode(["a few words of text"] * 64))  # more than one batch: the worker pool starts
print("ready", flush=True)
time.sleep(600)
"""


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def _running(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_tokenizer_workers_end_when_their_process_is_killed(inputs):
    """SIGKILL (or the OOM killer) on a dump left its tokenizer workers waiting forever on their queue."""
    teacher = inputs[0]
    proc = subprocess.Popen([sys.executable, "-c", POOL_SCRIPT, str(teacher)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        workers = _children(proc.pid)
        assert len(workers) >= 2 and all(_running(w) for w in workers), workers
    finally:
        proc.kill()
        proc.wait(timeout=60)
    deadline = time.monotonic() + 15
    while any(_running(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [w for w in workers if _running(w)], "tokenizer workers outlived the killed process"


def test_a_tokenizer_worker_whose_parent_is_gone_when_it_starts_ends(inputs):
    """A worker still starting up when its dump is killed is adopted before its initializer runs (seen under load:
    the test above then found it alive). It watches the process id its parent gave it, not whichever process is its
    parent when it first looks, so it ends instead of watching its adopter forever."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process id that is no one's parent any more
    script = ("import sys, time; from stage1_teacher.tokenworker import init\n"
              f"init(sys.argv[1], {gone.pid}); time.sleep(60); print('still here')")
    proc = subprocess.run([sys.executable, "-c", script, str(inputs[0] / "tokenizer.json")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "still here" not in proc.stdout, (proc.stdout, proc.stderr)
