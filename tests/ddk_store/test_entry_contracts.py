"""The entry wrapper of every console script (ddk_store.entry; campaign 18): one `error:` line and exit status 2 for
a user's mistake, the advice after Ctrl-C, the signal handlers it installs and restores, and storage options.

Small click commands declared here go through the real main_entry (in this process where it can, in a child
process where the interpreter's exit is what is checked)."""

from __future__ import annotations

import errno
import signal
import subprocess
import sys
import textwrap
import threading

import click
import pytest

from ddk_store import entry
from ddk_store.errors import ConfigError, Interrupted


def run_entry(fn, capsys, argv=(), prog="demo"):
    """main_entry on a command whose body is ``fn``: (exit status, stderr lines)."""
    @click.command()
    def cli() -> None:
        fn()

    with pytest.raises(SystemExit) as e:
        entry.main_entry(cli, prog, list(argv))
    return e.value.code, capsys.readouterr().err.splitlines()


def raises(exc):
    def fn():
        raise exc
    return fn


def test_a_ddk_error_is_one_line_with_status_2(capsys):
    code, err = run_entry(raises(ConfigError("--x is wrong:\n    give a number\tinstead")), capsys)
    assert (code, err) == (2, ["error: --x is wrong: give a number instead"])


def test_out_of_memory_is_one_line_that_says_what_to_check(capsys):
    code, err = run_entry(raises(MemoryError("Unable to allocate 8.0 TiB for an array with shape (1 << 40,)")), capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: out of memory (Unable to allocate 8.0 TiB for an array with shape (1 << 40,)): ")
    assert "check the inputs and flags, or run on a host with more memory" in err[0]
    code, err = run_entry(raises(MemoryError()), capsys)
    assert code == 2 and err[0].startswith("error: out of memory (no details): ")


@pytest.mark.parametrize("number, fix", [
    (errno.ENOSPC, "free some space there"), (errno.EROFS, "give a writable location"),
    (errno.ELOOP, "a link stands there; remove it"),
    (errno.EEXIST, "check the path and its permissions, or give another location")])
def test_a_path_the_filesystem_refuses_is_one_line_with_the_fix(capsys, number, fix):
    code, err = run_entry(raises(OSError(number, "refused by the filesystem", "/data/out")), capsys)
    assert (code, err) == (2, [f"error: /data/out: refused by the filesystem; {fix}"])


def test_a_filesystem_error_without_a_path_is_a_bug_with_its_traceback(capsys):
    with pytest.raises(PermissionError):
        run_entry(raises(PermissionError(errno.EACCES, "Permission denied")), capsys)
    e = OSError(errno.EACCES, None)
    e.filename = "/data/out"
    assert entry.file_error(e) == (f"/data/out: {e}; check the path and its permissions, or give another location")


def test_another_click_error_keeps_its_own_exit_status(capsys):
    code, err = run_entry(raises(click.ClickException("cannot go on")), capsys)
    assert (code, err) == (1, ["Error: cannot go on"])
    code, err = run_entry(raises(click.UsageError("bad usage")), capsys)
    assert code == 2 and "Error: bad usage" in err


def test_ctrl_c_gives_the_commands_own_advice_else_how_to_resume(capsys):
    code, err = run_entry(raises(Interrupted("stopped after unit 3;\n  run `ddk-store finalize S` to finish")), capsys)
    assert code == 130 and err[-1] == "demo: stopped after unit 3; run `ddk-store finalize S` to finish"
    code, err = run_entry(raises(Interrupted("")), capsys)
    assert code == 130 and err[-1] == "demo: " + entry.INTERRUPTED
    code, err = run_entry(raises(KeyboardInterrupt()), capsys)
    assert code == 130 and err[-1] == "demo: " + entry.INTERRUPTED


def test_the_signal_handlers_are_restored_and_a_caller_keeps_its_hooks(capsys):
    def mine(signum, frame):  # a caller's own handler
        pass

    before = signal.signal(signal.SIGTERM, mine)
    hook = sys.unraisablehook
    try:
        code, _ = run_entry(raises(ConfigError("x")), capsys)
        assert code == 2 and signal.getsignal(signal.SIGTERM) is mine
        assert sys.unraisablehook is hook  # only a console process (argv None) quiets the interpreter's exit
    finally:
        signal.signal(signal.SIGTERM, before)


def test_main_entry_runs_in_a_thread_other_than_the_main_one(capsys):
    out = {}

    def target():
        try:
            run_entry(lambda: click.echo("ran"), capsys)
        except BaseException as e:  # (pytest.raises inside run_entry: SystemExit(0) expected)
            out["error"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join(120)
    assert "error" not in out, out


def test_an_entry_group_names_itself_in_its_messages(capsys):
    @click.group(cls=entry.EntryGroup)
    def tool() -> None:
        pass

    @tool.command()
    def work() -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as e:
        tool.main(args=["work"], prog_name="ddk-demo")
    assert e.value.code == 130 and capsys.readouterr().err.splitlines()[-1] == "ddk-demo: " + entry.INTERRUPTED


SCRIPT = textwrap.dedent('''
    import asyncio, signal, click
    from ddk_store.entry import main_entry

    async def stuck():
        try:
            await asyncio.sleep(3600)
        finally:
            raise ConnectionRefusedError("connect call failed")  # an abandoned S3 write torn down at exit

    @click.command()
    def cli():
        loop = asyncio.new_event_loop()
        loop.create_task(stuck())
        loop.run_until_complete(asyncio.sleep(0))
        signal.raise_signal(signal.SIGTERM)  # a scheduler stopping the job

    main_entry(cli, "demo")
''')


def test_sigterm_ends_with_143_the_advice_and_no_abandoned_task_noise():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 143
    assert [ln for ln in proc.stderr.splitlines() if ln.strip()] == ["demo: " + entry.INTERRUPTED], proc.stderr


# ----------------------------------------------------------------------------------------------- storage options
def test_storage_options_decode_json_values_and_refuse_pairs_without_a_key():
    assert entry.parse_storage_options([" endpoint_url =http://h:1", "timeout=1.5", "retries=3", "ssl=false",
                                        "client_kwargs={\"region_name\": \"x\"}", "name=abc"]) == {
        "endpoint_url": "http://h:1", "timeout": 1.5, "retries": 3, "ssl": False,
        "client_kwargs": {"region_name": "x"}, "name": "abc"}
    for bad in ("=x", " =x", "novalue"):
        with pytest.raises(ConfigError, match=r"--storage-option expects KEY=VALUE .*got '"):
            entry.parse_storage_options([bad])


def test_the_storage_option_flag_gives_a_dict_and_names_itself_once_in_a_usage_error():
    @click.command()
    @entry.storage_option
    def cli(storage_options) -> None:
        click.echo(repr(storage_options))

    from click.testing import CliRunner

    assert CliRunner().invoke(cli, []).output == "{}\n"
    res = CliRunner().invoke(cli, ["--storage-option", "oops"])
    assert res.exit_code == 2
    assert "Invalid value for --storage-option: expects KEY=VALUE" in " ".join(res.output.split()), res.output


@pytest.mark.parametrize("code", [0, 3])
def test_a_commands_own_exit_status_is_the_processs(capsys, code):
    """ctx.exit(n) inside a command ends the process with n (click returns it outside standalone mode; an entry that
    dropped it would exit 0 after a command asked for 3)."""
    @click.command()
    @click.pass_context
    def cli(ctx: click.Context) -> None:
        ctx.exit(code)

    with pytest.raises(SystemExit) as e:
        entry.main_entry(cli, "demo", [])
    assert e.value.code == code


def test_help_exits_0_and_a_commands_return_value_is_not_an_exit_status(capsys):
    @click.command()
    def cli() -> object:
        return {"rows": 3}

    for argv in (["--help"], []):
        with pytest.raises(SystemExit) as e:
            entry.main_entry(cli, "demo", argv)
        assert e.value.code == 0, argv
