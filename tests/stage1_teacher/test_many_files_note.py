"""A domain read from very many files gets one note at pack time: the store's metadata lists every source file, and
every reader loads that list when it opens the store."""

from __future__ import annotations

from ddk_testkit.commands import HELDOUT, SEQ_LEN, TOP_K
from stage1_teacher import domain_size
from stage1_teacher.config import Stage1Config
from stage1_teacher.domain_size import many_files_note
from stage1_teacher.pack import run_pack


def test_the_note_starts_above_the_threshold_and_sizes_the_list(monkeypatch):
    monkeypatch.setattr(domain_size, "MANY_FILES", 3)
    files = [f"/data/docs/{i:07d}.txt" for i in range(4)]
    assert many_files_note("web", files[:3]) is None
    note = many_files_note("web", files)
    assert note is not None and note.startswith("note: domain web: 4 source files;")
    assert "JSONL or Parquet shards" in note
    monkeypatch.setattr(domain_size, "MANY_FILES", 100_000)
    big = [f"/data/docs/{i:07d}.txt" for i in range(1_000_000)]  # 22-character paths: 132 bytes each
    assert many_files_note("web", big[:100_000]) is None
    assert "1,000,000 source files" in many_files_note("web", big) and "about 132 MB" in many_files_note("web", big)


def test_pack_prints_the_note_once_per_domain_over_the_threshold(tiny_teacher, corpora_yaml, tmp_path, monkeypatch):
    monkeypatch.setattr(domain_size, "MANY_FILES", 0)  # every domain of the kit's corpus (one file or more) is over
    lines: list[str] = []
    packed = run_pack(Stage1Config(teacher=str(tiny_teacher), corpora=str(corpora_yaml), store=str(tmp_path / "s"),
                                   seq_len=SEQ_LEN, top_k=TOP_K, heldout_seqs=HELDOUT, workers=1, progress=False),
                      echo=lines.append)
    notes = [ln for ln in lines if "source files; the store's metadata lists each" in ln]
    assert sorted(n.split(":")[1].strip() for n in notes) == sorted(f"domain {d}" for d in packed.domains), lines
    monkeypatch.setattr(domain_size, "MANY_FILES", 100_000)
    quiet: list[str] = []
    run_pack(Stage1Config(teacher=str(tiny_teacher), corpora=str(corpora_yaml), store=str(tmp_path / "t"),
                          seq_len=SEQ_LEN, top_k=TOP_K, heldout_seqs=HELDOUT, workers=1, progress=False),
             echo=quiet.append)
    assert not [ln for ln in quiet if "source files;" in ln], quiet
