"""Shared fixtures: a real S3 server (SeaweedFS) on 127.0.0.1, and a tiny real tokenizer."""

from __future__ import annotations

import pytest

from ddk_testkit.models import build_tiny_tokenizer
from ddk_testkit.s3 import WEED_MISSING, SeaweedS3, weed_binary


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real SeaweedFS S3 endpoint on loopback with bucket 'ddk' (a :class:`ddk_testkit.s3.SeaweedS3`: its
    ``storage_options`` are what s3fs needs); stopped at the end of the session."""
    if weed_binary() is None:
        pytest.skip(WEED_MISSING)
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"))
    try:
        try:
            server.start()
        except RuntimeError as e:
            pytest.fail(str(e))
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_tokenizer")
    build_tiny_tokenizer(d)
    return d
