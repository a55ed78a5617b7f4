"""The one settings/CLI kit (ddk_store.settings, ddk_store.entry) behind ddk-teacher, ddk-student and ddk-store.

Every test goes through the real click commands (their parsing, --config reading and precedence), the same way for
the three CLIs: key spelling, booleans that a file turns on and a flag turns off, paths in a --config file, unknown
keys, help text, --version, storage options, --no-progress, Ctrl-C, and the complete examples in examples/.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import pytest
import yaml

from ddk_store import entry, settings
from ddk_store._version import __version__
from ddk_store.errors import ConfigError
from ddk_testkit.processes import REPO, run_cli
from stage1_teacher.cli import cli as teacher_cli
from stage1_teacher.config import Stage1Config
from stage2_student.cli import cli as student_cli
from stage2_student.cli import train_settings
from stage2_student.config import EvalConfig, Stage2Config

DUMP = teacher_cli.commands["dump"]
TRAIN = student_cli.commands["train"]
EVAL = student_cli.commands["eval"]


def dump_settings(argv: list[str]) -> Stage1Config:
    return settings.from_command(Stage1Config, DUMP.make_context("dump", argv))


def eval_settings(argv: list[str]) -> EvalConfig:
    return settings.from_command(EvalConfig, EVAL.make_context("eval", argv))


def train_from(argv: list[str]) -> Stage2Config:
    return train_settings(TRAIN.make_context("train", argv))


def one_error_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """An (empty) local directory: enough for the settings checks of --student/--model."""
    d = tmp_path / "model"
    d.mkdir()
    return d


# ----------------------------------------------------------------------------------------------- --config files
def test_keys_may_be_written_as_flags_or_fields(tmp_path: Path) -> None:
    y = tmp_path / "c.yaml"
    y.write_text("teacher: t\ncorpora: c.yaml\nstore: memory://s\nseq-len: 128\ntop_k: 8\nheldout-seqs: 3\n")
    cfg = dump_settings(["--config", str(y)])
    assert (cfg.seq_len, cfg.top_k, cfg.heldout_seqs) == (128, 8, 3)
    y.write_text("teacher: t\nseq-len: 128\nseq_len: 64\n")
    with pytest.raises(ConfigError, match="'seq_len' a second time"):
        dump_settings(["--config", str(y)])


@pytest.mark.parametrize("typo_first", [True, False])
@pytest.mark.parametrize("command", ["dump", "train"])
def test_unknown_keys_are_reported_one_way_with_a_guess(tmp_path: Path, command: str, typo_first: bool) -> None:
    y = tmp_path / "c.yaml"
    lines = ["seq_lenn: 3\n" if command == "dump" else "batchsize: 3\n", "bogus_setting: 1\n"]
    y.write_text("".join(lines if typo_first else lines[::-1]))
    with pytest.raises(ConfigError) as e:
        dump_settings(["--config", str(y)]) if command == "dump" else train_from(["--config", str(y)])
    msg = str(e.value)
    guess = "'seq_len'" if command == "dump" else "'batch_size'"
    typo = "seq_lenn" if command == "dump" else "batchsize"
    assert f"unknown key '{typo}' (did you mean {guess}?)" in msg, msg
    assert "unknown key 'bogus_setting' (valid keys: " in msg and msg.count("valid keys") == 1, msg
    assert msg.startswith(f"--config {y}: unknown key '{typo if typo_first else 'bogus_setting'}'"), msg
    assert msg.count(typo) == 1 and msg.count("bogus_setting") == 1, msg  # each key named once


def test_a_boolean_from_the_file_can_be_switched_off_on_the_command_line(tmp_path: Path, model_dir: Path) -> None:
    y = tmp_path / "c.yaml"
    y.write_text(f"store: memory://s\nstudent: {model_dir}\nout: {tmp_path / 'run'}\nkl_t2_scale: true\n"
                 "trust_remote_code: true\nprogress: false\n")
    with pytest.raises(ConfigError, match="trust_remote_code: true is not taken from a file"):
        train_from(["--config", str(y)])  # (a typed-only switch: test_a_typed_only_switch_is_never_taken_from_a_file)
    assert train_from(["--config", str(y), "--trust-remote-code"]).kl_t2_scale is True
    cfg = train_from(["--config", str(y), "--no-kl-t2-scale", "--no-trust-remote-code", "--progress"])
    assert (cfg.kl_t2_scale, cfg.trust_remote_code, cfg.progress) == (False, False, True)
    y.write_text("teacher: t\ncorpora: c.yaml\nstore: memory://s\noverwrite: true\nprogress: false\n")
    cfg = dump_settings(["--config", str(y), "--no-overwrite", "--progress"])
    assert (cfg.overwrite, cfg.progress) == (False, True)
    for command in (DUMP, TRAIN, EVAL):  # one boolean form everywhere
        for p in command.params:
            if p.is_flag and p.name != "help":
                assert p.secondary_opts == ["--no-" + p.opts[0][2:]], (command.name, p.name)


def test_relative_paths_in_a_config_file_are_read_from_its_folder(tmp_path: Path, monkeypatch) -> None:
    conf = tmp_path / "conf"
    (conf / "students" / "s").mkdir(parents=True)
    y = conf / "train.yaml"
    y.write_text("store: ../stores/x\nstudent: students/s\nout: runs/r\n")
    monkeypatch.chdir(tmp_path / "conf" / "students")  # anywhere else
    cfg = train_from(["--config", str(y), "--out", "typed/here"])
    assert cfg.store == str(tmp_path / "stores" / "x") and cfg.student == str(conf / "students" / "s")
    assert cfg.out == "typed/here"  # a typed flag is relative to the working directory, as the shell means it
    y.write_text("store: s3://bucket/prefix\nstudent: HuggingFaceTB/SmolLM2-135M\nout: /abs/run\n")
    cfg = train_from(["--config", str(y)])
    assert (cfg.store, cfg.student, cfg.out) == ("s3://bucket/prefix", "HuggingFaceTB/SmolLM2-135M", "/abs/run")
    d = conf / "dump.yaml"
    d.write_text("teacher: org/model\ncorpora: corpora.yaml\nstore: memory://s\n")
    cfg = dump_settings(["--config", str(d)])
    assert (cfg.teacher, cfg.corpora) == ("org/model", str(conf / "corpora.yaml"))


def test_wrong_types_name_the_field_and_the_flag(tmp_path: Path) -> None:
    y = tmp_path / "c.yaml"
    y.write_text("teacher: t\nseq_len: '12'\nstorage_options: [1]\n")
    with pytest.raises(ConfigError) as e:
        dump_settings(["--config", str(y)])
    assert "field 'seq_len': expected int, got '12' (--seq-len: expected int)" in str(e.value)
    assert "field 'storage_options': expected a mapping" in str(e.value)


def test_precedence_defaults_then_file_then_typed_flags(tmp_path: Path, model_dir: Path) -> None:
    y = tmp_path / "c.yaml"
    y.write_text(f"store: memory://s\nstudent: {model_dir}\nout: o\nsteps: 50\nalpha: 0.3\nlr: 1\n")
    cfg = train_from(["--config", str(y), "--steps", "70"])
    assert (cfg.steps, cfg.alpha, cfg.lr, cfg.gamma) == (70, 0.3, 1.0, 0.2)


# ----------------------------------------------------------------------------------------------- help, version
@pytest.mark.parametrize("command, required", [(DUMP, {"--teacher", "--corpora", "--store"}),
                                               (TRAIN, {"--store", "--student", "--out"}),
                                               (EVAL, {"--store", "--model"})])
def test_required_flags_are_shown_one_way(command, required: set[str]) -> None:
    shown = {p.opts[0] for p in command.params if (p.help or "").endswith("[required]")}
    assert shown == required
    assert not any(p.required for p in command.params)  # required = may come from --config; checked as settings


def test_student_and_model_explain_each_other() -> None:
    helps = {p.name: p.help for c in (TRAIN, EVAL) for p in c.params}
    assert "--model" in helps["student"] and "--student" in helps["model"]
    assert "RUN/checkpoints/step-N" in helps["model"]


@pytest.mark.parametrize("cli", ["ddk-teacher", "ddk-student", "ddk-store"])
def test_version(cli: str) -> None:
    result = run_cli(cli, ["--version"])
    assert result.code == 0 and result.output.strip() == f"{cli} {__version__}"


# ----------------------------------------------------------------------------------------------- shared flags
def test_storage_options_on_every_command_that_opens_a_store(tmp_path: Path, model_dir: Path) -> None:
    pairs = ["--storage-option", "endpoint_url=http://127.0.0.1:8333", "--storage-option", "anon=true"]
    want = {"endpoint_url": "http://127.0.0.1:8333", "anon": True}
    assert dump_settings(["--teacher", "t", "--corpora", "c", "--store", "s3://b/p", *pairs]).storage_options == want
    cfg = train_from(["--store", "s3://b/p", "--student", str(model_dir), "--out", "o", *pairs])
    assert cfg.storage_options == want
    assert eval_settings(["--store", "s3://b/p", "--model", str(model_dir), *pairs]).storage_options == want
    y = tmp_path / "c.yaml"
    y.write_text("storage_options: {endpoint_url: 'http://127.0.0.1:8333', anon: true}\n")
    assert eval_settings(["--config", str(y), "--store", "s3://b/p", "--model", str(model_dir)]).storage_options == want
    for old_form in ("endpoint", '{"endpoint_url": "http://127.0.0.1:8333"}'):  # the JSON flag of dump is gone
        result = run_cli("ddk-teacher", ["dump", "--teacher", "t", "--corpora", "c", "--store", "s",
                                         "--storage-options", old_form])
        assert result.code == 2 and "--storage-option: expects KEY=VALUE" in result.output, result.output


def test_saved_settings_have_absolute_paths_and_no_credentials(tmp_path: Path, model_dir: Path,
                                                               monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = Stage2Config(store="stores/x", student="model", out="run",
                       storage_options={"endpoint_url": "http://h", "key": "AKIA", "secret": "s3cr3t"})
    saved = settings.saved_dict(cfg)
    assert (saved["store"], saved["student"], saved["out"]) == (
        str(tmp_path / "stores" / "x"), str(tmp_path / "model"), str(tmp_path / "run"))
    assert saved["storage_options"] == {"endpoint_url": "http://h"}
    # at any depth: client_kwargs may carry the keys botocore takes, a profile's session token too
    cfg = Stage2Config(store="s3://b/x", student="model", out="run", storage_options={
        "client_kwargs": {"region_name": "eu-west-1", "aws_access_key_id": "AKIA", "aws_secret_access_key": "S3CR3T",
                          "aws_session_token": "T0K"}, "config_kwargs": {"connect_timeout": 5}})
    saved = settings.saved_dict(cfg)
    assert saved["storage_options"] == {"client_kwargs": {"region_name": "eu-west-1"},
                                        "config_kwargs": {"connect_timeout": 5}}
    assert "S3CR3T" not in json.dumps(saved) and "AKIA" not in json.dumps(saved) and "T0K" not in json.dumps(saved)


@pytest.mark.parametrize("command", [DUMP, TRAIN, EVAL])
def test_no_progress_on_every_long_command(command) -> None:
    assert "--no-progress" in {o for p in command.params for o in p.secondary_opts}


def test_no_progress_hides_the_libraries_bars_too(monkeypatch) -> None:
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging as hf_logging

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    try:
        entry.hide_library_progress_bars()
        assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
        assert not hf_logging.is_progress_bar_enabled() and are_progress_bars_disabled()
    finally:
        hf_logging.enable_progress_bar()
        enable_progress_bars()


# ----------------------------------------------------------------------------------------------- findings
def test_dump_device_cuda_without_cuda_is_one_line_before_the_store_exists(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    store = tmp_path / "store"
    result = run_cli("ddk-teacher", ["dump", "--teacher", str(tmp_path / "no-teacher"), "--corpora",
                                     str(tmp_path / "c.yaml"), "--store", str(store), "--device", "cuda"])
    line = one_error_line(result)
    assert "--device cuda" in line and "no CUDA device" in line and "--device cpu" in line
    assert not store.exists()


def test_ctrl_c_says_how_to_resume(tmp_path: Path, model_dir: Path, monkeypatch) -> None:
    """Ctrl-C in ddk-student train (faked where the training starts): exit 130 and how to continue."""
    import stage2_student.train

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(stage2_student.train, "train", interrupted)
    result = run_cli("ddk-student", ["train", "--store", str(tmp_path / "s"), "--student", str(model_dir), "--out",
                                     str(tmp_path / "run")])
    assert result.code == 130 and "rerun the same command to resume" in result.output, result.output
    assert "Aborted!" not in result.output


# ----------------------------------------------------------------------------------------------- examples/
@pytest.mark.parametrize("name, cls", [("dump.yaml", Stage1Config), ("train.yaml", Stage2Config)])
def test_the_config_examples_are_complete_and_load_through_the_cli(name: str, cls: type) -> None:
    path = REPO / "examples" / name
    keys = set(yaml.safe_load(path.read_text()))
    assert keys == {f.name for f in dataclasses.fields(cls)}, "the example must show every setting"
    cfg = dump_settings(["--config", str(path)]) if cls is Stage1Config else train_from(["--config", str(path)])
    assert Path(cfg.store).is_absolute() and Path(cfg.store).parent == REPO / "stores"
    if cls is Stage2Config:
        assert Path(cfg.out).parent == REPO / "runs" and cfg.mixing == "ddk"
    else:
        assert Path(cfg.corpora).is_absolute() and cfg.top_k == 64


# ------------------------------------------------------------------------------------------ docs' flag tables
def flag_table(doc: str, flag_in_it: str) -> dict[str, str]:
    """The first flag table of `doc` with a row for `flag_in_it`: every flag a row names -> its default column."""
    lines = (REPO / "docs" / doc).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| `{flag_in_it}"))
    while lines[start - 1].startswith("| `--"):
        start -= 1
    rows: dict[str, str] = {}
    for line in lines[start:]:
        if not line.startswith("| `--"):
            break
        flag_cell, default_cell = re.split(r"(?<!\\)\|", line)[1:3]  # cells between unescaped pipes
        for flag in re.findall(r"--[a-z0-9-]+", flag_cell):
            rows[flag] = default_cell.strip().strip("`")
    return rows


#: Defaults that depend on the machine, written in words in the tables.
MACHINE_DEFAULTS = {"workers": "the cores"}


def documented_default(f: dataclasses.Field) -> str | None:
    """How a table writes the default of `f`: on/off for switches, the value itself for numbers and words, None
    where the table says it in words instead (required settings, defaults computed at run time)."""
    if f.name in MACHINE_DEFAULTS:
        return MACHINE_DEFAULTS[f.name]
    if f.metadata.get("required") or f.default is None or f.default == "":
        return None
    if isinstance(f.default, bool):
        return "on" if f.default else "off"
    return str(f.default)


@pytest.mark.parametrize("doc, flag_in_it, cls", [("stage1.md", "--teacher", Stage1Config),
                                                  ("stage2.md", "--student", Stage2Config),
                                                  ("stage2.md", "--model", EvalConfig)])
def test_the_flag_tables_of_the_docs_show_every_setting_with_its_default(doc: str, flag_in_it: str, cls: type) -> None:
    table = flag_table(doc, flag_in_it)
    for f in dataclasses.fields(cls):
        flag = settings.flag_of(f)
        assert flag in table, f"docs/{doc}: the flag table of {cls.__name__} has no row for {flag}"
        expected = documented_default(f)
        if expected is not None:
            assert table[flag] == expected, f"docs/{doc}: {flag}'s default is {expected}, the table says {table[flag]!r}"
    flags = {"--config"}  # every command's
    for f in dataclasses.fields(cls):
        flags |= {settings.flag_of(f), *f.metadata.get("aliases", ())}
        if settings.kind(f)[0] == "bool":
            flags.add("--no-" + settings.flag_of(f)[2:])
    extra = {flag for flag in table if flag not in flags}
    assert not extra, f"docs/{doc}: the table of {cls.__name__} names flags the command does not have: {sorted(extra)}"


def test_a_typed_only_switch_is_never_taken_from_a_file(tmp_path: Path) -> None:
    from stage1_teacher.config import Stage1Config
    from stage2_student.config import Stage2Config

    on, off = tmp_path / "on.yaml", tmp_path / "off.yaml"
    for cls, other in ((Stage1Config, "top_k"), (Stage2Config, "seed")):
        on.write_text(f"trust_remote_code: true\n{other}: 8\n")
        off.write_text(f"trust_remote_code: false\n{other}: 8\n")
        left = {other: 8}
        with pytest.raises(ConfigError, match="trust_remote_code: true is not taken from a file"):
            settings.read_config(cls, on)
        assert settings.read_config(cls, off) == left  # off: dropped, the default is off anyway
        assert settings.read_config(cls, on, typed={"trust_remote_code"}) == left  # the typed flag decides
        assert settings.read_config(cls, on, saved=True) == left  # a run's own record: read, not obeyed
