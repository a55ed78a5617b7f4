"""A console process that ends with a ddk error prints its one error line and nothing else, even when a library
left asynchronous work in flight (as zarr does when an object store goes away mid-write)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import asyncio, click
    from ddk_store.entry import main_entry
    from ddk_store.errors import ConfigError

    async def stuck():
        try:
            await asyncio.sleep(3600)
        finally:
            raise ConnectionRefusedError("connect call failed")  # what an abandoned S3 write raises when torn down

    @click.command()
    @click.option("--fail/--no-fail", default=True)
    def cli(fail):
        loop = asyncio.new_event_loop()
        loop.create_task(stuck())
        loop.run_until_complete(asyncio.sleep(0))  # the task is now suspended inside its try
        if fail:
            raise ConfigError("the object store is unreachable; rerun the same command to resume")

    main_entry(cli, "demo")
''')


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, timeout=120)


def test_an_error_exit_prints_one_line_and_no_abandoned_task_noise():
    proc = run()
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: the object store is unreachable; rerun the same command to resume"], proc.stderr


def test_a_successful_exit_keeps_pythons_own_reports():
    # The hooks are only quieted on the error path: elsewhere Python still reports abandoned work.
    proc = run("--no-fail")
    assert proc.returncode == 0
    assert "Task was destroyed but it is pending" in proc.stderr or "Exception ignored" in proc.stderr, proc.stderr
