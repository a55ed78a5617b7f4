"""End to end on a tiny store + tiny real student: CLI train -> exact artifacts -> eval -> report; padded vocab."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ddk_testkit.commands import train_args
from ddk_store import settings
from stage2_student.cli import cli
from stage2_student.config import Stage2Config

PRODUCT_KEYS = {"event", "step", "interval", "domains", "ppl_student", "ppl_teacher", "ratio", "weights"}
MODEL_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
RUN_FILES = MODEL_FILES | {"config.yaml", "metrics.jsonl", "checkpoints"}


def read_metrics(out):
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, store_url, student_dir):
    out = tmp_path_factory.mktemp("e2e") / "run"
    res = CliRunner().invoke(cli, train_args(store_url, student_dir, out, steps=12, interval=4, log_every=1))
    assert res.exit_code == 0, res.output
    return out


def assert_rows_replay(records, *, batch_size: int, rows_per_interval: int) -> None:
    """The rows each interval/final record counts are the rows the sampler draws from the logged weights, replayed
    step by step (seed 0, one process)."""
    from stage2_student.sampler import DomainSampler

    replay = DomainSampler(records[0]["train_rows"], rows_per_interval=rows_per_interval, seed=0)
    read = np.zeros(len(records[0]["train_rows"]), dtype=np.int64)
    for r, nxt in zip(records, records[1:]):
        replay.start_interval(r["interval"], r["weights"])
        for step in range(nxt["step"] - r["step"]):
            rows = replay.rows_for(step, batch_size=batch_size, chunk=0, num_chunks=1)
            read += np.bincount(rows[:, 0], minlength=len(read))
        assert nxt["rows_trained"] == read.tolist()


def test_exact_output_files(trained):
    assert {p.name for p in trained.iterdir()} == RUN_FILES
    ckpts = sorted(p.name for p in (trained / "checkpoints").iterdir())
    assert ckpts == ["step-00000008", "step-00000012"]  # keep_checkpoints=2, no *.tmp left behind
    assert {p.name for p in (trained / "checkpoints" / "step-00000012").iterdir()} == {
        "model.safetensors", "optimizer.safetensors", "state.json", "rng-rank0.safetensors"}
    cfg = settings.from_mapping(Stage2Config, __import__("yaml").safe_load((trained / "config.yaml").read_text()))
    assert cfg.steps == 12 and cfg.interval == 4 and cfg.mixing == "ddk"


def test_metrics_interval_lines(trained):
    lines = read_metrics(trained)
    intervals = [r for r in lines if r["event"] == "interval"]
    steps = [r for r in lines if r["event"] == "step"]
    assert [r["step"] for r in intervals] == [0, 4, 8] and [r["interval"] for r in intervals] == [0, 1, 2]
    assert [r["step"] for r in steps] == list(range(1, 13))
    for r in intervals:
        assert PRODUCT_KEYS <= set(r)
        assert r["domains"] == ["alpha", "beta", "gamma"]
        assert sum(r["weights"]) == pytest.approx(1.0, abs=1e-9)
        assert r["ratio"] == pytest.approx([s / t for s, t in zip(r["ppl_student"], r["ppl_teacher"])])
    # interval 0 samples the natural mixture (equal sizes -> uniform); r_0 is Eq. 1 of the initial ratios
    assert intervals[0]["weights"] == pytest.approx([1 / 3] * 3)
    from stage2_student.reweighting import discrepancy_factor, smooth_update
    assert intervals[0]["factor"] == pytest.approx(discrepancy_factor(intervals[0]["ratio"]))
    assert intervals[1]["weights"] == pytest.approx(smooth_update(intervals[0]["factor"], intervals[1]["ratio"], 0.5))
    assert min(intervals[2]["weights"]) >= 0.5 / 3 - 1e-12
    for r in steps:
        assert all(math.isfinite(r[k]) for k in ("loss", "ce", "kl", "lr", "tokens_per_s"))
        assert r["loss"] == pytest.approx(r["ce"] + 0.2 * r["kl"], rel=1e-5)
    final = [r for r in lines if r["event"] == "final"]
    assert len(final) == 1 and final[0]["step"] == 12
    # (the tiny store's tokens are random, so held-out NLL cannot fall below log V: no "it learned" check here)
    assert np.isfinite(final[0]["ppl_student"]).all()


def test_output_loads_and_eval_report(trained, store_url, student_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(trained)
    before = AutoModelForCausalLM.from_pretrained(student_dir)
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, before.model.layers[0].mlp.up_proj.weight)
    logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits).all()
    res = CliRunner().invoke(cli, ["eval", "--store", store_url, "--model", str(trained), "--json"])
    assert res.exit_code == 0, res.output
    ev = json.loads(res.stdout)
    final = [r for r in read_metrics(trained) if r["event"] == "final"][0]
    assert ev["domains"] == final["domains"]
    assert ev["ppl_student"] == pytest.approx(final["ppl_student"], rel=1e-4)  # same model, same rows
    res = CliRunner().invoke(cli, ["report", str(trained)])
    assert res.exit_code == 0, res.output
    assert {p.name for p in trained.iterdir()} == RUN_FILES | {"report.md", "weights.png", "ratios.png"}
    md = (trained / "report.md").read_text()
    assert "| alpha |" in md and "teacher ppl" in md and "student ppl before" in md
    assert (trained / "weights.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_padded_student_and_ablation_modes(tmp_path, store_url, padded_student_dir):
    """A student with 64 padding logits trains; each ablation is one flag; static weights are honoured."""
    for mixing, extra in [("wo-fs", {}), ("uniform", {}), ("natural", {"gamma": 0}),
                          ("static", {"static_weights": "alpha=0.5,gamma=0.5"})]:
        out = tmp_path / mixing
        res = CliRunner().invoke(cli, train_args(store_url, padded_student_dir, out, steps=4, interval=2,
                                                 mixing=mixing, **extra))
        assert res.exit_code == 0, res.output
        iv = [r for r in read_metrics(out) if r["event"] == "interval"]
        if mixing == "static":
            assert all(r["weights"] == pytest.approx([0.5, 0.0, 0.5]) for r in iv)
        if mixing == "uniform":
            assert all(r["weights"] == pytest.approx([1 / 3] * 3) for r in iv)
        if mixing == "wo-fs":
            from stage2_student.reweighting import discrepancy_factor
            assert iv[1]["weights"] == pytest.approx(discrepancy_factor(iv[1]["ratio"]))
        if mixing == "natural":
            steps = [r for r in read_metrics(out) if r["event"] == "step"]
            assert all(r["loss"] == pytest.approx(r["ce"]) for r in steps)  # gamma 0: CE only


def test_records_count_the_rows_trained_per_domain_even_in_a_cut_last_interval(tmp_path, store_url, student_dir):
    # 10 steps of interval 4: the last interval stops after 2 of its 4 steps. Every record counts the rows trained
    # before its step; report and compare take the passes from them.
    from stage2_student.report import write_report

    out = tmp_path / "run"
    res = CliRunner().invoke(cli, train_args(store_url, student_dir, out, steps=10, interval=4))
    assert res.exit_code == 0, res.output
    records = [r for r in read_metrics(out) if r["event"] in ("interval", "final")]
    assert [r["step"] for r in records] == [0, 4, 8, 10]
    for r in records:
        assert sum(r["rows_trained"]) == r["step"] * 4  # batch size 4
    assert_rows_replay(records, batch_size=4, rows_per_interval=16)
    report = write_report(out).read_text()
    for d, rows, n in zip(records[-1]["domains"], records[-1]["train_rows"], records[-1]["rows_trained"]):
        assert f"| {d} | {rows} | {n:,} | {n / rows:.2f} |" in report


def test_grad_clip_0_still_logs_the_gradient_norm(tmp_path, store_url, student_dir):
    """--grad-clip 0 turns clipping off, not the measurement: every step logs a finite norm (it used to be NaN, which
    strict JSON readers refuse), and step 1's equals a clipped run's (the norm is taken before clipping)."""
    norms = {}
    for clip in (0.0, 1.0):
        out = tmp_path / f"clip{clip}"
        res = CliRunner().invoke(cli, train_args(store_url, student_dir, out, steps=2, interval=1, log_every=1,
                                                 grad_clip=clip))
        assert res.exit_code == 0, res.output
        norms[clip] = [r["grad_norm"] for r in read_metrics(out) if r["event"] == "step"]
        assert "NaN" not in (out / "metrics.jsonl").read_text()
    assert len(norms[0.0]) == 2 and all(math.isfinite(g) and g > 0 for g in norms[0.0])
    assert norms[0.0][0] == pytest.approx(norms[1.0][0], rel=1e-6)


def test_every_step_line_measures_its_throughput(tmp_path, store_url, student_dir):
    """tokens/s covers the steps since the previous step line: the last step off the --log-every grid is measured
    too (it was written as 0.0, a false drop on every chart)."""
    out = tmp_path / "run"
    res = CliRunner().invoke(cli, train_args(store_url, student_dir, out, steps=5, interval=4, log_every=2))
    assert res.exit_code == 0, res.output
    steps = [r for r in read_metrics(out) if r["event"] == "step"]
    assert [r["step"] for r in steps] == [2, 4, 5]
    assert all(r["tokens_per_s"] > 0 for r in steps), steps


def test_device_decode_trains_as_host_decode(tmp_path, store_url, student_dir):
    """--topk-decode device (the default on CUDA: stored bytes to the device, decoded there) gives the run that host
    decoding gives: the same losses at every step, within float32 rounding of the rescale's summation order."""
    runs = {}
    for place in ("host", "device"):
        out = tmp_path / place
        res = CliRunner().invoke(cli, train_args(store_url, student_dir, out, steps=4, interval=2, log_every=1,
                                                 topk_decode=place))
        assert res.exit_code == 0, res.output
        runs[place] = [r for r in read_metrics(out) if r["event"] == "step"]
    assert len(runs["host"]) == 4
    for h, d in zip(runs["host"], runs["device"]):
        assert d["loss"] == pytest.approx(h["loss"], rel=1e-5) and d["kl"] == pytest.approx(h["kl"], rel=1e-4)


def test_gpu_train_benchmark_runs_tiny_on_cpu(tmp_path):
    """bench/gpu_train.py --tiny: the GPU training benchmark's whole path (student, store, KD and CE runs, table) on
    CPU, so that a change to train's flags cannot break it unseen before a GPU lease; its work directory is kept
    only when named."""
    import subprocess
    import sys

    from ddk_testkit.processes import REPO, child_env

    # (--compile off: compiling on the CPU doubles the test's time; test_runtime checks the compiled forward)
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_train.py"), "--tiny", "--json", "--compile", "off",
                           "--workdir", str(tmp_path / "work")], cwd=REPO, env=child_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert [r["variant"] for r in summary["results"]] == ["kd", "ce"]
    assert all(r["steps_timed"] == 5 and r["tokens_per_s"] > 0 for r in summary["results"])  # 8 steps, 3 untimed
    assert (tmp_path / "work" / "run-kd" / "metrics.jsonl").is_file()


def test_checkpoints_hold_no_pickle_and_every_file_is_readable_by_the_team(trained):
    import os
    import stat

    ckpt = trained / "checkpoints" / "step-00000012"
    for path in [*ckpt.iterdir(), *(p for p in trained.iterdir() if p.is_file())]:
        assert not path.read_bytes().startswith(b"PK\x03\x04"), f"{path} is a torch.save (pickle) archive"
        umask = os.umask(0)
        os.umask(umask)
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, f"{path}: {oct(path.stat().st_mode)}"


def test_optimizer_state_round_trips_through_safetensors_exactly(tmp_path):
    from stage2_student.checkpoint_files import load_optimizer, save_optimizer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Linear(4, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.95))
    for _ in range(3):
        model(torch.randn(2, 5)).sum().backward()
        opt.step()
    sd = opt.state_dict()
    save_optimizer(sd, tmp_path / "optimizer.safetensors")
    back = load_optimizer(tmp_path, "optimizer")
    assert back["param_groups"] == json.loads(json.dumps(sd["param_groups"]))
    assert set(back["state"]) == set(sd["state"])
    for i, st in sd["state"].items():
        assert set(back["state"][i]) == set(st)
        for k, v in st.items():
            assert torch.equal(back["state"][i][k], v) and back["state"][i][k].dtype == v.dtype
    twin = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.95))
    twin.load_state_dict(back)  # a resumed optimizer steps exactly as the original
    model(torch.randn(2, 5)).sum().backward()
    params = [p.detach().clone() for p in model.parameters()]
    opt.step()
    after_opt = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p, q in zip(model.parameters(), params):
            p.copy_(q)
    twin.step()
    assert all(torch.equal(a, p) for a, p in zip(after_opt, model.parameters()))


def test_an_earlier_checkpoints_optimizer_pt_is_still_read(tmp_path):
    from stage2_student.checkpoint_files import load_optimizer

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(1, 3)).sum().backward()
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "optimizer.pt")  # what checkpoints of an earlier ddk hold
    back = load_optimizer(tmp_path, "optimizer")
    assert torch.equal(back["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
