"""engine.provision + run_scenario on real backends (cpu arena + files), and run-dir safety."""

import functools
import os
import stat
from pathlib import Path

import pytest

from pytest_kvcache import engine
from pytest_kvcache.backends import default_registry
from pytest_kvcache.criteria import builtin_criteria, profile_criteria
from pytest_kvcache.devstats import RATIO_FLOOR_BYTES, compare_with_ours
from pytest_kvcache.engine import provision, run_scenario
from pytest_kvcache.errors import ConfigError
from pytest_kvcache.fsinfo import find_block_devices, mount_for
from pytest_kvcache.models import resolve_model
from pytest_kvcache.report import scenario_text
from pytest_kvcache.rundir import check_cache_dir, make_run_dir
from pytest_kvcache.settings import build_settings
from pytest_kvcache.tiers import TIER_CONFIGS
from pytest_kvcache.workload import WorkloadParams, generate_trace


def settings_for(cache_dir, **extra):
    cli = {"cache_dir": str(cache_dir), "model": "tiny-1b", "duration": "1.0", "warmup": 0,
           "users": 2, "requests_per_user": "3", "think_time_scale": "0", "generation_mode": "none",
           "cpu_mem_gb": "0.02", "nvme_capacity_gb": 0.5, "chunk_tokens": 64, "io_block_mb": 1,
           "profile": "latency"}
    cli.update(extra)
    return build_settings(cli, {}, {})


def small_trace(s):
    # contexts capped so the run writes tens of MB, not hundreds
    return generate_trace(WorkloadParams(seed=s.seed, users=s.users, requests_per_user=s.requests_per_user,
                                         think_time_scale=s.think_time_scale, max_context_tokens=512))


def test_cpu_plus_storage_runs_on_real_backends_and_cleans_up(tmp_path):
    mine = tmp_path / "keep-me.txt"
    mine.write_text("user data")
    before = sorted(p.name for p in tmp_path.iterdir())
    s = settings_for(tmp_path)
    assert s.duration == 1.0 and s.users == 2 and s.cache_root == tmp_path
    model = resolve_model(s.model)
    trace = small_trace(s)
    prov = provision(TIER_CONFIGS["cpu+storage"], s, default_registry())
    seen_during_run = []
    try:
        assert prov.tier_names == ["cpu", "nvme"]
        assert prov.run_dir.parent == tmp_path
        assert stat.S_IMODE(prov.run_dir.stat().st_mode) == 0o700

        def tick(runner, elapsed_s):
            seen_during_run.append(len(list(prov.run_dir.iterdir())))

        # no latency criteria: other jobs share this disk; the run itself must be clean
        result = run_scenario(prov, s, model, trace, [], on_tick=tick)
        assert result.status == "passed", result.failure_message()
        assert result.errors == [] and result.invariant_problems == []
        assert result.tiers == ["cpu", "nvme"]
        assert result.trace["sha256"] == trace.sha256()
        assert result.trace["requests_started"] >= 1
        assert result.summary["storage_tier"] == "nvme"
        assert result.metrics["window_s"] > 0
        # spilled entries are files in the run dir, one per nvme entry, besides freed spares
        nvme = next(b for b in prov.backends if b.tier == "nvme")
        names = sorted(str(p) for p in prov.run_dir.iterdir())
        files = sorted(nvme.path_of(k) for k in nvme.stored_keys())
        assert files, "nothing spilled to the nvme tier"
        assert set(files) <= set(names)
        assert result.occupancy["nvme"]["entries"] == len(files)
        assert len(names) - len(files) == nvme.describe()["spare_files"]
        assert any(b["tier"] == "nvme" and b["backend"] == "file" for b in result.backends)
        assert result.metrics.get("nvme.write.count", 0) + result.metrics.get("nvme.demote_write.count", 0) > 0
        assert result.run["staging_bytes"] > 0
        # the work dir is a drive: its device counters sit beside our bytes (this VM: vda)
        assert result.metrics["storage.memory_tiers"] == 0
        lookup = find_block_devices(prov.run_dir)
        dev = result.device_counters
        if lookup.devices:
            assert dev["available"] is True and dev["devices"] == list(lookup.devices), dev
            assert dev["app_write_bytes"] == sum(result.metrics.get(f"nvme.{op}.bytes", 0)
                                                 for op in ("write", "demote_write"))
            for kind in ("read", "write"):
                edge = sum(result.summary["tiers"]["nvme"].get(op, {}).get("edge_bytes", 0)
                           for op in ((kind, f"demote_{kind}")))
                judged = dev[f"app_{kind}_bytes"] >= max(RATIO_FLOOR_BYTES, 10 * edge)
                assert (f"device.{kind}_ratio" in result.metrics) == judged
                assert (f"{kind}_ratio_reason" in dev) == (not judged)
            text = scenario_text(result)
            assert f"device {dev['device']} over the window" in text
            assert ("not judged: we " in text) == ("read_ratio_reason" in dev or "write_ratio_reason" in dev)
        else:
            assert dev == {"available": False, "device": None, "devices": [], "reason": lookup.reason}
    finally:
        left = prov.close()
    assert left == []
    assert not prov.run_dir.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert mine.read_text() == "user data"
    assert seen_during_run, "on_tick was never called"


def test_cpu_only_has_no_storage_figures(tmp_path):
    s = settings_for(tmp_path, cpu_mem_gb="0.2")
    prov = provision(TIER_CONFIGS["cpu-only"], s, default_registry())
    try:
        result = run_scenario(prov, s, resolve_model(s.model), small_trace(s), profile_criteria("none"))
    finally:
        prov.close()
    assert result.status == "passed" and result.invariant_problems == []
    assert result.summary["storage_tier"] is None
    assert result.device_counters["available"] is False
    assert list(tmp_path.iterdir()) == []


def run_cpu_only(tmp_path, criteria=(), **extra):
    s = settings_for(tmp_path, **extra)
    prov = provision(TIER_CONFIGS["cpu-only"], s, default_registry())
    try:
        return run_scenario(prov, s, resolve_model(s.model), small_trace(s), list(criteria))
    finally:
        prov.close()


def test_entries_larger_than_every_tier_fail_the_scenario_naming_the_budget(tmp_path):
    """Issue 9's case: llama2-7b chunks (64 tokens x 512 KiB = 32 MiB) into a 10 MB cpu tier."""
    result = run_cpu_only(tmp_path, builtin_criteria(), model="llama2-7b", cpu_mem_gb="0.01", duration="0.3")
    dropped = result.summary["entries_dropped"]
    assert dropped["count"] >= 1 and dropped["too_big"] == dropped["count"]
    assert result.metrics["cache.entries_dropped"] == dropped["count"]
    assert result.status == "failed"
    message = result.failure_message()
    assert "--kv-cpu-mem-gb to at least" in message and "cache.entries_dropped <= 0" in message
    assert result.summary["headline"]["entries_dropped"] == dropped["count"]


def test_the_workload_hash_covers_the_io_settings_the_trace_hash_does_not(tmp_path):
    a = run_cpu_only(tmp_path, duration="0.2", cpu_mem_gb="0.2")
    b = run_cpu_only(tmp_path, duration="0.2", cpu_mem_gb="0.2", chunk_tokens=128)
    c = run_cpu_only(tmp_path, duration="0.2", cpu_mem_gb="0.2")
    assert a.trace["sha256"] == b.trace["sha256"] == c.trace["sha256"]
    assert a.trace["workload_sha256"] != b.trace["workload_sha256"]
    assert a.trace["workload_sha256"] == c.trace["workload_sha256"]
    assert "chunk_tokens" in a.trace["workload_covers"] and "request list" in a.trace["covers"]


def test_a_zero_budget_tier_is_a_config_error_and_leaves_nothing(tmp_path):
    s = settings_for(tmp_path, cpu_mem_gb=0)
    with pytest.raises(ConfigError, match="budget is 0"):
        provision(TIER_CONFIGS["cpu+storage"], s, default_registry())
    assert list(tmp_path.iterdir()) == []


def test_make_run_dir_makes_a_private_dir(tmp_path):
    run_dir = make_run_dir(tmp_path)
    assert run_dir.is_dir() and run_dir.parent == tmp_path
    assert run_dir.name.startswith("kvcache-run-")
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    assert make_run_dir(tmp_path) != run_dir


def test_make_run_dir_on_a_missing_dir(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        make_run_dir(tmp_path / "nope")
    assert not (tmp_path / "nope").exists()


def test_make_run_dir_on_a_file(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        make_run_dir(f)
    assert f.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_make_run_dir_on_an_unwritable_dir(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="not writable"):
            make_run_dir(ro)
    finally:
        ro.chmod(0o700)


class _PageCacheWindow:
    """Device counters that saw none of our bytes: what a page-cache-served run looks like."""

    def __init__(self, devices, **kwargs):
        pass

    def start(self):
        pass

    def stop(self):
        pass

    def result(self):
        return {"available": True, "device": "vdx", "devices": ["vdx"], "read_bytes": 0, "write_bytes": 0,
                "utilization": 0.0}


def test_device_counters_that_saw_too_few_bytes_fail_the_scenario(tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "DeviceWindow", _PageCacheWindow)
    monkeypatch.setattr(engine, "compare_with_ours", functools.partial(compare_with_ours, floor=1))
    s = settings_for(tmp_path)
    prov = provision(TIER_CONFIGS["storage-only"], s, default_registry())
    try:
        result = run_scenario(prov, s, resolve_model(s.model), small_trace(s), builtin_criteria())
    finally:
        prov.close()
    assert result.metrics["device.write_ratio"] == 0.0
    outcomes = {o.criterion.text: o.status for o in result.outcomes}
    assert outcomes["device.write_ratio >= 0.9"] == "fail" and outcomes["storage.memory_tiers == 0"] == "pass"
    assert result.status == "failed"
    text = scenario_text(result)
    assert "device vdx over the window: read 0.000 GB (x" in text and "write 0.000 GB (x0.000), busy 0.0%" in text


@pytest.fixture
def shm_dir(tmp_path):
    if not os.path.isdir("/dev/shm") or mount_for("/dev/shm").fstype != "tmpfs":
        pytest.skip("no tmpfs /dev/shm on this machine")
    d = Path("/dev/shm") / f"kvtest-{os.getpid()}-{tmp_path.name}"
    d.mkdir()
    yield d
    d.rmdir()


def test_a_memory_cache_dir_is_a_usage_error_unless_allowed(shm_dir):
    with pytest.raises(ConfigError) as err:
        check_cache_dir(shm_dir)
    assert f"--kv-cache-dir {shm_dir} is on tmpfs: memory, not a drive" in str(err.value)
    assert "--kv-allow-memory-fs" in str(err.value)
    with pytest.raises(ConfigError, match="memory, not a drive"):
        provision(TIER_CONFIGS["storage-only"], settings_for(shm_dir), default_registry())
    assert list(shm_dir.iterdir()) == []
    check_cache_dir(shm_dir, allow_memory=True)


def test_a_memory_cache_dir_with_the_option_is_marked_and_never_passes_as_a_drive(shm_dir):
    s = settings_for(shm_dir, allow_memory_fs=True)
    prov = provision(TIER_CONFIGS["storage-only"], s, default_registry())
    try:
        result = run_scenario(prov, s, resolve_model(s.model), small_trace(s), builtin_criteria())
    finally:
        prov.close()
    assert list(shm_dir.iterdir()) == []
    nvme = result.backends[-1]
    assert nvme["medium"] == "memory" and nvme["medium_note"] == "tmpfs: memory, not a drive"
    assert result.metrics["storage.memory_tiers"] == 1
    assert result.device_counters["available"] is False
    assert result.device_counters["reason"].endswith("the tmpfs mount /dev/shm is memory, not a drive")
    assert {o.criterion.text: o.status for o in result.outcomes}["storage.memory_tiers == 0"] == "fail"
    assert result.status == "failed"
    assert "(tmpfs, memory, not a drive), I/O mode buffered" in scenario_text(result)


def test_a_storage_tier_that_keeps_no_files_gets_no_device_verdict(tmp_path):
    s = settings_for(tmp_path, nvme_backend="mock")
    prov = provision(TIER_CONFIGS["storage-only"], s, default_registry())
    try:
        result = run_scenario(prov, s, resolve_model(s.model), small_trace(s), builtin_criteria())
    finally:
        prov.close()
    assert result.device_counters == {"available": False, "device": None, "devices": [],
                                      "reason": "the nvme tier's backend (mock) keeps no files in the run directory"}
    assert "device.read_ratio" not in result.metrics and "device.write_ratio" not in result.metrics
    assert [o.status for o in result.outcomes] == ["pass", "pass", "n/a", "n/a"]
