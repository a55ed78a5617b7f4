"""stage2_student.repeats: the domains whose held-out ratio rose while their rows were repeated, on records whose
rows, passes and flags are computed by hand below; and the report's paragraph on them."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from ddk_testkit.commands import train_args

from stage2_student.cli import cli
from stage2_student.repeats import RISE_TOL, RepeatFinding, find_repeats, rows_by_record, rows_sampled

from .test_compare_report import write_run


def rec(step: int, ratio: list[float], weights: list[float], domains=("a", "b")) -> dict:
    return {"domains": list(domains), "step": step, "ratio": ratio, "weights": weights}


def test_rows_by_record_by_hand():
    # B = 3. Steps 0-2 at (.5, .5): 6 rows -> (3, 3). Steps 2-4 at (.25, .75): exact (1.5, 4.5), floors (1, 4), the
    # one row left goes to the larger remainder, a tie (.5, .5) broken to the lower index -> (2, 4); total (5, 7).
    records = [rec(0, [1, 1], [0.5, 0.5]), rec(2, [1, 1], [0.25, 0.75]), rec(4, [1, 1], [0.25, 0.75])]
    assert rows_by_record(records, 3) == [[0, 0], [3, 3], [5, 7]]
    assert rows_sampled(records, 3) == [5, 7]
    # a record at the same step as the previous one (a resumed run's re-evaluation) draws nothing in between
    assert rows_by_record(records[:2] + [rec(2, [1, 1], [0.5, 0.5])], 3)[-1] == [3, 3]


# A run of 12 steps x 10 rows; a has 10 training rows, b 30 (natural pace: a 2.5 rows/step, b 7.5).
# weights (.5, .5) for steps 0-4, then (.8, .2). Rows: a 20 -> 52 -> 84 (passes 2.0, 5.2, 8.4);
# b 20 -> 28 -> 36 (passes 0.67, 0.93, 1.2).
WEIGHTS = [[0.5, 0.5], [0.8, 0.2], [0.8, 0.2], [0.8, 0.2]]


def run(ratio_a: list[float], ratio_b: list[float]) -> list[dict]:
    return [rec(4 * i, [ra, rb], w) for i, (ra, rb, w) in enumerate(zip(ratio_a, ratio_b, WEIGHTS))]


def test_a_repeated_domain_whose_ratio_rose_is_flagged_with_its_figures():
    records = run([12.0, 10.0, 8.0, 9.0], [3.0, 2.0, 2.5, 2.6])
    assert rows_by_record(records, 10)[-1] == [84, 36]
    (found,) = find_repeats(records, 10, [10, 30])
    # a: 8.4 passes (> 1); lowest 8.0 at step 8 (5.2 passes); 9.0 > 8.0 x 1.02; rows since: 84 - 52 = 32 >= the
    # natural 4 steps x 10 x 10/40 = 10 (less one row for the one interval in between)
    assert found == RepeatFinding(domain="a", train_rows=10, best_step=8, best_ratio=8.0, best_passes=5.2, step=12,
                                  ratio=9.0, passes=8.4)
    # b is not flagged though it has 1.2 passes and rose from 2.0 (step 4) to 2.6: since step 4 it drew 36 - 20 = 16
    # rows, far below the natural 8 steps x 10 x 30/40 = 60 - 2: starved of samples, not repeated
    assert found.suggested_cap() == pytest.approx(5.2)
    msg = found.message()
    for part in ("'a'", "9 at step 12", "8.40 passes over its 10 training rows", "up from 8 at step 8",
                 "5.20 passes", "--max-epochs-per-domain 5.2", "another draw of held-out documents"):
        assert part in msg, (part, msg)


def test_b_flagged_once_it_keeps_its_natural_pace():
    # b at exactly its natural share throughout: weights (.25, .75) -> b 30, 60, 90 rows (passes 1, 2, 3), a 10, 20,
    # 30 (a's ratio flat). b's ratio: lowest 2.0 at step 4 (1 pass), 2.6 at the end after 3; rows since 60 >= the
    # natural 8 steps x 10 x 30/40 = 60 (less 2 for rounding) -> flagged, suggested cap 1 pass
    records = [rec(4 * i, [12.0, r], [0.25, 0.75]) for i, r in enumerate([3.0, 2.0, 2.5, 2.6])]
    (f,) = find_repeats(records, 10, [10, 30])
    assert f.domain == "b" and (f.best_step, f.best_passes, f.passes) == pytest.approx((4, 1.0, 3.0))
    assert f.suggested_cap() == 1.0
    assert "--max-epochs-per-domain 1 would bound" in f.message()
    # Given the run's steps (12 x 10 = 120 rows over 40 training rows), no suggestion is below the 3 passes that
    # train's check_epoch_cap needs: 1 would be refused
    (f,) = find_repeats(records, 10, [10, 30], steps=12)
    assert f.suggested_cap() == 3.0 and f.min_cap == 3.0
    assert "--max-epochs-per-domain 3 (the least this run's steps allow) would bound" in f.message()
    (a,) = find_repeats(run([12.0, 10.0, 8.0, 9.0], [3.0, 2.0, 2.5, 2.6]), 10, [10, 30], steps=12)
    assert a.suggested_cap() == pytest.approx(5.2) and "5.2 would bound" in a.message()  # above the least: kept


@pytest.mark.parametrize("last_a,flagged", [(8.0 * (1 + RISE_TOL) * 0.999, False),  # within the tolerance
                                            (8.0 * (1 + RISE_TOL) * 1.001, True),
                                            (7.9, False)])  # still falling
def test_the_rise_must_exceed_the_tolerance(last_a, flagged):
    records = run([12.0, 10.0, 8.0, last_a], [3.0, 3.0, 3.0, 3.0])
    assert bool(find_repeats(records, 10, [10, 30])) is flagged


def test_one_pass_or_less_is_never_flagged():
    # a with 100 rows: 84 rows drawn, under one pass, though its ratio rose 25%
    records = run([12.0, 10.0, 8.0, 10.0], [3.0, 3.0, 3.0, 3.0])
    assert find_repeats(records, 10, [100, 30]) == []
    assert find_repeats(records[:1], 10, [10, 30]) == []  # one record: nothing to compare with


def test_suggested_cap_rounds_up_to_a_tenth_and_never_below_one_pass():
    def cap(best_passes: float) -> float:
        return RepeatFinding("a", 10, 0, 1.0, best_passes, 1, 2.0, 3.0).suggested_cap()

    assert cap(2.0) == 2.0 and cap(2.01) == pytest.approx(2.1) and cap(0.4) == 1.0 and cap(3.35) == pytest.approx(3.4)


def test_train_rows_must_match_the_domains():
    with pytest.raises(ValueError, match="3 train_rows for 2 domains"):
        find_repeats(run([1.0] * 4, [1.0] * 4), 10, [1, 2, 3])


def test_report_names_a_flagged_domain_and_says_when_none_is(tmp_path):
    # write_run: 4 steps x 4 rows, records at steps 0, 2 and 4 (final); b has 10 rows, a 30.
    # b at 0.75 throughout: 6 rows per 2 steps -> 6, 12 (1.2 passes at the end); its ratio 8 -> 5 -> 6: up 20% from
    # step 2 (0.6 passes), rows since 6 >= the natural 2 x 4 x 10/40 = 2 -> flagged
    flagged = write_run(tmp_path / "rep", [[4.0, 8.0], [3.0, 5.0], [2.0, 6.0]], weights=[[0.25, 0.75]] * 3)
    res = CliRunner().invoke(cli, ["report", str(flagged)])
    assert res.exit_code == 0, res.output
    md = (flagged / "report.md").read_text()
    assert "**Repeated rows**: 1 domain(s) flagged" in md
    assert "- domain 'b': held-out ratio 6 at step 4 after 1.20 passes over its 10 training rows, up from 5 at " \
           "step 2 after 0.60 passes" in md
    assert "--max-epochs-per-domain 1 would bound" in md
    # the same run whose b keeps falling: none flagged
    fine = write_run(tmp_path / "fine", [[4.0, 8.0], [3.0, 5.0], [2.0, 4.0]], weights=[[0.25, 0.75]] * 3)
    assert CliRunner().invoke(cli, ["report", str(fine)]).exit_code == 0
    assert "**Repeated rows**: no domain is flagged" in (fine / "report.md").read_text()


def interval_and_final(run) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if r["event"] in ("interval", "final")]


def warnings_of(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("warning: domain ")]


@pytest.fixture(scope="module")
def repeated_run(tmp_path_factory, store_url, student_dir):
    """A real run that repeats its rows (3 domains x 16 random-token rows, 40 steps of 4 rows: about 3 passes each)
    at a learning rate that memorizes them, so held-out ratios rise; every interval's checkpoint kept.
    (run directory, its stderr)."""
    out = tmp_path_factory.mktemp("repeats") / "run"
    res = CliRunner().invoke(cli, train_args(store_url, student_dir, out, steps=40, interval=4, lr=3e-2,
                                             mixing="uniform", keep_checkpoints=20))
    assert res.exit_code == 0, res.output
    return out, res.stderr


def first_flags(records: list[dict], rows: list[int]) -> list[RepeatFinding]:
    """Each domain's finding at the first record where the rule flags it, in the order they are flagged."""
    first: list[RepeatFinding] = []
    for i in range(1, len(records) + 1):
        first += [f for f in find_repeats(records[:i], 4, rows, steps=40) if f.domain not in {g.domain for g in first}]
    return first


def test_training_warns_once_for_each_domain_its_own_records_flag(repeated_run):
    """The run prints one warning per domain, the first time the repeats rule flags it on the records written so
    far, and the report flags the domains the rule flags at the end."""
    out, stderr = repeated_run
    records = interval_and_final(out)
    rows = records[0]["train_rows"]
    flagged = first_flags(records, rows)
    assert flagged, "expected the memorized random-token rows to raise some domain's held-out ratio"
    assert warnings_of(stderr) == [f"warning: {f.message()}" for f in flagged]
    assert CliRunner().invoke(cli, ["report", str(out)]).exit_code == 0
    md = (out / "report.md").read_text()
    final = {f.domain for f in find_repeats(records, 4, rows)}
    listed = set(re.findall(r"^- domain '([^']+)': held-out ratio", md, flags=re.M))
    assert listed == final  # the report lists exactly the domains the rule flags at the end
    assert ("**Repeated rows**: no domain is flagged" in md) == (not final)


def resumed_from(run, at: int, tmp_path) -> str:
    """A copy of ``run`` with its checkpoints after step ``at`` deleted, resumed; the resumed run's stderr."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    for ck in (copy / "checkpoints").iterdir():
        if int(ck.name.split("-")[1]) > at:
            shutil.rmtree(ck)
    res = CliRunner().invoke(cli, ["train", "--out", str(copy), "--resume"])
    assert res.exit_code == 0, res.output
    return res.stderr


def test_a_resumed_run_warns_as_the_uninterrupted_one(repeated_run, tmp_path):
    """The evaluation history the rule reads is in the checkpoint: resumed from a checkpoint before any domain was
    flagged, the run prints the same warnings, word for word, as the uninterrupted run."""
    out, stderr = repeated_run
    records = interval_and_final(out)
    first = first_flags(records, records[0]["train_rows"])[0]
    at = max(s for s in (r["step"] for r in records) if s < first.step and s > 0)
    assert warnings_of(resumed_from(out, at, tmp_path)) == warnings_of(stderr)


def test_a_run_resumed_after_a_warning_does_not_repeat_it(repeated_run, tmp_path):
    """Resumed from the checkpoint of the evaluation that first flagged a domain, the run prints only the warnings
    the uninterrupted run printed after it: the domains warned of before the checkpoint are not warned of again."""
    out, stderr = repeated_run
    records = interval_and_final(out)
    flagged = first_flags(records, records[0]["train_rows"])
    at = flagged[0].step
    assert 0 < at < records[-1]["step"], "expected the first flag at an interval boundary, before the end"
    resumed = warnings_of(resumed_from(out, at, tmp_path))
    assert resumed == [f"warning: {f.message()}" for f in flagged if f.step > at]
    assert len(resumed) < len(warnings_of(stderr))


def test_rows_by_record_carries_rounding_and_trusts_recorded_rows():
    # B = 3 at (.25, .75) for 2 steps per record: exact (1.5, 4.5) per record; carried, the running totals follow
    # the exact target (3, 9) at the third record, not three times the first record's rounding (2, 4)
    records = [rec(2 * i, [1, 1], [0.25, 0.75]) for i in range(4)]
    assert rows_by_record(records, 3) == [[0, 0], [2, 4], [3, 9], [5, 13]]
    logged = [{**rec(0, [1, 1], [.5, .5]), "rows_trained": [0, 0]},
              {**rec(2, [1, 1], [.5, .5]), "rows_trained": [1, 5]}]
    assert rows_by_record(logged, 3)[-1] == [1, 5]  # what the run logged, not a re-derivation


def test_the_repeat_rule_at_its_boundaries():
    # b: 30 training rows, drawn exactly once (10 rows x 2 steps x .75 x 2 records): one pass is no repeat
    once = [rec(0, [1, 3.0], [.25, .75]), rec(2, [1, 2.0], [.25, .75]), rec(4, [1, 2.5], [.25, .75])]
    assert find_repeats(once, 10, [10, 30]) == []
    # two records are enough to see a rise: a (10 rows) drew 8 x 4 = 32 rows, its ratio rose 8 -> 9
    assert [f.domain for f in find_repeats([rec(0, [8.0, 3.0], [.8, .2]), rec(4, [9.0, 3.0], [.8, .2])], 10,
                                           [10, 30])] == ["a"]
    # tied lowest ratios: the earliest is the best point, and the cap suggested is the passes it had
    tied = [rec(4 * i, [ra, 3.0], w) for i, (ra, w) in enumerate(zip([12.0, 8.0, 8.0, 9.0],
                                                                     [[.5, .5], [.8, .2], [.8, .2], [.8, .2]]))]
    (f,) = find_repeats(tied, 10, [10, 30])
    assert (f.domain, f.best_step, f.best_passes) == ("a", 4, 2.0)
    # above its natural pace: a (natural share 10/40 = .25) drew at .3, 12 rows against 10 (less a row of slack)
    above = [rec(4 * i, [ra, 3.0], [.3, .7]) for i, ra in enumerate([12.0, 10.0, 8.0, 9.0])]
    assert [f.domain for f in find_repeats(above, 10, [10, 30])] == ["a"]
    # b (natural .75 of 3 rows a step) drew 4 rows by step 4 against a natural 4.5, within a row: flagged
    paced = [rec(2 * i, [1, rb], [.25, .75]) for i, rb in enumerate([3.0, 2.5, 2.0, 2.5])]
    assert [f.domain for f in find_repeats(paced, 3, [2, 6])] == ["b"]
    # b drew 4 rows against a natural 6, more than a row below its pace: the rise is not its repeats
    slow = [rec(0, [1, 3.0], [.25, .75]), rec(1, [1, 2.0], [.5, .5]), rec(2, [1, 2.5], [.5, .5])]
    assert find_repeats(slow, 8, [2, 6]) == []


def test_a_rise_of_two_percent_is_the_threshold():
    def rose_to(last: float) -> list[str]:
        records = [rec(4 * i, [ra, 3.0], [.8, .2]) for i, ra in enumerate([9.0, 8.0, last])]
        return [f.domain for f in find_repeats(records, 10, [10, 30])]

    assert RISE_TOL == 0.02
    assert rose_to(8.2) == ["a"] and rose_to(8.15) == []  # 2.5% flagged, 1.9% not


def test_a_rise_of_exactly_the_tolerance_is_not_flagged():
    """Condition 2 is a rise by *more than* RISE_TOL: a ratio exactly 2% above the lowest is not flagged (the
    threshold test above stays a few tenths of a percent away from the boundary on both sides)."""
    def rose_to(last: float) -> list[str]:
        records = [rec(4 * i, [ra, 3.0], [.8, .2]) for i, ra in enumerate([2.0, 1.0, last])]
        return [f.domain for f in find_repeats(records, 10, [10, 30])]

    assert 1.0 * (1.0 + RISE_TOL) == 1.02  # the boundary is exact in binary: the comparison alone decides
    assert rose_to(1.02) == []
    assert rose_to(1.0201) == ["a"]


def test_a_min_cap_equal_to_the_lowest_passes_does_not_bind():
    """The run's smallest cap binds only when it is *larger* than the passes at the lowest ratio; equal, the
    suggestion is those passes and the message does not blame the run's steps."""
    f = RepeatFinding(domain="a", train_rows=10, best_step=4, best_ratio=8.0, best_passes=2.0, step=8, ratio=9.0,
                      passes=4.0, min_cap=2.0)
    assert f.suggested_cap() == 2.0
    assert not f.binds()
    assert "least this run's steps allow" not in f.message()
    assert RepeatFinding(**{**f.__dict__, "min_cap": 2.5}).binds()
