"""The nvme tier: one raw file per chunk, written and read with O_DIRECT where it means something.

The numbers are the point, so: raw bytes (no serialization), page-aligned reusable staging
buffers (no allocation or first-touch faults in the timed region), O_DIRECT when the file system
really bypasses the page cache, otherwise fsync on write and ``POSIX_FADV_DONTNEED`` before every
read so the page cache cannot serve it. Only the system calls that do I/O are timed; payload
preparation is not. The report says which mode ran and why.

Which file holds which chunk, and the spare files reused by later writes (recycling, on by
default), is ``backends/slots.py``'s ``SlotTable``: this module asks it for a file to write,
does the I/O and the system calls (including unlinking the spares it says to drop and reading a
cut file's size), and tells it the outcome.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time

from .. import fsinfo
from ..errors import BackendError, BackendFull, ConfigError, IOCut
from ..payload import BLOCK
from .base import Backend, BackendContext, IOResult, TierSpec
from .slots import SlotTable

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
        self._info["recycle"] = recycle
        self.slots = SlotTable(self.capacity_bytes, recycle)

    @property
    def recycle(self) -> bool:
        """Whether freed files are kept as spares (``SlotTable.recycle``)."""
        return self.slots.recycle

    def footprint(self, nbytes: int) -> int:
        return -(-nbytes // BLOCK) * BLOCK

    def path_of(self, key: str) -> str | None:
        """The file holding ``key`` now, or None."""
        name = self.slots.name_of(key)
        return None if name is None else os.path.join(self.dir, name)

    def write(self, key: str, nbytes: int) -> IOResult:
        padded = self.footprint(nbytes)
        staging = self.ctx.staging
        block = staging.block
        claim = self.slots.claim(key, padded)
        name = claim.name
        path = os.path.join(self.dir, name)
        # a spare keeps its blocks (no O_TRUNC) and every byte of it up to ``padded`` is
        # overwritten below, so nothing of the old entry survives; O_CREAT in case it vanished
        flags = os.O_WRONLY | os.O_CREAT | (os.O_DIRECT if self.direct else 0) | (0 if claim.recycled else os.O_TRUNC)
        dur = 0
        fd = -1
        transfers = []  # (end_ns, bytes) as each block reaches the drive
        try:
            t = start = time.perf_counter_ns()
            # make room for the spare to grow (part of this write's cost)
            failed = [err for err in map(self._remove_file, claim.drop) if err]
            if failed:
                raise failed[0]
            fd = os.open(path, flags, 0o600)
            if claim.spare_size is not None and claim.spare_size > padded:
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
            self._remove_file(name)  # disk and bookkeeping agree after a failed write
            self.slots.discard(name, padded)
            if not isinstance(e, OSError):
                raise
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise BackendFull(
                    f"the drive holding {self.dir} is full ({e.strerror}) while writing {padded} bytes; "
                    "free space there or lower --kv-nvme-capacity-gb below the free space") from e
            raise BackendError(f"write of {key!r} ({padded} bytes) to {path} failed: {e}") from e
        self.slots.commit(key, claim, padded)
        return IOResult(nbytes=padded, end_ns=end, dur_ns=dur, start_ns=start, transfers=tuple(transfers))

    def _keep_cut(self, name: str, fd: int, padded: int) -> None:
        """Keep the file of a write cut as the run ended as a spare, at its real size, and close it."""
        try:
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        self.slots.keep_cut(name, size, padded)

    def _remove_file(self, name: str) -> OSError | None:
        """Unlink one of our files; one that cannot be removed is kept for ``close`` to retry."""
        try:
            os.unlink(os.path.join(self.dir, name))
        except FileNotFoundError:
            pass
        except OSError as e:
            self.slots.stray(name)
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
                self.ctx.compute.land(key, off, buf[:n])
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
        name, size = self.slots.free(key)
        t = time.perf_counter_ns()
        if not self.recycle:
            err = self._remove_file(name)
            self.slots.removed(size)
            if err:
                raise BackendError(f"delete of {key!r}: cannot remove {name} in {self.dir}: {err}") from err
        end = time.perf_counter_ns()
        return IOResult(nbytes=size, end_ns=end, dur_ns=end - t)

    def stored_keys(self) -> set[str]:
        names = self.slots.keys_by_name()
        with os.scandir(self.dir) as it:
            return {names[e.name] for e in it if e.name in names}

    def unknown_files(self) -> list[str]:
        """Names in the run directory that are none of ours (live, being written, spare, or
        awaiting removal): something else wrote there during the run."""
        ours = self.slots.ours()
        with os.scandir(self.dir) as it:
            return sorted(e.name for e in it if e.name not in ours)

    def describe(self) -> dict:
        return {**super().describe(), **self._info, **self.slots.counts()}

    def close(self) -> None:
        for name in self.slots.clear():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.dir, name))
