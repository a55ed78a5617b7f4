"""The built-in default assets: layer-subset student init, the six-domain corpus recipe, the SmolLM2 teacher.

Everything is real: tiny Llama/Qwen2/GPT-2 models built with transformers, the corpus built from the Debian packages
(installed by the recipe when running as root), and, in the slow test, the real SmolLM2-135M teacher.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from ddk_store.errors import ConfigError
from ddk_testkit.models import TINY_TEXT, build_tiny_llama, build_tiny_tokenizer
from ddk_testkit.processes import REPO
from stage2_student.init_student import PROVENANCE, evenly_spaced_layers, init_student_from_teacher, resolve_layers

BIN = Path(sys.executable).parent


# ------------------------------------------------------------------------------------------------ init_student --- #


@pytest.fixture(scope="module")
def tiny_tokenizer_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    build_tiny_tokenizer(d)
    return d


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory, tiny_tokenizer_dir):
    d = tmp_path_factory.mktemp("teacher4")
    build_tiny_llama(d, tiny_tokenizer_dir, num_layers=4, seed=1)
    return d


def _ids(tokenizer_dir) -> torch.Tensor:
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    text = TINY_TEXT["scripture"][0] + " " + TINY_TEXT["python"][0]
    return tok(text, return_tensors="pt")["input_ids"]


def _manual_logits(model, layer_indices: list[int], ids: torch.Tensor) -> torch.Tensor:
    """Forward pass written out by hand: embeddings -> chosen decoder layers -> final norm -> lm_head."""
    base = model.model
    seq = ids.shape[1]
    hidden = base.embed_tokens(ids)
    position_ids = torch.arange(seq)[None, :]
    position_embeddings = base.rotary_emb(hidden, position_ids)
    mask = torch.full((seq, seq), float("-inf")).triu(1)[None, None]  # additive causal mask
    for i in layer_indices:
        out = base.layers[i](
            hidden, attention_mask=mask, position_ids=position_ids, position_embeddings=position_embeddings
        )
        hidden = out[0] if isinstance(out, tuple) else out
    return model.lm_head(base.norm(hidden))


def test_evenly_spaced_layers_keep_first_and_last():
    assert evenly_spaced_layers(30, 6) == [0, 6, 12, 17, 23, 29]
    assert evenly_spaced_layers(4, 2) == [0, 3]
    assert evenly_spaced_layers(4, 4) == [0, 1, 2, 3]
    assert evenly_spaced_layers(5, 1) == [0]
    assert resolve_layers(30, "0, 10,29") == [0, 10, 29]
    assert resolve_layers(30, "6") == evenly_spaced_layers(30, 6)
    assert resolve_layers(30, "0-2,27-29") == [0, 1, 2, 27, 28, 29]
    assert resolve_layers(30, "5-5") == [5]  # a range of one layer is an index, not a count


@pytest.mark.parametrize(
    "layers, fragment",
    [
        (0, "between 1 and 4"),
        (5, "between 1 and 4"),
        ([0, 4], "0..3"),
        ([-1, 2], "0..3"),
        ([1, 1], "twice"),
        ([2, 0], "increasing"),
        ([], "non-empty"),
        (True, "expected a count"),
        ("a,b", "0,6,12,29"),
        ("3-1", "first <= last"),
        ("0-9", "0..3"),
    ],
)
def test_bad_layer_choices_are_refused_with_a_clear_message(layers, fragment):
    with pytest.raises(ConfigError, match=fragment):
        resolve_layers(4, layers)


def test_init_student_keeps_two_of_four_layers(tiny_teacher, tiny_tokenizer_dir, tmp_path):
    out = init_student_from_teacher(tiny_teacher, tmp_path / "student", layers=2, seed=0)
    assert out == (tmp_path / "student").absolute()

    teacher = AutoModelForCausalLM.from_pretrained(str(tiny_teacher), dtype=torch.float32).eval()
    student = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert type(student).__name__ == "LlamaForCausalLM"
    assert student.config.num_hidden_layers == 2 and len(student.model.layers) == 2

    # Parameter count: the teacher minus exactly the two dropped decoder layers.
    per_layer = sum(p.numel() for p in teacher.model.layers[1].parameters())
    n_teacher = sum(p.numel() for p in teacher.parameters())
    n_student = sum(p.numel() for p in student.parameters())
    assert n_student == n_teacher - 2 * per_layer
    info = json.loads((out / PROVENANCE).read_text())
    assert info["kept_layers"] == [0, 3] and info["parameters"] == n_student and info["teacher_layers"] == 4

    # Shared pieces are copied bit for bit; the tied head stays tied.
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    assert torch.equal(student.model.norm.weight, teacher.model.norm.weight)
    assert torch.equal(student.lm_head.weight, teacher.lm_head.weight)
    assert torch.equal(student.model.layers[1].mlp.up_proj.weight, teacher.model.layers[3].mlp.up_proj.weight)

    ids = _ids(tiny_tokenizer_dir)
    with torch.no_grad():
        # The hand-written forward reproduces the teacher with all its layers, so it is a fair reference ...
        torch.testing.assert_close(_manual_logits(teacher, [0, 1, 2, 3], ids), teacher(input_ids=ids).logits)
        # ... and the student equals the teacher run through layers 0 and 3 only.
        expected = _manual_logits(teacher, [0, 3], ids)
        got = student(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, teacher(input_ids=ids).logits.detach(), atol=1e-3)

    # Same tokenizer as the teacher.
    assert AutoTokenizer.from_pretrained(str(out)).get_vocab() == AutoTokenizer.from_pretrained(
        str(tiny_teacher)
    ).get_vocab()


def test_init_student_with_explicit_indices_and_all_layers(tiny_teacher, tiny_tokenizer_dir, tmp_path):
    ids = _ids(tiny_tokenizer_dir)
    teacher = AutoModelForCausalLM.from_pretrained(str(tiny_teacher), dtype=torch.float32).eval()
    out = init_student_from_teacher(tiny_teacher, tmp_path / "s13", layers=[1, 3])
    student = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(student(input_ids=ids).logits, _manual_logits(teacher, [1, 3], ids))
    full = init_student_from_teacher(tiny_teacher, tmp_path / "all", layers=4)
    clone = AutoModelForCausalLM.from_pretrained(str(full), dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(clone(input_ids=ids).logits, teacher(input_ids=ids).logits)


def test_init_student_subsets_layer_types(tiny_tokenizer_dir, tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    layer_types = ["full_attention", "sliding_attention", "full_attention", "sliding_attention"]
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        use_sliding_window=True,
        sliding_window=16,
        layer_types=layer_types,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    teacher_dir = tmp_path / "qwen"
    Qwen2ForCausalLM(cfg).save_pretrained(teacher_dir)
    tok.save_pretrained(teacher_dir)

    out = init_student_from_teacher(teacher_dir, tmp_path / "student", layers=[0, 1, 3])
    student = AutoModelForCausalLM.from_pretrained(str(out))
    assert student.config.num_hidden_layers == 3
    assert student.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    teacher = AutoModelForCausalLM.from_pretrained(str(teacher_dir))
    assert torch.equal(student.lm_head.weight, teacher.lm_head.weight)  # untied head copied too
    assert torch.equal(student.model.layers[2].self_attn.q_proj.weight, teacher.model.layers[3].self_attn.q_proj.weight)


def test_init_student_refuses_non_llama_models(tiny_tokenizer_dir, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    gpt2_dir = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_layer=2, n_embd=64, n_head=2, n_positions=64)).save_pretrained(
        gpt2_dir
    )
    tok.save_pretrained(gpt2_dir)
    with pytest.raises(ConfigError, match=r"GPT2LMHeadModel .*not a Llama-style decoder"):
        init_student_from_teacher(gpt2_dir, tmp_path / "student", layers=1)
    assert not (tmp_path / "student").exists()


def test_init_student_input_errors(tiny_teacher, tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        init_student_from_teacher(tmp_path / "nowhere", tmp_path / "s", layers=2)
    with pytest.raises(ConfigError, match="0..3"):
        init_student_from_teacher(tiny_teacher, tmp_path / "s", layers=[0, 7])
    assert not (tmp_path / "s").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already exists"):
        init_student_from_teacher(tiny_teacher, busy, layers=2)
    assert (busy / "keep.txt").read_text() == "mine"
    # --overwrite replaces only a student this command wrote: not a directory of something else, never the teacher
    with pytest.raises(ConfigError, match="not a student written by `ddk-student init`"):
        init_student_from_teacher(tiny_teacher, busy, layers=2, overwrite=True)
    assert (busy / "keep.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match="is or holds the teacher directory"):
        init_student_from_teacher(tiny_teacher, tiny_teacher.parent, layers=2, overwrite=True)
    assert (tiny_teacher / "config.json").is_file()
    with pytest.raises(ConfigError, match="is inside the teacher directory"):
        init_student_from_teacher(tiny_teacher, tiny_teacher / "sub", layers=2)
    assert not (tiny_teacher / "sub").exists()
    student = tmp_path / "student"
    init_student_from_teacher(tiny_teacher, student, layers=2)
    written = json.loads((student / PROVENANCE).read_text())["files"]
    assert sorted(p.name for p in student.iterdir()) == written and "config.json" in written
    # files the user added since are named, and nothing is replaced
    (student / "NOTES.md").write_text("mine")
    (student / "eval").mkdir()
    with pytest.raises(ConfigError, match=r"also holds NOTES.md, eval; move them out"):
        init_student_from_teacher(tiny_teacher, student, layers=[0, 3], overwrite=True)
    assert (student / "NOTES.md").read_text() == "mine"
    (student / "NOTES.md").unlink()
    (student / "eval").rmdir()
    init_student_from_teacher(tiny_teacher, student, layers=[0, 3], overwrite=True)
    assert json.loads((student / PROVENANCE).read_text())["kept_layers"] == [0, 3]
    # a student written before the list was kept: all its files count as its own
    info = json.loads((student / PROVENANCE).read_text())
    del info["files"]
    (student / PROVENANCE).write_text(json.dumps(info))
    (student / "stale.txt").write_text("from an earlier build")
    init_student_from_teacher(tiny_teacher, student, layers=2, overwrite=True)
    assert not (student / "stale.txt").exists()


def test_init_student_cli(tiny_teacher, tmp_path):
    ok = subprocess.run(
        [BIN / "ddk-student", "init", "--teacher", str(tiny_teacher), "--layers", "0,2",
         "--out", str(tmp_path / "cli")],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "kept layers [0, 2] of 4" in ok.stdout
    bad = subprocess.run(
        [BIN / "ddk-student", "init", "--teacher", str(tiny_teacher), "--layers", "9",
         "--out", str(tmp_path / "bad")],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2  # every ddk command: a user error is one line and exit 2 (ddk_store.entry)
    assert bad.stderr.strip() == "error: --layers 9: the teacher has 4 layers, so a student can keep between 1 and 4"


def test_init_student_does_not_import_stage1():
    code = "import sys, stage2_student.init_student; sys.exit(any(m.startswith('stage1_teacher') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


# ------------------------------------------------------------------------------------------------------ corpus --- #


@pytest.fixture(scope="module")
def corpus_mod():
    from stage1_teacher.assets import corpus

    return corpus


@pytest.fixture(scope="module")
def corpus_sources(corpus_mod):
    """Make sure every domain's source is there (the recipe installs missing packages as root). Without them the
    tests fail, naming the packages; DDK_ALLOW_SKIP_CORPUS=1 turns that into a visible skip, by choice only."""
    try:
        corpus_mod.ensure_sources(list(corpus_mod.DOMAINS), install=True)
    except corpus_mod.CorpusError as err:
        if os.environ.get("DDK_ALLOW_SKIP_CORPUS") == "1":
            pytest.skip(f"corpus sources unavailable and not installable here (DDK_ALLOW_SKIP_CORPUS=1): {err}")
        pytest.fail(f"the built-in corpus's sources are missing and could not be installed: {err}; install them "
                    "(as root the tests do it themselves), or set DDK_ALLOW_SKIP_CORPUS=1 to skip these tests")


CAP_MB = 0.05


def test_build_corpus_six_domains(corpus_mod, corpus_sources, tmp_path):
    yaml_path = corpus_mod.build_corpus(tmp_path / "corpus", max_mb=CAP_MB, install=False)
    assert yaml_path == (tmp_path / "corpus" / "CORPORA.yaml").absolute()
    spec = yaml.safe_load(yaml_path.read_text())
    assert sorted(spec) == ["domains"]
    domains = spec["domains"]
    assert list(domains) == ["scripture", "python", "c", "docs", "dictionary", "legal"]
    expected_format = {"scripture": "lines", "dictionary": "lines"}
    manifest = json.loads((yaml_path.parent / "CORPUS.json").read_text())
    for name, entry in domains.items():
        assert set(entry) == {"paths", "format"}
        assert entry["format"] == expected_format.get(name, "files")
        (pattern,) = entry["paths"]
        assert Path(pattern).is_absolute() and pattern.startswith(str(yaml_path.parent))
        files = sorted(Path("/").glob(pattern.lstrip("/")))
        assert files, f"{name}: {pattern} matches nothing"
        total = sum(f.stat().st_size for f in files)
        assert 0.5 * CAP_MB * 1e6 < total <= CAP_MB * 1e6, (name, total)
        assert manifest["domains"][name]["bytes"] == total
        for f in files:
            f.read_text(encoding="utf-8")  # all text
    kjv = (yaml_path.parent / "scripture" / "kjv.txt").read_text().splitlines()
    assert kjv and not any(corpus_mod.VERSE_REF.match(line) for line in kjv)  # verse text only, no "Ge1:1 "
    assert sum("LORD" in line or "God" in line for line in kjv) > len(kjv) // 10
    assert not any(part in {"site-packages", "test", "idlelib"} for p in (yaml_path.parent / "python").rglob("*")
                   for part in p.relative_to(yaml_path.parent / "python").parts)  # fmt: skip
    assert "[1913 Webster]" in (yaml_path.parent / "dictionary" / "gcide.txt").read_text()
    legal = " ".join(p.read_text() for p in (yaml_path.parent / "legal").rglob("copyright"))
    assert "License" in legal or "license" in legal


def test_build_corpus_is_deterministic_and_reused(corpus_mod, corpus_sources, tmp_path):
    a = corpus_mod.build_corpus(tmp_path / "a", max_mb=CAP_MB, install=False, domains=["scripture", "c", "legal"])
    b = corpus_mod.build_corpus(tmp_path / "b", max_mb=CAP_MB, install=False, domains=["scripture", "c", "legal"])
    ma = json.loads((a.parent / "CORPUS.json").read_text())
    mb = json.loads((b.parent / "CORPUS.json").read_text())
    assert ma == mb
    assert (a.parent / "scripture" / "kjv.txt").read_bytes() == (b.parent / "scripture" / "kjv.txt").read_bytes()
    assert sorted(p.relative_to(a.parent).as_posix() for p in a.parent.rglob("*")) == sorted(
        p.relative_to(b.parent).as_posix() for p in b.parent.rglob("*")
    )
    # Same parameters: reused untouched; other parameters: rebuilt.
    before = (a.parent / "CORPUS.json").stat().st_mtime_ns
    time.sleep(0.01)
    corpus_mod.build_corpus(tmp_path / "a", max_mb=CAP_MB, install=False, domains=["scripture", "c", "legal"])
    assert (a.parent / "CORPUS.json").stat().st_mtime_ns == before
    corpus_mod.build_corpus(tmp_path / "a", max_mb=CAP_MB / 2, install=False, domains=["scripture", "c", "legal"])
    assert json.loads((a.parent / "CORPUS.json").read_text())["params"]["max_bytes"] == int(CAP_MB / 2 * 1e6)
    assert not list(tmp_path.glob(".a.*")), "temporary build directories left behind"


def test_build_corpus_relative_paths(corpus_mod, corpus_sources, tmp_path):
    y = corpus_mod.build_corpus(tmp_path / "rel", max_mb=0.01, install=False, domains=["dictionary", "docs"],
                                relative_paths=True)  # fmt: skip
    domains = yaml.safe_load(y.read_text())["domains"]
    assert domains["dictionary"]["paths"] == ["dictionary/gcide.txt"]
    assert list(y.parent.glob(domains["docs"]["paths"][0]))


def test_build_corpus_names_what_is_missing(corpus_mod, monkeypatch, tmp_path):
    from stage1_teacher.assets import corpus_sources

    monkeypatch.setattr(corpus_sources, "GCIDE", tmp_path / "absent" / "gcide.dict.dz")
    with pytest.raises(corpus_mod.CorpusError) as err:
        corpus_mod.ensure_sources(["dictionary", "legal"], install=False)
    msg = str(err.value)
    assert "dictionary:" in msg and "gcide.dict.dz does not exist" in msg
    assert "dict-gcide" in msg and "apt-get install -y --no-install-recommends dict-gcide" in msg
    assert "legal:" not in msg  # the legal source is present, so it is not reported


def test_build_corpus_cli_errors(tmp_path):
    bad = subprocess.run(
        [BIN / "ddk-teacher", "builtin-corpus", "--out", str(tmp_path / "c"), "--domains", "scripture,poetry",
         "--no-install"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        "error: unknown domain(s) poetry; choose from scripture, python, c, docs, dictionary, legal"
    )
    neg = subprocess.run([BIN / "ddk-teacher", "builtin-corpus", "--max-mb", "-1"], capture_output=True, text=True)
    assert neg.returncode == 2 and "--max-mb must be >= 0" in neg.stderr
    assert not (tmp_path / "c").exists()
    # --out a directory of the user's own: refused before any source is looked at, and nothing in it is touched
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    own = subprocess.run([BIN / "ddk-teacher", "builtin-corpus", "--out", str(mine), "--domains", "scripture",
                          "--no-install"], capture_output=True, text=True)
    assert own.returncode == 2 and own.stderr.strip() == (
        f"error: {mine}: exists and is not a directory this command built (no CORPUS.json there), so it is not "
        "replaced; choose another output directory or remove it yourself"), own.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


# ----------------------------------------------------------------------------------------------------- teacher --- #


def test_teacher_marker_detects_incomplete_or_altered_builds(tmp_path):
    from stage1_teacher.assets.teacher import build_smollm2_teacher, is_complete, write_marker

    d = tmp_path / "teacher"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "llama"}')
    (d / "model.safetensors").write_bytes(b"\x01" * 1000)
    assert not is_complete(d)  # no marker yet: an interrupted build
    write_marker(d, {"note": "test"})
    assert is_complete(d)
    # A complete directory is reused as is: no conversion, no dependency needed.
    t0 = time.perf_counter()
    assert build_smollm2_teacher(d, log=lambda msg: None) == d.absolute()
    assert time.perf_counter() - t0 < 5
    (d / "model.safetensors").write_bytes(b"\x02" * 1000)  # same size, different content
    assert is_complete(d, check_hashes=False) and not is_complete(d)
    (d / "model.safetensors").write_bytes(b"\x01" * 1000)
    (d / "extra.bin").write_bytes(b"x")
    assert not is_complete(d)
    (d / "extra.bin").unlink()
    assert is_complete(d)
    (d / "config.json").unlink()
    assert not is_complete(d)


KJV_SAMPLE = (
    "And it came to pass, when men began to multiply on the face of the earth, and daughters were born unto them,\n"
    "That the sons of God saw the daughters of men that they were fair; and they took them wives of all which they "
    "chose.\n"
    "And the LORD said, My spirit shall not always strive with man, for that he also is flesh: yet his days shall be "
    "an hundred and twenty years.\n"
    "The LORD is my shepherd; I shall not want. He maketh me to lie down in green pastures: he leadeth me beside the "
    "still waters.\n"
)


@pytest.mark.slow
def test_build_real_smollm2_teacher(smollm2_build):
    from stage1_teacher.assets.teacher import MARKER, build_smollm2_teacher, is_complete, perplexity, read_marker

    out, logs = smollm2_build  # (built once per session, into <folder>/smollm2; the vLLM log tests use it too)
    assert out.name == "smollm2" and out.is_absolute() and is_complete(out)
    assert not list(out.parent.glob(".smollm2.*")), "temporary build directory left behind"
    assert (out / "model.safetensors").stat().st_size > 500e6  # fp32
    marker = read_marker(out)
    assert marker["parameters"] == 134_515_008 and marker["verify_perplexity"] < 10

    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(out))
    assert model.config.vocab_size == 49152 and len(tok) == 49152
    assert model.config.num_hidden_layers == 30 and len(model.model.layers) == 30
    assert model.config.hidden_size == 576 and "quantization_config" not in model.config.to_dict()
    ppl = perplexity(model, tok, KJV_SAMPLE)
    assert math.isfinite(ppl) and 1.0 < ppl < 25.0, ppl  # about 15 for this short sample; broken: 1000s
    # Unrelated text is much less predictable: the model is not a constant predictor.
    rng = random.Random(0)
    noise = " ".join("".join(rng.choice("bcdfghjklmnpqrstvwxz0123456789") for _ in range(4)) for _ in range(40))
    assert perplexity(model, tok, noise) > 3 * ppl

    # Idempotent: a second call reuses the complete build without touching it.
    mtime = (out / MARKER).stat().st_mtime_ns
    t0 = time.perf_counter()
    assert build_smollm2_teacher(out, log=logs.append) == out
    assert time.perf_counter() - t0 < 10 and (out / MARKER).stat().st_mtime_ns == mtime
    assert any("already built" in line for line in logs)


def test_default_cache_locations_follow_ddk_cache(monkeypatch, tmp_path, corpus_mod):
    from stage1_teacher.assets.teacher import default_teacher_dir

    monkeypatch.setenv("DDK_CACHE", str(tmp_path))
    assert default_teacher_dir() == tmp_path / "teacher" / "smollm2-135m"
    assert corpus_mod.default_out_dir() == tmp_path / "corpus"
    monkeypatch.delenv("DDK_CACHE")
    assert default_teacher_dir() == Path(os.path.expanduser("~")) / ".cache" / "ddk" / "teacher" / "smollm2-135m"


def test_the_written_corpora_yaml_finds_a_corpus_in_a_folder_with_brackets(corpus_mod, tmp_path):
    # DDK_CACHE=/runs/exp[1]: the absolute patterns of CORPORA.yaml must not read the folder as a character class.
    from stage1_teacher.corpus import load_corpora

    out = tmp_path / "exp[1]" / "corpus"
    (out / "scripture").mkdir(parents=True)
    (out / "scripture" / "kjv.txt").write_text("In the beginning\n", encoding="utf-8")
    (out / "python" / "pkg").mkdir(parents=True)
    (out / "python" / "pkg" / "m.py").write_text("x = 1\n", encoding="utf-8")
    y = out / "CORPORA.yaml"
    y.write_text(corpus_mod.corpora_yaml(out, ["scripture", "python"], relative=False), encoding="utf-8")
    files = {s.name: s.files for s in load_corpora(y)}
    assert files == {"scripture": (str(out / "scripture" / "kjv.txt"),),
                     "python": (str(out / "python" / "pkg" / "m.py"),)}
