"""run()'s choice of the store's work units and chunks from --unit-rows, and --overwrite of a store that differs only
in its work units. Every dump is the tiny teacher's, in this process, on the hf backend (SEQ_LEN 32: the default
chunk is 1024 // 32 = 32 rows)."""

from __future__ import annotations

import dataclasses

from ddk_store import open_store, spec
from ddk_store.layout import default_chunk_rows
from ddk_testkit.commands import SEQ_LEN
from stage1_teacher.run import run

from .test_run_contracts import backend, cfg_for as contracts_cfg  # noqa: F401  (fixture)


def cfg_for(teacher, corpora, store, *, unit_rows: int, **kw):
    return dataclasses.replace(contracts_cfg(teacher, corpora, store, **kw), unit_rows=unit_rows)


def _layouts(store) -> set[tuple[int, int]]:
    r = open_store(str(store))
    return {(r.layout(d, s).chunk_rows, r.layout(d, s).unit_rows) for d in r.domains for s in spec.SPLITS}


def test_unit_rows_above_the_default_chunk_keep_chunks_of_the_default_size(tiny_teacher, corpora_yaml, tmp_path,
                                                                           backend):
    """--unit-rows 64 at 32 tokens a row: work units of 64 rows, made of chunks of the default 32 rows (1024 tokens,
    what keeps a random row read from reading more), not one chunk a unit."""
    assert default_chunk_rows(SEQ_LEN) == 32
    store = tmp_path / "s"
    s = run(cfg_for(tiny_teacher, corpora_yaml, store, unit_rows=64, max_rows_per_domain=3), echo=lambda _: None,
            backend=backend)
    assert s.status == "complete"
    assert _layouts(store) == {(32, 64)}


def test_overwrite_replaces_a_store_of_other_work_units_and_keeps_its_packed_rows(tiny_teacher, corpora_yaml,
                                                                                 tmp_path, backend):
    """A half-written store (one shard of two done) with units of 16 rows, rerun with --unit-rows 64 --overwrite:
    the store is replaced, naming --unit-rows, and completed with units of 64 rows; its packed rows, made with the
    same pack settings, are kept (nothing is packed again)."""
    store = tmp_path / "s"
    assert run(cfg_for(tiny_teacher, corpora_yaml, store, unit_rows=16, max_rows_per_domain=3, shard="0/2"),
               echo=lambda _: None, backend=backend).status == "shard-done"
    lines: list[str] = []
    s = run(cfg_for(tiny_teacher, corpora_yaml, store, unit_rows=64, max_rows_per_domain=3, overwrite=True),
            echo=lines.append, backend=backend)
    assert s.status == "complete"
    assert any(x.startswith(f"{store}: --overwrite replaces the store there (--unit-rows: ") for x in lines), lines
    assert not any(x.startswith("packing domain") for x in lines), lines
    assert _layouts(store) == {(32, 64)}
