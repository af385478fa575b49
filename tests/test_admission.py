"""Admission queue: class order, arrival order, aging, bounds, rejections and threads."""

from __future__ import annotations

import threading

import pytest

from pytest_kvcache.errors import ConfigError
from pytest_kvcache.load.admission import AdmissionQueue


class FakeClock:
    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def _drain(q):
    out = []
    while (got := q.take(timeout=0)) is not None:
        out.append(got.item)
        q.release()
    return out


def test_class_then_arrival_order_and_uncomparable_items():
    q = AdmissionQueue(depth=10, clock=FakeClock())
    for item, qos in [({"id": "b1"}, "batch"), ({"id": "i1"}, "interactive"), ({"id": "r1"}, "responsive"),
                      ({"id": "i2"}, "interactive"), ({"id": "b2"}, "batch")]:
        assert q.offer(item, qos)
    assert [d["id"] for d in _drain(q)] == ["i1", "i2", "r1", "b1", "b2"]


def test_aging_lifts_a_waiting_request_one_class_per_step():
    clock = FakeClock()
    q = AdmissionQueue(depth=10, clock=clock, aging_s=1.0)
    q.offer("batch", "batch")  # t=0
    clock.t = 1.5
    q.offer("inter", "interactive")
    # batch waited 1.5 s: priority 2 -> 1, still behind interactive (0)
    assert q.effective_priority("batch", 1.5) == 1
    assert q.take(timeout=0).item == "inter"
    q.release()
    q.offer("inter2", "interactive")
    clock.t = 2.0  # batch waited 2 s: level 0, ties with interactive and arrived first
    got = q.take(timeout=0)
    assert (got.item, got.wait_s, got.arrival_s) == ("batch", 2.0, 0.0)
    assert q.effective_priority("batch", 1000.0) == 0


def test_without_aging_batch_waits_behind_any_interactive():
    clock = FakeClock()
    q = AdmissionQueue(depth=10, clock=clock)
    q.offer("batch", "batch")
    clock.t = 1e6
    q.offer("inter", "interactive")
    assert q.take(timeout=0).item == "inter"


def test_batch_cannot_starve_under_steady_interactive_load():
    clock = FakeClock()
    q = AdmissionQueue(depth=1000, clock=clock, aging_s=0.5)
    q.offer("the-batch", "batch")
    served_at = None
    for step in range(100):  # two interactive arrivals per 0.1 s, one served per 0.1 s
        clock.t = step * 0.1
        q.offer(f"i{step}a", "interactive")
        q.offer(f"i{step}b", "interactive")
        got = q.take(timeout=0)
        q.release()
        if got.item == "the-batch":
            served_at = clock.t
            break
    assert served_at is not None and served_at <= 1.0 + 1e-9


def test_depth_bound_rejects_and_counts():
    q = AdmissionQueue(depth=2, clock=FakeClock())
    assert q.offer(1, "batch") and q.offer(2, "interactive")
    assert not q.offer(3, "interactive")
    assert not q.offer(4, "batch")
    assert q.waiting == 2
    q.take(timeout=0)
    assert q.offer(5, "responsive")
    c = q.counts()
    assert c["rejected"] == {"interactive": 1, "responsive": 0, "batch": 1}
    assert c["offered"] == {"interactive": 2, "responsive": 1, "batch": 2}
    assert c["admitted"] == {"interactive": 1, "responsive": 0, "batch": 0}
    assert c["peak_waiting"] == 2


def test_max_in_service_bound_and_release():
    q = AdmissionQueue(depth=5, clock=FakeClock(), max_in_service=1)
    q.offer("a", "batch")
    q.offer("b", "interactive")
    assert q.take(timeout=0).item == "b"
    assert q.take(timeout=0.05) is None  # "a" waits for a place
    assert q.in_service == 1 and q.waiting == 1
    q.release()
    assert q.take(timeout=0).item == "a"
    q.release()
    with pytest.raises(RuntimeError, match="without a matching take"):
        q.release()


def test_release_wakes_a_blocked_taker():
    q = AdmissionQueue(depth=5, clock=FakeClock(), max_in_service=1)
    q.offer("a", "batch")
    q.offer("b", "batch")
    q.take(timeout=0)
    got = []
    t = threading.Thread(target=lambda: got.append(q.take(timeout=30)))
    t.start()
    q.release()
    t.join(30)
    assert not t.is_alive() and got[0].item == "b"


def test_close_wakes_takers_and_returns_the_waiting():
    q = AdmissionQueue(depth=5, clock=FakeClock(), max_in_service=1)
    for x in ("a", "b", "c"):
        q.offer(x, "batch")
    q.take(timeout=0)
    got = []
    t = threading.Thread(target=lambda: got.append(q.take(timeout=30)))
    t.start()
    assert q.close() == ["b", "c"]
    t.join(30)
    assert not t.is_alive() and got == [None]
    assert not q.offer("d", "batch")  # after close: refused, and not a rejection of the window
    assert q.counts()["rejected"]["batch"] == 0 and q.counts()["offered"]["batch"] == 3


def test_many_threads_keep_the_bounds_and_lose_nothing():
    q = AdmissionQueue(depth=50, clock=FakeClock(), aging_s=0.001, max_in_service=3)
    producers, per_producer = 6, 400
    taken, lock = [], threading.Lock()
    busy = [0, 0]  # now, peak

    def produce(p):
        for i in range(per_producer):
            q.offer((p, i), ("interactive", "responsive", "batch")[i % 3])

    def consume():
        while (got := q.take(timeout=30)) is not None:
            with lock:  # between take and release: never more than max_in_service
                busy[0] += 1
                busy[1] = max(busy[1], busy[0])
                taken.append(got.item)
            threading.Event().wait(0.0002)
            with lock:
                busy[0] -= 1
            q.release()

    consumers = [threading.Thread(target=consume) for _ in range(5)]
    for t in consumers:
        t.start()
    prods = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    for t in prods:
        t.start()
    for t in prods:
        t.join(60)
    while q.waiting:  # let consumers empty the queue
        threading.Event().wait(0.01)
    left = q.close()
    for t in consumers:
        t.join(60)
    c = q.counts()
    offered = sum(c["offered"].values())
    assert offered == producers * per_producer
    assert sum(c["admitted"].values()) == len(taken) == len(set(taken))
    assert len(taken) + sum(c["rejected"].values()) + len(left) == offered
    assert c["peak_in_service"] <= 3 and busy[1] <= 3 and c["peak_waiting"] <= 50
    assert q.in_service == 0


@pytest.mark.parametrize("kw, match", [
    ({"depth": 0}, "--kv-queue-depth"),
    ({"depth": True}, "depth"),
    ({"aging_s": -1}, "aging_s"),
    ({"aging_s": float("inf")}, "aging_s"),
    ({"max_in_service": -1}, "max_in_service"),
    ({"priorities": {"a": -1}}, "priorities"),
])
def test_bad_settings(kw, match):
    with pytest.raises(ConfigError, match=match):
        AdmissionQueue(**{"depth": 4, "clock": FakeClock(), **kw})


def test_unknown_class():
    q = AdmissionQueue(depth=4, clock=FakeClock())
    with pytest.raises(ConfigError, match="unknown QoS class 'gold'"):
        q.offer("x", "gold")
