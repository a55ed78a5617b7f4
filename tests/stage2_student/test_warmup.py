"""The demo's cross-entropy warm-up stage (examples/demo.sh, step 5) and what the report and plots make of it.

The warm-up is a plain `ddk-student train --mixing natural --gamma 0` run whose output directory is the student of the
DDK run (README.md, "make demo"). Here: its steps are cross-entropy only (the KL term is not applied) and its
mixture stays natural; killed in the middle, the same command (with --resume, as the demo types it) ends where an
uninterrupted warm-up ends; DDK starts from its output, and the report says where that student came from; the plots
draw the final evaluation, weights as steps and the DDK floor.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ddk_testkit.commands import train_argv
from ddk_testkit.kills import kill_after_checkpoint, last_checkpoint_step
from ddk_testkit.processes import run_cli, run_process, spawn
from ddk_testkit.snapshots import run_differences
from stage2_student.reweighting import natural_weights

PNG = b"\x89PNG\r\n\x1a\n"
#: The demo's warm-up command, scaled down: one interval over the whole run, a checkpoint every 2 steps, --resume.
WARMUP = dict(mixing="natural", gamma=0, steps=16, interval=16, save_every=2, keep_checkpoints=1, batch_size=2,
              eval_batch_size=2, lr=3e-3, seed=0, device="cpu", no_progress=True, resume=True)


def records(run: Path, event: str) -> list[dict]:
    return [r for r in (json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip())
            if r["event"] == event]


@pytest.fixture(scope="module")
def warm(tmp_path_factory, store_url, student_dir) -> Path:
    """A finished warm-up run (the reference of the kill test, and the student of the DDK run)."""
    out = tmp_path_factory.mktemp("warmup") / "warm"
    # in a child process, as the killed run below, so both use the same threads (bit-identical results)
    run_process("stage2_student.cli", train_argv(store_url, student_dir, out, **WARMUP), check=True)
    return out


def test_warmup_steps_are_cross_entropy_only_on_the_natural_mixture(warm: Path) -> None:
    steps = records(warm, "step")
    assert [r["step"] for r in steps] == list(range(1, 17))
    for r in steps:
        assert r["loss"] == r["ce"], r  # gamma 0: the KL term is not applied
    marks = records(warm, "interval") + records(warm, "final")
    assert [r["step"] for r in marks] == [0, 16]
    for r in marks:  # the ratios differ by domain, and still the mixture does not move
        assert r["weights"] == pytest.approx(natural_weights(r["train_rows"]).tolist(), abs=0)
        assert r["factor"] == r["weights"]
    assert len(set(marks[0]["ratio"])) == 3


def test_a_warmup_killed_in_the_middle_resumes_to_the_uninterrupted_result(tmp_path, warm, store_url,
                                                                           student_dir) -> None:
    out = tmp_path / "warm"
    argv = train_argv(store_url, student_dir, out, **WARMUP)
    victim = spawn("stage2_student.cli", argv, stderr=subprocess.DEVNULL)
    assert kill_after_checkpoint(victim, out / "checkpoints", 2, 120), "the warm-up finished before it was killed"
    assert 2 <= last_checkpoint_step(out / "checkpoints") < 16 and not (out / "model.safetensors").exists()
    run_process("stage2_student.cli", argv, check=True)  # the very same command, as the demo reruns it
    assert run_differences(out, warm) == []


def test_ddk_from_the_warm_student_and_its_report(tmp_path, warm, store_url) -> None:
    run = tmp_path / "ddk"
    result = run_cli("ddk-student", train_argv(store_url, warm, run, mixing="ddk", steps=6, interval=2, batch_size=2,
                                               eval_batch_size=2, lr=3e-3, device="cpu", no_progress=True))
    assert result.code == 0, result.output
    first = records(run, "interval")[0]
    # the DDK run starts where the warm-up ended: same student, same held-out rows
    assert first["ppl_student"] == pytest.approx(records(warm, "final")[0]["ppl_student"], rel=1e-5)
    assert run_cli("ddk-student", ["report", str(run)]).code == 0
    md = (run / "report.md").read_text()
    assert (f"- student: `{warm}` (itself a `ddk-student train` run: 16 steps of cross-entropy only (gamma 0) on the "
            "natural mixture, which took its mean ratio from ") in md
    assert "*before* below is that trained student)" in md
    assert "| domain | ratio before | ratio after | change |" in md
    assert "- DDK's floor: Eq. 2 keeps every domain at (1 - alpha) / N = 0.167 or more" in md  # alpha 0.5, 3 domains
    for png in ("weights.png", "ratios.png"):
        assert (run / png).read_bytes()[:8] == PNG


def test_report_of_a_raw_student_says_nothing_about_its_origin(warm: Path, tmp_path: Path) -> None:
    from stage2_student.report import _origin

    assert _origin(str(warm.parent / "no-such-dir")) == "" and _origin(None) == ""
    (tmp_path / "metrics.jsonl").write_text("not json\n")  # a damaged run: the report is about this run, not it
    assert _origin(str(tmp_path)) == ""
    assert _origin(str(warm)).startswith(" (itself a `ddk-student train` run: 16 steps")


def _records(steps: list[int], weights: list[list[float]], ratios: list[list[float]]) -> list[dict]:
    return [{"step": s, "domains": ["a", "b"], "weights": w, "ratio": r} for s, w, r in zip(steps, weights, ratios)]


def test_plots_draw_the_final_evaluation_steps_the_floor_and_ratio_one(tmp_path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stage2_student import plots

    recs = _records([0, 4, 8, 10], [[0.5, 0.5], [0.7, 0.3], [0.6, 0.4], [0.6, 0.4]],
                    [[9.0, 3.0], [5.0, 2.5], [3.0, 2.0], [2.5, 1.5]])
    saved = []
    real_close = plt.close
    plt.close = lambda fig: saved.append(fig)  # keep the figures to look at what was drawn
    try:
        plots.weights_plot(recs, tmp_path / "w.png", title="weights of run x", floor=0.25)
        plots.ratios_plot(recs, tmp_path / "r.png", title="ratios of run x")
    finally:
        plt.close = real_close
    (wax,), (rax,) = saved[0].axes, saved[1].axes
    lines = {ln.get_label(): ln for ln in wax.get_lines()}
    assert lines["a"].get_drawstyle() == "steps-post" and list(lines["a"].get_xdata()) == [0, 4, 8, 10]
    assert list(lines["DDK floor (1-α)/N = 0.250"].get_ydata()) == [0.25, 0.25]
    assert wax.get_title() == "weights of run x" and rax.get_title() == "ratios of run x"
    rlines = {ln.get_label(): ln for ln in rax.get_lines()}
    assert list(rlines["b"].get_xdata())[-1] == 10  # the final evaluation is drawn
    assert list(rlines["teacher (ratio 1)"].get_ydata()) == [1.0, 1.0] and rax.get_yscale() == "log"
    for ax in (wax, rax):
        assert list(ax.get_xticks()) == [0, 4, 8, 10] and all(float(t).is_integer() for t in ax.get_xticks())
    for fig in saved:
        real_close(fig)
    assert (tmp_path / "w.png").read_bytes()[:8] == PNG and np.isfinite(rax.get_ylim()).all()
