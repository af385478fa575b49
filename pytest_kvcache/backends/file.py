"""The nvme tier: one raw file per entry, written and read with O_DIRECT where it means something.

The numbers are the point, so: raw bytes (no serialization), page-aligned reusable staging
buffers (no allocation or first-touch faults in the timed region), O_DIRECT when the file system
really bypasses the page cache, otherwise fsync on write and ``POSIX_FADV_DONTNEED`` before every
read so the page cache cannot serve it. Only the system calls that do I/O are timed; payload
preparation is not. The report says which mode ran and why.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import threading
import time

from .. import fsinfo
from ..errors import BackendError, BackendFull, ConfigError
from ..payload import BLOCK
from .base import Backend, BackendContext, IOResult, TierSpec

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
MODES = ("direct", "buffered")


def file_name(key: str) -> str:
    """Safe, collision-free file name for ``key``: sanitized prefix + blake2b of the raw key."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    return f"{_UNSAFE.sub('_', key)[:80]}-{digest}.kv"


class FileBackend(Backend):
    name = "file"

    def __init__(self, spec: TierSpec, ctx: BackendContext):
        super().__init__(spec, ctx)
        if ctx.run_dir is None:
            raise ConfigError("the file backend needs a run directory (BackendContext.run_dir)")
        self.dir = os.fspath(ctx.run_dir)
        forced = spec.options.get("io_mode")
        if forced is not None and forced not in MODES:
            raise ConfigError(f"io_mode must be one of {MODES}, got {forced!r}")
        try:
            mode, reason = fsinfo.probe_direct_io(self.dir)
            if forced == "direct" and (failure := fsinfo.try_direct_io(self.dir)):
                raise ConfigError(f"io_mode 'direct' forced but {self.dir}: {failure}")
            mount = fsinfo.mount_for(self.dir)
            free = fsinfo.free_bytes(self.dir)
        except OSError as e:
            raise BackendError(f"cannot use {self.dir} for the file tier: {e}") from e
        if forced is not None:
            mode, reason = forced, f"forced by io_mode option (probe said {mode}: {reason})"
        self.direct = mode == "direct"
        blockdev = fsinfo.block_device_for(self.dir)
        self._info = {
            "path": self.dir,
            "io_mode": mode,
            "io_mode_reason": reason,
            "fstype": mount.fstype,
            "mountpoint": mount.mountpoint,
            "block_device": blockdev,
            "device_model": fsinfo.device_model(blockdev),
            "free_bytes": free,
        }
        self._lock = threading.Lock()
        self._sizes: dict[str, int] = {}  # key -> padded bytes on disk
        self._created: dict[str, str] = {}  # file name -> key, for every file of ours on disk

    def footprint(self, nbytes: int) -> int:
        return -(-nbytes // BLOCK) * BLOCK

    def _path(self, key: str) -> str:
        return os.path.join(self.dir, file_name(key))

    def write(self, key: str, nbytes: int) -> IOResult:
        padded = self.footprint(nbytes)
        path = self._path(key)
        buf = self.ctx.staging.get()
        block = self.ctx.staging.block
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if self.direct else 0)
        with self._lock:
            self._created[os.path.basename(path)] = key
        dur = 0
        fd = -1
        try:
            t = time.perf_counter_ns()
            fd = os.open(path, flags, 0o600)
            dur += time.perf_counter_ns() - t
            for off in range(0, padded, block):
                n = min(block, padded - off)
                self.ctx.noise.fill(buf[:n], key, off)
                done = 0
                while done < n:
                    t = time.perf_counter_ns()
                    w = os.pwrite(fd, buf[done:n], off + done)
                    dur += time.perf_counter_ns() - t
                    if w <= 0:
                        raise BackendError(f"write of {key!r} to {path} made no progress")
                    done += w
            if not self.direct:
                t = time.perf_counter_ns()
                os.fsync(fd)
                dur += time.perf_counter_ns() - t
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            t = time.perf_counter_ns()
            os.close(fd)
            end = time.perf_counter_ns()
            fd = -1
            dur += end - t
        except (OSError, BackendError) as e:
            if fd >= 0:
                os.close(fd)
            self._discard(key, path)
            if isinstance(e, BackendError):
                raise
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise BackendFull(
                    f"the drive holding {self.dir} is full ({e.strerror}) while writing {padded} bytes; "
                    "free space there or lower --kv-nvme-capacity-gb below the free space") from e
            raise BackendError(f"write of {key!r} ({padded} bytes) to {path} failed: {e}") from e
        with self._lock:
            self._sizes[key] = padded
        return IOResult(nbytes=padded, end_ns=end, dur_ns=dur)

    def _discard(self, key: str, path: str) -> None:
        """Remove a partly written file so disk and bookkeeping agree after a failed write."""
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        with self._lock:
            self._sizes.pop(key, None)
            self._created.pop(os.path.basename(path), None)

    def read(self, key: str, nbytes: int) -> IOResult:
        padded = self.footprint(nbytes)
        path = self._path(key)
        buf = self.ctx.staging.get()
        block = self.ctx.staging.block
        dur = 0
        fd = -1
        try:
            t = time.perf_counter_ns()
            fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if self.direct else 0))
            dur += time.perf_counter_ns() - t
            if not self.direct:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            for off in range(0, padded, block):
                n = min(block, padded - off)
                done = 0
                while done < n:
                    t = time.perf_counter_ns()
                    r = os.preadv(fd, [buf[done:n]], off + done)
                    dur += time.perf_counter_ns() - t
                    if r <= 0:
                        raise BackendError(
                            f"read of {key!r} from {path}: file ends at {off + done} bytes, "
                            f"expected {padded}"
                        )
                    done += r
                if self.ctx.verifier is not None:
                    self.ctx.verifier.check(key, off, buf[:n])
            t = time.perf_counter_ns()
            os.close(fd)
            end = time.perf_counter_ns()
            fd = -1
            dur += end - t
        except FileNotFoundError as e:
            raise BackendError(f"read of {key!r}: {path} does not exist") from e
        except OSError as e:
            raise BackendError(f"read of {key!r} from {path} failed: {e}") from e
        finally:
            if fd >= 0:
                os.close(fd)
        return IOResult(nbytes=padded, end_ns=end, dur_ns=dur)

    def delete(self, key: str) -> IOResult:
        path = self._path(key)
        with self._lock:
            size = self._sizes.get(key)
        if size is None:
            raise BackendError(f"delete of {key!r}: not an entry of this backend ({path})")
        try:
            t = time.perf_counter_ns()
            os.unlink(path)
            end = time.perf_counter_ns()
        except OSError as e:
            raise BackendError(f"delete of {key!r}: cannot remove {path}: {e}") from e
        with self._lock:
            self._sizes.pop(key, None)
            self._created.pop(os.path.basename(path), None)  # bounded by what is on disk
        return IOResult(nbytes=size, end_ns=end, dur_ns=end - t)

    def stored_keys(self) -> set[str]:
        with self._lock:
            created = dict(self._created)
        with os.scandir(self.dir) as it:
            return {created[e.name] for e in it if e.name in created}

    def describe(self) -> dict:
        return {**super().describe(), **self._info}

    def close(self) -> None:
        with self._lock:
            names = list(self._created)
            self._created.clear()
            self._sizes.clear()
        for name in names:
            try:
                os.unlink(os.path.join(self.dir, name))
            except FileNotFoundError:
                pass
