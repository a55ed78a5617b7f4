"""A format-1.2 shard object parsed byte by byte as docs/store-format.md section 4 describes it (nothing from ddk_store
or zarr reads it): its key, the index at its end with (offset, nbytes) per chunk, the CRC-32C of the index and of each
chunk as little-endian uint32s after the bytes they cover, and the chunks past the array's end. The CRC-32C is a
reference written from its definition (reflected polynomial 0x82F63B78), not a library's."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
from numcodecs import Blosc

NOT_STORED = 2**64 - 1


def _crc_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def test_the_crc_reference_gives_the_published_check_value():
    assert crc32c(b"123456789") == 0xE3069283  # CRC-32C's check value (RFC 3720, appendix B.4)


def checked(raw: bytes, what: str) -> bytes:
    """The bytes before a crc32c codec's 4-byte little-endian checksum, after checking it."""
    body, crc = raw[:-4], int.from_bytes(raw[-4:], "little")
    assert crc32c(body) == crc, f"{what}: crc32c does not match"
    return body


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    from ddk_store.testing import make_tiny_store  # only to *write* the store

    url = tmp_path_factory.mktemp("shards") / "s"
    # 10 training rows in units (= shards) of 4 rows of one-row chunks: the last shard holds 2 chunks of its 4
    make_tiny_store(str(url), domains=("alpha",), train_rows=10, heldout_rows=4, unit_rows=4, seed=5)
    return url


@pytest.mark.parametrize("name", ["tokens", "topk_ids", "topk_logprobs", "target_logprobs", "topk_tail"])
def test_every_shard_of_a_data_array_is_its_chunks_then_their_index(store: Path, name: str):
    import zarr  # the values the chunks must decode to, as plain zarr reads them

    group = store / "alpha" / "train"
    doc = json.loads((group / name / "zarr.json").read_text())
    layout = json.loads((group / "zarr.json").read_text())["attributes"]["ddk_group"]
    n, chunk_rows, shard_rows = layout["n_rows"], layout["chunk_rows"], layout["shard_rows"]
    assert (n, chunk_rows, shard_rows) == (10, 1, 4)
    sharding = doc["codecs"][0]
    assert sharding["name"] == "sharding_indexed" and len(doc["codecs"]) == 1
    config = sharding["configuration"]
    assert config.get("index_location", "end") == "end"
    assert [c["name"] for c in config["index_codecs"]] == ["bytes", "crc32c"]
    assert [c["name"] for c in config["codecs"]] == ["bytes", "blosc", "crc32c"]
    assert doc["chunk_grid"]["configuration"]["chunk_shape"][0] == shard_rows
    assert config["chunk_shape"][0] == chunk_rows
    assert doc["chunk_key_encoding"] == {"name": "default", "configuration": {"separator": "/"}}
    dtype = np.dtype(doc["data_type"]).newbyteorder("<")
    inner = tuple(config["chunk_shape"])
    values = zarr.open_array(str(group / name), mode="r")[:]
    per_shard = shard_rows // chunk_rows
    for shard in range(-(-n // shard_rows)):
        key = group / name / "c" / str(shard) / Path(*["0"] * (len(doc["shape"]) - 1))
        data = key.read_bytes()
        index = np.frombuffer(checked(data[-(16 * per_shard + 4):], f"{key} index"), dtype="<u8")
        for j, (offset, nbytes) in enumerate(index.reshape(per_shard, 2).tolist()):
            row = shard * shard_rows + j * chunk_rows
            if row >= n:  # past the array's end: not stored
                assert offset == nbytes == NOT_STORED, (key, j)
                continue
            body = checked(data[offset:offset + nbytes], f"{key} chunk {j}")
            chunk = np.frombuffer(Blosc().decode(body), dtype=dtype).reshape(inner)
            np.testing.assert_array_equal(chunk, values[row:row + chunk_rows], err_msg=f"{key} chunk {j}")
        stored = [(o, b) for o, b in index.reshape(per_shard, 2).tolist() if o != NOT_STORED]
        assert [o for o, _ in stored] == list(np.cumsum([0] + [b for _, b in stored])[:-1]), "chunks back to back"
        assert sum(b for _, b in stored) + 16 * per_shard + 4 == len(data), "nothing else in the object"


def test_units_is_unsharded_its_rows_carry_only_a_checksum_and_hold_each_units_crcs(store: Path):
    import zarr

    group = store / "alpha" / "train"
    doc = json.loads((group / "units" / "zarr.json").read_text())
    assert [c["name"] for c in doc["codecs"]] == ["bytes", "crc32c"]
    assert doc["shape"] == [3, 6] and doc["chunk_grid"]["configuration"]["chunk_shape"] == [1, 6]
    arrays = ["tokens", "topk_ids", "topk_logprobs", "target_logprobs", "topk_tail"]  # the order of section 4
    values = {a: zarr.open_array(str(group / a), mode="r")[:] for a in arrays}
    for u in range(3):
        row = np.frombuffer(checked((group / "units" / "c" / str(u) / "0").read_bytes(), f"units {u}"), dtype="<u4")
        assert row[0] == 1, row  # done
        for a, crc in zip(arrays, row[1:].tolist()):
            rows = values[a][u * 4:(u + 1) * 4]
            assert zlib.crc32(np.ascontiguousarray(rows).astype(rows.dtype.newbyteorder("<")).tobytes()) == crc, (a, u)
