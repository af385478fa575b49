"""The compute device: where a load from the cache ends (design section 3).

An engine with KV offload computes on the GPU when it has one, so a block found in a lower
tier is only loaded once it is in GPU memory. ``--kv-compute-device`` (``auto``: the GPU when
``torch.cuda.is_available()``, else host memory) picks one of:

- ``HostCompute``: a load ends in the thread's host staging buffer, as a backend's ``read``
  leaves it. Nothing more is copied or recorded.
- ``GPUCompute``: the host staging buffers are page-locked (``cudaHostRegister``), and each
  transfer a backend's ``read`` lands in staging during a load (``land``) is copied
  host-to-device into the thread's GPU destination buffer, timed with CUDA events. The copies
  of one load make one ``h2d`` I/O of the pseudo-tier ``compute`` (``ops.COMPUTE_TIER``),
  recorded by the cache beside the tier's ``read``: the storage leg and the copy leg each have
  their own figures. A hit in the ``gpu`` tier is already where compute needs it: the gpu
  backend does no copy during a load (``loading``), only its lookup. A read outside a load (a
  demotion) copies nothing to the GPU; out of the ``gpu`` tier it is a real D2H copy.

The cache opens a load around the backend call (``with compute.load(nbytes) as load``) and
reads ``load.result`` after it: an ``IOResult`` of the H2D copies, or None when nothing was
copied (host compute, a gpu-tier hit, a backend that reads straight into GPU memory).
"""

from __future__ import annotations

import contextlib
import threading
import time

from .backends.base import IOResult
from .errors import BackendError, ConfigError

CHOICES = ("auto", "host", "gpu")


class ComputeOutOfMemory(RuntimeError):
    """No GPU memory for a worker's load buffer. Not a ``BackendError``: the entry being loaded
    is fine, so the cache must not drop it as broken; the run ends with this message."""

LEGS = {
    "read": "the storage leg: the tier's medium into host staging (a gpu-tier hit: its lookup only; "
            "the gds backend: the drive straight into GPU memory)",
    "h2d": "the copy leg: pinned host staging into GPU memory, CUDA-event time (compute.h2d)",
    "request": "storage_time, ttft, retrieval and e2e include both legs",
}


class Load:
    """One load under way on this thread: what the H2D copies have moved so far."""

    __slots__ = ("nbytes", "dst", "copied", "dur_ns", "start_ns", "transfers")

    def __init__(self, nbytes: int, dst=None):
        self.nbytes, self.dst = nbytes, dst
        self.copied = self.dur_ns = 0
        self.start_ns: int | None = None
        self.transfers: list[tuple[int, int]] = []

    @property
    def result(self) -> IOResult | None:
        """The H2D copies as one I/O, or None when nothing was copied."""
        if not self.transfers:
            return None
        return IOResult(self.copied, self.transfers[-1][0], self.dur_ns, self.start_ns, tuple(self.transfers))


class ComputeDevice:
    """Host memory: loads end in the staging buffer; nothing is copied (``HostCompute``)."""

    name = "host"
    is_gpu = False

    def __init__(self, reason: str | None = None):
        self.reason = reason  # why the compute device is host memory (auto without a GPU)
        self._local = threading.local()

    @contextlib.contextmanager
    def load(self, nbytes: int):
        """A load of an entry of ``nbytes`` into the compute device on this thread."""
        load = self._local.load = Load(nbytes, self._destination(nbytes))
        try:
            yield load
        finally:
            self._local.load = None

    def loading(self) -> Load | None:
        """The load under way on this thread, or None (a demotion's read, a write)."""
        return getattr(self._local, "load", None)

    def _destination(self, nbytes: int):
        return None

    def land(self, key: str, offset: int, data) -> None:
        """``data`` (host bytes ``offset ..`` of ``key``) has landed in host memory; during a
        load on a GPU it is copied to GPU memory. Call it outside the backend's timed region."""

    def pin(self, buffer) -> None:
        """Page-lock a host staging buffer for asynchronous copies (GPU only)."""

    def describe(self) -> dict:
        """The report's ``summary.compute``: the device and which legs the figures include."""
        return {"device": "host", "reason": self.reason,
                "legs": {"read": "the tier's medium into host staging (the compute device)",
                         "h2d": None, "request": "storage_time, ttft, retrieval and e2e include the read"}}

    def absent(self, backends=()) -> dict:
        """Metrics this compute device cannot produce with ``backends`` (``judging.evaluate``'s
        ``absent``)."""
        return {"compute.": "the compute device is host memory: loads end in host staging, nothing is copied "
                            "to a GPU (--kv-compute-device)"}

    def close(self) -> None:
        """Release what the device holds (GPU buffers, page-locked registrations)."""


HostCompute = ComputeDevice


class GPUCompute(ComputeDevice):
    """Loads end in GPU memory through torch: H2D copies from page-locked staging, CUDA events."""

    name = "gpu"
    is_gpu = True

    def __init__(self, device: str = "cuda:0"):
        super().__init__()
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self._lock = threading.Lock()
        self._pinned: list[int] = []  # host addresses registered with CUDA
        self._buffers: list = []  # per-thread destination buffers (released at close)

    def pin(self, buffer) -> None:
        ptr = buffer.ctypes.data
        err = self.torch.cuda.cudart().cudaHostRegister(ptr, buffer.nbytes, 0)
        if int(err) != 0:
            raise BackendError(f"compute device: cudaHostRegister of a {buffer.nbytes} B staging buffer failed "
                               f"(CUDA error {int(err)}); lower --kv-io-block-mb or use --kv-compute-device host")
        with self._lock:
            self._pinned.append(ptr)

    def _thread_state(self):
        st = getattr(self._local, "state", None)
        if st is None:
            st = self._local.state = [self.torch.cuda.Stream(device=self.device), None]
            with self._lock:
                self._buffers.append(st)
        return st

    def _destination(self, nbytes: int):
        """This thread's GPU destination buffer, grown (outside any timed region) to ``nbytes``."""
        st = self._thread_state()
        if st[1] is None or st[1].numel() < nbytes:
            st[1] = None  # free the smaller one first
            try:
                st[1] = self.torch.empty(max(nbytes, 1), dtype=self.torch.uint8, device=self.device)
            except self.torch.cuda.OutOfMemoryError as exc:  # not the entry's fault: ends the run
                raise ComputeOutOfMemory(f"compute device: CUDA out of memory for a {nbytes} B load buffer; "
                                         "lower --kv-gpu-mem-gb (or --kv-users) so loads have room") from exc
        return st[1]

    def destination(self, nbytes: int):
        """The GPU memory a load of ``nbytes`` on this thread ends in (a backend that reads
        straight into GPU memory, as gds does, reads there)."""
        load = self.loading()
        if load is None:
            return self._destination(nbytes)
        if load.dst.numel() < nbytes:  # a file's padding: grow the load's buffer (its bytes are kept)
            load.dst = self._destination(nbytes)
        return load.dst

    def land(self, key: str, offset: int, data) -> None:
        load = self.loading()
        if load is None:
            return
        torch = self.torch
        n = min(data.shape[0], load.nbytes - offset)  # a file's padding stays behind
        if n <= 0:
            return
        stream = self._thread_state()[0]
        src = torch.from_numpy(data[:n])
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0 = time.perf_counter_ns()
        try:
            with torch.cuda.stream(stream):
                start.record(stream)
                load.dst[offset : offset + n].copy_(src, non_blocking=True)
                end.record(stream)
            end.synchronize()  # the staging buffer is reused by the backend's next transfer
        except RuntimeError as exc:  # a CUDA error
            raise BackendError(f"compute device: H2D copy of {key!r} at {offset} failed: {exc}") from exc
        now = time.perf_counter_ns()
        if load.start_ns is None:
            load.start_ns = t0
        load.dur_ns += int(start.elapsed_time(end) * 1e6)
        load.copied += n
        load.transfers.append((now, n))

    def describe(self) -> dict:
        return {"device": str(self.device), "device_name": self.torch.cuda.get_device_name(self.device),
                "reason": None, "legs": dict(LEGS),
                "method": "host staging page-locked (cudaHostRegister); H2D copy_ per transfer on a side stream, "
                          "timed with CUDA events"}

    def absent(self, backends=()) -> dict:
        if backends and all(getattr(b, "loads_in_gpu", False) for b in backends):
            return {"compute.": "every tier of this scenario keeps its KV in GPU memory or reads straight into it "
                                "(gpu, gds): no load is copied host-to-device"}
        return {}

    def close(self) -> None:
        with self._lock:
            for st in self._buffers:
                st[1] = None
            self._buffers.clear()
            pinned, self._pinned = self._pinned, []
        for ptr in pinned:
            self.torch.cuda.cudart().cudaHostUnregister(ptr)


def check_settings(compute_device: str, nvme_backend: str) -> None:
    """Checks ``--kv-compute-device`` against the other options (``Settings.check_workload``);
    raises ConfigError naming the fix. Whether a GPU is there is checked when tiers are made."""
    if compute_device == "host" and nvme_backend == "gds":
        raise ConfigError("--kv-nvme-backend gds reads chunk files straight into GPU memory, but --kv-compute-device "
                          "is host; use --kv-compute-device auto (or gpu) on a machine with a GPU, or "
                          "--kv-nvme-backend file.")


def make_compute(choice: str, device: str = "cuda:0") -> ComputeDevice:
    """The compute device ``--kv-compute-device`` asks for: ``host``, ``gpu`` or ``auto`` (the GPU
    when torch sees one, else host memory, with the reason). Raises ConfigError for ``gpu``
    without a usable GPU."""
    if choice not in CHOICES:
        raise ConfigError(f"--kv-compute-device must be one of {', '.join(CHOICES)}, got {choice!r}")
    if choice == "host":
        return HostCompute(reason="--kv-compute-device host")
    from .backends.gpu import gpu_unavailable_reason

    reason = gpu_unavailable_reason()
    if reason is None:
        return GPUCompute(device)
    if choice == "gpu":
        raise ConfigError(f"--kv-compute-device gpu, but the GPU cannot be used: {reason}. Use "
                          "--kv-compute-device auto (or host) to load into host memory instead.")
    return HostCompute(reason=f"no GPU: {reason}")
