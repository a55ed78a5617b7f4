"""A 151,936-token vocabulary (Qwen2's size) end to end: hf dump -> store with uint32 ids -> train -> eval.

The tokenizer is real (a `tokenizers` word-level model over 151,936 words, saved as a fast HF tokenizer) and the
corpus is made of its words, most with ids above 65,535, so the dump, the store's id encoding, training (fused
loss over the top-k ids) and evaluation all see token ids beyond 2^16. Teacher and student: Llama, hidden 64, 2 layers.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from ddk_store import open_store
from ddk_testkit.commands import dump_argv, train_args
from ddk_testkit.processes import run_cli
from ddk_testkit.vocab import build_llama, build_word_tokenizer

VOCAB = 151_936
DOMAINS = ("alpha", "beta")


def write_corpus(root):
    """Two domains of 'lines' documents; each domain draws from its own band of high ids (and a few low ones)."""
    root.mkdir(parents=True)
    rng = random.Random(0)
    bands = {"alpha": (65_536, 100_000), "beta": (120_000, VOCAB - 1)}
    for d in DOMAINS:
        lo, hi = bands[d]
        pool = [rng.randint(lo, hi) for _ in range(64)] + list(range(2, 10))
        docs = [" ".join(f"w{rng.choice(pool)}" for _ in range(40)) for _ in range(12)]
        (root / f"{d}.txt").write_text("\n".join(docs) + "\n")
    (root / "corpora.yaml").write_text("domains:\n" + "".join(f"  {d}: {{paths: [{d}.txt], format: lines}}\n"
                                                              for d in DOMAINS))
    return root / "corpora.yaml"


@pytest.fixture(scope="module")
def large_vocab_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab152k")
    tok = build_word_tokenizer(root / "tok", VOCAB)
    assert len(tok) == VOCAB and tok.convert_tokens_to_ids("w151935") == VOCAB - 1
    tiny = dict(vocab_size=VOCAB, hidden_size=64, num_layers=2, num_heads=1)
    teacher = build_llama(root / "teacher", root / "tok", seed=1, **tiny)
    student = build_llama(root / "student", root / "tok", seed=2, **tiny)
    store = root / "store"
    code, err = run_cli("ddk-teacher", dump_argv(teacher, write_corpus(root / "corpus"), store))
    assert code == 0, err[-3000:]
    out = root / "run"
    code, err = run_cli("ddk-student", train_args(str(store), student, out, steps=3, interval=3, mixing="natural", batch_size=4,
                                                  log_every=1, no_progress=True))
    assert code == 0, err[-3000:]
    return store, out


def test_store_keeps_ids_above_2_16_as_uint32(large_vocab_run):
    store, _ = large_vocab_run
    reader = open_store(str(store))
    assert reader.vocab_size == VOCAB
    for d in DOMAINS:
        arrays = reader.arrays(d, "train")
        assert arrays["tokens"].dtype == np.uint32 and arrays["topk_ids"].dtype == np.uint32
        batch = reader.read_rows(d, "train", [0, 1])
        assert int(np.asarray(batch.tokens).max()) > 65_535  # the corpus's own ids, through packing
        ids = np.asarray(batch.topk_ids)
        assert int(ids.max()) > 65_535 and int(ids.max()) < VOCAB  # decoded, not wrapped at 2^16


def test_training_and_eval_run_on_the_large_vocabulary(large_vocab_run):
    store, out = large_vocab_run
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if r["event"] == "step"]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all(np.isfinite([r["loss"], r["ce"], r["kl"]]).all() for r in steps)
    # random-init student over 151,936 tokens: CE near log V, not near log 65,536 (ids were not truncated)
    assert steps[0]["ce"] == pytest.approx(np.log(VOCAB), rel=0.1)
    code, text = run_cli("ddk-student", ["eval", "--store", str(store), "--model", str(out), "--json",
                                         "--device", "cpu", "--no-progress"])
    assert code == 0, text
    doc = json.loads(next(ln for ln in text.splitlines() if ln.startswith("{")))
    assert doc["domains"] == list(DOMAINS) and all(np.isfinite(doc["ppl_student"]))
