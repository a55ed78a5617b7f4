"""End to end on CPU: `ddk-teacher dump` with the hf backend on a 3-domain corpus, checked against the teacher."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ddk_store import open_store, tokenizer_fingerprint
from ddk_store.cli import main as store_cli
from ddk_store.validate import validate_store
from stage1_teacher.corpus import load_corpora, read_sourced_documents
from stage1_teacher.packing import doc_key, pack_rows
from ddk_testkit.commands import HELDOUT, SEQ_LEN, TOP_K, dump_argv
from ddk_testkit.processes import run_cli

DOMAINS = ["scripture", "python", "legal"]


def expected_rows(corpora_yaml: Path, tok) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, int]]:
    """(train rows, held-out rows) and stream length (tokens + one EOS per document) of every domain, rebuilt
    without run.py from the held-out rule: the lowest-key documents that fill HELDOUT rows are held out, the others
    train, each side in corpus order (the tiny tokenizer adds no BOS)."""
    rows, n_tokens = {}, {}
    for src in load_corpora(corpora_yaml):
        seen: dict[str, int] = {}
        docs = []
        for label, text in read_sourced_documents(src):
            seen[label] = seen.get(label, -1) + 1
            docs.append((doc_key(src.name, label, seen[label]), tok(text, add_special_tokens=False)["input_ids"]))
        held, filled = set(), 0
        for i in sorted(range(len(docs)), key=lambda i: docs[i][0]):
            if filled >= HELDOUT * SEQ_LEN:
                break
            held.add(i)
            filled += len(docs[i][1]) + 1
        train = pack_rows([d for i, (_, d) in enumerate(docs) if i not in held], SEQ_LEN, tok.eos_token_id).rows
        heldout = pack_rows([d for i, (_, d) in enumerate(docs) if i in held], SEQ_LEN, tok.eos_token_id,
                            max_rows=HELDOUT).rows
        rows[src.name] = (train, heldout)
        n_tokens[src.name] = sum(len(x) + 1 for _, x in docs)
    return rows, n_tokens


def test_store_contents_provenance_and_teacher_values(reference_store, tiny_teacher, corpora_yaml):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    r = open_store(str(reference_store))
    assert validate_store(str(reference_store)) == []
    res = CliRunner().invoke(store_cli, ["verify", str(reference_store)])
    assert res.exit_code == 0, res.output

    m = r.meta
    assert r.domains == DOMAINS and (r.seq_len, r.top_k) == (SEQ_LEN, TOP_K)
    assert m.teacher.backend == "hf" and m.teacher.engine.startswith("transformers ")
    assert m.teacher.revision.startswith("sha256:") and m.teacher.dtype == "float32"
    assert m.tokenizer.fingerprint == tokenizer_fingerprint(tok)
    assert m.tokenizer.eos_token_id == tok.eos_token_id and m.tokenizer.vocab_size == len(tok)
    assert m.settings["heldout_seqs"] == HELDOUT and set(m.settings["corpora"]) == set(DOMAINS)

    srcs = {s.name: s for s in load_corpora(corpora_yaml)}
    rows, n_tokens = expected_rows(corpora_yaml, tok)
    for d in DOMAINS:
        info = m.domain(d)
        # Provenance: every file with its real hash and size, document counts as written by the fixture.
        assert [Path(s.uri[len("file://"):]) for s in info.sources] == [Path(p) for p in srcs[d].files]
        first = Path(srcs[d].files[0]).read_bytes()
        assert info.sources[0].sha256 == hashlib.sha256(first).hexdigest() and info.sources[0].bytes == len(first)
        assert info.n_documents == 120 and info.n_skipped == 0
        train, held = rows[d]
        assert info.n_tokens == n_tokens[d] and train.size + held.size <= n_tokens[d]
        # Rows: held-out rows are whole documents of lowest key, training rows the other documents, in corpus order.
        n = train.shape[0]
        assert r.num_rows(d, "heldout") == HELDOUT and r.num_rows(d, "train") == n
        got_held = r.read_rows(d, "heldout", range(HELDOUT))
        assert np.array_equal(got_held.tokens, held)
        assert np.array_equal(r.read_rows(d, "train", range(n)).tokens, train)
        # Teacher perplexity is exp(mean held-out NLL) of the stored realized-token log-probs.
        nll = -got_held.target_logprobs.astype(np.float64).mean()
        assert info.heldout_nll == pytest.approx(nll, rel=1e-6) and info.heldout_ppl == pytest.approx(math.exp(nll))
        assert 1.0 < info.heldout_ppl < 2 * len(tok)  # a random teacher is near-uniform, never better than 1

    # Teacher values: a direct transformers forward on stored rows gives the same top-k (store quantizes log-probs
    # to 1/16 nat, so compare within half a step) and the same realized-token log-probs (stored as float32).
    model = AutoModelForCausalLM.from_pretrained(tiny_teacher, dtype=torch.float32).eval()
    b = r.read_rows("python", "train", [0, 5], order="rank")
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.from_numpy(b.tokens).long()).logits[:, :-1].float(), -1)
    top = torch.topk(lp, TOP_K, -1)
    assert np.abs(b.topk_logprobs - top.values.numpy()).max() <= 1 / 32 + 1e-6
    same = [set(a) == set(c) for a, c in zip(b.topk_ids.reshape(-1, TOP_K).tolist(),
                                            top.indices.numpy().reshape(-1, TOP_K).tolist())]
    assert np.mean(same) > 0.95  # differences only where near-ties straddle rank K
    tgt = lp.gather(-1, torch.from_numpy(b.tokens[:, 1:]).long().unsqueeze(-1))[..., 0].numpy()
    assert np.abs(b.target_logprobs - tgt).max() < 1e-4


def test_rerun_of_a_finished_dump_is_a_noop_that_says_so(reference_store, tiny_teacher, corpora_yaml):
    root_json = reference_store / "zarr.json"
    before = (root_json.read_bytes(), root_json.stat().st_mtime_ns)
    code, err = run_cli("ddk-teacher", dump_argv(tiny_teacher, corpora_yaml, reference_store))
    assert code == 0, err
    assert "already complete with these settings: nothing to do" in err
    assert "Loading weights" not in err  # the teacher was not even loaded
    assert (root_json.read_bytes(), root_json.stat().st_mtime_ns) == before


def test_summary_reports_tokens_bytes_and_perplexity(tiny_teacher, corpora_yaml, tmp_path):
    code, err = run_cli("ddk-teacher", dump_argv(tiny_teacher, corpora_yaml, tmp_path / "s",
                                                 "--max-rows-per-domain", "3"))
    assert code == 0, err
    assert "backend: hf (requested)" in err
    assert f"summary: {3 * 3 * SEQ_LEN + 3 * HELDOUT * SEQ_LEN:,} tokens scored by hf" in err
    assert "bytes/token" in err
    for d in DOMAINS:
        assert f"teacher held-out perplexity {d}:" in err
    assert open_store(str(tmp_path / "s")).num_rows("legal", "train") == 3


def test_per_domain_max_rows_overrides_the_command_cap(tiny_teacher, corpora_yaml, tmp_path):
    """A natural (unequal) mixture: one domain capped in CORPORA.yaml, the others by --max-rows-per-domain."""
    text = corpora_yaml.read_text(encoding="utf-8").replace("format: lines}", "format: lines, max_rows: 2}")
    capped = corpora_yaml.parent / "corpora_capped.yaml"  # beside the original: its relative paths still resolve
    capped.write_text(text, encoding="utf-8")
    code, err = run_cli("ddk-teacher", dump_argv(tiny_teacher, capped, tmp_path / "s", "--max-rows-per-domain",
                                                 "5"))
    assert code == 0, err
    r = open_store(str(tmp_path / "s"))
    assert {d: r.num_rows(d, "train") for d in DOMAINS} == {"scripture": 2, "python": 5, "legal": 5}
    assert all(r.num_rows(d, "heldout") == HELDOUT for d in DOMAINS)
    assert r.meta.settings["corpora"]["scripture"]["max_rows"] == 2
