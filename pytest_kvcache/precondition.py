"""Preconditioning (``--kv-precondition-gb N``): fill the storage tier's drive before the window.

A drive's speed depends on how full it is and on what was written before (an SSD's flash
translation layer, a file system's free-space fragmentation), so a run can first write N GB of
files beside its run directory, on the same file system, and keep them there while it runs:
the tier then works on a drive that far fuller. The fill is written before the runner starts,
so no byte of it is in the recorder's window or the device counters' window, and it is reported
apart (``run.precondition``: bytes, seconds, GB/s). The files are ours alone (a private
directory made for them) and are removed when the scenario ends, whatever happened.

0 (the default) is off: a sensible fill depends on the drive (twice its capacity is the usual
SSD practice) and costs minutes per 100 GB, so it is asked for, never implied. The fill must
leave the tier's budget plus ``MARGIN_BYTES`` free, else ConfigError names the largest N.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from .errors import ConfigError
from .fsinfo import free_bytes

GB = 10**9
FILE_BYTES = 256 * 2**20  # one fill file
WRITE_BYTES = 4 * 2**20  # one write
MARGIN_BYTES = 1 * GB


class Precondition:
    """``fill`` N bytes of files in a private directory under ``cache_root``; ``remove`` them."""

    def __init__(self, cache_root: Path, nbytes: int, tier_budget: int):
        free = free_bytes(cache_root)
        room = free - tier_budget - MARGIN_BYTES
        if nbytes > room:
            raise ConfigError(f"--kv-precondition-gb {nbytes / GB:g} does not fit on the drive of {cache_root}: "
                              f"{free / GB:.1f} GB free, of which the storage tier's budget ({tier_budget / GB:.1f} GB) "
                              f"and a {MARGIN_BYTES / GB:g} GB margin must stay free; use at most "
                              f"--kv-precondition-gb {max(room, 0) / GB:.1f} (or lower --kv-nvme-capacity-gb).")
        self.nbytes = nbytes
        self.dir = Path(tempfile.mkdtemp(prefix="kvcache-precondition-", dir=cache_root))
        self.files: list[str] = []
        self.info: dict = {"requested_bytes": nbytes, "bytes": 0, "seconds": None, "gbps": None,
                           "files": 0, "path": str(self.dir), "removed": False}

    def fill(self) -> dict:
        """Write the files (each fsync'd, so the bytes are on the drive); returns ``info``."""
        chunk = os.urandom(WRITE_BYTES)
        t0 = time.perf_counter()
        written = 0
        while written < self.nbytes:
            name = f"fill-{len(self.files):06d}"
            fd = os.open(self.dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self.files.append(name)
            try:
                size = min(FILE_BYTES, self.nbytes - written)
                done = 0
                while done < size:
                    done += os.write(fd, chunk[:min(WRITE_BYTES, size - done)])
                os.fsync(fd)
            finally:
                os.close(fd)
            written += size
            self.info["bytes"], self.info["files"] = written, len(self.files)
        seconds = time.perf_counter() - t0
        self.info["seconds"] = round(seconds, 3)
        self.info["gbps"] = round(written / seconds / GB, 4) if seconds > 0 else None
        return self.info

    def remove(self) -> None:
        """Remove our files and directory; anything else found there is left in place."""
        for name in self.files:
            try:
                os.unlink(self.dir / name)
            except FileNotFoundError:
                pass
        try:
            self.dir.rmdir()
            self.info["removed"] = True
        except OSError:
            self.info["left"] = sorted(os.listdir(self.dir))[:5]
