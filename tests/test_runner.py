"""Runner: closed-loop users replaying a trace against mock tiers."""

import re
import threading

import pytest

from pytest_kvcache.backends.base import BackendContext, TierSpec
from pytest_kvcache.backends.mock import MockBackend
from pytest_kvcache.cache import MultiTierCache
from pytest_kvcache.errors import BackendError
from pytest_kvcache.payload import NoiseSource, StagingBuffers
from pytest_kvcache.recorder import Recorder
from pytest_kvcache.runner import RunConfig, Runner
from pytest_kvcache.workload import BlockSequence, Request, Trace, WorkloadParams, generate_trace

CTX = BackendContext(noise=NoiseSource(1, size=1 << 20), staging=StagingBuffers(1 << 16))
BPT = 16
BIG = 1 << 40
DURATION = 30.0


def params(seed=7, users=3, requests_per_user=5):
    return WorkloadParams(seed=seed, users=users, requests_per_user=requests_per_user,
                          think_time_scale=0)


def run(p=None, caps=(BIG, BIG), backend=MockBackend, options=None, on_tick=None, rec=None, trace=None,
        **config):
    trace = trace or generate_trace(p or params())
    names = ("gpu", "cpu", "nvme")
    backends = [backend(TierSpec(n, "mock", c, dict(options or {})), CTX) for n, c in zip(names, caps, strict=False)]
    rec = rec or Recorder()
    cache = MultiTierCache(backends, rec, BPT)
    cfg = {"duration_s": DURATION, "warmup_s": 0.0, "generation_mode": "none", **config}
    runner = Runner(cache, trace, rec, RunConfig(**cfg), on_tick=on_tick)
    info = runner.run()
    return info, rec, cache, trace


def ops(rec):
    return {key: list(v) for key, v in sorted(rec.total.items())}


def test_every_request_finishes_and_the_run_ends_with_the_trace():
    info, rec, cache, trace = run()
    assert len(trace) == 15
    assert info.requests_started == info.requests_finished == 15
    assert info.users_exhausted == 3
    assert info.trace_exhausted is True
    assert info.errors == [] and not info.aborted
    assert info.finished_ns - info.started_ns < DURATION * 1e9
    assert rec.window_start_ns is not None and rec.window_end_ns is not None
    assert rec.total[("gpu", "write")][0] > 0
    assert rec.total[("gpu", "read")][0] > 0
    assert ("cpu", "write") not in rec.total  # everything fit in the first tier
    hit_blocks, miss_blocks, hit_tokens, _ = rec.lookups["multi_turn"]
    assert hit_blocks > 0 and hit_tokens > 0
    # every closed history block was stored: a turn misses at most its former open tail
    # (vLLM keys full blocks only), one block per later turn
    assert miss_blocks <= sum(r.turn > 1 for r in trace.requests())
    assert rec.counters["requests"] == 15  # no warm-up: every request counts in the window
    assert rec.window[("gpu", "write")].count == rec.total[("gpu", "write")][0]
    assert rec.window_start_ns == info.started_ns
    assert cache.check_invariants() == []
    assert cache.dropped == 0


def test_every_stored_token_is_accounted():
    info, rec, cache, trace = run()
    # every token is in exactly one stored block: closed blocks by content key, each
    # conversation's open tail under its private key (a stale tail is deleted)
    stored = sum(e.tokens for t in cache.tiers for e in t.entries.values())
    expected = sum(r.context_tokens + r.generate_tokens for r in trace.requests())
    assert stored == expected
    assert all(re.fullmatch(r"[0-9a-f]{24}|u\d{4}c\d{4}\.tail", k) for k in cache._index)


def test_small_budgets_demote_and_evict_but_keep_invariants():
    info, rec, cache, _ = run(caps=(64 * 1024, 256 * 1024, 1 << 20))
    assert info.trace_exhausted and info.errors == []
    assert rec.total[("gpu", "demote_read")][0] > 0
    assert rec.total[("cpu", "demote_write")][0] > 0
    assert cache.check_invariants() == []
    for t in cache.tiers:
        assert t.peak <= t.high_water


def test_one_user_runs_are_deterministic():
    p = params(users=1, requests_per_user=6)
    caps = (64 * 1024, 256 * 1024, 1 << 20)
    _, rec1, cache1, trace1 = run(p, caps=caps)
    _, rec2, cache2, trace2 = run(p, caps=caps)
    assert trace1.sha256() == trace2.sha256()
    assert ops(rec1) == ops(rec2)
    assert cache1.occupancy() == cache2.occupancy()
    assert {k: v.tier for k, v in cache1._index.items()} == {k: v.tier for k, v in cache2._index.items()}


def test_a_different_seed_is_a_different_trace():
    assert generate_trace(params(seed=7)).sha256() != generate_trace(params(seed=8)).sha256()
    assert generate_trace(params(seed=7)).sha256() == generate_trace(params(seed=7)).sha256()


class FailingWrites(MockBackend):
    """A medium that breaks after a few writes (an I/O error, not a full device)."""

    def __init__(self, spec, ctx):
        super().__init__(spec, ctx)
        self.writes = 0

    def write(self, key, nbytes):
        self.writes += 1
        if self.writes > 3:
            raise BackendError("injected I/O error")
        return super().write(key, nbytes)


def test_a_backend_error_ends_the_run_and_is_reported():
    info, rec, cache, trace = run(backend=FailingWrites, caps=(BIG,))
    assert len(info.errors) >= 1
    assert "BackendError: injected I/O error" in info.errors[0]
    assert rec.error_count >= 1
    assert info.trace_exhausted is False
    assert info.requests_finished < len(trace)
    assert info.finished_ns - info.started_ns < DURATION * 1e9
    assert cache.check_invariants() == []


def test_a_failed_read_is_a_miss_the_chunk_is_recomputed_and_the_run_goes_on():
    trace = generate_trace(params())
    first = trace.per_user[0][0]
    seq = BlockSequence(256, first.conversation_id)
    seq.extend([*first.prompt_segments(), first.output_segment()])
    key = seq.blocks()[0].key  # the conversation's first block, as stored after turn 1
    info, rec, cache, _ = run(options={"fail_read_keys": [key]})
    assert info.trace_exhausted and info.errors == []
    if trace.per_user[0][1].conversation_id == first.conversation_id:  # a second turn loads it
        assert rec.error_count >= 1 and key in rec.errors[0]
        assert rec.lookups["multi_turn"][1] >= 1
    assert cache.contains(key)  # stored again after the failed read
    assert cache.check_invariants() == []


def test_one_entry_per_turn_mode():
    info, rec, cache, trace = run(chunk_tokens=0)
    assert info.trace_exhausted
    # context and generated tokens are two closed blocks per request (no open tail)
    assert len(cache._index) == 2 * len(trace)
    assert not any(k.endswith(".tail") for k in cache._index)
    hits, misses, _, missed_tokens = rec.lookups["multi_turn"]
    assert hits > 0 and misses == 0 and missed_tokens == 0
    assert cache.check_invariants() == []


def test_reference_read_model_rereads_during_decode():
    _, rec_once, _, _ = run(read_model="once")
    _, rec_ref, _, _ = run(read_model="reference")
    assert rec_ref.total[("gpu", "read")][0] > rec_once.total[("gpu", "read")][0]
    assert "decode" in rec_ref.lookups and "decode" not in rec_once.lookups
    assert rec_ref.total[("gpu", "write")] == rec_once.total[("gpu", "write")]


def test_max_inflight_limits_service_but_finishes_the_trace():
    info, rec, cache, _ = run(max_inflight=1)
    assert info.trace_exhausted and info.requests_finished == 15
    assert cache.check_invariants() == []


def test_request_timings_are_recorded():
    _, rec, _, _ = run()
    for name in ("e2e", "queue_wait", "storage_time", "generation_time", "ttft"):
        assert rec.requests[name].count >= 1
    assert rec.counters["generated_tokens"] > 0


def test_window_closes_when_duration_ends():
    """A trace longer than the window: the window closes at the duration, the run drains."""
    p = WorkloadParams(seed=1, users=2, requests_per_user=50, think_time_scale=1.0)
    info, rec, cache, trace = run(p, duration_s=0.3)
    assert info.trace_exhausted is False and info.errors == []
    assert info.requests_started < len(trace)
    assert 0 <= info.requests_started - info.requests_finished <= p.users  # at most one cut per user
    assert info.drain_s is not None and 0 <= info.drain_s < 5
    assert rec.window_start_ns == info.started_ns
    assert rec.window_end_ns - rec.window_start_ns >= 0.3e9
    assert cache.check_invariants() == []


def test_warm_up_io_counts_in_the_totals_only():
    p = WorkloadParams(seed=1, users=2, requests_per_user=50, think_time_scale=0.05)
    info, rec, cache, _ = run(p, warmup_s=0.2, duration_s=0.2)
    assert rec.window_start_ns == info.started_ns + 200_000_000  # exactly at the warm-up's end
    assert rec.window_end_ns - rec.window_start_ns >= 0.2e9
    total_writes = sum(v[0] for (t, op), v in rec.total.items() if op == "write")
    window_writes = sum(w.count for (t, op), w in rec.window.items() if op == "write")
    assert total_writes > window_writes
    assert cache.check_invariants() == []


def test_a_trace_that_ends_during_the_warm_up_leaves_an_empty_window():
    info, rec, _, _ = run(warmup_s=DURATION)
    assert info.trace_exhausted and info.requests_finished == 15
    assert info.finished_ns - info.started_ns < DURATION * 1e9
    assert rec.window == {} and rec.lookups == {} and rec.requests == {}
    assert rec.window_s >= 0


class _Terminal:
    isatty = True

    def __init__(self, fail=False):
        self.lines, self.fail = [], fail

    def write(self, text, flush=False):
        if self.fail:
            raise OSError("terminal gone")
        self.lines.append(text)


class _PluginManager:
    def __init__(self, tr):
        self.tr = tr

    def get_plugin(self, name):
        return self.tr if name == "terminalreporter" else None


class _Config:
    def __init__(self, tr):
        self.pluginmanager = _PluginManager(tr)

    def get_verbosity(self):
        return 0


def test_progress_line_draws_and_a_failing_display_never_ends_the_run():
    from pytest_kvcache.fixtures import ProgressLine

    p = WorkloadParams(seed=1, users=2, requests_per_user=50, think_time_scale=0.05)
    shown = _Terminal()
    line = ProgressLine(_Config(shown), "cpu-only", duration=0.6, warmup=0.0)
    info, rec, cache, _ = run(p, duration_s=0.6, on_tick=line)
    assert info.errors == [] and not info.aborted
    assert shown.lines and shown.lines[-1].startswith("\r[kvcache] cpu-only")
    assert " GB/s | " in shown.lines[-1]

    broken = _Terminal(fail=True)
    line = ProgressLine(_Config(broken), "cpu-only", duration=0.6, warmup=0.0)
    with pytest.warns(UserWarning, match="progress line stopped: OSError: terminal gone"):
        info, rec, cache, _ = run(p, duration_s=0.6, on_tick=line)
    assert info.errors == [] and not info.aborted and rec.error_count == 0
    assert line.failed
    line.clear()  # nothing to clear, and no second failure
    assert cache.check_invariants() == []


def test_the_run_ends_promptly_after_the_window_with_slow_io_and_stays_consistent():
    """50 ms per I/O, 8-token chunks: a request is dozens of I/Os (seconds to finish). After the
    window each user finishes the one backend call it is in and stops: the drain is about one
    I/O long, nothing is left being written or moved, every stored entry is accounted."""
    p = WorkloadParams(seed=3, users=12, requests_per_user=20, think_time_scale=0)
    trace = generate_trace(p)
    latency, chunk = 0.05, 8
    info, rec, cache, _ = run(p, caps=(4096, BIG), options={"latency_s": latency},
                              chunk_tokens=chunk, duration_s=0.5)
    assert info.errors == [] and not info.aborted and not info.trace_exhausted
    # every user was cut in its first request, which alone is this many I/Os (writes only):
    assert info.requests_finished == 0 and info.requests_started == p.users
    ios = min(-(-u[0].context_tokens // chunk) + -(-u[0].generate_tokens // chunk) for u in trace.per_user)
    assert ios * latency - 0.5 >= 3.0  # what finishing the requests in flight would still take, at least
    assert rec.total[("gpu", "demote_read")][0] > 0  # the waterfall was busy at the end too
    assert info.drain_s is not None and info.drain_s < 1.0  # ~ one I/O, with room for a loaded machine
    assert (info.finished_ns - info.started_ns) / 1e9 < 0.5 + 1.0
    assert cache.check_invariants() == []  # every entry ready, accounting and backends agree
    assert cache.dropped == 0  # nothing given up at the end counts as a dropped entry
    assert rec.requests == {} and rec.counters == {}  # cut requests record nothing


# -- pacing, request timings, admission, headline hit rate -------------------------------

MS = 1_000_000  # ns


class PerRequest(Recorder):
    """Keeps each finished request's timings (ns) and counters, besides the usual series."""

    def __init__(self):
        super().__init__()
        self.per_request = []

    def request(self, end_ns, timings, counters, qos=None):
        self.per_request.append((dict(timings), dict(counters)))
        super().request(end_ns, timings, counters, qos=qos)


def hand_trace(users: int, turns: int, context: int, generate: int) -> Trace:
    """Each user one conversation of ``turns`` turns, no think time."""
    return Trace(None, [[Request(user_id=u, seq=t, conversation_id=f"u{u:04d}c0000", turn=t + 1, persona="chatbot",
                                 qos="interactive", context_tokens=context, generate_tokens=generate, think_time_s=0.0)
                         for t in range(turns)] for u in range(users)])


@pytest.mark.parametrize(("mode", "generate"), [("fast", 40), ("realistic", 3)])
def test_pacing_takes_the_time_per_token_and_ttft_includes_one_token(mode, generate):
    per_token_ns = {"fast": 2 * MS, "realistic": 30 * MS}[mode]
    rec = PerRequest()
    info, *_ = run(trace=hand_trace(users=2, turns=3, context=40, generate=generate), rec=rec,
                   generation_mode=mode, chunk_tokens=16)
    assert info.trace_exhausted and info.requests_finished == 6 and len(rec.per_request) == 6
    for timings, counters in rec.per_request:
        assert counters["generated_tokens"] == generate
        expected = generate * per_token_ns  # 80 ms (fast) or 90 ms (realistic) per request
        assert expected - MS <= timings["generation_time"] <= expected + 500 * MS
        # TTFT: submit -> prefill stored, plus one token's time; never more than queue + storage
        assert timings["ttft"] - per_token_ns >= timings["queue_wait"]
        assert timings["ttft"] - per_token_ns <= timings["queue_wait"] + timings["storage_time"] + 20 * MS


def test_generation_none_paces_nothing_and_ttft_has_no_token_time():
    rec = PerRequest()
    run(trace=hand_trace(users=2, turns=3, context=40, generate=400), rec=rec, generation_mode="none",
        chunk_tokens=16)
    assert len(rec.per_request) == 6
    for timings, _ in rec.per_request:
        assert timings["generation_time"] < 50 * MS  # 400 tokens: 0.8 s if 'fast' pacing leaked in
        assert timings["ttft"] <= timings["queue_wait"] + timings["storage_time"] + 20 * MS


def test_e2e_is_queue_wait_plus_storage_plus_generation_per_request():
    """With admission (queue waits), decode re-reads (storage inside decode) and pacing, each
    request's e2e is the sum of its parts; only a few untimed statements between them add."""
    rec = PerRequest()
    info, *_ = run(trace=hand_trace(users=4, turns=3, context=64, generate=64), rec=rec, generation_mode="fast",
                   read_model="reference", max_inflight=1, chunk_tokens=16, options={"latency_s": 0.001})
    assert info.trace_exhausted and len(rec.per_request) == 12
    assert max(t["queue_wait"] for t, _ in rec.per_request) > 50 * MS  # admission really queued requests
    for t, _ in rec.per_request:
        parts = t["queue_wait"] + t["storage_time"] + t["generation_time"]
        assert 0 <= t["e2e"] - parts <= 20 * MS, t
        assert t["generation_time"] >= 64 * 2 * MS - MS  # the re-reads are not taken out of the pacing twice
    rec_series = rec.requests["e2e"]
    assert rec_series.count == 12 and rec_series.total == sum(t["e2e"] for t, _ in rec.per_request)


class CountsConcurrency(MockBackend):
    """Counts backend calls under way at once, across every tier (shared counter)."""

    lock = threading.Lock()
    now = 0
    peak = 0

    def _io(self, nbytes):
        cls = CountsConcurrency
        with cls.lock:
            cls.now += 1
            cls.peak = max(cls.peak, cls.now)
        try:
            return super()._io(nbytes)
        finally:
            with cls.lock:
                cls.now -= 1


@pytest.mark.parametrize(("max_inflight", "low", "high"), [(2, 2, 2), (0, 3, 8)])
def test_max_inflight_bounds_the_requests_doing_io_at_once(max_inflight, low, high):
    CountsConcurrency.now = CountsConcurrency.peak = 0
    p = WorkloadParams(seed=5, users=8, requests_per_user=3, think_time_scale=0)
    info, *_ = run(p, caps=(BIG,), backend=CountsConcurrency, options={"latency_s": 0.002},
                   max_inflight=max_inflight, chunk_tokens=256)
    assert info.trace_exhausted and info.errors == []
    assert low <= CountsConcurrency.peak <= high  # a request does its I/O one call at a time


def test_decode_rereads_stay_out_of_the_headline_hit_rate():
    from pytest_kvcache.metrics import compute

    # small tiers: the last one evicts, so a turn's loads miss sometimes while decode re-reads
    # of what was just loaded hit: counting them would raise the headline rate
    info, rec, _, _ = run(caps=(8 * 1024, 16 * 1024, 64 * 1024), read_model="reference")
    assert info.trace_exhausted and info.errors == []
    (*_, mt_hits, mt_misses), (*_, dec_hits, dec_misses) = rec.lookups["multi_turn"], rec.lookups["decode"]
    assert mt_misses > 0 and dec_hits > 0
    flat, summary = compute(rec, ["gpu", "cpu", "nvme"])
    assert flat["cache.hit_rate"] == mt_hits / (mt_hits + mt_misses)  # tokens
    with_decode = (mt_hits + dec_hits) / (mt_hits + mt_misses + dec_hits + dec_misses)
    assert flat["cache.hit_rate"] != with_decode
    assert flat["cache.hit_rate.decode"] == dec_hits / (dec_hits + dec_misses)  # still shown on its own
