"""`ddk-student train | eval | report`: thin click wrappers; train's flags are generated from Stage2Config.

One option per Stage2Config field (``--batch-size`` <-> ``batch_size``, help from the field), plus ``--config``.
Precedence: field defaults < ``--config FILE`` (YAML; unknown keys are errors) < flags given on the command line.
A DdkError (the user's own mistake) becomes one line ``error: ...`` on stderr and exit code 2, no traceback.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import yaml
from click.core import ParameterSource

from ddk_store.errors import ConfigError, DdkError

from .config import Stage2Config, load_yaml, local_model_problem

EXIT_USER_ERROR = 2


def _user_errors(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DdkError as e:
            click.echo(f"error: {' '.join(str(e).split())}", err=True)
            sys.exit(EXIT_USER_ERROR)

    return wrapper


def config_options(fn: Callable) -> Callable:
    """Add one click option per Stage2Config field (in field order)."""
    for f in reversed(dataclasses.fields(Stage2Config)):
        flag = "--" + f.name.replace("_", "-")
        base = f.type.replace(" | None", "")
        help_text = f.metadata["help"] + ("" if f.default in (None, "", False) else f" [default: {f.default}]")
        if base == "bool":
            fn = click.option(flag, f.name, is_flag=True, default=False, help=help_text)(fn)
        else:
            ptype: Any = {"int": int, "float": float, "str": str}[base]
            if "choices" in f.metadata:
                ptype = click.Choice(f.metadata["choices"])
            fn = click.option(flag, f.name, type=ptype, default=None, help=help_text)(fn)
    return fn


def resolve_config(ctx: click.Context, config_file: str | None, params: dict[str, Any]) -> Stage2Config:
    """defaults < YAML < flags actually typed on the command line."""
    data: dict[str, Any] = load_yaml(config_file) if config_file else {}
    for name, value in params.items():
        if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            data[name] = value
    return Stage2Config.from_dict(data, where=f"--config {config_file}" if config_file else "config")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def cli() -> None:
    """Train a student from a ddk teacher-logit store with DDK domain reweighting."""


@cli.command("train")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="YAML file of Stage2Config fields; flags given here override it.")
@config_options
@click.pass_context
@_user_errors
def train_cmd(ctx: click.Context, config_file: str | None, **params: Any) -> None:
    """Distill into --student from --store, writing the model, metrics and checkpoints to --out."""
    cfg = resolve_config(ctx, config_file, params)
    from .train import train  # torch/transformers load only once the config is known to be valid

    out = train(cfg)
    click.echo(f"done: {out}", err=True)


@cli.command("eval")
@click.option("--store", required=True, help="Teacher-logit store URL.")
@click.option("--model", "model_dir", required=True, help="Hugging Face causal-LM directory or hub id.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Held-out rows per forward pass.")
@click.option("--heldout-rows", type=int, default=None, help="At most this many held-out rows per domain.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--trust-remote-code", is_flag=True, help="Allow the model's own modelling code.")
@_user_errors
def eval_cmd(store: str, model_dir: str, as_json: bool, batch_size: int, heldout_rows: int | None, device: str,
             trust_remote_code: bool) -> None:
    """Per-domain held-out perplexity of --model against the store's teacher."""
    problems = [msg for ok, msg in ((batch_size >= 1, f"--batch-size must be >= 1, got {batch_size}"),
                                    (heldout_rows is None or heldout_rows >= 1,
                                     f"--heldout-rows must be >= 1 (omit it for all rows), got {heldout_rows}"))
                if not ok]
    if problem := local_model_problem("--model", model_dir):
        problems.append(problem)
    if problems:  # before the store is opened or the model loaded
        raise ConfigError("; ".join(problems))
    import torch

    from ddk_store import open_store

    from .evaluate import evaluate, teacher_heldout_ppl
    from .student import load_student

    reader = open_store(store)
    dev = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
    model, _ = load_student(model_dir, reader.meta, store=store, trust_remote_code=trust_remote_code, device=dev)
    domains = reader.domains
    ev = evaluate(model, reader, domains, vocab_size=reader.vocab_size, batch_size=batch_size,
                  heldout_rows=heldout_rows, device=dev, autocast_dtype=torch.bfloat16 if dev.type == "cuda" else None)
    teacher = teacher_heldout_ppl(reader, domains, heldout_rows)
    ratio = [s / t for s, t in zip(ev["ppl"], teacher)]
    if as_json:
        click.echo(json.dumps({"store": store, "model": model_dir, "domains": domains, "ppl_student": ev["ppl"],
                               "ppl_teacher": teacher, "ratio": ratio, "tokens": ev["tokens"]}))
        return
    click.echo(f"{'domain':<20} {'teacher ppl':>12} {'student ppl':>12} {'ratio':>8}")
    for d, t, s, q in zip(domains, teacher, ev["ppl"], ratio):
        click.echo(f"{d:<20} {t:>12.3f} {s:>12.3f} {q:>8.3f}")


#: Keys `report` reads from every "interval"/"final" line of metrics.jsonl, each a list of one entry per domain.
_PER_DOMAIN_KEYS = ("ppl_student", "ppl_teacher", "ratio", "weights")


def check_run_files(run_dir: Path) -> None:
    """Refuse, naming file and line, a metrics.jsonl or config.yaml that `report` could not read.

    The report code trusts what `train` wrote; a truncated, hand-edited or foreign file must fail here in one line.
    """
    from .report import ReportError

    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return  # write_report names the missing file
    fix = "it must be the metrics.jsonl written by `ddk-student train`"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"{path}: cannot read it ({e}); {fix}") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise ReportError(f"{where}: not valid JSON ({getattr(e, 'msg', e)}); {fix}") from None
        if not isinstance(rec, dict):
            raise ReportError(f"{where}: expected a JSON object, got {type(rec).__name__}; {fix}")
        if rec.get("event") not in ("interval", "final"):
            continue
        domains = rec.get("domains")
        if not isinstance(rec.get("step"), int) or not isinstance(domains, list) or not domains:
            raise ReportError(f"{where}: '{rec['event']}' line needs an int 'step' and a non-empty 'domains' list; "
                              f"{fix}")
        for key in _PER_DOMAIN_KEYS:
            values = rec.get(key)
            if (not isinstance(values, list) or len(values) != len(domains)
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
                raise ReportError(f"{where}: '{key}' must be a list of {len(domains)} numbers (one per domain), "
                                  f"got {str(values)[:60]}; {fix}")
    cfg_path = run_dir / "config.yaml"
    if cfg_path.is_file():
        try:
            cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, yaml.YAMLError) as e:
            raise ReportError(f"{cfg_path}: not a readable YAML config ({' '.join(str(e).split())[:200]})") from None
        if not isinstance(cfg, dict):
            raise ReportError(f"{cfg_path}: expected a mapping of field: value, got {type(cfg).__name__}")


@cli.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False))
@_user_errors
def report_cmd(run_dir: str) -> None:
    """Write RUN_DIR/report.md and PNG plots of the domain weights and ratios over training."""
    from .report import write_report

    check_run_files(Path(run_dir))
    path = write_report(run_dir)
    click.echo(str(path))


@cli.command("init")
@click.option("--teacher", required=True, help="Hugging Face directory of a Llama-style teacher.")
@click.option("--layers", default="6", show_default=True,
              help="Decoder layers to keep: a count (evenly spaced, first and last kept) or indices like 0,6,29.")
@click.option("--out", required=True, help="Directory for the student (save_pretrained + the teacher's tokenizer).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
@_user_errors
def init_cmd(teacher: str, layers: str, out: str, seed: int, overwrite: bool) -> None:
    """Initialise a student from a teacher by keeping a subset of its layers (same tokenizer)."""
    from .init_student import init_student_from_teacher

    path = init_student_from_teacher(teacher, out, layers=layers, seed=seed, overwrite=overwrite)
    click.echo(str(path))


def main() -> None:
    """Console entry point (``ddk-student``)."""
    cli(prog_name="ddk-student")


if __name__ == "__main__":
    main()
