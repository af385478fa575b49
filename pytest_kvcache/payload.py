"""Write payloads and reusable I/O buffers.

Payload bytes come from one preallocated, seeded noise buffer: no random generation and no
allocation per I/O. Every 4 KiB block written is stamped with the entry's key and the block's
index, so a drive cannot deduplicate or compress blocks against each other. Buffers are
page-aligned (``mmap``) so they can be used with O_DIRECT, and pre-faulted so first-touch page
faults never land inside a timed I/O.

A reused buffer that already holds another entry's bytes for the same stretch of the noise is
only re-stamped (one XOR per 4 KiB block), not copied again, as fio's ``scramble_buffers`` does:
a full copy costs a 128 KiB write about a fifth of its time on a fast drive.
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
_MIX = np.uint64(0x9E3779B97F4A7C15)  # spreads block indexes over the stamp's bits
NOISE_BYTES = 4 << 20  # the noise period: the default transfer size, so every transfer re-stamps


def aligned_buffer(nbytes: int) -> np.ndarray:
    """A page-aligned, pre-faulted uint8 array of at least ``nbytes`` (rounded up to a page)."""
    size = max(PAGE, -(-nbytes // PAGE) * PAGE)
    mem = mmap.mmap(-1, size)
    arr = np.frombuffer(mem, dtype=np.uint8)
    arr[::PAGE] = 0  # touch every page now, outside any measurement
    return arr


_MIX_TABLE = np.arange(1 << 16, dtype=np.uint64) * _MIX  # blocks of the first 256 MiB of an entry


def _block_mix(offset: int, count: int) -> np.ndarray:
    """The block-index part of the stamps of ``count`` blocks from byte ``offset``."""
    first = offset // BLOCK
    if first + count <= _MIX_TABLE.size:
        return _MIX_TABLE[first : first + count]
    return np.arange(first, first + count, dtype=np.uint64) * _MIX


def key_stamp(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


class NoiseSource:
    """Seeded noise; ``fill`` puts an entry's bytes for one offset range into a buffer.

    Content of ``key`` at byte ``o``: ``noise[o % size]``, with the first 8 bytes of each 4 KiB
    block XORed with a stamp of (key, block index). It depends on (seed, key, offset) alone, so
    an entry reads the same however a backend splits it into transfers.
    """

    def __init__(self, seed: int, size: int = NOISE_BYTES):
        size = -(-size // BLOCK) * BLOCK
        self.buffer = aligned_buffer(size)
        self.buffer[:size] = derive(seed, "payload.noise").integers(0, 256, size, dtype=np.uint8)
        self.size = size

    def fill(self, dst: np.ndarray, key: str, offset: int = 0, held: tuple | None = None) -> tuple:
        """Fill ``dst`` (uint8) with bytes ``offset .. offset+len(dst)`` of ``key``'s content.

        ``offset`` must be a multiple of 4096. ``held`` is what the previous fill of the same
        buffer returned (None when the buffer was used for anything else since): when it covered
        the same stretch of noise, only the stamps change. Returns the token for the next fill.
        """
        n = dst.shape[0]
        base = offset % self.size
        stamp = key_stamp(key)
        words = dst[: n - n % 8].view(np.uint64)[::_STAMP_STRIDE]  # word 0 of each 4 KiB block
        if held is not None and held[:2] == (base, n):  # dst = this noise, stamped for held
            _, _, old_offset, old_stamp = held
            if old_offset == offset:
                words ^= np.uint64(stamp ^ old_stamp)
            else:
                words ^= _block_mix(offset, len(words)) ^ _block_mix(old_offset, len(words)) ^ np.uint64(stamp ^ old_stamp)
        else:
            start, done = base, 0
            while done < n:
                take = min(n - done, self.size - start)
                dst[done : done + take] = self.buffer[start : start + take]
                done += take
                start = 0
            words ^= _block_mix(offset, len(words)) ^ np.uint64(stamp)
        return (base, n, offset, stamp)

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
        """This thread's buffer, to read into (what it held is forgotten)."""
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = aligned_buffer(self.block)
            self._local.buf = buf
            with self._lock:
                self._all.append(buf)
        self._local.held = None
        return buf

    def payload(self, noise: NoiseSource, key: str, offset: int, n: int) -> np.ndarray:
        """This thread's buffer filled with ``n`` bytes of ``key`` from ``offset``, to write out."""
        held = getattr(self._local, "held", None)
        buf = self.get()[:n]
        self._local.held = noise.fill(buf, key, offset, held)
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
