"""Teacher loading contracts that mutation campaign 16 found unchecked: a teacher's own code never runs unless
asked (config and tokenizer), the local revision's definition (config.json and weights, each bound to its name),
control characters and existing files refused by name, and the vocabulary of a multimodal config's text model.
Every expected value is written from the rule, not read back from the implementation."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest

from ddk_store.errors import ConfigError
from stage1_teacher.teacher import load_tokenizer, resolve_teacher, weights_hash


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture
def no_module_cache(tmp_path, monkeypatch):
    """Where transformers would copy a teacher's own module (a mutant's import stays under tmp_path)."""
    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "hf_modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))


def _own_module(model: Path, name: str, marker: Path) -> None:
    (model / f"{name}.py").write_text(f"from pathlib import Path\n\nPath({str(marker)!r}).write_text('ran')\n")


def test_a_teachers_own_config_code_never_runs_by_default(tiny_teacher, tmp_path, no_module_cache):
    """resolve_teacher without trust_remote_code: a config.json whose auto_map names the model's own module while
    naming a known model_type is read with the library's own class (V and context as written), and that module is
    never imported."""
    model, marker = _copy(tiny_teacher, tmp_path / "teacher"), tmp_path / "config_code_ran"
    _own_module(model, "own", marker)
    cfg = json.loads((model / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "own.OwnConfig"}
    (model / "config.json").write_text(json.dumps(cfg))
    t = resolve_teacher(str(model))
    assert (t.vocab_size, t.max_context) == (cfg["vocab_size"], 512)
    assert not marker.exists(), "resolve_teacher imported the teacher's own configuration module"


def test_a_teachers_own_tokenizer_code_never_runs_by_default(tiny_teacher, tmp_path, no_module_cache):
    """load_tokenizer without trust_remote_code: a tokenizer_config.json whose auto_map names the model's own
    tokenizer class while naming a library class too is loaded with the library's (the same ids as the original
    directory's tokenizer), and that module is never imported."""
    model, marker = _copy(tiny_teacher, tmp_path / "teacher"), tmp_path / "tokenizer_code_ran"
    _own_module(model, "own_tok", marker)
    t = resolve_teacher(str(model))
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    cfg["auto_map"] = {"AutoTokenizer": ["own_tok.OwnTokenizer", None]}
    (model / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = load_tokenizer(t)
    text = "And God said, Let there be light"
    assert tok(text)["input_ids"] == load_tokenizer(resolve_teacher(str(tiny_teacher)))(text)["input_ids"]
    assert not marker.exists(), "load_tokenizer imported the teacher's own tokenizer module"


def test_the_local_revision_is_sha256_over_named_digests_of_config_and_weights(tiny_teacher, tmp_path):
    """A local teacher's revision, recorded in every store and compared at resume, is ``sha256:`` of the lines
    ``<name>\\0<hex sha256 of the file>\\n`` of config.json and every weight file, in name order; tokenizer files
    and other files are not part of it. Changing config.json alone, or renaming a weight file, changes it."""
    model = _copy(tiny_teacher, tmp_path / "teacher")
    (model / "README.md").write_text("not part of the revision\n")

    def by_hand(d: Path) -> str:
        names = sorted(p.name for p in d.iterdir()
                       if p.name == "config.json" or p.suffix in (".safetensors", ".bin", ".pt", ".gguf"))
        assert "config.json" in names and any(n.endswith(".safetensors") for n in names)
        lines = "".join(f"{n}\0{hashlib.sha256((d / n).read_bytes()).hexdigest()}\n" for n in names)
        return "sha256:" + hashlib.sha256(lines.encode()).hexdigest()

    first = by_hand(model)
    assert weights_hash(model) == first
    cfg = json.loads((model / "config.json").read_text())
    cfg["rope_theta"] = float(cfg.get("rope_theta") or 10000.0) * 2  # same weights, another model
    (model / "config.json").write_text(json.dumps(cfg))
    assert weights_hash(model) == by_hand(model) != first
    second = by_hand(model)
    weights = next(p for p in model.iterdir() if p.suffix == ".safetensors")
    weights.rename(model / "model-00001-of-00001.safetensors")
    assert weights_hash(model) == by_hand(model) != second


def test_a_teacher_name_with_control_characters_is_refused_by_name(tiny_teacher, tmp_path):
    """A directory whose name holds a control character (the store records the name; readers refuse those) is
    refused before anything is loaded, with a ConfigError naming --teacher, even though it is a model directory."""
    model = _copy(tiny_teacher, tmp_path / "bad\tname")
    with pytest.raises(ConfigError, match="--teacher .*control characters"):
        resolve_teacher(str(model))


def test_an_existing_file_given_by_a_bare_name_is_no_model_directory_not_a_hub_id(tmp_path, monkeypatch):
    """``--teacher notes`` where ``notes`` is a file in the working directory: refused as no model directory,
    never sent to the hub as a repository id (the hub is made unreachable, so asking it would say so instead)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes").write_text("x")
    with pytest.raises(ConfigError, match="^--teacher notes: not a model directory"):
        resolve_teacher("notes")


def test_a_multimodal_teachers_vocabulary_is_its_text_models(tmp_path):
    """A config that nests its language model (``text_config``, as Llava's does) and has no top-level vocab_size:
    the teacher's V and context are the text model's, not an AttributeError."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    text = LlamaConfig(vocab_size=77, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=1, max_position_embeddings=96)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=32, num_hidden_layers=1, num_attention_heads=1)
    model = tmp_path / "vlm"
    LlavaConfig(text_config=text.to_dict(), vision_config=vision.to_dict()).save_pretrained(model)
    (model / "model.safetensors").write_bytes(b"weights are not read here")
    t = resolve_teacher(str(model))
    assert (t.vocab_size, t.max_context) == (77, 96)


def test_a_tokenizer_without_eos_is_refused_naming_tokenizer_config(tiny_teacher, tmp_path):
    """EOS separates packed documents: a teacher whose tokenizer defines none (eos_token removed from its
    tokenizer_config.json) is refused by load_tokenizer with a ConfigError that says where to set it."""
    model = _copy(tiny_teacher, tmp_path / "teacher")
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    del cfg["eos_token"]
    (model / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="has no EOS token.*eos_token in its tokenizer_config.json"):
        load_tokenizer(resolve_teacher(str(model)))


def test_a_hub_teacher_is_fetched_without_pickle_weights_and_without_weights_for_pack(tiny_teacher, tmp_path,
                                                                                      monkeypatch):
    """The hub (faked: a repository holding the tiny teacher plus a pickle ``pytorch_model.bin``, copied file by
    file through the allow_patterns it is given, as the hub client does) is asked for *.safetensors and never for
    *.bin; with ``weights=False`` (pack) for no weights at all. The revision is the snapshot's commit."""
    import fnmatch

    import huggingface_hub

    repo = _copy(tiny_teacher, tmp_path / "repo")
    (repo / "pytorch_model.bin").write_bytes(b"a pickle file ddk must never fetch")
    commit = "1" * 40

    def snapshot_download(repo_id, revision=None, allow_patterns=None, **_):
        out = tmp_path / f"snap-{len(list(tmp_path.glob('snap-*')))}" / commit
        out.mkdir(parents=True)
        for p in repo.iterdir():
            if any(fnmatch.fnmatch(p.name, pat) for pat in allow_patterns):
                shutil.copy(p, out / p.name)
        return str(out)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    t = resolve_teacher("ddk-test-org/tiny")
    got = sorted(p.name for p in Path(t.model_dir).iterdir())
    assert "pytorch_model.bin" not in got and "model.safetensors" in got and t.revision == commit
    t = resolve_teacher("ddk-test-org/tiny", weights=False)
    assert not any(n.endswith((".bin", ".safetensors")) for n in (p.name for p in Path(t.model_dir).iterdir()))
    assert t.revision == commit and "tokenizer.json" in {p.name for p in Path(t.model_dir).iterdir()}
