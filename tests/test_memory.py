"""Host memory checks: probing MemAvailable and cgroup limits (from fake files), and the budget check."""

import pytest

from pytest_kvcache.errors import ConfigError
from pytest_kvcache.memory import (
    RESERVE_BYTES,
    MemoryLimit,
    available,
    cgroup_headroom,
    check_host_memory,
    host_bytes_needed,
    mem_available,
)
from pytest_kvcache.payload import NOISE_BYTES
from pytest_kvcache.settings import GB, build_settings

MiB = 1 << 20


def _meminfo(tmp_path, kb):
    path = tmp_path / "meminfo"
    path.write_text(f"MemTotal:       24683656 kB\nMemFree:         1000000 kB\nMemAvailable:   {kb} kB\n")
    return path


def test_mem_available_reads_proc_meminfo(tmp_path):
    assert mem_available(_meminfo(tmp_path, 2_000_000)).bytes == 2_000_000 * 1024
    assert mem_available(tmp_path / "missing") is None
    (tmp_path / "old").write_text("MemTotal: 1 kB\n")  # kernels before 3.14 have no MemAvailable
    assert mem_available(tmp_path / "old") is None


def _v2(tmp_path, levels: dict, path="/ci.slice/job.scope"):
    """A cgroup v2 tree: ``levels`` maps a cgroup path to (memory.max, memory.current, inactive_file)."""
    root = tmp_path / "cg"
    for cg, (limit, current, inactive) in levels.items():
        d = root / cg.strip("/")
        d.mkdir(parents=True, exist_ok=True)
        (d / "memory.max").write_text(f"{limit}\n")
        (d / "memory.current").write_text(f"{current}\n")
        (d / "memory.stat").write_text(f"anon {current}\nfile 10\ninactive_file {inactive}\nactive_file 0\n")
    proc = tmp_path / "cgroup"
    proc.write_text(f"0::{path}\n")
    return proc, root


def test_cgroup_v2_headroom_is_the_least_over_own_cgroup_and_its_parents(tmp_path):
    proc, root = _v2(tmp_path, {"/ci.slice/job.scope": ("max", 5 * GB, 0),
                                "/ci.slice": (8 * GB, 6 * GB, 1 * GB)})
    got = cgroup_headroom(proc, root)
    assert got.bytes == 8 * GB - 6 * GB + 1 * GB  # the parent's limit binds; inactive page cache is reclaimable
    assert "memory.max" in got.source and "ci.slice" in got.source
    proc, root = _v2(tmp_path / "b", {"/ci.slice/job.scope": (3 * GB, 1 * GB, 0)})
    assert cgroup_headroom(proc, root).bytes == 2 * GB


def test_cgroup_v2_without_a_limit_is_none(tmp_path):
    proc, root = _v2(tmp_path, {"/user.slice": ("max", 5 * GB, 0)}, path="/user.slice")
    assert cgroup_headroom(proc, root) is None
    assert cgroup_headroom(tmp_path / "no-proc-file", root) is None


def test_cgroup_v1_memory_controller(tmp_path):
    root = tmp_path / "cg"
    own = root / "memory" / "docker" / "abc"
    own.mkdir(parents=True)
    (own / "memory.limit_in_bytes").write_text(f"{4 * GB}\n")
    (own / "memory.usage_in_bytes").write_text(f"{3 * GB}\n")
    (own / "memory.stat").write_text(f"cache 10\ntotal_inactive_file {GB // 2}\n")
    (root / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    (root / "memory" / "memory.usage_in_bytes").write_text(f"{20 * GB}\n")
    proc = tmp_path / "cgroup"
    proc.write_text("5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n")
    got = cgroup_headroom(proc, root)
    assert got.bytes == GB + GB // 2 and "cgroup v1" in got.source


def test_cgroup_path_of_the_host_seen_from_a_container(tmp_path):
    """Inside a container /proc/self/cgroup may name the host's path; the mount is the container's own."""
    proc, root = _v2(tmp_path, {"/": (2 * GB, GB, 0)}, path="/kubepods/pod1/ctr")
    assert cgroup_headroom(proc, root).bytes == GB


def test_available_is_the_smaller_figure(tmp_path):
    proc, root = _v2(tmp_path, {"/job": (3 * GB, 1 * GB, 0)}, path="/job")
    assert available(_meminfo(tmp_path, 10_000_000), proc, root).bytes == 2 * GB
    assert available(_meminfo(tmp_path, 1_000_000), proc, root).bytes == 1_000_000 * 1024
    assert available(tmp_path / "none", tmp_path / "none", root) is None


def test_host_bytes_needed_by_tier_and_users():
    s = build_settings({"cpu_mem_gb": "2", "users": "10", "io_block_mb": "4"}, {}, {})
    cpu = host_bytes_needed(("cpu", "nvme"), s)
    assert cpu["cpu tier (--kv-cpu-mem-gb)"] == 2 * GB
    assert sum(cpu.values()) == 2 * GB + 10 * 4 * MiB + NOISE_BYTES
    assert sum(host_bytes_needed(("nvme",), s).values()) == 10 * 4 * MiB + NOISE_BYTES  # no CPU tier: no arena
    gpu = host_bytes_needed(("gpu",), s.replace(verify=True))  # pinned staging and verify scratch per user
    assert sum(gpu.values()) == 3 * 10 * 4 * MiB + NOISE_BYTES


def test_check_names_the_budget_to_lower():
    s = build_settings({"cpu_mem_gb": "40", "users": "4"}, {}, {})
    limit = MemoryLimit(24 * GB, "MemAvailable in /proc/meminfo")
    with pytest.raises(ConfigError) as err:
        check_host_memory("cpu-only", ("cpu",), s, limit)
    room = (24 * GB - RESERVE_BYTES - 4 * 4 * MiB - NOISE_BYTES) / GB
    message = str(err.value)
    assert "scenario cpu-only needs 40.08 GB" in message and "24.00 GB (MemAvailable in /proc/meminfo)" in message
    assert f"lower --kv-cpu-mem-gb to {int(room * 100) / 100:g} or less" in message
    check_host_memory("cpu-only", ("cpu",), s.replace(cpu_mem_gb=room), limit)  # the advice fits
    check_host_memory("storage-only", ("nvme",), s, limit)  # its CPU budget is not allocated
    with pytest.raises(ConfigError):  # the reserve is kept: a need equal to what is there does not fit
        check_host_memory("cpu-only", ("cpu",), s, MemoryLimit(sum(host_bytes_needed(("cpu",), s).values()), "x"))


def test_check_names_users_when_staging_is_the_problem():
    s = build_settings({"users": "1000", "io_block_mb": "64"}, {}, {})
    with pytest.raises(ConfigError, match=r"256 workers x 1 .*lower --kv-max-inflight \(or --kv-users\) or --kv-io-block-mb, or free memory"):
        check_host_memory("storage-only", ("nvme",), s, MemoryLimit(8 * GB, "cgroup"))


def test_staging_is_one_buffer_per_worker_not_per_user():
    """Users are records served by at most min(users, 256) workers (or --kv-max-inflight)."""
    block = 4 * MiB
    for users, inflight, workers in ((4, 0, 4), (10_000, 0, 256), (10_000, 16, 16)):
        s = build_settings({"users": str(users), "max_inflight": str(inflight)}, {}, {})
        staging = [v for k, v in host_bytes_needed(("nvme",), s).items() if k.startswith("staging")]
        assert staging == [workers * block]
