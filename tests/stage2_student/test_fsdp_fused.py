"""Under FSDP2 the fused loss reads the root's lm_head weight whole: after the root's forward FSDP keeps the root's
parameters unsharded until its backward, so ``student_loss`` takes the fused path and its loss and gradients equal
the unsharded model's. A real process group (gloo, in a fresh interpreter) and a real transformers Llama, tied and
untied lm_head; the two-rank end-to-end run is tests/stage2_student/test_fsdp.py."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from ddk_testkit.processes import REPO, child_env

_SCRIPT = textwrap.dedent("""
    import copy, json, sys, warnings
    import torch, torch.distributed as dist
    from transformers import LlamaConfig, LlamaForCausalLM
    from stage2_student.loss_step import _HEADS, student_loss
    from stage2_student.parallel import full_tensor, shard_fsdp

    dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
    tied = sys.argv[2] == "tied"
    cfg = LlamaConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=tied)
    torch.manual_seed(0)
    plain = LlamaForCausalLM(cfg).double().train()
    sharded = shard_fsdp(copy.deepcopy(plain), torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    out = {"steps": []}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(2):  # the second step runs after the root resharded in its first backward
            tokens = torch.randint(0, 40, (2, 12), generator=g)
            lp, ids = torch.log_softmax(torch.randn(2, 11, 40, generator=g, dtype=torch.float64) * 2, -1).topk(6, -1)
            kw = dict(vocab_size=40, gamma=0.5, temperature=2.0, chunk_size=7)
            losses = []
            for model in (plain, sharded):
                model.zero_grad(set_to_none=True)
                parts = student_loss(model, model, tokens, ids, lp, **kw)
                (3.0 * parts.total).backward()
                losses.append(float(parts.total))
            grads = {n: float((full_tensor(q.grad) - p.grad).abs().max() / p.grad.abs().max())
                     for (n, p), (_, q) in zip(plain.named_parameters(), sharded.named_parameters())}
            out["steps"].append({"loss": losses, "worst_grad_rel": max(grads.values()),
                                 "lm_head_grad_rel": grads["lm_head.weight" if not tied else "model.embed_tokens.weight"]})
    out["fused"] = [_HEADS[plain].fused, _HEADS[sharded].fused]
    out["reason"] = _HEADS[sharded].reason
    out["weight_sharded_between_steps"] = type(sharded.get_output_embeddings().weight).__name__
    out["warnings"] = [str(w.message) for w in caught if "unfused" in str(w.message)]
    dist.destroy_process_group()
    print(json.dumps(out))
""")


@pytest.mark.parametrize("lm_head", ["tied", "untied"])
def test_fsdp_root_takes_the_fused_loss_and_matches_the_unsharded_model(tmp_path, lm_head):
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path / "pg"), lm_head], cwd=REPO, env=child_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["fused"] == [True, True], out["reason"]
    assert out["warnings"] == []
    assert out["weight_sharded_between_steps"] == "DTensor"  # FSDP really sharded it: the fused path read it whole
    for step in out["steps"]:
        plain, sharded = step["loss"]
        assert sharded == pytest.approx(plain, rel=1e-12)
        assert step["worst_grad_rel"] < 1e-10, step
        assert step["lm_head_grad_rel"] < 1e-10, step
