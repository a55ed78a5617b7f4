"""`ddk-teacher dump`: one option per Stage1Config field plus --config FILE (made by :mod:`ddk_store.settings`)."""

from __future__ import annotations

import click

from ddk_store import settings
from ddk_store.entry import CONTEXT_SETTINGS, EntryGroup, hide_library_progress_bars, main_entry, version_option
from ddk_store.errors import ConfigError
from ddk_store.storage import memory_note

from .assets.commands import builtin_corpus_cmd, builtin_teacher_cmd
from .config import Stage1Config

PROG = "ddk-teacher"


@click.group(name=PROG, cls=EntryGroup, context_settings=CONTEXT_SETTINGS)
@version_option(PROG)
def cli() -> None:
    """Stage 1 of ddk: dump a teacher's top-k log-probs over domain corpora into a ddk store (`pack` the corpora's
    token rows into it first on a CPU host if you like; `dump` packs whatever is not packed yet)."""


def check_device(cfg: Stage1Config) -> None:
    """``--device cuda`` on a machine without CUDA: refused before the store is touched or the teacher loaded."""
    if cfg.device == "cuda":
        import torch

        if problem := settings.device_problem("--device", cfg.device, torch.cuda.is_available()):
            raise ConfigError(problem)


@cli.command("dump")
@settings.options(Stage1Config)
def dump(**_: object) -> None:
    """Run the teacher over every domain of --corpora and write the store at --store (resumable, shardable).

    Settings: defaults < --config FILE < the flags typed here.
    """
    cfg = settings.from_command(Stage1Config)
    from .devices import multi_device

    if not multi_device(cfg, dump_one):  # --devices N > 1 or a torchrun rank: stage1_teacher/devices.py
        dump_one(cfg)


def dump_one(cfg: Stage1Config) -> None:
    """One process's dump (all of --shard I/N)."""
    check_device(cfg)
    if note := memory_note(cfg.store):
        click.echo(note, err=True)
    if not cfg.progress:
        hide_library_progress_bars()
    from .run import run

    run(cfg)


@cli.command("pack")
@settings.options(Stage1Config)
def pack(**_: object) -> None:
    """Read, tokenize and pack --corpora into --store's token rows, and stop (no teacher forward; resumable).

    A CPU host packs once; `ddk-teacher dump` with the same settings (on any host, any --shard) then scores the packed
    rows without reading the corpora again. The scoring flags are accepted and ignored.
    """
    cfg = settings.from_command(Stage1Config)
    if note := memory_note(cfg.store):
        click.echo(note, err=True)
    if not cfg.progress:
        hide_library_progress_bars()  # a hub tokenizer's download bars
    from .pack import run_pack

    run_pack(cfg, echo=lambda msg: click.echo(msg, err=True))


cli.add_command(builtin_teacher_cmd)
cli.add_command(builtin_corpus_cmd)


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``ddk-teacher``): a user error is one ``error: ...`` line and exit status 2."""
    main_entry(cli, PROG, argv)


if __name__ == "__main__":  # vLLM spawns worker processes that re-import __main__: keep this guard
    main()
