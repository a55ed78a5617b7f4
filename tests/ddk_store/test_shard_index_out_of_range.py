"""A shard index whose checksum matches but whose entries point past any file (a store written by another tool, or
tampered with) is damage of that unit, reported as such by a reader, never a bare OverflowError."""

from __future__ import annotations

import google_crc32c
import numpy as np
import pytest

from ddk_store import open_store
from ddk_store.errors import StoreCorruptError
from ddk_store.testing import make_tiny_store

BIG = np.iinfo(np.uint64).max  # EMPTY: only both fields EMPTY mean "no chunk"


@pytest.mark.parametrize("entry", [(BIG, 166), (166, BIG), (2**63, 8)], ids=["offset-empty", "nbytes-empty", "huge"])
def test_an_out_of_range_shard_index_entry_is_damage_of_its_unit(tmp_path, entry):
    store = tmp_path / "store"
    make_tiny_store(str(store), domains=("alpha",), train_rows=4, heldout_rows=2, unit_rows=4, seq_len=16, top_k=8,
                    vocab_size=300)
    [shard] = [p for p in (store / "alpha" / "train" / "topk_ids").rglob("*") if p.is_file() and p.name != "zarr.json"]
    whole, n = shard.read_bytes(), 4
    index = np.frombuffer(whole[-(16 * n + 4):-4], dtype="<u8").reshape(n, 2).copy()
    index[1] = entry
    body = index.tobytes()
    shard.write_bytes(whole[:-(16 * n + 4)] + body + google_crc32c.value(body).to_bytes(4, "little"))
    with pytest.raises(StoreCorruptError, match=r"alpha/train/topk_ids .*ddk-store repair"):
        open_store(str(store)).read_rows("alpha", "train", [1])
