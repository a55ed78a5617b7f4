"""Children and console scripts: the repository root, child environments, spawning, reaping, in-process runs."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import traceback
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, NamedTuple

#: The repository root (this folder is tests/kit); every child process runs from here.
REPO = Path(__file__).resolve().parents[2]
#: Marks a ddk check's error line (``main_entry`` prints it); click's own parameter errors print ``Error:``.
ERROR_PREFIX = "error:"
USAGE_PREFIX = "Error:"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    """Environment of every child process: this repo importable, one BLAS thread (determinism, 2-core machines)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["TQDM_DISABLE"] = "1"
    env.update(extra)
    return env


def spawn(module: str, argv: list[str], env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen:
    """Start ``python -m module argv...`` as a real process (stdout dropped, stderr captured as text by default)."""
    kw.setdefault("stdout", subprocess.DEVNULL)
    kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([sys.executable, "-m", module, *argv], cwd=REPO, env=env or child_env(), text=True, **kw)


def run_process(module: str, argv: list[str], env: dict[str, str] | None = None, timeout: float = 600,
                check: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m module argv...`` to the end in a fresh interpreter; ``check``: a non-zero exit fails."""
    proc = subprocess.run([sys.executable, "-m", module, *argv], cwd=REPO, env=env or child_env(), text=True,
                          capture_output=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"python -m {module} {' '.join(argv)} failed ({proc.returncode}):\n"
                             f"{proc.stderr[-3000:]}")
    return proc


@contextlib.contextmanager
def reaped(proc: subprocess.Popen):
    """``with reaped(spawn(...)) as proc:``: however the block ends, the child is not left running."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def last_error_lines(stderr: str) -> list[str]:
    """The ``error: ...`` lines of a command's output."""
    return [ln for ln in stderr.splitlines() if ln.startswith(ERROR_PREFIX)]


class CliResult(NamedTuple):
    """What a user sees: the exit status and everything printed (stdout then stderr, or a traceback).

    A tuple, so ``code, output = run_cli(...)`` works too.
    """

    code: int
    output: str

    def lines_starting(self, prefix: str) -> list[str]:
        return [ln for ln in self.output.splitlines() if ln.startswith(prefix)]


def run_cli(cli: str, argv: list[str]) -> CliResult:
    """Run the console script ``cli`` (``ddk-teacher``, ``ddk-student``, ``ddk-store``...) in-process, as the shell
    would: its installed entry point is called with ``sys.argv`` set; an uncaught exception prints its traceback and
    exits 1, as the interpreter does."""
    found = list(entry_points(group="console_scripts", name=cli))
    if not found:
        raise LookupError(f"no console script {cli!r} is installed: run `pip install -e .` in the repository")
    main = found[0].load()
    out, err = io.StringIO(), io.StringIO()
    code = 0
    saved_argv = sys.argv
    sys.argv = [cli, *argv]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if isinstance(e.code, str):
                    err.write(e.code + "\n")
            except Exception:  # what the interpreter prints for an uncaught exception
                traceback.print_exc(file=err)
                code = 1
    finally:
        sys.argv = saved_argv
    return CliResult(code, out.getvalue() + err.getvalue())
