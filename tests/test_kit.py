"""The test kit itself: installed as ``ddk_testkit``, packaged completely, used by bench/ without ``tests`` imports,
and its store scanner agrees with a real store."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib

import pytest

from ddk_testkit.processes import REPO, run_cli
from ddk_testkit.watch import DumpWatch, dump_state


def _python_files(*folders: str):
    for folder in folders:
        yield from sorted((REPO / folder).rglob("*.py"))


def _problems(path) -> list[str]:
    """Imports of the ``tests`` package, and calls that put a folder on ``sys.path``, in one file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        modules = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                   [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
        out += [f"imports {m}" for m in modules if m == "tests" or m.startswith("tests.")]
        func = node.func if isinstance(node, ast.Call) else None
        target = func.value if isinstance(func, ast.Attribute) else None
        if (target is not None and func.attr in ("insert", "append") and isinstance(target, ast.Attribute)
                and target.attr == "path" and getattr(target.value, "id", None) == "sys"):
            out.append(f"calls sys.path.{func.attr}")
    return out


def test_every_package_folder_is_packaged():
    """pyproject lists packages explicitly (a package-dir mapping rules out `packages.find`): none may be missing."""
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = {name: REPO / path for name, path in tool.get("package-dir", {}).items()}
    listed = set(tool["packages"])
    found = set()
    for top in ("ddk_store", "stage1_teacher", "stage2_student", "ddk_testkit"):
        root = dirs.get(top, REPO / top)
        for init in [root / "__init__.py", *root.rglob("*.py")]:
            rel = init.parent.relative_to(root)
            if "__pycache__" not in rel.parts:
                found.add(".".join((top, *rel.parts)))
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"


def test_the_kit_is_installed_under_its_own_name():
    """Imported from outside the repository (nothing on sys.path points at it), ``ddk_testkit`` is tests/kit."""
    code = "import ddk_testkit.kills, ddk_testkit.bad_inputs; print(ddk_testkit.__file__)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert res.returncode == 0, res.stderr[-2000:] + "\n(run `pip install -e .` in the repository)"
    assert res.stdout.strip() == str(REPO / "tests" / "kit" / "__init__.py")


@pytest.mark.parametrize("folder", ["bench", "tests"])
def test_nothing_imports_the_tests_package_or_edits_sys_path(folder):
    """bench/ and tests/ reach shared code through ``ddk_testkit``; conftest files hold fixtures only."""
    bad = [f"{path.relative_to(REPO)}: {p}" for path in _python_files(folder) for p in _problems(path)]
    assert not bad, bad


def test_run_cli_names_a_missing_console_script():
    with pytest.raises(LookupError, match="pip install -e"):
        run_cli("ddk-no-such-command", [])


def test_dump_scanner_reads_a_complete_store(tmp_path):
    from ddk_store.testing import make_tiny_store

    make_tiny_store(str(tmp_path / "s"), train_rows=16, heldout_rows=4, unit_rows=4)
    st = dump_state(tmp_path / "s")
    assert (st.done, st.total, st.status, st.in_flight, st.partial_files) == (15, 15, "complete", [], 0)
    watch = DumpWatch(tmp_path / "s")
    assert watch.poll() == (15, 15, False) and watch.all_markers_written()
    assert dump_state(tmp_path / "absent").status == "absent"
