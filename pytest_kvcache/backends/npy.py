"""The nvme tier as the MLPerf Storage reference does its file I/O: ``np.save`` + ``fsync`` to
write, ``posix_fadvise(DONTNEED)`` + ``np.load`` to read (``--kv-nvme-backend npy``).

Not the default, and not how a serving engine moves KV: each write serializes the array into a
new ``.npy`` file (a header, then the bytes through Python's buffered file object), each read
allocates a new array the size of the entry and parses the header, and the reads are buffered,
so the page cache is only kept out by the ``DONTNEED`` hint (which drops clean pages; the
``fsync`` after every write makes them clean). Those costs are the reference's, and they are in
the timed region here as they are there (design sections 8 and 9). It exists so the same drive
can be measured both ways and the difference seen: our ``file`` backend's figures beside the
reference's. The payload is made before the timed region, as in the ``file`` backend.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time

import numpy as np

from .. import fsinfo
from ..errors import BackendError, ConfigError
from .base import Backend, BackendContext, IOResult, TierSpec

NPY_HEADER_BYTES = 128  # np.save's version 1.0 header for a 1-D uint8 array, padded to 64 bytes


class NpyBackend(Backend):
    name = "npy"
    files_in_run_dir = True

    def __init__(self, spec: TierSpec, ctx: BackendContext):
        super().__init__(spec, ctx)
        if ctx.run_dir is None:
            raise ConfigError("the npy backend needs a run directory (BackendContext.run_dir)")
        mode = spec.options.get("io_mode", "buffered")
        if mode != "buffered":
            raise ConfigError(f"the npy backend does the reference's buffered I/O (np.save/np.load), not {mode!r}; "
                              "drop --kv-file-io-mode, or use --kv-nvme-backend file for O_DIRECT.")
        self.dir = os.fspath(ctx.run_dir)
        try:
            mount = fsinfo.mount_for(self.dir)
            memory = fsinfo.memory_medium(self.dir)
            devices = fsinfo.find_block_devices(self.dir)
        except OSError as e:
            raise BackendError(f"cannot use {self.dir} for the npy tier: {e}") from e
        self._info = {
            "path": self.dir, "io_mode": "npy",
            "io_mode_reason": "MLPerf reference I/O: np.save + fsync per write; posix_fadvise DONTNEED + np.load "
                              "per read (serialization and a new array per read are in the timed region)",
            "fstype": mount.fstype, "mountpoint": mount.mountpoint,
            "medium": "memory" if memory else "drive",
            "block_device": devices.label, "block_devices": list(devices.devices),
        }
        if memory:
            self._info["medium_note"] = f"{memory}: memory, not a drive"
        self._names: dict[str, str] = {}
        self._lock = threading.Lock()
        self._serial = itertools.count()

    def footprint(self, nbytes: int) -> int:
        return nbytes + NPY_HEADER_BYTES

    def _path(self, key: str, create: bool) -> str:
        with self._lock:
            name = self._names.get(key)
            if name is None:
                if not create:
                    raise BackendError(f"npy tier: no entry {key!r}")
                name = self._names[key] = f"{next(self._serial):08d}.npy"
        return os.path.join(self.dir, name)

    def write(self, key: str, nbytes: int) -> IOResult:
        staging = self.ctx.staging
        array = np.empty(nbytes, dtype=np.uint8)  # the payload, made before the timed region
        for off in range(0, nbytes, staging.block):
            n = min(staging.block, nbytes - off)
            array[off:off + n] = staging.payload(self.ctx.noise, key, off, n)
        path = self._path(key, create=True)
        try:
            start = time.perf_counter_ns()
            with open(path, "wb") as f:
                np.save(f, array, allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
                size = f.tell()
            end = time.perf_counter_ns()
        except OSError as e:
            raise BackendError(f"write of {key!r} to {path} failed: {e}") from e
        return IOResult(nbytes=size, end_ns=end, dur_ns=end - start, start_ns=start)

    def read(self, key: str, nbytes: int) -> IOResult:
        path = self._path(key, create=False)
        try:
            start = time.perf_counter_ns()
            with open(path, "rb") as f:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                array = np.load(f, allow_pickle=False)
                size = f.tell()
            end = time.perf_counter_ns()
        except (OSError, ValueError) as e:
            raise BackendError(f"read of {key!r} from {path} failed: {e}") from e
        if array.nbytes != nbytes:
            raise BackendError(f"read of {key!r} from {path}: {array.nbytes} bytes, expected {nbytes}")
        verifier = self.ctx.verifier
        block = self.ctx.staging.block
        for off in range(0, nbytes, block):
            if verifier is not None:
                verifier.check(key, off, array[off:off + block])
            self.ctx.compute.land(key, off, array[off:off + block])  # pageable memory, as np.load leaves it
        return IOResult(nbytes=size, end_ns=end, dur_ns=end - start, start_ns=start)

    def delete(self, key: str) -> IOResult:
        with self._lock:
            name = self._names.pop(key, None)
        if name is None:
            raise BackendError(f"npy tier: no entry {key!r} to delete")
        t = time.perf_counter_ns()
        try:
            os.unlink(os.path.join(self.dir, name))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise BackendError(f"delete of {key!r}: cannot remove {name} in {self.dir}: {e}") from e
        end = time.perf_counter_ns()
        return IOResult(nbytes=0, end_ns=end, dur_ns=end - t)

    def stored_keys(self) -> set[str]:
        with self._lock:
            by_name = {name: key for key, name in self._names.items()}
        with os.scandir(self.dir) as it:
            return {by_name[e.name] for e in it if e.name in by_name}

    def unknown_files(self) -> list[str]:
        with self._lock:
            ours = set(self._names.values())
        with os.scandir(self.dir) as it:
            return sorted(e.name for e in it if e.name not in ours)

    def describe(self) -> dict:
        with self._lock:
            files = len(self._names)
        return {**super().describe(), **self._info, "files": files}

    def close(self) -> None:
        with self._lock:
            names, self._names = list(self._names.values()), {}
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.dir, name))
