"""Tokenizing contracts that mutation campaign 16 found unchecked: which BOS a tokenizer adds by default, the ids of
every text (empty ones included) whatever its batch, a slow tokenizer's path, ids beyond int16, a fast tokenizer's
own truncation and padding ignored, file hashes in their paths' order and a temporary tokenizer file removed.
Expected ids come from a separately built `tokenizers.Tokenizer` or are written by hand."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from stage1_teacher.tokenize import DocTokenizer, bos_to_add

TEXTS = ["In the beginning God created the heaven and the earth.", "", "def add(a, b):\n    return a + b\n", ""]


def _fast(tokenizer, **special):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **special)


@pytest.fixture(scope="module")
def kit_json(tmp_path_factory) -> str:
    """The test kit's byte-level BPE tokenizer, as tokenizer.json text."""
    from ddk_testkit.models import build_tiny_tokenizer

    d = tmp_path_factory.mktemp("tok")
    build_tiny_tokenizer(d)
    return (d / "tokenizer.json").read_text()


def _backend(kit_json: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(kit_json)


def _by_hand(kit_json: str, text: str) -> list[int]:
    """The ids of ``text`` from a separately built Rust tokenizer, one text at a time, no special tokens."""
    return _backend(kit_json).encode(text, add_special_tokens=False).ids


def _with_template(kit_json: str, single: str, extra: list[str] = ()):
    from tokenizers.processors import TemplateProcessing

    t = _backend(kit_json)
    t.add_special_tokens(list(extra))
    names = ["<|endoftext|>", *extra]
    t.post_processor = TemplateProcessing(single=single, special_tokens=[(n, t.token_to_id(n)) for n in names])
    return _fast(t, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def test_bos_to_add_is_the_bos_a_llama_style_post_processor_puts_first_and_none_otherwise(kit_json):
    """BOS is added when the tokenizer's default call puts exactly BOS before the text (Llama-style); nothing
    when it adds nothing (GPT-2 style), when the tokenizer has no BOS token at all, or when it puts BOS and
    another token before the text (BOS alone would not reproduce its default encoding)."""
    eot = _backend(kit_json).token_to_id("<|endoftext|>")
    assert bos_to_add(_with_template(kit_json, "<|endoftext|> $A")) == eot
    assert bos_to_add(_with_template(kit_json, "<|endoftext|> $A <|endoftext|>")) == eot
    assert bos_to_add(_fast(_backend(kit_json), bos_token="<|endoftext|>", eos_token="<|endoftext|>")) is None
    assert bos_to_add(_fast(_backend(kit_json), eos_token="<|endoftext|>")) is None
    assert bos_to_add(_with_template(kit_json, "<|endoftext|> <lang> $A", extra=["<lang>"])) is None


@pytest.mark.parametrize("texts", [TEXTS, ["", ""], [""], []])
def test_every_text_gets_its_own_ids_empty_ones_included(kit_json, texts):
    """One int32 array per text, in order, each equal to that text's ids alone: an empty text is an empty array
    (never dropped, never a neighbour's ids), also when every text of a batch is empty."""
    with DocTokenizer(_fast(_backend(kit_json), eos_token="<|endoftext|>")) as coder:
        got = list(coder.encode(texts))
    assert len(got) == len(texts)
    for ids, text in zip(got, texts):
        assert ids.dtype == np.int32 and ids.tolist() == _by_hand(kit_json, text)


def test_no_special_tokens_are_added_in_this_process_or_in_workers(kit_json):
    """A Llama-style tokenizer that puts BOS first by default: DocTokenizer's ids hold no special token (the
    packer adds BOS and EOS itself), alike with one process and with two workers over several batches."""
    tok = _with_template(kit_json, "<|endoftext|> $A <|endoftext|>")
    texts = TEXTS * 3
    want = [_by_hand(kit_json, t) for t in texts]
    for workers in (1, 2):
        with DocTokenizer(tok, workers=workers, batch=2) as coder:
            assert [a.tolist() for a in coder.encode(texts)] == want, workers


def test_a_fast_tokenizers_own_truncation_and_padding_do_not_cut_or_pad_documents(kit_json):
    """A tokenizer.json saved with truncation (8 tokens) and padding (to 64) switched on: DocTokenizer encodes
    each document whole and unpadded, as `tok(texts, add_special_tokens=False)` does."""
    t = _backend(kit_json)
    t.enable_truncation(max_length=8)
    t.enable_padding(length=64, pad_id=0, pad_token="<|endoftext|>")
    with DocTokenizer(_fast(t, eos_token="<|endoftext|>")) as coder:
        got = [a.tolist() for a in coder.encode(TEXTS[:1])]
    assert got == [_by_hand(kit_json, TEXTS[0])] and len(got[0]) > 8


def test_ids_beyond_int16_survive(tmp_path):
    """A vocabulary whose ids exceed 2**15 and 2**16 (a 100k-token tokenizer): the ids come back unchanged."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    t = Tokenizer(WordLevel({"[UNK]": 0, "hi": 40_000, "there": 70_000, "<eos>": 99_999}, unk_token="[UNK]"))
    t.pre_tokenizer = Whitespace()
    with DocTokenizer(_fast(t, eos_token="<eos>")) as coder:
        assert [a.tolist() for a in coder.encode(["hi there", "there hi hi"])] == [[40_000, 70_000],
                                                                                 [70_000, 40_000, 40_000]]



def _slow_tokenizer():
    from transformers import PreTrainedTokenizer

    class CharTokenizer(PreTrainedTokenizer):
        vocab = {"<unk>": 0, "<s>": 1, **{c: 2 + i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz ")}}

        def __init__(self):
            super().__init__(bos_token="<s>", eos_token="<s>", unk_token="<unk>")

        @property
        def vocab_size(self):
            return len(self.vocab)

        def get_vocab(self):
            return dict(self.vocab)

        def _tokenize(self, text, **kw):
            return list(text)

        def _convert_token_to_id(self, token):
            return self.vocab.get(token, 0)

        def _convert_id_to_token(self, index):
            return {v: k for k, v in self.vocab.items()}[index]

        def build_inputs_with_special_tokens(self, ids0, ids1=None):
            return [1, *ids0] + ([] if ids1 is None else [1, *ids1])

    return CharTokenizer()


def test_a_slow_tokenizer_is_run_here_without_special_tokens_even_when_workers_are_asked(tmp_path):
    """A slow tokenizer has no JSON for workers: it runs in this process (workers forced to 1) over several
    batches, and its ids hold no BOS although its default call adds one."""
    tok = _slow_tokenizer()
    assert tok("ab")["input_ids"] == [1, 2, 3]  # (the default call does add BOS)
    texts = ["ab", "", "ba c", "zz"] * 3
    with DocTokenizer(tok, workers=2, batch=2) as coder:
        assert coder.workers == 1
        got = [a.tolist() for a in coder.encode(texts)]
    want = [[2 + "abcdefghijklmnopqrstuvwxyz ".index(c) for c in t] for t in texts]
    assert got == want


def test_worker_file_hashes_are_keyed_by_their_own_paths_and_a_temporary_tokenizer_file_is_removed(
        kit_json, tmp_path, monkeypatch):
    """hash_files with two workers: each path maps to its own (sha256, size), whatever order the hashes would
    sort in. With a cache that cannot be written, the workers' tokenizer file is a temporary one, removed at
    close."""
    import tempfile

    import ddk_store.paths

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    monkeypatch.setattr(ddk_store.paths, "cache_dir", lambda *parts: blocker.joinpath(*parts))
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    files = []
    for i, body in enumerate([b"zzz", b"a", b"", b"middle" * 1000]):
        p = tmp_path / f"f{i}"
        p.write_bytes(body)
        files.append(str(p))
    with DocTokenizer(_fast(_backend(kit_json), eos_token="<|endoftext|>"), workers=2) as coder:
        got = coder.hash_files(files)
        assert len(list(temp.iterdir())) == 1  # the workers' tokenizer file
    assert got == {f: (hashlib.sha256(Path(f).read_bytes()).hexdigest(), Path(f).stat().st_size) for f in files}
    assert list(temp.iterdir()) == []


_WORKER = """
import os, sys, time
from stage1_teacher import tokenworker
tokenworker.PARENT_POLL_S = 0.05
tokenworker._exit_with_parent(int(sys.argv[1]))
print("up", flush=True)
time.sleep(120)
"""

_PARENT = """
import os, signal, subprocess, sys, time
b = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid())], stdout=subprocess.PIPE,
                     stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
assert b.stdout.readline() == "up\\n"
time.sleep(0.3)
print(b.pid, b.poll() is None, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # ended, not yet reaped by its adopter
    except FileNotFoundError:
        return True


def test_a_worker_outlives_no_killed_parent_but_lives_while_it_does():
    """A worker watching its parent's id (as init sets it up) keeps running while that parent lives, and ends by
    itself within a few polls once the parent is SIGKILLed (the pool could not shut it down)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    a = subprocess.run([sys.executable, "-c", _PARENT, _WORKER], capture_output=True, text=True, timeout=60,
                       env=env)
    assert a.returncode == -signal.SIGKILL, a.stderr
    pid, alive = a.stdout.split()
    pid = int(pid)
    try:
        assert alive == "True", "the worker ended while its parent was still there"
        deadline = time.monotonic() + 30  # (a hang guard for a loaded machine: the worker would sleep 120 s)
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(pid), "the worker outlived its SIGKILLed parent"
    finally:
        if not _gone(pid):
            os.kill(pid, signal.SIGKILL)
