import os

import pytest

from pytest_kvcache import devstats

LINE1 = "    9349     5753  1330114     6323      633     3654   257752      719        2     2352     7201     3026       59    38240      157        4        0\n"
LINE2 = "    9449     5753  1330914     6423      643     3654   258752      739        0     2852     7801     3026       59    38240      157        4        0\n"


def _fake(root, line, dev="vdx"):
    d = root / "class" / "block" / dev
    d.mkdir(parents=True, exist_ok=True)
    (d / "stat").write_text(line)


def test_read_stat_parses(tmp_path):
    _fake(tmp_path, LINE1)
    st = devstats.read_stat("vdx", sys_root=str(tmp_path))
    assert st.read_ios == 9349 and st.read_sectors == 1330114 and st.read_ticks == 6323
    assert st.write_ios == 633 and st.write_sectors == 257752 and st.in_flight == 2
    assert st.io_ticks == 2352 and st.time_in_queue == 7201


def test_read_stat_old_kernel_11_fields(tmp_path):
    _fake(tmp_path, " ".join(LINE1.split()[:11]))
    assert devstats.read_stat("vdx", sys_root=str(tmp_path)).time_in_queue == 7201


def test_read_stat_missing_or_bad(tmp_path):
    assert devstats.read_stat("nope", sys_root=str(tmp_path)) is None
    assert devstats.read_stat(None) is None
    _fake(tmp_path, "1 2 3")
    assert devstats.read_stat("vdx", sys_root=str(tmp_path)) is None


def test_window_deltas(tmp_path):
    _fake(tmp_path, LINE1)
    ticks = iter([10.0, 12.0])
    w = devstats.DeviceWindow("vdx", sys_root=str(tmp_path), clock=lambda: next(ticks))
    w.start()
    _fake(tmp_path, LINE2)
    w.stop()
    r = w.result()
    assert r["available"] and r["device"] == "vdx"
    assert r["elapsed_s"] == 2.0
    assert r["read_bytes"] == 800 * 512 and r["write_bytes"] == 1000 * 512
    assert r["read_ios"] == 100 and r["write_ios"] == 10
    assert r["busy_ms"] == 500 and r["utilization"] == pytest.approx(0.25)
    assert r["read_latency_ms"] == pytest.approx(1.0)
    assert r["write_latency_ms"] == pytest.approx(2.0)
    assert "all I/O" in r["note"]


def test_window_unavailable(tmp_path):
    w = devstats.DeviceWindow("nope", sys_root=str(tmp_path))
    w.start()
    w.stop()
    r = w.result()
    assert r["available"] is False and r["device"] == "nope"
    assert r["reason"] == f"{tmp_path}/class/block/nope/stat unreadable"
    none = devstats.DeviceWindow(None, reason="the tmpfs mount /dev/shm is memory, not a drive").result()
    assert none == {"available": False, "device": None, "devices": [],
                    "reason": "the tmpfs mount /dev/shm is memory, not a drive"}
    assert devstats.DeviceWindow([]).result()["reason"] == "no block device behind the path"


def test_window_not_run_is_unavailable(tmp_path):
    _fake(tmp_path, LINE1)
    w = devstats.DeviceWindow("vdx", sys_root=str(tmp_path))
    w.start()  # Ctrl-C before the window closed
    assert w.result() == {"available": False, "device": "vdx", "devices": ["vdx"],
                          "reason": "the window was not run"}


def test_window_sums_several_devices(tmp_path):
    _fake(tmp_path, LINE1, "sdb1")
    _fake(tmp_path, LINE1, "sdc1")
    ticks = iter([0.0, 1.0])
    w = devstats.DeviceWindow(["sdb1", "sdc1"], sys_root=str(tmp_path), clock=lambda: next(ticks),
                              found_by="mount source /dev/sdb1, btrfs device list")
    w.start()
    _fake(tmp_path, LINE2, "sdb1")  # +800 read sectors, +1000 written, +500 ms busy
    w.stop()
    r = w.result()
    assert r["available"] and r["device"] == "sdb1+sdc1" and r["devices"] == ["sdb1", "sdc1"]
    assert r["read_bytes"] == 800 * 512 and r["write_bytes"] == 1000 * 512
    assert r["busy_ms"] == 500 and r["utilization"] == pytest.approx(0.5)  # the busiest device
    assert r["found_by"] == "mount source /dev/sdb1, btrfs device list"
    _fake(tmp_path, "garbage", "sdc1")
    w2 = devstats.DeviceWindow(["sdb1", "sdc1"], sys_root=str(tmp_path))
    w2.start()
    w2.stop()
    assert w2.result()["reason"] == f"{tmp_path}/class/block/sdc1/stat unreadable"


def test_window_counters_going_backwards(tmp_path):
    _fake(tmp_path, LINE2)
    w = devstats.DeviceWindow("vdx", sys_root=str(tmp_path))
    w.start()
    _fake(tmp_path, LINE1)  # device reset or replaced during the window
    w.stop()
    assert w.result()["reason"] == "counters went backwards"


MiB = 2**20


def _counters(read_bytes, write_bytes):
    return {"available": True, "read_bytes": read_bytes, "write_bytes": write_bytes}


def test_ratio_of_device_bytes_to_ours():
    c = _counters(read_bytes=100 * MiB, write_bytes=300 * MiB)
    metrics = devstats.compare_with_ours(c, {"read": 200 * MiB, "write": 100 * MiB})
    assert metrics == {"device.read_ratio": 0.5, "device.write_ratio": 3.0}
    assert c["app_read_bytes"] == 200 * MiB and c["read_ratio"] == 0.5 and c["write_ratio"] == 3.0
    assert c["ratio_floor_bytes"] == devstats.RATIO_FLOOR_BYTES == 64 * MiB
    assert "read_ratio_reason" not in c and "write_ratio_reason" not in c


def test_ratio_below_the_floor_is_not_judged():
    c = _counters(read_bytes=0, write_bytes=5 * MiB)
    metrics = devstats.compare_with_ours(c, {"read": 64 * MiB - 1, "write": 0})
    assert metrics == {}  # n/a: too few bytes of ours to judge either way
    assert c["read_ratio"] == 0.0 and c["write_ratio"] is None  # still shown, never a 0 for nothing
    assert c["read_ratio_reason"] == "not judged: we read 64.0 MiB in the window, under the 64 MiB needed"
    assert c["write_ratio_reason"].startswith("not judged: we wrote 0.0 MiB")
    assert devstats.compare_with_ours(_counters(0, 0), {"read": 64 * MiB}) == {"device.read_ratio": 0.0}


def test_window_real_device_of_the_work_dir(tmp_path):
    """This VM: ext4 on /dev/vda. Elsewhere, skip only if no block device holds the work dir."""
    from pytest_kvcache import fsinfo

    lookup = fsinfo.find_block_devices(tmp_path)
    if not lookup.devices:
        pytest.skip(f"no block device behind {tmp_path}: {lookup.reason}")
    w = devstats.DeviceWindow(lookup.devices)
    w.start()
    with open(tmp_path / "f", "wb") as f:
        f.write(os.urandom(1 << 20))
        f.flush()
        os.fsync(f.fileno())
    w.stop()
    r = w.result()
    assert r["available"] is True, r
    assert r["devices"] == list(lookup.devices)
    assert r["write_bytes"] >= 1 << 20  # the synced MiB reached the device inside the window
    assert r["elapsed_s"] > 0 and 0 <= r["utilization"] <= 1
