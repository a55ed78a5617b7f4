"""`ddk-store info | verify | finalize | repair`: thin command-line wrappers over the reader, validator and writer."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from . import spec
from .errors import DdkError, StoreCorruptError
from .retry import retry_call
from .storage import open_zarr_store


def parse_storage_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``key=value`` pairs (repeatable --storage-option) for fsspec, e.g. endpoint_url=http://127.0.0.1:8333."""
    opts: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--storage-option")
        key, value = pair.split("=", 1)
        opts[key.strip()] = value
    return opts


storage_option = click.option("--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE",
                              help="fsspec/s3fs option for s3:// URLs (repeatable), e.g. endpoint_url=http://127.0.0.1:8333")


def run_cli(fn, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; a DdkError becomes one 'error:' line on stderr and exit status 2 (no traceback)."""
    try:
        return fn(*args, **kwargs)
    except DdkError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)


def store_summary(url: str, storage_options: dict[str, Any]) -> dict[str, Any]:
    from .reader import open_store

    reader = open_store(url, storage_options=storage_options, allow_incomplete=True)
    meta = reader.meta
    total_bytes = reader.bytes_on_disk()
    domains = []
    total_tokens = 0
    for d in meta.domains:
        row = {"name": d.name, "documents": d.n_documents, "corpus_tokens": d.n_tokens,
               "teacher_heldout_nll": d.heldout_nll, "teacher_heldout_ppl": d.heldout_ppl}
        for split in spec.SPLITS:
            n = reader.num_rows(d.name, split)
            row[f"{split}_rows"] = n
            row[f"{split}_positions"] = n * meta.positions
            total_tokens += n * meta.positions
        domains.append(row)
    return {
        "url": url,
        "status": meta.status,
        "format_version": meta.format_version,
        "teacher": meta.teacher.to_dict(),
        "tokenizer": meta.tokenizer.to_dict(),
        "seq_len": meta.seq_len,
        "top_k": meta.top_k,
        "encoding": meta.encoding,
        "logprob_scale": meta.logprob_scale,
        "positions": total_tokens,
        "bytes": total_bytes,
        "bytes_per_token": (total_bytes / total_tokens) if total_tokens else None,
        "created_at": meta.created_at,
        "tool_version": meta.tool_version,
        "domains": domains,
    }


def _fmt(x: Any, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Inspect, verify and finalize ddk teacher-logit stores."""


@main.command()
@click.argument("url")
@click.option("--json", "as_json", is_flag=True, help="print machine-readable JSON")
@storage_option
def info(url: str, as_json: bool, storage_options: tuple[str, ...]) -> None:
    """Domains, sizes, teacher, tokenizer, k, bytes/token and teacher held-out perplexity of a store."""
    s = run_cli(store_summary, url, parse_storage_options(storage_options))
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    t = s["teacher"]
    click.echo(f"store      {s['url']}  ({s['status']}, format {s['format_version']}, {s['tool_version']})")
    click.echo(f"teacher    {t['name']}  rev {t['revision'][:20]}  {t['dtype']}  {t['backend']} ({t['engine']})")
    tk = s["tokenizer"]
    click.echo(f"tokenizer  {tk['name']}  vocab {tk['vocab_size']}  {tk['fingerprint'][:23]}")
    click.echo(f"layout     seq_len {s['seq_len']}  top_k {s['top_k']}  encoding {s['encoding']} (1/{s['logprob_scale']} nat)")
    bpt = _fmt(s["bytes_per_token"], 1)
    click.echo(f"size       {s['positions']:,} positions  {s['bytes']:,} bytes  {bpt} bytes/token")
    click.echo("")
    click.echo(f"{'domain':<16}{'train rows':>11}{'heldout rows':>13}{'positions':>12}{'teacher nll':>12}{'teacher ppl':>12}")
    for d in s["domains"]:
        pos = d["train_positions"] + d["heldout_positions"]
        click.echo(f"{d['name']:<16}{d['train_rows']:>11}{d['heldout_rows']:>13}{pos:>12,}"
                   f"{_fmt(d['teacher_heldout_nll']):>12}{_fmt(d['teacher_heldout_ppl']):>12}")


@main.command()
@click.argument("url")
@storage_option
def verify(url: str, storage_options: tuple[str, ...]) -> None:
    """Recompute every checksum and invariant; exit 1 naming each problem's domain, split, array and rows."""
    from .validate import validate_store

    issues = run_cli(validate_store, url, storage_options=parse_storage_options(storage_options))
    if issues:
        for issue in issues:
            click.echo(f"FAIL {issue}", err=True)
        hint = (f"; `ddk-store repair {url}` marks the damaged units for rewriting by the same dump command"
                if any(i.unit is not None for i in issues) else "")
        click.echo(f"error: {len(issues)} problem(s) in {url} (first: {issues[0].where}){hint}", err=True)
        sys.exit(1)
    click.echo(f"ok: {url} passes every checksum and invariant")


@main.command()
@click.argument("url")
@storage_option
def finalize(url: str, storage_options: tuple[str, ...]) -> None:
    """After sharded dumps: check every unit is present, record held-out stats, mark the store complete."""
    from .groups import read_root_doc, root_meta_from_doc
    from .writer import StoreWriter

    def _finalize() -> None:
        opts = parse_storage_options(storage_options)
        zstore = open_zarr_store(url, read_only=True, storage_options=opts)
        doc = retry_call(lambda: read_root_doc(zstore, url), what="reading the root metadata", url=url)
        if doc is None:
            from .errors import StoreNotFoundError

            raise StoreNotFoundError(f"no ddk store at {url}")
        meta = root_meta_from_doc(doc, url)
        writer = StoreWriter.resume(url, meta, storage_options=opts)
        if writer.complete:
            click.echo(f"{url} is already complete")
            return
        meta = writer.finalize()
        click.echo(f"finalized {url}: {len(meta.domains)} domains complete")

    run_cli(_finalize)


@main.command()
@click.argument("url")
@storage_option
def repair(url: str, storage_options: tuple[str, ...]) -> None:
    """Verify, then clear the completion marker of every unit whose data is damaged so the dump rewrites it.

    Rerun the same `ddk-teacher dump` command afterwards: it rewrites only those units and finalizes the store.
    Problems outside unit data (metadata, array schema) cannot be repaired in place: the store must be re-dumped.
    """
    from .layout import Unit, unit_range
    from .validate import validate_store
    from .writer import StoreWriter

    def _repair() -> int:
        opts = parse_storage_options(storage_options)
        issues = validate_store(url, storage_options=opts)
        data = [i for i in issues if i.unit is not None]
        other = [i for i in issues if i.unit is None and not i.where.startswith("metadata.status")
                 and not i.where.startswith("metadata.domains[")]
        if other:
            for issue in other:
                click.echo(f"FAIL {issue}", err=True)
            raise StoreCorruptError(f"{url}: {len(other)} problem(s) outside unit data cannot be repaired in place; "
                                    "dump the store again (ddk-teacher dump ... --overwrite)")
        writer = StoreWriter.resume(url, storage_options=opts)
        damaged = sorted({i.unit for i in data})
        units = []
        for dom, split, index in damaged:
            lay = writer.layout(dom, split)
            units.append(Unit(dom, split, index, *unit_range(index, lay.n_rows, lay.unit_rows)))
        done_damaged = [u for u in units if writer.is_done(u)]
        writer.reset_units(done_damaged)
        for u in done_damaged:
            click.echo(f"reset {u}")
        return len(done_damaged)

    n = run_cli(_repair)
    if n:
        click.echo(f"{n} unit(s) marked for rewriting; rerun the same `ddk-teacher dump` command to rewrite them "
                   "and finalize the store")
    else:
        click.echo(f"nothing to repair in {url}")


if __name__ == "__main__":
    main()
