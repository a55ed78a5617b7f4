"""Import discipline: ddk_store is light, and the stages depend one way on it (import-linter contracts)."""

import subprocess
import sys
from pathlib import Path

from ddk_testkit.processes import REPO


def test_ddk_store_imports_no_deep_learning_stack():
    code = ("import sys, ddk_store, ddk_store.cli, ddk_store.validate, ddk_store.testing; "
            "bad = [m for m in ('torch', 'transformers', 'vllm', 'datasets') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stdout + res.stderr


def test_import_linter_contracts_hold():
    exe = Path(sys.executable).with_name("lint-imports")
    res = subprocess.run([str(exe)], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout
