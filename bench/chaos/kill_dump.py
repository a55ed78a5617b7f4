"""Kill campaign for `ddk-teacher dump`: SIGKILL at seeded moments, rerun the same command, compare with no kill.

Each trial starts a fresh dump of the tiny real teacher (ddk_testkit.models) over a 3-domain corpus as a real process,
kills it with SIGKILL at one moment of a seeded schedule, reruns the very same command to the end, and checks that the
store verifies and equals an uninterrupted dump array for array and in every metadata document (creation time and the
creator's claim token aside). Moments are drawn five ways:

  start     a fraction of the uninterrupted run's start-up (imports, corpus packing, store creation), from launch
  write     a fraction of the uninterrupted run's writing phase (scoring, chunks, markers, finalize), counted
            from the moment this run's store root appears (so kills land in the work even on a loaded machine)
  marker    right after the k-th unit marker appears in the store directory
  chunk     while a unit's chunks are being written but its marker is not, after >= k markers
  finalize  once every marker file is in place: held-out statistics, the root rewrite, the summary

The "on disk after the kill" column is what the kill actually left: units done, whether a unit was caught mid-write
(data chunks without a marker) and temp files of a chunk write cut short.

    .venv/bin/python bench/chaos/kill_dump.py [--kills 20] [--seed 0] [--docs 600] [--work DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ddk_testkit.commands import dump_argv
from ddk_testkit.corpora import write_corpus
from ddk_testkit.kills import dump_kill_chain, dump_schedule, format_table, time_reference_dump
from ddk_testkit.models import build_tiny_teacher
from ddk_testkit.snapshots import store_snapshot
from ddk_testkit.watch import dump_state
from ddk_testkit.workdirs import work_dir


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--docs", type=int, default=600, help="documents per domain (600: about 190 units)")
    ap.add_argument("--work", type=Path, default=None, help="working directory, kept (default: a temporary one, removed at the end)")
    args = ap.parse_args()
    with work_dir(args.work, "ddk-kill-dump-") as work:
        return campaign(args, work)


def campaign(args: argparse.Namespace, work: Path) -> int:
    teacher, corpora = build_tiny_teacher(work / "teacher"), write_corpus(work / "corpus", n_docs=args.docs)

    times = time_reference_dump(dump_argv(teacher, corpora, work / "reference"), work / "reference")
    reference = store_snapshot(str(work / "reference"))
    total = dump_state(work / "reference").total
    print(f"reference: uninterrupted dump of {total} units: start-up {times.startup:.1f} s, writing "
          f"{times.work:.1f} s (wall)")

    results = []
    for i, moment in enumerate(dump_schedule(args.seed, args.kills, total)):
        store = work / f"trial{i:02d}"
        (r,) = dump_kill_chain(dump_argv(teacher, corpora, store), store, [moment], reference, times)
        results.append(r)
        print(f"  kill {i + 1:>2}: {r.moment:<28} {r.at_kill:<58} {r.outcome}  ({r.seconds:.0f} s)", flush=True)

    print()
    print(format_table(f"kill_dump: {args.kills} SIGKILLs of `ddk-teacher dump` (seed {args.seed}, {total} units)",
                       results))
    fired = sum(r.fired for r in results)
    same = sum(r.identical for r in results)
    mid_unit = sum("mid-unit" in r.at_kill for r in results)
    temp = sum("temp chunk" in r.at_kill for r in results)
    finalize = sum(r.at_kill.startswith(f"{total}/{total}") for r in results)
    print()
    print(f"summary: {args.kills} kills tried, {fired} delivered to a live dump, {same}/{args.kills} resumed to a store "
          f"identical to the uninterrupted one and valid; {mid_unit} caught a unit mid-write, {temp} left temp chunk "
          f"files, {finalize} hit after the last marker (finalize)")
    return 0 if same == args.kills else 1


if __name__ == "__main__":
    sys.exit(main())
