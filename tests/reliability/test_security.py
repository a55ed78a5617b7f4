"""Security properties: nothing in a store or a config can run code, readers never write, names never escape
their prefix, and --overwrite deletes only the store's own prefix.

Every "would run code" payload here writes a marker file when executed; each test asserts the marker is absent, and
a control proves the payload does write it when it is run.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from zarr.core.sync import sync
from zarr.storage import MemoryStore

from ddk_store import (
    ConfigError,
    DdkError,
    InvalidNameError,
    StoreFormatError,
    StoreWriter,
    open_store,
    spec,
    validate_domain_name,
)
from ddk_store.groups import group_path
from ddk_store.packed import PackedRows
from ddk_store.storage import delete_store_prefix
from ddk_store.testing import make_tiny_store, tiny_meta
from ddk_store.validate import validate_store
from ddk_testkit.bad_inputs import DUMP_FLAGS, Workspace
from ddk_testkit.processes import REPO, CliResult, run_cli, run_process
from ddk_testkit.s3 import SeaweedS3
from stage1_teacher.corpus import load_corpora

PACKAGES = ("ddk_store", "stage1_teacher", "stage2_student")
#: Every codec and data type a ddk store may declare (groups.array_specs): anything else is refused or a bug.
ALLOWED_CODECS = {"bytes", "blosc", "crc32c", "sharding_indexed"}  # 1.2: shards; their inner codecs are checked too
ALLOWED_DTYPES = {"uint8", "uint16", "uint32", "float16", "float32"}
PICKLE_PROTOCOL_HEADERS = {b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return Workspace.build(tmp_path_factory.mktemp("security"))


def one_error_line(result: CliResult) -> str:
    """The single 'error:' line of a failed run without a traceback (fails the test otherwise)."""
    assert result.code != 0, result.output
    assert "Traceback" not in result.output, result.output
    lines = result.lines_starting("error:")
    assert len(lines) == 1, result.output
    return lines[0]


def files_state(root: Path) -> dict[str, tuple[int, str] | str]:
    """Every path under ``root`` with (mtime_ns, sha256) for files: any write, even of equal bytes, shows."""
    out: dict[str, tuple[int, str] | str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) if p.is_file() else "dir"
    return out


def codec_names(codecs: list[dict[str, Any]]) -> set[str]:
    """Names of a codec pipeline, nested pipelines (sharding) included."""
    names = set()
    for c in codecs:
        names.add(c["name"])
        for key in ("codecs", "index_codecs"):
            names |= codec_names((c.get("configuration") or {}).get(key, []))
    return names


# =============================================================================== (a) no pickle, no code from data
@pytest.mark.parametrize("encoding", (spec.ENC_IDSORT_Q8, spec.ENC_RANK_F16))  # 1.1: test_store_v2.py
def test_store_holds_no_pickle(tmp_path: Path, encoding: str) -> None:
    """Every node declares only known numeric codecs and dtypes, and no chunk is a pickle stream."""
    url = tmp_path / "store"
    reader = make_tiny_store(str(url), encoding=encoding, train_rows=4, heldout_rows=2)
    arrays = 0
    for path in url.rglob("*"):
        if path.is_dir():
            continue
        rel = path.relative_to(url).as_posix()
        if path.name == "zarr.json":
            doc = json.loads(path.read_text())
            assert doc["zarr_format"] == 3 and doc["node_type"] in ("group", "array"), rel
            if doc["node_type"] == "array":
                arrays += 1
                assert codec_names(doc["codecs"]) <= ALLOWED_CODECS, (rel, doc["codecs"])
                assert doc["data_type"] in ALLOWED_DTYPES, (rel, doc["data_type"])
        else:
            assert "/c/" in f"/{rel}", f"unexpected file {rel}: a store holds only zarr.json and chunks"
            assert path.read_bytes()[:2] not in PICKLE_PROTOCOL_HEADERS, rel
    assert arrays == 3 * 2 * 5  # domains x splits x arrays: the walk saw the whole store
    for dom in reader.domains:
        for split in spec.SPLITS:
            for name, arr in reader.arrays(dom, split).items():
                assert np.dtype(arr.dtype).kind in "uif", (dom, split, name, arr.dtype)


MALICIOUS_CODECS = {
    "pickle-codec": {"name": "numcodecs.pickle"},
    "unknown-codec": {"name": "evil.exec", "configuration": {"cmd": "touch marker"}},
}


def plant_codec(store: Path, codec: dict[str, Any], marker: Path, array: str = "alpha/train/tokens") -> None:
    """Declare ``codec`` on ``array`` and replace its chunks by a pickle that would create ``marker``."""
    meta = store / array / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["codecs"] = [doc["codecs"][0], codec]
    meta.write_text(json.dumps(doc))
    # Protocol-0 pickle of open(marker, "w"): written by hand, unpickling it would create the marker file.
    payload = f"cbuiltins\nopen\n(S'{marker}'\nS'w'\ntR.".encode()
    for chunk in (meta.parent / "c").rglob("*"):
        if chunk.is_file():
            chunk.write_bytes(payload)


@pytest.fixture
def unpickling_codecs(monkeypatch):
    """Register a codec that unpickles its chunks under every planted name, as a zarr install with such a codec
    (a plugin, a future numcodecs) would: without it plain zarr refuses the names as unknown, and the test below could
    not fail. Removed afterwards."""
    import pickle
    from dataclasses import dataclass

    import zarr.registry
    from zarr.abc.codec import BytesBytesCodec

    def unpickling(name: str) -> type:
        @dataclass(frozen=True)
        class Unpickle(BytesBytesCodec):
            is_fixed_size = False

            @classmethod
            def from_dict(cls, data: dict[str, Any]) -> "Unpickle":
                return cls()

            def to_dict(self) -> dict[str, Any]:
                return {"name": name}

            async def _decode_single(self, chunk_bytes, chunk_spec):
                pickle.loads(chunk_bytes.to_bytes())  # the unsafe step a pickle codec takes
                return chunk_bytes

            async def _encode_single(self, chunk_bytes, chunk_spec):
                return chunk_bytes

            def compute_encoded_size(self, input_byte_length: int, chunk_spec) -> int:
                return input_byte_length
        return Unpickle

    registries = vars(zarr.registry)["__codec_registries"]
    for name in (c["name"] for c in MALICIOUS_CODECS.values()):
        monkeypatch.setitem(registries, name, zarr.registry.Registry())  # (restored as it was afterwards)
        zarr.registry.register_codec(name, unpickling(name))


@pytest.mark.parametrize("codec", MALICIOUS_CODECS.values(), ids=MALICIOUS_CODECS.keys())
def test_planted_codec_never_runs_code(ws: Workspace, tmp_path: Path, codec: dict[str, Any],
                                       unpickling_codecs: None) -> None:
    import zarr

    store, marker = tmp_path / "store", tmp_path / "marker"
    shutil.copytree(ws.store, store)
    plant_codec(store, codec, marker)
    with pytest.raises(StoreFormatError, match=codec["name"]):
        open_store(str(store)).read_rows("alpha", "train", [0, 1])
    assert not marker.exists(), "reading a store executed code from its data"
    # The control: plain zarr, with the same codecs registered, runs the payload.
    try:
        zarr.open_array(str(store), path="alpha/train/tokens", mode="r")[:1]
    except Exception:  # noqa: BLE001 - the payload's return value is no valid chunk; it has run by then
        pass
    assert marker.exists(), "the control did not run the payload: the check above proves nothing"
    marker.unlink()
    # In this process, the unpickling codecs still registered: verify decodes every array and refuses; info reads
    # only metadata, eval only the held-out rows (the codec is planted on training tokens).
    assert run_cli("ddk-store", ["verify", str(store)])[0] != 0
    run_cli("ddk-store", ["info", str(store)])
    run_cli("ddk-student", ["eval", "--store", str(store), "--model", str(ws.student)])
    assert not marker.exists(), "reading a store executed code from its data"


@pytest.mark.parametrize("codec", MALICIOUS_CODECS.values(), ids=MALICIOUS_CODECS.keys())
def test_planted_codec_in_packed_rows_or_an_unfinished_store_never_runs_code(tmp_path: Path, codec: dict[str, Any],
                                                                            monkeypatch, unpickling_codecs: None
                                                                            ) -> None:
    """The packed rows (read by a dump's score phase and by verify) and the writer (resuming or finalizing a store
    another process began) open stored arrays too: the same allowlist stands before their first read, and a codec
    zarr does not know is the same one-line refusal, not zarr's own error."""
    import zarr

    marker = tmp_path / "marker"
    packed = tmp_path / "packed"
    make_tiny_store(str(packed), domains=("alpha",), train_rows=4, heldout_rows=2)
    rows = PackedRows(str(packed))
    for split in ("heldout", "train"):
        rows.write_chunk("alpha", split, 0, np.ones((2, 16), np.int32), chunk_rows=2, dtype=np.uint16)
    rows.write_state({"seq_len": 16}, {"alpha": {"state": "packed", "chunk_rows": 2, "heldout_rows": 2,
                                                 "train_rows": 2}})
    assert validate_store(str(packed)) == []
    plant_codec(packed, codec, marker, array="_pack/alpha.heldout")
    with pytest.raises(StoreFormatError, match=codec["name"]):
        PackedRows(str(packed), read_only=True).read_rows("alpha", "heldout", 0, 2, seq_len=16, chunk_rows=2,
                                                          dtype=np.uint16)
    assert [i for i in validate_store(str(packed)) if codec["name"] in str(i)]
    unfinished = tmp_path / "unfinished"
    make_tiny_store(str(unfinished), domains=("alpha",), train_rows=4, heldout_rows=2, finalize=False)
    plant_codec(unfinished, codec, marker, array="alpha/heldout/target_logprobs")
    with pytest.raises(StoreFormatError, match=codec["name"]):
        StoreWriter.resume(str(unfinished)).finalize()
    assert not marker.exists(), "opening packed rows or an unfinished store executed code from its data"
    # The control: plain zarr, with the same codec registered, runs the payload of either.
    for url, array in ((packed, "_pack/alpha.heldout"), (unfinished, "alpha/heldout/target_logprobs")):
        try:
            zarr.open_array(str(url), path=array, mode="r")[:1]
        except Exception:  # noqa: BLE001 - the payload's return value is no valid chunk; it has run by then
            pass
        assert marker.exists(), f"the control did not run the payload in {array}: the check above proves nothing"
        marker.unlink()
    monkeypatch.undo()  # the codecs unregistered, as in a plain zarr install
    for check in (lambda: StoreWriter.resume(str(unfinished)).finalize(),
                  lambda: PackedRows(str(packed), read_only=True).read_rows("alpha", "heldout", 0, 2, seq_len=16,
                                                                            chunk_rows=2, dtype=np.uint16)):
        with pytest.raises(StoreFormatError, match=codec["name"]):
            check()
    assert not marker.exists()


@pytest.mark.parametrize("name", ["../../outside/evil", "a/b", ".hidden", "zarr.json"])
def test_a_pack_document_naming_a_path_is_reported_and_not_followed(tmp_path: Path, name: str) -> None:
    """Domain names in the stored pack document become array paths in verify: one that is no valid domain name is
    a problem verify names, and nothing is opened at that path."""
    store = tmp_path / "store"
    make_tiny_store(str(store), domains=("alpha",), train_rows=4, heldout_rows=2)
    PackedRows(str(store)).write_state({"seq_len": 16}, {name: {"state": "packed", "chunk_rows": 2,
                                                                "heldout_rows": 2, "train_rows": 2}})
    issues = [str(i) for i in validate_store(str(store))]
    assert any("names a domain the store format forbids" in i and "_pack/zarr.json" in i for i in issues), issues
    assert not any("missing or unreadable" in i for i in issues), issues  # nothing was looked up at that path


def test_a_pack_document_counting_a_trillion_rows_is_one_problem_not_a_loop(tmp_path: Path) -> None:
    """verify checked each chunk the pack document counts, one request each: an edited count of 10^12 rows ran
    forever. Past a hundred chunks more than are stored, the shortfall is one problem."""
    from ddk_store.codec import id_dtype

    store = tmp_path / "store"
    make_tiny_store(str(store), domains=("alpha",), train_rows=4, heldout_rows=2)
    pack = PackedRows(str(store))
    pack.write_state({"seq_len": 16}, {"alpha": {"state": "packed", "train_rows": 10**12, "heldout_rows": 3,
                                                 "chunk_rows": 1}})
    pack._rows("alpha", "train", 16, 1, id_dtype(64))  # the arrays' documents, no chunks
    pack._rows("alpha", "heldout", 16, 1, id_dtype(64))
    issues = [str(i) for i in validate_store(str(store)) if i.pack]
    assert "_pack/alpha.train: the pack document counts 1,000,000,000,000 item(s) in 1,000,000,000,000 chunk(s), " \
        "but 0 are stored" in " ".join(issues), issues
    assert sum("alpha.heldout chunk" in i for i in issues) == 3, issues  # a small shortfall: each chunk named


def test_a_store_claiming_a_trillion_rows_ends_training_in_one_line(ws: Workspace, tmp_path: Path) -> None:
    """Consistent shapes of 2^40 rows (zarr stores them sparsely): training must not end in a traceback."""
    from ddk_store.testing import StoreFiles

    store = tmp_path / "store"
    shutil.copytree(ws.store, store)
    files, n = StoreFiles(store), 2**40
    domain = json.loads((store / "zarr.json").read_text())["attributes"]["ddk"]["domains"][0]["name"]
    layout = files.read_doc(domain, "train")["attributes"]["ddk_group"]
    files.edit_doc(lambda d: d["attributes"]["ddk_group"].update(n_rows=n), domain, "train")
    for array in ("tokens", "topk_ids", "topk_logprobs", "target_logprobs", "topk_tail", "units"):
        rows = -(-n // layout["unit_rows"]) if array == "units" else n
        files.edit_doc(lambda d, rows=rows: d["shape"].__setitem__(0, rows), domain, "train", array)
    line = one_error_line(run_cli("ddk-student", ["train", "--store", str(store), "--student", str(ws.student),
                                                  "--out", str(tmp_path / "run"), "--steps", "2", "--batch-size",
                                                  "2", "--device", "cpu", "--no-progress"]))
    assert line.startswith("error: "), line


@pytest.mark.parametrize("codec", MALICIOUS_CODECS.values(), ids=MALICIOUS_CODECS.keys())
def test_planted_codec_is_refused_in_one_line(ws: Workspace, tmp_path: Path, codec: dict[str, Any]) -> None:
    store = tmp_path / "store"
    shutil.copytree(ws.store, store)
    plant_codec(store, codec, tmp_path / "marker")
    with pytest.raises(StoreFormatError, match=codec["name"]):
        open_store(str(store)).read_rows("alpha", "train", [0, 1])
    result = run_cli("ddk-store", ["verify", str(store)])
    assert "Traceback" not in result.output and codec["name"] in result.output


def _calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    """(dotted callee, call) for every call in ``tree``."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            out.append((ast.unparse(node.func), node))
    return out


def test_code_has_no_unsafe_deserialization() -> None:
    """Structural (AST) check of the three packages: no pickle-family import, torch.load only with
    weights_only=True, YAML only through SafeLoader, and trust_remote_code never hard-wired to True."""
    files = [p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")]
    assert len(files) > 20
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for mod in mods:
                    assert mod.split(".")[0] not in {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve"}, (
                        f"{path}: imports {mod}")
        for callee, call in _calls(tree):
            kwargs = {k.arg: k.value for k in call.keywords}
            if callee == "torch.load":
                assert isinstance(kwargs.get("weights_only"), ast.Constant) and kwargs["weights_only"].value is True, (
                    f"{path}:{call.lineno}: torch.load without weights_only=True unpickles arbitrary objects")
            if callee in ("yaml.unsafe_load", "yaml.full_load", "yaml.load_all"):
                pytest.fail(f"{path}:{call.lineno}: {callee}")
            if callee == "yaml.load":
                loader = ast.unparse(kwargs["Loader"]) if "Loader" in kwargs else ""
                assert loader == "UniqueKeyLoader", f"{path}:{call.lineno}: yaml.load with Loader={loader!r}"
            trc = kwargs.get("trust_remote_code")
            assert not (isinstance(trc, ast.Constant) and trc.value is True), (
                f"{path}:{call.lineno}: trust_remote_code=True hard-wired")
    from stage1_teacher.config import UniqueKeyLoader as Stage1Loader
    from stage2_student.config import UniqueKeyLoader as Stage2Loader

    assert issubclass(Stage1Loader, yaml.SafeLoader) and issubclass(Stage2Loader, yaml.SafeLoader)


@pytest.fixture
def evil_model(ws: Workspace, tmp_path: Path) -> tuple[Path, Path]:
    """(model dir, marker): the tiny student, but its config.json has an auto_map to evil.py, which writes marker."""
    model, marker = tmp_path / "evil_model", tmp_path / "remote_code_ran"
    shutil.copytree(ws.student, model)
    (model / "evil.py").write_text(f"from pathlib import Path\n\nPath({str(marker)!r}).write_text('ran')\n")
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(model_type="ddk-evil", architectures=["EvilModel"],
               auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"})
    (model / "config.json").write_text(json.dumps(cfg))
    return model, marker


def test_evil_module_writes_its_marker_when_run(evil_model: tuple[Path, Path]) -> None:
    """Control: the payload of the remote-code tests is live, so 'no marker' really means 'not executed'."""
    model, marker = evil_model
    spec_ = importlib.util.spec_from_file_location("ddk_test_evil", model / "evil.py")
    assert spec_ is not None and spec_.loader is not None
    spec_.loader.exec_module(importlib.util.module_from_spec(spec_))
    assert marker.read_text() == "ran"


def _remote_code_argv(kind: str, model: Path, ws: Workspace, tmp: Path) -> tuple[str, list[str]]:
    if kind == "dump":
        return "ddk-teacher", ["dump", "--teacher", str(model), "--corpora", str(ws.corpora), "--store",
                               str(tmp / "store"), *DUMP_FLAGS]
    if kind == "train":
        return "ddk-student", ["train", "--store", str(ws.store), "--student", str(model), "--out", str(tmp / "run"),
                               "--steps", "2", "--interval", "1", "--batch-size", "2", "--device", "cpu"]
    if kind == "eval":
        return "ddk-student", ["eval", "--store", str(ws.store), "--model", str(model)]
    return "ddk-student", ["init", "--teacher", str(model), "--layers", "1", "--out", str(tmp / "student")]


@pytest.mark.parametrize("kind", [
    "dump", "train", "eval",
    "init",
])
def test_remote_code_is_not_run_without_the_flag(ws: Workspace, tmp_path: Path, evil_model: tuple[Path, Path],
                                                 kind: str) -> None:
    model, marker = evil_model
    cli, argv = _remote_code_argv(kind, model, ws, tmp_path)
    result = run_cli(cli, argv)
    assert not marker.exists(), f"ddk {kind} executed the model's own code without --trust-remote-code"
    line = one_error_line(result)
    assert "custom code" in line or "trust-remote-code" in line, line


def test_remote_code_runs_only_with_the_flag(ws: Workspace, tmp_path: Path, evil_model: tuple[Path, Path],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The opt-in is what gates the code: with --trust-remote-code transformers does import evil.py."""
    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "hf_modules"))  # keep the copy in tmp
    monkeypatch.setattr(sys, "path", list(sys.path))
    model, marker = evil_model
    cli, argv = _remote_code_argv("dump", model, ws, tmp_path)
    run_cli(cli, [*argv, "--trust-remote-code"])
    assert marker.exists()


@pytest.mark.parametrize("kind", ["dump", "train", "eval"])
def test_a_config_file_cannot_turn_on_remote_code(ws: Workspace, tmp_path: Path, evil_model: tuple[Path, Path],
                                                  kind: str) -> None:
    """A --config file (a run's config.yaml in a shared folder, say) saying trust_remote_code: true is refused; the
    typed flag alone turns it on, and a file saying false is read as before."""
    model, marker = evil_model
    cli, argv = _remote_code_argv(kind, model, ws, tmp_path)
    config = tmp_path / "settings.yaml"
    config.write_text("trust_remote_code: true\n")
    line = one_error_line(run_cli(cli, [*argv, "--config", str(config)]))
    assert not marker.exists(), f"ddk {kind} ran the model's own code because a --config file said so"
    assert line == (f"error: --config {config}: trust_remote_code: true is not taken from a file, which anyone who "
                    "can write it could have edited; type --trust-remote-code to turn it on"), line
    config.write_text("trust_remote_code: false\n")
    line = one_error_line(run_cli(cli, [*argv, "--config", str(config)]))  # read: then the model's refusal
    assert not marker.exists() and ("custom code" in line or "trust-remote-code" in line), line


PY_TAGS = ["!!python/object/apply:os.system ['touch {m}']", "!!python/object/new:os.system ['touch {m}']",
           "{{run: !!python/object/apply:subprocess.call [['touch', '{m}']]}}"]


def _yaml_target(kind: str, doc: str, ws: Workspace, tmp: Path) -> tuple[str, list[str]]:
    """A command that reads the YAML ``doc`` from a file the user controls."""
    path = tmp / "doc.yaml"
    if kind == "corpora":
        path.write_text(doc)
        return "ddk-teacher", ["dump", "--teacher", str(ws.student), "--corpora", str(path), "--store",
                               str(tmp / "store"), *DUMP_FLAGS]
    if kind == "dump-config":
        path.write_text(doc)
        return "ddk-teacher", ["dump", "--teacher", str(ws.student), "--corpora", str(ws.corpora), "--store",
                               str(tmp / "store"), "--config", str(path), *DUMP_FLAGS]
    if kind == "train-config":
        path.write_text(doc)
        return "ddk-student", ["train", "--store", str(ws.store), "--student", str(ws.student), "--out",
                               str(tmp / "run"), "--config", str(path), "--device", "cpu"]
    run = tmp / "run"  # report: the run's own config.yaml
    run.mkdir()
    (run / "config.yaml").write_text(doc)
    (run / "metrics.jsonl").write_text(json.dumps({
        "event": "interval", "step": 0, "domains": ["a"], "ppl_student": [2.0], "ppl_teacher": [1.0],
        "ratio": [2.0], "weights": [1.0]}) + "\n")
    return "ddk-student", ["report", str(run)]


@pytest.mark.parametrize("tag", PY_TAGS, ids=["apply", "new", "nested"])
@pytest.mark.parametrize("kind", ["corpora", "dump-config", "train-config", "report"])
def test_yaml_python_tags_are_refused(ws: Workspace, tmp_path: Path, kind: str, tag: str) -> None:
    marker = tmp_path / "yaml_ran"
    cli, argv = _yaml_target(kind, tag.format(m=marker), ws, tmp_path)
    line = one_error_line(run_cli(cli, argv))
    assert "python/object" in line, line
    assert not marker.exists()
    assert not (tmp_path / "report.md").exists() and not (tmp_path / "run" / "report.md").exists()


@pytest.mark.parametrize("tag", [PY_TAGS[0], PY_TAGS[2]], ids=["apply", "nested"])
def test_yaml_tag_payloads_are_live(tmp_path: Path, tag: str) -> None:
    """Control: an unsafe loader does run these payloads, so 'no marker' above means 'refused', not 'inert'."""
    marker = tmp_path / "yaml_ran"
    with pytest.raises(yaml.constructor.ConstructorError):
        yaml.safe_load(tag.format(m=marker))
    yaml.unsafe_load(tag.format(m=marker))  # the control itself, on our own harmless payload
    assert marker.exists()


def test_resume_with_tagged_run_config_is_one_line(ws: Workspace, tmp_path: Path) -> None:
    marker, run = tmp_path / "yaml_ran", tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(PY_TAGS[0].format(m=marker))
    result = run_cli("ddk-student", ["train", "--store", str(ws.store), "--student", str(ws.student), "--out",
                                     str(run), "--steps", "2", "--interval", "1", "--batch-size", "2", "--resume",
                                     "--device", "cpu"])
    assert not marker.exists()
    one_error_line(result)


# =============================================================================== (b) readers never write
def test_readers_never_write(ws: Workspace, tmp_path: Path) -> None:
    """Read everything through every reading path; the store's files, bytes and mtimes stay exactly as they were."""
    store = tmp_path / "store"
    shutil.copytree(ws.store, store)
    before = files_state(store)
    reader = open_store(str(store))
    for dom in reader.domains:
        for split in spec.SPLITS:
            n = reader.num_rows(dom, split)
            assert n > 0
            for order in ("stored", "rank"):
                batch = reader.read_rows(dom, split, np.arange(n), order=order)
                assert batch.tokens.shape == (n, reader.seq_len)
    assert reader.bytes_on_disk() > 0
    assert validate_store(str(store)) == []
    assert run_cli("ddk-store", ["info", str(store)]).code == 0
    assert json.loads(run_cli("ddk-store", ["info", "--json", str(store)]).output)["status"] == "complete"
    assert run_cli("ddk-store", ["verify", str(store)]).code == 0
    result = run_cli("ddk-student", ["eval", "--store", str(store), "--model", str(ws.student), "--json",
                                     "--device", "cpu"])
    assert result.code == 0, result.output
    assert files_state(store) == before


# =============================================================================== (c) names that become paths
BAD_NAMES = ["..", "../x", "a/b", "/abs", "", " ", "ａｌｐｈａ", "alpha\n", "alpha\u200b", "a\\b", "Alpha", ".hidden",
             "-x", "x" * 65, "a\x00b", "~", "a b", "é"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=[repr(n) for n in BAD_NAMES])
def test_store_writer_refuses_bad_domain_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidNameError):
        validate_domain_name(name)
    with pytest.raises(InvalidNameError):
        tiny_meta(domains=("alpha", name))
    with pytest.raises(DdkError):
        group_path(name, "train")
    # The writer itself: metadata built valid, then the name forced in (as a caller bypassing the checks above
    # could), with rows that match it, so the name is the only fault.
    meta = tiny_meta(domains=("alpha", "zeta"))
    object.__setattr__(meta.domains[1], "name", name)
    rows = {"alpha": {"train": 1, "heldout": 1}, name: {"train": 1, "heldout": 1}}
    with pytest.raises(InvalidNameError, match="invalid domain name"):
        StoreWriter.open_or_create(str(tmp_path / "store"), meta, rows)
    assert list(tmp_path.iterdir()) == []  # refused before anything was created


@pytest.mark.parametrize("name", BAD_NAMES, ids=[repr(n) for n in BAD_NAMES])
def test_corpora_loader_refuses_bad_domain_names(tmp_path: Path, name: str) -> None:
    (tmp_path / "a.txt").write_text("text\n")
    path = tmp_path / "corpora.yaml"
    path.write_text(yaml.safe_dump({"domains": {name: {"paths": ["a.txt"], "format": "lines"}}}))
    with pytest.raises(ConfigError, match="invalid domain name"):
        load_corpora(path)


@pytest.mark.parametrize("name", ["../escape", "a/b", "/abs", "x\n"])
def test_store_listing_a_bad_domain_is_refused(ws: Workspace, tmp_path: Path, name: str) -> None:
    """A hand-edited store whose metadata names a path-like domain is refused before any path is built from it."""
    store = tmp_path / "store"
    shutil.copytree(ws.store, store)
    doc = json.loads((store / "zarr.json").read_text())
    doc["attributes"]["ddk"]["domains"][0]["name"] = name
    (store / "zarr.json").write_text(json.dumps(doc))
    why = "holds control characters" if "\n" in name else "invalid domain name"  # (any string field refuses those)
    with pytest.raises(StoreFormatError, match=why):
        open_store(str(store))
    assert why in one_error_line(run_cli("ddk-store", ["info", str(store)]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


@pytest.mark.parametrize("split", ["../train", "train/..", "", "TRAIN"])
def test_split_names_are_validated(ws: Workspace, split: str) -> None:
    with pytest.raises(StoreFormatError):
        group_path("alpha", split)
    with pytest.raises(StoreFormatError, match="unknown split"):
        open_store(str(ws.store)).read_rows("alpha", split, [0])


# =============================================================================== (d) --overwrite stays in its prefix
def test_overwrite_deletes_only_its_own_prefix(ws: Workspace, tmp_path: Path) -> None:
    parent = tmp_path / "stores"
    store = parent / "store"
    make_tiny_store(str(store), train_rows=4, heldout_rows=2)  # another store: other teacher, other settings
    for name, text in (("keep.txt", "sibling file"), ("store-old/data.txt", "sibling dir"), ("storex", "prefix-alike")):
        (parent / name).parent.mkdir(parents=True, exist_ok=True)
        (parent / name).write_text(text)
    siblings = {k: v for k, v in files_state(parent).items() if not (k == "store" or k.startswith("store/"))}
    argv = ["dump", "--teacher", str(ws.student), "--corpora", str(ws.corpora), "--store", str(store),
            *DUMP_FLAGS, "--max-rows-per-domain", "4"]
    assert "--overwrite" in one_error_line(run_cli("ddk-teacher", argv))  # refused without the flag
    result = run_cli("ddk-teacher", [*argv, "--overwrite"])
    assert result.code == 0, result.output
    assert {k: v for k, v in files_state(parent).items() if not (k == "store" or k.startswith("store/"))} == siblings
    reader = open_store(str(store))
    assert reader.top_k == 4 and set(reader.domains) == {"prose", "notes"}


def test_overwrite_refuses_home_directory(ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store at $HOME (here a stand-in home holding a store and a dotfile) is never wiped, even with --overwrite."""
    home = tmp_path / "home"
    make_tiny_store(str(home), train_rows=4, heldout_rows=2)
    (home / ".bashrc").write_text("export KEEP=me\n")
    before = files_state(home)
    monkeypatch.setenv("HOME", str(home))
    argv = ["dump", "--teacher", str(ws.teacher), "--corpora", str(ws.corpora), "--store", str(home), *DUMP_FLAGS,
            "--overwrite"]
    assert "home directory" in one_error_line(run_cli("ddk-teacher", argv))
    assert files_state(home) == before


@pytest.mark.parametrize("url", ["/", "file:///", "~", "HOME"])
def test_delete_guard_refuses_root_and_home(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last line of defence, exercised with deletion faked: it refuses before rmtree is ever reached."""
    import ddk_store.storage as storage

    deleted: list[Any] = []
    monkeypatch.setattr(storage.shutil, "rmtree", lambda *a, **k: deleted.append(a))
    with pytest.raises(ConfigError, match="refusing to delete"):
        sync(delete_store_prefix(MemoryStore({}), str(Path.home()) if url == "HOME" else url))
    assert deleted == []


@pytest.mark.s3
def test_overwrite_on_s3_keeps_sibling_prefixes(s3_server: SeaweedS3) -> None:
    """s3://bucket/team/store --overwrite must not touch team/store-old/, team/storex or team/keep.txt."""
    import s3fs

    fs = s3fs.S3FileSystem(**s3_server.storage_options, skip_instance_cache=True)
    opts = s3_server.storage_options
    url = "s3://ddk/security/team/store"
    meta = tiny_meta(domains=("alpha",), seq_len=4, top_k=2, vocab_size=8)
    rows = {"alpha": {"train": 2, "heldout": 1}}
    StoreWriter.open_or_create(url, meta, rows, storage_options=opts)
    siblings = {"ddk/security/team/store-old/data": b"a", "ddk/security/team/storex": b"b",
                "ddk/security/team/keep.txt": b"c"}
    for key, data in siblings.items():
        fs.pipe(key, data)
    other = tiny_meta(domains=("alpha",), seq_len=4, top_k=3, vocab_size=8)
    writer = StoreWriter.open_or_create(url, other, rows, overwrite=True, storage_options=opts)
    assert writer.meta.top_k == 3
    fs.invalidate_cache()
    assert {k: fs.cat(k) for k in siblings} == siblings


@pytest.mark.parametrize("plant", ["fifo", "link to /dev/zero", "sparse 2 GiB"])
def test_a_planted_metadata_document_is_refused_before_it_is_read(tmp_path: Path, plant: str) -> None:
    """A FIFO hung `ddk-store info`, a link to a device or a huge sparse file had it read without end: each is one
    line naming the document, within the test's timeout."""
    import os

    store = tmp_path / "store"
    make_tiny_store(str(store), domains=("alpha", "beta"), train_rows=4, heldout_rows=2)
    doc = store / "beta" / "train" / "zarr.json"
    doc.unlink()
    if plant == "fifo":
        os.mkfifo(doc)
    elif plant == "link to /dev/zero":
        doc.symlink_to("/dev/zero")
    else:
        with open(doc, "wb") as f:
            f.truncate(2 << 30)
    proc = run_process("ddk_store.cli", ["info", str(store)], timeout=120)  # (a subprocess: a hang fails, not waits)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    [line] = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    what = {"fifo": "not a regular file", "link to /dev/zero": "a symbolic link",
            "sparse 2 GiB": "2,147,483,648 bytes (more than 1,073,741,824)"}[plant]
    assert f"beta/train/zarr.json is {what}" in line, line


def test_a_chunk_that_is_not_a_regular_file_is_one_problem_not_a_hang(tmp_path: Path) -> None:
    import os

    from ddk_store.errors import StoreCorruptError

    store = tmp_path / "store"
    make_tiny_store(str(store), domains=("alpha",), train_rows=4, heldout_rows=2)
    shard = next(p for p in (store / "alpha" / "train" / "tokens").rglob("*") if p.is_file() and p.name != "zarr.json")
    shard.unlink()
    os.mkfifo(shard)
    with pytest.raises(StoreCorruptError, match="not a regular file"):
        open_store(str(store)).read_rows("alpha", "train", range(4))


def test_metadata_holding_terminal_control_characters_is_refused_not_printed(tmp_path: Path) -> None:
    """`ddk-store info` printed a teacher name as stored: an escape sequence planted there reached the terminal."""
    store = tmp_path / "store"
    make_tiny_store(str(store), domains=("alpha",), train_rows=4, heldout_rows=2)
    doc = json.loads((store / "zarr.json").read_text())
    doc["attributes"]["ddk"]["teacher"]["name"] = "teacher\x1b]0;owned\x07\r"
    (store / "zarr.json").write_text(json.dumps(doc))
    result = run_cli("ddk-store", ["info", str(store)])
    line = one_error_line(result)
    assert "field 'teacher.name': holds control characters" in line and "\x1b" not in result.output, line
