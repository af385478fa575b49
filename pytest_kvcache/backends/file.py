"""The nvme tier: one raw file per chunk, written and read with O_DIRECT where it means something.

The numbers are the point, so: raw bytes (no serialization), page-aligned reusable staging
buffers (no allocation or first-touch faults in the timed region), O_DIRECT when the file system
really bypasses the page cache, otherwise fsync on write and ``POSIX_FADV_DONTNEED`` before every
read so the page cache cannot serve it. Only the system calls that do I/O are timed; payload
preparation is not. The report says which mode ran and why.

Recycling (on by default): files are slots. The backend maps each key to the file holding it;
deleting an entry keeps its file as a spare, and the next write overwrites a spare in place (the
same size if there is one, else the nearest larger one cut to size, else the largest, which the
write extends), as a slab allocator reuses slots. Creating a file costs the file system far more
than a small write (17 us to over 1 ms per create on ext4 after many deletes, and a rename still
about 20 us; see docs/performance.md), so without this a tier that evicts, or rewrites the
growing last chunk of a conversation, measures inode allocation instead of the drive. Every
file of ours, spare or live, is the size of what it holds, and together they stay within the
tier's capacity (the cache keeps the live ones within it; spares give way when one must grow).
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import itertools
import os
import threading
import time

from .. import fsinfo
from ..errors import BackendError, BackendFull, ConfigError, IOCut
from ..payload import BLOCK
from .base import Backend, BackendContext, IOResult, TierSpec

MODES = ("direct", "buffered")


class FileBackend(Backend):
    name = "file"
    files_in_run_dir = True

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
            memory = fsinfo.memory_medium(self.dir)
            free = fsinfo.free_bytes(self.dir)
        except OSError as e:
            raise BackendError(f"cannot use {self.dir} for the file tier: {e}") from e
        if forced is not None:
            mode, reason = forced, f"forced by io_mode option (probe said {mode}: {reason})"
        self.direct = mode == "direct"
        devices = fsinfo.find_block_devices(self.dir)
        self._info = {
            "path": self.dir,
            "io_mode": mode,
            "io_mode_reason": reason,
            "fstype": mount.fstype,
            "mountpoint": mount.mountpoint,
            # "memory": files in RAM (tmpfs, an overlay on it, a RAM disk), so every figure of
            # this tier is memory's; the cache dir check lets that run only when asked for
            "medium": "memory" if memory else "drive",
            "block_device": devices.label,
            "block_devices": list(devices.devices),
            "device_model": fsinfo.device_model(devices.label),
            "free_bytes": free,
        }
        if memory:
            self._info["medium_note"] = f"{memory}: memory, not a drive"
        recycle = spec.options.get("recycle", True)
        if not isinstance(recycle, bool):
            raise ConfigError(f"recycle must be true or false, got {recycle!r}")
        self.recycle = recycle
        self._info["recycle"] = recycle
        self._lock = threading.Lock()
        self._live: dict[str, tuple[str, int]] = {}  # key -> (its file's name, padded bytes)
        self._names: dict[str, str] = {}  # file name -> key, for every live file (or being written)
        self._spares: dict[int, list[str]] = {}  # file size -> freed files of ours kept for reuse
        self._spare_sizes: list[int] = []  # the keys of _spares, sorted
        self._disk_bytes = 0  # live + being written + spare (the cache keeps live within capacity)
        self._stray: list[str] = []  # files of ours whose removal failed: close() tries again
        self._serial = itertools.count()
        self._files_created = 0
        self._files_recycled = 0

    def footprint(self, nbytes: int) -> int:
        return -(-nbytes // BLOCK) * BLOCK

    def path_of(self, key: str) -> str | None:
        """The file holding ``key`` now, or None."""
        slot = self._live.get(key)
        return None if slot is None else os.path.join(self.dir, slot[0])

    def write(self, key: str, nbytes: int) -> IOResult:
        padded = self.footprint(nbytes)
        staging = self.ctx.staging
        block = staging.block
        with self._lock:
            if key in self._live:
                raise BackendError(f"write of {key!r}: it is already stored; delete it first")
            spare, spare_size, drop = self._claim(padded)
            name = spare or f"slot{next(self._serial):08d}.kv"  # a slot, not a key: it is reused
            self._names[name] = key
        path = os.path.join(self.dir, name)
        # a spare keeps its blocks (no O_TRUNC) and every byte of it up to ``padded`` is
        # overwritten below, so nothing of the old entry survives; O_CREAT in case it vanished
        flags = os.O_WRONLY | os.O_CREAT | (os.O_DIRECT if self.direct else 0) | (0 if spare else os.O_TRUNC)
        dur = 0
        fd = -1
        transfers = []  # (end_ns, bytes) as each block reaches the drive
        try:
            t = start = time.perf_counter_ns()
            # make room for the spare to grow (part of this write's cost)
            failed = [err for err in map(self._remove_file, drop) if err]
            if failed:
                raise failed[0]
            fd = os.open(path, flags, 0o600)
            if spare_size is not None and spare_size > padded:
                os.ftruncate(fd, padded)
            dur += time.perf_counter_ns() - t
            for off in range(0, padded, block):
                # the run is ending: stop between transfers (buffered bytes reach the drive only
                # at the fsync, so a buffered write is never cut)
                if off and self.direct and self.ctx.ending.is_set():
                    raise IOCut(IOResult(nbytes=off, end_ns=transfers[-1][0], dur_ns=dur, start_ns=start,
                                         transfers=tuple(transfers), complete=False))
                n = min(block, padded - off)
                data = staging.payload(self.ctx.noise, key, off, n)
                done = 0
                while done < n:
                    t = time.perf_counter_ns()
                    w = os.pwrite(fd, data[done:], off + done)
                    now = time.perf_counter_ns()
                    dur += now - t
                    if w <= 0:
                        raise BackendError(f"write of {key!r} to {path} made no progress")
                    done += w
                if self.direct:
                    transfers.append((now, n))
            if not self.direct:
                t = time.perf_counter_ns()
                os.fsync(fd)
                t_synced = time.perf_counter_ns()
                dur += t_synced - t
                transfers.append((t_synced, padded))  # buffered bytes reach the drive at the fsync
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            t = time.perf_counter_ns()
            os.close(fd)
            end = time.perf_counter_ns()
            fd = -1
            dur += end - t
        except (OSError, BackendError, IOCut) as e:
            if isinstance(e, IOCut) and self.recycle and fd >= 0:
                self._keep_cut(name, fd, padded)  # unlinking GBs as the run ends would stall it
                raise
            if fd >= 0:
                os.close(fd)
            self._discard(name, padded)
            if not isinstance(e, OSError):
                raise
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise BackendFull(
                    f"the drive holding {self.dir} is full ({e.strerror}) while writing {padded} bytes; "
                    "free space there or lower --kv-nvme-capacity-gb below the free space") from e
            raise BackendError(f"write of {key!r} ({padded} bytes) to {path} failed: {e}") from e
        with self._lock:
            self._live[key] = (name, padded)
            if spare is None:
                self._files_created += 1
            else:
                self._files_recycled += 1
        return IOResult(nbytes=padded, end_ns=end, dur_ns=dur, start_ns=start, transfers=tuple(transfers))

    def _claim(self, padded: int) -> tuple[str | None, int | None, list[str]]:
        """Under the lock: the spare to overwrite (the same size, else the nearest larger, else the
        largest) and its size, or None for a new file; and the spares to remove so that all our
        files stay within the capacity."""
        spare = size = None
        if self._spare_sizes:
            i = bisect.bisect_left(self._spare_sizes, padded)
            size = self._spare_sizes[min(i, len(self._spare_sizes) - 1)]
            spare = self._pop_spare(size)
        self._disk_bytes += padded - (size or 0)
        drop = []
        while self._spare_sizes and self._disk_bytes > self.capacity_bytes:
            largest = self._spare_sizes[-1]
            drop.append(self._pop_spare(largest))
            self._disk_bytes -= largest
        return spare, size, drop

    def _pop_spare(self, size: int) -> str:
        names = self._spares[size]
        name = names.pop()
        if not names:
            del self._spares[size]
            self._spare_sizes.remove(size)
        return name

    def _put_spare(self, size: int, name: str) -> None:
        if size not in self._spares:
            self._spares[size] = []
            bisect.insort(self._spare_sizes, size)
        self._spares[size].append(name)

    def _keep_cut(self, name: str, fd: int, padded: int) -> None:
        """Keep the file of a write cut as the run ended as a spare, at its real size, and close it
        (its content is never read: a spare is overwritten before it holds an entry)."""
        try:
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        with self._lock:
            self._names.pop(name, None)
            self._put_spare(size, name)
            self._disk_bytes += size - padded  # the claim accounted ``padded`` for it

    def _discard(self, name: str, padded: int) -> None:
        """Remove a partly written file so disk and bookkeeping agree after a failed write."""
        self._remove_file(name)
        with self._lock:
            self._names.pop(name, None)
            self._disk_bytes -= padded

    def _remove_file(self, name: str) -> OSError | None:
        """Unlink one of our files; one that cannot be removed is kept for ``close`` to retry."""
        try:
            os.unlink(os.path.join(self.dir, name))
        except FileNotFoundError:
            pass
        except OSError as e:
            with self._lock:
                self._stray.append(name)
            return e
        return None

    def read(self, key: str, nbytes: int) -> IOResult:
        padded = self.footprint(nbytes)
        path = self.path_of(key)
        if path is None:
            raise BackendError(f"read of {key!r}: not an entry of this backend")
        buf = self.ctx.staging.get()
        block = self.ctx.staging.block
        dur = 0
        fd = -1
        transfers = []  # (end_ns, bytes) as each block arrives
        try:
            t = start = time.perf_counter_ns()
            fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if self.direct else 0))
            dur += time.perf_counter_ns() - t
            if not self.direct:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            for off in range(0, padded, block):
                if off and self.ctx.ending.is_set():  # the run is ending: stop between transfers
                    raise IOCut(IOResult(nbytes=off, end_ns=transfers[-1][0], dur_ns=dur, start_ns=start,
                                         transfers=tuple(transfers), complete=False))
                n = min(block, padded - off)
                done = 0
                while done < n:
                    t = time.perf_counter_ns()
                    r = os.preadv(fd, [buf[done:n]], off + done)
                    now = time.perf_counter_ns()
                    dur += now - t
                    if r <= 0:
                        raise BackendError(
                            f"read of {key!r} from {path}: file ends at {off + done} bytes, "
                            f"expected {padded}"
                        )
                    done += r
                transfers.append((now, n))
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
        return IOResult(nbytes=padded, end_ns=end, dur_ns=dur, start_ns=start, transfers=tuple(transfers))

    def delete(self, key: str) -> IOResult:
        """Free ``key``'s file: kept as a spare (bookkeeping only, no system call), or unlinked."""
        with self._lock:
            slot = self._live.pop(key, None)
            if slot is None:
                raise BackendError(f"delete of {key!r}: not an entry of this backend")
            name, size = slot
            del self._names[name]
            if self.recycle:
                self._put_spare(size, name)
        t = time.perf_counter_ns()
        if not self.recycle:
            err = self._remove_file(name)
            with self._lock:
                self._disk_bytes -= size
            if err:
                raise BackendError(f"delete of {key!r}: cannot remove {name} in {self.dir}: {err}") from err
        end = time.perf_counter_ns()
        return IOResult(nbytes=size, end_ns=end, dur_ns=end - t)

    def stored_keys(self) -> set[str]:
        with self._lock:
            names = dict(self._names)
        with os.scandir(self.dir) as it:
            return {names[e.name] for e in it if e.name in names}

    def unknown_files(self) -> list[str]:
        """Names in the run directory that are none of ours (live, being written, spare, or
        awaiting removal): something else wrote there during the run."""
        with self._lock:
            ours = set(self._names) | set(self._stray)
            ours.update(n for names in self._spares.values() for n in names)
        with os.scandir(self.dir) as it:
            return sorted(e.name for e in it if e.name not in ours)

    def describe(self) -> dict:
        with self._lock:
            counts = {"files_created": self._files_created, "files_recycled": self._files_recycled,
                      "spare_files": sum(len(v) for v in self._spares.values())}
        return {**super().describe(), **self._info, **counts}

    def close(self) -> None:
        with self._lock:
            names = list(self._names) + [n for v in self._spares.values() for n in v] + self._stray
            self._stray = []
            self._names.clear()
            self._live.clear()
            self._spares.clear()
            self._spare_sizes.clear()
            self._disk_bytes = 0
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.dir, name))
