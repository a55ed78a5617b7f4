"""Kill campaign for `ddk-student train --resume`: SIGKILL at seeded moments, resume, compare with no kill (CPU).

Each trial starts a fresh training run of a tiny real student (ddk_testkit.models) on a tiny store as a real process,
kills it with SIGKILL at one moment of a seeded schedule, reruns the same command with --resume to the end, and
checks that metrics.jsonl holds the identical trajectory (every step's loss, ce, kl, lr and grad norm; every
interval's perplexities, ratios and weights; wall-clock throughput aside) and that the final parameters are
bit-identical to an uninterrupted run. Moments are drawn five ways:

  start  a fraction of the uninterrupted run's start-up (imports, store checks, student load, first evaluation)
  train  a fraction of the uninterrupted run's training phase, counted from this run's first metrics line
  step   right after the n-th step line appears in metrics.jsonl
  ckpt   while a checkpoint directory is being written (step-XXXXXXXX.tmp exists), after >= n steps
  final  after the final evaluation line: the process is exporting the model and writing its last checkpoint

    .venv/bin/python bench/chaos/kill_train.py [--kills 20] [--seed 0] [--steps 200] [--work DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ddk_testkit.commands import train_argv
from ddk_testkit.kills import format_table, time_reference_run, train_kill_chain, train_schedule
from ddk_testkit.stores import student_and_store
from ddk_testkit.workdirs import work_dir


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--work", type=Path, default=None, help="working directory, kept (default: a temporary one, removed at the end)")
    args = ap.parse_args()
    with work_dir(args.work, "ddk-kill-train-") as work:
        return campaign(args, work)


def campaign(args: argparse.Namespace, work: Path) -> int:

    student, store_dir = student_and_store(work, train_rows=64, heldout_rows=8)
    store = str(store_dir)
    interval = min(20, max(1, args.steps // 2))  # a DDK interval must end before the run does
    flags = dict(steps=args.steps, interval=interval, batch_size=4, lr=3e-3, seed=0, eval_batch_size=4, save_every=7,
                 log_every=1, device="cpu")

    times = time_reference_run(train_argv(store, student, work / "reference", **flags), work / "reference")
    print(f"reference: uninterrupted run of {args.steps} steps: start-up {times.startup:.1f} s, training "
          f"{times.work:.1f} s (wall)")

    results = []
    for i, moment in enumerate(train_schedule(args.seed, args.kills, args.steps)):
        out = work / f"trial{i:02d}"
        (r,) = train_kill_chain(train_argv(store, student, out, **flags), out, [moment], work / "reference", times)
        results.append(r)
        print(f"  kill {i + 1:>2}: {r.moment:<28} {r.progress:<10} {r.at_kill:<50} {r.outcome}  ({r.seconds:.0f} s)",
              flush=True)

    print()
    print(format_table(f"kill_train: {args.kills} SIGKILLs of `ddk-student train` (seed {args.seed}, "
                       f"{args.steps} steps, checkpoints every 7 steps and every {interval}-step interval)", results))
    fired = sum(r.fired for r in results)
    same = sum(r.identical for r in results)
    mid_ckpt = sum("checkpoint .tmp" in r.at_kill for r in results)
    final = sum("final line" in r.at_kill for r in results)
    print()
    print(f"summary: {args.kills} kills tried, {fired} delivered to a live run, {same}/{args.kills} resumed to an "
          f"identical loss trajectory and bit-identical parameters; {mid_ckpt} left a half-written checkpoint, "
          f"{final} hit during the final export")
    return 0 if same == args.kills else 1


if __name__ == "__main__":
    sys.exit(main())
