"""--report-to tensorboard: a real short run's event files, read back with the tensorboard package, hold the values
of its metrics.jsonl, tag by tag and step by step; a resumed run leaves no stale points; the mapping itself."""

from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

from ddk_store.errors import MissingDependencyError
from ddk_testkit.commands import train_args
from stage2_student import sinks
from stage2_student.cli import cli

EventAccumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator", reason="needs the tensorboard package (test extra)"
).EventAccumulator


def _records(out):
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


def _expected(out) -> dict[str, list[tuple[int, float]]]:
    """Every (step, value) metrics.jsonl implies, per TensorBoard tag."""
    want: dict[str, list[tuple[int, float]]] = {}
    for rec in _records(out):
        for tag, value in sinks.scalars(rec):
            want.setdefault(tag, []).append((rec["step"], value))
    return want


def _events(out) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _assert_mirror(out) -> None:
    want, got = _expected(out), _events(out)
    assert set(got) == set(want)
    for tag, points in want.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in points], tag  # same steps, once each
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in points], rel=1e-6, nan_ok=True), tag


@pytest.fixture(scope="module")
def tb_run(tmp_path_factory, store_url, student_dir):
    out = tmp_path_factory.mktemp("tb") / "run"
    res = CliRunner().invoke(cli, train_args(store_url, student_dir, out, report_to="tensorboard",
                                             max_epochs_per_domain=2))
    assert res.exit_code == 0, res.output
    return out


def test_event_files_hold_the_values_of_metrics_jsonl(tb_run):
    _assert_mirror(tb_run)
    got = _events(tb_run)
    recs = _records(tb_run)
    # the list, spelled out: loss, CE, KL, learning rate, tokens/s, per-domain ratios and weights
    for tag in ("train/loss", "train/ce", "train/kl", "train/lr", "train/tokens_per_s", "ratio/alpha",
                "weights/gamma", "cap/beta", "summary/mean", "summary/worst"):
        assert got[tag], tag
    steps = [r for r in recs if r["event"] == "step"]
    assert [s for s, _ in got["train/loss"]] == [r["step"] for r in steps] == list(range(1, 13))
    assert got["train/lr"][3][1] == pytest.approx(steps[3]["lr"], rel=1e-6)
    final = recs[-1]
    assert final["event"] == "final" and got["ratio/beta"][-1] == (12, pytest.approx(final["ratio"][1], rel=1e-6))
    assert [s for s, _ in got["weights/alpha"]] == [0, 4, 8, 12]


def test_a_resumed_run_is_mirrored_again_without_stale_points(tb_run):
    """Extending the finished 12-step run to 16 drops its final record (step 12) from metrics.jsonl; the event files
    follow: step 12 holds the new interval record only, and steps 13-16 appear once."""
    res = CliRunner().invoke(cli, ["train", "--out", str(tb_run), "--resume", "--steps", "16"])  # settings saved
    assert res.exit_code == 0, res.output
    _assert_mirror(tb_run)
    assert [s for s, _ in _events(tb_run)["ratio/alpha"]] == [0, 4, 8, 12, 16]
    assert len(list((tb_run / "tensorboard").iterdir())) == 1  # one event file: the old ones were replaced


def test_scalars_of_each_record_kind():
    step = {"event": "step", "step": 7, "loss": 2.0, "ce": 1.5, "kl": 2.5, "lr": 1e-3, "grad_norm": 0.5,
            "tokens_per_s": 0.0}
    # tokens/s 0.0 marks a step earlier versions did not measure (off the --log-every grid): left out
    assert sinks.scalars(step) == [("train/loss", 2.0), ("train/ce", 1.5), ("train/kl", 2.5), ("train/lr", 1e-3),
                                   ("train/grad_norm", 0.5)]
    interval = {"event": "interval", "step": 4, "domains": ["a", "b"], "ratio": [1.5, 2.0], "weights": [0.4, 0.6],
                "train_rows": [30, 10]}
    got = dict(sinks.scalars(interval))
    # mean (1.5+2)/2 = 1.75; natural 0.75*1.5 + 0.25*2 = 1.625; geometric sqrt(1.5*2) = sqrt(3); worst 2
    assert got == pytest.approx({"ratio/a": 1.5, "ratio/b": 2.0, "weights/a": 0.4, "weights/b": 0.6,
                                 "summary/mean": 1.75, "summary/natural_mean": 1.625,
                                 "summary/geo_mean": 3 ** 0.5, "summary/worst": 2.0})
    assert sinks.scalars({"event": "something-else", "step": 1}) == []


def test_none_writes_nothing_and_a_missing_package_is_one_error(tmp_path, monkeypatch):
    assert sinks.open_sink("none", tmp_path) is None
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were not installed
    with pytest.raises(MissingDependencyError, match="--report-to tensorboard needs the tensorboard package"):
        sinks.open_sink("tensorboard", tmp_path)


def test_a_live_run_shows_each_interval_at_once(tmp_path):
    """Someone watching a run in TensorBoard sees each interval's ratios and weights as soon as it is recorded, not
    at the next 10-s flush or at the end of the run (the writer stays open here, as in a running training)."""
    from stage2_student import rundir

    sink = sinks.open_sink("tensorboard", tmp_path)
    step = {"event": "step", "step": 1, "loss": 2.0, "ce": 1.5, "kl": 2.5, "lr": 1e-3, "grad_norm": 0.5,
            "tokens_per_s": 100.0}
    rundir.append_record(tmp_path, step, sink)
    for at, ratio in ((4, [3.0, 5.0]), (8, [2.5, 4.0])):
        rundir.append_record(tmp_path, {"event": "interval", "step": at, "domains": ["a", "b"], "ratio": ratio,
                                        "weights": [0.3, 0.7], "train_rows": [10, 10]}, sink)
        got = _events(tmp_path)
        assert got["ratio/b"][-1] == (at, ratio[1]) and got["summary/worst"][-1] == (at, ratio[1])
    sink.close()
