import pytest

from pytest_kvcache import devstats

LINE1 = "    9349     5753  1330114     6323      633     3654   257752      719        2     2352     7201     3026       59    38240      157        4        0\n"
LINE2 = "    9449     5753  1330914     6423      643     3654   258752      739        0     2852     7801     3026       59    38240      157        4        0\n"


def _fake(root, line, dev="vdx"):
    d = root / "block" / dev
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
    assert r["available"] is False and r["reason"]
    assert devstats.DeviceWindow(None).result()["available"] is False


def test_window_real_device_if_any():
    from pytest_kvcache import fsinfo

    w = devstats.DeviceWindow(fsinfo.block_device_for("/"))
    w.start()
    w.stop()
    r = w.result()
    assert r["available"] in (True, False)
