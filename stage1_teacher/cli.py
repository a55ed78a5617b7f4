"""`ddk-teacher dump`: click options generated 1:1 from Stage1Config fields, plus --config FILE."""

from __future__ import annotations

import sys

import click

from ddk_store.errors import DdkError

from .config import Stage1Config, config_fields, load_config_file

_TYPES = {"int": int, "str": str}


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _options_from_config(func):
    """Add one click option per Stage1Config field; every default is None so set-vs-unset is visible."""
    for f in reversed(config_fields()):
        help_text = f"{f.metadata['help']} [default: {f.default!r}]"
        if f.type == "bool":
            name = flag_name(f.name)
            opt = click.option(f"{name}/--no-{name[2:]}", f.name, default=None, help=help_text)
        else:
            typ = click.Choice(f.metadata["choices"]) if "choices" in f.metadata else _TYPES[f.type]
            opt = click.option(flag_name(f.name), f.name, type=typ, default=None, help=help_text)
        func = opt(func)
    return func


def resolve_config(flags: dict, config_path: str | None) -> Stage1Config:
    """defaults < --config YAML < flags (flags left unset are None)."""
    values: dict = {}
    if config_path:
        values.update(load_config_file(config_path))
    merged = {**values, **{k: v for k, v in flags.items() if v is not None}}
    return Stage1Config.from_dict(merged, where=f"--config {config_path}" if config_path else "flags")


@click.group(name="ddk-teacher", context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Stage 1 of ddk: dump a teacher's top-k log-probs over domain corpora into a ddk store."""


@cli.command("dump")
@_options_from_config
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML file of Stage1Config fields (flags override it; unknown keys are errors).")
def dump(config_path: str | None, **flags) -> None:
    """Run the teacher over every domain of --corpora and write the store at --store (resumable, shardable)."""
    from .run import run

    cfg = resolve_config(flags, config_path)
    run(cfg)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: DdkError -> one line on stderr and exit code 2, without a traceback."""
    try:
        cli.main(args=argv, prog_name="ddk-teacher", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except DdkError as e:
        click.echo("error: " + " ".join(str(e).split()), err=True)
        sys.exit(2)
    sys.exit(0)


if __name__ == "__main__":  # vLLM spawns worker processes that re-import __main__: keep this guard
    main()
