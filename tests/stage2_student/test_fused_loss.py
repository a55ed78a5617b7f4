"""The fused linear top-k KD loss equals the reference path (float64, value and both gradients); the student wiring
picks it for Llama-shaped students and falls back, with one warning, for others."""

from __future__ import annotations

import warnings

import pytest
import torch

from stage2_student.fused_loss import fused_distill_loss
from stage2_student.loss_step import probe_head, student_loss
from stage2_student.losses import distill_loss

from .test_losses import confident_case, formula_loss

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad:UserWarning")


def linear_case(B=3, T=7, H=6, V=23, K=5, pad=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g, dtype=dtype).requires_grad_(True)
    weight = torch.randn(V + pad, H, generator=g, dtype=dtype).requires_grad_(True)
    bias = torch.randn(V + pad, generator=g, dtype=dtype).requires_grad_(True)
    lp, ids = torch.log_softmax(torch.randn(B, T - 1, V, generator=g) * 2, -1).topk(K, -1)
    targets = torch.randint(0, V, (B, T - 1), generator=g)
    mask = torch.rand(B, T - 1, generator=g) > 0.3
    return hidden, weight, bias, targets, ids, lp, mask


def grads_of(loss, *xs):
    loss.backward()
    out = [x.grad.clone() for x in xs]
    for x in xs:
        x.grad = None
    return out


@pytest.mark.parametrize("chunk", [1, 5, 18, 10_000])
@pytest.mark.parametrize("tail,T,t2", [("bucket", 1.0, False), ("bucket", 0.5, False), ("bucket", 2.0, True),
                                       ("renorm", 1.0, False), ("renorm", 2.0, False)])
def test_equals_reference_in_float64(tail, T, t2, chunk):
    h, W, _, targets, ids, lp, mask = linear_case()
    kw = dict(vocab_size=23, gamma=0.7, temperature=T, tail=tail, t2_scale=t2)
    out = fused_distill_loss(h, W, targets, ids, lp, mask, chunk_size=chunk, **kw)
    g_fused = grads_of(2.5 * out.total, h, W)  # a non-unit upstream gradient, as under gradient accumulation
    ref = distill_loss(h @ W.T, targets, ids, lp, mask, **kw)  # the logits are sliced to V = 23 there
    g_ref = grads_of(2.5 * ref.total, h, W)
    assert out.total.dtype == torch.float64
    for a, b in zip(out, ref):
        assert float(a) == pytest.approx(float(b), rel=1e-12, abs=1e-14)
    for a, b in zip(g_fused, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    formula = formula_loss(h @ W.T, targets, ids, lp, mask, V=23, gamma=0.7, T=T, tail=tail, t2_scale=t2)
    assert float(out.total) == pytest.approx(float(formula), rel=1e-12)  # (and the definition, not only the sibling)
    for a, b in zip(g_fused, grads_of(2.5 * formula, h, W)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    assert torch.all(g_fused[1][23:] == 0)  # padded vocabulary rows get no gradient
    assert torch.all(g_fused[0][:, -1] == 0)  # the last position predicts nothing


def test_bias_and_logit_scale():
    h, W, b, targets, ids, lp, mask = linear_case()
    out = fused_distill_loss(h, W, targets, ids, lp, mask, bias=b, logit_scale=0.25, vocab_size=23, gamma=0.3,
                             chunk_size=4)
    g_fused = grads_of(out.total, h, W, b)
    ref = distill_loss(0.25 * (h @ W.T + b), targets, ids, lp, mask, vocab_size=23, gamma=0.3)
    g_ref = grads_of(ref.total, h, W, b)
    assert float(out.total) == pytest.approx(float(ref.total), rel=1e-12)
    for a, c in zip(g_fused, g_ref):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-13)
    # and against the loss written from its definition (bias and scale are checked nowhere else)
    formula = formula_loss(0.25 * (h @ W.T + b), targets, ids, lp, mask, V=23, gamma=0.3, T=1.0, tail="bucket")
    g_formula = grads_of(formula, h, W, b)
    assert float(out.total) == pytest.approx(float(formula), rel=1e-12)
    for a, c in zip(g_fused, g_formula):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("tail", ["bucket", "renorm"])
@pytest.mark.parametrize("student_tail", [1e-3, 1e-6, 1e-9, 1e-12])
def test_fp32_tiny_tail_matches_float64_formula(student_tail, tail):
    """With W = identity the hidden states are the logits: the fused fp32 path against the formula at tiny tails."""
    logits64, targets, ids, lp, mask = confident_case(student_tail, 2.0, V=120)
    h = logits64.float().requires_grad_(True)
    W = torch.eye(120).requires_grad_(True)
    out = fused_distill_loss(h, W, targets, ids, lp, mask, gamma=0.5, temperature=2.0, tail=tail, chunk_size=3)
    out.total.backward()
    ref_h = h.detach().double().requires_grad_(True)
    ref = formula_loss(ref_h, targets, ids, lp, mask, V=120, gamma=0.5, T=2.0, tail=tail)
    ref.backward()
    assert float(out.total) == pytest.approx(float(ref), rel=1e-5)
    torch.testing.assert_close(h.grad.double(), ref_h.grad, rtol=1e-4, atol=1e-5 * float(ref_h.grad.abs().max()))


def test_all_masked_and_no_grad():
    h, W, _, targets, ids, lp, mask = linear_case()
    out = fused_distill_loss(h, W, targets, ids, lp, torch.zeros_like(mask), vocab_size=23)
    assert float(out.total) == 0.0 and float(out.kl) == 0.0
    gh, gw = grads_of(out.total, h, W)
    assert torch.all(gh == 0) and torch.all(gw == 0)
    with torch.no_grad():
        out = fused_distill_loss(h, W, targets, ids, lp, mask, vocab_size=23)
    ref = distill_loss(h @ W.T, targets, ids, lp, mask, vocab_size=23)
    assert not out.total.requires_grad and float(out.total) == pytest.approx(float(ref.total), rel=1e-12)


def test_bf16_autocast_matmuls_stay_close():
    h, W, _, targets, ids, lp, mask = linear_case(H=32, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fused_distill_loss(h, W, targets, ids, lp, mask, vocab_size=23, chunk_size=5)
    g_fused = grads_of(out.total, h, W)
    assert W.dtype == torch.float32 and out.total.dtype == torch.float32
    ref = distill_loss(h @ W.T, targets, ids, lp, mask, vocab_size=23)
    g_ref = grads_of(ref.total, h, W)
    assert float(out.total) == pytest.approx(float(ref.total), rel=2e-2)
    for a, b in zip(g_fused, g_ref):
        assert float((a - b).norm() / b.norm()) < 3e-2


def test_torch_compile_traces_the_whole_loss():
    """fullgraph=True: no graph break anywhere in the fused loss (aot_eager keeps the test fast on CPU)."""
    h, W, _, targets, ids, lp, mask = linear_case(dtype=torch.float32)

    def loss(h, W):
        return fused_distill_loss(h, W, targets, ids, lp, mask, vocab_size=23, gamma=0.5, temperature=2.0,
                                  chunk_size=10).total

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    out = compiled(h, W)
    g_c = grads_of(out, h, W)
    eager = loss(h, W)
    g_e = grads_of(eager, h, W)
    assert float(out) == pytest.approx(float(eager), rel=1e-6)
    for a, b in zip(g_c, g_e):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------------- student wiring
def tiny_model(cls_name="LlamaForCausalLM", vocab=40, pad=8, **extra):
    import transformers

    cfg_cls = getattr(transformers, cls_name.replace("ForCausalLM", "Config"))
    cfg = cfg_cls(vocab_size=vocab + pad, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                  num_attention_heads=1, num_key_value_heads=1, head_dim=64, tie_word_embeddings=True, **extra)
    torch.manual_seed(0)
    return getattr(transformers, cls_name)(cfg).double().train()


def wiring_case(vocab=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (2, 12), generator=g)
    lp, ids = torch.log_softmax(torch.randn(2, 11, vocab, generator=g) * 2, -1).topk(6, -1)
    return tokens, ids, lp


def reference_step(model, tokens, ids, lp, **kw):
    ref = distill_loss(model(input_ids=tokens).logits, tokens[:, 1:], ids, lp, **kw)
    return ref, grads_of(ref.total, *model.parameters())


@pytest.mark.parametrize("cls_name,extra,scale", [("LlamaForCausalLM", {}, 1.0),
                                                  ("GraniteForCausalLM", {"logits_scaling": 4.0}, 0.25)])
def test_student_loss_fuses_llama_shaped_students(cls_name, extra, scale):
    model = tiny_model(cls_name, **extra)  # padded vocabulary: 48 rows, store V = 40
    tokens, ids, lp = wiring_case()
    head = probe_head(model, tokens)
    assert head.fused and head.logit_scale == scale
    kw = dict(vocab_size=40, gamma=0.5, temperature=2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback warning
        out = student_loss(model, model, tokens, ids, lp, chunk_size=7, **kw)
    g = grads_of(out.total, *model.parameters())
    ref, g_ref = reference_step(model, tokens, ids, lp, **kw)
    assert float(out.total) == pytest.approx(float(ref.total), rel=1e-12)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-13)


def rescaled_llama():
    """A real tiny Llama whose forward returns 3x its lm_head logits: a model the fused path must not take."""
    from transformers import LlamaForCausalLM

    class RescaledLlama(LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 3
            return out

    base = tiny_model()
    model = RescaledLlama(base.config).double().train()
    model.load_state_dict(base.state_dict())
    return model


@pytest.mark.parametrize("make", [rescaled_llama,
                                  lambda: tiny_model("Gemma2ForCausalLM", final_logit_softcapping=30.0)])
def test_student_loss_falls_back_with_one_warning(make):
    model = make()
    tokens, ids, lp = wiring_case()
    kw = dict(vocab_size=40, gamma=0.5)
    assert not probe_head(model, tokens).fused
    with pytest.warns(RuntimeWarning, match="unfused loss") as rec:
        out = student_loss(model, model, tokens, ids, lp, **kw)
    g = grads_of(out.total, *model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        student_loss(model, model, tokens, ids, lp, **kw)  # decided once: no second warning
    assert len([r for r in rec if "unfused loss" in str(r.message)]) == 1
    ref, g_ref = reference_step(model, tokens, ids, lp, **kw)
    assert float(out.total) == pytest.approx(float(ref.total), rel=1e-12)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-13)


def test_a_bf16_head_accumulates_its_weight_gradient_in_fp32():
    # 1,024 positions, one per chunk: accumulating in bf16 gives a 3% error, fp32 accumulation 0.3% (the rest is
    # the bf16 inputs' own rounding)
    g = torch.Generator().manual_seed(0)
    B, P, H, V, K = 4, 256, 16, 64, 4
    h64, W64 = torch.randn(B, P, H, generator=g, dtype=torch.float64), torch.randn(V, H, generator=g) * 0.3
    targets = torch.randint(0, V, (B, P), generator=g)
    ids = torch.stack([torch.randperm(V, generator=g)[:K] for _ in range(B * P)]).view(B, P, K)
    lp = torch.log_softmax(torch.randn(B, P, V, generator=g, dtype=torch.float64), -1).gather(-1, ids).float()

    def weight_grad(dtype):
        W = W64.to(dtype).requires_grad_(True)
        fused_distill_loss(h64.to(dtype), W, targets, ids, lp, chunk_size=1).total.backward()
        return W.grad.double()

    ref = weight_grad(torch.float64)
    assert float((weight_grad(torch.bfloat16) - ref).norm() / ref.norm()) < 1e-2


def test_bf16_hidden_states_with_an_fp32_head_are_multiplied_in_fp32():
    h, W, _, targets, ids, lp, mask = linear_case(dtype=torch.float32)
    hb = h.detach().bfloat16()
    out = fused_distill_loss(hb, W.detach(), targets, ids, lp, mask, vocab_size=23, gamma=0.7)
    ref = distill_loss(hb.float() @ W.detach().T, targets, ids, lp, mask, vocab_size=23, gamma=0.7)
    assert float(out.total) == pytest.approx(float(ref.total), rel=1e-5)
