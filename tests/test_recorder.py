"""Recorder and Series: what counts toward the window, percentiles, bounded memory."""

import pytest

from pytest_kvcache.backends.base import IOResult
from pytest_kvcache.recorder import Recorder, Series

MS = 1_000_000  # ns


def io(rec, end_ns, nbytes=100, dur_ns=MS, tier="nvme", op="read", tokens=1):
    rec.io(tier, op, IOResult(nbytes=nbytes, end_ns=end_ns, dur_ns=dur_ns), tokens)


def test_only_io_completing_inside_the_window_counts_but_totals_take_everything():
    rec = Recorder()
    io(rec, 50)  # before the window opens (warm-up)
    rec.open_window(1_000)
    io(rec, 999)  # started and ended before the window start
    io(rec, 1_000, nbytes=10, tokens=2)  # exactly at the start: counts
    io(rec, 5_000, nbytes=20, dur_ns=4_500, tokens=3)  # started before the window, ends inside: counts whole
    rec.close_window(9_000)
    io(rec, 9_000, nbytes=40, tokens=4)  # exactly at the end: counts
    io(rec, 9_001, nbytes=80)  # drain: only the total
    w = rec.window[("nvme", "read")]
    assert (w.count, w.bytes, w.tokens) == (3, 70, 9)
    assert rec.total[("nvme", "read")] == [6, 350]
    assert rec.window_s == pytest.approx(8e-6)


def test_window_is_per_tier_and_op():
    rec = Recorder()
    rec.open_window(0)
    io(rec, 10, tier="cpu", op="write")
    io(rec, 10, tier="cpu", op="demote_read")
    io(rec, 10, tier="nvme", op="demote_write")
    assert set(rec.window) == {("cpu", "write"), ("cpu", "demote_read"), ("nvme", "demote_write")}


def test_no_window_opened_counts_nothing_in_the_window():
    rec = Recorder()
    io(rec, 10)
    assert rec.window == {} and rec.total[("nvme", "read")] == [1, 100]
    assert rec.window_s == 0.0
    assert not rec.in_window(10)


def test_series_percentiles_on_known_data():
    s = Series()
    for v in range(100, 0, -1):  # 1..100 ms, in any order
        s.add(v * MS)
    st = s.stats()
    assert st["count"] == 100 and st["exact"] is True
    assert st["min"] == pytest.approx(0.001) and st["max"] == pytest.approx(0.100)
    assert st["mean"] == pytest.approx(0.0505)
    assert st["p50"] == pytest.approx(0.0505)  # numpy linear interpolation
    assert st["p95"] == pytest.approx(0.09505)
    assert st["p99"] == pytest.approx(0.09901)
    assert 0.0999 <= st["p999"] <= 0.100
    assert s.seconds()[0] == pytest.approx(0.100)


def test_series_single_value_and_empty():
    assert Series().stats() == {"count": 0}
    s = Series()
    s.add(7 * MS)
    st = s.stats()
    assert st["p50"] == st["p999"] == st["max"] == st["min"] == pytest.approx(0.007)


def test_series_reservoir_keeps_memory_bounded_and_exact_aggregates():
    s = Series(cap=100, seed=3)
    n = 10_000
    for v in range(1, n + 1):
        s.add(v)
    assert len(s.samples) == 100
    assert s.count == n and s.min == 1 and s.max == n
    assert s.total == n * (n + 1) // 2
    st = s.stats()
    assert st["exact"] is False
    assert st["mean"] == pytest.approx((n + 1) / 2 / 1e9)
    assert st["min"] == pytest.approx(1e-9) and st["max"] == pytest.approx(n / 1e9)
    # a uniform sample of 1..n: its median is near n/2, not stuck at the first 100 values
    assert 0.25 * n / 1e9 < st["p50"] < 0.75 * n / 1e9
    assert all(1 <= v <= n for v in s.samples)


def test_window_latency_series_is_bounded_too():
    rec = Recorder()
    rec.open_window(0)
    for i in range(1, 1001):
        io(rec, i, dur_ns=i)
    lat = rec.window[("nvme", "read")].latency
    assert lat.count == 1000 and lat.max == 1000 and lat.min == 1


def test_lookups_only_inside_the_window():
    rec = Recorder()
    rec.lookup("prefix", True, 5, 7)  # before the window
    rec.open_window(100)
    rec.lookup("prefix", True, 100, 256)
    rec.lookup("prefix", False, 150, 20)
    rec.lookup("multi_turn", True, 200, 3)
    rec.close_window(300)
    rec.lookup("prefix", True, 301, 9)  # after the window
    # [hit blocks, missed blocks, hit tokens, missed tokens]
    assert rec.lookups == {"prefix": [1, 1, 256, 20], "multi_turn": [1, 0, 3, 0]}


def test_requests_and_their_counters_only_inside_the_window():
    rec = Recorder()
    rec.request(50, {"e2e": 10 * MS}, {"requests": 1, "generated_tokens": 100})
    rec.open_window(100)
    rec.request(150, {"e2e": 20 * MS, "queue_wait": MS}, {"requests": 1, "generated_tokens": 30})
    rec.request(160, {"e2e": 40 * MS, "queue_wait": 3 * MS}, {"requests": 1, "generated_tokens": 12})
    rec.close_window(200)
    rec.request(250, {"e2e": 80 * MS}, {"requests": 1, "generated_tokens": 7})
    assert rec.counters == {"requests": 2, "generated_tokens": 42}
    assert rec.requests["e2e"].count == 2
    assert rec.requests["e2e"].stats()["mean"] == pytest.approx(0.030)
    assert rec.requests["queue_wait"].max == 3 * MS


def test_plain_counters_and_errors_count_always():
    rec = Recorder()
    rec.count("evictions.nvme")
    rec.count("evictions.nvme", 2)
    assert rec.run_counters == {"evictions.nvme": 3}
    for i in range(30):
        rec.error(f"e{i}")
    assert rec.error_count == 30
    assert len(rec.errors) == 20 and rec.errors[0] == "e0"


def test_timeline_bins_bytes_by_completion_step():
    rec = Recorder(timeline_step_s=1.0)
    s = 1_000_000_000
    rec.open_window(10 * s)
    io(rec, 10 * s, nbytes=1, tier="cpu")
    io(rec, 10 * s + s - 1, nbytes=2, tier="cpu")
    io(rec, 11 * s, nbytes=4, tier="cpu")
    io(rec, 13 * s + 5, nbytes=8, tier="cpu")
    io(rec, 12 * s, nbytes=16, tier="nvme")
    io(rec, 9 * s, nbytes=1000, tier="nvme")  # before the window: not on the timeline
    assert rec.timeline["cpu"] == [3, 4, 0, 8]
    assert rec.timeline["nvme"] == [0, 0, 16]
    assert rec.timeline_step_ns == s


def test_timeline_step_is_configurable():
    rec = Recorder(timeline_step_s=0.5)
    rec.open_window(0)
    io(rec, 1_200_000_000, nbytes=5, tier="cpu")
    assert rec.timeline["cpu"] == [0, 0, 5]


def test_quantiles_for_a_cdf():
    s = Series()
    assert s.quantiles_ms() == []
    for v in range(1, 101):
        s.add(v * MS)
    q = s.quantiles_ms()
    assert len(q) == 101
    assert q[0] == pytest.approx(1.0) and q[-1] == pytest.approx(100.0)
    assert q == sorted(q)


def test_occupancy_samples_only_inside_the_open_window_once_per_step():
    rec = Recorder(timeline_step_s=1.0)
    s = 1_000_000_000
    rec.sample_occupancy({"cpu": 1}, t_ns=5)  # no window yet
    rec.open_window(10 * s)
    rec.sample_occupancy({"cpu": 2}, t_ns=9 * s)  # before it
    rec.sample_occupancy({"cpu": 3}, t_ns=10 * s)
    rec.sample_occupancy({"cpu": 4}, t_ns=10 * s + s // 2)  # same step: skipped
    rec.sample_occupancy({"cpu": 5}, t_ns=11 * s)
    rec.close_window(12 * s)
    rec.sample_occupancy({"cpu": 6}, t_ns=11 * s + s // 2)  # window closed
    assert rec.occupancy == [(0.0, {"cpu": 3}), (1.0, {"cpu": 5})]


def test_bytes_count_per_transfer_so_a_chunk_cut_by_the_window_end_counts_its_part():
    """A 40 MB chunk written in ten 4 MB transfers, the window closing after the fourth: the
    window gets 16 MB (not 0, not 40), the I/O itself (count, latency) does not complete in it,
    and the transfer in flight at the close is the figure's uncertainty (issue 9, part 1)."""
    rec = Recorder()
    rec.open_window(0)
    transfers = tuple((1_000 * (i + 1), 4_000_000) for i in range(10))
    rec.close_window(4_500)
    rec.io("nvme", "write", IOResult(nbytes=40_000_000, end_ns=10_000, dur_ns=10_000, start_ns=0,
                                     transfers=transfers), tokens=100)
    w = rec.window[("nvme", "write")]
    assert w.bytes == 16_000_000
    assert w.tokens == pytest.approx(40)  # tokens pro rata to the bytes inside
    assert w.count == 0 and w.latency.count == 0
    assert w.edge_bytes == 4_000_000  # the transfer from 4,000 to 5,000 ns spans the close
    assert rec.total[("nvme", "write")] == [1, 40_000_000]
    assert rec.progress()[:2] == (0, 16_000_000)


def test_a_transfer_in_flight_as_the_window_opens_is_edge_bytes():
    rec = Recorder()
    rec.open_window(1_500)
    rec.io("nvme", "read", IOResult(nbytes=8, end_ns=3_000, dur_ns=3_000, start_ns=0,
                                    transfers=((1_000, 4), (3_000, 4))), tokens=2)
    w = rec.window[("nvme", "read")]
    assert (w.count, w.bytes, w.edge_bytes) == (1, 4, 4)


def test_deletes_and_evictions_move_no_bytes_anywhere():
    """One definition of bytes moved: data ops only, in the window, the timeline and progress."""
    rec = Recorder()
    rec.open_window(0)
    io(rec, 10, nbytes=1_000, op="write")
    io(rec, 20, nbytes=5_000, op="delete")
    io(rec, 30, nbytes=7_000, op="evict")
    assert rec.window[("nvme", "delete")].bytes == 0 and rec.window[("nvme", "evict")].bytes == 0
    assert rec.window[("nvme", "delete")].count == 1
    assert sum(rec.timeline["nvme"]) == 1_000
    assert rec.progress()[:2] == (3, 1_000)
    assert rec.total[("nvme", "evict")] == [1, 0]


def test_progress_counts_every_op_but_only_the_bytes_of_data_ops():
    rec = Recorder()
    rec.open_window(0)
    for op, nbytes in (("read", 1), ("write", 10), ("demote_read", 100), ("demote_write", 1000),
                       ("delete", 10_000), ("evict", 100_000)):
        io(rec, 10, nbytes=nbytes, tier="cpu", op=op)
    io(rec, 20, nbytes=5, tier="nvme", op="write")
    rec.close_window(1_000_000_000)
    io(rec, 2_000_000_000, nbytes=7)  # after the window: not shown
    p = rec.progress()
    assert (p.ops, p.data_bytes) == (7, 1116)
    assert p.window_s == pytest.approx(1.0)


def test_progress_is_safe_while_threads_add_new_tier_op_keys():
    """The live line reads the window while users record: new keys must not break the read."""
    import sys
    import threading

    rec = Recorder()
    rec.open_window(0)
    rec.close_window(10**9)
    keys = 3_000

    def record():
        for n in range(keys):
            io(rec, 10, nbytes=2, tier=f"t{n}", op="write")  # a new (tier, op) key every time

    failures = []
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, so a read overlaps many insertions
    try:
        writer = threading.Thread(target=record)
        writer.start()
        while writer.is_alive():
            try:
                rec.progress()
            except RuntimeError as exc:  # "dictionary changed size during iteration"
                failures.append(exc)
                break
        writer.join()
    finally:
        sys.setswitchinterval(interval)
    assert failures == []
    assert rec.progress() == (keys, 2 * keys, 1.0)
