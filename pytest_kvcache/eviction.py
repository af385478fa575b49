"""Eviction policies: which entry of a full tier leaves it first (``--kv-eviction``).

``MultiTierCache`` keeps one policy object per tier and tells it, with the cache's lock held,
when an entry arrives in the tier (``inserted``: a new write, a demotion from above, a
promotion from below), when it is read (``touched``) and when it leaves (``removed``). When the
tier must make room, ``victim(eligible)`` names the entry to demote (or, in the last tier, to
evict): the first in the policy's order for which ``eligible`` is true (an entry being written,
moved or read, or a broken one, is never a victim). A victim the cache then keeps (the run
ended before it moved) stays in the tier and the policy keeps tracking it.

The policies (``POLICIES``):

- ``lru``: least recently used first (the MLPerf reference's waterfall LRU, seed 003); a write
  or a read makes an entry the most recent.
- ``lfu``: least frequently used first: fewest reads since the entry was stored (its count goes
  with it when it is demoted or promoted, and is forgotten when it leaves the cache); among
  equals, least recently used first. This is "in-cache" LFU, without aging.
- ``size``: largest footprint first, least recently used first among equals: the SIZE policy
  of Williams et al., "Removal policies in network caches for World-Wide Web documents"
  (SIGCOMM 1996). It frees the most bytes per eviction, at the cost of the large entries.
- ``s3fifo``: S3-FIFO of Yang et al., "FIFO queues are all you need for cache eviction"
  (SOSP 2023): a small FIFO queue (10% of the tier's high-water mark, in bytes) that new
  entries enter, a main FIFO queue, and a ghost queue of keys recently evicted from the small
  one (at most 90% of the mark in bytes, keys only). Reads count up to 3 per entry. The small
  queue's oldest entry moves to the main queue if it was read since it arrived (count cleared),
  else it is the victim and its key becomes a ghost. The main queue's oldest entry is the
  victim if its count is 0, else it goes back to the queue's end with its count less one. An
  entry whose key is a ghost when it arrives goes straight into the main queue. The small
  queue is evicted from while it holds 10% of the mark or more (or the main queue is empty).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

POLICIES: tuple[str, ...] = ("lru", "lfu", "size", "s3fifo")
"""The names ``--kv-eviction`` accepts; ``lru`` is the default."""

PROMOTIONS: tuple[str, ...] = ("none", "on-hit")
"""What a read served by a lower tier does (``--kv-promotion``, ``cache.MultiTierCache``):
nothing more, or copy the entry up into the top tier."""

S3FIFO_SMALL_FRACTION = 0.1  # Yang et al.: the small queue holds 10% of the cache
S3FIFO_MAX_FREQ = 3  # a two-bit counter per entry


class Tracked(Protocol):
    """What a policy reads of a cache entry (``cache.Entry``)."""

    key: str
    footprint: int  # bytes it takes in its tier
    hits: int  # reads since it was stored, in any tier


Eligible = Callable[[Tracked], bool]


class EvictionPolicy:
    """The victim order of one tier. Every method is called with the cache's lock held."""

    name = ""

    def inserted(self, entry: Tracked) -> None:
        """``entry`` now lives in the tier."""
        raise NotImplementedError

    def touched(self, entry: Tracked) -> None:
        """``entry`` was read (its ``hits`` already counts this read)."""
        raise NotImplementedError

    def removed(self, entry: Tracked) -> None:
        """``entry`` left the tier (demoted, promoted, evicted or deleted)."""
        raise NotImplementedError

    def victim(self, eligible: Eligible) -> Tracked | None:
        """The entry to move out next, or None when no tracked entry is ``eligible``."""
        raise NotImplementedError


class LRU(EvictionPolicy):
    name = "lru"

    def __init__(self):
        self._order: OrderedDict[str, Tracked] = OrderedDict()  # least recent first

    def inserted(self, entry: Tracked) -> None:
        self._order[entry.key] = entry
        self._order.move_to_end(entry.key)

    def touched(self, entry: Tracked) -> None:
        if entry.key in self._order:
            self._order.move_to_end(entry.key)

    def removed(self, entry: Tracked) -> None:
        if self._order.get(entry.key) is entry:
            del self._order[entry.key]

    def victim(self, eligible: Eligible) -> Tracked | None:
        return next((e for e in self._order.values() if eligible(e)), None)


class _Ranked(EvictionPolicy):
    """Entries in buckets by a rank; the lowest rank goes first, least recent first within a
    bucket. A few distinct ranks (read counts, chunk sizes), so a victim is found fast."""

    def __init__(self):
        self._buckets: dict[int, OrderedDict[str, Tracked]] = {}
        self._rank: dict[str, int] = {}

    def rank(self, entry: Tracked) -> int:
        raise NotImplementedError

    def inserted(self, entry: Tracked) -> None:
        self.removed(entry)
        rank = self._rank[entry.key] = self.rank(entry)
        self._buckets.setdefault(rank, OrderedDict())[entry.key] = entry

    def touched(self, entry: Tracked) -> None:
        if entry.key in self._rank:
            self.inserted(entry)  # new rank, and the most recent of its bucket

    def removed(self, entry: Tracked) -> None:
        rank = self._rank.pop(entry.key, None)
        if rank is None:
            return
        bucket = self._buckets[rank]
        del bucket[entry.key]
        if not bucket:
            del self._buckets[rank]

    def victim(self, eligible: Eligible) -> Tracked | None:
        for rank in sorted(self._buckets):
            for entry in self._buckets[rank].values():
                if eligible(entry):
                    return entry
        return None


class LFU(_Ranked):
    name = "lfu"

    def rank(self, entry: Tracked) -> int:
        return entry.hits


class Size(_Ranked):
    name = "size"

    def rank(self, entry: Tracked) -> int:
        return -entry.footprint  # the largest first


class S3FIFO(EvictionPolicy):
    name = "s3fifo"

    def __init__(self, capacity_bytes: int):
        self.small_limit = S3FIFO_SMALL_FRACTION * capacity_bytes
        self.ghost_limit = (1 - S3FIFO_SMALL_FRACTION) * capacity_bytes
        self.small: OrderedDict[str, Tracked] = OrderedDict()  # oldest first
        self.main: OrderedDict[str, Tracked] = OrderedDict()
        self.ghost: OrderedDict[str, int] = OrderedDict()  # key -> footprint, oldest first
        self.small_bytes = self.ghost_bytes = 0
        self.freq: dict[str, int] = {}
        self._leaving_small: set[str] = set()  # chosen from the small queue: a ghost once gone

    def inserted(self, entry: Tracked) -> None:
        self.removed(entry)
        key = entry.key
        self._leaving_small.discard(key)
        self.freq[key] = 0
        if key in self.ghost:
            self.ghost_bytes -= self.ghost.pop(key)
            self.main[key] = entry
        else:
            self.small[key] = entry
            self.small_bytes += entry.footprint

    def touched(self, entry: Tracked) -> None:
        if entry.key in self.freq:
            self.freq[entry.key] = min(self.freq[entry.key] + 1, S3FIFO_MAX_FREQ)

    def removed(self, entry: Tracked) -> None:
        key = entry.key
        if self.small.get(key) is entry:
            del self.small[key]
            self.small_bytes -= entry.footprint
            if key in self._leaving_small:
                self.ghost[key] = entry.footprint
                self.ghost_bytes += entry.footprint
                while self.ghost_bytes > self.ghost_limit and self.ghost:
                    self.ghost_bytes -= self.ghost.popitem(last=False)[1]
        elif self.main.get(key) is entry:
            del self.main[key]
        else:
            return
        self._leaving_small.discard(key)
        self.freq.pop(key, None)

    def victim(self, eligible: Eligible) -> Tracked | None:
        if self.small_bytes >= self.small_limit or not self.main:
            found = self._from_small(eligible)
            if found is not None:
                return found
        return self._from_main(eligible) or self._from_small(eligible)

    def _from_small(self, eligible: Eligible) -> Tracked | None:
        moved, found = [], None
        for key, entry in self.small.items():  # oldest first; stops at the victim
            if not eligible(entry):
                continue
            if self.freq[key] >= 1:  # read while in the small queue: it moves to the main one
                moved.append(entry)
                continue
            found = entry
            break
        for entry in moved:  # after the scan, in their order: the queue is not changed during it
            del self.small[entry.key]
            self.small_bytes -= entry.footprint
            self.main[entry.key] = entry
            self.freq[entry.key] = 0
        if found is not None:
            self._leaving_small.add(found.key)
        return found

    def _from_main(self, eligible: Eligible) -> Tracked | None:
        for _ in range(S3FIFO_MAX_FREQ + 1):  # each pass lowers every count it passes by one
            passed, found = [], None
            for key, entry in self.main.items():  # oldest first; stops at the victim
                if not eligible(entry):
                    continue
                if self.freq[key] == 0:
                    found = entry
                    break
                self.freq[key] -= 1
                passed.append(key)
            for key in passed:  # back to the queue's end, in their order
                self.main.move_to_end(key)
            if found is not None:
                return found
        return None


def make_policy(name: str, capacity_bytes: int) -> EvictionPolicy:
    """A new policy ``name`` (one of ``POLICIES``) for a tier whose cache holds up to
    ``capacity_bytes`` (its high-water mark). Raises ValueError for an unknown name."""
    if name == "lru":
        return LRU()
    if name == "lfu":
        return LFU()
    if name == "size":
        return Size()
    if name == "s3fifo":
        return S3FIFO(capacity_bytes)
    raise ValueError(f"unknown eviction policy {name!r}; choose one of {', '.join(POLICIES)}")
