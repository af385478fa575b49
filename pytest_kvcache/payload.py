"""Write payloads and reusable I/O buffers.

Payload bytes come from one preallocated, seeded noise buffer: no random generation and no
allocation per I/O. Every 4 KiB block written is stamped with the entry's key and the block's
index, so a drive cannot deduplicate or compress blocks against each other. Buffers are
page-aligned (``mmap``) so they can be used with O_DIRECT, and pre-faulted so first-touch page
faults never land inside a timed I/O.

A reused buffer that already holds another entry's bytes for the same stretch of the noise is
only re-stamped (one XOR per 4 KiB block), not copied again, as fio's ``scramble_buffers`` does:
a full copy cost a 128 KiB O_DIRECT write about a fifth of its time on the project's VM.
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
NOISE_BYTES = 64 << 20  # the noise period; a 4 MiB one made the VM's disk ~6% slower (docs/performance.md)


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

    def fill(self, dst: np.ndarray, key: str, offset: int = 0, held: Held | None = None) -> None:
        """Fill ``dst`` (uint8) with bytes ``offset .. offset+len(dst)`` of ``key``'s content.

        ``offset`` must be a multiple of 4096. With ``held``, the record of what ``dst`` (a
        reused buffer) holds, a fill over the same stretch of noise only changes the stamps,
        and ``held`` is kept up to date.
        """
        n = dst.shape[0]
        base = offset % self.size
        words = dst[: n - n % 8].view(np.uint64)[::_STAMP_STRIDE]  # word 0 of each 4 KiB block
        stamps = _block_mix(offset, len(words)) ^ np.uint64(key_stamp(key))
        if held is not None and held.base == base and n <= held.valid and n % 8 == 0:
            words ^= held.stamps[: len(words)] ^ stamps
        else:
            start, done = base, 0
            while done < n:
                take = min(n - done, self.size - start)
                dst[done : done + take] = self.buffer[start : start + take]
                done += take
                start = 0
            words ^= stamps
            if held is not None:
                held.base, held.valid = base, n
        if held is not None:
            held.stamps[: len(words)] = stamps

    def expected(self, key: str, nbytes: int) -> np.ndarray:
        """The whole content of ``key`` (tests and verification)."""
        out = np.empty(nbytes, dtype=np.uint8)
        self.fill(out, key, 0)
        return out


class Held:
    """What a reused buffer holds: noise from ``base`` for ``valid`` bytes, and each 4 KiB
    block's stamp, so the next fill of the same stretch only re-stamps (see ``NoiseSource.fill``)."""

    __slots__ = ("base", "valid", "stamps")

    def __init__(self, nbytes: int):
        self.base = 0
        self.valid = 0
        self.stamps = np.zeros(-(-nbytes // BLOCK), dtype=np.uint64)

    def forget(self) -> None:
        """The buffer was overwritten (a read landed in it)."""
        self.valid = 0


class StagingBuffers:
    """One reusable aligned buffer per thread: the stand-in for the compute device's memory.

    Reads land here and writes are assembled here, so an I/O never allocates. Buffers are made
    lazily on a thread's first I/O (outside the timed region) and grow only to ``block`` bytes.
    """

    def __init__(self, block: int, pin=None):
        self.block = max(BLOCK, -(-block // BLOCK) * BLOCK)
        self.pin = pin  # called on each new buffer (compute.GPUCompute.pin page-locks it)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[np.ndarray] = []

    def _mine(self) -> tuple[np.ndarray, Held]:
        mine = getattr(self._local, "mine", None)
        if mine is None:
            mine = self._local.mine = (aligned_buffer(self.block), Held(self.block))
            if self.pin is not None:
                self.pin(mine[0])
            with self._lock:
                self._all.append(mine[0])
        return mine

    def get(self) -> np.ndarray:
        """This thread's buffer, to read into (what it held is forgotten)."""
        buf, held = self._mine()
        held.forget()
        return buf

    def payload(self, noise: NoiseSource, key: str, offset: int, n: int) -> np.ndarray:
        """This thread's buffer filled with ``n`` bytes of ``key`` from ``offset``, to write out."""
        buf, held = self._mine()
        noise.fill(buf[:n], key, offset, held)
        return buf[:n]

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
