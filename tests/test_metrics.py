"""metrics.compute on a hand-fed Recorder: every figure from known inputs."""

import pytest

from pytest_kvcache.backends.base import IOResult
from pytest_kvcache.metrics import compute
from pytest_kvcache.ops import storage_tier
from pytest_kvcache.recorder import Recorder

S = 1_000_000_000  # ns
MS = 1_000_000


def fed() -> Recorder:
    """A 2-second window over cpu + nvme with known I/O, lookups and requests."""
    rec = Recorder()
    rec.io("nvme", "write", IOResult(5_000, S // 2, MS), 50)  # before the window: ignored
    rec.open_window(S)
    for i in range(4):  # cpu: 4 reads of 1 MB, 10 tokens each
        rec.io("cpu", "read", IOResult(1_000_000, S + i * MS, (i + 1) * MS), 10)
    rec.io("cpu", "demote_read", IOResult(500_000, S + 10 * MS, MS), 5)
    rec.io("nvme", "demote_write", IOResult(500_000, S + 11 * MS, 2 * MS), 5)
    rec.io("nvme", "read", IOResult(2_000_000, S + 20 * MS, 8 * MS), 20)
    rec.io("nvme", "read", IOResult(2_000_000, S + 21 * MS, 12 * MS), 20)
    rec.io("nvme", "write", IOResult(1_000_000, S + 30 * MS, 4 * MS), 10)
    rec.io("nvme", "evict", IOResult(1_000_000, S + 31 * MS, MS), 10)
    for _ in range(3):
        rec.lookup("multi_turn", True, S + MS, 100)
    rec.lookup("multi_turn", False, S + MS, 100)
    rec.lookup("prefix", False, S + MS, 100)
    rec.lookup("new", False, S + MS, 500)  # this turn's text: not in the headline
    rec.request(S + 40 * MS, {"e2e": 30 * MS, "queue_wait": MS}, {"requests": 1, "generated_tokens": 60})
    rec.request(S + 50 * MS, {"e2e": 50 * MS, "queue_wait": 3 * MS}, {"requests": 1, "generated_tokens": 40})
    rec.close_window(3 * S)
    rec.io("nvme", "read", IOResult(9_999_999, 3 * S + 1, MS), 99)  # drain: ignored
    return rec


def test_window_throughputs_divide_window_bytes_by_the_window():
    flat, summary = compute(fed(), ["cpu", "nvme"])
    assert flat["window_s"] == pytest.approx(2.0)
    assert flat["cpu.read.count"] == 4
    assert flat["cpu.read.bytes"] == 4_000_000
    assert flat["cpu.read.gbps"] == pytest.approx(4e6 / 2 / 1e9)
    assert flat["cpu.read.iops"] == pytest.approx(2.0)
    assert flat["nvme.read.bytes"] == 4_000_000  # the drained read is not in the window
    assert flat["nvme.write.count"] == 1  # the warm-up write is not either
    # a tier's own gbps sums its data ops (demotions included, evictions not)
    assert flat["nvme.gbps"] == pytest.approx((500_000 + 4_000_000 + 1_000_000) / 2 / 1e9)
    assert flat["cpu.gbps"] == pytest.approx(4_500_000 / 2 / 1e9)
    assert summary["tiers"]["nvme"]["read"]["count"] == 2
    # an eviction is a count and a latency: it moves no bytes
    assert "bytes" not in summary["tiers"]["nvme"]["evict"] and "nvme.evict.gbps" not in flat
    assert summary["tiers"]["nvme"]["evict"]["count"] == 1


def test_latency_figures_in_seconds_and_milliseconds():
    flat, summary = compute(fed(), ["cpu", "nvme"])
    assert flat["cpu.read.max"] == pytest.approx(0.004)
    assert flat["cpu.read.mean"] == pytest.approx(0.0025)
    assert flat["nvme.read.p50"] == pytest.approx(0.010)
    assert summary["tiers"]["cpu"]["read"]["latency_ms"]["max"] == pytest.approx(4.0)
    assert summary["tiers"]["cpu"]["read"]["latency_exact"] is True
    assert summary["cpu_read_p95_ms"] == pytest.approx(flat["cpu.read.p95"] * 1e3, abs=1e-3)
    assert "nvme_read_p95_ms" in summary


def test_storage_figures_use_the_slowest_non_memory_tier():
    flat, summary = compute(fed(), ["cpu", "nvme"])
    assert summary["storage_tier"] == "nvme"
    assert flat["storage.read_gbps"] == pytest.approx(4_000_000 / 2 / 1e9)
    assert flat["storage.write_gbps"] == pytest.approx(1_500_000 / 2 / 1e9)
    assert flat["storage.gbps"] == pytest.approx(5_500_000 / 2 / 1e9)
    # tokens through the drive: reads 40 + write 10 + demote_write 5, over 2 s
    assert flat["storage.throughput_tokens_per_sec"] == pytest.approx(55 / 2)
    assert summary["storage_throughput_tokens_per_sec"] == pytest.approx(27.5)


def test_storage_tier_choice():
    assert storage_tier(["gpu", "cpu", "nvme"]) == "nvme"
    assert storage_tier(["nvme"]) == "nvme"
    assert storage_tier(["gpu", "cpu"]) is None
    assert storage_tier(["cpu", "nvme", "object"]) == "object"


def test_memory_only_tiers_have_no_storage_figures():
    flat, summary = compute(fed(), ["gpu", "cpu"])
    assert not any(k.startswith("storage.") for k in flat)
    assert summary["storage_tier"] is None
    # nothing behind it: n/a (None), never 0
    assert summary["storage_throughput_tokens_per_sec"] is None
    assert summary["storage_read_tokens_per_generated_token"] is None


def test_hit_rates_overall_and_by_kind():
    flat, summary = compute(fed(), ["cpu", "nvme"])
    assert flat["cache.hit_rate"] == pytest.approx(3 / 5)
    assert flat["cache.hit_rate.multi_turn"] == pytest.approx(0.75)
    assert flat["cache.hit_rate.prefix"] == 0.0
    assert summary["cache_hit_rate"] == pytest.approx(0.6)
    assert flat["cache.hit_rate.new"] == 0.0 and flat["cache.block_hit_rate.multi_turn"] == pytest.approx(0.75)
    assert summary["hit_rates"] == {"multi_turn": {"tokens": 0.75, "blocks": 0.75},
                                    "new": {"tokens": 0.0, "blocks": 0.0},
                                    "prefix": {"tokens": 0.0, "blocks": 0.0}}
    assert summary["cache_lookups"]["multi_turn"] == {"hits": 3, "misses": 1, "hit_tokens": 300, "missed_tokens": 100}


def test_hit_rate_is_in_tokens_and_blocks_apart():
    rec = Recorder()
    rec.open_window(0)
    rec.lookup("prefix", True, 1, 256)   # a full block found and read back
    rec.lookup("prefix", False, 1, 10)   # a short block missed
    rec.lookup("rag", True, 1, 30, blocks=0)  # the same block's rag tokens: no second block
    rec.close_window(10)
    flat, summary = compute(rec, ["cpu"])
    assert flat["cache.hit_rate.prefix"] == pytest.approx(256 / 266)
    assert flat["cache.block_hit_rate.prefix"] == 0.5
    assert flat["cache.hit_rate"] == pytest.approx((256 + 30) / 296)
    assert "cache.block_hit_rate.rag" not in flat and summary["hit_rates"]["rag"] == {"tokens": 1.0, "blocks": None}


def test_tier_hit_rates_split_the_headline_hit_rate_by_serving_tier():
    rec = Recorder()
    rec.open_window(0)
    rec.lookup("multi_turn", True, 1, 300, tier="cpu")
    rec.lookup("prefix", True, 1, 100, tier="nvme")
    rec.lookup("new", True, 1, 50, tier="cpu")  # not a headline kind: in neither rate
    rec.lookup("multi_turn", False, 1, 600)
    rec.close_window(10)
    rec.lookup("prefix", True, 20, 77, tier="cpu")  # after the window: ignored
    flat, summary = compute(rec, ["cpu", "nvme"])
    assert flat["cache.hit_rate"] == pytest.approx(0.4)
    assert flat["cache.tier_hit_rate.cpu"] == pytest.approx(0.3)
    assert flat["cache.tier_hit_rate.nvme"] == pytest.approx(0.1)
    assert summary["tier_hit_rates"] == {"cpu": 0.3, "nvme": 0.1}
    empty = Recorder()
    empty.open_window(0)
    empty.close_window(10)
    flat, summary = compute(empty, ["cpu"])  # nothing looked up: n/a, not 0
    assert "cache.tier_hit_rate.cpu" not in flat and summary["tier_hit_rates"] == {"cpu": None}


def test_requests_system_throughput_and_read_amplification():
    flat, summary = compute(fed(), ["cpu", "nvme"])
    assert flat["requests.completed"] == 2
    assert flat["requests.per_sec"] == pytest.approx(1.0)
    assert flat["system.tokens_per_sec"] == pytest.approx(100 / 2)
    # storage-tier tokens read by requests (nvme reads 2x20; not the cpu reads, not demotions)
    # per generated token (design section 6)
    assert flat["storage.read_tokens_per_generated_token"] == pytest.approx(40 / 100)
    assert summary["storage_read_tokens_per_generated_token"] == pytest.approx(0.4)
    assert flat["e2e.mean"] == pytest.approx(0.040)
    assert flat["queue_wait.max"] == pytest.approx(0.003)
    assert summary["total_requests"] == 2
    assert summary["total_tokens_generated"] == 100
    assert summary["total_tokens_per_sec"] == pytest.approx(50.0)
    assert summary["end_to_end_latency_ms"]["mean"] == pytest.approx(40.0)
    assert summary["queue_wait_ms"]["max"] == pytest.approx(3.0)
    assert flat["errors.count"] == 0


def test_summary_keeps_the_reference_key_names():
    _, summary = compute(fed(), ["cpu", "nvme"])
    for key in ("storage_throughput_tokens_per_sec", "cache_hit_rate", "end_to_end_latency_ms",
                "total_tokens_generated", "requests_per_second", "storage_read_tokens_per_generated_token",
                "timeline_bytes", "counters", "errors"):
        assert key in summary
    assert summary["timeline_step_s"] == 1.0
    # data ops only: the 1 MB eviction is not bytes moved
    assert sum(summary["timeline_bytes"]["nvme"]) == 500_000 + 4_000_000 + 1_000_000


def test_an_empty_run_does_not_divide_by_zero():
    rec = Recorder()
    rec.open_window(0)
    rec.close_window(S)
    flat, summary = compute(rec, ["nvme"])
    assert flat["requests.completed"] == 0 and flat["system.tokens_per_sec"] == 0
    assert "cache.hit_rate" not in flat and "storage.read_tokens_per_generated_token" not in flat
    assert flat["storage.gbps"] == 0  # a real window in which the drive moved nothing
    assert summary["cache_hit_rate"] is None  # no lookups: n/a, not 0%
    assert summary["end_to_end_latency_ms"] == {}
    assert summary["window_edge_fraction"] is None and summary["window_warning"] is None


def test_a_window_that_never_opened_gives_no_rates_not_a_crash():
    flat, summary = compute(Recorder(), ["nvme"])
    assert flat["window_s"] == 0
    assert "storage.gbps" not in flat and "requests.per_sec" not in flat
    assert summary["storage_read_gbps"] is None and summary["total_tokens_per_sec"] is None


def test_errors_are_counted():
    rec = fed()
    rec.error("boom")
    flat, summary = compute(rec, ["cpu", "nvme"])
    assert flat["errors.count"] == 1
    assert summary["errors"] == {"count": 1, "first": ["boom"]}


def test_a_window_short_for_the_load_is_flagged_with_its_uncertainty():
    rec = Recorder()
    rec.open_window(0)
    rec.io("nvme", "write", IOResult(8_000_000, S // 2, S // 2), 10)
    rec.close_window(S)
    # half of this 8 MB chunk's transfers were in flight when the window closed
    rec.io("nvme", "write", IOResult(8_000_000, S + MS, 2 * MS, start_ns=S - MS,
                                     transfers=((S - 1, 4_000_000), (S + MS, 4_000_000))), 10)
    flat, summary = compute(rec, ["nvme"])
    assert summary["window_bytes"] == 12_000_000
    assert summary["window_edge_bytes"] == 4_000_000
    assert flat["window.edge_fraction"] == pytest.approx(1 / 3)
    assert "window too short" in summary["window_warning"] and "--kv-duration" in summary["window_warning"]
    assert summary["tiers"]["nvme"]["write"]["edge_bytes"] == 4_000_000


def test_headline_is_one_ordered_set_with_none_for_na():
    from pytest_kvcache.metrics import HEADLINE, headline

    _, summary = compute(fed(), ["cpu", "nvme"])
    figures = headline(summary, ["cpu", "nvme"], "passed", {"entries_dropped": 0})
    assert list(figures) == [key for key, _, _ in HEADLINE]
    assert figures["headline_op"] == "nvme.read" and figures["cache_hit_rate"] == pytest.approx(0.6)
    assert figures["headline_p95_ms"] == summary["nvme_read_p95_ms"]
    empty = Recorder()
    empty.open_window(0)
    empty.close_window(S)
    _, bare = compute(empty, ["gpu", "cpu"])
    figures = headline(bare, ["gpu", "cpu"], "failed")
    assert figures["cache_hit_rate"] is None and figures["headline_op"] is None
    assert figures["storage_tokens_per_sec"] is None and figures["entries_dropped"] is None
