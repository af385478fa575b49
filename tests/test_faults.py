"""Faults during a run: full disks, I/O errors, vanished files, corruption, interrupts, unsafe input."""

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_kvcache.backends import BackendContext, TierSpec, default_registry
from pytest_kvcache.backends.file import FileBackend
from pytest_kvcache.backends.mock import MockBackend
from pytest_kvcache.cache import MultiTierCache
from pytest_kvcache.criteria import profile_criteria
from pytest_kvcache.engine import provision, run_scenario
from pytest_kvcache.errors import BackendError, ConfigError
from pytest_kvcache.models import resolve_model
from pytest_kvcache.payload import NoiseSource, StagingBuffers, Verifier
from pytest_kvcache.recorder import Recorder
from pytest_kvcache.rundir import check_cache_dir, make_run_dir
from pytest_kvcache.settings import build_settings, load_yaml_config
from pytest_kvcache.tiers import TIER_CONFIGS

NOISE = NoiseSource(3, size=1 << 20)


def ctx(run_dir=None, verify=False):
    staging = StagingBuffers(1 << 16)
    return BackendContext(noise=NOISE, staging=staging, run_dir=run_dir,
                          verifier=Verifier(NOISE, 1 << 16) if verify else None)


def cache_over(*backends):
    rec = Recorder()
    rec.open_window(0)
    return MultiTierCache(list(backends), rec, bytes_per_token=1024), rec


def test_full_fast_tier_falls_through_to_the_next(tmp_path):
    c = ctx()
    gpu = MockBackend(TierSpec("gpu", "mock", 1 << 20, {"full_after_bytes": 8 * 1024}), c)
    cpu = MockBackend(TierSpec("cpu", "mock", 1 << 20), c)
    cache, rec = cache_over(gpu, cpu)
    assert cache.put("a", 8) == "gpu"
    assert cache.put("b", 8) == "cpu"  # the GPU said out of memory: the next tier takes it
    assert rec.run_counters["full.gpu"] == 1 and rec.error_count == 1
    assert cache.check_invariants() == []


def test_full_last_tier_ends_the_run_with_the_error():
    from pytest_kvcache.errors import BackendFull

    c = ctx()
    nvme = MockBackend(TierSpec("nvme", "mock", 1 << 20, {"full_after_bytes": 8 * 1024}), c)
    cache, _ = cache_over(nvme)
    cache.put("a", 8)
    with pytest.raises(BackendFull):
        cache.put("b", 8)
    assert cache.check_invariants() == []


def test_read_error_is_an_error_and_a_miss_never_a_hit():
    c = ctx()
    tier = MockBackend(TierSpec("cpu", "mock", 1 << 20, {"fail_read_keys": ["bad"]}), c)
    cache, rec = cache_over(tier)
    cache.put("bad", 4)
    cache.put("good", 4)
    assert cache.read("bad", "multi_turn") is None
    assert cache.read("good", "multi_turn") == "cpu"
    assert rec.lookups["multi_turn"] == [1, 1, 4, 4]  # the failed read's 4 tokens are a miss
    assert rec.error_count == 1 and "injected I/O error" in rec.errors[0]
    assert not cache.contains("bad") and cache.check_invariants() == []


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_file_changed_behind_our_back_is_reported(tmp_path, damage):
    c = ctx(tmp_path)
    cache, rec = cache_over(FileBackend(TierSpec("nvme", "file", 1 << 30), c))
    cache.put("conv.k00000", 16)
    path = Path(cache.tiers[0].backend.path_of("conv.k00000"))
    if damage == "delete":
        path.unlink()
    else:
        os.truncate(path, 4096)
    assert cache.read("conv.k00000", "multi_turn") is None
    assert rec.error_count >= 1
    assert cache.check_invariants() == []
    assert cache.tiers[0].backend.stored_keys() == set()
    cache.tiers[0].backend.close()
    assert list(tmp_path.iterdir()) == []


def test_verify_catches_a_corrupted_byte(tmp_path):
    c = ctx(tmp_path, verify=True)
    cache, _ = cache_over(FileBackend(TierSpec("nvme", "file", 1 << 30), c))
    cache.put("x", 64)
    cache.put("y", 64)
    with open(cache.tiers[0].backend.path_of("x"), "r+b") as fh:
        fh.seek(5000)
        byte = fh.read(1)
        fh.seek(5000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    cache.read("x", "multi_turn")
    cache.read("y", "multi_turn")
    assert c.verifier.mismatches == 1 and c.verifier.checked >= 2
    assert "byte 5000" in c.verifier.first[0]


def _settings(cache_dir, **extra):
    values = {"cache_dir": str(cache_dir), "duration": 3, "warmup": 0, "users": 2, "requests_per_user": 6,
              "think_time_scale": 0, "generation_mode": "none", "cpu_mem_gb": 0.1}
    values.update(extra)
    return build_settings(values, {}, {})


def _run(config, settings):
    from pytest_kvcache.workload import WorkloadParams, generate_trace

    trace = generate_trace(WorkloadParams(seed=settings.seed, users=settings.users,
                                          requests_per_user=settings.requests_per_user, think_time_scale=0))
    prov = provision(TIER_CONFIGS[config], settings, default_registry())
    try:
        return run_scenario(prov, settings, resolve_model(settings.model), trace, profile_criteria("none")), prov
    finally:
        prov.close()


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_disk_full_mid_run_fails_the_scenario_and_removes_its_files(small_fs):
    (small_fs / "mine.txt").write_text("user data")
    # a small tmpfs fills up fast; it is memory, so the run must be allowed on it
    result, prov = _run("storage-only", _settings(small_fs, nvme_capacity_gb=0.1, allow_memory_fs=True))
    assert result.status == "error"
    message = result.failure_message()
    assert "is full" in message and "--kv-nvme-capacity-gb" in message
    assert result.summary["total_requests"] >= 0 and result.trace["requests_started"] >= 1
    assert sorted(p.name for p in small_fs.iterdir()) == ["mine.txt"]


def test_verify_run_checks_every_read(tmp_path):
    result, _ = _run("cpu+storage", _settings(tmp_path, verify=True, cpu_mem_gb=0.05))
    assert result.summary["verify"]["blocks_checked"] > 0
    assert result.metrics["verify.mismatches"] == 0


def test_run_dir_is_private(tmp_path):
    run_dir = make_run_dir(tmp_path)
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    run_dir.rmdir()


def test_unwritable_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    with pytest.raises(ConfigError, match="not writable"):
        check_cache_dir(tmp_path)


def test_yaml_is_loaded_safely(tmp_path):
    evil = tmp_path / "evil.yaml"
    marker = tmp_path / "pwned"
    evil.write_text(f'users: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ConfigError):
        load_yaml_config(evil)
    assert not marker.exists()


SCENARIO = """
import pytest

@pytest.mark.parametrize("kv_tiers", ["cpu-only", "storage-only"], indirect=True)
def test_tiers(kv_tiers, kv_run):
    kv_run(kv_tiers)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_keeps_the_partial_report_and_removes_files(pytester, tmp_path_factory, sig):
    cache_dir = tmp_path_factory.mktemp("cache")
    pytester.makepyfile(test_scn=SCENARIO)
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--kv-cache-dir={cache_dir}",
           "--kv-duration=60", "--kv-warmup=0", "--kv-users=2", "--kv-cpu-mem-gb=0.1",
           "--kv-nvme-capacity-gb=1", "--kv-profile=none"]
    proc = subprocess.Popen(cmd, cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    report = pytester.path / "kvcache-report.json"
    while not report.exists():  # the first scenario (cpu-only) runs 60 s: wait for the second?
        if time.monotonic() > deadline or proc.poll() is not None:
            break
        time.sleep(0.2)
        if any(cache_dir.iterdir()):
            time.sleep(1.5)  # well inside the first scenario's window
            break
    proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=45)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the session did not end within 45 s of the signal")
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out.decode()[-2000:]
    data = json.loads(report.read_text())
    assert data["complete"] is False
    assert data["scenarios"][0]["status"] == "interrupted"
    assert data["scenarios"][0]["summary"]["total_requests"] >= 0
    assert list(cache_dir.iterdir()) == []


class _Exploding(MockBackend):
    """A plugin backend whose writes fail with a non-BackendError (a bug, a driver error)."""

    def write(self, key, nbytes):
        raise OSError(5, "device gone")


def test_failed_demotion_never_leaves_an_entry_moving():
    import threading

    c = ctx()
    gpu = MockBackend(TierSpec("gpu", "mock", 10 * 1024), c)  # high water 8 KiB: two 4 KiB entries
    cpu = MockBackend(TierSpec("cpu", "mock", 10 * 1024), c)
    nvme = _Exploding(TierSpec("nvme", "mock", 1 << 20), c)
    cache, _ = cache_over(gpu, cpu, nvme)
    for key in ("a", "b", "c", "d"):
        cache.put(key, 4)  # a, b demoted to cpu; gpu holds c, d
    with pytest.raises(OSError):
        cache.put("e", 4)  # gpu -> cpu needs cpu -> nvme, whose write explodes
    assert cache.check_invariants() == []
    done = []
    reader = threading.Thread(target=lambda: done.append([cache.read(k, "multi_turn") for k in "abcd"]))
    reader.start()
    reader.join(timeout=5)
    assert done, "a read blocked on an entry left 'moving'"


def test_broken_entry_is_removed_once_by_its_last_reader():
    import threading

    c = ctx()
    gate = threading.Event()

    class Slow(MockBackend):
        fail = True

        def read(self, key, nbytes):
            gate.wait(2)
            if Slow.fail:
                Slow.fail = False
                raise BackendError("injected")
            return super().read(key, nbytes)

    cache, rec = cache_over(Slow(TierSpec("cpu", "mock", 1 << 20), c))
    cache.put("p", 4)
    results = []
    readers = [threading.Thread(target=lambda: results.append(cache.read("p", "prefix"))) for _ in range(2)]
    for t in readers:
        t.start()
    gate.set()
    for t in readers:
        t.join(timeout=5)
    assert sorted(map(str, results)) == ["None", "cpu"]
    assert not cache.contains("p") and rec.error_count == 1
    assert cache.check_invariants() == []


def test_a_failed_report_write_is_kept_as_a_message_not_raised(tmp_path, monkeypatch):
    import errno

    import pytest_kvcache.session as session_mod
    from pytest_kvcache.session import KVSession

    path = tmp_path / "r.json"
    kv = KVSession(build_settings({}, {}, {}), default_registry(), path)
    kv.results.append(object())
    monkeypatch.setattr(session_mod, "build_report", lambda session, final: {"scenarios": []})

    def disk_full(target, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(session_mod, "write_json", disk_full)
    assert kv.write_report(final=False) is None  # a scenario's intermediate write: no exception
    assert kv.report_error == f"cannot write {path}: No space left on device ({path})."
    monkeypatch.setattr(session_mod, "write_json", lambda target, data: target.write_text("{}"))
    assert kv.write_report(final=True) == path and kv.report_error is None  # the last write counts


def test_provision_checks_host_memory_before_making_anything(tmp_path):
    """Per scenario (a hook may have raised the budget since the session's check)."""
    import fcntl

    huge = 2 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    with pytest.raises(ConfigError, match="scenario cpu-only needs .* lower --kv-cpu-mem-gb to"):
        provision(TIER_CONFIGS["cpu-only"], _settings(tmp_path, cpu_mem_gb=huge), default_registry())
    assert list(tmp_path.iterdir()) == []
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the drive's lock was released
    finally:
        os.close(fd)
