"""A console command stopped by a signal: SIGHUP (a closed terminal or SSH session) ends it as Ctrl-C and SIGTERM do
(finally blocks run, so a half-built folder is removed; exit 129), unless whoever started it ignored SIGHUP, as
`nohup` does: then it runs on."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

SCRIPT = textwrap.dedent('''
    import sys, time, click
    from pathlib import Path
    from ddk_store.entry import main_entry

    @click.command()
    @click.argument("work")
    def cli(work):
        half = Path(work) / "half-built"
        half.mkdir()
        try:
            (Path(work) / "started").touch()
            for _ in range(100):
                time.sleep(0.05)
        finally:
            half.rmdir()  # the cleanup a half-built folder gets
        (Path(work) / "finished").touch()

    main_entry(cli, "demo")
''')


def start(work: Path, *, ignore_hup: bool) -> subprocess.Popen:
    def preexec() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN if ignore_hup else signal.SIG_DFL)

    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(work)], stderr=subprocess.PIPE, text=True,
                            preexec_fn=preexec)
    deadline = time.monotonic() + 60
    while not (work / "started").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
        time.sleep(0.02)
    return proc


def test_sighup_stops_a_command_as_ctrl_c_does_with_exit_129(tmp_path):
    proc = start(tmp_path, ignore_hup=False)
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(timeout=60) == 129, proc.stderr.read()
    assert proc.stderr.read().strip() == "demo: interrupted; rerun the same command to resume where it stopped"
    assert not (tmp_path / "half-built").exists() and not (tmp_path / "finished").exists()


def test_a_command_started_under_nohup_runs_on_after_sighup(tmp_path):
    proc = start(tmp_path, ignore_hup=True)
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    assert (tmp_path / "finished").exists()
