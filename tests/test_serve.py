"""RequestServer end to end on mock tiers: prompts as KV-block chains with real prefix hits,
shared blocks stored once, RAG documents stored before the window, hit rates per kind."""

import threading
from collections import Counter

from pytest_kvcache.backends.base import BackendContext, TierSpec
from pytest_kvcache.backends.mock import MockBackend
from pytest_kvcache.cache import MultiTierCache
from pytest_kvcache.metrics import compute
from pytest_kvcache.payload import NoiseSource, StagingBuffers
from pytest_kvcache.recorder import Recorder
from pytest_kvcache.runner import RunConfig, Runner
from pytest_kvcache.workload import (
    PromptParams,
    RagParams,
    generate_prompts,
    generate_rag_trace,
    load_jsonl,
    plan_blocks,
    save_jsonl,
)

CTX = BackendContext(noise=NoiseSource(1, size=1 << 20), staging=StagingBuffers(1 << 16))
BPT = 16
BIG = 1 << 40
SHARED = 1024  # system prompt + pool prefix: 4 full blocks of 256 tokens


class CountingBackend(MockBackend):
    """Counts writes and reads per key."""

    def __init__(self, spec, ctx):
        super().__init__(spec, ctx)
        self.writes, self.reads = Counter(), Counter()
        self._count_lock = threading.Lock()

    def write(self, key, nbytes):
        with self._count_lock:
            self.writes[key] += 1
        return super().write(key, nbytes)

    def read(self, key, nbytes):
        res = super().read(key, nbytes)
        with self._count_lock:
            self.reads[key] += 1
        return res


def prompts(users=1, requests_per_user=12, pool=1, **kw):
    return generate_prompts(PromptParams(seed=3, users=users, requests_per_user=requests_per_user,
                                         system_prompt_tokens=512, prefix_pool=pool, prefix_tokens=512,
                                         think_time_scale=0, **kw))


def run(trace, caps=(BIG,), options=None, chunk_tokens=256):
    backends = [CountingBackend(TierSpec(n, "mock", c, dict(options or {})), CTX)
                for n, c in zip(("cpu", "nvme"), caps, strict=False)]
    rec = Recorder()
    cache = MultiTierCache(backends, rec, BPT)
    runner = Runner(cache, trace, rec, RunConfig(duration_s=30.0, generation_mode="none", chunk_tokens=chunk_tokens))
    info = runner.run()
    assert info.trace_exhausted and info.errors == []
    assert cache.check_invariants() == []
    return rec, cache, backends


def shared_keys(trace, chunk_tokens=256):
    first = next(iter(trace))
    return [b.key for b in plan_blocks(first.prompt_segments()[:2], chunk_tokens, "x")]


def test_pool_of_one_every_request_after_the_first_hits_its_prefix():
    """Seed 000's validation: with one prefix, only the very first request misses it."""
    trace = prompts()
    rec, cache, (tier,) = run(trace)
    hit_blocks, miss_blocks, hit_tokens, missed_tokens = rec.lookups["prefix"]
    assert missed_tokens == SHARED and miss_blocks == SHARED // 256  # the first request only
    assert hit_tokens == (len(trace) - 1) * SHARED  # every later request, every turn
    keys = shared_keys(trace)
    assert len(keys) == 4 and all(tier.reads[k] == len(trace) - 1 for k in keys)  # hits are real reads


def test_shared_blocks_are_stored_once_whatever_the_number_of_users():
    trace = prompts(users=8, requests_per_user=4)
    rec, cache, (tier,) = run(trace, options={"latency_s": 0.003})  # slow writes: users overlap
    keys = shared_keys(trace)
    assert [tier.writes[k] for k in keys] == [1, 1, 1, 1]
    # every closed block is content-addressed: none is written twice
    closed = [k for k in tier.writes if not k.endswith(".tail")]
    assert max(tier.writes[k] for k in closed) == 1
    # every request after the first few (users that started together) found the prefix
    assert rec.lookups["prefix"][3] <= 8 * SHARED


def test_a_hit_is_only_a_block_that_was_read_back():
    trace = prompts(requests_per_user=4)
    bad = shared_keys(trace)[1]  # the second shared block cannot be read
    rec, cache, (tier,) = run(trace, options={"fail_read_keys": [bad]})
    hit_blocks, miss_blocks, hit_tokens, _ = rec.lookups["prefix"]
    # each later request reads block 0, fails on block 1: the hit ends there (then it is stored again)
    assert hit_tokens == (len(trace) - 1) * 256
    assert rec.error_count == len(trace) - 1


def test_larger_pool_lower_prefix_hit_rate():
    rates = {}
    for pool in (1, 50):
        rec, *_ = run(prompts(users=2, requests_per_user=20, pool=pool))
        flat, _ = compute(rec, ["cpu"])
        rates[pool] = flat["cache.hit_rate.prefix"]
    assert rates[1] > rates[50]


def test_one_entry_per_segment_mode_keeps_working():
    trace = prompts(requests_per_user=6)
    rec, cache, (tier,) = run(trace, chunk_tokens=0)
    # the system prompt and the prefix are one block each: hit by every request after the first
    assert rec.lookups["prefix"][:2] == [2 * (len(trace) - 1), 2]
    assert not any(k.endswith(".tail") for k in cache._index)


def test_rag_documents_are_stored_before_the_window_and_queries_load_them():
    params = RagParams(seed=1, users=2, requests_per_user=5, documents=4, doc_tokens=(300, 700), top_k=2,
                       think_time_scale=0)
    docs, trace = generate_rag_trace(params)
    rec, cache, (tier,) = run(trace)
    doc_keys = {b.key for d in docs for b in plan_blocks([d.segment()], 256, d.doc_id)}
    assert all(tier.writes[k] == 1 for k in doc_keys)
    window_writes = rec.window[("cpu", "write")].count
    assert rec.total[("cpu", "write")][0] - window_writes == len(doc_keys)  # ingestion is outside the window
    hb, mb, ht, mt = rec.lookups["rag"]
    assert mb == 0 and mt == 0
    assert ht == sum(d.tokens for r in trace for d in docs if d.doc_id in r.rag_chunk_ids)
    assert rec.requests["retrieval"].count == len(trace)
    flat, summary = compute(rec, ["cpu"])
    assert summary["hit_rates"]["rag"] == {"tokens": 1.0, "blocks": 1.0}
    assert trace.lookup_kinds() == {"rag"}


def test_trace_with_segments_and_documents_round_trips(tmp_path):
    _, trace = generate_rag_trace(RagParams(seed=2, users=2, requests_per_user=3, documents=3, top_k=2))
    for t in (trace, prompts(users=2, requests_per_user=5)):
        save_jsonl(t, tmp_path / "t.jsonl")
        back = load_jsonl(tmp_path / "t.jsonl")
        assert back.sha256() == t.sha256()
        assert back.documents == t.documents and [r.to_dict() for r in back] == [r.to_dict() for r in t]
        assert type(back.params) is type(t.params) and back.params.to_dict() == t.params.to_dict()
