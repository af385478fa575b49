"""A tiny fake ``torch`` (and ``kvikio``) standing in for CUDA in the tests.

Device memory is numpy arrays with a byte capacity (past it, ``OutOfMemoryError``). A
``non_blocking`` copy only runs when an event is synchronised, as a real async copy may, so
code that reused a buffer or read it before synchronising would see wrong bytes. Every copy is
logged in ``COPIES`` as ``(direction, nbytes, host side pinned)``: ``h2d``, ``d2h``, ``d2d`` or
``h2h``; host memory counts as pinned when it came from ``empty(pin_memory=True)`` or lies in a
range given to ``cuda.cudart().cudaHostRegister``.
"""

from __future__ import annotations

import contextlib
import types
import weakref

import numpy as np

EVENT_MS = 0.25  # what every fake start/end event pair reports
PENDING = []  # queued async copies; they run when an event is synchronised
COPIES = []  # (direction, nbytes, whether the host side is pinned)


class FakeTensor:
    def __init__(self, arr, device=None, pinned=False):
        self.arr, self.device, self.pinned = arr, device, pinned

    def __getitem__(self, s):
        return FakeTensor(self.arr[s], self.device, self.pinned)

    def numel(self):
        return self.arr.size

    def numpy(self):
        assert self.device is None, "numpy() of a device tensor"
        return self.arr  # shares memory, like Tensor.numpy() on a CPU tensor

    def copy_(self, src, non_blocking=False):
        assert non_blocking
        assert src.numel() == self.numel(), f"copy_ of {src.numel()} B into {self.numel()} B"
        kind = ("d" if src.device else "h") + "2" + ("d" if self.device else "h")
        host = self if src.device else src  # the host side of the copy (d2d: none)
        COPIES.append((kind, src.numel(), host.pinned and not host.device))
        PENDING.append(lambda: self.arr.__setitem__(slice(None), src.arr))
        return self


class FakeEvent:
    def __init__(self, enable_timing=False):
        assert enable_timing
        self.stream = self.done = None

    def record(self, stream):
        self.stream = stream

    def synchronize(self):
        assert self.stream is not None, "synchronize() on an event never recorded"
        while PENDING:
            PENDING.pop(0)()
        self.done = True

    def elapsed_time(self, end):
        assert end.done and end.stream is self.stream, "elapsed_time before the end event completed"
        return EVENT_MS


def _drain():
    while PENDING:
        PENDING.pop(0)()


class FakeStream:
    def __init__(self, device=None):
        self.device = device

    def synchronize(self):
        _drain()


class FakeCudart:
    def __init__(self):
        self.registered: dict[int, int] = {}  # address -> bytes

    def cudaHostRegister(self, ptr, size, flags):
        assert ptr not in self.registered, "registered twice"
        self.registered[ptr] = size
        return 0

    def cudaHostUnregister(self, ptr):
        assert ptr in self.registered, "unregistering memory never registered"
        del self.registered[ptr]
        return 0

    def pinned(self, arr) -> bool:
        addr = arr.ctypes.data
        return any(p <= addr and addr + arr.nbytes <= p + n for p, n in self.registered.items())


def fake_torch(capacity=1 << 20, available=True):
    torch = types.ModuleType("torch")
    live = weakref.WeakSet()  # device tensors still referenced
    cudart = FakeCudart()

    class OutOfMemoryError(RuntimeError):
        pass

    def empty(n, dtype=None, device=None, pin_memory=False):
        if device is None:
            assert pin_memory, "host staging must be pinned for async copies"
            return FakeTensor(np.zeros(n, dtype=np.uint8), None, True)
        if sum(x.numel() for x in live) + n > torch.capacity:
            raise OutOfMemoryError(f"CUDA out of memory. Tried to allocate {n} B")
        t = FakeTensor(np.zeros(n, dtype=np.uint8), str(device))
        live.add(t)
        return t

    def from_numpy(arr):
        return FakeTensor(arr, None, cudart.pinned(arr))

    torch.uint8, torch.device, torch.empty, torch.capacity, torch.live = "uint8", str, empty, capacity, live
    torch.from_numpy, torch.cudart_state, torch.__version__ = from_numpy, cudart, "0+fake"
    torch.cuda = types.SimpleNamespace(
        is_available=lambda: available, OutOfMemoryError=OutOfMemoryError, Event=FakeEvent,
        Stream=FakeStream, stream=lambda s: contextlib.nullcontext(), synchronize=lambda device=None: _drain(),
        get_device_name=lambda device=None: "Fake GPU", empty_cache=lambda: None, cudart=lambda: cudart)
    return torch


def device_bytes(torch) -> int:
    """Bytes of device memory still referenced."""
    return sum(t.numel() for t in torch.live)


def fake_kvikio(compat=True):
    """A fake ``kvikio`` whose ``CuFile`` moves bytes between files and fake GPU memory only
    (host buffers are refused, as a GDS path that bounced through host memory here would be a
    bug), and whose ``defaults`` report compatibility mode ``compat``."""
    import os

    kvikio = types.ModuleType("kvikio")
    defaults = types.ModuleType("kvikio.defaults")
    defaults.is_compat_mode_preferred = lambda: compat

    def get(name):
        assert name == "compat_mode"
        return "CompatMode.ON" if compat else "CompatMode.OFF"

    defaults.get = get
    flags_of = {"r": os.O_RDONLY, "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "r+": os.O_RDWR}

    class CuFile:
        def __init__(self, path, flags="r"):
            self.fd = os.open(path, flags_of[flags], 0o600)

        def write(self, buf, size, file_offset=0):
            assert buf.device, "the gds backend writes from GPU memory"
            return os.pwrite(self.fd, buf.arr[:size].tobytes(), file_offset)

        def read(self, buf, size, file_offset=0):
            assert buf.device, "the gds backend reads into GPU memory"
            data = os.pread(self.fd, size, file_offset)
            buf.arr[: len(data)] = np.frombuffer(data, dtype=np.uint8)
            return len(data)

        def fileno(self):
            return self.fd

        def close(self):
            os.close(self.fd)

    kvikio.CuFile, kvikio.defaults, kvikio.__version__ = CuFile, defaults, "0+fake"
    return kvikio
