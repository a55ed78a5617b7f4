"""Config <-> CLI mirror, precedence, and every bad input refused in one line before any training."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import zarr
from click.testing import CliRunner

from ddk_store import settings
from ddk_store.errors import ConfigError
from ddk_testkit.commands import train_args
from ddk_testkit.stores import make_store
from stage2_student.cli import cli
from stage2_student.config import Stage2Config

REQUIRED = dict(store="s", student="m", out="o")


def test_flags_mirror_config_fields():
    train = cli.commands["train"]
    flags = {p.name for p in train.params}
    fields = {f.name for f in dataclasses.fields(Stage2Config)}
    assert flags - {"config_file"} == fields
    for p in train.params:  # the field name with dashes is always a spelling of its flag (--help lists the flag first)
        assert "--" + ("config" if p.name == "config_file" else p.name.replace("_", "-")) in p.opts
    for f in dataclasses.fields(Stage2Config):
        assert f.metadata["help"], f"field {f.name} has no help text"


def test_product_contract_flags_exist():
    opts = {o for p in cli.commands["train"].params for o in p.opts}
    for flag in ["--store", "--student", "--out", "--mixing", "--interval", "--alpha", "--gamma", "--temperature",
                 "--steps", "--batch-size", "--lr", "--seed", "--resume", "--config"]:
        assert flag in opts
    eval_opts = {o for p in cli.commands["eval"].params for o in p.opts}
    assert {"--store", "--model", "--json"} <= eval_opts


def test_defaults_and_derived():
    cfg = Stage2Config(**REQUIRED, steps=300)
    assert (cfg.mixing, cfg.alpha, cfg.gamma, cfg.temperature, cfg.kl_tail) == ("ddk", 0.5, 0.2, 1.0, "bucket")
    assert cfg.interval_steps == 10 and cfg.warmup == 10  # steps // 30
    assert settings.from_mapping(Stage2Config, cfg.to_dict()) == cfg


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as e:
        Stage2Config(**REQUIRED, alpha=2.0, gamma=-1.0, steps=10, interval=20, batch_size=6, grad_accum=4)
    msg = str(e.value)
    for part in ["--alpha", "--gamma", "--interval 20 is larger than the run", "divisible by --grad-accum"]:
        assert part in msg


def test_yaml_precedence_and_unknown_keys(tmp_path):
    from stage2_student.cli import train_settings

    y = tmp_path / "c.yaml"
    y.write_text("store: s\nstudent: m\nout: o\nlr: 3e-4\nsteps: 50\nalpha: 0.3\n")
    cmd = cli.commands["train"]
    ctx = cmd.make_context("train", ["--config", str(y), "--steps", "70"])
    cfg = train_settings(ctx)
    assert (cfg.steps, cfg.alpha, cfg.lr, cfg.gamma) == (70, 0.3, 3e-4, 0.2)  # flag > YAML > default
    y.write_text("store: s\nstudent: m\nout: o\nbatchsize: 3\n")
    res = CliRunner().invoke(cli, ["train", "--config", str(y)])
    assert res.exit_code == 2 and "unknown key 'batchsize' (did you mean 'batch_size'?)" in res.output


def _err(args: list[str]) -> str:
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output  # one line, no traceback
    assert res.exception is None or isinstance(res.exception, SystemExit)
    return lines[0]


@pytest.fixture(scope="module")
def bad_stores(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("bad")
    make_store(root / "incomplete", tiny_tokenizer, finalize=False)
    make_store(root / "othertok", tiny_tokenizer, fingerprint="sha256:someone-else")
    for name, key, value in [("version", "format_version", "9.0"), ("encoding", "encoding", "topk-zip-q3")]:
        make_store(root / name, tiny_tokenizer)
        g = zarr.open_group(str(root / name), mode="r+")
        doc = dict(g.attrs["ddk"])
        doc[key] = value
        g.attrs["ddk"] = doc
    return root


def test_bad_inputs_one_line_each(tmp_path, bad_stores, store_url, student_dir):
    out = tmp_path / "out"
    msg = _err(train_args(str(bad_stores / "incomplete"), student_dir, out))
    assert "is incomplete (status 'writing')" in msg, msg  # (the store's folder is named 'incomplete' too)
    msg = _err(train_args(str(bad_stores / "version"), student_dir, out))
    assert "9.0" in msg
    msg = _err(train_args(str(bad_stores / "encoding"), student_dir, out))
    assert "topk-zip-q3" in msg
    msg = _err(train_args(str(bad_stores / "othertok"), student_dir, out))
    assert "sha256:someone-else" in msg and "fingerprint" in msg and str(student_dir) in msg
    msg = _err(train_args(store_url, student_dir, out, mixing="static", static_weights="alpha=0.5,zeta=0.5"))
    assert "zeta" in msg and "alpha, beta, gamma" in msg
    msg = _err(train_args(store_url, student_dir, out, mixing="static", static_weights="alpha=0.5,beta=0.4"))
    assert "sum to 1" in msg
    msg = _err(train_args(store_url, student_dir, out, mixing="static", static_weights="alpha=1", steps=12,
                          batch_size=4, max_epochs_per_domain=1.5))  # only alpha's 16 rows can take the 48 drawn
    assert "1.5 x 16 = 24 training rows of the domains --static-weights samples" in msg, msg
    msg = _err(train_args(store_url, student_dir, out, mixing="natural", init_mixture="r0"))
    assert "--init-mixture r0 is only used with --mixing ddk or wo-fs (got --mixing natural" in msg, msg
    msg = _err(train_args(store_url, student_dir, out, steps=10, interval=11))
    assert "--interval 11 is larger than the run" in msg
    msg = _err(train_args(store_url, student_dir, out, steps=10, interval=10))  # (mixing ddk)
    assert "--interval 10 is the whole run (--steps 10): --mixing ddk would compute its weights only at" in msg, msg
    msg = _err(train_args(str(tmp_path / "nowhere"), student_dir, out))
    assert f"no ddk store at {tmp_path / 'nowhere'}" in msg, msg
    assert not out.exists() or not any(out.iterdir())  # nothing was trained or written


def test_out_dir_with_another_run_is_refused(tmp_path, store_url, student_dir):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("store: x\nstudent: y\n")
    (out / "metrics.jsonl").write_text("")
    msg = _err(train_args(store_url, student_dir, out))
    assert "already holds a ddk-student run" in msg and "--resume" in msg and "--overwrite" in msg
    other = tmp_path / "notarun"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    msg = _err(train_args(store_url, student_dir, other, overwrite=True))
    assert "holds no ddk-student run" in msg
    assert (other / "precious.txt").read_text() == "keep me"


def test_overwrite_never_deletes_the_runs_own_inputs(tmp_path, store_url, student_dir):
    # A run directory that holds the student (a finished run's model, say) and the store: --overwrite would delete
    # them before reading them, so it is refused and both stay.
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("store: x\nstudent: y\n")
    shutil.copytree(student_dir, out / "model")
    shutil.copytree(store_url, out / "store")
    msg = _err(train_args(store_url, out / "model", out, overwrite=True))
    assert f"--student {out / 'model'} inside it" in msg and "another --out" in msg, msg
    msg = _err(train_args(str(out / "store"), student_dir, out, overwrite=True))
    assert f"--store {out / 'store'} inside it" in msg, msg
    assert (out / "model" / "config.json").is_file() and (out / "store" / "zarr.json").is_file()
