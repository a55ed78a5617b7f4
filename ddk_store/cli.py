"""`ddk-store info | verify | finalize | repair`: thin command-line wrappers over the reader, validator and writer."""

from __future__ import annotations

import json
import shlex
import sys
from typing import Any

import click

from . import spec
from .settings import looks_secret
from .encodings import get_encoding
from .entry import CONTEXT_SETTINGS, EntryGroup, storage_option, version_option
from .errors import DdkError, StoreCorruptError, StoreIOError, StoreNotFoundError
from .schema import MARKER_DONE_COL

PROG = "ddk-store"


def store_summary(url: str, storage_options: dict[str, Any]) -> dict[str, Any]:
    """What ``info`` shows. ``bytes_per_token`` is None until the store is complete (a partial store's bytes and
    positions do not belong together); ``units_written``/``units_total`` say how far its dump got."""
    from .reader import open_store
    from .retry import retry_call

    reader = open_store(url, storage_options=storage_options, allow_incomplete=True)
    meta = reader.meta
    total_bytes = reader.bytes_on_disk()
    complete = meta.status == spec.STATUS_COMPLETE
    domains = []
    total_tokens = units_written = units_total = 0
    for d in meta.domains:
        row = {"name": d.name, "documents": d.n_documents, "corpus_tokens": d.n_tokens,
               "teacher_heldout_nll": d.heldout_nll, "teacher_heldout_ppl": d.heldout_ppl}
        for split in spec.SPLITS:
            n = reader.num_rows(d.name, split)
            row[f"{split}_rows"] = n
            row[f"{split}_positions"] = n * meta.positions
            total_tokens += n * meta.positions
            units = reader.layout(d.name, split).num_units
            units_total += units
            if complete or not units:
                units_written += units
            else:
                markers = reader.arrays(d.name, split)[spec.ARR_UNITS]
                try:
                    done = retry_call(lambda: markers[:, MARKER_DONE_COL], what=f"reading {d.name}/{split} "
                                      "completion markers", url=url) == spec.UNIT_DONE
                except StoreIOError:  # an outage past the retry budget: not a count of zero
                    raise
                except ValueError:  # a damaged marker chunk (`verify` names it): count none of this group written
                    continue
                units_written += int(done.sum())
        domains.append(row)
    return {
        "url": url, "status": meta.status, "format_version": meta.format_version,
        "teacher": meta.teacher.to_dict(),
        "tokenizer": meta.tokenizer.to_dict(),
        "seq_len": meta.seq_len,
        "top_k": meta.top_k,
        "encoding": meta.encoding,
        # the sampled encoding's tail is estimated from its draws, like its entries: not exact
        "exact_tail": (enc := get_encoding(meta.encoding)).has_tail and not enc.sampled,
        "logprob_scale": meta.logprob_scale,
        "sampling": None if meta.sampling is None else meta.sampling.to_dict(),
        "positions": total_tokens,
        "bytes": total_bytes,
        "bytes_per_token": (total_bytes / total_tokens) if total_tokens and complete else None,
        "units_written": units_written,
        "units_total": units_total,
        "created_at": meta.created_at,
        "tool_version": meta.tool_version,
        "domains": domains,
    }


def packed_summary(url: str, storage_options: dict[str, Any]) -> dict[str, Any] | None:
    """What ``info`` shows of a location that holds only stage 1's packed rows (`ddk-teacher pack`, or a dump stopped
    before scoring): each domain's packed rows so far, and the command that goes on. None when nothing is packed."""
    from .packed import PACKED, PackedRows

    state = PackedRows(url, storage_options=storage_options, read_only=True).read_state()
    if state is None:
        return None
    domains, name = [], None
    try:  # (a document edited by hand: any part may be missing, or a list or text where an object belongs)
        seq_len = (state.get("identity") or {}).get("seq_len")
        for name, st in (state.get("domains") or {}).items():
            done = st.get("state") == PACKED
            domains.append({"name": name, "state": "packed" if done else "packing",
                            "train_rows": st["train_rows"] if done else st["cursor"]["rows"],
                            "heldout_rows": st["heldout_rows"]})
    except (KeyError, TypeError, AttributeError) as e:
        what = f"lacks {e}" if isinstance(e, KeyError) else f"has the wrong shape ({e})"
        raise StoreCorruptError(f"{url}: the packed rows' document {what}{f' for domain {name!r}' if name else ''} "
                                "(edited or damaged); delete the location and pack again") from None
    where = target(url, storage_options)
    next_step = (f"run `ddk-teacher dump` with the same settings and --store {where} to score them"
                 if domains and all(d["state"] == "packed" for d in domains) else
                 f"rerun the same `ddk-teacher pack` (or `ddk-teacher dump`) command with --store {where} to finish "
                 "packing")
    return {"url": url, "status": "packed", "seq_len": seq_len, "domains": domains, "next": next_step}


def _fmt(x: Any, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def target(url: str, storage_options: dict[str, Any] | None = None) -> str:
    """``url`` plus the plain ``--storage-option`` flags the user gave (an endpoint, say), shell-quoted, for a command
    to copy. Options whose name looks secret, and every structured one (``client_kwargs={...}`` may hold keys), are
    left out: they stay in the user's environment or command history only."""
    flags = [f" --storage-option {shlex.quote(f'{k}={v if isinstance(v, str) else json.dumps(v)}')}"
             for k, v in (storage_options or {}).items()
             if isinstance(v, (str, int, float, bool)) and not looks_secret(k)]
    return shlex.quote(url) + "".join(flags)


def unfinished_hint(url: str, units_missing: int, storage_options: dict[str, Any] | None = None) -> str:
    """What to do with a store whose dump has not finished: resume the dump, or finalize after sharded dumps."""
    where = target(url, storage_options)
    if units_missing:
        return (f"the dump is unfinished ({units_missing} unit(s) not written yet): rerun the same `ddk-teacher dump` "
                f"command to write them and finalize the store (after sharded dumps: rerun every --shard, then "
                f"`{PROG} finalize {where}`)")
    return f"every unit is written but the store was not finalized: run `{PROG} finalize {where}`"


@click.group(PROG, cls=EntryGroup, context_settings=CONTEXT_SETTINGS)
@version_option(PROG)
def main() -> None:
    """Inspect, verify and finalize ddk teacher-logit stores."""


@main.command()
@click.argument("url")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@storage_option
def info(url: str, as_json: bool, storage_options: dict[str, Any]) -> None:
    """Domains, sizes, teacher, tokenizer, k, bytes/token and teacher held-out perplexity of a store.

    A location that holds only packed rows (`ddk-teacher pack`, not scored yet) shows each domain's packed rows and
    the command that scores them (in JSON: status "packed", seq_len, domains, next).
    """
    try:
        s = store_summary(url, storage_options)
    except StoreNotFoundError:
        if (packed := packed_summary(url, storage_options)) is None:
            raise
        _print_packed(packed, as_json)
        return
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    t = s["teacher"]
    partial = s["status"] != spec.STATUS_COMPLETE
    state = f"{s['status']}: {s['units_written']} of {s['units_total']} units written" if partial else s["status"]
    click.echo(f"store      {s['url']}  ({state}, format {s['format_version']}, {s['tool_version']})")
    click.echo(f"teacher    {t['name']}  rev {t['revision'][:20]}  {t['dtype']}  {t['backend']} ({t['engine']})")
    tk = s["tokenizer"]
    click.echo(f"tokenizer  {tk['name']}  vocab {tk['vocab_size']}  {tk['fingerprint'][:23]}")
    tail = "exact tail stored" if s["exact_tail"] else "tail derived as 1 - top-k mass"
    how = f"1/{s['logprob_scale']} nat steps, {tail}"
    if s["encoding"] == spec.ENC_RANK_F16:
        how = f"float16 log-probs, {tail}"
    elif s["sampling"]:
        how = f"{s['sampling']['samples']} draws per position, seed {s['sampling']['seed']}"
    click.echo(f"layout     seq_len {s['seq_len']}  top_k {s['top_k']}  encoding {s['encoding']} ({how})")
    if partial:
        click.echo(f"size       {s['positions']:,} positions planned  {s['bytes']:,} bytes so far  (partial store: "
                   f"bytes/token once it is complete)")
        click.echo(f"next       {unfinished_hint(s['url'], s['units_total'] - s['units_written'], storage_options)}")
    else:
        bpt = _fmt(s["bytes_per_token"], 1)
        click.echo(f"size       {s['positions']:,} positions  {s['bytes']:,} bytes  {bpt} bytes/token")
    click.echo("")
    click.echo(f"{'domain':<16}{'train rows':>11}{'heldout rows':>13}{'positions':>12}{'teacher nll':>12}"
               f"{'teacher ppl':>12}")
    for d in s["domains"]:
        pos = d["train_positions"] + d["heldout_positions"]
        click.echo(f"{d['name']:<16}{d['train_rows']:>11}{d['heldout_rows']:>13}{pos:>12,}"
                   f"{_fmt(d['teacher_heldout_nll']):>12}{_fmt(d['teacher_heldout_ppl']):>12}")


def _print_packed(p: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(p, indent=2))
        return
    done = sum(d["state"] == "packed" for d in p["domains"])
    packing = len(p["domains"]) - done
    click.echo(f"store      {p['url']}  (packed rows only, not scored yet: {done} domain(s) packed"
               + (f", {packing} being packed" if packing else "") + ")")
    click.echo(f"layout     seq_len {p['seq_len']}")
    click.echo(f"next       {p['next']}")
    click.echo("")
    click.echo(f"{'domain':<16}{'train rows':>11}{'heldout rows':>13}  state")
    for d in p["domains"]:
        click.echo(f"{d['name']:<16}{d['train_rows']:>11}{d['heldout_rows']:>13}  {d['state']}")


@main.command()
@click.argument("url")
@storage_option
def verify(url: str, storage_options: dict[str, Any]) -> None:
    """Recompute every checksum and invariant; exit 1 naming each problem's domain, split, array and rows."""
    from .validate import STATUS_ISSUE, validate_store

    issues = validate_store(url, storage_options=storage_options)
    if not issues:
        click.echo(f"ok: {url} passes every checksum and invariant")
        return
    for line in _fail_lines(issues):
        click.echo(f"FAIL {line}", err=True)
    hints = []
    damaged, unwritten = any(i.unit is not None and not i.unwritten for i in issues), sum(i.unwritten for i in issues)
    if unwritten or (any(i.where == STATUS_ISSUE for i in issues) and not damaged):  # (damaged: repair, then dump)
        hints.append(unfinished_hint(url, unwritten, storage_options))
    if damaged:
        hints.append(f"`{PROG} repair {target(url, storage_options)}` marks the damaged units for rewriting by the "
                     "same dump command")
    if any(i.pack for i in issues):
        hints.append(f"`{PROG} repair {target(url, storage_options)}` deletes the damaged packed rows (readers "
                     "never use them)")
    click.echo(f"error: {len(issues)} problem(s) in {url} (first: {issues[0].where})"
               + "".join(f"; {h}" for h in hints), err=True)
    sys.exit(1)


def _fail_lines(issues: list[Any]) -> list[str]:
    """One line per problem, except units not written yet (an unfinished dump, not damage): one line per domain and
    split, with their count and ranges, so a store stopped early is not thousands of lines."""
    lines = [str(i) for i in issues if not i.unwritten]
    todo: dict[tuple[str, str], list[int]] = {}
    for i in issues:
        if i.unwritten and i.unit is not None:
            todo.setdefault(i.unit[:2], []).append(i.unit[2])
    for (dom, split), units in todo.items():
        lines.append(f"{dom}/{split}: {len(units)} unit(s) not written (no completion marker): units "
                     f"{_ranges(sorted(units))}")
    return lines


def _ranges(xs: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"``."""
    out, start = [], None
    for k, x in enumerate(xs):
        if start is None:
            start = x
        if k + 1 == len(xs) or xs[k + 1] != x + 1:
            out.append(f"{start}" if start == x else f"{start}-{x}")
            start = None
    return ", ".join(out)


@main.command()
@click.argument("url")
@storage_option
def finalize(url: str, storage_options: dict[str, Any]) -> None:
    """After sharded dumps: check every unit is present, record held-out stats, mark the store complete."""
    from .reader import open_store
    from .writer import StoreWriter

    meta = open_store(url, storage_options=storage_options, allow_incomplete=True).meta  # read-only: creates nothing
    writer = StoreWriter.resume(url, meta, storage_options=storage_options)
    if writer.complete:
        click.echo(f"{url} is already complete")
        return
    meta = writer.finalize()
    click.echo(f"finalized {url}: {len(meta.domains)} domains complete")


@main.command()
@click.argument("url")
@storage_option
def repair(url: str, storage_options: dict[str, Any]) -> None:
    """Verify, then clear the completion marker of every unit whose data is damaged so the dump rewrites it.

    Rerun the same `ddk-teacher dump` command afterwards: it rewrites only those units and finalizes the store.
    Teacher held-out statistics in the metadata that disagree with intact data are recomputed from it in place.
    Other problems outside unit data (array schema) cannot be repaired in place: the store must be re-dumped.
    """
    from .layout import Unit, unit_range
    from .location import PACK_PREFIX, delete_pack
    from .reader import StoreReader
    from .storage import open_zarr_store
    from .validate import STATUS_ISSUE, validate_store
    from .writer import StoreWriter

    try:  # no store here (or packed rows only): say so instead of suggesting a dump with --overwrite
        StoreReader(url, storage_options=storage_options, allow_incomplete=True)
    except StoreNotFoundError:
        raise
    except DdkError:
        pass  # verify below names it
    issues = validate_store(url, storage_options=storage_options)
    data = [i for i in issues if i.unit is not None and not i.unwritten]
    stats = [i for i in issues if i.where.startswith("metadata.domains[")]
    pack = [i for i in issues if i.pack]
    other = [i for i in issues if i.unit is None and i.where != STATUS_ISSUE and i not in stats and not i.pack]
    if other:
        for issue in other:
            click.echo(f"FAIL {issue}", err=True)
        raise StoreCorruptError(f"{url}: {len(other)} problem(s) outside unit data cannot be repaired in place; "
                                "delete the store (or give another --store) and rerun the `ddk-teacher dump` command that made it "
                                "(--overwrite does not replace a store of the same settings)")
    if pack:
        delete_pack(open_zarr_store(url, read_only=False, storage_options=storage_options), url)
        click.echo(f"deleted {PACK_PREFIX}: {pack[0]}" + (f" (and {len(pack) - 1} more)" if len(pack) > 1 else "")
                   + "; readers never use the packed rows, and the next `ddk-teacher dump` packs the corpora again")
        issues = [i for i in issues if not i.pack]
    writer = StoreWriter.resume(url, storage_options=storage_options)
    units = []
    for dom, split, index in sorted({i.unit for i in data}):
        lay = writer.layout(dom, split)
        units.append(Unit(dom, split, index, *unit_range(index, lay.n_rows, lay.unit_rows)))

    def done_or_unreadable(u: Unit) -> bool:
        try:
            return writer.is_done(u)
        except StoreIOError:
            raise
        except Exception:  # noqa: BLE001 - a damaged marker chunk (checksum mismatch): clearing it rewrites it
            return True

    # A finalized store resets every damaged unit, a lost marker's too: back to writing, the dump then rewrites it.
    lost = writer.meta.status == spec.STATUS_COMPLETE
    done_damaged = [u for u in units if lost or done_or_unreadable(u)]
    writer.reset_units(done_damaged)
    for u in done_damaged:
        click.echo(f"reset {u}")
    if done_damaged:
        click.echo(f"{len(done_damaged)} unit(s) marked for rewriting; rerun the same `ddk-teacher dump` command to "
                   "rewrite them and finalize the store (which also recomputes the teacher's held-out statistics)")
    elif stats and len(stats) == len(issues):
        writer.finalize()  # every unit intact: the statistics are recomputed from the stored held-out data
        for issue in stats:
            click.echo(f"recomputed {issue.where} (it {issue.what})")
        click.echo(f"{url}: the teacher's held-out statistics were rewritten from the stored data")
    elif any(i.unwritten for i in issues) or any(i.where == STATUS_ISSUE for i in issues):
        click.echo(f"nothing {'else ' if pack else ''}to repair in {url}: "
                   f"{unfinished_hint(url, sum(i.unwritten for i in issues), storage_options)}")
    else:
        click.echo(f"nothing {'else ' if pack else ''}to repair in {url}")


if __name__ == "__main__":
    main()
