"""Write payloads and reusable I/O buffers.

Payload bytes come from one preallocated, seeded noise buffer: no random generation and no
allocation per I/O. Every 4 KiB block written is stamped with the entry's key so a drive cannot
deduplicate or compress chunks against each other. Buffers are page-aligned (``mmap``) so they
can be used with O_DIRECT, and pre-faulted so first-touch page faults never land inside a timed I/O.
"""

from __future__ import annotations

import hashlib
import mmap
import threading

import numpy as np

from .rng import derive

PAGE = mmap.PAGESIZE
BLOCK = 4096
_STAMP_STRIDE = BLOCK // 8  # uint64 elements per 4 KiB block


def aligned_buffer(nbytes: int) -> np.ndarray:
    """A page-aligned, pre-faulted uint8 array of at least ``nbytes`` (rounded up to a page)."""
    size = max(PAGE, -(-nbytes // PAGE) * PAGE)
    mem = mmap.mmap(-1, size)
    arr = np.frombuffer(mem, dtype=np.uint8)
    arr[::PAGE] = 0  # touch every page now, outside any measurement
    return arr


def key_stamp(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


class NoiseSource:
    """Seeded noise; ``fill`` copies a key-dependent slice of it into a buffer and stamps it."""

    def __init__(self, seed: int, size: int = 64 << 20):
        size = -(-size // BLOCK) * BLOCK
        self.buffer = aligned_buffer(size)
        self.buffer[:size] = derive(seed, "payload.noise").integers(0, 256, size, dtype=np.uint8)
        self.size = size

    def fill(self, dst: np.ndarray, key: str, offset: int = 0) -> None:
        """Fill ``dst`` (uint8) with bytes ``offset .. offset+len(dst)`` of ``key``'s content.

        The content is a function of (key, offset) alone, so an entry reads the same however
        a backend splits it into transfers. ``offset`` must be a multiple of 4096.
        """
        n = dst.shape[0]
        stamp = key_stamp(key)
        start = ((stamp >> 7) * BLOCK + offset) % self.size
        done = 0
        while done < n:
            take = min(n - done, self.size - start)
            dst[done : done + take] = self.buffer[start : start + take]
            done += take
            start = 0
        whole = n - n % 8
        if whole:
            words = dst[:whole].view(np.uint64)
            words[::_STAMP_STRIDE] ^= np.uint64(stamp)

    def expected(self, key: str, nbytes: int) -> np.ndarray:
        """The whole content of ``key`` (tests and verification)."""
        out = np.empty(nbytes, dtype=np.uint8)
        self.fill(out, key, 0)
        return out


class StagingBuffers:
    """One reusable aligned buffer per thread: the stand-in for the compute device's memory.

    Reads land here and writes are assembled here, so an I/O never allocates. Buffers are made
    lazily on a thread's first I/O (outside the timed region) and grow only to ``block`` bytes.
    """

    def __init__(self, block: int):
        self.block = max(BLOCK, -(-block // BLOCK) * BLOCK)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[np.ndarray] = []

    def get(self) -> np.ndarray:
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = aligned_buffer(self.block)
            self._local.buf = buf
            with self._lock:
                self._all.append(buf)
        return buf

    @property
    def allocated_bytes(self) -> int:
        with self._lock:
            return sum(b.nbytes for b in self._all)


class Verifier:
    """``--kv-verify``: compares every block read against the bytes that were written.

    An entry's content is a pure function of (seed, key, offset), so the expected bytes are
    regenerated into a per-thread scratch buffer and compared exactly: stronger than a stored
    checksum, and it needs no metadata that a corrupted file could also lose. Runs outside
    the timed region of the I/O.
    """

    def __init__(self, noise: NoiseSource, block: int):
        self.noise = noise
        self.scratch = StagingBuffers(block)
        self._lock = threading.Lock()
        self.checked = 0
        self.mismatches = 0
        self.first: list[str] = []

    def check(self, key: str, offset: int, data: np.ndarray) -> bool:
        n = data.shape[0]
        expected = self.scratch.get()[:n]
        self.noise.fill(expected, key, offset)
        ok = bool(np.array_equal(expected, data))
        with self._lock:
            self.checked += 1
            if not ok:
                self.mismatches += 1
                if len(self.first) < 10:
                    bad = int(np.flatnonzero(expected != data)[0])
                    self.first.append(f"{key}: byte {offset + bad} differs from what was written")
        return ok
