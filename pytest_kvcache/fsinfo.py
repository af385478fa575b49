"""Facts about the file system that holds a path: mount, direct-I/O support, space, device.

The file tier is only honest if the report says what it ran on: a tmpfs "disk" or a buffered
file system served from the page cache measures memory, not storage. These helpers find the
mount, test O_DIRECT for real (a flag the kernel accepts is not proof the page cache is bypassed),
and locate the block device whose counters ``devstats`` reads. No pytest import here.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
from dataclasses import dataclass

from .payload import BLOCK, aligned_buffer

MEMORY_FS = frozenset({"tmpfs", "ramfs", "devtmpfs", "hugetlbfs"})
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


def mount_for(path, mounts_file: str = "/proc/self/mounts") -> MountInfo:
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


def _memory_backed(info: MountInfo) -> str | None:
    """Name of the memory file system behind ``info`` (directly or as an overlay's upper dir)."""
    if info.fstype in MEMORY_FS:
        return info.fstype
    if info.fstype == "overlay":
        for opt in info.options.split(","):
            if opt.startswith("upperdir="):
                upper = mount_for(opt[len("upperdir=") :])
                if upper.fstype in MEMORY_FS:
                    return f"overlay on {upper.fstype}"
    return None


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
    memory = _memory_backed(mount_for(dir))
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


def block_device_for(path, sys_root: str = "/sys") -> str | None:
    """Name under ``/sys/block`` of the whole disk holding ``path``, or None when there is none.

    Partitions map to their parent disk (that is where ``stat`` lives). tmpfs, overlay, btrfs
    subvolumes and most container roots have anonymous devices and give None.
    """
    try:
        dev = os.stat(path).st_dev
        node = os.path.realpath(
            os.path.join(sys_root, "dev", "block", f"{os.major(dev)}:{os.minor(dev)}")
        )
    except OSError:
        return None
    if not os.path.isdir(node):
        return None
    if os.path.exists(os.path.join(node, "partition")):
        node = os.path.dirname(node)
    name = os.path.basename(node)
    return name if os.path.exists(os.path.join(sys_root, "block", name, "stat")) else None


def device_model(blockdev: str | None, sys_root: str = "/sys") -> str | None:
    """The model string the kernel reports for ``blockdev`` (absent for virtio disks)."""
    if not blockdev:
        return None
    try:
        with open(os.path.join(sys_root, "block", blockdev, "device", "model")) as f:
            return f.read().strip() or None
    except OSError:
        return None


def describe_drive(path) -> dict:
    """The drive under test, as pytest-benchmark's machine_info and reports show it."""
    mount = mount_for(path)
    dev = block_device_for(path)
    mode, reason = probe_direct_io(path)
    return {"path": str(path), "mountpoint": mount.mountpoint, "fstype": mount.fstype,
            "block_device": dev, "device_model": device_model(dev), "file_io_mode": mode,
            "file_io_mode_reason": reason, "free_bytes": free_bytes(path)}
