"""The load layer as wired into the runner: worker pool, QoS admission, open-loop arrivals,
bounds on requests in service, concurrent allocations and staging memory, the prompt end."""

import threading

import pytest

from pytest_kvcache.backends.base import BackendContext, TierSpec
from pytest_kvcache.backends.mock import MockBackend
from pytest_kvcache.cache import MultiTierCache
from pytest_kvcache.errors import ConfigError
from pytest_kvcache.load import DEFAULT_MAX_IN_SERVICE, DEFAULT_QOS, poisson_arrivals, workers_for
from pytest_kvcache.metrics import compute
from pytest_kvcache.payload import NoiseSource, StagingBuffers
from pytest_kvcache.recorder import Recorder
from pytest_kvcache.report import qos_table
from pytest_kvcache.runner import RunConfig, Runner
from pytest_kvcache.workload import Request, Trace, WorkloadParams, generate_trace

NOISE = NoiseSource(1, size=1 << 20)
BPT = 16
BIG = 1 << 40
MS = 1_000_000


class Tracking(MockBackend):
    """A mock that takes this thread's staging buffer for every I/O (as the real backends do)
    and counts the calls under way at once, writes apart."""

    lock = threading.Lock()
    now = peak = writes_now = writes_peak = 0

    @classmethod
    def reset(cls):
        cls.now = cls.peak = cls.writes_now = cls.writes_peak = 0

    def _tracked(self, nbytes, write):
        cls = Tracking
        self.ctx.staging.get()
        with cls.lock:
            cls.now += 1
            cls.peak = max(cls.peak, cls.now)
            if write:
                cls.writes_now += 1
                cls.writes_peak = max(cls.writes_peak, cls.writes_now)
        try:
            return MockBackend._io(self, nbytes)
        finally:
            with cls.lock:
                cls.now -= 1
                cls.writes_now -= write

    def write(self, key, nbytes):
        with self._lock:
            self._sizes[key] = nbytes
        return self._tracked(nbytes, True)

    def read(self, key, nbytes):
        with self._lock:
            assert key in self._sizes
        return self._tracked(nbytes, False)


def run(trace, latency=0.0, rec=None, block=1 << 16, on_tick=None, **config):
    ctx = BackendContext(noise=NOISE, staging=StagingBuffers(block))
    backend = Tracking(TierSpec("gpu", "mock", BIG, {"latency_s": latency}), ctx)
    rec = rec or Recorder()
    cache = MultiTierCache([backend], rec, BPT)
    cfg = {"duration_s": 30.0, "warmup_s": 0.0, "generation_mode": "none", "chunk_tokens": 64, **config}
    runner = Runner(cache, trace, rec, RunConfig(**cfg), on_tick=on_tick)
    Tracking.reset()
    info = runner.run()
    assert cache.check_invariants() == []
    return info, rec, runner, ctx


def hand_trace(users, qos=("interactive",), turns=1, context=64, generate=16, think=(0.0,)):
    """User u: ``turns`` turns of one conversation, class ``qos[u % len]``, first think ``think[u % len]``."""
    return Trace(None, [[Request(user_id=u, seq=t, conversation_id=f"u{u:04d}c0000", turn=t + 1, persona="chatbot",
                                 qos=qos[u % len(qos)], context_tokens=context, generate_tokens=generate,
                                 think_time_s=think[u % len(think)] if t == 0 else 0.0)
                         for t in range(turns)] for u in range(users)])


class PerRequest(Recorder):
    def __init__(self):
        super().__init__()
        self.per_request = []

    def request(self, end_ns, timings, counters, qos=None):
        self.per_request.append((qos, dict(timings)))
        super().request(end_ns, timings, counters, qos=qos)


def test_default_workers_follow_vllms_max_num_seqs():
    assert DEFAULT_MAX_IN_SERVICE == 256
    assert workers_for(1000, 0) == 256 and workers_for(8, 0) == 8 and workers_for(1000, 16) == 16


def test_with_one_place_in_service_the_queue_serves_by_class_then_arrival():
    """A first request holds the only worker; meanwhile batch, responsive and interactive turns
    arrive (in that order): they are served interactive first, batch last."""
    rec = PerRequest()
    # user 0 at t=0 holds the worker for 11 I/Os x 20 ms; users 1-3 (batch, responsive,
    # interactive) arrive at 20, 40, 60 ms, while it is served
    trace = hand_trace(4, qos=("interactive", "batch", "responsive", "interactive"), think=(0.0, 0.02, 0.04, 0.06),
                       context=640)
    info, rec, runner, _ = run(trace, latency=0.02, rec=rec, max_inflight=1, qos_aging_s=0)
    assert info.trace_exhausted and info.requests_finished == 4 and info.errors == []
    assert [qos for qos, _ in rec.per_request[1:]] == ["interactive", "responsive", "batch"]
    waits = {qos: t["queue_wait"] for qos, t in rec.per_request[1:]}
    assert waits["batch"] > waits["responsive"] > 100 * MS  # they waited for the requests served before them
    assert runner.queue.counts()["peak_in_service"] == 1


def test_aging_lets_a_waiting_batch_request_overtake_newer_interactive_ones():
    """Same as above, but batch ages one class per 10 ms: having waited longest, it goes first."""
    rec = PerRequest()
    trace = hand_trace(4, qos=("interactive", "batch", "responsive", "interactive"), think=(0.0, 0.02, 0.04, 0.06),
                       context=640)
    info, rec, _, _ = run(trace, latency=0.02, rec=rec, max_inflight=1, qos_aging_s=0.01)
    assert info.trace_exhausted
    assert [qos for qos, _ in rec.per_request[1:]] == ["batch", "responsive", "interactive"]


def test_requests_in_service_never_exceed_the_bound():
    trace = generate_trace(WorkloadParams(seed=5, users=20, requests_per_user=3, think_time_scale=0))
    info, _, runner, ctx = run(trace, latency=0.002, max_inflight=3)
    assert info.trace_exhausted and info.workers == 3
    assert 1 <= Tracking.peak <= 3  # a request does its I/O one call at a time
    assert info.peak_in_service <= 3
    # staging buffers belong to the worker threads: at most one per worker, whatever the users
    assert 0 < ctx.staging.allocated_bytes <= 3 * ctx.staging.block


def test_max_concurrent_allocs_bounds_the_stores_under_way():
    trace = generate_trace(WorkloadParams(seed=5, users=8, requests_per_user=3, think_time_scale=0))
    info, *_ = run(trace, latency=0.003, max_concurrent_allocs=1)
    assert info.trace_exhausted and info.errors == []
    assert Tracking.writes_peak == 1
    info, *_ = run(trace, latency=0.003)
    assert Tracking.writes_peak > 1  # without the bound, stores do overlap


def test_a_thousand_users_are_records_served_by_a_bounded_pool():
    """1,000 closed-loop users: every one is served, by at most 256 threads and their buffers."""
    trace = hand_trace(1000, turns=2, context=8, generate=8)
    threads = []
    before = threading.active_count()
    info, rec, runner, ctx = run(trace, on_tick=lambda r, t: threads.append(threading.active_count()))
    assert info.trace_exhausted and info.requests_finished == 2000 and info.users_exhausted == 1000
    assert info.workers == DEFAULT_MAX_IN_SERVICE
    assert max(threads, default=before) <= before + DEFAULT_MAX_IN_SERVICE + 1  # workers + the scheduler
    assert ctx.staging.allocated_bytes <= DEFAULT_MAX_IN_SERVICE * ctx.staging.block
    assert rec.counters["requests"] == 2000


def test_open_loop_arrivals_follow_the_seeded_schedule_and_rejections_are_counted():
    """Arrivals faster than one worker serves into a queue of 2: the excess is rejected and
    counted per class; the queue never holds more than its depth."""
    trace = hand_trace(50, qos=("interactive", "responsive", "batch"), turns=5)
    info, rec, runner, _ = run(trace, latency=0.01, max_inflight=1, request_rate=200, queue_depth=2,
                               duration_s=0.5, seed=9)
    assert info.errors == [] and not info.aborted
    assert info.arrivals == len(poisson_arrivals(9, 200, horizon_s=0.5))
    offered = sum(o for o, _ in rec.arrivals.values())
    rejected = sum(r for _, r in rec.arrivals.values())
    assert 0 < rejected < offered <= info.arrivals
    assert runner.queue.counts()["peak_waiting"] <= 2
    flat, summary = compute(rec, ["gpu"], DEFAULT_QOS, open_loop=True)
    assert flat["requests.rejected"] == rejected and flat["requests.offered"] == offered
    assert summary["arrivals"]["rejected"] == rejected
    assert sum(summary["qos"][c]["rejected"] for c in DEFAULT_QOS) + summary["arrivals"]["rejected_no_idle_user"] == rejected
    assert "rejected" in qos_table(summary)
    # queue wait is part of e2e
    assert flat["qos.interactive.queue_wait.max"] <= flat["qos.interactive.max"]


def test_open_loop_with_every_user_busy_rejects_as_no_idle_user():
    trace = hand_trace(2, turns=50)
    info, rec, _, _ = run(trace, latency=0.02, max_inflight=2, request_rate=300, queue_depth=8, duration_s=0.3)
    assert info.errors == []
    assert rec.arrivals["no_idle_user"][1] > 0


def test_the_open_loop_run_ends_promptly_and_leaves_waiting_requests_unserved():
    trace = hand_trace(40, turns=20, context=256)
    info, rec, runner, _ = run(trace, latency=0.05, chunk_tokens=8, max_inflight=2, request_rate=100,
                               queue_depth=10, duration_s=0.5)
    assert info.errors == [] and not info.trace_exhausted
    assert info.drain_s is not None and info.drain_s < 1.0  # about one I/O, with room for a loaded machine
    assert info.requests_unserved > 0  # never admitted: they record nothing
    assert (info.finished_ns - info.started_ns) / 1e9 < 1.5


def test_class_figures_and_sla_compliance_are_exact():
    rec = Recorder()
    rec.open_window(0)
    rec.set_sla_targets({"interactive": 0.05, "batch": 1.0})
    for e2e_ms in (10, 50, 51, 200):  # 50 ms is within the target (<=)
        rec.request(1, {"e2e": e2e_ms * MS, "queue_wait": MS, "ttft": 5 * MS}, {"requests": 1}, qos="interactive")
    rec.close_window(10)
    flat, summary = compute(rec, ["gpu"], DEFAULT_QOS)
    assert flat["qos.interactive.requests"] == 4
    assert flat["qos.interactive.sla_compliance"] == 0.5
    assert flat["qos.interactive.max"] == 0.2 and flat["qos.interactive.ttft.p95"] == pytest.approx(0.005)
    assert "qos.batch.requests" not in flat and "qos.batch.sla_compliance" not in flat  # none: n/a
    assert summary["qos"]["batch"]["sla_compliance"] is None
    assert summary["qos"]["interactive"]["p95_target_ms"] == 50
    assert "requests.rejected" not in flat and summary["arrivals"]["open_loop"] is False


def test_a_queue_depth_below_one_with_a_rate_is_refused():
    with pytest.raises(ConfigError, match="queue-depth"):
        run(hand_trace(1), request_rate=10, queue_depth=0)
