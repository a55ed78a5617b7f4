"""DDK against its baselines, measured: same store, same student start, same token budget, three seeds.

Arms (the paper's Table 5 sampling ablations plus the two baselines):

  ce       cross-entropy only (--gamma 0), natural mixture         the continued-pretraining baseline
  kd       CE + 0.2 KL, natural mixture                            plain KD
  es       CE + 0.2 KL, uniform mixture                            "DDK with equal sampling"
  wo-fs    CE + 0.2 KL, Eq. 1 every interval                       DDK without factor smoothing
  ddk      CE + 0.2 KL, Eq. 1 then Eq. 2 (alpha 0.5)               DDK

Pipeline (each step is skipped when its output already exists, so an interrupted run resumes):
  1. the built-in corpus, teacher and layer-subset student, with the commands `make demo` (examples/demo.sh) runs:
     `ddk-teacher builtin-corpus`, `ddk-teacher builtin-teacher`, `ddk-student init`;
  2. one store: `ddk-teacher dump` of every domain (seq --seq-len, top-64, --heldout held-out rows per domain);
  3. a shared warm-up of the raw 6-layer student (--warmup-steps of CE on the natural mixture). A student cut from
     6 of the teacher's 30 layers starts with a held-out perplexity in the millions, far from the paper's setting,
     where the students are trained language models; every arm starts from this warmed-up student;
  4. every arm x seed for --steps optimizer steps, --jobs runs at a time;
  5. tables and plots into --results (docs/results.md by default).

Usage: python bench/quality.py [--steps 240 --interval 20 --seeds 0,1,2 --jobs 2]   (hours on 2 CPU cores)
       python bench/quality.py --report-only                                         (tables from finished runs)
       python bench/quality.py --domain-rows scripture=400,python=40 --out bench/out/quality-natural \
           --results docs/results-natural.md         (unequal domain sizes: a natural mixture unlike uniform)
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ddk_store.paths import cache_dir
from ddk_testkit.processes import REPO
from stage2_student import rundir

BIN = Path(sys.executable).parent
ARMS = {
    "ce": ["--mixing", "natural", "--gamma", "0"],
    "kd": ["--mixing", "natural"],
    "es": ["--mixing", "uniform"],
    "wo-fs": ["--mixing", "wo-fs"],
    "ddk": ["--mixing", "ddk"],
}
ARM_LABEL = {"ce": "CE only (γ=0), natural", "kd": "KD, natural", "es": "DDK w/ equal sampling (uniform)",
             "wo-fs": "DDK w/o factor smoothing", "ddk": "DDK"}


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


def prepare(args) -> tuple[Path, Path, Path]:
    """(teacher dir, store path, raw student dir), built once in the cache by the commands the demo runs."""
    cache = cache_dir()
    corpora = path_of([BIN / "ddk-teacher", "builtin-corpus", "--max-mb", args.max_mb])
    teacher = path_of([BIN / "ddk-teacher", "builtin-teacher"])
    student = cache / "student" / f"smollm2-{args.layers}l"
    if not (student / "config.json").is_file():
        sh([BIN / "ddk-student", "init", "--teacher", teacher, "--layers", args.layers, "--out", student])
    tag = f"quality-s{args.seq_len}-r{args.train_rows}-h{args.heldout}"
    if args.domain_rows:  # unequal domain sizes: a copy of the corpora file with per-domain max_rows
        corpora = natural_corpora(corpora, args.domain_rows, Path(args.out))
        tag += "-" + "-".join(f"{d}{n}" for d, n in args.domain_rows.items())
    store = cache / "stores" / tag
    sh([BIN / "ddk-teacher", "dump", "--teacher", teacher, "--corpora", corpora,
        "--store", store, "--seq-len", args.seq_len, "--top-k", 64, "--heldout-seqs", args.heldout,
        "--max-rows-per-domain", args.train_rows, "--backend", args.backend])
    return teacher, store, student


def parse_domain_rows(text: str) -> dict[str, int]:
    """'scripture=400,python=40' -> {'scripture': 400, 'python': 40} (argparse type)."""
    out = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        name, _, n = item.partition("=")
        if not n.isdigit() or int(n) < 1:
            raise argparse.ArgumentTypeError(f"--domain-rows: expected name=ROWS with ROWS >= 1, got {item!r}")
        out[name.strip()] = int(n)
    return out


def natural_corpora(corpora: Path, rows: dict[str, int], out: Path) -> Path:
    """The built-in CORPORA.yaml with ``max_rows`` set per domain (absolute paths, so it can live anywhere)."""
    import yaml

    doc = yaml.safe_load(corpora.read_text(encoding="utf-8"))
    unknown = set(rows) - set(doc["domains"])
    if unknown:
        sys.exit(f"--domain-rows: unknown domain(s) {sorted(unknown)}; the corpus has {sorted(doc['domains'])}")
    for name, n in rows.items():
        doc["domains"][name]["max_rows"] = n
    out.mkdir(parents=True, exist_ok=True)
    path = out / "CORPORA.natural.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def train_cmd(args, store: Path, student: Path, out: Path, steps: int, seed: int, extra: list[str]) -> list:
    return [BIN / "ddk-student", "train", "--store", store, "--student", student, "--out", out, "--steps", steps,
            "--interval", args.interval, "--batch-size", args.batch_size, "--lr", args.lr, "--seed", seed,
            "--device", args.device, "--overwrite", *extra]


def run_all(args, store: Path, student: Path) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    warm = out / "warmup"
    if args.warmup_steps and not rundir.is_finished(warm):
        sh(train_cmd(args, store, student, warm, args.warmup_steps, 1234, ["--mixing", "natural", "--gamma", "0"]),
           log=out / "warmup.log")
    start = warm if args.warmup_steps else student
    todo = [(arm, seed) for seed in args.seeds for arm in args.arms
            if not rundir.is_finished(out / f"{arm}-s{seed}")]
    threads = max(1, (os.cpu_count() or 2) // args.jobs)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    running: list[tuple[subprocess.Popen, str, float]] = []
    t0 = time.time()
    done = 0
    total = len(todo)
    while todo or running:
        while todo and len(running) < args.jobs:
            arm, seed = todo.pop(0)
            run = out / f"{arm}-s{seed}"
            cmd = [str(a) for a in train_cmd(args, store, start, run, args.steps, seed, ARMS[arm])]
            log = open(out / f"{arm}-s{seed}.log", "w")
            running.append((subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT),
                            f"{arm}-s{seed}", time.time()))
        time.sleep(2)
        for item in list(running):
            proc, name, started = item
            if proc.poll() is None:
                continue
            running.remove(item)
            if proc.returncode:
                sys.exit(f"{name} failed ({proc.returncode}); see {out / (name + '.log')}")
            done += 1
            eta = (time.time() - t0) / done * (total - done)
            print(f"[quality] {name} done in {time.time() - started:.0f} s ({done}/{total}, ETA {eta / 60:.0f} min)",
                  flush=True)


# ------------------------------------------------------------------------------------------------ analysis
def load_run(run: Path) -> dict:
    intervals, final = rundir.read_metrics(run)
    return {"intervals": intervals, "final": final, "domains": final["domains"]}


def mean_sd(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.3f}"
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}"


def summarize(args) -> dict:
    out = Path(args.out)
    runs = {(arm, s): load_run(out / f"{arm}-s{s}") for arm in args.arms for s in args.seeds
            if rundir.is_finished(out / f"{arm}-s{s}")}
    if not runs:
        sys.exit(f"no finished runs under {out}")
    domains = next(iter(runs.values()))["domains"]
    table = {}
    for arm in args.arms:
        seeds = [s for s in args.seeds if (arm, s) in runs]
        if not seeds:
            continue
        ratios = [runs[(arm, s)]["final"]["ratio"] for s in seeds]
        table[arm] = {
            "seeds": seeds,
            "per_domain": [[r[i] for r in ratios] for i in range(len(domains))],
            "mean": [statistics.mean(r) for r in ratios],
            "geo": [math.exp(statistics.mean(math.log(x) for x in r)) for r in ratios],
            "worst": [max(r) for r in ratios],
            "ppl_student": [runs[(arm, s)]["final"]["ppl_student"] for s in seeds],
            "weights": {s: [iv["weights"] for iv in runs[(arm, s)]["intervals"]] for s in seeds},
            "steps": {s: [iv["step"] for iv in runs[(arm, s)]["intervals"]] for s in seeds},
        }
    warm = load_run(out / "warmup") if rundir.is_finished(out / "warmup") else None
    return {"domains": domains, "table": table, "warmup": warm, "runs": runs}


def plot(summary: dict, fig_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir.mkdir(parents=True, exist_ok=True)
    names = []
    domains, table = summary["domains"], summary["table"]
    # 1. final ratio per domain, per arm (mean over seeds, error bar = sd)
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(1, len(table))
    for j, (arm, row) in enumerate(table.items()):
        m = [statistics.mean(v) for v in row["per_domain"]]
        sd = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in row["per_domain"]]
        ax.bar([i + j * width for i in range(len(domains))], m, width, yerr=sd, label=arm, capsize=2)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(domains))], domains)
    ax.set_ylabel("student / teacher perplexity (final)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(fig_dir / "ratios_by_arm.png", dpi=100)
    plt.close(fig)
    names.append("ratios_by_arm.png")
    # 2. domain weights over training for the reweighting arms (seed of the first run)
    for arm in ("ddk", "wo-fs"):
        if arm not in table:
            continue
        s = table[arm]["seeds"][0]
        w, steps = table[arm]["weights"][s], table[arm]["steps"][s]
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for i, d in enumerate(domains):
            ax.plot(steps, [x[i] for x in w], marker="o", markersize=3, label=d)
        ax.set_xlabel("step")
        ax.set_ylabel("sampling weight")
        ax.set_title(f"{arm}: domain weights (seed {s})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=3)
        fig.tight_layout()
        fig.savefig(fig_dir / f"weights_{arm}.png", dpi=100)
        plt.close(fig)
        names.append(f"weights_{arm}.png")
    return names


def markdown(args, summary: dict, figs: list[str], fig_rel: str) -> str:
    domains, table = summary["domains"], summary["table"]
    lines = ["| arm | " + " | ".join(domains) + " | mean | geo. mean | worst |", "|---" * (len(domains) + 4) + "|"]
    for arm, row in table.items():
        cells = [mean_sd(v) for v in row["per_domain"]]
        lines.append(f"| {ARM_LABEL.get(arm, arm)} | " + " | ".join(cells) + f" | **{mean_sd(row['mean'])}** | "
                     f"{mean_sd(row['geo'])} | **{mean_sd(row['worst'])}** |")
    traj = []
    for arm in ("ddk", "wo-fs"):
        if arm not in table:
            continue
        s = table[arm]["seeds"][0]
        traj.append(f"\n{ARM_LABEL[arm]}, seed {s} (weights at the start of each interval):\n")
        traj.append("| step | " + " | ".join(domains) + " |")
        traj.append("|---" * (len(domains) + 1) + "|")
        for step, w in zip(table[arm]["steps"][s], table[arm]["weights"][s]):
            traj.append(f"| {step} | " + " | ".join(f"{x:.3f}" for x in w) + " |")
    warm = summary["warmup"]
    warm_txt = ""
    if warm:
        w0, wf = warm["intervals"][0], warm["final"]
        warm_txt = ("| domain | teacher ppl | raw student ppl | after warm-up | ratio after warm-up |\n|---|---|---|---|---|\n"
                    + "\n".join(f"| {d} | {wf['ppl_teacher'][i]:.2f} | {w0['ppl_student'][i]:.3g} | "
                                f"{wf['ppl_student'][i]:.2f} | {wf['ratio'][i]:.3f} |" for i, d in enumerate(domains)))
    fig_md = "\n".join(f"![{f}]({fig_rel}/{f})" for f in figs)
    return "\n".join([
        "## Final student/teacher perplexity ratio on each domain's held-out rows (lower is better)",
        "",
        f"Mean ± standard deviation over seeds {', '.join(map(str, args.seeds))}. `mean` is the mean over domains of "
        "each run's ratios, `geo. mean` their geometric mean (exp of the mean per-token log-loss gap to the teacher), "
        "`worst` the largest domain ratio of each run.",
        "",
        *lines,
        "",
        "## Warm-up (shared start of every arm)",
        "",
        warm_txt,
        "",
        "## Domain-weight trajectories",
        *traj,
        "",
        fig_md,
    ])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of " + ", ".join(ARMS))
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
    p.add_argument("--max-mb", type=float, default=2.0, help="corpus MB per domain")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--backend", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--jobs", type=int, default=2, help="training runs at a time")
    p.add_argument("--out", default=str(REPO / "bench" / "out" / "quality"))
    p.add_argument("--results", default=str(REPO / "docs" / "results.md"))
    p.add_argument("--report-only", action="store_true", help="only rebuild tables and plots from finished runs")
    args = p.parse_args()
    args.arms = [a for a in args.arms.split(",") if a]
    unknown = set(args.arms) - set(ARMS)
    if unknown:
        p.error(f"unknown arm(s) {sorted(unknown)}; choose from {list(ARMS)}")
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    if not args.report_only:
        _, store, student = prepare(args)
        run_all(args, store, student)
    summary = summarize(args)
    results = Path(args.results)
    fig_dir = results.parent / results.stem  # docs/results.md -> docs/results/*.png
    figs = plot(summary, fig_dir)
    body = markdown(args, summary, figs, os.path.relpath(fig_dir, results.parent))
    out = Path(args.out) / "results_tables.md"
    out.write_text(body + "\n")
    print(body)
    print(f"\ntables written to {out}; paste them into {results} with the analysis")


if __name__ == "__main__":
    main()
