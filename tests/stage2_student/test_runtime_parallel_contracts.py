"""Properties a mutation campaign found unchecked in runtime.py and parallel.py: the activation checkpointing it asks
for (non-reentrant), torchrun's environment read as documented, the GPU each rank picks, the decoder layers found in
other model layouts, and FSDP2 applied per layer with a full state dict that saves tied weights once. Real tiny
`transformers` models throughout; the FSDP cases run in a one-rank gloo process group of this process."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM

from ddk_testkit.processes import free_port
from stage2_student import parallel, runtime
from stage2_student.parallel import DistEnv, decoder_layers, dist_env


def test_activation_checkpointing_is_non_reentrant(student_dir):
    """The docstring's promise (works under DDP, FSDP2 and torch.compile): every checkpointed module recomputes
    through torch.utils.checkpoint with use_reentrant=False."""
    model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    runtime.enable_activation_checkpointing(model)
    funcs = [m._gradient_checkpointing_func for m in model.modules() if getattr(m, "gradient_checkpointing", False)]
    assert funcs and all(f.keywords == {"use_reentrant": False} for f in funcs)


def test_training_with_activation_checkpointing_checkpoints_the_students_layers(tmp_path, store_url, student_dir,
                                                                              monkeypatch):
    """--activation-checkpointing reaches the student train() loads (the loss is the same either way, so only the
    model shows it): the student it trained has gradient checkpointing on."""
    from click.testing import CliRunner

    from ddk_testkit.commands import train_args
    from stage2_student import train as train_module
    from stage2_student.cli import cli

    loaded, real = [], train_module.load_student

    def keep(*args, **kwargs):  # the real load_student; its model is kept to look at after the run
        loaded.append(real(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(train_module, "load_student", keep)
    res = CliRunner().invoke(cli, train_args(store_url, student_dir, tmp_path / "run", steps=2, interval=1,
                                             activation_checkpointing=True))
    assert res.exit_code == 0, res.output
    (model, _), = loaded
    assert model.is_gradient_checkpointing


def test_a_compiled_forward_counts_as_compiled_until_a_call_fails():
    """Wrapping succeeded: compiled (before any call too); the first call that fails to compile makes it eager."""
    model = torch.nn.Linear(2, 2)

    def broken_backend(gm, example_inputs):
        raise RuntimeError("no C compiler")

    fwd = runtime.CompiledForward(model, backend=broken_backend, warn=lambda line: None)
    assert fwd.is_compiled
    fwd(torch.ones(1, 2))
    assert not fwd.is_compiled


# -- parallel.py: torchrun's environment, the device of each rank

BASE = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def test_the_ranks_on_a_host_default_to_the_world_size():
    """Without LOCAL_WORLD_SIZE (an older launcher), every rank is taken to be on this host; LOCAL_RANK is read
    apart from RANK (rank 5 of 8 is local rank 1 of 4 on the second of two hosts)."""
    assert dist_env({**BASE, "RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "2"}) == DistEnv(2, 4, 2, 4)
    assert dist_env({**BASE, "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1",
                     "LOCAL_WORLD_SIZE": "4"}) == DistEnv(5, 8, 1, 4)


def test_each_rank_takes_the_gpu_of_its_local_rank(monkeypatch):
    """Rank 5 of 8, local rank 1 of 4 on a host with 4 GPUs: cuda:1 (its global rank names no GPU of the host).
    (torch is told it sees 4 GPUs; choosing runs no CUDA code.)"""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert parallel.pick_device("auto", DistEnv(5, 8, 1, 4)) == torch.device("cuda", 1)
    assert parallel.pick_device("cpu", DistEnv(5, 8, 1, 4)) == torch.device("cpu")


# -- decoder layers of other layouts


def tiny(config_cls, **kw):
    return AutoModelForCausalLM.from_config(config_cls(vocab_size=64, **kw))


def test_decoder_layers_are_found_in_gpt2_and_opt_layouts():
    """GPT-2 keeps its blocks in transformer.h, OPT in model.decoder.layers: FSDP units and activation checkpointing
    need them found; a model without blocks has none."""
    from transformers import GPT2Config, OPTConfig

    gpt2 = tiny(GPT2Config, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    assert decoder_layers(gpt2) == list(gpt2.transformer.h) and len(decoder_layers(gpt2)) == 2
    opt = tiny(OPTConfig, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, ffn_dim=64,
               word_embed_proj_dim=32, max_position_embeddings=64)
    assert decoder_layers(opt) == list(opt.model.decoder.layers) and len(decoder_layers(opt)) == 3
    assert decoder_layers(torch.nn.Linear(2, 2)) == []


# -- FSDP2 in a one-rank process group


@pytest.fixture()
def one_rank_group():
    assert not dist.is_initialized()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_fsdp_shards_every_decoder_layer_and_the_root(student_dir, one_rank_group):
    from torch.distributed.fsdp import FSDPModule

    model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    parallel.shard_fsdp(model, torch.device("cpu"))
    assert isinstance(model, FSDPModule)
    assert all(isinstance(layer, FSDPModule) for layer in model.model.layers)


def test_the_full_state_dict_is_the_unsharded_models_with_tied_weights_once(student_dir, one_rank_group):
    """What save_pretrained writes for an FSDP run: every tensor of the model, lm_head.weight (tied to the
    embeddings) left out as save_pretrained leaves it out, with the values of the unsharded model."""
    plain = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    parallel.shard_fsdp(model, torch.device("cpu"))
    full = parallel.full_state_dict(model)
    want = plain.state_dict()
    assert plain.lm_head.weight is plain.model.embed_tokens.weight
    assert set(full) == set(want) - {"lm_head.weight"}
    for k, v in full.items():
        assert torch.equal(v, want[k]), k
