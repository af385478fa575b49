"""MultiTierCache: placement, waterfall demotion, eviction, rewrites, lookups and invariants."""

import random
import threading

import pytest

from pytest_kvcache.backends.base import BackendContext, TierSpec
from pytest_kvcache.backends.mock import MockBackend
from pytest_kvcache.cache import HIGH_WATER, MultiTierCache
from pytest_kvcache.errors import BackendError
from pytest_kvcache.payload import NoiseSource, StagingBuffers
from pytest_kvcache.recorder import Recorder

BPT = 10  # bytes per token: an entry of t tokens is 10*t bytes


@pytest.fixture(scope="module")
def ctx():
    return BackendContext(noise=NoiseSource(1, size=1 << 20), staging=StagingBuffers(1 << 16))


def make_cache(ctx, *caps, names=("gpu", "cpu", "nvme"), bpt=BPT, **options):
    backends = [MockBackend(TierSpec(name, "mock", cap, dict(options)), ctx)
                for name, cap in zip(names, caps, strict=False)]
    rec = Recorder()
    rec.open_window(0)
    return MultiTierCache(backends, rec, bpt), rec


def total(rec, tier, op):
    return rec.total.get((tier, op), [0, 0])[0]


def where(cache, key):
    return [t.name for t in cache.tiers if key in t.entries]


# -- placement --------------------------------------------------------------------------

def test_new_entries_go_to_the_fastest_tier(ctx):
    cache, rec = make_cache(ctx, 1000, 1000)
    assert cache.put("a", 10) == "gpu"
    assert where(cache, "a") == ["gpu"]
    assert cache.tiers[0].used == 100 and cache.tiers[1].used == 0
    assert total(rec, "gpu", "write") == 1
    assert rec.total[("gpu", "write")][1] == 100
    assert cache.contains("a") and not cache.contains("b")
    assert cache.check_invariants() == []


def test_entry_over_a_tiers_high_water_goes_to_the_next_tier(ctx):
    cache, rec = make_cache(ctx, 1000, 10_000)
    assert cache.tiers[0].high_water == int(1000 * HIGH_WATER) == 800
    assert cache.put("fits", 80) == "gpu"  # exactly the high-water mark
    assert cache.put("big", 81) == "cpu"  # 810 B > 800 B: skips gpu without demoting anything
    assert where(cache, "fits") == ["gpu"]
    assert total(rec, "gpu", "demote_read") == 0
    assert cache.check_invariants() == []


def test_entry_too_big_for_every_tier_is_dropped(ctx):
    cache, rec = make_cache(ctx, 1000, 2000)
    assert cache.put("huge", 161) is None  # 1610 B > 1600 B high-water of the last tier
    assert cache.dropped == 1
    assert rec.run_counters["entries_dropped"] == 1
    assert not cache.contains("huge")
    assert rec.total == {}
    assert cache.read("huge", "multi_turn") is None
    assert cache.check_invariants() == []


# -- waterfall ------------------------------------------------------------------------

def test_filling_tier0_demotes_lru_entries_to_tier1(ctx):
    cache, rec = make_cache(ctx, 1000, 10_000)  # gpu high water 800 B: 8 entries of 100 B
    for i in range(8):
        assert cache.put(f"k{i}", 10) == "gpu"
    assert total(rec, "gpu", "demote_read") == 0
    assert cache.put("k8", 10) == "gpu"
    # k0 was least recently used: read out of gpu, written to cpu, deleted from gpu
    assert where(cache, "k0") == ["cpu"]
    assert total(rec, "gpu", "demote_read") == 1
    assert total(rec, "cpu", "demote_write") == 1
    assert total(rec, "gpu", "delete") == 1
    assert rec.total[("cpu", "demote_write")][1] == 100
    assert rec.run_counters["demotions.gpu"] == 1
    assert cache.tiers[0].used == 800 and cache.tiers[1].used == 100
    assert cache.check_invariants() == []


def test_read_touches_lru_so_the_read_entry_stays(ctx):
    cache, rec = make_cache(ctx, 1000, 10_000)
    for i in range(8):
        cache.put(f"k{i}", 10)
    assert cache.read("k0", "multi_turn") == "gpu"  # k0 is now the most recently used
    cache.put("k8", 10)
    cache.put("k9", 10)
    assert where(cache, "k0") == ["gpu"]
    assert where(cache, "k1") == ["cpu"] and where(cache, "k2") == ["cpu"]
    assert cache.check_invariants() == []


def test_last_tier_evicts(ctx):
    cache, rec = make_cache(ctx, 500, 500)  # 4 entries of 100 B per tier
    for i in range(9):
        cache.put(f"k{i}", 10)
    # 9 entries, room for 8: the oldest left the cache through an eviction of the last tier
    assert not cache.contains("k0")
    assert total(rec, "cpu", "evict") == 1
    assert rec.run_counters["evictions.cpu"] == 1
    assert [t.occupancy()["entries"] for t in cache.tiers] == [4, 4]
    assert cache.read("k0", "multi_turn") is None
    assert cache.check_invariants() == []


def test_waterfall_recurses_across_three_tiers(ctx):
    cache, rec = make_cache(ctx, 250, 250, 250)  # high water 200 B: 2 entries of 100 B each
    for i in range(7):
        assert cache.put(f"k{i}", 10) == "gpu"
    assert where(cache, "k6") == ["gpu"] and where(cache, "k5") == ["gpu"]
    assert where(cache, "k4") == ["cpu"] and where(cache, "k3") == ["cpu"]
    assert where(cache, "k2") == ["nvme"] and where(cache, "k1") == ["nvme"]
    assert not cache.contains("k0")
    assert total(rec, "cpu", "demote_read") >= 1 and total(rec, "nvme", "demote_write") >= 1
    assert total(rec, "nvme", "evict") == 1
    assert total(rec, "gpu", "demote_read") == 5
    assert cache.read("k1", "multi_turn") == "nvme"
    assert cache.check_invariants() == []


def test_demotion_falls_back_to_eviction_when_next_tier_cannot_hold_it(ctx):
    cache, rec = make_cache(ctx, 1000, 500)  # cpu high water 400 B
    cache.put("big", 50)  # 500 B in gpu; too big for cpu
    cache.put("x", 40)  # 400 B: gpu would pass 800 B, big must leave it
    assert not cache.contains("big")
    assert total(rec, "gpu", "evict") == 1
    assert where(cache, "x") == ["gpu"]
    assert cache.check_invariants() == []


# -- rewrite ----------------------------------------------------------------------------

def test_rewrite_replaces_without_double_accounting(ctx):
    cache, rec = make_cache(ctx, 1000, 10_000)
    cache.put("conv.k00000", 10)  # partial tail chunk ...
    cache.put("other", 10)
    assert cache.put("conv.k00000", 25) == "gpu"  # ... grows and is rewritten under the same key
    assert cache.tiers[0].used == 350
    assert len(cache.tiers[0].entries) == 2
    assert cache.tiers[0].entries["conv.k00000"].tokens == 25
    assert total(rec, "gpu", "write") == 3
    assert total(rec, "gpu", "delete") == 1  # the old version
    assert cache.check_invariants() == []


def test_rewrite_of_a_demoted_entry_lands_in_the_fastest_tier(ctx):
    cache, rec = make_cache(ctx, 250, 1000)
    for i in range(3):
        cache.put(f"k{i}", 10)
    assert where(cache, "k0") == ["cpu"]
    cache.put("k0", 11)
    assert where(cache, "k0") == ["gpu"]
    assert total(rec, "cpu", "delete") == 1
    assert cache.check_invariants() == []


# -- lookups -------------------------------------------------------------------------

def test_read_hit_and_miss_are_recorded(ctx):
    cache, rec = make_cache(ctx, 1000, 1000)
    cache.put("a", 10)
    assert cache.read("a", "prefix") == "gpu"
    assert cache.read("nope", "prefix") is None
    assert cache.read("nope", "multi_turn") is None
    # [hit blocks, missed blocks, hit tokens, missed tokens]: a miss's tokens are unknown (0)
    assert rec.lookups == {"prefix": [1, 1, 10, 0], "multi_turn": [0, 1, 0, 0]}
    assert total(rec, "gpu", "read") == 1
    assert rec.window[("gpu", "read")].tokens == 10
    assert rec.window[("gpu", "read")].bytes == 100


def test_a_failed_write_leaves_no_trace(ctx):
    class Failing(MockBackend):
        def write(self, key, nbytes):
            raise BackendError("disk on fire")

    rec = Recorder()
    rec.open_window(0)
    cache = MultiTierCache([Failing(TierSpec("nvme", "mock", 1000), ctx)], rec, BPT)
    with pytest.raises(BackendError):
        cache.put("a", 10)
    assert not cache.contains("a")
    assert cache.tiers[0].used == 0
    assert cache.check_invariants() == []


def test_a_cache_needs_a_tier():
    with pytest.raises(ValueError):
        MultiTierCache([], Recorder(), BPT)


# -- invariants -----------------------------------------------------------------------

def test_invariants_report_an_entry_lost_behind_the_cache(ctx):
    cache, _ = make_cache(ctx, 1000, 1000)
    for i in range(10):
        cache.put(f"k{i}", 10)
    assert cache.check_invariants() == []
    backend = cache.tiers[1].backend
    lost = next(iter(backend._sizes))
    del backend._sizes[lost]  # the medium lost it; the cache still accounts it
    problems = cache.check_invariants()
    assert any("cpu" in p and "missing" in p for p in problems), problems


def test_invariants_report_an_unknown_entry(ctx):
    cache, _ = make_cache(ctx, 1000, 1000)
    cache.put("a", 10)
    cache.tiers[0].backend._sizes["stray"] = 5
    assert any("unknown" in p for p in cache.check_invariants())


def test_invariants_report_corrupt_accounting(ctx):
    cache, _ = make_cache(ctx, 1000, 1000)
    cache.put("a", 10)
    cache.tiers[0].used += 7
    problems = cache.check_invariants()
    assert any("gpu: accounted" in p for p in problems), problems


def test_invariants_report_an_entry_in_two_tiers_and_an_over_budget_peak(ctx):
    cache, _ = make_cache(ctx, 1000, 1000)
    cache.put("a", 10)
    entry = cache.tiers[0].entries["a"]
    cache.tiers[1].entries["a"] = entry
    cache.tiers[1].used += entry.footprint
    cache.tiers[1].backend._sizes["a"] = 100
    cache.tiers[0].peak = 5000
    problems = cache.check_invariants()
    assert any("also live in a faster tier" in p for p in problems), problems
    assert any("over its budget" in p for p in problems), problems


# -- concurrency ------------------------------------------------------------------------

def _worker(cache, seed, keys, ops, failures):
    rng = random.Random(seed)
    try:
        for _ in range(ops):
            key = rng.choice(keys)
            if rng.random() < 0.5:
                cache.put(key, rng.randint(1, 30))
            else:
                cache.read(key, "multi_turn")
    except BaseException as exc:  # surfaces in the main thread
        failures.append(repr(exc))


def _check_quiescent(cache):
    assert cache.check_invariants() == []
    for t in cache.tiers:
        assert t.peak <= t.high_water <= t.budget
        assert t.used == sum(e.footprint for e in t.entries.values())
    index = set(cache._index)
    for key in index:
        assert len(where(cache, key)) == 1, key
    assert index == set().union(*(set(t.entries) for t in cache.tiers))


@pytest.mark.parametrize("shared_keys", [False, True], ids=["own-keys", "shared-keys"])
def test_concurrent_puts_and_reads_keep_the_invariants(ctx, shared_keys):
    # budgets of a few entries, so nearly every put demotes and the last tier evicts
    cache, rec = make_cache(ctx, 1000, 1500, 2500)
    nthreads, ops = 16, 300
    for phase in range(3):
        failures = []
        threads = []
        for t in range(nthreads):
            keys = ([f"s{i}" for i in range(40)] if shared_keys
                    else [f"t{t}.k{i}" for i in range(8)])
            threads.append(threading.Thread(
                target=_worker, args=(cache, phase * 100 + t, keys, ops, failures)))
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert not any(th.is_alive() for th in threads)
        assert failures == []
        _check_quiescent(cache)
    assert total(rec, "gpu", "demote_read") > 0
    assert total(rec, "nvme", "evict") > 0
    hits, misses, _, _ = rec.lookups["multi_turn"]
    assert hits > 0 and misses > 0


def test_rewrite_waits_for_a_reader_of_the_old_version(ctx):
    """A put that replaces a key must not delete the old version under a reader's feet."""

    class Media(MockBackend):
        """Like a file or an arena page: a read fails if its entry was replaced meanwhile."""

        def __init__(self, spec, ctx):
            super().__init__(spec, ctx)
            self.version = {}
            self.reading = threading.Event()
            self.go = threading.Event()

        def write(self, key, nbytes):
            self.version[key] = self.version.get(key, 0) + 1
            return super().write(key, nbytes)

        def read(self, key, nbytes):
            seen = self.version.get(key)
            if key == "a" and not self.go.is_set():
                self.reading.set()
                self.go.wait(5)
            if self.version.get(key) != seen or key not in self._sizes:
                raise BackendError(f"{key} was replaced while it was being read")
            return super().read(key, nbytes)

    rec = Recorder()
    rec.open_window(0)
    media = Media(TierSpec("cpu", "mock", 10_000), ctx)
    cache = MultiTierCache([media], rec, BPT)
    cache.put("a", 10)
    results = {}
    reader = threading.Thread(target=lambda: results.setdefault("read", cache.read("a", "multi_turn")))
    reader.start()
    assert media.reading.wait(5)
    writer = threading.Thread(target=lambda: results.setdefault("put", cache.put("a", 20)))
    writer.start()
    writer.join(0.2)  # the writer must wait for the pinned reader
    media.go.set()
    reader.join(5)
    writer.join(5)
    assert results == {"read": "cpu", "put": "cpu"}
    assert rec.errors == []
    assert cache.tiers[0].entries["a"].tokens == 20
    assert cache.check_invariants() == []
    assert cache.read("a", "multi_turn") == "cpu"


# -- the end of a run --------------------------------------------------------------------

def test_after_end_promptly_a_put_stores_nothing_and_is_not_a_drop(ctx):
    cache, rec = make_cache(ctx, 1000, 1000)
    cache.put("a", 10)
    cache.end_promptly()
    assert cache.put("b", 10) is None
    assert cache.put("a", 20) is None  # not even the old version's delete starts
    assert where(cache, "a") == ["gpu"] and cache.tiers[0].entries["a"].tokens == 10
    assert not cache.contains("b")
    assert cache.dropped == 0 and "entries_dropped" not in rec.run_counters
    assert total(rec, "gpu", "write") == 1 and total(rec, "gpu", "delete") == 0
    assert cache.read("a", "multi_turn") == "gpu"  # reads still work: each is one backend call
    assert cache.check_invariants() == []


class SlowReads(MockBackend):
    """A mock whose reads wait for ``go`` (set ``reading`` first): a read stays under way."""

    def __init__(self, spec, ctx):
        super().__init__(spec, ctx)
        self.reading = threading.Event()
        self.go = threading.Event()

    def read(self, key, nbytes):
        self.reading.set()
        self.go.wait(10)
        return super().read(key, nbytes)


def test_a_reservation_waiting_for_room_gives_up_at_once_when_the_run_ends(ctx):
    """Every entry of the only tier is pinned by a slow read: a put waits for room. Ending the
    run wakes it; it stores nothing, counts no drop, and the cache stays consistent."""

    rec = Recorder()
    rec.open_window(0)
    media = SlowReads(TierSpec("nvme", "mock", 1000), ctx)
    cache = MultiTierCache([media], rec, BPT)
    cache.put("a", 80)  # fills the tier to its high-water mark
    results = {}
    reader = threading.Thread(target=lambda: results.setdefault("read", cache.read("a", "multi_turn")))
    reader.start()
    assert media.reading.wait(5)
    writer = threading.Thread(target=lambda: results.setdefault("put", cache.put("b", 10)))
    writer.start()
    writer.join(0.2)
    assert writer.is_alive()  # waiting for room: the only entry is pinned
    cache.end_promptly()
    writer.join(2.0)  # well under the 10 s a reservation otherwise waits before it gives up
    assert not writer.is_alive()
    media.go.set()
    reader.join(5)
    assert results == {"put": None, "read": "nvme"}  # the read under way finished
    assert cache.dropped == 0 and not cache.contains("b")
    assert total(rec, "nvme", "evict") == 0
    assert cache.check_invariants() == []


def test_a_demotion_whose_read_is_under_way_is_undone_when_the_run_ends(ctx):
    """The demotion's read finishes (never cut), its write below never starts: the entry stays
    ready in the upper tier, the room reserved below is given back, the new entry is not stored."""

    rec = Recorder()
    rec.open_window(0)
    upper = SlowReads(TierSpec("cpu", "mock", 1000), ctx)
    lower = MockBackend(TierSpec("nvme", "mock", 10_000), ctx)
    cache = MultiTierCache([upper, lower], rec, BPT)
    cache.put("a", 80)  # the upper tier is at its mark: the next put demotes "a"
    results = {}
    writer = threading.Thread(target=lambda: results.setdefault("put", cache.put("b", 10)))
    writer.start()
    assert upper.reading.wait(5)  # the demotion is reading "a" out of the upper tier
    cache.end_promptly()
    upper.go.set()
    writer.join(5)
    assert results == {"put": None}
    assert where(cache, "a") == ["cpu"] and not cache.contains("b")
    assert cache.tiers[1].used == 0 and cache.tiers[1].entries == {}
    assert total(rec, "cpu", "demote_read") == 1  # the read that was under way counts as I/O
    assert total(rec, "nvme", "demote_write") == 0 and total(rec, "cpu", "write") == 1
    assert cache.dropped == 0
    assert cache.check_invariants() == []
    assert cache.read("a", "multi_turn") == "cpu"  # ready again, not stuck 'moving'


def test_ios_cut_by_the_run_ending_count_their_transfers_but_store_and_drop_nothing(tmp_path):
    """A put and a read cut between transfers (the backend saw the run's end): the transfers
    inside the window are bytes moved, the I/O is no completed op, the entry cut while written
    is neither stored nor a drop, the entry cut while read stays stored."""
    from pytest_kvcache.backends.file import FileBackend

    ctx = BackendContext(noise=NoiseSource(seed=1, size=1 << 20), staging=StagingBuffers(8192), run_dir=tmp_path)
    be = FileBackend(TierSpec("nvme", "file", 1 << 30), ctx)
    if not be.direct:
        pytest.skip(f"{tmp_path} is memory: no O_DIRECT, no cut writes")
    rec = Recorder()
    rec.open_window(0)
    cache = MultiTierCache([be], rec, 1000)
    assert cache.put("kept", 20) == "nvme"  # 20,000 bytes: three transfers of at most 8 KiB
    ctx.ending.set()  # what end_promptly does to the backends
    assert cache.read("kept", "multi_turn") is None  # cut after its first transfer
    assert cache.put("cut", 20) is None
    assert cache.dropped == 0 and not cache.contains("cut") and cache.contains("kept")
    read, write = rec.window[("nvme", "read")], rec.window[("nvme", "write")]
    assert (read.count, read.bytes) == (0, 8192)
    assert (write.count, write.bytes) == (1, 20480 + 8192)
    assert cache.check_invariants() == []
    cache.end_promptly()
    assert ctx.ending.is_set()
    be.close()


# -- shared (content-addressed) blocks ------------------------------------------------

def test_shared_put_of_a_stored_key_writes_nothing(ctx):
    cache, rec = make_cache(ctx, 1000, 1000)
    assert cache.put("blk", 10, shared=True) == "gpu"
    assert cache.put("blk", 10, shared=True) == "gpu"  # already stored: where it is
    assert total(rec, "gpu", "write") == 1 and total(rec, "gpu", "delete") == 0
    assert rec.run_counters["shared_present"] == 1
    assert cache.put("blk", 10) == "gpu"  # a plain put still replaces (the private tail's path)
    assert total(rec, "gpu", "write") == 2 and total(rec, "gpu", "delete") == 1


def test_concurrent_shared_puts_store_a_key_once(ctx):
    """Users that miss the same block at once: one writes, the others wait for that write."""
    cache, rec = make_cache(ctx, 1 << 20, latency_s=0.05)
    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.put("blk", 10, shared=True)))
               for _ in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert results == ["gpu"] * 6
    assert total(rec, "gpu", "write") == 1
    assert rec.run_counters["shared_present"] == 5
    assert cache.check_invariants() == []


def test_discard_deletes_a_stale_tail(ctx):
    cache, rec = make_cache(ctx, 1000)
    cache.put("c.tail", 5)
    assert cache.discard("c.tail") is True and not cache.contains("c.tail")
    assert cache.discard("c.tail") is False
    assert total(rec, "gpu", "delete") == 1 and cache.check_invariants() == []
