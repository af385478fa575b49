"""Eviction policies (eviction.py) and promotion on hit (cache.py): victim orders pinned on
hand-made access sequences, then the same policies and promotion inside MultiTierCache."""

import threading

import pytest
from test_cache import _check_quiescent, _worker, total, where

from pytest_kvcache.backends.base import BackendContext, TierSpec
from pytest_kvcache.backends.mock import MockBackend
from pytest_kvcache.cache import MultiTierCache
from pytest_kvcache.eviction import POLICIES, S3FIFO, make_policy
from pytest_kvcache.payload import NoiseSource, StagingBuffers
from pytest_kvcache.recorder import Recorder

BPT = 10


class E:
    """A stand-in cache entry: what a policy reads."""

    def __init__(self, key, footprint=100):
        self.key, self.footprint, self.hits = key, footprint, 0

    def __repr__(self):
        return self.key


def anyone(entry):
    return True


def drain(policy, entries):
    """Victims in order, each removed as the cache would remove it."""
    out = []
    while (v := policy.victim(anyone)) is not None:
        out.append(v.key)
        policy.removed(v)
    assert len(out) == len(entries)
    return out


def insert(policy, *entries):
    for e in entries:
        policy.inserted(e)


def read(policy, entry, times=1):
    for _ in range(times):
        entry.hits += 1
        policy.touched(entry)


# -- victim orders -------------------------------------------------------------------------

def test_lru_evicts_least_recently_used_first():
    p = make_policy("lru", 1000)
    a, b, c, d = (E(k) for k in "abcd")
    insert(p, a, b, c, d)
    read(p, a)
    read(p, c)
    assert drain(p, [a, b, c, d]) == ["b", "d", "a", "c"]


def test_lfu_evicts_fewest_reads_first_and_least_recent_among_equals():
    p = make_policy("lfu", 1000)
    a, b, c, d = (E(k) for k in "abcd")
    insert(p, a, b, c, d)
    read(p, a, 3)
    read(p, b)
    read(p, d)
    read(p, c, 2)
    # c: 2 reads, a: 3; b and d: 1 each, b read before d; LRU alone would pick a first
    assert drain(p, [a, b, c, d]) == ["b", "d", "c", "a"]


def test_lfu_keeps_an_entrys_count_across_tiers():
    """A demoted entry arrives below with the reads it had above (Entry.hits)."""
    upper, lower = make_policy("lfu", 1000), make_policy("lfu", 1000)
    hot, cold = E("hot"), E("cold")
    insert(upper, hot)
    read(upper, hot, 5)
    upper.removed(hot)
    insert(lower, cold, hot)  # hot arrives after cold, but with 5 reads
    assert lower.victim(anyone) is cold


def test_size_evicts_largest_first_and_least_recent_among_equals():
    p = make_policy("size", 1000)
    x, y, z, w = E("x", 100), E("y", 300), E("z", 200), E("w", 300)
    insert(p, x, y, z, w)
    read(p, y)  # y becomes the more recent of the two largest
    assert drain(p, [x, y, z, w]) == ["w", "y", "z", "x"]


def test_s3fifo_follows_yang_et_al():
    p = make_policy("s3fifo", 1000)  # small queue: 100 B; ghost: up to 900 B of keys
    assert isinstance(p, S3FIFO) and p.small_limit == 100
    a, b, c = E("a", 50), E("b", 50), E("c", 50)
    insert(p, a, b, c)  # all enter the small queue (150 B >= 100 B)
    read(p, b)
    v = p.victim(anyone)
    assert v is a  # the small queue's oldest, never read: out, and a ghost
    p.removed(a)
    assert list(p.ghost) == ["a"]
    v = p.victim(anyone)  # b was read: it moves to the main queue; c is the victim
    assert v is c and list(p.main) == ["b"] and p.freq["b"] == 0
    p.removed(c)
    a2 = E("a", 50)
    insert(p, a2)  # a ghost's key comes back: straight into the main queue
    assert list(p.main) == ["b", "a"] and "a" not in p.ghost and not p.small
    read(p, b, 5)  # counted up to 3
    assert p.freq["b"] == 3
    assert p.victim(anyone) is a2  # small queue empty: the main queue's first with count 0
    p.removed(a2)
    assert p.victim(anyone) is b  # its count runs down by one per pass, then it goes
    assert list(p.ghost) == ["c"]  # a left its ghost on return; main-queue victims leave none


def test_s3fifo_ghost_queue_is_bounded_in_bytes():
    p = make_policy("s3fifo", 1000)
    for i in range(20):
        e = E(f"k{i}", 100)
        p.inserted(e)
        assert p.victim(anyone) is e
        p.removed(e)
    assert p.ghost_bytes <= 900 and list(p.ghost) == [f"k{i}" for i in range(11, 20)]


def test_s3fifo_deleted_entry_is_no_ghost():
    """Only an entry the policy chose leaves a ghost; a rewrite's delete does not."""
    p = make_policy("s3fifo", 1000)
    a = E("a")
    p.inserted(a)
    p.removed(a)
    assert not p.ghost and not p.small and p.small_bytes == 0


@pytest.mark.parametrize("name", POLICIES)
def test_every_policy_skips_ineligible_entries(name):
    p = make_policy(name, 1000)
    a, b = E("a", 100), E("b", 100)
    insert(p, a, b)
    assert p.victim(lambda e: e is not a and e is not b) is None
    assert p.victim(lambda e: e is b) is b


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="lru, lfu, size, s3fifo"):
        make_policy("fifo", 10)


# -- the policies inside the cache -----------------------------------------------------------

@pytest.fixture(scope="module")
def ctx():
    return BackendContext(noise=NoiseSource(1, size=1 << 20), staging=StagingBuffers(1 << 16))


def make_cache(ctx, *caps, eviction="lru", promotion="none", names=("gpu", "cpu", "nvme")):
    backends = [MockBackend(TierSpec(name, "mock", cap), ctx) for name, cap in zip(names, caps, strict=False)]
    rec = Recorder()
    rec.open_window(0)
    return MultiTierCache(backends, rec, BPT, eviction=eviction, promotion=promotion), rec


@pytest.mark.parametrize("eviction, victim", [("lru", "a"), ("lfu", "c"), ("size", "b"), ("s3fifo", "a")])
def test_the_cache_evicts_its_policys_victim(ctx, eviction, victim):
    # one tier with 800 B under its mark: a 200 B, b 240 B, c and d 160 B each (760 B)
    cache, rec = make_cache(ctx, 1000, eviction=eviction, names=("nvme",))
    for key, tokens in (("a", 20), ("b", 24), ("c", 16), ("d", 16)):
        cache.put(key, tokens)
    for key in ("a", "a", "c", "b", "d"):
        assert cache.read(key, "multi_turn") == "nvme"
    # lru: a is least recent; lfu: c has the fewest reads and is least recent of those; size:
    # b is the largest; s3fifo: every entry was read in the small queue, so all move to the
    # main queue with their counts cleared, and its oldest (a) goes
    cache.put("e", 20)  # 200 B: any one of them makes room
    assert {k for k in "abcd" if not cache.contains(k)} == {victim}
    assert total(rec, "nvme", "evict") == 1
    assert cache.check_invariants() == []


def test_waterfall_demotes_the_policys_victim(ctx):
    cache, _ = make_cache(ctx, 1000, 10_000, eviction="lfu")
    for key in "abcd":
        cache.put(key, 20)
    for key in ("a", "b", "b", "c", "d", "a"):
        cache.read(key, "multi_turn")
    cache.put("e", 20)  # lfu: c (1 read, before d); lru would demote b (least recent)
    assert where(cache, "c") == ["cpu"] and where(cache, "b") == ["gpu"]
    cache.put("f", 20)  # e has no read yet: lfu's victim
    assert where(cache, "e") == ["cpu"]
    assert cache.check_invariants() == []


# -- promotion on hit ------------------------------------------------------------------------

def _two_tiers_with_a_demoted(ctx, promotion):
    cache, rec = make_cache(ctx, 1000, 10_000, promotion=promotion)
    for key in "abcde":  # 200 B each: e pushes a (least recent) down to cpu
        cache.put(key, 20)
    assert where(cache, "a") == ["cpu"]
    return cache, rec


def test_without_promotion_a_hit_stays_below(ctx):
    cache, rec = _two_tiers_with_a_demoted(ctx, "none")
    assert cache.read("a", "multi_turn") == "cpu"
    assert cache.read("a", "multi_turn") == "cpu"
    assert total(rec, "gpu", "promote_write") == 0 and "promotions.cpu" not in rec.run_counters


def test_on_hit_promotion_copies_up_and_demotes_to_make_room(ctx):
    cache, rec = _two_tiers_with_a_demoted(ctx, "on-hit")
    demotions = total(rec, "gpu", "demote_read")
    assert cache.read("a", "multi_turn") == "cpu"  # served from cpu, then moved up
    assert where(cache, "a") == ["gpu"]
    assert where(cache, "b") == ["cpu"]  # the gpu's least recent made room for it
    assert total(rec, "gpu", "demote_read") == demotions + 1
    assert rec.total[("gpu", "promote_write")] == [1, 200]  # one write of its 200 B, into gpu
    assert rec.window[("gpu", "promote_write")].bytes == 200
    assert total(rec, "cpu", "delete") == 1  # the copy below is freed
    assert rec.run_counters["promotions.cpu"] == 1
    assert rec.lookups["multi_turn"][:3] == [1, 0, 20]  # one hit of 20 tokens, counted once
    assert cache.read("a", "multi_turn") == "gpu"
    assert rec.run_counters["promotions.cpu"] == 1
    _check_quiescent(cache)


def test_promotion_from_the_last_of_three_tiers_cascades(ctx):
    cache, rec = make_cache(ctx, 1000, 1000, 10_000, promotion="on-hit")
    for i in range(9):  # gpu and cpu hold 4 each: k0 ends on nvme
        cache.put(f"k{i}", 20)
    assert where(cache, "k0") == ["nvme"]
    assert cache.read("k0", "multi_turn") == "nvme"
    assert where(cache, "k0") == ["gpu"]
    assert rec.run_counters["promotions.nvme"] == 1
    assert total(rec, "cpu", "demote_read") >= 1  # room in gpu meant room in cpu first
    _check_quiescent(cache)


def test_an_entry_too_big_for_the_top_tier_is_not_promoted(ctx):
    cache, rec = make_cache(ctx, 1000, 10_000, promotion="on-hit")
    assert cache.put("big", 90) == "cpu"  # 900 B: over gpu's 800 B mark
    assert cache.read("big", "multi_turn") == "cpu"
    assert where(cache, "big") == ["cpu"] and total(rec, "gpu", "promote_write") == 0
    _check_quiescent(cache)


def test_a_failed_promotion_leaves_the_entry_below(ctx):
    gpu = MockBackend(TierSpec("gpu", "mock", 1000, {"full_after_bytes": 800}), ctx)
    cpu = MockBackend(TierSpec("cpu", "mock", 10_000), ctx)
    rec = Recorder()
    rec.open_window(0)
    cache = MultiTierCache([gpu, cpu], rec, BPT, promotion="on-hit")
    for key in "abcde":
        cache.put(key, 20)
    gpu.full_after = 0  # the next write into gpu fails, as a GPU out of memory would
    assert cache.read("a", "multi_turn") == "cpu"
    assert where(cache, "a") == ["cpu"]
    assert "promotions.cpu" not in rec.run_counters
    assert any("promotion of a" in e for e in rec.errors)
    assert cache.read("a", "multi_turn") == "cpu"  # still readable where it was
    assert cache.check_invariants() == []


def test_no_promotion_once_the_run_is_ending(ctx):
    cache, rec = _two_tiers_with_a_demoted(ctx, "on-hit")
    cache.end_promptly()
    assert cache.read("a", "multi_turn") == "cpu"
    assert where(cache, "a") == ["cpu"] and total(rec, "gpu", "promote_write") == 0


def test_unknown_promotion_is_refused(ctx):
    with pytest.raises(ValueError, match="none, on-hit"):
        make_cache(ctx, 1000, promotion="always")


@pytest.mark.parametrize("eviction", POLICIES)
def test_concurrent_traffic_with_promotion_keeps_the_invariants(ctx, eviction):
    cache, rec = make_cache(ctx, 1000, 1500, 2500, eviction=eviction, promotion="on-hit")
    failures, threads = [], []
    for t in range(12):
        keys = [f"s{i}" for i in range(30)]
        threads.append(threading.Thread(target=_worker, args=(cache, t, keys, 200, failures)))
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not any(th.is_alive() for th in threads)
    assert failures == []
    _check_quiescent(cache)
    assert sum(n for k, n in rec.run_counters.items() if k.startswith("promotions.")) > 0
    assert total(rec, "nvme", "evict") > 0


def test_promote_write_is_possible_only_on_the_first_of_several_tiers():
    from pytest_kvcache.criteria import metric_kind
    from pytest_kvcache.judging import not_applicable
    from pytest_kvcache.ops import possible_ops

    assert "promote_write" in possible_ops(["cpu", "nvme"], "cpu")
    assert "promote_write" not in possible_ops(["cpu", "nvme"], "nvme")
    assert "promote_write" not in possible_ops(["nvme"], "nvme")
    assert metric_kind("cpu.promote_write.gbps") == "throughput"  # a data op: it moves bytes
    assert "only the first" in not_applicable("nvme.promote_write.p95", ["cpu", "nvme"], {})
    assert not_applicable("cpu.promote_write.p95", ["cpu", "nvme"], {}) is None
    assert not_applicable("cache.tier_hit_rate.gpu", ["cpu", "nvme"], {}) == "no gpu tier in this scenario"
    assert metric_kind("cache.tier_hit_rate.cpu") == "fraction"


@pytest.mark.parametrize("promotion", ["none", "on-hit"])
def test_the_options_reach_the_cache_of_a_run(tmp_path, promotion):
    from test_engine import settings_for, small_trace

    from pytest_kvcache.backends import default_registry
    from pytest_kvcache.criteria import Criterion
    from pytest_kvcache.engine import provision, run_scenario
    from pytest_kvcache.models import resolve_model
    from pytest_kvcache.tiers import TIER_CONFIGS

    s = settings_for(tmp_path, cpu_mem_gb=0.01, requests_per_user=10, duration=30, nvme_backend="mock",
                     eviction="s3fifo", promotion=promotion)
    prov = provision(TIER_CONFIGS["cpu+storage"], s, default_registry())
    try:
        result = run_scenario(prov, s, resolve_model(s.model), small_trace(s),
                              [Criterion.parse("cpu.promote_write.count>=1")])
    finally:
        prov.close()
    assert result.errors == [] and result.invariant_problems == [], result.failure_message()
    assert result.settings["eviction"] == "s3fifo" and result.trace["workload_sha256"]
    promoted = result.summary["run_counters"].get("promotions.nvme", 0)
    outcome = result.outcomes[0]
    if promotion == "none":
        assert promoted == 0 and "promote_write" not in result.summary["tiers"]["cpu"]
        assert outcome.status == "n/a" and "--kv-promotion none" in outcome.reason
    else:
        assert promoted > 0 and result.summary["tiers"]["cpu"]["promote_write"]["bytes"] > 0
        assert outcome.status == "pass"
