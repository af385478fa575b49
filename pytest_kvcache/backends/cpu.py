"""Host-RAM tier: a preallocated, pre-faulted arena carved into fixed pages.

An entry occupies whole pages (its footprint), so the byte budget the cache accounts is
exactly the memory the arena hands out, and no operation allocates: writes copy the payload
into arena pages, reads copy arena pages into the thread's staging buffer (the compute device).
"""

from __future__ import annotations

import errno
import threading
import time

from ..errors import BackendError
from ..payload import aligned_buffer
from .base import Backend, BackendContext, IOResult, TierSpec

PAGE_BYTES = 1 << 20


class CPUBackend(Backend):
    name = "cpu"

    def __init__(self, spec: TierSpec, ctx: BackendContext):
        super().__init__(spec, ctx)
        self.page = min(int(spec.options.get("page_bytes", PAGE_BYTES)), ctx.staging.block)
        self.npages = spec.capacity_bytes // self.page
        try:
            self.arena = aligned_buffer(max(1, self.npages) * self.page)  # pre-faulted here, untimed
        except (MemoryError, OSError) as exc:  # ENOMEM: more than the process can have
            if isinstance(exc, OSError) and exc.errno != errno.ENOMEM:
                raise
            raise BackendError(f"cpu tier: cannot allocate its {spec.capacity_bytes / 1e9:.2f} GB arena in host memory "
                               f"({exc.strerror if isinstance(exc, OSError) else 'MemoryError'}); lower "
                               f"--kv-cpu-mem-gb or free memory.") from None
        self._free = list(range(self.npages - 1, -1, -1))
        self._pages: dict[str, tuple[list[int], int]] = {}
        self._lock = threading.Lock()

    def footprint(self, nbytes: int) -> int:
        return max(1, -(-nbytes // self.page)) * self.page

    def _view(self, page: int, n: int):
        return self.arena[page * self.page : page * self.page + n]

    def write(self, key: str, nbytes: int) -> IOResult:
        need = self.footprint(nbytes) // self.page
        with self._lock:
            if key in self._pages or len(self._free) < need:
                raise BackendError(f"cpu tier: cannot place {key!r} ({need} pages, {len(self._free)} free)")
            pages = [self._free.pop() for _ in range(need)]
            self._pages[key] = (pages, nbytes)
        t0 = time.perf_counter_ns()
        for i, page in enumerate(pages):
            off = i * self.page
            self.ctx.noise.fill(self._view(page, min(self.page, nbytes - off)), key, off)
        t1 = time.perf_counter_ns()
        return IOResult(nbytes, t1, t1 - t0)

    def read(self, key: str, nbytes: int) -> IOResult:
        with self._lock:
            found = self._pages.get(key)
        if found is None:
            raise BackendError(f"cpu tier: no entry {key!r}")
        pages, size = found
        buf = self.ctx.staging.get()
        verifier = self.ctx.verifier
        dur = 0
        for i, page in enumerate(pages):
            n = min(self.page, size - i * self.page)
            t0 = time.perf_counter_ns()
            buf[:n] = self._view(page, n)  # into the compute device's buffer, page by page
            t1 = time.perf_counter_ns()
            dur += t1 - t0
            if verifier is not None:
                verifier.check(key, i * self.page, buf[:n])
            self.ctx.compute.land(key, i * self.page, buf[:n])
        return IOResult(size, time.perf_counter_ns(), dur)

    def delete(self, key: str) -> IOResult:
        t0 = time.perf_counter_ns()
        with self._lock:
            found = self._pages.pop(key, None)
            if found is None:
                raise BackendError(f"cpu tier: no entry {key!r} to delete")
            self._free.extend(found[0])
        t1 = time.perf_counter_ns()
        return IOResult(len(found[0]) * self.page, t1, t1 - t0)

    def stored_keys(self) -> set[str]:
        with self._lock:
            return set(self._pages)

    def content(self, key: str) -> bytes:
        """The stored bytes of ``key`` (tests and verification)."""
        pages, size = self._pages[key]
        return b"".join(bytes(self._view(p, min(self.page, size - i * self.page))) for i, p in enumerate(pages))

    def describe(self) -> dict:
        return {**super().describe(), "page_bytes": self.page,
                "method": "memcpy between a pre-faulted arena and a reused staging buffer"}

    def close(self) -> None:
        with self._lock:
            self._pages.clear()
            self._free = []
        self.arena = None
