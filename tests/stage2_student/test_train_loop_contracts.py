"""Properties a mutation campaign found unchecked in stage 2's training loop (train.py) and its held-out evaluation
(evaluate.py): what the step and final records carry, the learning rate every parameter group steps with, the
throughput over the steps since the previous record, gradient accumulation and --grad-clip 0 changing nothing, the
capped weights sampled, logged and checkpointed, a perplexity that overflows ending the run, evaluate()'s row limit,
autocast and empty-domain refusal; then the summaries (summary.py) and the TensorBoard sink (sinks.py) those records
feed. Each is checked against values computed from the definition (the schedule, a float64 perplexity, a fake
clock's seconds, the sampler replayed), on tiny real runs."""

from __future__ import annotations

import json
import math
import types

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from transformers import AutoModelForCausalLM, AutoTokenizer

from ddk_store import open_store, spec
from ddk_testkit.commands import train_args
from stage2_student import rundir, sinks
from stage2_student import train as train_module
from stage2_student.checkpoint import latest_checkpoint
from stage2_student.checkpoint_files import load_optimizer
from stage2_student.cli import cli
from stage2_student.evaluate import evaluate, teacher_heldout_ppl
from stage2_student.schedule import lr_at
from stage2_student.summary import format_ratio, mean_sd, natural_mixture, summarize

from .test_evaluate import reference

#: Intervals of 4 steps, the second cut after one (records at 0 and 4, the final one at 5), a step record at every
#: step.
RUN = dict(steps=5, interval=4, log_every=1)


def records(out, event):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["event"] == event]


class FakeClock:
    """train's ``time``: perf_counter advances exactly one second per call (the loop reads it once before the first
    step and once per step record)."""

    def __init__(self):
        self.now = 100.0

    def perf_counter(self) -> float:
        self.now += 1.0
        return self.now


def run_train(out, store_url, student_dir, **flags):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_module, "time", types.SimpleNamespace(perf_counter=FakeClock().perf_counter))
        res = CliRunner().invoke(cli, train_args(store_url, student_dir, out, **flags))
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def plain(tmp_path_factory, store_url, student_dir):
    """4 steps, grad_accum 1, a clipping bound no gradient reaches (it scales by exactly 1)."""
    return run_train(tmp_path_factory.mktemp("loop") / "plain", store_url, student_dir, grad_clip=1e9, **RUN)


@pytest.fixture(scope="module")
def accum_noclip(tmp_path_factory, store_url, student_dir):
    """The same run with --grad-accum 2 (the same rows per step, in two halves) and --grad-clip 0 (no clipping)."""
    return run_train(tmp_path_factory.mktemp("loop") / "accum", store_url, student_dir, grad_clip=0, grad_accum=2,
                     **RUN)


def test_each_step_record_carries_the_learning_rate_of_the_update_that_made_it(plain):
    """Record s is written after update s-1 (0-based), which steps at lr_at(s - 1) of the run's schedule."""
    cfg = yaml.safe_load((plain / "config.yaml").read_text())
    kw = dict(peak_lr=cfg["lr"], total_steps=cfg["steps"], warmup_steps=cfg["steps"] // 30,
              final_lr_ratio=cfg["final_lr_ratio"])
    steps = records(plain, "step")
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5]
    for r in steps:
        assert r["lr"] == pytest.approx(lr_at(r["step"] - 1, **kw), rel=1e-12), r
    assert len({r["lr"] for r in steps}) == 5  # (the case tells the steps apart: the rate changes every step)


def test_every_parameter_group_steps_at_the_scheduled_rate(plain):
    """Matrices (decayed) and norm scales (not decayed) are two AdamW groups: both get each step's rate. The last
    checkpoint's optimizer holds the rate of the last update, lr_at(steps - 1), in both, and its weight decays."""
    cfg = yaml.safe_load((plain / "config.yaml").read_text())
    want = lr_at(cfg["steps"] - 1, peak_lr=cfg["lr"], total_steps=cfg["steps"], warmup_steps=cfg["steps"] // 30,
                 final_lr_ratio=cfg["final_lr_ratio"])
    assert want != pytest.approx(cfg["lr"])
    groups = load_optimizer(latest_checkpoint(plain), "optimizer")["param_groups"]
    assert [g["lr"] for g in groups] == pytest.approx([want, want], rel=1e-12)
    assert [g["weight_decay"] for g in groups] == [cfg["weight_decay"], 0.0]


def test_tokens_per_second_counts_every_token_of_the_steps_since_the_last_record(plain):
    """tokens/s = batch x seq_len tokens per step (whole rows, the first token too), over the seconds since the
    previous step record: with a clock that advances 1 s between records and a record every step, 4 x 16 each."""
    reader = open_store(yaml.safe_load((plain / "config.yaml").read_text())["store"])
    want = 4 * reader.seq_len
    assert [r["tokens_per_s"] for r in records(plain, "step")] == pytest.approx([want] * 5, rel=1e-12)


def test_tokens_per_second_of_a_sparser_log_spans_its_steps(tmp_path, store_url, student_dir):
    """--log-every 2: each record covers the 2 steps since the previous one (one clock second); the last step off
    the grid covers 1."""
    out = run_train(tmp_path / "run", store_url, student_dir, steps=5, interval=4, log_every=2)
    got = [(r["step"], r["tokens_per_s"]) for r in records(out, "step")]
    assert got == [(2, pytest.approx(128.0)), (4, pytest.approx(128.0)), (5, pytest.approx(64.0))]


def test_grad_accumulation_and_grad_clip_0_train_the_same_run(plain, accum_noclip):
    """Two half-batches per step give the full batch's loss, its parts and its gradient norm (the loss is divided by
    --grad-accum before backward, the logged parts averaged); --grad-clip 0 does not clip (it must not clip to 0)."""
    a, b = records(plain, "step"), records(accum_noclip, "step")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4, 5]
    for ra, rb in zip(a, b):
        for key in ("loss", "ce", "kl", "grad_norm", "lr"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-5), (ra["step"], key)
    assert a[0]["grad_norm"] > 1.0  # a clip to 1 would have changed the run: the bound matters here


def test_the_final_record_carries_the_last_intervals_weights_and_factor(plain):
    """After the last step (5, one step into interval 1): interval steps // K, the weights sampled from in the last
    interval and its factor."""
    intervals, (final,) = records(plain, "interval"), records(plain, "final")
    assert [(r["step"], r["interval"]) for r in intervals] == [(0, 0), (4, 1)]
    assert (final["step"], final["interval"]) == (5, 1)
    assert final["weights"] == intervals[-1]["weights"] and final["factor"] == intervals[-1]["factor"]


@pytest.fixture(scope="module")
def capped(tmp_path_factory, store_url, student_dir):
    """The 12-step run of test_cap under a tight --max-epochs-per-domain: later intervals' weights are capped."""
    return run_train(tmp_path_factory.mktemp("loop") / "capped", store_url, student_dir, max_epochs_per_domain=1.1)


def test_the_final_record_of_a_capped_interval_carries_its_capped_weights(capped):
    """The last interval samples from capped weights, which differ from its factor; the final record carries both
    as that interval's record has them."""
    last, (final,) = records(capped, "interval")[-1], records(capped, "final")
    assert any(last["capped"]) and last["weights"] != pytest.approx(last["factor"])
    assert final["weights"] == last["weights"] and final["factor"] == last["factor"]


def test_a_capped_run_draws_its_rows_from_the_capped_weights(capped):
    """The rows each record counts are the rows the sampler draws from the logged (capped) weights, replayed step
    by step, not from the uncapped factor."""
    from .test_train_e2e import assert_rows_replay

    recs = records(capped, "interval") + records(capped, "final")
    assert any(r["weights"] != pytest.approx(r["factor"]) for r in recs[1:-1])
    assert_rows_replay(recs, batch_size=4, rows_per_interval=16)


def test_a_capped_runs_checkpoint_holds_the_capped_weights(capped):
    """What a resume continues from: the checkpoint's weights are the capped ones sampled from, its factor the
    uncapped r_t, and its history records each evaluation's capped weights (what the repeats rule reads)."""
    state = json.loads((latest_checkpoint(capped) / "state.json").read_text())
    intervals = records(capped, "interval")
    assert state["weights"] == pytest.approx(intervals[-1]["weights"], rel=1e-12)
    assert state["factor"] == pytest.approx(intervals[-1]["factor"], rel=1e-12)
    sampled = [h for h in state["history"] if h["weights"] is not None]
    assert [h["step"] for h in sampled] == [r["step"] for r in intervals]
    for h, r in zip(sampled, intervals):
        assert h["weights"] == pytest.approx(r["weights"], rel=1e-12), h["step"]


def test_a_batch_that_the_ranks_cannot_split_into_micro_batches_is_refused(tmp_path, store_url, student_dir,
                                                                           monkeypatch):
    """--batch-size 4 --grad-accum 4 on 2 ranks: each micro-batch would be half a row. Refused by rank 0 among the
    first checks, before the store is opened (here it does not exist: a later refusal would name it) and before
    the process group (torchrun's variables are set here; no peer is started)."""
    for k, v in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2",
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(k, v)
    res = CliRunner().invoke(cli, train_args(str(tmp_path / "no-store"), student_dir, tmp_path / "run", grad_accum=4,
                                             **RUN))
    assert res.exit_code != 0
    assert "--batch-size 4 must be divisible by world_size x --grad-accum = 2 x 4" in res.output, res.output


def test_a_student_whose_held_out_perplexity_overflows_before_training_is_refused(tmp_path, store_url, student_dir):
    """A student whose logits are 1e4 times too large has a finite loss but a held-out perplexity past the float
    range (inf): the first evaluation ends the run naming the domains, before any training, as the student's fault
    (no learning rate made it, so no advice to lower one)."""
    model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight.mul_(1e4)  # (tied: the embeddings too; the final norm undoes that side)
    model.save_pretrained(tmp_path / "hot")
    AutoTokenizer.from_pretrained(student_dir).save_pretrained(tmp_path / "hot")
    res = CliRunner().invoke(cli, train_args(store_url, tmp_path / "hot", tmp_path / "run", **RUN))
    assert res.exit_code != 0
    msg = res.output
    assert "held-out perplexity alpha inf" in msg and "before any training step" in msg, msg
    assert "diverged" not in msg and "--lr" not in msg, msg
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# -- evaluate.py


@pytest.fixture(scope="module")
def student(student_dir):
    return AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)


def test_a_heldout_limit_above_the_rows_scores_every_row(student, store_url):
    """--heldout-rows larger than a domain's held-out split: all of its rows, for student and teacher alike."""
    reader = open_store(store_url)
    n = reader.num_rows("alpha", spec.SPLIT_HELDOUT)
    got = evaluate(student, reader, ["alpha"], vocab_size=reader.vocab_size, heldout_rows=n + 5)
    nll, tokens = reference(student, reader, "alpha", n)
    assert got["tokens"] == [tokens] and got["nll"][0] == pytest.approx(nll, rel=1e-6)
    assert teacher_heldout_ppl(reader, ["alpha"], n + 5) == pytest.approx(teacher_heldout_ppl(reader, ["alpha"], None))


def test_a_domain_with_no_heldout_rows_to_score_is_refused(student, store_url):
    reader = open_store(store_url)
    with pytest.raises(ValueError, match="domain 'beta' has no held-out rows"):
        evaluate(student, reader, ["beta"], vocab_size=reader.vocab_size, heldout_rows=0)


def test_evaluation_runs_under_the_autocast_it_is_given(student, store_url):
    """autocast_dtype (bf16 on CUDA) scores under torch.autocast of that dtype: on the CPU its NLL is the bf16
    forward's, not the fp32 one's."""
    reader = open_store(store_url)
    V = reader.vocab_size
    got = evaluate(student, reader, ["gamma"], vocab_size=V, heldout_rows=2, autocast_dtype=torch.bfloat16)
    tokens = torch.from_numpy(reader.read_rows("gamma", spec.SPLIT_HELDOUT, np.arange(2)).tokens.astype(np.int64))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = student(input_ids=tokens).logits
    logits = logits[:, :-1, :V].double()
    logp = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    want = -float(logp.gather(-1, tokens[:, 1:, None]).mean())
    fp32, _ = reference(student, reader, "gamma", 2)
    assert got["nll"][0] == pytest.approx(want, rel=1e-8)
    assert abs(got["nll"][0] - fp32) > 1e-5  # (bf16 is another forward: 7e-5 off here, the bf16 match 4e-9)
    assert math.isfinite(got["ppl"][0])


# -- summary.py: the numbers report, compare and TensorBoard show


def test_the_natural_mixture_keeps_an_empty_domain_and_refuses_no_rows():
    assert natural_mixture([3, 0, 1]) == [0.75, 0.0, 0.25]  # a domain without training rows weighs 0
    for bad in ([0, 0], [2, -1, 3]):
        with pytest.raises(ValueError, match="non-negative with a positive sum"):
            natural_mixture(bad)


def test_summaries_refuse_a_zero_ratio_and_rows_of_another_length():
    with pytest.raises(ValueError, match="finite and > 0"):
        summarize([1.0, 0.0])
    with pytest.raises(ValueError, match="3 train_rows for 2 ratios"):
        summarize([1.0, 2.0], [1, 2, 3])
    got = summarize([1.5, 2.0, 4.0], [1, 1, 2])
    assert got == pytest.approx({"mean": 2.5, "natural_mean": 0.25 * 1.5 + 0.25 * 2.0 + 0.5 * 4.0,
                                 "geo_mean": 12.0 ** (1 / 3), "worst": 4.0}, rel=1e-12)


def test_the_deviation_over_runs_is_the_sample_one():
    """Over seeds: the sample standard deviation (ddof 1), sqrt(sum (x - mean)^2 / (n - 1))."""
    xs = [1.0, 2.0, 4.0]
    m, sd = mean_sd(xs)
    assert m == pytest.approx(7 / 3) and sd == pytest.approx(math.sqrt(sum((x - 7 / 3) ** 2 for x in xs) / 2))
    assert mean_sd([1.25]) == (1.25, None)


def test_a_ratio_that_rounds_to_a_thousand_is_grouped():
    assert format_ratio(1000.0) == "1,000" and format_ratio(999.9996) == "1,000"
    assert format_ratio(999.9994) == "999.999"


# -- sinks.py: every documented tag, the layout, flushing and closing


INTERVAL = {"event": "interval", "step": 4, "interval": 1, "domains": ["a", "b"], "ratio": [1.5, 2.0],
            "weights": [0.4, 0.6], "factor": [0.45, 0.55], "ppl_student": [30.0, 40.0], "ppl_teacher": [20.0, 20.0],
            "cap": [0.7, 0.9], "nll_student": [3.4, 3.7]}


def test_scalars_carry_every_documented_tag():
    """Step records: the six train/ tags (grad_norm too); interval/final records: ratio, weights, factor,
    ppl_student and cap per domain, and the summaries; natural_mean only where the record has train_rows."""
    step = {"event": "step", "step": 3, "loss": 2.0, "ce": 1.5, "kl": 2.5, "lr": 1e-3, "grad_norm": 0.5,
            "tokens_per_s": 640.0}
    assert [t for t, _ in sinks.scalars(step)] == [f"train/{k}" for k in
                                                    ("loss", "ce", "kl", "lr", "grad_norm", "tokens_per_s")]
    got = dict(sinks.scalars(INTERVAL))
    assert {k: got[k] for k in ("factor/a", "factor/b", "ppl_student/a", "ppl_student/b", "cap/b")} == {
        "factor/a": 0.45, "factor/b": 0.55, "ppl_student/a": 30.0, "ppl_student/b": 40.0, "cap/b": 0.9}
    assert "summary/natural_mean" not in got and got["summary/worst"] == 2.0  # (no train_rows: no natural mixture)
    assert not any(t.startswith(("ppl_teacher/", "nll_student/")) for t in got)
    assert dict(sinks.scalars({**INTERVAL, "event": "final"})) == got


def test_the_custom_scalars_charts_draw_the_tags_they_name():
    import re

    tags = [t for t, _ in sinks.scalars({**INTERVAL, "train_rows": [3, 1]})]
    charts = {title: spec[1][0] for title, spec in sinks.LAYOUT["DDK"].items()}
    for prefix in ("ratio/", "weights/", "summary/"):
        (pattern,) = [p for p in charts.values() if p.startswith(prefix[:-1])]
        assert [t for t in tags if re.fullmatch(pattern, t)] == [t for t in tags if t.startswith(prefix)], prefix


def _writer_threads() -> int:
    """Live event-file writer threads (tensorboard starts one per open writer; close ends it)."""
    import threading

    return sum(type(t).__name__ == "_AsyncWriterThread" and t.is_alive() for t in threading.enumerate())


def test_an_interval_record_is_readable_at_once_and_a_final_record_closes_the_files(tmp_path):
    """Interval records are flushed when written (not 10 s later); the final record closes the writer (its thread
    ends)."""
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    rundir.start_metrics(tmp_path)
    before = _writer_threads()
    sink = sinks.TensorBoardSink(tmp_path)
    rundir.append_record(tmp_path, INTERVAL, sink)

    def points():
        acc = ea.EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
        acc.Reload()
        return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}

    assert points()["factor/b"] == [(4, pytest.approx(0.55))]
    assert _writer_threads() == before + 1
    rundir.append_record(tmp_path, {**INTERVAL, "event": "final", "step": 6}, sink)
    assert points()["ratio/a"] == [(4, 1.5), (6, 1.5)]
    assert _writer_threads() == before
