"""In-memory stand-in for unit tests: no data, optional latency and bandwidth throttle.

Never used for a scenario's verdict; it exists so the cache and runner can be tested
deterministically and fast.
"""

from __future__ import annotations

import threading
import time

from ..errors import BackendError, BackendFull
from .base import Backend, BackendContext, IOResult, TierSpec


class MockBackend(Backend):
    name = "mock"

    def __init__(self, spec: TierSpec, ctx: BackendContext):
        super().__init__(spec, ctx)
        self.latency_s = float(spec.options.get("latency_s", 0.0))
        self.bandwidth = float(spec.options.get("bandwidth_bps", 0.0))
        # fault injection for tests: refuse writes past this many stored bytes (like a GPU OOM)
        self.full_after = spec.options.get("full_after_bytes")
        self.fail_reads = set(spec.options.get("fail_read_keys", ()))
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()

    def _io(self, nbytes: int) -> IOResult:
        t0 = time.perf_counter_ns()
        delay = self.latency_s + (nbytes / self.bandwidth if self.bandwidth else 0.0)
        if delay:
            time.sleep(delay)
        t1 = time.perf_counter_ns()
        return IOResult(nbytes, t1, t1 - t0)

    def write(self, key: str, nbytes: int) -> IOResult:
        with self._lock:
            if self.full_after is not None and sum(self._sizes.values()) + nbytes > self.full_after:
                raise BackendFull(f"mock tier {self.tier}: full (fault injection)")
            self._sizes[key] = nbytes
        return self._io(nbytes)

    def read(self, key: str, nbytes: int) -> IOResult:
        with self._lock:
            if key not in self._sizes:
                raise BackendError(f"mock tier {self.tier}: no entry {key!r}")
            if key in self.fail_reads:
                raise BackendError(f"mock tier {self.tier}: injected I/O error reading {key!r}")
        return self._io(nbytes)

    def delete(self, key: str) -> IOResult:
        with self._lock:
            nbytes = self._sizes.pop(key, None)
        if nbytes is None:
            raise BackendError(f"mock tier {self.tier}: no entry {key!r} to delete")
        return self._io(0)

    def stored_keys(self) -> set[str]:
        with self._lock:
            return set(self._sizes)
