"""A storage outage faked where the store's objects are read: zarr's LocalStore.get raises ConnectionError, as the
storage layer does when a store stops answering. The store code above it (retries, damage detection) runs for real."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

#: Which reads of a matching object fail: its first read only, every read after its first, or every read.
MODES = ("first", "repeat", "all")


@dataclass
class Outage:
    """Reads of objects whose key ``matches`` fail per ``mode`` (changeable while the test runs); ``seen`` holds
    every matching key read so far."""

    matches: Callable[[str], bool]
    mode: str = "all"
    seen: set[str] = field(default_factory=set)

    def fails(self, key: str) -> bool:
        if not self.matches(key):
            return False
        assert self.mode in MODES, self.mode
        first = key not in self.seen
        self.seen.add(key)
        return self.mode == "all" or (self.mode == "first") == first


def fake_outage(monkeypatch, matches: str | Callable[[str], bool], mode: str = "all") -> Outage:
    """Install an :class:`Outage` on LocalStore.get for the rest of the test (``matches``: a key fragment or a
    predicate on the key)."""
    from zarr.storage import LocalStore

    outage = Outage(matches if callable(matches) else (lambda key: matches in key), mode)
    real_get = LocalStore.get

    async def get(self, key, *args, **kwargs):
        if outage.fails(key):
            raise ConnectionError(f"faked outage reading {key}")
        return await real_get(self, key, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "get", get)
    return outage
