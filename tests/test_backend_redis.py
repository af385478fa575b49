"""The redis tier against a real redis-server on loopback (started by the fixtures): content,
byte counts, the budget and eviction, as a middle tier, namespacing, and a server that dies."""

import threading
import time

import pytest
from remote_helpers import MiB, make_cache, make_ctx, settings_for, small_trace

from pytest_kvcache.backends import default_registry
from pytest_kvcache.backends.base import TierSpec
from pytest_kvcache.backends.mock import MockBackend
from pytest_kvcache.engine import provision, run_scenario
from pytest_kvcache.errors import BackendError, BackendFull, ConfigError
from pytest_kvcache.models import resolve_model
from pytest_kvcache.report import scenario_text
from pytest_kvcache.servers import LocalRedis, redis_unavailable_reason
from pytest_kvcache.tiers import TIER_CONFIGS, tier_specs

redis = pytest.importorskip("redis", reason="the redis tier tests need the redis client (pip install '.[redis]')")


def backend(url, run_dir, capacity=64 * MiB, **options):
    from pytest_kvcache.backends.redis import RedisBackend

    return RedisBackend(TierSpec("redis", "redis", capacity, {"url": url, "timeout_s": 5, **options}),
                        make_ctx(run_dir))


def test_round_trip_counts_exact_bytes_and_checks_content(kv_redis_server, tmp_path):
    b = backend(kv_redis_server.url, tmp_path / "kvcache-run-a")
    try:
        w = b.write("k1", 3 * MiB + 5)
        assert w.nbytes == 3 * MiB + 5 and w.dur_ns > 0 and w.parts() == ((w.end_ns - w.dur_ns, w.end_ns, w.nbytes),)
        r = b.read("k1", 3 * MiB + 5)
        assert r.nbytes == 3 * MiB + 5
        v = b.ctx.verifier
        assert v.checked == 4 and v.mismatches == 0  # 3 MiB + 5 B in 1 MiB blocks, all as written
        raw = redis.Redis.from_url(kv_redis_server.url)
        stored = raw.get("kvcache:kvcache-run-a:k1")
        assert bytes(stored) == bytes(b.ctx.noise.expected("k1", 3 * MiB + 5))  # really on the server
        assert b.stored_keys() == {"k1"}
        assert b.delete("k1").nbytes == 3 * MiB + 5
        assert b.stored_keys() == set() and raw.exists("kvcache:kvcache-run-a:k1") == 0
        with pytest.raises(BackendError, match="no value for 'k1'"):
            b.read("k1", 10)
        with pytest.raises(BackendError, match="no entry 'k1' to delete"):
            b.delete("k1")
        d = b.describe()
        assert d["medium"] == "network" and d["location"] == f"redis at {kv_redis_server.url}"
        assert d["block_device"] is None and d["retries"] == 0
    finally:
        b.close()


def test_a_corrupted_value_is_a_verify_mismatch_and_a_wrong_size_an_error(kv_redis_server, tmp_path):
    b = backend(kv_redis_server.url, tmp_path / "kvcache-run-c")
    raw = redis.Redis.from_url(kv_redis_server.url)
    try:
        b.write("k", 8192)
        value = bytearray(raw.get("kvcache:kvcache-run-c:k"))
        value[5000] ^= 0xFF
        raw.set("kvcache:kvcache-run-c:k", bytes(value))
        b.read("k", 8192)
        assert b.ctx.verifier.mismatches == 1 and "byte 5000" in b.ctx.verifier.first[0]
        raw.set("kvcache:kvcache-run-c:k", b"short")
        with pytest.raises(BackendError, match="holds 5 bytes"):
            b.read("k", 8192)
    finally:
        b.close()


def test_runs_on_one_server_never_meet_and_close_removes_only_its_own_keys(kv_redis_server, tmp_path):
    raw = redis.Redis.from_url(kv_redis_server.url)
    raw.set("someone-elses-key", b"keep")
    a = backend(kv_redis_server.url, tmp_path / "kvcache-run-a")
    b = backend(kv_redis_server.url, tmp_path / "kvcache-run-b")
    try:
        a.write("same", 4096)
        b.write("same", 8192)
        b.write("other", 100)
        assert a.stored_keys() == {"same"} and b.stored_keys() == {"same", "other"}
        assert a.read("same", 4096).nbytes == 4096 and b.read("same", 8192).nbytes == 8192
        a.close()
        assert b.stored_keys() == {"same", "other"}
        assert raw.get("someone-elses-key") == b"keep"
        assert not list(raw.scan_iter(match="kvcache:kvcache-run-a:*"))
    finally:
        b.close()
        raw.delete("someone-elses-key")
    assert not list(raw.scan_iter(match="kvcache:kvcache-run-b:*"))


def test_the_budget_evicts_and_every_byte_is_counted(kv_redis_server, tmp_path):
    b = backend(kv_redis_server.url, tmp_path / "kvcache-run-e", capacity=10 * 64 * 1024)
    cache, rec = make_cache([b])
    try:
        for i in range(30):  # 30 entries of 64 KiB into a 640 KiB budget (high water 512 KiB)
            assert cache.put(f"e{i}", 64) == "redis"
        tier = cache.tiers[0]
        assert len(tier.entries) == 8 and tier.used == 8 * 64 * 1024 <= tier.high_water
        assert tier.peak <= tier.budget
        assert rec.total[("redis", "write")][:2] == [30, 30 * 64 * 1024]
        assert rec.total[("redis", "evict")][0] == 22
        assert b.stored_keys() == set(tier.entries) == {f"e{i}" for i in range(22, 30)}
        assert cache.read("e29", "multi_turn") == "redis" and cache.read("e0", "multi_turn") is None
        assert rec.total[("redis", "read")][:2] == [1, 64 * 1024]
        assert cache.check_invariants() == []
    finally:
        b.close()


def test_as_a_middle_tier_it_demotes_to_the_tier_below(kv_redis_server, tmp_path):
    ctx = make_ctx(tmp_path / "kvcache-run-m")
    from pytest_kvcache.backends.redis import RedisBackend

    mid = RedisBackend(TierSpec("redis", "redis", 4 * 64 * 1024, {"url": kv_redis_server.url}), ctx)
    below = MockBackend(TierSpec("nvme", "mock", 64 * MiB, {}), ctx)
    cache, rec = make_cache([mid, below])
    try:
        for i in range(10):
            cache.put(f"e{i}", 64)
        assert rec.total[("redis", "demote_read")][:2] == [7, 7 * 64 * 1024]
        assert rec.total[("nvme", "demote_write")][0] == 7
        assert mid.stored_keys() == set(cache.tiers[0].entries) and len(cache.tiers[0].entries) == 3
        assert cache.read("e0", "multi_turn") == "nvme"
        assert cache.check_invariants() == []
    finally:
        mid.close()


def test_a_server_out_of_memory_is_full_and_a_budget_above_its_maxmemory_is_refused(tmp_path):
    if redis_unavailable_reason(local=True):
        pytest.skip(redis_unavailable_reason(local=True))
    server = LocalRedis(maxmemory_bytes=4 * MiB)
    try:
        with pytest.raises(ConfigError, match="more than the maxmemory"):
            backend(server.url, tmp_path / "kvcache-run-x", capacity=8 * MiB)
        b = backend(server.url, tmp_path / "kvcache-run-y", capacity=4 * MiB)
        with pytest.raises(BackendFull, match="out of memory"):
            for i in range(4):
                b.write(f"k{i}", 2 * MiB)
        b.close()
    finally:
        server.stop()


def test_a_server_that_stops_answering_fails_the_call_after_the_timeout(tmp_path):
    import os
    import signal

    if redis_unavailable_reason(local=True):
        pytest.skip(redis_unavailable_reason(local=True))
    server = LocalRedis()
    b = backend(server.url, tmp_path / "kvcache-run-h", timeout_s=1)
    try:
        b.write("k", 4096)
        os.kill(server.proc.pid, signal.SIGSTOP)  # alive, connected, silent
        t0 = time.monotonic()
        with pytest.raises(BackendError, match="no reply within --kv-remote-timeout 1 s"):
            b.read("k", 4096)
        assert time.monotonic() - t0 < 15  # the 1 s socket timeout, not a hang (generous for a loaded VM)
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
        b.close()
        server.stop()


def test_an_unreachable_server_is_an_error_naming_the_option(tmp_path):
    from pytest_kvcache.servers import free_port

    with pytest.raises(BackendError, match="--kv-redis-url"):
        backend(f"redis://127.0.0.1:{free_port()}/0", tmp_path / "kvcache-run-u")


def test_a_wrong_password_is_an_error_naming_the_password_not_a_missing_server(tmp_path):
    if redis_unavailable_reason(local=True):
        pytest.skip(redis_unavailable_reason(local=True))
    server = LocalRedis()
    try:
        redis.Redis.from_url(server.url).config_set("requirepass", "s3cret")
        for url in (server.url, server.url.replace("redis://", "redis://:wrong@")):
            with pytest.raises(BackendError, match="refused the credentials.*password in --kv-redis-url") as info:
                backend(url, tmp_path / "kvcache-run-p")
            assert "wrong" not in str(info.value)  # the password never reaches a message
    finally:
        server.stop()


def test_a_server_that_dies_mid_run_ends_it_with_an_error_and_the_figures_so_far(tmp_path):
    if redis_unavailable_reason(local=True):
        pytest.skip(redis_unavailable_reason(local=True))
    server = LocalRedis()
    s = settings_for(tmp_path, redis_url=server.url, remote_timeout=3)
    prov = provision(TIER_CONFIGS["redis-only"], s, default_registry())
    out = {}

    def run():
        out["result"] = run_scenario(prov, s, resolve_model(s.model), small_trace(s), [])

    try:
        t = threading.Thread(target=run, daemon=True)
        t.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not prov.backends[0].stored_keys():
            time.sleep(0.05)  # until the run has stored something
        time.sleep(0.5)
        server.kill()
        t.join(60)  # the window is 30 s: ending well before it means the failure ended the run
        assert not t.is_alive(), "the run hung on a dead server"
    finally:
        server.stop()
        with pytest.warns(UserWarning, match="could not remove this run's keys"):
            prov.close()
    result = out["result"]
    assert result.status == "error"
    assert any("redis tier" in e and server.url in e for e in result.errors), result.errors
    assert result.metrics["redis.write.bytes"] > 0  # what was measured before the death is kept
    assert "redis at " + server.url in scenario_text(result)


def test_settings_point_the_tier_at_the_server_and_check_the_options(tmp_path):
    s = settings_for(tmp_path, redis_url="redis://:secret@10.0.0.1:6380/2", redis_mem_gb=0.5, remote_timeout=2)
    (spec,) = tier_specs(TIER_CONFIGS["redis-only"], s)
    assert (spec.tier, spec.backend, spec.capacity_bytes) == ("redis", "redis", 500_000_000)
    assert spec.options == {"url": "redis://:secret@10.0.0.1:6380/2", "timeout_s": 2.0}
    assert s.to_dict()["redis_url"] == "redis://:***@10.0.0.1:6380/2"  # never the password in a report
    assert [t.tier for t in tier_specs(TIER_CONFIGS["cpu+redis"], s)] == ["cpu", "redis"]
    with pytest.raises(ConfigError, match="--kv-redis-url redis://host"):
        tier_specs(TIER_CONFIGS["redis-only"], settings_for(tmp_path))
    with pytest.raises(ConfigError, match="not a Redis URL"):
        settings_for(tmp_path, redis_url="http://localhost:6379")


def test_host_memory_counts_two_whole_chunks_per_worker_for_a_network_tier(tmp_path):
    from pytest_kvcache.memory import host_bytes_needed

    s = settings_for(tmp_path, model="llama3.1-8b", users=3, chunk_tokens=256)
    chunk = 256 * resolve_model("llama3.1-8b").bytes_per_token
    parts = host_bytes_needed(("cpu", "redis"), s)
    assert parts["network tier chunks (3 workers x 2 x --kv-chunk-tokens 256)"] == 3 * 2 * chunk
    assert not any(p.startswith("network tier") for p in host_bytes_needed(("cpu", "nvme"), s))


def test_the_local_server_reason_names_the_missing_piece(monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "apt-get install redis-server" in redis_unavailable_reason(local=True)
    assert redis_unavailable_reason(local=False) is None  # a given URL needs no binary
