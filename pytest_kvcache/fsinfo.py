"""Facts about the file system that holds a path: mount, direct-I/O support, space, device.

The file tier is only honest if the report says what it ran on: a tmpfs "disk" or a buffered
file system served from the page cache measures memory, not storage. These helpers find the
mount, tell memory (tmpfs, an overlay on it, a RAM disk) from a drive, test O_DIRECT for real (a
flag the kernel accepts is not proof the page cache is bypassed), and locate the block device(s)
whose counters ``devstats`` reads. No pytest import here.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
from dataclasses import dataclass

from .payload import BLOCK, aligned_buffer

MEMORY_FS = frozenset({"tmpfs", "ramfs", "devtmpfs", "hugetlbfs"})
_RAM_DISK = re.compile(r"^(zram|ram)\d+$")  # zram and brd block devices keep their data in RAM
MOUNTS = "/proc/self/mounts"
_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class MountInfo:
    mountpoint: str
    device: str
    fstype: str
    options: str


def _unescape(field: str) -> str:
    """Undo the octal escapes (``\\040`` space, ``\\011`` tab, ``\\134`` backslash) of mounts."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def _contains(mountpoint: str, path: str) -> bool:
    if mountpoint == "/":
        return True
    return path == mountpoint or path.startswith(mountpoint.rstrip("/") + "/")


def mount_for(path, mounts_file: str = MOUNTS) -> MountInfo:
    """The mount holding ``path`` (symlinks resolved), by longest mountpoint prefix.

    Later mounts on the same point shadow earlier ones, so ties go to the last line. When the
    mount table is unreadable the answer is ``MountInfo("/", "unknown", "unknown", "")``.
    """
    real = os.path.realpath(path)
    best = MountInfo("/", "unknown", "unknown", "")
    best_len = -1
    try:
        with open(mounts_file, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return best
    for line in lines:
        fields = line.split()
        if len(fields) < 4:
            continue
        device, mountpoint, fstype, options = (_unescape(x) for x in fields[:4])
        if _contains(mountpoint, real) and len(mountpoint) >= best_len:
            best, best_len = MountInfo(mountpoint, device, fstype, options), len(mountpoint)
    return best


def _overlay_upper(info: MountInfo) -> str | None:
    """An overlay mount's upper dir (where its writes go), or None."""
    for opt in info.options.split(","):
        if opt.startswith("upperdir="):
            return opt[len("upperdir=") :]
    return None


def _class_block(sys_root: str, name: str) -> str:
    return os.path.join(sys_root, "class", "block", name)


def _source_name(info: MountInfo) -> str | None:
    """The kernel's name (``sda1``, ``dm-0``, ``loop3``) of a mount's ``/dev/...`` source, or None
    when the source is no device node (``tmpfs``, ``overlay``, ``server:/export``)."""
    if not info.device.startswith("/dev/"):
        return None
    real = os.path.realpath(info.device) if os.path.exists(info.device) else info.device
    return os.path.basename(real) or None


def _ram_disk(name: str, mounts_file: str, sys_root: str, depth: int = 0) -> str | None:
    """Why block device ``name`` is memory (a zram or brd RAM disk, a loop device whose backing
    file is on memory, a device-mapper device over one of those), or None when it is not."""
    if depth > 4:
        return None
    if _RAM_DISK.match(name):
        return f"{name} (a RAM disk)"
    node = _class_block(sys_root, name)
    try:
        with open(os.path.join(node, "loop", "backing_file")) as f:
            backing = f.read().strip()
    except OSError:
        backing = ""
    if backing:
        memory = _memory_backed(mount_for(backing, mounts_file), mounts_file, sys_root, depth + 1)
        if memory:
            return f"{name} (a loop device on a file in {memory})"
    try:
        slaves = sorted(os.listdir(os.path.join(node, "slaves")))
    except OSError:
        slaves = []
    for slave in slaves:
        inner = _ram_disk(slave, mounts_file, sys_root, depth + 1)
        if inner:
            return f"{name} over {inner}"
    return None


def _memory_backed(info: MountInfo, mounts_file: str = MOUNTS, sys_root: str = "/sys",
                   depth: int = 0) -> str | None:
    """What memory holds the file system ``info`` (its own type, an overlay's upper dir, or the
    RAM disk under its block device), or None when it is not memory-backed."""
    if depth > 4:
        return None
    if info.fstype in MEMORY_FS:
        return info.fstype
    if info.fstype == "overlay":
        upper = _overlay_upper(info)
        inner = upper and _memory_backed(mount_for(upper, mounts_file), mounts_file, sys_root, depth + 1)
        return f"overlay on {inner}" if inner else None
    name = _source_name(info)
    ram = name and os.path.exists(_class_block(sys_root, name)) and _ram_disk(name, mounts_file, sys_root, depth)
    return f"{info.fstype} on {ram}" if ram else None


def memory_medium(path, mounts_file: str = MOUNTS, sys_root: str = "/sys") -> str | None:
    """What memory holds ``path``, e.g. ``"tmpfs"``, ``"overlay on tmpfs"`` or ``"ext4 on zram0
    (a RAM disk)"``; None when ``path`` is on something else (a drive, a network file system).

    Files there live in RAM: their I/O measures memory, not a drive (design.md section 6).
    """
    return _memory_backed(mount_for(path, mounts_file), mounts_file, sys_root)


def try_direct_io(dir) -> str | None:
    """Write and read back one aligned page with O_DIRECT in ``dir``.

    Returns None when both worked, else why not (errno name and message). Errors other than
    "not supported" (EINVAL, EOPNOTSUPP) are raised: an unwritable or full directory is not a
    property of the file system. The probe file is always removed.
    """
    path = os.path.join(os.fspath(dir), f".kvcache-probe-{os.getpid()}-{secrets.token_hex(4)}")
    buf = aligned_buffer(BLOCK)
    buf[:BLOCK] = 0xA5
    back = aligned_buffer(BLOCK)
    fd = -1
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_DIRECT, 0o600)
        if os.pwrite(fd, buf[:BLOCK], 0) != BLOCK:
            return "O_DIRECT write of one 4096-byte page was short"
        if os.preadv(fd, [back[:BLOCK]], 0) != BLOCK or not (back[:BLOCK] == 0xA5).all():
            return "O_DIRECT read-back of one 4096-byte page was short or wrong"
        return None
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return f"O_DIRECT rejected: {errno.errorcode.get(e.errno, e.errno)} ({e.strerror})"
        raise
    finally:
        if fd >= 0:
            os.close(fd)
        try:  # some kernels create the file before refusing O_DIRECT
            os.unlink(path)
        except FileNotFoundError:
            pass


def probe_direct_io(dir) -> tuple[str, str]:
    """("direct" | "buffered", reason) for file I/O under ``dir``."""
    memory = memory_medium(dir)
    failure = try_direct_io(dir)
    if memory:
        detail = failure or "O_DIRECT is accepted but ignored"
        return "buffered", f"{memory} is memory: the page cache serves all I/O ({detail})"
    if failure:
        return "buffered", failure
    return "direct", "O_DIRECT write and read-back of an aligned page succeeded"


def free_bytes(path) -> int:
    """Bytes available to an unprivileged user on the file system holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@dataclass(frozen=True)
class DeviceLookup:
    """The block devices behind a path, as names under ``/sys/class/block``, and how they were
    found; or no devices and ``reason``, which says what each step of the search found."""

    devices: tuple[str, ...]
    found_by: str | None = None
    reason: str | None = None

    @property
    def label(self) -> str | None:
        """``"vda"``, ``"sdb1+sdc1"`` for several devices, or None."""
        return "+".join(self.devices) or None


def _btrfs_devices(name: str, sys_root: str) -> list[str]:
    """Every device of the btrfs file system that has ``name`` among its devices (a btrfs mount
    names only one of them), from ``/sys/fs/btrfs/<fsid>/devices/``; [] when none lists it."""
    root = os.path.join(sys_root, "fs", "btrfs")
    try:
        fsids = sorted(os.listdir(root))
    except OSError:
        return []
    for fsid in fsids:
        try:
            devices = sorted(os.listdir(os.path.join(root, fsid, "devices")))
        except OSError:
            continue
        if name in devices:
            return devices
    return []


def find_block_devices(path, sys_root: str = "/sys", mounts_file: str = MOUNTS,
                       _depth: int = 0) -> DeviceLookup:
    """The block device(s) whose counters (``/sys/class/block/<name>/stat``) see ``path``'s I/O.

    Steps, first hit wins: (1) the file system's device number (``st_dev``) under
    ``/sys/dev/block`` (ext4 or XFS on a disk, a partition, an LVM or loop device); (2) the mount
    table: a tmpfs-like mount is memory and has none; an overlay's devices are its upper dir's;
    otherwise the mount's ``/dev/...`` source (symlinks such as ``/dev/mapper/*`` resolved) and,
    for btrfs, every device of that file system (``/sys/fs/btrfs/<fsid>/devices``). A partition
    keeps its own name, so its own counters are read, not its whole disk's. Nothing is raised.
    """
    try:
        dev = os.stat(path).st_dev
    except OSError as exc:
        return DeviceLookup((), reason=f"cannot stat {path}: {exc.strerror}")
    number = f"{os.major(dev)}:{os.minor(dev)}"
    node = os.path.join(sys_root, "dev", "block", number)
    if os.path.exists(os.path.join(node, "stat")):
        return DeviceLookup((os.path.basename(os.path.realpath(node)),), found_by=f"device number {number}")
    step1 = f"device number {number} is no block device in {sys_root}/dev/block (anonymous, as on btrfs, overlay, tmpfs, NFS)"
    info = mount_for(path, mounts_file)
    where = f"{info.fstype} mount {info.mountpoint}"
    if info.fstype in MEMORY_FS:
        return DeviceLookup((), reason=f"{step1}; the {where} is memory, not a drive")
    if info.fstype == "overlay":
        upper = _overlay_upper(info)
        if upper is None or _depth > 4:
            return DeviceLookup((), reason=f"{step1}; the {where} names no upper dir")
        inner = find_block_devices(upper, sys_root, mounts_file, _depth + 1)
        if inner.devices:
            return DeviceLookup(inner.devices, found_by=f"overlay upper dir {upper}: {inner.found_by}")
        return DeviceLookup((), reason=f"{step1}; overlay upper dir {upper}: {inner.reason}")
    name = _source_name(info)
    if name is None:
        return DeviceLookup((), reason=f"{step1}; the source {info.device!r} of the {where} is no /dev node")
    if not os.path.exists(os.path.join(_class_block(sys_root, name), "stat")):
        return DeviceLookup((), reason=f"{step1}; the source {info.device} of the {where} has no "
                                       f"{_class_block(sys_root, name)}/stat")
    if info.fstype == "btrfs":
        devices = _btrfs_devices(name, sys_root)
        if devices:
            return DeviceLookup(tuple(devices), found_by=f"mount source {info.device}, btrfs device list")
    return DeviceLookup((name,), found_by=f"mount source {info.device}")


def block_device_for(path, sys_root: str = "/sys") -> str | None:
    """``find_block_devices(path).label``: ``"vda"``, ``"sdb1+sdc1"``, or None when none is found."""
    return find_block_devices(path, sys_root).label


def device_model(blockdev: str | None, sys_root: str = "/sys") -> str | None:
    """The model string the kernel reports for ``blockdev`` (a partition's is its disk's; a
    ``+``-joined label gives each distinct model). None when absent (virtio disks, dm, loop)."""
    if not blockdev:
        return None
    models = []
    for name in blockdev.split("+"):
        node = os.path.realpath(_class_block(sys_root, name))
        if os.path.exists(os.path.join(node, "partition")):
            node = os.path.dirname(node)
        try:
            with open(os.path.join(node, "device", "model")) as f:
                model = f.read().strip()
        except OSError:
            continue
        if model and model not in models:
            models.append(model)
    return " + ".join(models) or None


def describe_drive(path) -> dict:
    """The drive under test, as pytest-benchmark's machine_info and reports show it."""
    mount = mount_for(path)
    dev = block_device_for(path)
    mode, reason = probe_direct_io(path)
    memory = memory_medium(path)
    return {"path": str(path), "mountpoint": mount.mountpoint, "fstype": mount.fstype,
            "medium": "memory" if memory else "drive", "block_device": dev, "device_model": device_model(dev),
            "file_io_mode": mode, "file_io_mode_reason": reason, "free_bytes": free_bytes(path)}
