"""Stage 2's set-up contracts that users hit before or around a training: every bad setting refused in one line
naming its flag (and the values at the edge of each range accepted), the settings a run saves for --resume, which
settings a resume may change, the run directory's lock, its metrics.jsonl records, and a student cut from its teacher.

Everything is real: Stage2Config/EvalConfig as the CLI builds them, the lock in a real $DDK_CACHE, records written and
read through :mod:`stage2_student.rundir`, tiny real Llama teachers built with ``transformers``.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import yaml

from ddk_store.errors import ConfigError, ReportError
from ddk_testkit.models import build_tiny_llama
from stage2_student import rundir
from stage2_student.config import EvalConfig, Stage2Config, write_config
from stage2_student.init_student import PROVENANCE, evenly_spaced_layers, init_student_from_teacher, resolve_layers
from stage2_student.resume import differences

REQUIRED = dict(store="s", student="m", out="o")


# ------------------------------------------------------------------------------------------- settings: ranges ---
@pytest.mark.parametrize("given, fragment", [
    (dict(alpha=1.01), "--alpha must be in [0, 1], got 1.01"),
    (dict(alpha=-0.01), "--alpha must be in [0, 1]"),
    (dict(gamma=-0.1), "--gamma must be >= 0"),
    (dict(temperature=0.0), "--temperature must be > 0, got 0.0"),
    (dict(steps=0), "--steps must be >= 1, got 0"),
    (dict(seed=-1), "--seed must be in [0, 2^63)"),
    (dict(seed=2**63), "--seed must be in [0, 2^63)"),
    (dict(batch_size=0), "--batch-size must be >= 1, got 0"),
    (dict(grad_accum=0), "--grad-accum must be >= 1, got 0"),
    (dict(lr=0.0), "--lr must be > 0, got 0.0"),
    (dict(final_lr_ratio=1.5), "--final-lr-ratio must be in [0, 1], got 1.5"),
    (dict(final_lr_ratio=-0.1), "--final-lr-ratio must be in [0, 1]"),
    (dict(weight_decay=-0.1), "--weight-decay must be >= 0"),
    (dict(grad_clip=-1.0), "--grad-clip must be >= 0 (0 disables)"),
    (dict(eval_batch_size=0), "--eval-batch-size must be >= 1, got 0"),
    (dict(loss_chunk_size=0), "--loss-chunk-size must be >= 1, got 0"),
    (dict(prefetch=0), "--prefetch must be >= 1, got 0"),
    (dict(read_workers=0), "--read-workers must be >= 1 (omit it for the default), got 0"),
    (dict(cache_dir="auto", cache_max_gib=0.0), "--cache-max-gib must be > 0 (omit it for no cap), got 0.0"),
    (dict(cache_max_gib=1.0), "--cache-max-gib caps the --cache-dir; give --cache-dir DIR (or auto) too"),
    (dict(keep_checkpoints=0), "--keep-checkpoints must be >= 1, got 0"),
    (dict(log_every=0), "--log-every must be >= 1, got 0"),
    (dict(max_epochs_per_domain=0.0), "--max-epochs-per-domain must be > 0 (omit it for no cap), got 0.0"),
    (dict(heldout_rows=0), "--heldout-rows must be >= 1, got 0"),
    (dict(save_every=0), "--save-every must be >= 1, got 0"),
    (dict(steps=30, warmup_steps=30), "--warmup-steps must be in [0, steps=30), got 30"),
    (dict(warmup_steps=-1), "--warmup-steps must be in [0, steps=300), got -1"),
    (dict(interval=0), "--interval must be >= 1, got 0"),
    (dict(mixing="uniform", steps=10, interval=11), "--interval 11 is larger than the run (--steps 10)"),
    (dict(mixing="wo-fs", steps=10, interval=10), "--interval 10 is the whole run (--steps 10): --mixing wo-fs"),
    (dict(batch_size=6, grad_accum=4), "--batch-size 6 must be divisible by --grad-accum 4"),
    (dict(resume=True, overwrite=True), "--resume and --overwrite exclude each other; pick one"),
    (dict(mixing="static"), "--mixing static needs --static-weights"),
    (dict(mixing="static", static_weights="a=0.5,b=0.4"), "sum to 1"),
    (dict(static_weights="a=1"), "--static-weights is only used with --mixing static (got --mixing ddk)"),
    (dict(mixing="uniform", init_mixture="r0"), "--init-mixture r0 is only used with --mixing ddk or wo-fs"),
    (dict(store="ftp://host/store"), "--store 'ftp://host/store': unsupported scheme 'ftp'"),
])
def test_a_bad_setting_is_refused_in_one_line_naming_its_flag(given, fragment):
    """Each range and cross-field rule of `ddk-student train` refuses its value with the flag, the value and the fix,
    in one line, when the settings are built (before any store or model is opened)."""
    with pytest.raises(ConfigError) as err:
        Stage2Config(**{**REQUIRED, **given})
    msg = str(err.value)
    assert msg.startswith("invalid stage-2 config: ") and fragment in msg and "\n" not in msg, msg


@pytest.mark.parametrize("given", [
    dict(alpha=0.0), dict(alpha=1.0), dict(gamma=0.0), dict(final_lr_ratio=0.0), dict(final_lr_ratio=1.0),
    dict(weight_decay=0.0), dict(grad_clip=0.0), dict(seed=0), dict(seed=2**63 - 1),
    dict(steps=30, warmup_steps=0), dict(steps=30, warmup_steps=29), dict(steps=1, interval=1, mixing="uniform"),
    dict(steps=10, interval=10, mixing="natural"), dict(steps=10, interval=9), dict(batch_size=8, grad_accum=8),
    dict(mixing="static", static_weights="a=0.25,b=0.75"), dict(mixing="wo-fs", init_mixture="uniform"),
    dict(read_workers=1, prefetch=1, keep_checkpoints=1, log_every=1, save_every=1, heldout_rows=1),
    dict(cache_dir="auto", cache_max_gib=0.5), dict(max_epochs_per_domain=0.5),
])
def test_the_values_at_the_edge_of_each_range_are_accepted(given):
    """The documented edges are settings, not errors: --gamma 0 (the CE-only baseline), --grad-clip 0 (no clipping),
    --alpha 0 and 1, --final-lr-ratio 0 and 1, the largest seed, a warm-up one step short of the run, K = --steps
    for the mixings that do not reweight."""
    cfg = Stage2Config(**{**REQUIRED, **given})
    assert all(getattr(cfg, k) == v for k, v in given.items())


def test_a_cache_dir_that_cannot_be_written_is_refused_and_one_that_can_be_created_is_accepted(tmp_path):
    """--cache-dir names a directory this process can create or write to; under a file it cannot be."""
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for bad in (a_file, a_file / "sub"):
        with pytest.raises(ConfigError, match=rf"--cache-dir {bad}: not a directory this process can create"):
            Stage2Config(**REQUIRED, cache_dir=str(bad))
    cfg = Stage2Config(**REQUIRED, cache_dir=str(tmp_path / "new" / "deeper"), cache_max_gib=1.5)
    assert cfg.cache_max_bytes == 3 * 2**29  # GiB, not MiB


@pytest.mark.parametrize("given, fragment", [
    (dict(eval_batch_size=0), "--eval-batch-size/--batch-size must be >= 1, got 0"),
    (dict(heldout_rows=0), "--heldout-rows must be >= 1 (omit it for all rows), got 0"),
    (dict(store="ftp://host/store"), "--store 'ftp://host/store': unsupported scheme 'ftp'"),
    (dict(model="./no/such/model"), "--model ./no/such/model: directory does not exist"),
])
def test_eval_refuses_a_bad_setting_in_one_line_naming_its_flag(given, fragment):
    with pytest.raises(ConfigError) as err:
        EvalConfig(**{"store": "s", "model": "m", **given})
    msg = str(err.value)
    assert msg.startswith("invalid eval settings: ") and fragment in msg and "\n" not in msg, msg
    assert EvalConfig(store="s", model="m", eval_batch_size=1, heldout_rows=1).heldout_rows == 1


def test_a_student_path_that_is_not_a_directory_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"--student \./no/such/student: directory does not exist"):
        Stage2Config(store="s", student="./no/such/student", out="o")


def test_remote_code_is_off_unless_typed():
    """Neither `train` nor `eval` runs a model's own code by default."""
    assert Stage2Config(**REQUIRED).trust_remote_code is False
    assert EvalConfig(store="s", model="m").trust_remote_code is False


# --------------------------------------------------------------------------- settings saved for --resume ---
def test_the_saved_settings_never_ask_to_resume_or_overwrite_and_hold_k_and_warmup_as_used(tmp_path):
    """config.yaml is what `--config RUN/config.yaml` and --resume read: it must not carry --overwrite (a later
    `--config` would delete the run) nor --resume, and it holds K and the warm-up a defaulted run used (a larger
    --steps must not move them)."""
    path = tmp_path / "config.yaml"
    write_config(Stage2Config(**REQUIRED, steps=90, overwrite=True), path)
    saved = yaml.safe_load(path.read_text())
    assert (saved["resume"], saved["overwrite"]) == (False, False)
    assert (saved["interval"], saved["warmup_steps"], saved["steps"]) == (3, 3, 90)
    write_config(Stage2Config(**REQUIRED, steps=90, resume=True), path)
    assert yaml.safe_load(path.read_text())["resume"] is False


def test_a_resume_may_change_how_a_run_executes_but_not_what_it_computes():
    """--resume refuses a setting that changes the result (the seed, the loss, the mixture) and takes the runtime
    ones (device, batch size of the evaluation, --trust-remote-code typed again or not)."""
    run = Stage2Config(**REQUIRED, steps=30)
    for changed in (dict(seed=1), dict(gamma=0.5), dict(mixing="uniform"), dict(lr=1e-3)):
        field = next(iter(changed))
        assert [d.split(":")[0] for d in differences(run, Stage2Config(**REQUIRED, steps=30, **changed))] == [field]
    runtime = dict(device="cpu", eval_batch_size=2, trust_remote_code=True, keep_checkpoints=5, progress=False)
    assert differences(run, Stage2Config(**REQUIRED, steps=30, **runtime)) == []


# ---------------------------------------------------------------------------------------- the run's lock ---
@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DDK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_lock_is_the_run_directory_however_it_is_named(tmp_path, own_cache, monkeypatch):
    """A second training of the same run directory is refused whether --out is typed relative, absolute or through a
    link to it."""
    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "runs")
    monkeypatch.chdir(tmp_path / "runs")
    fd = rundir.claim_run_dir("a")
    try:
        for other in (run, tmp_path / "link" / "a", Path("..") / "runs" / "a"):
            with pytest.raises(ConfigError, match="is training this run right now"):
                rundir.claim_run_dir(other)
    finally:
        rundir.release_run_dir(fd)
    rundir.release_run_dir(rundir.claim_run_dir(run))  # free again once released


def test_the_lock_names_its_current_holder_not_a_killed_one(tmp_path, own_cache):
    """A killed run leaves its lock file with its own (longer) text; the next holder's claim replaces all of it, so
    a refused training names the process that trains now."""
    import hashlib

    out = tmp_path / "run"
    place = own_cache / "locks" / (hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:32] + ".lock")
    place.parent.mkdir(parents=True)
    place.write_text("`ddk-student train` (pid 99999999 on a-very-long-host-name-of-a-killed-run.example)")
    fd = rundir.claim_run_dir(out)
    try:
        assert place.read_text() == f"`ddk-student train` (pid {os.getpid()} on {socket.gethostname()})"
        with pytest.raises(ConfigError) as err:
            rundir.claim_run_dir(out)
        assert f"(pid {os.getpid()} on {socket.gethostname()}) is training" in str(err.value)
        assert "killed-run" not in str(err.value)
    finally:
        rundir.release_run_dir(fd)


def test_releasing_a_lock_whose_file_was_replaced_leaves_the_new_holders_lock_alone(tmp_path, own_cache):
    """A holder whose lock file was removed under it (a cache clean-up) and claimed anew by a second training must
    not remove the second one's file on release: a third training would then lock a new file and run beside it."""
    out = tmp_path / "run"
    first = rundir.claim_run_dir(out)
    [place] = list((own_cache / "locks").iterdir())
    place.unlink()
    second = rundir.claim_run_dir(out)
    try:
        rundir.release_run_dir(first)
        assert place.exists()
        with pytest.raises(ConfigError, match="is training this run right now"):
            rundir.claim_run_dir(out)
    finally:
        rundir.release_run_dir(second)
    assert not place.exists()


# ------------------------------------------------------------------------------------ metrics.jsonl records ---
def _interval(step: int, event: str = rundir.INTERVAL, **over) -> dict:
    rec = rundir.interval_record(step, step // 2, ["a", "b"], {"ppl": [2.0, 4.0], "nll": [0.69, 1.39]}, [1.0, 2.0],
                                 [2.0, 2.0], [0.5, 0.5], [1.0, 1.0], event)
    return {**rec, **over}


def _step(step: int) -> dict:
    return rundir.step_record(step, loss=2.0, ce=1.5, kl=0.5, lr=1e-3, grad_norm=1.0, tokens_per_s=10.0)


def test_a_new_run_starts_an_empty_metrics_file_and_records_append_whole_lines(tmp_path):
    """start_metrics empties what an earlier run left; append_record adds one whole JSON line per record and hands
    the record to the --report-to sink too."""
    (tmp_path / rundir.METRICS_FILE).write_text(json.dumps(_interval(0)) + "\n")
    path = rundir.start_metrics(tmp_path)
    assert path.read_text() == ""

    class Collect:
        def __init__(self):
            self.seen = []

        def write(self, record):
            self.seen.append(record)

    sink = Collect()
    records = [_interval(0), _step(1), _step(2), _interval(2), _interval(2, rundir.FINAL)]
    for rec in records:
        rundir.append_record(tmp_path, rec, sink)
    assert [json.loads(ln) for ln in path.read_text().splitlines()] == records == sink.seen
    assert rundir.read_records(tmp_path) == records


def test_a_metrics_file_that_is_a_link_is_not_written_through(tmp_path):
    """A metrics.jsonl replaced by a symbolic link (a run directory shared with others) is refused, not followed:
    appending a record never writes into the file the link points to."""
    victim = tmp_path / "victim.txt"
    victim.write_text("someone's file\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / rundir.METRICS_FILE).symlink_to(victim)
    with pytest.raises(OSError):
        rundir.append_record(run, _step(1))
    assert victim.read_text() == "someone's file\n"


def test_is_finished_only_after_the_final_record(tmp_path):
    rundir.start_metrics(tmp_path)
    for rec in (_interval(0), _step(1), _step(2), _interval(2)):
        rundir.append_record(tmp_path, rec)
    assert not rundir.is_finished(tmp_path)
    rundir.append_record(tmp_path, _interval(2, rundir.FINAL))
    assert rundir.is_finished(tmp_path)


def test_resume_truncation_keeps_the_checkpoint_step_drops_the_final_and_redoes_a_reweighting(tmp_path):
    """At a resume from checkpoint 2 the records up to step 2 stay (its interval record included), the final
    record goes even at that step (the run continues), and with ``redo_interval`` the interval record at the step
    goes too (the extension reweights there again and writes it anew)."""
    written = [_interval(0), _step(1), _step(2), _interval(2), _interval(2, rundir.FINAL)]

    def write():
        (tmp_path / rundir.METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in written))

    write()
    rundir.truncate_metrics(tmp_path, 2)
    assert rundir.read_records(tmp_path) == written[:4]
    write()
    rundir.truncate_metrics(tmp_path, 2, redo_interval=True)
    assert rundir.read_records(tmp_path) == written[:3]
    write()
    rundir.truncate_metrics(tmp_path, 1)
    assert rundir.read_records(tmp_path) == written[:2]


@pytest.mark.parametrize("change, words", [
    (dict(ratio=[0.0, 1.0]), "'ratio' must hold finite numbers > 0"),
    (dict(ratio=[float("inf"), 1.0]), "'ratio' must hold finite numbers > 0"),
    (dict(weights=[True, False]), "'weights' must be a list of 2 numbers"),
    (dict(ppl_student=[2.0]), "'ppl_student' must be a list of 2 numbers"),
    (dict(train_rows=[1, 2, 3]), "'train_rows' must be a list of 2 values"),
])
def test_a_hand_edited_interval_record_is_refused_naming_file_line_and_key(tmp_path, change, words):
    (tmp_path / rundir.METRICS_FILE).write_text(json.dumps(_interval(0)) + "\n" + json.dumps(_interval(2, **change))
                                                + "\n")
    with pytest.raises(ReportError) as err:
        rundir.check_run_files(tmp_path)
    msg = str(err.value)
    assert f"{tmp_path / rundir.METRICS_FILE}:2: " in msg and words in msg and "\n" not in msg, msg


# ---------------------------------------------------------------------------------- a student from its teacher ---
@pytest.fixture(scope="module")
def teacher4(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A 4-layer tiny Llama teacher with a generation config of its own."""
    from transformers import GenerationConfig

    d = build_tiny_llama(tmp_path_factory.mktemp("teacher") / "t", tiny_tokenizer_dir, num_layers=4, hidden_size=64,
                         num_heads=1, seed=3)
    GenerationConfig(max_new_tokens=17, do_sample=True, temperature=0.7).save_pretrained(d)
    return d


def test_a_student_keeps_the_teachers_dtype_and_generation_settings(teacher4, tmp_path):
    from transformers import AutoModelForCausalLM, GenerationConfig

    out = init_student_from_teacher(teacher4, tmp_path / "s", layers=2)
    gen = GenerationConfig.from_pretrained(out)
    assert (gen.max_new_tokens, gen.do_sample, gen.temperature) == (17, True, 0.7)
    half = init_student_from_teacher(teacher4, tmp_path / "bf16", layers=[1, 2], dtype=torch.bfloat16)
    assert json.loads((half / "config.json").read_text())["dtype" if "dtype" in json.loads(
        (half / "config.json").read_text()) else "torch_dtype"] == "bfloat16"
    student = AutoModelForCausalLM.from_pretrained(str(half), dtype="auto")
    assert {p.dtype for p in student.parameters()} == {torch.bfloat16}


def test_bad_layers_are_refused_before_the_teachers_weights_are_read(teacher4, tmp_path):
    """A --layers choice the teacher's config rules out is named at once, not after loading (or failing to load)
    the weights: a teacher directory whose weights are absent still gets the --layers message."""
    bare = _without_weights(teacher4, tmp_path / "bare")
    with pytest.raises(ConfigError, match=r"--layers 9: the teacher has 4 layers, so a student can keep between 1 and"):
        init_student_from_teacher(bare, tmp_path / "s", layers=9)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("layers, kept", [("2", [0, 3]), ("2,", [2]), ("1-1", [1]), ("0-1,3", [0, 1, 3]),
                                          (1, [0]), (4, [0, 1, 2, 3])])
def test_layer_choices_as_typed_on_the_command_line(layers, kept):
    """A bare number is a count (evenly spaced, first and last kept); anything with a comma or dash is indices."""
    assert resolve_layers(4, layers) == kept


@pytest.mark.parametrize("layers, fragment", [(False, "expected a count"), ([0, True], "are not layers"),
                                              ([3, 1], "increasing order"), ([1, 2, 2], "appears twice"),
                                              ([0, 4], "0..3")])
def test_layer_lists_the_teacher_cannot_give_are_refused(layers, fragment):
    with pytest.raises(ConfigError, match=fragment):
        resolve_layers(4, layers)


def test_a_layer_count_is_an_int_not_a_bool():
    """``evenly_spaced_layers`` (public, as the README shows) takes a count: True is not one layer."""
    with pytest.raises(ConfigError, match="layers must be an int or a list of ints, got True"):
        evenly_spaced_layers(4, True)


def test_a_student_records_where_it_came_from(teacher4, tmp_path):
    out = init_student_from_teacher(teacher4, tmp_path / "s", layers=[0, 2, 3], seed=5)
    info = json.loads((out / PROVENANCE).read_text())
    assert (info["teacher"], info["teacher_layers"], info["kept_layers"], info["seed"]) == (
        str(teacher4.resolve()), 4, [0, 2, 3], 5)
    assert info["files"] == sorted(p.name for p in out.iterdir())


def test_init_never_runs_a_teachers_own_code(teacher4, tmp_path, monkeypatch):
    """A teacher whose config.json maps its config and model classes to its own module (auto_map) while naming a
    known model_type is cut with the library's own Llama classes: its module is never imported, whether by the
    tokenizer, the config, the teacher's or the student's model class."""
    import sys

    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "hf_modules"))  # (a mutant's import stays here)
    monkeypatch.setattr(sys, "path", list(sys.path))
    teacher, marker = tmp_path / "teacher", tmp_path / "remote_code_ran"
    teacher.mkdir()
    for p in teacher4.iterdir():
        (teacher / p.name).write_bytes(p.read_bytes())
    (teacher / "own.py").write_text(f"from pathlib import Path\n\nPath({str(marker)!r}).write_text('ran')\n")
    cfg = json.loads((teacher / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "own.OwnConfig", "AutoModelForCausalLM": "own.OwnModel"}
    (teacher / "config.json").write_text(json.dumps(cfg))
    out = init_student_from_teacher(teacher, tmp_path / "s", layers=2)
    assert not marker.exists(), "init imported the teacher's own module"
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2


def _without_weights(teacher: Path, where: Path) -> Path:
    where.mkdir()
    for p in teacher.iterdir():
        if not p.name.endswith(".safetensors"):
            (where / p.name).write_bytes(p.read_bytes())
    return where


def test_a_teacher_without_weights_is_one_error_naming_it(teacher4, tmp_path):
    """A teacher directory with its config and tokenizer but no weights (a copy cut short) is a ConfigError naming
    the directory, as a missing tokenizer or config is, and nothing is written."""
    bare = _without_weights(teacher4, tmp_path / "bare")
    with pytest.raises(ConfigError, match=rf"teacher {bare}: cannot load its weights"):
        init_student_from_teacher(bare, tmp_path / "s", layers=2)
    assert not (tmp_path / "s").exists()
