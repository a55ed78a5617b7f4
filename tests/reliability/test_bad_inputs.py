"""The bad-input table (ddk_testkit.bad_inputs.CASES): every case fails in one line, without a traceback, writing nothing.

Each case runs the real console entry in-process. The teacher of the workspace has garbage for weights, so a dump
case that got as far as loading the model would fail with a weights error instead of its own message: passing
proves the check runs before the model loads.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ddk_testkit.bad_inputs import CASES, ENTRY_POINTS, MARKER, BadInput, Workspace, run_case
from ddk_testkit.processes import ERROR_PREFIX, REPO, USAGE_PREFIX

DOC = REPO / "docs" / "reliability_bad_inputs.md"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return Workspace.build(tmp_path_factory.mktemp("bad_inputs"))


def _param(case: BadInput) -> object:
    marks = [pytest.mark.xfail(reason=case.xfail, strict=True)] if case.xfail else []
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input(case: BadInput, workspace: Workspace, tmp_path: Path) -> None:
    outcome = run_case(case, workspace, tmp_path)
    out = outcome.result.output
    assert outcome.result.code != 0, f"exit 0 for a bad input:\n{out}"
    assert "Traceback" not in out, out
    ours, clicks = outcome.result.lines_starting(ERROR_PREFIX), outcome.result.lines_starting(USAGE_PREFIX)
    expected, other = (clicks, ours) if case.usage else (ours, clicks)
    assert len(expected) == 1 and not other, f"want exactly one {case.prefix!r} line:\n{out}"
    for needle in case.expect:
        assert needle in expected[0], f"{needle!r} not in the error line {expected[0]!r}"
    for needle in case.in_output:
        assert needle in out, f"{needle!r} not in the output:\n{out}"
    changed = [p for p in outcome.before if outcome.before[p] != outcome.after[p]]
    assert not changed, f"a failed run changed {changed}"
    assert not outcome.valid_outputs, f"a failed run left something that looks valid: {outcome.valid_outputs}"
    assert not list(tmp_path.rglob(MARKER)), "a YAML python tag was executed"


def test_table_covers_every_cli_with_unique_ids() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 45
    assert {c.cli for c in CASES} == set(ENTRY_POINTS)
    assert all(c.expect for c in CASES), "every case names what its error line must say"


def test_docs_table_lists_every_case() -> None:
    """docs/reliability_bad_inputs.md is generated from CASES: regenerate it when a case is added or removed."""
    documented = re.findall(r"^\| `([a-z0-9.-]+)` \|", DOC.read_text(encoding="utf-8"), flags=re.MULTILINE)
    assert sorted(documented) == sorted(c.id for c in CASES), (
        "docs/reliability_bad_inputs.md is stale: run `python bench/chaos/bad_inputs_table.py > "
        "docs/reliability_bad_inputs.md`")
    summary = (DOC.parent / "reliability.md").read_text(encoding="utf-8")
    assert f"| {len(CASES)} bad inputs across the three CLIs |" in summary and f"all {len(CASES)}:" in summary
