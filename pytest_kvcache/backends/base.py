"""The one interface every tier backend implements, and what the cache hands it.

A backend stores opaque entries by key, moves real bytes, and times only the I/O itself
(``perf_counter_ns`` around the system calls, CUDA events on a GPU). It never decides placement:
the multi-tier cache does that and records every ``IOResult`` it gets back.
"""

from __future__ import annotations

import abc
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..payload import NoiseSource, StagingBuffers, Verifier


@dataclass(frozen=True)
class IOResult:
    """One backend I/O of a whole entry.

    ``transfers`` lists ``(end_ns, nbytes)`` for each transfer the I/O was made of, in order
    (one per system call or copy of at most ``--kv-io-block-mb``), so the recorder counts bytes
    as each transfer completes rather than when the whole entry does; empty means one transfer
    of ``nbytes`` ending at ``end_ns``. ``start_ns`` is when the first transfer began (None:
    ``end_ns - dur_ns``). All times are ``time.perf_counter_ns()``.
    """

    nbytes: int  # bytes moved to or from the medium (padded where the medium needs alignment)
    end_ns: int  # when the I/O completed
    dur_ns: int  # time spent in the I/O itself, excluding payload preparation
    start_ns: int | None = None
    transfers: tuple[tuple[int, int], ...] = ()
    complete: bool = True  # False: cut short between transfers as the run ended (errors.IOCut)

    def parts(self) -> tuple[tuple[int, int, int], ...]:
        """``(start_ns, end_ns, nbytes)`` per transfer; a transfer starts when the one before ends."""
        start = self.end_ns - self.dur_ns if self.start_ns is None else self.start_ns
        out = []
        for end, n in self.transfers or ((self.end_ns, self.nbytes),):
            out.append((start, end, n))
            start = end
        return tuple(out)


@dataclass
class TierSpec:
    """One tier of a scenario: which tier, which backend implements it, and its byte budget."""

    tier: str  # "gpu", "cpu", "nvme", ...
    backend: str  # registry name: "gpu", "cpu", "file", "mock", ...
    capacity_bytes: int
    options: dict = field(default_factory=dict)


@dataclass
class BackendContext:
    """What every backend of a run shares."""

    noise: NoiseSource
    staging: StagingBuffers
    run_dir: Path | None = None  # private directory of this run (file-like backends only)
    verifier: Verifier | None = None  # set by --kv-verify: backends check every block they read
    ending: threading.Event = field(default_factory=threading.Event)
    """Set when the run is ending: a backend whose call is made of several transfers may stop
    between two of them, raising ``errors.IOCut`` (``MultiTierCache.end_promptly`` sets it)."""
    compute: object = field(default_factory=lambda: _host_compute())
    """Where loads end (``compute.ComputeDevice``): a backend's ``read`` calls
    ``compute.land(key, offset, data)`` for each transfer it lands in host memory."""


def _host_compute():
    from ..compute import HostCompute  # compute.py imports this module

    return HostCompute()


class Backend(abc.ABC):
    """A place KV entries can live. Thread-safe for distinct keys."""

    name = "base"
    #: True when the backend keeps its entries as files in ``ctx.run_dir``: then the block devices
    #: behind the run directory see its I/O, and their counters are set beside its bytes.
    files_in_run_dir = False

    def __init__(self, spec: TierSpec, ctx: BackendContext):
        self.spec = spec
        self.ctx = ctx
        self.tier = spec.tier
        self.capacity_bytes = spec.capacity_bytes

    def footprint(self, nbytes: int) -> int:
        """Bytes of capacity an entry of ``nbytes`` really occupies (allocation granularity)."""
        return nbytes

    @abc.abstractmethod
    def write(self, key: str, nbytes: int) -> IOResult:
        """Store ``nbytes`` of ``key``'s payload (from ``ctx.noise``) as entry ``key``."""

    @abc.abstractmethod
    def read(self, key: str, nbytes: int) -> IOResult:
        """Read entry ``key`` into this thread's staging buffer, handing each transfer to
        ``ctx.compute.land`` (during a load, the compute device copies it on to GPU memory)."""

    @abc.abstractmethod
    def delete(self, key: str) -> IOResult:
        """Remove entry ``key`` and release its space."""

    @abc.abstractmethod
    def stored_keys(self) -> set[str]:
        """Keys physically present (for the end-of-run invariants)."""

    def unknown_files(self) -> list[str]:
        """Files in this backend's place that it did not make (for the end-of-run invariants);
        a backend that keeps no files has none."""
        return []

    def describe(self) -> dict:
        """How this backend measures: mode, path, file system, device. Goes into the report."""
        return {"backend": self.name, "tier": self.tier, "capacity_bytes": self.capacity_bytes}

    def close(self) -> None:
        """Release memory and remove what this backend created, and nothing else."""
