"""Teacher identity (local directory, hub id offline, weights hash, fit checks) and the one resume-identity check."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr
from zarr.errors import ContainsArrayError, ContainsGroupError

from ddk_store import StoreExistsError, StoreWriter, open_store, spec
from ddk_store.difference import first_difference, identity_difference, value_at
from ddk_store.errors import ConfigError
from ddk_store.testing import make_tiny_store, synth_rows, tiny_meta
from ddk_store.validate import validate_store
from stage1_teacher.backends import backend_class
from stage1_teacher.plan import RESUME_FLAGS
from stage1_teacher.teacher import fit_problems, load_tokenizer, resolve_teacher, weights_hash


# --------------------------------------------------------------------------- teacher identity
def test_local_teacher_identity_is_the_hash_of_its_config_and_weights(tiny_teacher, tmp_path):
    t = resolve_teacher(str(tiny_teacher) + "/")
    assert t.name == str(tiny_teacher) and t.model_dir == str(tiny_teacher)
    assert t.revision == weights_hash(tiny_teacher) and t.revision.startswith("sha256:")
    assert t.vocab_size > 0 and t.max_context == 512
    copy = tmp_path / "copy"
    shutil.copytree(tiny_teacher, copy)
    assert weights_hash(copy) == t.revision  # the hash is of contents, not of the path
    (copy / "tokenizer_config.json").write_text((copy / "tokenizer_config.json").read_text() + "\n")
    assert weights_hash(copy) == t.revision  # tokenizer files are not weights (the fingerprint covers them)
    weights = next(p for p in copy.iterdir() if p.suffix == ".safetensors")
    weights.write_bytes(weights.read_bytes() + b"\0")
    assert weights_hash(copy) != t.revision


def test_a_path_that_is_no_model_directory_is_refused_without_the_hub(tmp_path):
    with pytest.raises(ConfigError, match="--teacher .*no-such-model: not a model directory"):
        resolve_teacher(str(tmp_path / "no-such-model"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a model directory"):
        resolve_teacher(str(tmp_path / "file"))


def test_offline_hub_id_fails_at_once_with_a_whole_sentence(monkeypatch, tmp_path):
    """No network (or HF_HUB_OFFLINE) and nothing cached: one line that ends in advice, not mid-sentence."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    with pytest.raises(ConfigError) as info:
        resolve_teacher("ddk-test-org/no-such-model")
    msg = str(info.value)
    assert msg.startswith("--teacher ddk-test-org/no-such-model: not a local directory, and the hub cannot be "
                          "reached (")
    assert msg.endswith("; pass a local model directory, or rerun with network access"), msg
    assert " ..." not in msg and "\n" not in msg
    why = msg.split(" reached (", 1)[1].rsplit(") while no copy is cached", 1)[0]
    assert why and not why.endswith("..."), why  # the hub client's reason, whole


def test_a_hub_teacher_without_safetensors_says_so_not_to_copy_weights(monkeypatch, tmp_path, tiny_teacher):
    """A hub repository that ships only pickle .bin weights: ddk fetches *.safetensors only, so the snapshot holds a
    config and no weights. The message named a local directory to copy weights into; it names the repository."""
    from huggingface_hub import constants

    cache = tmp_path / "hub-cache"
    commit = "0" * 40
    snapshot = cache / "models--ddk-test-org--bin-only" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    shutil.copy(tiny_teacher / "config.json", snapshot / "config.json")  # what a .bin-only repository leaves here
    (cache / "models--ddk-test-org--bin-only" / "refs").mkdir()
    (cache / "models--ddk-test-org--bin-only" / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    with pytest.raises(ConfigError) as info:
        resolve_teacher("ddk-test-org/bin-only")
    msg = str(info.value)
    assert msg.startswith("--teacher ddk-test-org/bin-only: the hub repository has no *.safetensors weights"), msg
    assert "pickle" in msg and "copy the model's weights" not in msg


def test_tokenizer_and_fit_checks_name_the_flags(tiny_teacher):
    t = resolve_teacher(str(tiny_teacher))
    tok = load_tokenizer(t)
    hf = backend_class("hf")
    assert fit_problems(t, len(tok), hf, seq_len=512, top_k=t.vocab_size) == []
    problems = fit_problems(t, t.vocab_size + 1, hf, seq_len=513, top_k=t.vocab_size + 1)
    assert [p.split(" ")[0] for p in problems] == ["--seq-len", "--top-k", "--teacher"]
    assert "use --seq-len <= 512" in problems[0] and f"use --top-k <= {t.vocab_size}" in problems[1]
    assert "tokenizer and model do not match" in problems[2]


# --------------------------------------------------------------------------- the resume identity check
def test_value_at_walks_dotted_paths_and_lists():
    doc = {"top_k": 4, "settings": {"a": 1}, "domains": [{"sources": [1]}, {"sources": [2, 3]}]}
    assert value_at(doc, "top_k") == 4 and value_at(doc, "settings.a") == 1
    assert value_at(doc, "settings.missing") is None and value_at(doc, "top_k.x") is None
    assert value_at(doc, "domains.*.sources") == [[1], [2, 3]]
    assert first_difference([1, 2], (1, 2)) is None  # JSON lists equal dataclass tuples


def test_the_first_difference_is_named_by_the_flag_the_user_changed(tmp_path):
    old = tiny_meta(top_k=4, settings={"heldout_seqs": 4})
    new = tiny_meta(top_k=8, settings={"heldout_seqs": 5}, domains=("alpha", "beta", "zeta"))
    assert identity_difference(old, new) == "meta.top_k: store has 4, this run has 8"
    assert identity_difference(old, new, RESUME_FLAGS) == "--top-k was 4, this run has 8"
    assert identity_difference(old, tiny_meta(top_k=4, settings={"heldout_seqs": 5}), RESUME_FLAGS) == \
        "--heldout-seqs was 4, this run has 5"
    # A difference no flag names falls back to its path in the store's metadata.
    assert identity_difference(old, tiny_meta(top_k=4, settings={"heldout_seqs": 4}, vocab_size=65),
                               RESUME_FLAGS) == "meta.tokenizer.vocab_size: store has 64, this run has 65"
    assert identity_difference(old, old.replace(status="complete"), RESUME_FLAGS) is None
    long = tiny_meta(settings={"heldout_seqs": 4, "corpora": {"x": "y" * 200}})
    msg = identity_difference(long, tiny_meta(settings={"heldout_seqs": 4, "corpora": {}}), RESUME_FLAGS)
    assert msg.startswith("--corpora (domain definitions) was {'x': 'yyy") and "...," in msg and len(msg) < 200


def test_the_writer_refuses_with_the_callers_flag_names(tmp_path):
    url = str(tmp_path / "s")
    make_tiny_store(url)
    other = tiny_meta(top_k=8)
    rows = {d: {"train": 16, "heldout": 4} for d in other.domain_names}
    with pytest.raises(StoreExistsError, match=r"made with different settings \(--top-k was 4, this run has 8\); "
                                               r"rerun with the store's settings.*--overwrite"):
        StoreWriter.open_or_create(url, other, rows, setting_names=RESUME_FLAGS)


@pytest.mark.parametrize("kind", ["group", "array"])
def test_a_node_another_process_creates_this_instant_is_taken_as_it_is(tmp_path, monkeypatch, kind):
    """The creation race of two shards on one new store: zarr refuses a node that appeared between the writer's
    check and its create; the writer takes that node and carries on (the one place shard races are handled)."""
    cls, error = (zarr.Group, ContainsGroupError)
    name = "create_group" if kind == "group" else "create_array"
    real = getattr(cls, name)
    raced: list[str] = []

    def other_process_wins(self, node, *args, **kwargs):
        real(self, node, *args, **kwargs)  # the sibling shard's creation lands first...
        raced.append(node)
        raise (error if kind == "group" else ContainsArrayError)(f"{node} exists")  # ...so ours is refused

    monkeypatch.setattr(cls, name, other_process_wins)
    meta = tiny_meta(seq_len=8, top_k=2)
    rows = {d: {spec.SPLIT_TRAIN: 4, spec.SPLIT_HELDOUT: 2} for d in meta.domain_names}
    w = StoreWriter.open_or_create(str(tmp_path / "s"), meta, rows, unit_rows=2, chunk_rows=1)
    monkeypatch.undo()
    assert raced and not w.resumed
    rng = np.random.default_rng(0)
    for unit in w.pending_units():
        w.write_unit(unit, **synth_rows(rng, unit.n_rows, meta.seq_len, meta.top_k, 64))
    w.finalize()
    assert validate_store(str(tmp_path / "s")) == [] and open_store(str(tmp_path / "s")).top_k == 2


def test_a_tokenizer_whose_ids_have_gaps_is_checked_by_its_largest_id(tiny_teacher):
    """A hand-built vocabulary of 4 tokens whose largest id lies beyond the teacher's output layer: it has fewer
    tokens than the teacher has outputs, yet rows with that id could not be scored, so dump and pack refuse it."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from stage1_teacher.teacher import token_id_bound

    t = resolve_teacher(str(tiny_teacher))
    vocab = {"[UNK]": 0, "</s>": 3, "hi": 40, "there": t.vocab_size + 5}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="[UNK]")),
                                  eos_token="</s>")
    assert len(tok) == 4 and token_id_bound(tok) == t.vocab_size + 6
    assert fit_problems(t, token_id_bound(tok), backend_class("hf"), seq_len=16, top_k=8) == [
        f"--teacher {t.name}: tokenizer has token ids 0-{t.vocab_size + 5} but the model outputs only "
        f"{t.vocab_size}; tokenizer and model do not match"]
    dense = load_tokenizer(t)
    assert token_id_bound(dense) == len(dense) <= t.vocab_size
