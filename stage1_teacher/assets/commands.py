"""`ddk-teacher builtin-teacher` and `ddk-teacher builtin-corpus`: the click commands that build the built-in assets.

Registered on the ``ddk-teacher`` group by :mod:`stage1_teacher.cli`; they run through
:func:`ddk_store.entry.main_entry` like every ddk command (a DdkError is one ``error: ...`` line and exit 2). Each
prints the path of what it built on stdout (and its progress on stderr), so a script can capture it.
"""

from __future__ import annotations

import click

from .corpus import DEFAULT_MAX_MB, DOMAINS, build_corpus
from .teacher import build_smollm2_teacher


@click.command("builtin-teacher")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Directory for the teacher [default: $DDK_CACHE/teacher/smollm2-135m].")
@click.option("--force", is_flag=True, help="Rebuild even when a complete copy is already there.")
def builtin_teacher_cmd(out_dir: str | None, force: bool) -> None:
    """Convert the bundled SmolLM2-135M-Instruct GGUF into a Hugging Face directory (once); print its path."""
    click.echo(str(build_smollm2_teacher(out_dir, force=force)))


@click.command("builtin-corpus")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Output directory [default: $DDK_CACHE/corpus].")
@click.option("--max-mb", type=float, default=DEFAULT_MAX_MB, show_default=True,
              help="Size cap per domain in MB; 0 = no cap.")
@click.option("--domains", default=",".join(DOMAINS), show_default=True,
              help="Comma-separated subset of the domains.")
@click.option("--relative-paths", is_flag=True, help="Write paths relative to CORPORA.yaml instead of absolute.")
@click.option("--no-install", is_flag=True, help="Never run apt-get; fail naming what is missing.")
@click.option("--force", is_flag=True, help="Rebuild even if the same corpus is already there.")
def builtin_corpus_cmd(out_dir: str | None, max_mb: float, domains: str, relative_paths: bool, no_install: bool,
                       force: bool) -> None:
    """Build the six-domain default corpus from Debian packages and the Python standard library; print the path of
    its CORPORA.yaml."""
    path = build_corpus(out_dir, max_mb=max_mb, domains=[d.strip() for d in domains.split(",") if d.strip()],
                        relative_paths=relative_paths, install=not no_install, force=force)
    click.echo(str(path))

