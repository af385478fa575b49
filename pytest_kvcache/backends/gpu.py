"""GPU tier: CUDA memory through torch, pinned host staging, timed with CUDA events.

Entries live in device memory allocated through torch's caching allocator. A write copies the
payload host-to-device from a pinned per-thread staging buffer; a read outside a load (a
demotion to the tier below) copies device-to-host into it. The latency is the CUDA events'
elapsed time around the copies, synchronised before the I/O is reported as complete.

A read during a load (``ctx.compute.loading()``) when the compute device is this GPU is a hit
where compute needs the KV: it moves nothing, and its I/O is the lookup alone (0 bytes, the time
to find the entry; with ``--kv-verify`` the entry is copied out and checked after that time).
With ``--kv-compute-device host`` a load copies the entry device-to-host, as a demotion does.

GPU memory neither deduplicates nor compresses, so the bytes only matter to ``--kv-verify``: the
staging buffer is filled with noise once, and filled with the key's bytes before each copy only
when verifying. That fill runs on the CPU at 11-18 GB/s (a copy of the noise, or 6 us per MiB
when it only re-stamps), against ~54 GB/s for a pinned copy, so it would make the tier look
slower than its copy engine.
"""

from __future__ import annotations

import threading
import time

from ..errors import BackendError, BackendFull, ConfigError
from ..payload import Held
from .base import Backend, BackendContext, IOResult, TierSpec


def gpu_unavailable_reason() -> str | None:
    """None when the GPU tier can run here, else why not (used for pytest skips)."""
    try:
        import torch
    except ImportError:
        return "torch is not installed: pip install 'pytest-kvcache[gpu]' to test the GPU tier"
    except OSError as exc:  # a torch whose CUDA libraries are missing or broken
        return f"torch is installed but cannot load ({exc}); reinstall it with 'pip install pytest-kvcache[gpu]'"
    if not torch.cuda.is_available():
        return "no CUDA device is available to torch (torch.cuda.is_available() is False)"
    return None


class GPUBackend(Backend):
    name = "gpu"
    loads_in_gpu = True  # a load from this tier needs no H2D copy (compute.GPUCompute.absent)

    def __init__(self, spec: TierSpec, ctx: BackendContext):
        super().__init__(spec, ctx)
        reason = gpu_unavailable_reason()
        if reason:
            raise ConfigError(f"the gpu tier cannot run: {reason}")
        import torch

        self.torch = torch
        self.device = torch.device(spec.options.get("device", "cuda:0"))
        self.block = ctx.staging.block
        self._entries: dict[str, object] = {}
        self._lock = threading.Lock()
        self._local = threading.local()

    def _thread_state(self):
        st = getattr(self._local, "state", None)
        if st is None:
            torch = self.torch
            pinned = torch.empty(self.block, dtype=torch.uint8, pin_memory=True)
            stream = torch.cuda.Stream(device=self.device)
            host, held = pinned.numpy(), Held(self.block)
            self.ctx.noise.fill(host, "gpu.staging", 0, held)  # noise, not zeros, from the start
            st = self._local.state = (pinned, host, stream, held)
        return st

    def write(self, key: str, nbytes: int) -> IOResult:
        torch = self.torch
        pinned, host, stream, held = self._thread_state()
        try:
            dev = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        except torch.cuda.OutOfMemoryError as exc:
            raise BackendFull(f"gpu tier: CUDA out of memory placing {key!r} ({nbytes} B)") from exc
        elapsed_ms = 0.0
        for off in range(0, nbytes, self.block):
            n = min(self.block, nbytes - off)
            if self.ctx.verifier is not None:  # the key's own bytes, so reads can be checked
                self.ctx.noise.fill(host[:n], key, off, held)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            with torch.cuda.stream(stream):
                start.record(stream)
                dev[off : off + n].copy_(pinned[:n], non_blocking=True)
                end.record(stream)
            end.synchronize()  # the staging buffer is reused by the next segment
            elapsed_ms += start.elapsed_time(end)
        with self._lock:
            self._entries[key] = dev
        return IOResult(nbytes, time.perf_counter_ns(), int(elapsed_ms * 1e6))

    def read(self, key: str, nbytes: int) -> IOResult:
        t0 = time.perf_counter_ns()
        with self._lock:
            dev = self._entries.get(key)
        t1 = time.perf_counter_ns()
        if dev is None:
            raise BackendError(f"gpu tier: no entry {key!r}")
        if self.ctx.compute.is_gpu and self.ctx.compute.loading() is not None:  # already in GPU memory
            if self.ctx.verifier is not None:
                self._copy_out(key, dev)
            return IOResult(0, t1, t1 - t0)
        return self._copy_out(key, dev)

    def _copy_out(self, key: str, dev) -> IOResult:
        """Copy ``dev`` device-to-host into the pinned staging buffer, segment by segment,
        checking each against ``--kv-verify``; the I/O is the CUDA-event time of the copies."""
        torch = self.torch
        pinned, host, stream, held = self._thread_state()
        held.forget()  # the copies below overwrite the staging buffer
        elapsed_ms = 0.0
        size = dev.numel()
        for off in range(0, size, self.block):
            n = min(self.block, size - off)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            with torch.cuda.stream(stream):
                start.record(stream)
                pinned[:n].copy_(dev[off : off + n], non_blocking=True)
                end.record(stream)
            end.synchronize()
            elapsed_ms += start.elapsed_time(end)
            if self.ctx.verifier is not None:
                self.ctx.verifier.check(key, off, host[:n])
        return IOResult(size, time.perf_counter_ns(), int(elapsed_ms * 1e6))

    def delete(self, key: str) -> IOResult:
        t0 = time.perf_counter_ns()
        with self._lock:
            dev = self._entries.pop(key, None)
        if dev is None:
            raise BackendError(f"gpu tier: no entry {key!r} to delete")
        size = dev.numel()
        del dev
        t1 = time.perf_counter_ns()
        return IOResult(size, t1, t1 - t0)

    def stored_keys(self) -> set[str]:
        with self._lock:
            return set(self._entries)

    def describe(self) -> dict:
        torch = self.torch
        return {**super().describe(), "device": str(self.device),
                "device_name": torch.cuda.get_device_name(self.device),
                "method": "H2D/D2H copies via pinned staging, timed with CUDA events",
                "payload": "noise; stamped per key before each copy only with --kv-verify"}

    def close(self) -> None:
        with self._lock:
            self._entries.clear()
        self.torch.cuda.empty_cache()
