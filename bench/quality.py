"""DDK against its baselines, measured: same store, same student start, same token budget, three seeds.

Arms (the paper's Table 5 sampling ablations plus the two baselines):

  ce       cross-entropy only (--gamma 0), natural mixture         the continued-pretraining baseline
  kd       CE + 0.2 KL, natural mixture                            plain KD
  es       CE + 0.2 KL, uniform mixture                            "DDK with equal sampling"
  wo-fs    CE + 0.2 KL, Eq. 1 every interval                       DDK without factor smoothing
  ddk      CE + 0.2 KL, Eq. 1 then Eq. 2 (alpha 0.5)               DDK
  ddk-cap  as ddk, with --max-epochs-per-domain 5                  DDK + the data-aware cap (beyond the paper)
  ddk-cap@E  as ddk-cap, with --max-epochs-per-domain E            the cap at another E (not run by default)
  es-cap@E   as es, with --max-epochs-per-domain E                 the cap without DDK's weights (not run by default)
  kd@ENC   as kd, from a store dumped with --encoding ENC          one arm per encoding (not run by default);
           kd@topk-sampled: N = --samples draws per position      "kd" itself is KD from the default encoding

Pipeline (each step is skipped when its output already exists, so an interrupted run resumes; a finished run whose
config.yaml holds other settings than these arguments ask for, another --steps say, is trained again, and a warm-up of
other settings is refused; an arm's run that fails leaves NAME.failed beside its log, which the tables name, and is
trained again by the next call):
  1. the built-in corpus, teacher and layer-subset student, with the commands `make demo` (examples/demo.sh) runs:
     `ddk-teacher builtin-corpus`, `ddk-teacher builtin-teacher`, `ddk-student init`;
  2. one store: `ddk-teacher dump` of every domain (seq --seq-len, top-64, --heldout held-out rows per domain);
  3. a shared warm-up of the raw 6-layer student (--warmup-steps of CE on the natural mixture). A student cut from
     6 of the teacher's 30 layers starts with a held-out perplexity in the millions, far from the paper's setting,
     where the students are trained language models; every arm starts from this warmed-up student;
  4. every arm x seed for --steps optimizer steps, --jobs runs at a time;
  5. tables (results_tables.md) into --out; plots beside the page named by --results (docs/results.md ->
     docs/results/*.png), or into --out/figures when --results is not given (a run without it never replaces a committed figure).

Usage: python bench/quality.py [--steps 240 --interval 20 --seeds 0,1,2 --jobs 2]   (hours on 2 CPU cores)
       python bench/quality.py --report-only --results docs/results.md               (tables from finished runs)
       python bench/quality.py --domain-rows scripture=400,python=40 --out bench/out/quality-natural \
           --results docs/results-natural.md         (unequal domain sizes: a natural mixture unlike uniform)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from ddk_store import spec
from ddk_store.errors import DdkError
from ddk_store.paths import cache_dir
#: This checkout (the scripts' children run from here, and the default --out lies here), not the installed one.
REPO = Path(__file__).resolve().parents[1]
from stage2_student import compare, plots, rundir
from stage2_student.report import ddk_floor

BIN = Path(sys.executable).parent
ARMS = {
    "ce": ["--mixing", "natural", "--gamma", "0"],
    "kd": ["--mixing", "natural"],
    "es": ["--mixing", "uniform"],
    "wo-fs": ["--mixing", "wo-fs"],
    "ddk": ["--mixing", "ddk"],
    "ddk-cap": ["--mixing", "ddk", "--max-epochs-per-domain", "5"],
}
#: The arms the benchmark runs unless --arms says otherwise.
DEFAULT_ARMS = tuple(ARMS)
#: An arm per store encoding: "kd@ENCODING" is plain KD trained from a store dumped with --encoding ENCODING (the
#: other arms train from the default encoding's store, so "kd" is KD from the default encoding).
ENCODING_ARMS = {f"kd@{e}": e for e in spec.ENCODINGS if e != spec.DEFAULT_ENCODING}
ARMS.update({arm: ARMS["kd"] for arm in ENCODING_ARMS})
ARM_LABEL = {"ce": "CE only (γ=0), natural", "kd": "KD, natural", "es": "DDK w/ equal sampling (uniform)",
             "wo-fs": "DDK w/o factor smoothing", "ddk": "DDK",
             "ddk-cap": "DDK + epoch cap (E = 5, beyond the paper)"}


def encoding_arm_label(encoding: str, samples: int) -> str:
    """The table label of the arm "kd@ENCODING"."""
    return f"KD from {encoding}" + (f" (N={samples})" if encoding == spec.ENC_SAMPLED else "")


ARM_LABEL.update({arm: encoding_arm_label(e, spec.DEFAULT_SAMPLES) for arm, e in ENCODING_ARMS.items()})
#: "ddk-cap@E": DDK with the epoch cap at E passes (a positive integer) instead of ddk-cap's 5; "es-cap@E": equal
#: sampling with that cap, which tells what the cap does without DDK's weights.
CAP_ARM = re.compile(r"(ddk|es)-cap@([1-9][0-9]*)")
CAP_ARM_BASE = {"ddk": ("ddk", "DDK"), "es": ("uniform", "Equal sampling")}


def add_cap_arm(arm: str) -> bool:
    """Register the arm "ddk-cap@E" or "es-cap@E" (its training flags and label); False when arm is not of that form."""
    match = CAP_ARM.fullmatch(arm)
    if match:
        mixing, name = CAP_ARM_BASE[match[1]]
        ARMS[arm] = ["--mixing", mixing, "--max-epochs-per-domain", match[2]]
        ARM_LABEL[arm] = f"{name} + epoch cap (E = {match[2]}, beyond the paper)"
    return bool(match)


def arm_encoding(arm: str) -> str:
    """The encoding of the store an arm trains from."""
    return ENCODING_ARMS.get(arm, spec.DEFAULT_ENCODING)


def sh(argv: list[str], log: Path | None = None, env: dict | None = None) -> None:
    """Run a command; on failure print the tail of its log and stop."""
    print("+", " ".join(str(a) for a in argv), flush=True)
    if log is None:
        subprocess.run([str(a) for a in argv], check=True, cwd=REPO, env=env)
        return
    with open(log, "w") as f:
        rc = subprocess.run([str(a) for a in argv], cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc:
        sys.exit(f"command failed ({rc}); last lines of {log}:\n" + "".join(log.read_text().splitlines(True)[-20:]))


def path_of(argv: list) -> Path:
    """Run a command that prints the path of what it built as its last stdout line (progress goes to stderr)."""
    print("+", " ".join(str(a) for a in argv), flush=True)
    out = subprocess.run([str(a) for a in argv], cwd=REPO, check=True, stdout=subprocess.PIPE, text=True).stdout
    return Path(out.strip().splitlines()[-1])


def prepare(args) -> tuple[Path, dict[str, Path], Path]:
    """(teacher dir, store path per encoding the arms need, raw student dir), built once in the cache by the commands
    the demo runs; the default encoding's store (every arm but "kd@ENCODING") is always built."""
    corpora = path_of([BIN / "ddk-teacher", "builtin-corpus", "--max-mb", args.max_mb])
    teacher = path_of([BIN / "ddk-teacher", "builtin-teacher"])
    student = raw_student(args)
    if not (student / "config.json").is_file():
        sh([BIN / "ddk-student", "init", "--teacher", teacher, "--layers", args.layers, "--out", student])
    if args.domain_rows or args.heldout_seed:  # a copy of the corpora file with per-domain keys
        corpora = corpora_copy(corpora, args.domain_rows, args.heldout_seed, Path(args.out))
    stores = store_paths(args)
    for enc in stores:  # each store dumped once
        extra = [] if enc == spec.DEFAULT_ENCODING else ["--encoding", enc]
        if enc == spec.ENC_SAMPLED:
            extra += ["--samples", args.samples, "--sampling-seed", 0]
        sh([BIN / "ddk-teacher", "dump", "--teacher", teacher, "--corpora", corpora,
            "--store", stores[enc], "--seq-len", args.seq_len, "--top-k", 64, "--heldout-seqs", args.heldout,
            "--max-rows-per-domain", args.train_rows, "--backend", args.backend, *extra])
    return teacher, stores, student


def raw_student(args) -> Path:
    """Where the layer-subset student is cached."""
    return cache_dir() / "student" / f"smollm2-{student_label(args.layers)}"


def store_paths(args) -> dict[str, Path]:
    """The store of each encoding the arms need (the default's always), named by every setting that shapes it."""
    tag = f"quality-s{args.seq_len}-r{args.train_rows}-h{args.heldout}"
    tag += "".join(f"-{d}{n}" for d, n in args.domain_rows.items())
    tag += f"-hs{args.heldout_seed}" if args.heldout_seed else ""
    stores = {}
    for enc in dict.fromkeys([spec.DEFAULT_ENCODING, *map(arm_encoding, args.arms)]):
        suffix = "" if enc == spec.DEFAULT_ENCODING else f"-{enc}"
        suffix += f"-n{args.samples}" if enc == spec.ENC_SAMPLED else ""
        stores[enc] = cache_dir() / "stores" / (tag + suffix)
    return stores


def student_label(layers: str) -> str:
    """The cache folder name of the layer-subset student: "6l" for a count, "l0-9_16-29" for indices or ranges."""
    text = layers.strip()
    if not re.fullmatch(r"\d+([-,\s]+\d+)*", text):
        raise argparse.ArgumentTypeError(f"--layers {layers!r}: a count like 6, indices like 0,6,29 or ranges like "
                                         f"0-9,16-29")
    return f"{text}l" if text.isdigit() else "l" + re.sub(r"[,\s]+", "_", text)


def parse_domain_rows(text: str) -> dict[str, int]:
    """'scripture=400,python=40' -> {'scripture': 400, 'python': 40} (argparse type)."""
    out = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        name, _, n = item.partition("=")
        if not n.isdigit() or int(n) < 1:
            raise argparse.ArgumentTypeError(f"--domain-rows: expected name=ROWS with ROWS >= 1, got {item!r}")
        out[name.strip()] = int(n)
    return out


def corpora_copy(corpora: Path, rows: dict[str, int], heldout_seed: int, out: Path) -> Path:
    """The built-in CORPORA.yaml with ``max_rows`` set per domain in ``rows`` and, when not 0, ``heldout_seed`` set
    on every domain (absolute paths, so it can live anywhere)."""
    import yaml

    doc = yaml.safe_load(corpora.read_text(encoding="utf-8"))
    unknown = set(rows) - set(doc["domains"])
    if unknown:
        sys.exit(f"--domain-rows: unknown domain(s) {sorted(unknown)}; the corpus has {sorted(doc['domains'])}")
    for name, n in rows.items():
        doc["domains"][name]["max_rows"] = n
    for spec in doc["domains"].values() if heldout_seed else ():
        spec["heldout_seed"] = heldout_seed
    out.mkdir(parents=True, exist_ok=True)
    path = out / "CORPORA.natural.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def train_cmd(args, store: Path, student: Path, out: Path, steps: int, seed: int, extra: list[str]) -> list:
    return [BIN / "ddk-student", "train", "--store", store, "--student", student, "--out", out, "--steps", steps,
            "--interval", args.interval, "--batch-size", args.batch_size, "--lr", args.lr, "--seed", seed,
            "--device", args.device, "--keep-checkpoints", 1, "--overwrite", *extra]  # one: ~1 GB each at 24 layers


def warmup_cmd(args) -> list[str]:
    """The shared warm-up's `ddk-student train` command: CE on the natural mixture from the raw student."""
    return [str(a) for a in train_cmd(args, store_paths(args)[spec.DEFAULT_ENCODING], raw_student(args),
                                      Path(args.out) / "warmup", args.warmup_steps, 1234,
                                      ["--mixing", "natural", "--gamma", "0"])]


def arm_cmd(args, arm: str, seed: int) -> list[str]:
    """The `ddk-student train` command of one arm and seed (from the warm-up, or the raw student without one)."""
    out = Path(args.out)
    start = out / "warmup" if args.warmup_steps else raw_student(args)
    return [str(a) for a in train_cmd(args, store_paths(args)[arm_encoding(arm)], start, out / f"{arm}-s{seed}",
                                      args.steps, seed, ARMS[arm])]


def run_settings(cmd: list[str]) -> dict:
    """The settings the `ddk-student train` command ``cmd`` runs with, as its config.yaml saves them."""
    from stage2_student.cli import cli, train_settings
    from stage2_student.config import saved_values

    return saved_values(train_settings(cli.commands["train"].make_context("train", cmd[2:])))


def stale_reason(cmd: list[str]) -> str | None:
    """Why the finished run that `ddk-student train` command ``cmd`` names (its --out) is not the run ``cmd`` asks
    for (another --steps, --lr, store, start...: the settings its config.yaml saved differ), or None when it is."""
    import yaml

    from stage2_student.config import RUNTIME_ONLY_FIELDS

    want = run_settings(cmd)
    path = Path(want["out"]) / rundir.CONFIG_FILE
    if not path.is_file():
        return f"it has no {path.name}"
    saved = yaml.safe_load(path.read_text()) or {}
    # (a setting its version did not have is not a difference: a new setting would otherwise retrain every run)
    diff = [k for k in sorted(saved) if k not in RUNTIME_ONLY_FIELDS and want.get(k) != saved[k]]
    return ("; ".join(f"{k} {saved.get(k)!r}, asked {want.get(k)!r}" for k in diff[:3])
            + (f" and {len(diff) - 3} more" if len(diff) > 3 else "")) if diff else None


def runs_to_train(args) -> list[tuple[str, int]]:
    """(arm, seed) of every run under --out to train: not finished, failed, or finished with other settings."""
    out, todo = Path(args.out), []
    for seed in args.seeds:
        for arm in args.arms:
            name = f"{arm}-s{seed}"
            if not rundir.is_finished(out / name) or (out / f"{name}.failed").is_file():  # (it can fail after its
                todo.append((arm, seed))                                                # final line: the export)
            elif reason := stale_reason(arm_cmd(args, arm, seed)):
                print(f"[quality] {name}: trained again, its settings differ ({reason})", flush=True)
                todo.append((arm, seed))
    return todo


def run_all(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.warmup_steps:
        if not rundir.is_finished(out / "warmup"):
            sh(warmup_cmd(args), log=out / "warmup.log")
        elif reason := stale_reason(warmup_cmd(args)):  # every arm under --out starts from it
            sys.exit(f"{out / 'warmup'} was trained with other settings ({reason}): give another --out")
    todo = runs_to_train(args)
    threads = max(1, (os.cpu_count() or 2) // args.jobs)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    running: list[tuple[subprocess.Popen, str, float]] = []
    t0 = time.time()
    done = 0
    total = len(todo)
    while todo or running:
        while todo and len(running) < args.jobs:
            arm, seed = todo.pop(0)
            cmd = arm_cmd(args, arm, seed)
            (out / f"{arm}-s{seed}.failed").unlink(missing_ok=True)
            log = open(out / f"{arm}-s{seed}.log", "w")
            running.append((subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT),
                            f"{arm}-s{seed}", time.time()))
        time.sleep(2)
        for proc, name, _ in running:
            if proc.poll():
                (out / f"{name}.failed").write_text(f"exit status {proc.returncode}\n")  # summarize names it
        failed = [name for proc, name, _ in running if proc.poll()]
        if failed:
            for proc, _, _ in running:  # (a run left behind would go on writing into --out)
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait()
            sys.exit(f"{', '.join(failed)} failed; see {', '.join(str(out / (n + '.log')) for n in failed)}")
        for item in list(running):
            proc, name, started = item
            if proc.poll() is None:
                continue
            running.remove(item)
            done += 1
            eta = (time.time() - t0) / done * (total - done)
            print(f"[quality] {name} done in {time.time() - started:.0f} s ({done}/{total}, ETA {eta / 60:.0f} min)",
                  flush=True)


# ------------------------------------------------------------------------------------------------ analysis
#: The reweighting arms whose domain-weight trajectories the results page shows (and plots), in this order.
TRAJECTORY_ARMS = ("ddk", "ddk-cap", "wo-fs")


def finished(run: Path) -> bool:
    """rundir.is_finished, and False for a run whose metrics.jsonl is being appended right now (a torn last line)."""
    try:
        return rundir.is_finished(run)
    except ValueError:
        return False


def summarize(args) -> dict:
    """The finished runs under --out as compare.Arm rows (in ARMS order, labelled by ARM_LABEL), the arm keys of
    those rows, the runs not finished yet, notes for the reader, and the warm-up's records when it has finished.
    Works as soon as one run has finished: the tables say how many runs each row holds."""
    out = Path(args.out)
    notes: list[str] = []
    arms, keys, missing = [], [], []
    try:
        for arm in [a for a in ARMS if a in args.arms]:
            runs = []
            for s in args.seeds:
                run = out / f"{arm}-s{s}"
                failed = out / f"{run.name}.failed"
                if failed.is_file():
                    missing.append(f"{run.name} (FAILED, {failed.read_text().strip()}: see {run.name}.log)")
                elif not finished(run):
                    missing.append(run.name)
                else:  # (runs of other budgets are named by check_arms' note)
                    runs.append(compare.load_run(run, notes))
            if runs:
                arms.append(compare.Arm(ARM_LABEL.get(arm, arm), runs))
                keys.append(arm)
        if not arms:
            sys.exit(f"no finished runs under {out} yet (arms {', '.join(args.arms)}, seeds "
                     f"{', '.join(map(str, args.seeds))}); rerun --report-only once one has its final evaluation")
        notes += compare.check_arms(arms)
        warm = rundir.read_metrics(out / "warmup") if finished(out / "warmup") else None
    except DdkError as e:
        sys.exit(f"error: {e}")
    return {"arms": arms, "keys": keys, "missing": missing, "notes": notes, "warmup": warm}


def trajectory_runs(summary: dict) -> list[tuple[str, compare.Run]]:
    """(arm key, the run of its first finished seed) for each reweighting arm with a finished run."""
    by_key = dict(zip(summary["keys"], summary["arms"]))
    return [(k, by_key[k].runs[0]) for k in TRAJECTORY_ARMS if k in by_key]


def plot(summary: dict, fig_dir: Path) -> list[str]:
    """ratios_by_arm.png (compare's bar chart: per domain and per summary metric, mean ± sd over seeds, log axis)
    and weights_<arm>.png of each reweighting arm's first seed (report's step plot); the file names."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    compare.bar_chart(summary["arms"], fig_dir / "ratios_by_arm.png")
    names = ["ratios_by_arm.png"]
    for key, run in trajectory_runs(summary):
        name = f"weights_{key}.png"
        plots.weights_plot(run.records, fig_dir / name, floor=ddk_floor(run.config, len(run.domains)),
                           title=f"{ARM_LABEL.get(key, key)}: domain sampling weights ({run.path.name})")
        names.append(name)
    return names


def warmup_table(warm: tuple[list[dict], dict], domains: list[str]) -> str:
    intervals, final = warm
    first = intervals[0]
    return "\n".join(["| domain | teacher ppl | raw student ppl | after warm-up | ratio after warm-up |",
                      "|---|---:|---:|---:|---:|"]
                     + [f"| {d} | {final['ppl_teacher'][i]:.2f} | {first['ppl_student'][i]:.3g} | "
                        f"{final['ppl_student'][i]:.2f} | {final['ratio'][i]:.3f} |" for i, d in enumerate(domains)])


def markdown(args, summary: dict, figs: list[str], fig_rel: str) -> str:
    arms = summary["arms"]
    domains = arms[0].runs[0].domains
    status = [f"{sum(len(a.runs) for a in arms)} run(s) finished over {len(arms)} arm(s), of seeds "
              f"{', '.join(map(str, args.seeds))} asked for each arm."]
    if summary["missing"]:
        status.append(f"Not finished (or failed), so not in the tables: {', '.join(summary['missing'])}.")
    if not any("held-out rows" in n for n in summary["notes"]):
        status.append("Every run's teacher perplexities are equal, so every arm and seed was measured on the same "
                      "held-out rows.")
    status += [f"Note: {n}." for n in summary["notes"]]
    traj = []
    for key, run in trajectory_runs(summary):
        traj += ["", f"{ARM_LABEL.get(key, key)}, `{run.path.name}` (the weights sampled from each step on"
                 + ("; a capped cell shows the weight sampled under the cap and the uncapped DDK weight" if
                    any(r.get("capped") for r in run.records) else "") + "):", "",
                 compare.weights_table(run)]
    warm = summary["warmup"]
    sections = [
        "## Final student/teacher perplexity ratio on each domain's held-out rows (lower is better)",
        "",
        " ".join(status),
        "",
        compare.ratio_table(arms),
        "",
        "## Passes over each domain's training rows",
        "",
        compare.passes_table(arms) or "(the runs record no training-row counts)",
    ]
    cap = compare.cap_table(arms)
    if cap:
        sections += ["", "## The epoch cap", "", cap]
    sections += ["", "## Warm-up (shared start of every arm)", "",
                 warmup_table(warm, domains) if warm else "(the warm-up run has not finished)",
                 "", "## Domain-weight trajectories", *traj, "",
                 "\n".join(f"![{f}]({fig_rel}/{f})" for f in figs)]
    return "\n".join(sections)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", default=",".join(DEFAULT_ARMS), help="comma-separated subset of " + ", ".join(ARMS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=240, help="optimizer steps per arm (same token budget for all)")
    p.add_argument("--interval", type=int, default=20, help="K: steps per DDK interval")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup-steps", type=int, default=150, help="shared CE warm-up of the raw student; 0 = none")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--train-rows", type=int, default=160, help="training rows per domain in the store")
    p.add_argument("--heldout", type=int, default=24, help="held-out rows per domain")
    p.add_argument("--domain-rows", type=parse_domain_rows, default={},
                   help="unequal domain sizes, e.g. scripture=400,python=40 (others keep --train-rows); the "
                        "natural mixture follows them")
    p.add_argument("--heldout-seed", type=int, default=0,
                   help="the corpora's heldout_seed: another pseudo-random draw of held-out documents (0 = the "
                        "default draw), to check a result on documents it was not chosen on")
    p.add_argument("--max-mb", type=float, default=2.0, help="corpus MB per domain")
    p.add_argument("--samples", type=int, default=spec.DEFAULT_SAMPLES,
                   help=f"N, draws per position of the {spec.ENC_SAMPLED} store (arm kd@{spec.ENC_SAMPLED})")
    p.add_argument("--layers", default="6",
                   help="the student's teacher layers (ddk-student init --layers): a count, indices or ranges")
    p.add_argument("--backend", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--jobs", type=int, default=2, help="training runs at a time")
    p.add_argument("--out", default=str(REPO / "bench" / "out" / "quality"))
    p.add_argument("--results", default=None,
                   help="the results page the tables are for (e.g. docs/results.md); its plots go to docs/results/. "
                        "Default: none, plots into --out/figures")
    p.add_argument("--report-only", action="store_true", help="only rebuild tables and plots from finished runs")
    args = p.parse_args(argv)
    args.out = str(Path(args.out).resolve())  # children run in REPO: a path relative to here must mean the same there
    if args.results:
        args.results = str(Path(args.results).resolve())
    args.arms = [a for a in args.arms.split(",") if a]
    unknown = {arm for arm in args.arms if arm not in ARMS and not add_cap_arm(arm)}
    if unknown:
        p.error(f"unknown arm(s) {sorted(unknown)}; choose from {list(ARMS)} or ddk-cap@E, es-cap@E (E a positive integer)")
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    ARM_LABEL.update({arm: encoding_arm_label(e, args.samples) for arm, e in ENCODING_ARMS.items()})
    return args


def main() -> None:
    args = parse_args()
    if not args.report_only:
        prepare(args)
        run_all(args)
    summary = summarize(args)
    out = Path(args.out) / "results_tables.md"
    if args.results:
        results = Path(args.results)
        fig_dir = results.parent / results.stem  # docs/results.md -> docs/results/*.png
        page = results.parent
    else:
        fig_dir, page = Path(args.out) / "figures", Path(args.out)
    figs = plot(summary, fig_dir)
    body = markdown(args, summary, figs, os.path.relpath(fig_dir, page))
    out.write_text(body + "\n")
    print(body)
    where = f"; paste them into {args.results} with the analysis" if args.results else f", plots in {fig_dir}"
    print(f"\ntables written to {out}{where}")


if __name__ == "__main__":
    main()
