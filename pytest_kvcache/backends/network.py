"""What the network tiers (``redis``, ``object``) share: a place over the network, no block
device, the whole entry as one reused payload buffer, and received bytes checked by block.

A network store takes a value in one call, so a write is assembled whole in a per-thread,
page-aligned buffer that grows to the largest entry and is reused (filled before the timed
call: payload preparation is never timed). A read lands in the bytes the client returns (host
memory, the compute device's stand-in); ``--kv-verify`` checks them block by block.
"""

from __future__ import annotations

import importlib
import threading

import numpy as np

from ..errors import ConfigError
from ..payload import aligned_buffer
from .base import Backend, BackendContext, TierSpec


def import_client(module: str, tier: str, extra: str):
    """The client package ``module`` of a network tier; ConfigError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"the {tier} tier needs the Python package {module}: pip install 'pytest-kvcache[{extra}]'.") from None

class NetworkBackend(Backend):
    """A tier whose entries live on a server: ``medium`` is "network" and ``location`` says
    where ("redis at URL", "S3 at endpoint"); no block device of this host sees its bytes."""

    medium = "network"

    def __init__(self, spec: TierSpec, ctx: BackendContext):
        super().__init__(spec, ctx)
        self._local = threading.local()
        self._buffers_lock = threading.Lock()
        self._buffer_bytes = 0

    @property
    def location(self) -> str:
        """Where the entries live, in words (e.g. "redis at redis://127.0.0.1:6379/0")."""
        raise NotImplementedError

    @property
    def no_device_reason(self) -> str:
        """Why this tier has no device counters (the device-ratio criteria are n/a with it)."""
        return f"the {self.tier} tier is {self.location}: over the network, no block device of this host sees its bytes"

    def whole_payload(self, key: str, nbytes: int, offset: int = 0) -> memoryview:
        """This thread's buffer holding ``nbytes`` of ``key``'s content from ``offset`` (untimed)."""
        buf = getattr(self._local, "buf", None)
        if buf is None or buf.shape[0] < nbytes:
            old = 0 if buf is None else buf.nbytes
            buf = self._local.buf = aligned_buffer(nbytes)
            with self._buffers_lock:
                self._buffer_bytes += buf.nbytes - old
        view = buf[:nbytes]
        self.ctx.noise.fill(view, key, offset)
        return memoryview(view)

    def verify(self, key: str, data, offset: int = 0) -> None:
        """With ``--kv-verify``: check ``data`` (bytes received for ``key`` from ``offset``)
        block by block against what was written (outside the timed call)."""
        verifier = self.ctx.verifier
        if verifier is None:
            return
        received = np.frombuffer(data, dtype=np.uint8)
        block = self.ctx.staging.block
        for off in range(0, received.shape[0], block):
            verifier.check(key, offset + off, received[off:off + block])

    def describe(self) -> dict:
        with self._buffers_lock:
            buffers = self._buffer_bytes
        return {**super().describe(), "medium": self.medium, "location": self.location,
                "block_device": None, "payload_buffer_bytes": buffers}
