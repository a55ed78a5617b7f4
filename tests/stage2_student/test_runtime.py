"""--compile, --activation-checkpointing, the optimizer and background checkpoints, on a tiny real Llama on CPU."""

from __future__ import annotations

import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from stage2_student import runtime
from stage2_student.checkpoint import CheckpointWriter, latest_checkpoint, list_checkpoints, load_weights
from stage2_student.loss_step import student_loss

CPU = torch.device("cpu")


@pytest.fixture()
def model(student_dir):
    m = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    m.train()
    return m


def batch(model, b=2, t=16, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    V = model.config.vocab_size
    tokens = torch.randint(0, V, (b, t), generator=g)
    ids = torch.randint(0, V, (b, t - 1, k), generator=g)
    lp = torch.log_softmax(torch.randn(b, t - 1, k, generator=g), -1) - 0.1
    return tokens, ids, lp, V


def loss_and_grads(forward, model, data):
    tokens, ids, lp, V = data
    model.zero_grad(set_to_none=True)
    parts = student_loss(forward, model, tokens, ids, lp, vocab_size=V, gamma=0.2)
    parts.total.backward()
    return float(parts.total.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same(a, b, **tol):
    assert a[0] == pytest.approx(b[0], rel=1e-5)
    assert a[1].keys() == b[1].keys()
    for n in a[1]:
        torch.testing.assert_close(a[1][n], b[1][n], **tol)


def test_compile_by_default_on_cuda_only():
    assert runtime.compile_wanted(None, torch.device("cuda", 0)) and not runtime.compile_wanted(None, CPU)
    assert runtime.compile_wanted(True, CPU) and not runtime.compile_wanted(False, torch.device("cuda", 0))


def test_compiled_forward_matches_eager(model):
    data = batch(model)
    eager = loss_and_grads(model, model, data)
    fwd = runtime.compile_forward(model, True, CPU)
    assert isinstance(fwd, runtime.CompiledForward)
    compiled = loss_and_grads(fwd, model, data)
    assert fwd.is_compiled, "torch.compile fell back to eager on this machine"
    assert_same(compiled, eager, atol=1e-5, rtol=1e-4)
    assert fwd.config is model.config  # attributes (DDP's no_sync, say) reach the wrapped module


def test_compile_failure_warns_once_and_runs_eagerly(model):
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no C compiler on this host")

    lines = []
    fwd = runtime.CompiledForward(model, backend=broken_backend, warn=lines.append)
    data = batch(model)
    eager = loss_and_grads(model, model, data)
    first = loss_and_grads(fwd, model, data)
    second = loss_and_grads(fwd, model, data)
    assert not fwd.is_compiled
    assert len(lines) == 1 and "\n" not in lines[0] and "no C compiler" in lines[0]
    assert "continues without it" in lines[0]
    assert_same(first, eager, atol=0, rtol=0)
    assert_same(second, eager, atol=0, rtol=0)


def test_activation_checkpointing_gives_the_same_loss_and_gradients(model, student_dir):
    data = batch(model, seed=1)
    plain = loss_and_grads(model, model, data)
    runtime.enable_activation_checkpointing(model)
    assert model.is_gradient_checkpointing
    ckpt = loss_and_grads(model, model, data)
    assert_same(ckpt, plain, atol=1e-6, rtol=1e-5)


def test_activation_checkpointing_refuses_a_model_without_it():
    with pytest.raises(Exception, match="--activation-checkpointing: student Linear does not support"):
        runtime.enable_activation_checkpointing(torch.nn.Linear(2, 2))


def test_optimizer_groups_and_fused_flag(model):
    opt = runtime.make_optimizer(model, lr=1e-3, weight_decay=0.1, device=CPU)
    assert not opt.defaults["fused"] and opt.defaults["betas"] == (0.9, 0.95)
    decay, no_decay = opt.param_groups
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    fused = runtime.make_optimizer(model, lr=1e-3, weight_decay=0.1, device=torch.device("cuda", 0))
    assert fused.defaults["fused"] is True  # CUDA: one fused kernel per step


def test_background_checkpoint_holds_the_state_of_its_step(model, tmp_path):
    opt = runtime.make_optimizer(model, lr=1e-2, weight_decay=0.0, device=CPU)
    loss_and_grads(model, model, batch(model))
    opt.step()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    writer = CheckpointWriter(tmp_path, keep=2)
    t0 = time.perf_counter()
    path = writer.save(1, model=model, optimizer=opt, state={"note": "x"})
    returned = time.perf_counter() - t0
    with torch.no_grad():  # training goes on while the thread writes: the checkpoint must not see it
        for p in model.parameters():
            p.add_(1.0)
    writer.wait()
    assert returned < 5.0
    assert list_checkpoints(tmp_path) == [path] and not list(path.parent.glob("*.tmp"))
    fresh = model.__class__(model.config)
    load_weights(fresh, path)
    for n, p in fresh.named_parameters():
        torch.testing.assert_close(p, before[n], atol=0, rtol=0)
    for step in (2, 3):
        writer.save(step, model=model, optimizer=opt, state={})
    writer.wait()
    assert [int(p.name[5:]) for p in list_checkpoints(tmp_path)] == [2, 3]  # keep=2, pruned after the commit
    assert latest_checkpoint(tmp_path).name == "step-00000003"


def test_background_checkpoint_error_is_raised_on_the_training_thread(model, tmp_path):
    opt = runtime.make_optimizer(model, lr=1e-2, weight_decay=0.0, device=CPU)
    writer = CheckpointWriter(tmp_path)
    writer.save(0, model=model, optimizer=opt, state={"bad": object()})  # not JSON: the writer thread fails
    with pytest.raises(TypeError, match="not JSON serializable"):
        writer.wait()
    assert latest_checkpoint(tmp_path) is None  # nothing committed
