"""`ddk-teacher dump` to S3 locations as object stores leave them: after an --overwrite (SeaweedFS keeps listing the
prefixes of deleted objects as directories), after a recursive delete, and in a console-made "folder" (a zero-byte
``prefix/`` object). Each is a location with no data, which a dump takes as new."""

from __future__ import annotations

import pytest

from ddk_store import open_store
from ddk_store.validate import validate_store
from ddk_testkit.commands import dump_argv
from ddk_testkit.processes import run_cli, run_process

pytestmark = pytest.mark.s3


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The usual AWS variables of the test server, for dumps run in this process (what a user's shell exports)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(name, s3_server.client_env()[name])
    return s3_server


def dump(teacher, corpora, url, *extra):
    """`ddk-teacher dump` to ``url``, in this process (a child per dump cost 10-17 s of start-up each)."""
    return run_cli("ddk-teacher", dump_argv(teacher, corpora, url, "--max-rows-per-domain", "6", *extra))


def test_overwrite_and_emptied_locations_on_s3_are_new_locations(s3_env, tiny_teacher, corpora_yaml):
    import s3fs

    opts = s3_env.storage_options
    fs = s3fs.S3FileSystem(**opts, skip_instance_cache=True)
    url = "s3://ddk/locations/store"
    code, err = dump(tiny_teacher, corpora_yaml, url)
    assert code == 0, err
    # another --top-k: the packed rows are kept, the store replaced
    code, err = dump(tiny_teacher, corpora_yaml, url, "--top-k", "4", "--overwrite")
    assert code == 0, err
    assert f"{url}: --overwrite replaces the store there (--top-k was 8, this run has 4)" in err, err
    assert open_store(url, storage_options=opts).top_k == 4 and validate_store(url, storage_options=opts) == []
    # another --seq-len: everything replaced, the packed rows too
    code, err = dump(tiny_teacher, corpora_yaml, url, "--seq-len", "24", "--overwrite")
    assert code == 0, err
    assert open_store(url, storage_options=opts).seq_len == 24 and validate_store(url, storage_options=opts) == []
    # every object deleted by hand: a new location
    fs.rm("ddk/locations/store", recursive=True)
    code, err = dump(tiny_teacher, corpora_yaml, url)
    assert code == 0 and "nothing to do" not in err, err
    assert validate_store(url, storage_options=opts) == []
    # a console's "create folder"
    fs.pipe("ddk/locations/folder/", b"")
    code, err = dump(tiny_teacher, corpora_yaml, "s3://ddk/locations/folder")
    assert code == 0, err
    # while a file of the user's there is still refused
    fs.pipe("ddk/locations/notes/NOTES.md", b"mine")
    code, err = dump(tiny_teacher, corpora_yaml, "s3://ddk/locations/notes")
    assert code == 2 and "is not empty and holds no ddk store" in err, err


def test_pack_to_s3_with_bad_credentials_or_endpoint_is_one_line(s3_server, tiny_teacher, corpora_yaml):
    argv = ["pack", *dump_argv(tiny_teacher, corpora_yaml, "s3://ddk/locations/packed")[1:]]
    for change, needle in (({"AWS_SECRET_ACCESS_KEY": "wrong"}, "access denied"),
                           ({"AWS_ENDPOINT_URL": "http://127.0.0.1:1", "DDK_RETRY_SECONDS": "1",
                             "AWS_MAX_ATTEMPTS": "1"}, "unreachable")):
        proc = run_process("stage1_teacher.cli", argv, env={**s3_server.client_env(), **change})
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert lines[-1].startswith("error: ") and needle in lines[-1], lines[-1]
