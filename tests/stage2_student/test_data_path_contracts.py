"""Properties a mutation campaign found unchecked in stage 2's data path (data.py, device_decode.py, schedule.py,
loss_step.py, readpool.py, resume.py), each checked against values computed from the definition (the stored arrays,
the loss formulas in float64, hand-counted indices)."""

from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import pytest
import torch

from ddk_store import spec
from ddk_store.testing import make_tiny_store
from stage2_student.data import read_batch
from stage2_student.loss_step import probe_head, student_loss
from stage2_student.readpool import ReadPool
from stage2_student.schedule import lr_at

from .test_fused_loss import rescaled_llama, tiny_model, wiring_case
from .test_losses import formula_loss
from .test_tail_loss import case as tail_case
from .test_tail_loss import reference_loss as tail_reference_loss

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad:UserWarning")

DOMAINS = ("alpha", "beta", "gamma")
PAIRS = np.array([[2, 1], [0, 3], [2, 5], [1, 0]])  # several domains, out of order


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The default encoding (exact tail), 3 domains of 6 rows, T = 16, K = 8."""
    return make_tiny_store(str(tmp_path_factory.mktemp("mut") / "store"), domains=DOMAINS, train_rows=6,
                           heldout_rows=2, seq_len=16, top_k=8, vocab_size=64)


def stored(store, pairs):
    """Tokens and tail of ``pairs`` straight from the stored arrays, one row at a time."""
    rows = [store.read_stored_rows(DOMAINS[d], "train", [r]) for d, r in pairs]
    return (np.concatenate([r.tokens for r in rows]).astype(np.int64),
            np.concatenate([r.topk[spec.ARR_TOPK_TAIL] for r in rows]).astype(np.float32))


# -- data.py / device_decode.py: the Batch contract


@pytest.mark.parametrize("decode", ["host", "device"])
def test_a_batch_moved_to_the_training_device_keeps_the_teachers_tail(store, decode):
    """``Batch.to`` (what the training loop calls) carries topk_log_tail, the stored tail of each pair's row."""
    _, tail = stored(store, PAIRS)
    moved = read_batch(store, DOMAINS, PAIRS, decode=decode).to("cpu")
    assert moved.topk_log_tail is not None
    assert moved.topk_log_tail.dtype == torch.float32
    np.testing.assert_array_equal(moved.topk_log_tail.numpy(), tail)


@pytest.mark.parametrize("decode", ["host", "device"])
def test_a_batch_has_the_documented_fields_and_dtypes(store, decode):
    """tokens int64 (b, T) as stored, domains the pairs' domain indices, ids int32, log-probs and tail float32,
    num_tokens b * T, whichever side decodes."""
    tokens, _ = stored(store, PAIRS)
    b = read_batch(store, DOMAINS, PAIRS, decode=decode)
    assert b.num_tokens == 4 * 16
    b = b.to("cpu")
    assert b.tokens.dtype == torch.int64 and b.tokens.shape == (4, 16)
    np.testing.assert_array_equal(b.tokens.numpy(), tokens)
    assert b.domains.dtype == torch.int64 and b.domains.tolist() == [2, 0, 2, 1]
    assert b.topk_ids.dtype == torch.int32 and b.topk_ids.shape == (4, 15, 8)
    assert b.topk_logprobs.dtype == torch.float32 and b.topk_log_tail.dtype == torch.float32
    assert b.num_tokens == 4 * 16


# -- schedule.py


def test_a_warmup_over_the_whole_run_ends_at_the_final_rate():
    """total_steps == warmup_steps: step total_steps is regime 3 (the final rate), not the start of a cosine."""
    kw = dict(peak_lr=1.0, total_steps=10, warmup_steps=10, final_lr_ratio=0.1)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(10, **kw) == pytest.approx(0.1)
    assert lr_at(11, **kw) == pytest.approx(0.1)


# -- loss_step.py: student_loss passes every loss setting on, on both paths


def fallback_model():
    return rescaled_llama()  # its logits are not lm_head(hidden): the reference path


@pytest.mark.parametrize("make,fused", [(tiny_model, True), (fallback_model, False)])
def test_student_loss_uses_the_teachers_exact_tail(make, fused):
    """With topk_log_tail (the store's exact tail, absent slots included) the loss is the float64 formula's, which
    normalizes the kept entries and that tail together."""
    model = make()
    tokens, _, _ = wiring_case()
    _, _, ids, lp, log_tail = tail_case(seed=4, B=2, T=12, V=40, K=6)
    # stored log-probs are rounded: 1 - their mass is not the exact tail (here 5% off per entry)
    lp = lp + 0.05 * torch.randn(lp.shape, generator=torch.Generator().manual_seed(5), dtype=lp.dtype)
    assert probe_head(model, tokens).fused is fused
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # (the fallback's one warning)
        out = student_loss(model, model, tokens, ids, lp, vocab_size=40, gamma=0.7, topk_log_tail=log_tail)
    with torch.no_grad():
        logits = model(input_ids=tokens).logits[:, :-1, :40]
    want = tail_reference_loss(logits, tokens[:, 1:], ids, lp, log_tail, 0.7)
    assert float(out.total) == pytest.approx(float(want), rel=1e-10)


@pytest.mark.parametrize("tail,t2", [("renorm", False), ("bucket", True)])
@pytest.mark.parametrize("make,fused", [(tiny_model, True), (fallback_model, False)])
def test_student_loss_honours_the_kl_tail_mode_and_the_t2_scale(make, fused, tail, t2):
    model = make()
    tokens, ids, lp = wiring_case()
    assert probe_head(model, tokens).fused is fused
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = student_loss(model, model, tokens, ids, lp, vocab_size=40, gamma=0.5, temperature=2.0, tail=tail,
                           t2_scale=t2)
    with torch.no_grad():
        logits = model(input_ids=tokens).logits
    mask = torch.ones(tokens.shape[0], tokens.shape[1] - 1, dtype=torch.bool)
    want = formula_loss(logits, tokens[:, 1:], ids, lp, mask, V=40, gamma=0.5, T=2.0, tail=tail, t2_scale=t2)
    assert float(out.total) == pytest.approx(float(want), rel=1e-10)


def test_a_cohere_student_takes_the_fused_path_with_its_logit_scale():
    """Cohere multiplies its logits by config.logit_scale: the probe recognizes it and the fused loss is exact."""
    model = tiny_model("CohereForCausalLM", logit_scale=0.25, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    tokens, ids, lp = wiring_case()
    head = probe_head(model, tokens)
    assert head.fused and head.logit_scale == 0.25
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback warning
        out = student_loss(model, model, tokens, ids, lp, vocab_size=40, gamma=0.5, temperature=2.0)
    with torch.no_grad():
        logits = model(input_ids=tokens).logits
    mask = torch.ones(2, 11, dtype=torch.bool)
    want = formula_loss(logits, tokens[:, 1:], ids, lp, mask, V=40, gamma=0.5, T=2.0, tail="bucket")
    assert float(out.total) == pytest.approx(float(want), rel=1e-10)


def test_the_fused_loss_includes_the_lm_head_bias():
    """Phi's lm_head has a bias: the fused path (taken, no warning) adds it, as the model's own logits do."""
    model = tiny_model("PhiForCausalLM", bos_token_id=1, eos_token_id=2, pad_token_id=0)
    with torch.no_grad():
        model.get_output_embeddings().bias.copy_(torch.linspace(-3, 3, 48, dtype=torch.float64))
    tokens, ids, lp = wiring_case()
    assert probe_head(model, tokens).fused
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        out = student_loss(model, model, tokens, ids, lp, vocab_size=40, gamma=0.5)
    with torch.no_grad():
        logits = model(input_ids=tokens).logits
    mask = torch.ones(2, 11, dtype=torch.bool)
    want = formula_loss(logits, tokens[:, 1:], ids, lp, mask, V=40, gamma=0.5, T=1.0, tail="bucket")
    assert float(out.total) == pytest.approx(float(want), rel=1e-10)


@pytest.mark.parametrize("training", [True, False])
def test_the_head_probe_leaves_the_student_in_its_mode(training):
    """The probe's forward runs in eval mode; the student goes back to the mode it was in (dropout stays on)."""
    model = tiny_model().train(training)
    tokens, ids, lp = wiring_case()
    student_loss(model, model, tokens, ids, lp, vocab_size=40, gamma=0.5)
    assert model.training is training
    assert all(m.training is training for m in model.modules())


# -- readpool.py


@pytest.mark.parametrize("workers,inflight", [(1, 0), (0, 1), (-1, 4)])
def test_a_pool_without_a_worker_or_a_slot_is_refused(workers, inflight):
    """inflight 0 would leave every worker waiting for a slot and the consumer for a result: refused up front."""
    with pytest.raises(ValueError, match="workers >= 1 and inflight >= 1"):
        ReadPool(lambda i: i, range(3), workers=workers, inflight=inflight)


def test_no_read_starts_after_a_failed_one():
    """One worker, room for 10 reads ahead: item 2 fails, so 3.. are never read, even while the consumer is slow
    to reach the failure."""
    started, lock = [], threading.Lock()

    def read(i):
        with lock:
            started.append(i)
        if i == 2:
            raise OSError("store down")
        return i

    pool = ReadPool(read, range(20), workers=1, inflight=10)
    got = []
    with pytest.raises(OSError, match="store down"):
        for x in pool:
            got.append(x)
            time.sleep(0.3 if x == 0 else 0.0)  # the worker has long failed item 2 when the consumer goes on
    assert got == [0, 1]
    assert pool.join(5)
    assert started == [0, 1, 2]


@pytest.mark.parametrize("finished", ["before close", "after close"])
def test_a_closed_pool_delivers_nothing_more(finished):
    """Item 1 is read ahead (its read finishes before, or after, close()): it is dropped, never handed out."""
    release, started, lock = threading.Event(), [], threading.Lock()

    def read(i):
        with lock:
            started.append(i)
        if i >= (2 if finished == "before close" else 1):
            release.wait(5)
        return i

    pool = ReadPool(read, range(10), workers=2, inflight=4)
    it = iter(pool)
    assert next(it) == 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (len(started) < 3 if finished == "before close" else 1 not in started):
        time.sleep(0.01)
    time.sleep(0.1)  # (item 1's read, when not held, has returned)
    pool.close()
    release.set()
    assert pool.join(5)
    assert list(it) == []


def test_at_exit_an_open_pool_starts_no_more_reads(tmp_path):
    """A process exiting without closing its pool (no owner's ``finally`` ran): the exit handler closes it, so only
    the reads already allowed ahead (4 past the one taken) are ever started (unclosed, its workers read on for the
    whole 5 s exit wait)."""
    import subprocess
    import sys
    import textwrap

    log = tmp_path / "started"
    script = textwrap.dedent(f"""
        import sys, time
        from stage2_student.readpool import ReadPool
        log = open({str(log)!r}, "a")
        def read(i):
            log.write(f"{{i}}\\n"); log.flush()
            time.sleep(0.05)
            return i
        it = iter(ReadPool(read, range(1000), workers=2, inflight=4))
        next(it)
        sys.exit(130)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 130, done.stderr[-2000:]
    started = [int(x) for x in log.read_text().split()]
    assert sorted(started) == list(range(len(started))) and len(started) <= 5  # items 0..4 at most


# -- resume.py: the checks before a resume, on a real finished run


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory, store_url, student_dir):
    """A finished 2-step run trained by one process with --fsdp (nothing to shard over: its checkpoint is whole)."""
    from ddk_testkit.commands import train_argv
    from ddk_testkit.processes import run_cli

    out = tmp_path_factory.mktemp("mutrun") / "run"
    argv = train_argv(store_url, student_dir, out, steps=2, interval=1, batch_size=2, eval_batch_size=2, lr=3e-3,
                      seed=0, device="cpu", no_progress=True, fsdp=True)
    result = run_cli("ddk-student", argv)
    assert result.code == 0, result.output
    return out


@pytest.fixture
def run_copy(fsdp_run, tmp_path):
    """A copy of the run whose config.yaml names the copy."""
    import shutil

    import yaml

    copy = tmp_path / "run"
    shutil.copytree(fsdp_run, copy)
    saved = yaml.safe_load((copy / "config.yaml").read_text())
    (copy / "config.yaml").write_text(yaml.safe_dump({**saved, "out": str(copy)}))
    return copy


def resumed_config(run, **changes):
    from ddk_store import settings
    from stage2_student.config import Stage2Config
    from stage2_student.resume import read_saved

    return settings.build(Stage2Config, {**read_saved(run), "resume": True, **changes})


def test_a_one_process_fsdp_run_resumes_and_a_sharded_mismatch_is_refused(run_copy):
    """--fsdp on one process writes a whole checkpoint: resuming it with the same flags is accepted; asking a
    sharded resume of it (what --fsdp means under torchrun) is refused."""
    from ddk_store.errors import ConfigError
    from stage2_student.checkpoint import latest_checkpoint
    from stage2_student.resume import check_checkpoint_fits, prepare_out_dir

    said = []
    assert prepare_out_dir(resumed_config(run_copy, steps=4), world=1, echo=said.append) is True
    assert said == [f"--resume {run_copy}: continuing from its checkpoint at step 2 of 4"]
    ckpt = latest_checkpoint(run_copy)
    check_checkpoint_fits(run_copy, ckpt, world=1, fsdp=False)
    with pytest.raises(ConfigError, match="was written without --fsdp; resume it without --fsdp"):
        check_checkpoint_fits(run_copy, ckpt, world=1, fsdp=True)


def test_a_store_whose_domains_were_renamed_is_refused(fsdp_run, store_url):
    """Same row counts and teacher figures, another domain list: the sampler state is about other rows."""
    from ddk_store.errors import ConfigError
    from stage2_student.checkpoint import latest_checkpoint, read_state
    from stage2_student.resume import check_same_store

    ckpt = latest_checkpoint(fsdp_run)
    ppl = read_state(ckpt)["ppl_teacher"]
    check_same_store(fsdp_run, ckpt, store_url, domains=list(DOMAINS), num_rows=[16, 16, 16], ppl_teacher=ppl)
    with pytest.raises(ConfigError, match=r"\(domains \['alpha', 'beta', 'gamma'\] then, \['alpha', 'beta', 'delta'\] "
                                          r"now\)"):
        check_same_store(fsdp_run, ckpt, store_url, domains=["alpha", "beta", "delta"], num_rows=[16, 16, 16],
                         ppl_teacher=ppl)


def test_a_run_whose_final_student_is_gone_is_not_finished(run_copy):
    """The last checkpoint at --steps is not enough: without the exported student (config.json) the run is not
    finished, so a resume exports it again instead of saying there is nothing to do."""
    from stage2_student.resume import run_finished

    assert run_finished(run_copy, 2)
    (run_copy / "config.json").unlink()
    assert not run_finished(run_copy, 2)


@pytest.mark.parametrize("keys,is_run", [(("store",), False), (("student",), False), (("store", "student"), True)])
def test_a_config_yaml_makes_a_run_only_when_it_names_a_store_and_a_student(tmp_path, store_url, student_dir, keys,
                                                                            is_run):
    import yaml

    from stage2_student.resume import is_run_dir

    values = {"store": store_url, "student": str(student_dir), "steps": 10}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({k: values[k] for k in (*keys, "steps")}))
    assert is_run_dir(tmp_path) is is_run


@pytest.mark.parametrize("overwrite", [False, True])
def test_replace_run_deletes_only_under_overwrite(run_copy, overwrite):
    from stage2_student.resume import replace_run

    (run_copy / "notes.txt").write_text("mine")
    before = sorted(p.name for p in run_copy.iterdir())
    assert {"config.yaml", "checkpoints", "metrics.jsonl", "config.json"} <= set(before)
    replace_run(resumed_config(run_copy, resume=False, overwrite=overwrite))
    after = sorted(p.name for p in run_copy.iterdir())
    assert after == (["notes.txt"] if overwrite else before)


def test_an_extension_pins_k_and_the_warmup_a_config_left_to_their_defaults(run_copy):
    """A config.yaml without interval/warmup_steps (both default to steps // 30): extending --steps 60 to 120 keeps
    K = 2 and a 2-step warm-up instead of deriving 4 from the new total."""
    import yaml

    from stage2_student.resume import resume_layer

    saved = yaml.safe_load((run_copy / "config.yaml").read_text())
    (run_copy / "config.yaml").write_text(yaml.safe_dump({**saved, "steps": 60, "interval": None,
                                                          "warmup_steps": None}))
    layer = resume_layer({"out": str(run_copy), "resume": True, "steps": 120})
    assert (layer["interval"], layer["warmup_steps"]) == (2, 2)



class _ExitingWorkers(ReadPool):
    def _work(self) -> None:  # exits without reading (a bookkeeping bug, or a thread dying outside its read)
        return


class _DroppingWorkers(ReadPool):
    def _work(self) -> None:  # takes items and goes on without handing them back, staying alive
        while (i := self._take_index()) is not None:
            with self._cond:
                self._reading.discard(i)
                self._cond.notify_all()


@pytest.mark.parametrize("pool_type, words", [
    (_ExitingWorkers, "every worker thread exited before item 0 of 3 was read"),
    (_DroppingWorkers, "a worker took item 0 of 3 and never handed it back"),
])
def test_a_consumer_whose_item_no_worker_will_hand_back_raises_instead_of_waiting_forever(pool_type, words):
    """The faults: every worker exited without reading, or a live worker dropped the item it took. The consumer
    names the item it waited for and raises; the pool is closed."""
    pool = pool_type(lambda i: i, range(3), workers=2, inflight=2)
    done = []

    def consume():
        try:
            list(pool)
        except RuntimeError as e:
            done.append(str(e))

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "the consumer still waits"
    assert len(done) == 1 and words in done[0]
    assert pool.join(5)
