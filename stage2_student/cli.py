"""`ddk-student train | eval | report | compare | init`: thin click commands over the stage-2 modules.

train's flags are Stage2Config's fields and eval's are EvalConfig's, made by :mod:`ddk_store.settings`: one option per
field, ``--config FILE``, and the precedence defaults < ``--config FILE`` < flags typed (with ``--resume``, the run's
own config.yaml sits right above the defaults). Every command runs through ``ddk_store.entry``: a DdkError (the user's
own mistake) is one line ``error: ...`` on stderr and exit status 2, no traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ddk_store import settings
from ddk_store.entry import CONTEXT_SETTINGS, EntryGroup, hide_library_progress_bars, main_entry, version_option
from ddk_store.errors import ConfigError

from .config import EvalConfig, Stage2Config
from .resume import resume_layer
from .rundir import CHECKPOINTS_DIR, METRICS_FILE, RATIOS_PNG, WEIGHTS_PNG, read_metrics
from .summary import format_ratio, summarize

PROG = "ddk-student"


@click.group(name=PROG, cls=EntryGroup, context_settings=CONTEXT_SETTINGS)
@version_option(PROG)
def cli() -> None:
    """Train a student from a ddk teacher-logit store with DDK domain reweighting."""


def train_settings(ctx: click.Context) -> Stage2Config:
    """defaults < the run's saved config.yaml (with --resume) < --config FILE < the flags typed."""
    config_file = ctx.params.get(settings.CONFIG_PARAM)
    typed = settings.typed_params(ctx, Stage2Config)
    from_file = settings.read_config(Stage2Config, config_file, typed=typed) if config_file else {}
    if config_file and "out" not in typed:
        _check_moved_run(Path(config_file), from_file.get("out"))
    return settings.build(Stage2Config, resume_layer({**from_file, **typed}), from_file, typed)


def _check_moved_run(config_file: Path, out: object) -> None:
    """A run's own config.yaml names the run's --out as it was when it started: if the run directory holding the
    file has been moved or copied since, refuse to act silently on the directory the file names."""
    folder = config_file.expanduser().resolve().parent
    is_run = (folder / CHECKPOINTS_DIR).is_dir() or (folder / METRICS_FILE).is_file()
    if isinstance(out, str) and out and is_run and Path(out).expanduser().resolve() != folder:
        raise ConfigError(f"--config {config_file}: it is the config of the run in {folder}, but it names --out {out} "
                          f"(was the run moved or copied?); give --out {folder} to continue the run here, or "
                          f"--out {out} for the one it names")


@cli.command("train")
@settings.options(Stage2Config)
def train_cmd(**_: object) -> None:
    """Distill into --student from --store, writing the model, metrics and checkpoints to --out.

    Settings: defaults < --config FILE < the flags typed here; with --resume the run's own config.yaml comes right
    after the defaults, so only what changes needs typing (a larger --steps extends a run).
    """
    cfg = train_settings(click.get_current_context())
    if not cfg.progress:
        hide_library_progress_bars()
    from .parallel import dist_env
    from .train import train  # torch/transformers load only once the config is known to be valid

    out = train(cfg)
    click.echo(f"done: {out}", err=True)
    if dist_env().rank == 0 and (line := final_line(out)):
        click.echo(line, err=True)


def final_line(out: Path) -> str | None:
    """What the run reached, for its last line on the terminal: the summary of its final held-out ratios and how to
    see more. None when it logged no final evaluation."""
    _, final = read_metrics(out)
    if final is None:
        return None
    domains, ratio = final["domains"], final["ratio"]
    s = summarize(ratio)
    worst = domains[ratio.index(max(ratio))]
    return (f"held-out perplexity ratio to the teacher (lower is better, 1.0 = the teacher): mean "
            f"{format_ratio(s['mean'])}, worst {format_ratio(s['worst'])} ({worst}); `ddk-student report {out}` "
            f"writes report.md and its plots")


def _model_dir_hint(model: str) -> None:
    """A local --model directory that holds no model: an unfinished run (point to its checkpoints), a run's
    checkpoints/ folder (point to its latest), or anything else (say what --model takes)."""
    from .checkpoint import latest_checkpoint, read_state

    path = Path(model).expanduser()
    if not path.is_dir() or (path / "config.json").is_file() or read_state(path) is not None:
        return
    if (path / CHECKPOINTS_DIR).is_dir():
        ckpt = latest_checkpoint(path)
        example = (f", e.g. --model {ckpt}, or finish the run (`ddk-student train --out {model} --resume`), which "
                   f"writes the model there") if ckpt else ""
        raise ConfigError(f"--model {model}: a run that has not finished (no config.json yet); evaluate a checkpoint "
                          f"of it{example}")
    if path.name == CHECKPOINTS_DIR and (ckpt := latest_checkpoint(path.parent)) is not None:
        raise ConfigError(f"--model {model}: the checkpoints folder of a run; evaluate one of them, e.g. "
                          f"--model {ckpt}")
    raise ConfigError(f"--model {model}: no config.json there, so it is no model directory; pass a finished run's "
                      f"--out, a checkpoint RUN/checkpoints/step-N, or a Hugging Face model directory")


#: :func:`_run_heldout_rows` of a run that was not a ddk run, or whose settings cannot be read.
_UNKNOWN = -1


def _run_heldout_rows(model: str) -> int | None:
    """The --heldout-rows of the run that --model is (its --out) or belongs to (a checkpoint): a number, None for
    every row, :data:`_UNKNOWN` when --model is not such a run."""
    from .checkpoint import read_state
    from .resume import read_saved

    path = Path(model).expanduser()
    if not path.is_dir():
        return _UNKNOWN
    try:
        saved = ((read_state(path) or {}).get("config") or read_saved(path) or {})
    except ConfigError:
        return _UNKNOWN
    rows = saved.get("heldout_rows", _UNKNOWN)
    return rows if rows is None or (isinstance(rows, int) and rows > 0) else _UNKNOWN


@cli.command("eval")
@settings.options(EvalConfig)
def eval_cmd(**_: object) -> None:
    """Per-domain held-out perplexity of --model against the store's teacher.

    --model is a finished run's --out, any Hugging Face causal LM sharing the store's tokenizer, or a checkpoint
    RUN/checkpoints/step-N (its architecture and tokenizer are the run's --student's).
    """
    cfg = settings.from_command(EvalConfig)
    if not cfg.progress:
        hide_library_progress_bars()
    _model_dir_hint(cfg.model)
    import torch

    from ddk_store import open_store

    from .checkpoint import checkpoint_student
    from .checkpoint_files import load_weights
    from .evaluate import evaluate, teacher_heldout_ppl
    from .parallel import pick_device
    from .student import load_student

    dev = pick_device(cfg.device)  # --device cuda without CUDA: refused before the store is opened
    student = checkpoint_student(cfg.model)  # None unless --model is RUN/checkpoints/step-N
    reader = open_store(cfg.store, storage_options=cfg.storage_options)
    model, _ = load_student(student or cfg.model, reader.meta, store=cfg.store, device=dev,
                            trust_remote_code=cfg.trust_remote_code,
                            flag=f"--model {cfg.model}: its run's --student" if student else "--model")
    if student:
        load_weights(model, cfg.model)
    domains = reader.domains
    ev = evaluate(model, reader, domains, vocab_size=reader.vocab_size, batch_size=cfg.eval_batch_size,
                  heldout_rows=cfg.heldout_rows, device=dev,
                  autocast_dtype=torch.bfloat16 if dev.type == "cuda" else None)
    teacher = teacher_heldout_ppl(reader, domains, cfg.heldout_rows)
    ratio = [s / t for s, t in zip(ev["ppl"], teacher)]
    run_rows = _run_heldout_rows(cfg.model)
    if run_rows != _UNKNOWN and cfg.heldout_rows != run_rows:
        had = "every held-out row" if run_rows is None else f"at most {run_rows} held-out rows per domain"
        click.echo(f"note: the run evaluated on {had} (--heldout-rows {run_rows or 'unset'}); this evaluation uses "
                   f"{cfg.heldout_rows or 'all'}, so its figures differ from metrics.jsonl's", err=True)
    if cfg.json:
        click.echo(json.dumps({"store": cfg.store, "model": cfg.model, "domains": domains, "ppl_student": ev["ppl"],
                               "ppl_teacher": teacher, "ratio": ratio, "tokens": ev["tokens"]}))
        return
    click.echo(f"{'domain':<20} {'teacher ppl':>12} {'student ppl':>12} {'ratio':>10}")
    for d, t, s, q in zip(domains, teacher, ev["ppl"], ratio):
        click.echo(f"{d:<20} {format_ratio(t):>12} {format_ratio(s):>12} {format_ratio(q):>10}")


@cli.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--baseline", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Another run on the same store (e.g. plain KD of the same budget): its final ratios are shown next "
                   "to this run's in the table and dotted in ratios.png.")
def report_cmd(run_dir: str, baseline: str | None) -> None:
    """Write RUN_DIR/report.md and PNG plots of the domain weights and ratios over training."""
    from .report import write_report
    from .rundir import check_run_files

    check_run_files(Path(run_dir))
    if baseline:
        if Path(baseline).resolve() == Path(run_dir).resolve():
            raise ConfigError(f"--baseline {baseline}: that is the run itself; give another run on the same store "
                              f"(e.g. plain KD of the same budget)")
        check_run_files(Path(baseline))
    path = write_report(run_dir, baseline=baseline)
    click.echo(str(path))


@cli.command("compare")
@click.argument("arms", nargs=-1, required=True, metavar="RUN_DIR|LABEL=DIR[,DIR...]...")
@click.option("--out", default=None, type=click.Path(dir_okay=False), metavar="FILE.png",
              help="Where to draw the bar chart of the final ratios.  [default: compare.png in the current directory]")
def compare_cmd(arms: tuple[str, ...], out: str | None) -> None:
    """Print the final per-domain ratios of several runs as a Markdown table, with the equal-weighted,
    natural-weighted and geometric means and the worst domain, and draw them as bars.

    Each argument is one arm: a RUN_DIR, or LABEL=DIR,DIR,... for several runs of one setting (seeds), whose cells are
    then mean ± sample standard deviation (n - 1) over its runs.
    """
    from .compare import DEFAULT_PNG, bar_chart, load_arms, markdown, png_path

    png = png_path(out or DEFAULT_PNG)
    loaded, notes = load_arms(list(arms))
    for run in (r for arm in loaded for r in arm.runs):
        if png.resolve().parent == run.path.resolve() and png.name in (RATIOS_PNG, WEIGHTS_PNG):
            raise ConfigError(f"--out {png}: that is a plot of the run {run.path} (`ddk-student report` draws it); "
                              f"give the chart another name")
    click.echo(markdown(loaded))
    for note in notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"bars: {bar_chart(loaded, png)}", err=True)


@cli.command("init")
@click.option("--teacher", required=True, help="Hugging Face directory of a Llama-style teacher.")
@click.option("--layers", default="6", show_default=True,
              help="Decoder layers to keep: a count (evenly spaced, first and last kept), or indices and ranges like "
                   "0,6,29 or 0-9,16-29.")
@click.option("--out", required=True, help="Directory for the student (save_pretrained + the teacher's tokenizer).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds torch before the student is built. A Llama-style cut copies every weight from the teacher, "
                   "so the student is the same for every seed; it matters only where weights are new.")
@click.option("--overwrite", is_flag=True,
              help="Replace a student that `ddk-student init` wrote in --out (never another directory, nor files "
                   "added there since).")
def init_cmd(teacher: str, layers: str, out: str, seed: int, overwrite: bool) -> None:
    """Initialise a student from a teacher by keeping a subset of its layers (same tokenizer)."""
    from .init_student import describe_student, init_student_from_teacher

    path = init_student_from_teacher(teacher, out, layers=layers, seed=seed, overwrite=overwrite)
    click.echo(describe_student(path))


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``ddk-student``): a user error is one ``error: ...`` line and exit status 2."""
    main_entry(cli, PROG, argv)


if __name__ == "__main__":
    main()
