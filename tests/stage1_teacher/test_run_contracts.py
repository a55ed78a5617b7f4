"""run()'s contracts that a mutation campaign found unchecked: the figures a no-op rerun reports, the summary's
fields and lines, the store size that cannot be measured, a passed backend of another kind, the messages of a
sharded dump, a shard with nothing left that loads no teacher, and the store dtype of a CPU teacher. Every dump is
the tiny teacher's, in this process, on the hf backend."""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import re

import pytest

from ddk_store import StoreReader, open_store, spec
from ddk_store.errors import ConfigError, StoreExistsError, StoreFormatError
from ddk_testkit.commands import HELDOUT, SEQ_LEN, TOP_K, UNIT_ROWS
from ddk_testkit.corpora import write_corpus
from stage1_teacher.backends import BackendOptions
from stage1_teacher.backends.hf import HFBackend
from stage1_teacher.config import Stage1Config
from stage1_teacher.devices import FINALIZER_ENV
from stage1_teacher.run import DumpSummary, print_summary, run

run_mod = importlib.import_module("stage1_teacher.run")  # (the package's `run` is the function)


def cfg_for(teacher, corpora, store, **kw) -> Stage1Config:
    return Stage1Config(teacher=str(teacher), corpora=str(corpora), store=str(store), seq_len=SEQ_LEN, top_k=TOP_K,
                        heldout_seqs=HELDOUT, backend="hf", unit_rows=UNIT_ROWS, batch_tokens=4 * SEQ_LEN,
                        device="cpu", progress=False, **{"max_rows_per_domain": 20, **kw})


@pytest.fixture(scope="module")
def backend(tiny_teacher):
    return HFBackend(BackendOptions(model_dir=str(tiny_teacher), top_k=TOP_K, seq_len=SEQ_LEN,
                                    batch_tokens=4 * SEQ_LEN, device="cpu"))


@pytest.fixture(scope="module")
def dumped(tiny_teacher, corpora_yaml, tmp_path_factory, backend):
    """One complete dump (its summary and lines); tests only rerun it (a no-op writes nothing)."""
    store = tmp_path_factory.mktemp("run_contracts") / "store"
    lines: list[str] = []
    summary = run(cfg_for(tiny_teacher, corpora_yaml, store), echo=lines.append, backend=backend)
    assert summary.status == "complete"
    return store, summary, lines


def _positions(store) -> int:
    r = open_store(str(store))
    return sum(r.num_rows(d, s) for d in r.domains for s in spec.SPLITS) * (SEQ_LEN - 1)


# ------------------------------------------------------------------------------------------------ the summary
def test_a_complete_dump_reports_every_position_stored_and_the_time_it_took(dumped):
    # positions of both splits (held-out rows are scored too), seq_len - 1 per row; the teacher's and the scoring
    # loop's seconds are measured, the whole run's seconds include them, and the tok/s line divides by them
    store, s, lines = dumped
    assert s.store_positions == _positions(store)
    assert s.tokens_scored == s.store_positions // (SEQ_LEN - 1) * SEQ_LEN  # every row's tokens went through
    assert 0 < s.teacher_seconds and 0 < s.score_seconds <= s.seconds
    (line,) = [x for x in lines if x.startswith(f"summary: {s.tokens_scored:,} tokens scored by hf in ")]
    assert f"({s.tokens_scored / s.seconds:,.0f} tok/s)" in line and not line.endswith("(0 tok/s)")
    assert s.store_bytes == open_store(str(store)).bytes_on_disk()
    assert s.heldout_ppl == {d.name: d.heldout_ppl for d in open_store(str(store)).meta.domains}


def test_a_noop_rerun_reports_the_stores_figures_as_the_dump_did(tiny_teacher, corpora_yaml, dumped, backend):
    # the benchmark and callers read these from the no-op summary too: the positions of both splits, seq_len - 1
    # per row, the size on disk and every domain's held-out perplexity
    store, first, _ = dumped
    lines: list[str] = []
    s = run(cfg_for(tiny_teacher, corpora_yaml, store), echo=lines.append, backend=backend)
    assert s.status == "noop" and s.tokens_scored == 0
    assert s.store_positions == first.store_positions == _positions(store)
    assert s.store_bytes == first.store_bytes and s.store_bytes
    assert s.heldout_ppl == first.heldout_ppl and len(s.heldout_ppl) == 3
    assert f"{store} is already complete with these settings: nothing to do" in lines
    assert not any("--overwrite" in x for x in lines)  # the hint about --overwrite is for a run that passed it


def test_a_noop_rerun_with_overwrite_says_what_overwrite_replaces(tiny_teacher, corpora_yaml, dumped, backend):
    store, _, _ = dumped
    lines: list[str] = []
    assert run(cfg_for(tiny_teacher, corpora_yaml, store, overwrite=True), echo=lines.append,
               backend=backend).status == "noop"
    assert (f"{store} is already complete with these settings: nothing to do (--overwrite replaces only a store "
            "made with other settings; to dump it again, delete it first)") in lines


def test_a_complete_store_is_no_noop_for_its_domains_in_another_order(tiny_teacher, corpora_yaml, dumped, backend):
    # the order of the domains is the store's (its settings compare alike as mappings): the same corpora listed in
    # another order would make another store, so the rerun is refused, naming --corpora, and the store is untouched
    store, first, _ = dumped
    head, *domains = corpora_yaml.read_text(encoding="utf-8").splitlines()
    reordered = corpora_yaml.parent / "reordered_corpora.yaml"  # (beside it: the same relative paths)
    reordered.write_text("\n".join([head, *reversed(domains)]) + "\n", encoding="utf-8")
    with pytest.raises(StoreExistsError, match="--corpora"):
        run(cfg_for(tiny_teacher, reordered, store), echo=lambda _: None, backend=backend)
    assert open_store(str(store)).domains == ["scripture", "python", "legal"]


def test_a_complete_store_whose_corpus_file_is_gone_is_a_noop_before_any_pack_work(tiny_teacher, tmp_path, backend,
                                                                                  monkeypatch):
    # a file --corpora names explicitly, gone since its domain was packed: the store is still complete with these
    # settings, found so by the first look (the pack phase, which starts tokenizer workers, is not entered)
    corpora = write_corpus(tmp_path / "corpus", n_docs=60)
    (corpora.parent / "more.txt").write_text("".join(f"more scripture, verse {i}\n" for i in range(20)))
    corpora.write_text(corpora.read_text().replace("paths: [scripture.txt]", "paths: [scripture.txt, more.txt]"))
    cfg = cfg_for(tiny_teacher, corpora, tmp_path / "s", max_rows_per_domain=3)
    run(cfg, echo=lambda _: None, backend=backend)
    (corpora.parent / "more.txt").unlink()  # (the domain keeps a file: its files are still compared)

    def no_pack_phase(*a, **k):
        raise AssertionError("the pack phase ran for a complete store")

    monkeypatch.setattr(run_mod, "pack_phase", no_pack_phase)
    assert run(cfg, echo=lambda _: None, backend=backend).status == "noop"


def test_a_store_of_another_format_version_is_refused_as_unreadable_even_with_overwrite(tiny_teacher, tmp_path,
                                                                                     backend):
    # a store this ddk cannot read is not "complete with these settings": the first look passes it on, and the
    # location check refuses to touch it, --overwrite or not (not the reader's bare version error)
    corpora = write_corpus(tmp_path / "corpus", n_docs=60)
    store = tmp_path / "s"
    run(cfg_for(tiny_teacher, corpora, store, max_rows_per_domain=3), echo=lambda _: None, backend=backend)
    root = store / "zarr.json"
    doc = json.loads(root.read_text())
    doc["attributes"]["ddk"]["format_version"] = "9.0"  # as a later major version would write it
    root.write_text(json.dumps(doc))
    for overwrite in (False, True):
        with pytest.raises(StoreExistsError, match="holds something that is not a readable ddk store .*format "
                                                   "version 9.0 .*refusing to touch it"):
            run(cfg_for(tiny_teacher, corpora, store, max_rows_per_domain=3, overwrite=overwrite),
                echo=lambda _: None, backend=backend)
    assert json.loads(root.read_text()) == doc


def test_a_store_found_complete_by_the_writer_is_a_noop(tiny_teacher, corpora_yaml, dumped, backend, monkeypatch):
    # the writer's own finding (another process finished the store between the first look and the open) is a
    # no-op as well: nothing scored, said so, and the store's figures reported
    store, first, _ = dumped
    monkeypatch.setattr(run_mod, "complete_store", lambda *a, **k: None)
    lines: list[str] = []
    s = run(cfg_for(tiny_teacher, corpora_yaml, store), echo=lines.append, backend=backend)
    assert s.status == "noop" and s.tokens_scored == 0 and any("nothing to do" in x for x in lines)
    assert s.store_bytes == first.store_bytes and s.heldout_ppl == first.heldout_ppl


def test_print_summary_lines():
    # the bytes/token line needs both a size and positions; the perplexity has three decimals
    said: list[str] = []
    print_summary(DumpSummary(url="u", backend="hf", status="complete", tokens_scored=1000, seconds=4.0,
                              store_bytes=300, store_positions=120, heldout_ppl={"a": 12.34567}), said.append)
    assert said == ["summary: 1,000 tokens scored by hf in 4.0 s (250 tok/s)",
                    "summary: store 300 bytes for 120 teacher positions (2.5 bytes/token)",
                    "summary: teacher held-out perplexity a: 12.346"]
    said.clear()
    print_summary(DumpSummary(url="u", backend="hf", status="noop", store_bytes=300), said.append)
    assert said == ["summary: 0 tokens scored by hf in 0.0 s (0 tok/s)"]


# ------------------------------------------------------------------------------------------------ store statistics
def test_a_domain_without_a_held_out_perplexity_is_left_out_of_the_summary(dumped):
    store, _, _ = dumped
    meta = open_store(str(store)).meta
    doms = (dataclasses.replace(meta.domains[0], heldout_ppl=None), *meta.domains[1:])
    s = DumpSummary(url=str(store), backend="hf", status="noop")
    run_mod._fill_stats(s, dataclasses.replace(meta, domains=doms), None)
    assert s.heldout_ppl == {d.name: d.heldout_ppl for d in meta.domains[1:]} and s.store_bytes


@pytest.mark.parametrize("error", [OSError("no size"), NotImplementedError(), StoreFormatError("gone")])
def test_a_store_that_cannot_be_sized_leaves_the_size_out(dumped, monkeypatch, error):
    store, _, _ = dumped

    def fails(self):
        raise error

    monkeypatch.setattr(StoreReader, "bytes_on_disk", fails)
    s = DumpSummary(url=str(store), backend="hf", status="noop", store_bytes=1)
    run_mod._fill_stats(s, open_store(str(store)).meta, None)
    assert s.store_bytes is None and len(s.heldout_ppl) == 3


def test_a_programming_error_while_sizing_the_store_is_not_swallowed(dumped, monkeypatch):
    store, _, _ = dumped

    def fails(self):
        raise ValueError("a bug")

    monkeypatch.setattr(StoreReader, "bytes_on_disk", fails)
    with pytest.raises(ValueError, match="a bug"):
        run_mod._fill_stats(DumpSummary(url=str(store), backend="hf", status="noop"), open_store(str(store)).meta,
                            None)


# ------------------------------------------------------------------------------------------------ the backend
def test_a_passed_backend_of_another_kind_is_refused_by_name(tiny_teacher, corpora_yaml, tmp_path, backend):
    class OtherKind:  # a backend the caller loaded for another --backend; run() must not score with it
        name = "vllm"

    with pytest.raises(ConfigError, match="a vllm backend was passed but the config resolves to hf"):
        run(cfg_for(tiny_teacher, corpora_yaml, tmp_path / "s"), echo=lambda _: None, backend=OtherKind())


def test_a_passed_backend_is_left_open_for_the_caller(tiny_teacher, corpora_yaml, tmp_path, backend):
    run(cfg_for(tiny_teacher, corpora_yaml, tmp_path / "s", max_rows_per_domain=3), echo=lambda _: None,
        backend=backend)
    assert hasattr(backend, "model")  # HFBackend.close() deletes it


def test_a_cpu_teacher_is_recorded_as_float32_even_where_cuda_is_available(tiny_teacher, corpora_yaml, tmp_path,
                                                                         backend, monkeypatch):
    # --dtype auto is bfloat16 only where the teacher runs on CUDA: --device cpu is float32 whatever the machine has
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    store = tmp_path / "s"
    run(cfg_for(tiny_teacher, corpora_yaml, store, max_rows_per_domain=3), echo=lambda _: None, backend=backend)
    assert open_store(str(store)).meta.teacher.dtype == "float32"


# ------------------------------------------------------------------------------------------------ shards
def test_shards_say_what_is_left_and_who_finalizes(tiny_teacher, corpora_yaml, tmp_path, backend, monkeypatch):
    # the first shard: its own units of all of them, others' still pending; the last: run finalize (or, under a
    # --devices parent, that parent finalizes); a shard rerun with nothing left loads no teacher
    store = tmp_path / "s"
    monkeypatch.delenv(FINALIZER_ENV, raising=False)
    lines: list[str] = []
    s = run(cfg_for(tiny_teacher, corpora_yaml, store, shard="0/2"), echo=lines.append, backend=backend)
    assert s.status == "shard-done"
    (created,) = [x for x in lines if x.startswith(f"{store}: created; shard 0/2: ")]
    mine, total = map(int, re.fullmatch(r".*: (\d+) unit\(s\) to write \((\d+) in the store\)", created).groups())
    assert 0 < mine < total
    assert f"shard 0/2 done; {total - mine} unit(s) of other shards still pending" in lines
    lines.clear()
    assert run(cfg_for(tiny_teacher, corpora_yaml, store, shard="1/2"), echo=lines.append,
               backend=backend).status == "shard-done"
    assert f"{store}: resuming; shard 1/2: {total - mine} unit(s) to write ({total} in the store)" in lines
    assert f"shard 1/2 done; all units written: run `ddk-store finalize {store}`" in lines
    monkeypatch.setenv(FINALIZER_ENV, "the --devices parent")
    lines.clear()
    s = run(cfg_for(tiny_teacher, corpora_yaml, store, shard="1/2"), echo=lines.append)  # no backend passed
    assert "shard 1/2 done; all units written; the --devices parent finalizes the store" in lines
    assert s.tokens_scored == 0 and not any(x.startswith("loading teacher") for x in lines)
    assert math.isclose(s.store_positions, _positions_of_rows(store))


def _positions_of_rows(store) -> int:
    from stage1_teacher.pack import read_pack  # (an unfinalized store: count from its packed rows)

    doms = read_pack(str(store), None)["domains"]
    return sum(d["train_rows"] + d["heldout_rows"] for d in doms.values()) * (SEQ_LEN - 1)
