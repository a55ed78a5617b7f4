"""The one entry wrapper of every ddk command, and the command-line pieces all of them share.

Every console script (``ddk-teacher``, ``ddk-student``, ``ddk-store``, the built-in asset builders) runs through
:func:`main_entry`, so a user's own mistake ends the same way everywhere: one ``error: ...`` line on stderr and
exit status 2, no traceback. Ctrl-C says that rerunning the same command resumes, or what else continues the work
(a command's own :class:`~ddk_store.errors.Interrupted`), and exits 130; SIGTERM does the same with exit 143, and
SIGHUP (a closed terminal or SSH session) with exit 129.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

import click

from ._version import __version__
from .allocator import tune_allocator
from .errors import ConfigError, DdkError, Interrupted

#: Exit status of a user error (bad flag, bad input, refused store): the same for every command.
EXIT_USER_ERROR = 2
#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130
#: Exit status after SIGTERM (128 + SIGTERM): a scheduler stopping the job.
EXIT_TERMINATED = 143
#: Exit status after SIGHUP (128 + SIGHUP): the terminal or SSH session the command ran in closed.
EXIT_HANGUP = 129
INTERRUPTED = "interrupted; rerun the same command to resume where it stopped"

#: click settings every command group uses.
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


def one_line(text: str) -> str:
    """Whitespace folded: a message printed by :func:`main_entry` is a single line."""
    return " ".join(text.split())


def main_entry(cli: click.Command, prog_name: str, argv: Sequence[str] | None = None) -> NoReturn:
    """Run a click command or group as a console script with ddk's error contract, then exit."""
    tune_allocator()
    with _signals_as_ctrl_c() as stopped_by:
        _run(cli, prog_name, argv, stopped_by)


def _run(cli: click.Command, prog_name: str, argv: Sequence[str] | None, stopped_by: list[int]) -> NoReturn:
    try:
        # Outside standalone mode click returns what ctx.exit(n) asked for (--help and --version: 0) instead of
        # raising Exit, and a command's own return value otherwise (every ddk command returns None).
        status = cli.main(args=list(argv) if argv is not None else None, prog_name=prog_name, standalone_mode=False)
    except (KeyboardInterrupt, click.exceptions.Abort) as e:
        cause = e.__cause__ if isinstance(e, click.exceptions.Abort) else e  # click wraps Ctrl-C in Abort
        advice = one_line(str(cause)) if isinstance(cause, Interrupted) and str(cause) else INTERRUPTED
        with contextlib.suppress(OSError):  # (after SIGHUP the terminal may be gone)
            click.echo(f"{prog_name}: {advice}", err=True)
        _quiet_shutdown(argv)
        sys.exit(_EXIT_AFTER.get(stopped_by[0], EXIT_INTERRUPTED))
    except click.exceptions.ClickException as e:  # usage errors: unknown flag, missing argument, bad choice
        e.show()
        sys.exit(EXIT_USER_ERROR if e.exit_code == 2 else e.exit_code)
    except DdkError as e:
        click.echo(f"error: {one_line(str(e))}", err=True)
        _quiet_shutdown(argv)
        sys.exit(EXIT_USER_ERROR)
    except MemoryError as e:  # numpy names the shape it could not allocate: sizes read from a file, or a host too small
        click.echo(f"error: out of memory ({one_line(str(e)) or 'no details'}): a size read from the inputs (a "
                   "store's row count, a flag) is larger than this host can hold; check the inputs and flags, or "
                   "run on a host with more memory", err=True)
        _quiet_shutdown(argv)
        sys.exit(EXIT_USER_ERROR)
    except OSError as e:
        if e.filename is None or e.errno not in _FILE_ERRNOS:
            raise  # not the user's filesystem refusing a path: a bug, with its traceback
        click.echo(f"error: {one_line(file_error(e))}", err=True)
        _quiet_shutdown(argv)
        sys.exit(EXIT_USER_ERROR)
    sys.exit(status if isinstance(status, int) and not isinstance(status, bool) else 0)


#: What a filesystem answers for a path the user gave that cannot be written or read (any command, any file).
_FILE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
                          errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP, errno.EEXIST})


def file_error(e: OSError) -> str:
    """One line for a filesystem error on a path: what, where, how to fix."""
    fix = {errno.ENOSPC: "free some space there", errno.EDQUOT: "free some space there (disk quota)",
           errno.EROFS: "give a writable location", errno.ELOOP: "a link stands there; remove it"}.get(
        e.errno, "check the path and its permissions, or give another location")
    return f"{e.filename}: {e.strerror or e}; {fix}"


#: The exit status after each signal that stops a command as Ctrl-C does.
_EXIT_AFTER = {signal.SIGTERM: EXIT_TERMINATED, signal.SIGHUP: EXIT_HANGUP}


@contextlib.contextmanager
def _signals_as_ctrl_c() -> Iterator[list[int]]:
    """While a command runs, SIGTERM (what SLURM or Kubernetes send before they kill a job) and SIGHUP (a closed
    terminal or SSH session) stop it as Ctrl-C does: the same cleanup (finally blocks remove half-built folders, a
    checkpoint being written completes) and the same advice, with exit status 143 or 129. Yields a list whose item
    becomes the signal's number once one arrived. A SIGHUP ignored by whoever started the command (``nohup``) stays
    ignored. Only in the main thread (where Python runs signal handlers); the previous handlers are restored
    afterwards, so a caller in the same interpreter keeps its own."""
    got = [0]
    if threading.current_thread() is not threading.main_thread():
        yield got
        return

    def on_signal(signum: int, frame: object) -> None:
        got[0] = signum
        raise KeyboardInterrupt

    previous = {sig: before for sig in _EXIT_AFTER for before in [signal.getsignal(sig)]
                if before is not None and (sig == signal.SIGTERM or before == signal.SIG_DFL)}
    for sig in previous:
        signal.signal(sig, on_signal)
    try:
        yield got
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before)


def _quiet_shutdown(argv: Sequence[str] | None) -> None:
    """After the one error line, keep the interpreter's exit quiet: I/O a library left in flight when the error struck
    (zarr's concurrent chunk writes to an unreachable object store) is torn down at exit, and Python would print each
    abandoned task and its traceback. Only in a console process (``argv`` None): a caller in the same interpreter
    (a test under CliRunner) keeps its hooks."""
    if argv is None:
        sys.unraisablehook = lambda _unraisable: None
        logging.getLogger("asyncio").disabled = True


class EntryGroup(click.Group):
    """A click group that runs through :func:`main_entry` however it is started standalone: as a console script
    (``group()``), as ``group.main(args=..., prog_name=...)``, or under click's ``CliRunner``, so a test sees what a
    user sees. ``main_entry`` itself calls ``main(standalone_mode=False)``, which is click's own."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        main_entry(self, prog_name or self.name or "ddk", args)


def version_option(prog_name: str):
    """``--version`` for a command group: prints ``<prog> <ddk version>``."""
    return click.version_option(__version__, "--version", prog_name=prog_name, message="%(prog)s %(version)s")


def parse_storage_options(pairs: Sequence[str], flag: str = "--storage-option") -> dict[str, Any]:
    """``KEY=VALUE`` pairs for fsspec/s3fs, e.g. ``endpoint_url=http://127.0.0.1:8333``.

    A VALUE that is a JSON object, array, number or boolean is decoded (``client_kwargs={"region_name": "x"}``);
    anything else stays a string.
    """
    opts: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} expects KEY=VALUE (e.g. endpoint_url=http://127.0.0.1:8333), got {pair!r}")
        try:
            decoded = json.loads(value)
        except ValueError:
            decoded = value
        opts[key.strip()] = decoded if isinstance(decoded, (dict, list, bool, int, float)) else value
    return opts


def storage_options_callback(flag: str = "--storage-option", *, none_when_empty: bool = False):
    """click callback: the flag's ``KEY=VALUE`` pairs as a dict; a malformed pair is a usage error of ``flag``.

    With ``none_when_empty``, a flag not given yields None (so a settings layer can tell "unset" from "empty").
    """
    def callback(ctx: click.Context, param: click.Parameter, pairs: Sequence[str]) -> dict[str, Any] | None:
        if none_when_empty and not pairs:
            return None
        try:
            return parse_storage_options(pairs, flag)
        except ConfigError as e:
            raise click.BadParameter(str(e).replace(f"{flag} ", "", 1), param_hint=flag) from None
    return callback


#: The storage option flag, identical on every command that opens a store; the command receives a dict.
storage_option = click.option(
    "--storage-option", "--storage-options", "storage_options", multiple=True, metavar="KEY=VALUE", callback=storage_options_callback(),
    help="Option for s3:// stores (repeatable), e.g. endpoint_url=http://127.0.0.1:8333; AWS_* environment "
         "variables are read as usual.")

#: The progress flag, identical on every long-running command.
progress_option = click.option("--progress/--no-progress", default=None,
                               help="Show progress bars on stderr [default: on].")


def hide_library_progress_bars() -> None:
    """``--no-progress``: hide the Hugging Face libraries' own bars (downloads, weight loading) as well.

    Their switch is an environment variable read when they are imported; when they already are (in-process
    callers), their runtime switch is flipped too. Nothing is imported here.
    """
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    for module, switch in (("huggingface_hub.utils", "disable_progress_bars"),
                           ("transformers.utils.logging", "disable_progress_bar")):
        if (loaded := sys.modules.get(module)) is not None:
            getattr(loaded, switch)()
