"""The multi-tier KV cache: placement, waterfall demotion, eviction and promotion.

New data goes to the fastest tier whose high-water mark (80% of its budget) it can fit under.
When a tier would pass its mark, its eviction policy's victims (``eviction``; least recently
used first by default, the MLPerf reference's waterfall LRU) are demoted one tier down
(recursively, making room below first); the last tier evicts. Space is reserved under the lock
before any I/O starts, so concurrent writers can never over-subscribe a tier. Every byte moved
(reads, writes, both halves of a demotion, promotions, evictions) goes through ``Recorder.io``.

With promotion ``on-hit``, a read served by a lower tier is followed by a copy of the entry into
the top tier (making room there as any write does, so other entries may be demoted), then the
copy below is deleted: the read itself is the promotion's read, the copy is a ``promote_write``
of the top tier and the free a ``delete`` of the lower one. The promotion happens inside the
``read`` call, so its time is part of the request's storage time. An entry being read by
another user is not promoted; a promotion that finds no room, or fails, leaves it where it was.

At the end of a run (``end_promptly``) the cache starts no new work: a put that has not begun
its write gives up, a reservation stops waiting for room, and a demotion not yet written below
is undone. A backend call already under way finishes, so every entry ends ready or gone.
"""

from __future__ import annotations

import threading
import time

from .backends.base import Backend
from .errors import BackendError, BackendFull, IOCut
from .eviction import PROMOTIONS, EvictionPolicy, make_policy
from .ops import COMPUTE_TIER
from .recorder import Recorder

WRITING, READY, MOVING = "writing", "ready", "moving"
HIGH_WATER = 0.8
_WAIT_S = 0.05
_GIVE_UP_S = 10.0  # a reservation that finds every entry busy for this long gives up
_RETRY = object()
_ENDING = object()  # a reservation given up because the run is ending


class Entry:
    __slots__ = ("key", "tokens", "nbytes", "footprint", "tier", "state", "pins", "broken", "hits")

    def __init__(self, key: str, tokens: int, nbytes: int, footprint: int, tier: int):
        self.key, self.tokens, self.nbytes = key, tokens, nbytes
        self.footprint, self.tier = footprint, tier
        self.state, self.pins, self.broken = WRITING, 0, False
        self.hits = 0  # reads since it was stored, in any tier (the lfu policy's count)


def _evictable(entry: Entry) -> bool:
    """An entry a policy may name as victim: stored, not being read, moved or removed."""
    return entry.state == READY and entry.pins == 0 and not entry.broken


class Tier:
    def __init__(self, backend: Backend, high_water: float, eviction: str = "lru"):
        self.backend = backend
        self.name = backend.tier
        self.budget = backend.capacity_bytes
        self.high_water = int(backend.capacity_bytes * high_water)
        self.used = 0
        self.peak = 0
        self.entries: dict[str, Entry] = {}
        self.policy: EvictionPolicy = make_policy(eviction, self.high_water)

    def add(self, entry: Entry) -> None:
        """With the cache's lock held: ``entry`` lives here now (its footprint is accounted by
        the caller)."""
        self.entries[entry.key] = entry
        self.policy.inserted(entry)

    def drop(self, entry: Entry) -> None:
        """With the cache's lock held: ``entry`` left this tier; frees its footprint."""
        del self.entries[entry.key]
        self.used -= entry.footprint
        self.policy.removed(entry)

    def occupancy(self) -> dict:
        return {"entries": len(self.entries), "bytes": self.used, "peak_bytes": self.peak,
                "budget_bytes": self.budget, "high_water_bytes": self.high_water}


class MultiTierCache:
    """The tiers of one run, fastest first. ``eviction`` names each tier's victim order
    (``eviction.POLICIES``), ``promotion`` what a lower tier's hit does (``PROMOTIONS``).
    Raises ValueError for no backends or an unknown policy."""

    def __init__(self, backends: list[Backend], recorder: Recorder, bytes_per_token: int,
                 high_water: float = HIGH_WATER, eviction: str = "lru", promotion: str = "none"):
        if not backends:
            raise ValueError("a cache needs at least one tier")
        if promotion not in PROMOTIONS:
            raise ValueError(f"unknown promotion {promotion!r}; choose one of {', '.join(PROMOTIONS)}")
        self.tiers = [Tier(b, high_water, eviction) for b in backends]
        self.promotion = promotion
        self.compute = backends[0].ctx.compute  # where loads end (compute.py)
        self.recorder = recorder
        self.bytes_per_token = bytes_per_token
        self._cond = threading.Condition(threading.Lock())
        self._index: dict[str, Entry] = {}
        self.dropped = 0  # entries not stored: too big for every tier, or no room anywhere
        self.dropped_too_big = 0  # of those, larger than every tier's high-water mark
        self.dropped_largest = 0  # bytes of the largest entry dropped
        self._ending = False  # set by end_promptly: start no new I/O

    # -- public API -------------------------------------------------------------------
    def end_promptly(self) -> None:
        """The run is ending: from now on ``put`` stores nothing new, a reservation waiting for
        room gives up at once, and a demotion not yet written below is undone (its entry stays
        where it was). Backend calls under way finish. Nothing given up counts as dropped."""
        with self._cond:
            self._ending = True
            self._cond.notify_all()  # wake reservations and waits now, not at their next poll
        for tier in self.tiers:  # backends may stop a call between its transfers (errors.IOCut)
            tier.backend.ctx.ending.set()

    def read(self, key: str, kind: str, tokens: int | None = None) -> str | None:
        """Load ``key`` into the compute device (``compute.py``: with a GPU, the tier's read is
        followed by an ``h2d`` copy, recorded as its own I/O of the ``compute`` pseudo-tier).
        Returns the tier it came from, None on a miss.

        The lookup is recorded as ``kind`` with ``tokens`` (default: the entry's own tokens, or
        0 on a miss); a caller that splits a block's tokens over several kinds records its
        lookups itself (``kind=None``).

        A failed read is an error and a miss, never a hit: the broken entry leaves the cache
        so the caller recomputes and stores it again.
        """
        with self._cond:
            entry = self._wait_settled(key)
            if entry is None:
                if kind is not None:
                    self.recorder.lookup(kind, False, time.perf_counter_ns(), tokens or 0)
                return None
            entry.pins += 1
            entry.hits += 1
            tier = self.tiers[entry.tier]
            tier.policy.touched(entry)
        try:
            with self.compute.load(entry.nbytes) as load:  # the load ends in the compute device
                res = tier.backend.read(key, entry.nbytes)
        except BackendError as exc:
            res = None
            self.recorder.error(f"{tier.name} read of {key}: {exc}")
        except IOCut as cut:  # the run is ending: the entry is fine, the load just stopped
            with self._cond:
                entry.pins -= 1
                self._cond.notify_all()
            self.recorder.io(tier.name, "read", cut.result, entry.tokens, entry.key)
            return None
        except BaseException:
            with self._cond:
                entry.pins -= 1
                self._cond.notify_all()
            raise
        with self._cond:
            entry.pins -= 1
            entry.broken = entry.broken or res is None
            # the last reader of a broken entry removes it, and only if it is still current
            remove = (entry.broken and entry.pins == 0 and entry.state == READY
                      and self._index.get(key) is entry)
            if remove:
                entry.state = MOVING
            self._cond.notify_all()
        if remove:
            self._remove(entry, "delete")
        if res is None:
            if kind is not None:
                self.recorder.lookup(kind, False, time.perf_counter_ns(), entry.tokens if tokens is None else tokens)
            return None
        self.recorder.io(tier.name, "read", res, entry.tokens, entry.key)  # the storage leg
        loaded = load.result  # the copy leg: host staging into GPU memory (None: nothing copied)
        if loaded is not None:
            self.recorder.io(COMPUTE_TIER, "h2d", loaded, entry.tokens, entry.key)
        if kind is not None:
            end = res.end_ns if loaded is None else loaded.end_ns
            self.recorder.lookup(kind, True, end, entry.tokens if tokens is None else tokens, tier=tier.name)
        if self.promotion == "on-hit" and entry.tier > 0:
            self._promote(entry)
        return tier.name

    def put(self, key: str, tokens: int, shared: bool = False) -> str | None:
        """Store ``tokens`` of KV as ``key``. Returns the tier, or None when it was not stored
        (dropped: no room; or the run is ending, see ``end_promptly``).

        ``shared=False`` replaces an older version (a private open tail block, rewritten in
        place). ``shared=True`` is put-if-absent, for content-addressed blocks whose key says
        what they hold: a key already stored, or being written or moved by another user right
        now, is not written again; the call waits for that write and returns where the entry
        is (counted as ``shared_present``). So a block shared by any number of users is stored
        once.

        A tier that reports itself full (GPU out of memory, say) is skipped for the next one;
        when the last one is full too, ``BackendFull`` propagates and ends the run.
        """
        nbytes = tokens * self.bytes_per_token
        while True:
            with self._cond:
                old = self._wait_settled(key)
                if shared and old is not None:
                    self.recorder.count("shared_present")
                    return self.tiers[old.tier].name
                while old is not None and old.pins:  # a reader is still loading the old version
                    self._cond.wait(_WAIT_S)
                    old = self._wait_settled(key)
                if self._ending:
                    return None
                if old is not None:
                    old.state = MOVING  # nobody else may touch it while it is replaced
            if old is not None:
                self._remove(old, "delete")
            placed = self._place(key, tokens, nbytes)  # _RETRY: stored meanwhile by another user
            if placed is not _RETRY:
                return placed

    def discard(self, key: str) -> bool:
        """Delete ``key`` if it is stored (a stale private tail whose tokens now live in a closed
        block), after any write, move or read of it under way. Returns whether it was there."""
        with self._cond:
            old = self._wait_settled(key)
            while old is not None and old.pins:
                self._cond.wait(_WAIT_S)
                old = self._wait_settled(key)
            if old is None:
                return False
            old.state = MOVING
        self._remove(old, "delete")
        return True

    def _place(self, key: str, tokens: int, nbytes: int):
        full: BackendFull | None = None
        fits = False
        for idx, tier in enumerate(self.tiers):
            fp = tier.backend.footprint(nbytes)
            if fp > tier.high_water:
                continue
            fits = True
            entry = Entry(key, tokens, nbytes, fp, idx)
            reserved = self._reserve(idx, fp, entry)
            if reserved is _RETRY:  # another thread stored this key meanwhile: replace it
                return _RETRY
            if reserved is _ENDING:
                return None
            if not reserved:
                continue
            try:
                res = tier.backend.write(key, nbytes)
            except BaseException as exc:
                with self._cond:
                    self._unlink(entry)
                    self._cond.notify_all()
                if isinstance(exc, IOCut):  # the run is ending: not stored, not a drop
                    self.recorder.io(tier.name, "write", exc.result, tokens, key)
                    return None
                if not isinstance(exc, BackendFull):
                    raise
                self.recorder.error(f"{tier.name} full writing {key}: {exc}")
                self.recorder.count(f"full.{tier.name}")
                full = exc
                continue
            with self._cond:
                entry.state = READY
                self._cond.notify_all()
            self.recorder.io(tier.name, "write", res, tokens, key)
            return tier.name
        if full is not None:
            raise full
        with self._cond:
            self.dropped += 1
            self.dropped_too_big += not fits
            self.dropped_largest = max(self.dropped_largest, nbytes)
        self.recorder.count("entries_dropped")
        return None

    def contains(self, key: str) -> bool:
        with self._cond:
            return key in self._index

    # -- placement ------------------------------------------------------------------
    def _wait_settled(self, key: str) -> Entry | None:
        """With the lock held: the entry for ``key`` once no write or move is under way."""
        entry = self._index.get(key)
        while entry is not None and entry.state != READY:
            self._cond.wait(_WAIT_S)
            entry = self._index.get(key)
        return entry

    def _reserve(self, idx: int, nbytes: int, entry: Entry | None = None):
        """Claim ``nbytes`` in tier ``idx``, demoting or evicting its LRU entries as needed.

        With ``entry`` (a new one), index it in the same critical section as the claim, or
        return ``_RETRY`` without claiming if its key was stored meanwhile. Returns ``_ENDING``
        without claiming once the run is ending.
        """
        tier = self.tiers[idx]
        deadline = time.monotonic() + _GIVE_UP_S
        while True:
            with self._cond:
                if self._ending:
                    return _ENDING
                if entry is not None and entry.key in self._index:
                    return _RETRY
                if tier.used + nbytes <= tier.high_water:
                    tier.used += nbytes
                    tier.peak = max(tier.peak, tier.used)
                    if entry is not None:
                        self._index[entry.key] = entry
                        tier.add(entry)
                    return True
                victim = tier.policy.victim(_evictable)
                if victim is None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cond.wait(min(_WAIT_S, left))  # woken by every notify: time, not wake-ups
                    continue
                victim.state = MOVING
            if idx == len(self.tiers) - 1:
                self._remove(victim, "evict")
            else:
                self._demote(victim)

    def _demote(self, entry: Entry) -> None:
        """Move ``entry`` one tier down: read it out, write it below, free it above."""
        src = self.tiers[entry.tier]
        dst_idx = entry.tier + 1
        dst = self.tiers[dst_idx]
        fp = dst.backend.footprint(entry.nbytes)
        reserved = False
        res_r = None
        try:
            reserved = fp <= dst.high_water and self._reserve(dst_idx, fp)
            if reserved is _ENDING:
                self._keep(entry)
                return
            if not reserved:
                self._remove(entry, "evict")  # nowhere to put it: it leaves the cache
                return
            res_r = src.backend.read(entry.key, entry.nbytes)
            self.recorder.io(src.name, "demote_read", res_r, entry.tokens, entry.key)
            if self._ending:  # the copy below is not written yet: keep the entry where it is
                self._keep(entry, dst, fp)
                return
            res_w = dst.backend.write(entry.key, entry.nbytes)
        except IOCut as cut:  # the run is ending mid-copy: nothing below, the entry stays above
            op, where = ("demote_read", src) if res_r is None else ("demote_write", dst)
            self.recorder.io(where.name, op, cut.result, entry.tokens, entry.key)
            self._keep(entry, dst, fp)
            return
        except BaseException as exc:  # never leave the entry 'moving': others wait for it
            if reserved:
                with self._cond:
                    dst.used -= fp
            self._remove(entry, "evict")
            if not isinstance(exc, BackendError):
                raise
            self.recorder.error(f"demotion of {entry.key} from {src.name} to {dst.name}: {exc}")
            return
        self.recorder.io(dst.name, "demote_write", res_w, entry.tokens, entry.key)
        try:
            res_d = src.backend.delete(entry.key)
            self.recorder.io(src.name, "delete", res_d, entry.tokens, entry.key)
        except BackendError as exc:  # the copy below is good; report the stale one above
            self.recorder.error(f"demotion of {entry.key}: freeing it in {src.name} failed: {exc}")
        with self._cond:
            src.drop(entry)
            entry.tier, entry.footprint, entry.state = dst_idx, fp, READY
            dst.add(entry)
            self._cond.notify_all()
        self.recorder.count(f"demotions.{src.name}")

    def _promote(self, entry: Entry) -> None:
        """Copy ``entry``, just read from a lower tier, into the top tier and free it below
        (module docstring). Skipped when another user is reading or moving it, when it cannot
        fit under the top tier's mark, or when the run is ending."""
        with self._cond:
            if (self._ending or not _evictable(entry) or entry.tier == 0
                    or self._index.get(entry.key) is not entry):
                return
            entry.state = MOVING  # nobody else may read, move or replace it meanwhile
        src, top = self.tiers[entry.tier], self.tiers[0]
        fp = top.backend.footprint(entry.nbytes)
        reserved = fp <= top.high_water and self._reserve(0, fp)
        if reserved is not True:  # no room (every entry busy), too big, or the run is ending
            self._keep(entry)
            return
        try:
            res_w = top.backend.write(entry.key, entry.nbytes)
        except IOCut as cut:  # the run is ending mid-copy: the entry stays below
            self.recorder.io(top.name, "promote_write", cut.result, entry.tokens)
            self._keep(entry, top, fp)
            return
        except BaseException as exc:  # a full or failing top tier: the entry stays below
            self._keep(entry, top, fp)
            if not isinstance(exc, BackendError):
                raise
            self.recorder.error(f"promotion of {entry.key} from {src.name} to {top.name}: {exc}")
            return
        self.recorder.io(top.name, "promote_write", res_w, entry.tokens)
        try:
            res_d = src.backend.delete(entry.key)
            self.recorder.io(src.name, "delete", res_d, entry.tokens)
        except BackendError as exc:  # the copy above is good; report the stale one below
            self.recorder.error(f"promotion of {entry.key}: freeing it in {src.name} failed: {exc}")
        with self._cond:
            src.drop(entry)
            entry.tier, entry.footprint, entry.state = 0, fp, READY
            top.add(entry)
            self._cond.notify_all()
        self.recorder.count(f"promotions.{src.name}")

    def _keep(self, entry: Entry, dst: Tier | None = None, fp: int = 0) -> None:
        """Undo a demotion that has written nothing below: free ``fp`` reserved in ``dst``, and
        the entry is ready again where it is."""
        with self._cond:
            if dst is not None:
                dst.used -= fp
            entry.state = READY
            self._cond.notify_all()

    def _remove(self, entry: Entry, op: str) -> None:
        """Delete ``entry`` from its tier (an eviction, or the old version of a rewrite)."""
        tier = self.tiers[entry.tier]
        try:
            res = tier.backend.delete(entry.key)
        except BackendError as exc:  # e.g. its file vanished: account it gone, report the error
            self.recorder.error(f"{tier.name} {op} of {entry.key}: {exc}")
            res = None
        finally:
            with self._cond:
                self._unlink(entry)
                self._cond.notify_all()
        if res is not None:
            self.recorder.io(tier.name, op, res, entry.tokens, entry.key)
        if op == "evict":
            self.recorder.count(f"evictions.{tier.name}")

    def _unlink(self, entry: Entry) -> None:
        tier = self.tiers[entry.tier]
        if tier.entries.get(entry.key) is entry:  # never another version of the same key
            tier.drop(entry)
        if self._index.get(entry.key) is entry:
            del self._index[entry.key]

    # -- checks and reporting -----------------------------------------------------------
    def occupancy(self) -> dict[str, dict]:
        with self._cond:
            return {t.name: t.occupancy() for t in self.tiers}

    def check_invariants(self) -> list[str]:
        """Design section 4's invariants; call when no I/O is in flight. Returns violations."""
        problems = []
        with self._cond:
            seen = set()
            for t in self.tiers:
                accounted = sum(e.footprint for e in t.entries.values())
                if accounted != t.used:
                    problems.append(f"{t.name}: accounted {t.used} B but entries sum to {accounted} B")
                if t.peak > t.budget:
                    problems.append(f"{t.name}: peak {t.peak} B went over its budget {t.budget} B")
                busy = [e.key for e in t.entries.values() if e.state != READY or e.pins]
                if busy:
                    problems.append(f"{t.name}: {len(busy)} entries still busy at the end")
                try:
                    stored = t.backend.stored_keys()
                except (OSError, BackendError) as exc:
                    problems.append(f"{t.name}: cannot list stored entries: {exc}")
                    stored = set(t.entries)
                try:
                    unknown = t.backend.unknown_files()
                except OSError as exc:
                    problems.append(f"{t.name}: cannot list its files: {exc}")
                    unknown = []
                if unknown:
                    shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
                    problems.append(f"{t.name}: {len(unknown)} files in its directory that are not the tier's: {shown}")
                if stored != set(t.entries):
                    problems.append(
                        f"{t.name}: backend holds {len(stored)} entries, cache accounts {len(t.entries)}"
                        f" ({len(stored - set(t.entries))} unknown, {len(set(t.entries) - stored)} missing)")
                dup = seen & set(t.entries)
                if dup:
                    problems.append(f"{t.name}: {len(dup)} entries also live in a faster tier")
                seen |= set(t.entries)
            if seen != set(self._index):
                problems.append("index and tiers disagree on which entries exist")
        return problems
