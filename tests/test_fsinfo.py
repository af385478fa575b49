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


def test_block_devices_of_the_work_dir_on_this_machine(tmp_path):
    """On a disk-backed work dir (this VM: ext4 on /dev/vda) the device is found by its number and
    its own counters are readable; skip only where the work dir is memory or has no device."""
    info = fsinfo.mount_for(tmp_path)
    if fsinfo.memory_medium(tmp_path):
        pytest.skip(f"{tmp_path} is on {info.fstype}: memory")
    lookup = fsinfo.find_block_devices(tmp_path)
    if not lookup.devices and not info.device.startswith("/dev/"):
        pytest.skip(f"{tmp_path} is on {info.device!r} ({info.fstype}), not a block device: {lookup.reason}")
    assert lookup.devices, lookup.reason
    assert lookup.reason is None
    for dev in lookup.devices:
        assert os.path.exists(f"/sys/class/block/{dev}/stat")
    st = os.stat(tmp_path).st_dev
    if lookup.found_by.startswith("device number"):  # the kernel's own number for that device
        with open(f"/sys/class/block/{lookup.devices[0]}/dev") as f:
            assert f.read().strip() == f"{os.major(st)}:{os.minor(st)}"
    assert fsinfo.block_device_for(tmp_path) == "+".join(lookup.devices)
    first = lookup.devices[0]
    node = os.path.realpath(f"/sys/class/block/{first}")
    disk = os.path.dirname(node) if os.path.exists(os.path.join(node, "partition")) else node
    model_file = os.path.join(disk, "device", "model")
    if os.path.exists(model_file):
        with open(model_file) as f:
            assert fsinfo.device_model(first) == (f.read().strip() or None)
    else:  # virtio disks (this VM's vda) have no model
        assert fsinfo.device_model(first) is None


def _tree(root, stats=(), links=None, files=None):
    """A fake /sys: class/block/<name>/stat for each of ``stats``, plus symlinks and files."""
    for name in stats:
        d = root / "class" / "block" / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "stat").write_text("0 " * 17)
    for rel, target in (links or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).symlink_to(target)
    for rel, text in (files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return str(root)


def _mounts(tmp_path, *lines):
    f = tmp_path / "mounts"
    f.write_text("/dev/vda / ext4 rw 0 0\n" + "".join(line + "\n" for line in lines))
    return str(f)


def _dir(tmp_path, name):
    d = tmp_path / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def test_a_partition_keeps_its_own_counters_and_its_disks_model(tmp_path):
    sys_root = tmp_path / "sys"
    _tree(sys_root, files={"devices/sdb/device/model": "FAKE SSD\n", "devices/sdb/sdb1/partition": "1",
                           "devices/sdb/sdb1/stat": "0 " * 17},
          links={"class/block/sdb1": sys_root / "devices/sdb/sdb1", "class/block/sdb": sys_root / "devices/sdb"})
    mnt = _dir(tmp_path, "mnt")
    lookup = fsinfo.find_block_devices(mnt, str(sys_root), _mounts(tmp_path, f"/dev/sdb1 {mnt} ext4 rw 0 0"))
    assert lookup.devices == ("sdb1",) and lookup.label == "sdb1"
    assert lookup.found_by == "mount source /dev/sdb1"
    assert fsinfo.device_model("sdb1", str(sys_root)) == "FAKE SSD"


def test_btrfs_on_loop_devices_sums_every_device_of_the_file_system(tmp_path):
    sys_root = _tree(tmp_path / "sys", stats=("loop3", "loop4", "loop9"),
                     files={"fs/btrfs/1111-aaaa/devices/loop9": "", "fs/btrfs/2222-bbbb/devices/loop3": "",
                            "fs/btrfs/2222-bbbb/devices/loop4": "", "fs/btrfs/features/x": ""})
    mnt = _dir(tmp_path, "mnt")
    mounts = _mounts(tmp_path, f"/dev/loop3 {mnt} btrfs rw,relatime,subvol=/ 0 0")
    lookup = fsinfo.find_block_devices(_dir(mnt, "sub"), sys_root, mounts)
    assert lookup.devices == ("loop3", "loop4") and lookup.label == "loop3+loop4"
    assert lookup.found_by == "mount source /dev/loop3, btrfs device list"
    # a btrfs whose device list is not in sysfs still has the mount's own device
    lone = fsinfo.find_block_devices(mnt, sys_root, _mounts(tmp_path, f"/dev/loop9x {mnt} btrfs rw 0 0"))
    assert lone.devices == () and "loop9x/stat" in lone.reason
    other = fsinfo.find_block_devices(mnt, _tree(tmp_path / "sys2", stats=("loop5",)),
                                      _mounts(tmp_path, f"/dev/loop5 {mnt} btrfs rw 0 0"))
    assert other.devices == ("loop5",) and other.found_by == "mount source /dev/loop5"


def test_an_overlay_is_measured_on_its_upper_dirs_device(tmp_path):
    sys_root = _tree(tmp_path / "sys", stats=("vdz1",))
    disk, merged = _dir(tmp_path, "disk"), _dir(tmp_path, "merged")
    _dir(tmp_path, "disk/upper")
    mounts = _mounts(tmp_path, f"/dev/vdz1 {disk} ext4 rw 0 0",
                     f"overlay {merged} overlay rw,lowerdir=/l,upperdir={disk}/upper,workdir={disk}/work 0 0")
    lookup = fsinfo.find_block_devices(merged, sys_root, mounts)
    assert lookup.devices == ("vdz1",)
    assert lookup.found_by == f"overlay upper dir {disk}/upper: mount source /dev/vdz1"


def test_when_no_device_is_found_the_reason_names_the_failed_step(tmp_path):
    sys_root = _tree(tmp_path / "sys", stats=())
    d = _dir(tmp_path, "m")
    st = os.stat(d).st_dev
    step1 = f"device number {os.major(st)}:{os.minor(st)} is no block device in {sys_root}/dev/block"

    def reason(line):
        lookup = fsinfo.find_block_devices(d, sys_root, _mounts(tmp_path, line))
        assert lookup.devices == () and lookup.label is None and lookup.found_by is None
        assert lookup.reason.startswith(step1)
        return lookup.reason

    assert reason(f"tmpfs {d} tmpfs rw 0 0").endswith(f"; the tmpfs mount {d} is memory, not a drive")
    assert reason(f"server:/export {d} nfs4 rw 0 0").endswith(
        f"; the source 'server:/export' of the nfs4 mount {d} is no /dev node")
    assert reason(f"/dev/sdq9 {d} xfs rw 0 0").endswith(
        f"; the source /dev/sdq9 of the xfs mount {d} has no {sys_root}/class/block/sdq9/stat")
    assert reason(f"overlay {d} overlay rw,lowerdir=/l 0 0").endswith(f"; the overlay mount {d} names no upper dir")
    missing = fsinfo.find_block_devices(tmp_path / "gone", sys_root)
    assert missing.devices == () and missing.reason.startswith(f"cannot stat {tmp_path / 'gone'}")


def test_memory_file_systems_and_ram_disks_are_memory(tmp_path):
    sys_root = _tree(tmp_path / "sys", stats=("zram0", "loop2", "loop6", "dm-1", "sdb1", "vda"),
                     files={"class/block/dm-1/slaves/zram1": "", "class/block/zram1/stat": ""})
    shm, disk, m = _dir(tmp_path, "shm"), _dir(tmp_path, "disk"), _dir(tmp_path, "m")
    (tmp_path / "sys/class/block/loop2/loop").mkdir()
    (tmp_path / "sys/class/block/loop2/loop/backing_file").write_text(f"{shm}/img\n")
    (tmp_path / "sys/class/block/loop6/loop").mkdir()
    (tmp_path / "sys/class/block/loop6/loop/backing_file").write_text(f"{disk}/img\n")

    def medium(line):
        mounts = _mounts(tmp_path, f"tmpfs {shm} tmpfs rw 0 0", f"/dev/vda {disk} ext4 rw 0 0", line)
        return fsinfo.memory_medium(m, mounts, sys_root)

    assert medium(f"tmpfs {m} tmpfs rw 0 0") == "tmpfs"
    assert medium(f"none {m} ramfs rw 0 0") == "ramfs"
    assert medium(f"overlay {m} overlay rw,lowerdir=/l,upperdir={shm}/up,workdir={shm}/w 0 0") == "overlay on tmpfs"
    assert medium(f"/dev/zram0 {m} ext4 rw 0 0") == "ext4 on zram0 (a RAM disk)"
    assert medium(f"/dev/loop2 {m} xfs rw 0 0") == "xfs on loop2 (a loop device on a file in tmpfs)"
    assert medium(f"/dev/dm-1 {m} ext4 rw 0 0") == "ext4 on dm-1 over zram1 (a RAM disk)"
    # drives are not memory, whatever sits on them
    assert medium(f"/dev/sdb1 {m} ext4 rw 0 0") is None
    assert medium(f"/dev/loop6 {m} btrfs rw 0 0") is None
    assert medium(f"overlay {m} overlay rw,lowerdir=/l,upperdir={disk}/up,workdir={disk}/w 0 0") is None
    assert medium(f"server:/x {m} nfs4 rw 0 0") is None


def test_dev_shm_is_memory_with_no_device():
    if fsinfo.mount_for("/dev/shm").fstype != "tmpfs":
        pytest.skip("no tmpfs /dev/shm")
    assert fsinfo.memory_medium("/dev/shm") == "tmpfs"
    lookup = fsinfo.find_block_devices("/dev/shm")
    assert lookup.devices == () and lookup.reason.endswith("the tmpfs mount /dev/shm is memory, not a drive")
    assert fsinfo.describe_drive("/dev/shm")["medium"] == "memory"
