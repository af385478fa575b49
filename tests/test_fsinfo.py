import os

import pytest

from pytest_kvcache import fsinfo


def test_mount_for_tmp_path(tmp_path):
    info = fsinfo.mount_for(tmp_path)
    real = os.path.realpath(tmp_path)
    assert real == info.mountpoint or real.startswith(info.mountpoint.rstrip("/") + "/")
    assert info.fstype and info.fstype != "unknown"


def test_mount_for_unescapes_and_prefers_longest(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/vda / ext4 rw 0 0\n"
        "/dev/vdb /data\\040dir xfs rw,noatime 0 0\n"
        "/dev/vdc /data xfs rw 0 0\n"
    )
    assert fsinfo.mount_for("/data dir/x", str(mounts)).device == "/dev/vdb"
    assert fsinfo.mount_for("/data dir/x", str(mounts)).mountpoint == "/data dir"
    assert fsinfo.mount_for("/data/x", str(mounts)).device == "/dev/vdc"
    assert fsinfo.mount_for("/database", str(mounts)).device == "/dev/vda"


def test_probe_direct_on_tmp_path(tmp_path):
    mode, reason = fsinfo.probe_direct_io(tmp_path)
    if mode != "direct":
        pytest.skip(f"file system under {tmp_path} has no direct I/O: {reason}")
    assert list(tmp_path.iterdir()) == []  # probe file removed


def test_probe_dev_shm_is_buffered(tmp_path):
    if not os.path.isdir("/dev/shm") or fsinfo.mount_for("/dev/shm").fstype != "tmpfs":
        pytest.skip("no tmpfs /dev/shm")
    d = tmp_path.name
    target = os.path.join("/dev/shm", f"kvtest-{d}")
    os.mkdir(target)
    try:
        mode, reason = fsinfo.probe_direct_io(target)
        assert mode == "buffered"
        assert "tmpfs" in reason
        assert os.listdir(target) == []
    finally:
        os.rmdir(target)


def test_free_bytes_positive(tmp_path):
    assert fsinfo.free_bytes(tmp_path) > 0


def test_block_device_for(tmp_path):
    dev = fsinfo.block_device_for(tmp_path)
    assert dev is None or os.path.exists(f"/sys/block/{dev}/stat")
    model = fsinfo.device_model(dev)
    assert model is None or isinstance(model, str)
