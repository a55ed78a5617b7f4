"""One shape for errors: foreign exception text goes through ddk_store.errors.describe, and every object-store failure
(no credentials, wrong credentials, unreachable endpoint) ends every command in the same single line, exit 2.

Also the `ddk-store` messages for an unfinished store: `verify` and `info` say how far the dump got and what to run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ddk_store import spec
from ddk_store.cli import main as store_cli
from ddk_store.testing import make_tiny_store
from ddk_testkit.processes import free_port

REPO = Path(__file__).resolve().parents[2]
STORE_COMMANDS = ("info", "verify", "finalize", "repair")


def run_command(script: str, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """The installed console script, in a fresh process, as a user's shell runs it."""
    exe = Path(sys.executable).with_name(script)
    return subprocess.run([str(exe), *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def no_credentials_env(**extra: str) -> dict[str, str]:
    """The environment without any AWS credentials (no variables, no config files, no instance metadata)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_EC2_METADATA_DISABLED="true",
               PYTHONPATH=str(REPO), **extra)
    return env


def assert_one_error_line(proc: subprocess.CompletedProcess, *words: str) -> str:
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "Traceback" not in output, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def endpoint_argv(endpoint: str, **opts: str) -> list[str]:
    return sum((["--storage-option", f"{k}={v}"] for k, v in {"endpoint_url": endpoint, **opts}.items()), [])


# ------------------------------------------------------------------------------------------- object-store failures
@pytest.mark.s3
def test_missing_credentials_is_one_line_in_every_store_command(s3_server):
    url = "s3://ddk/errors/no-credentials"
    lines = set()
    for command in STORE_COMMANDS:
        proc = run_command("ddk-store", [command, url, *endpoint_argv(s3_server.endpoint_url)],
                           no_credentials_env())
        lines.add(assert_one_error_line(proc, "no credentials", url, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                        "--storage-option key=", "--storage-option secret="))
    assert len(lines) == 1, lines  # the same message, whichever command


@pytest.mark.s3
def test_wrong_credentials_is_one_line_in_every_store_command(s3_server):
    url = "s3://ddk/errors/wrong-credentials"
    for command in STORE_COMMANDS:
        argv = [command, url, *endpoint_argv(s3_server.endpoint_url, key=s3_server.KEY, secret="wrong")]
        proc = run_command("ddk-store", argv, no_credentials_env())
        assert_one_error_line(proc, "access denied", url, "check the credentials", "AWS_ACCESS_KEY_ID")


@pytest.mark.s3
def test_right_credentials_from_the_environment_or_the_flag(s3_server):
    """The hint's two ways both work: AWS_* variables, or --storage-option key=/secret= (no store there: the answer
    is 'no ddk store', which needed an authorized read)."""
    url = "s3://ddk/errors/good"
    key, secret = s3_server.storage_options["key"], s3_server.storage_options["secret"]
    env = no_credentials_env(AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret)
    proc = run_command("ddk-store", ["info", url, *endpoint_argv(s3_server.endpoint_url)], env)
    assert_one_error_line(proc, "no ddk store at")
    argv = ["info", url, *endpoint_argv(s3_server.endpoint_url, key=key, secret=secret)]
    assert_one_error_line(run_command("ddk-store", argv, no_credentials_env()), "no ddk store at")


def test_unreachable_endpoint_is_one_line_in_every_store_command():
    url = "s3://ddk/errors/unreachable"
    env = no_credentials_env(AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s", AWS_MAX_ATTEMPTS="1",
                             DDK_RETRY_SECONDS="0")
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for command in STORE_COMMANDS:
        proc = run_command("ddk-store", [command, url, *endpoint_argv(endpoint)], env)
        assert_one_error_line(proc, "object store unreachable", url, "DDK_RETRY_SECONDS")


def test_malformed_endpoint_is_one_line():
    env = no_credentials_env(AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s")
    proc = run_command("ddk-store", ["info", "s3://ddk/x", *endpoint_argv("127.0.0.1:8333")], env)
    assert_one_error_line(proc, "'127.0.0.1:8333'", "not an http:// or https:// URL")


def test_missing_credentials_is_one_line_in_student_eval():
    """The issue's reproduction: no AWS credentials at all, a store on S3, `ddk-student eval`."""
    proc = run_command("ddk-student", ["eval", "--store", "s3://bucket/prefix", "--model", "X"],
                       no_credentials_env())
    assert_one_error_line(proc, "no credentials", "s3://bucket/prefix", "AWS_ACCESS_KEY_ID")


# ------------------------------------------------------------------------------------------- unfinished stores
def _unfinished(tmp_path: Path, written: int | None) -> tuple[str, int]:
    """A store whose dump stopped after ``written`` units (None: every unit written, never finalized)."""
    url = str(tmp_path / "s")
    writer = make_tiny_store(url, unit_rows=4, finalize=False)  # writes every unit
    units = list(writer.all_units())
    if written is not None:
        writer.reset_units(units[written:])
    return url, len(units)


def test_verify_on_an_unfinished_store_says_to_resume_or_finalize_not_repair(tmp_path):
    url, total = _unfinished(tmp_path, 5)
    res = CliRunner().invoke(store_cli, ["verify", url])
    error = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert res.exit_code == 1 and len(error) == 1, res.output
    assert f"{total - 5} unit(s) not written yet" in error[0] and "rerun the same `ddk-teacher dump`" in error[0]
    assert f"ddk-store finalize {url}" in error[0] and "repair" not in error[0]
    # the units not written are one line per domain and split, with their ranges, not one line each
    fails = [ln for ln in res.output.splitlines() if ln.startswith("FAIL") and "not written" in ln]
    assert sum(int(ln.split(": ")[1].split(" ")[0]) for ln in fails) == total - 5, res.output
    assert len(fails) == len({ln.split(":")[0] for ln in fails}), res.output
    assert all(" unit(s) not written (no completion marker): units " in ln for ln in fails), res.output
    from ddk_store.cli import _ranges
    assert _ranges([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8" and _ranges([4]) == "4"
    res = CliRunner().invoke(store_cli, ["repair", url])  # what the old hint sent users to
    assert res.exit_code == 0 and "nothing to repair" in res.output and "ddk-teacher dump" in res.output

    url, _ = _unfinished(tmp_path / "all-written", None)
    res = CliRunner().invoke(store_cli, ["verify", url])
    assert res.exit_code == 1 and f"not finalized: run `ddk-store finalize {url}`" in res.output
    assert "repair" not in res.output
    res = CliRunner().invoke(store_cli, ["finalize", url])
    assert res.exit_code == 0 and CliRunner().invoke(store_cli, ["verify", url]).exit_code == 0


def test_info_on_an_unfinished_store_counts_units_and_prints_no_bytes_per_token(tmp_path):
    url, total = _unfinished(tmp_path, 5)
    res = CliRunner().invoke(store_cli, ["info", url])
    assert res.exit_code == 0, res.output
    assert f"writing: 5 of {total} units written" in res.output
    assert "partial store" in res.output and not re.search(r"[\d.]+ bytes/token", res.output)
    assert "ddk-teacher dump" in res.output and f"ddk-store finalize {url}" in res.output
    info = json.loads(CliRunner().invoke(store_cli, ["info", url, "--json"]).output)
    assert (info["status"], info["units_written"], info["units_total"]) == (spec.STATUS_WRITING, 5, total)
    assert info["bytes_per_token"] is None and info["bytes"] > 0
    make_tiny_store(str(tmp_path / "done"), unit_rows=4)
    info = json.loads(CliRunner().invoke(store_cli, ["info", str(tmp_path / "done"), "--json"]).output)
    assert info["units_written"] == info["units_total"] == total and info["bytes_per_token"] > 0


def test_version_and_usage_errors_go_through_the_shared_entry():
    from ddk_store import __version__

    res = CliRunner().invoke(store_cli, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"ddk-store {__version__}"
    res = CliRunner().invoke(store_cli, ["info", "/nonexistent/x", "--storage-option", "novalue"])
    assert res.exit_code == 2 and "KEY=VALUE" in res.output and "Traceback" not in res.output


# ------------------------------------------------------------------------------------------- one describe()
AD_HOC = re.compile(r"split\(\)\)\[:|splitlines\(\)\[0\]|def describe|def describe_zarr")


def test_exception_text_is_cut_by_describe_only():
    offenders = []
    for path in sorted((REPO / "ddk_store").glob("*.py")):
        if path.name == "errors.py":
            continue
        offenders += [f"{path.name}:{i}" for i, line in enumerate(path.read_text().splitlines(), 1)
                      if AD_HOC.search(line)]
    assert not offenders, offenders
