"""The nvme tier through GPUDirect Storage: kvikio (cuFile) moves chunk files to and from GPU memory.

``--kv-nvme-backend gds``. Files, slots and recycling are the ``file`` backend's (this class
inherits them: ``backends/slots.py``); only the I/O differs. A read goes from the drive straight
into the GPU memory the load ends in (``compute.GPUCompute.destination``), so a load from this
tier has no ``h2d`` leg: its ``read`` is the whole way to the compute device. A write goes from a
per-thread GPU buffer to the file; the payload (the key's bytes, stamped per 4 KiB block as the
file tier does, so a drive cannot deduplicate) is copied there from page-locked host staging
before the timed write.

kvikio uses cuFile when GPUDirect Storage is available and its compatibility mode (POSIX I/O
through a host bounce buffer) otherwise; ``kvikio.defaults.is_compat_mode_preferred()`` says
which, and ``describe`` reports it as ``io_mode`` (``gds`` or ``kvikio-compat``). Needs a CUDA
GPU as the compute device and kvikio (``pip install 'pytest-kvcache[gds]'``); without either the
backend is a usage error that names the fix.
"""

from __future__ import annotations

import errno
import os
import threading
import time

from ..errors import BackendError, BackendFull, ConfigError
from .base import BackendContext, IOResult, TierSpec
from .file import FileBackend


def kvikio_unavailable_reason() -> str | None:
    """None when kvikio imports here, else why not (used for errors and skips)."""
    try:
        import kvikio  # noqa: F401
        import kvikio.defaults  # noqa: F401
    except ImportError as exc:
        return (f"kvikio is not installed ({exc}): pip install 'pytest-kvcache[gds]' (kvikio-cu13; "
                "pip install kvikio-cu12 on a CUDA 12 machine)")
    except (OSError, RuntimeError) as exc:  # its CUDA libraries are missing or broken
        return f"kvikio is installed but cannot load ({exc})"
    return None


class GDSBackend(FileBackend):
    name = "gds"
    loads_in_gpu = True  # a load from this tier needs no H2D copy (compute.GPUCompute.absent)

    def __init__(self, spec: TierSpec, ctx: BackendContext):
        compute = ctx.compute
        if not compute.is_gpu:
            raise ConfigError(
                "the gds backend reads chunk files straight into GPU memory, but the compute device is host "
                f"memory ({compute.reason or 'no GPU'}); run it on a machine with a CUDA GPU and "
                "--kv-compute-device auto or gpu, or use --kv-nvme-backend file.")
        reason = kvikio_unavailable_reason()
        if reason:
            raise ConfigError(f"the gds backend cannot run: {reason}; or use --kv-nvme-backend file.")
        super().__init__(spec, ctx)
        import kvikio
        import kvikio.defaults

        self.kvikio = kvikio
        self.torch = compute.torch
        self._local = threading.local()
        self.compat = bool(kvikio.defaults.is_compat_mode_preferred())
        self._info.update(
            io_mode="kvikio-compat" if self.compat else "gds",
            io_mode_reason=("kvikio.defaults.is_compat_mode_preferred() is True: cuFile/GPUDirect Storage is not "
                            "available (or KVIKIO_COMPAT_MODE=ON), so kvikio moves the bytes with POSIX I/O through "
                            "a host bounce buffer" if self.compat else
                            "kvikio.defaults.is_compat_mode_preferred() is False: cuFile (GPUDirect Storage) "
                            "moves the bytes between the drive and GPU memory"),
            kvikio_version=getattr(kvikio, "__version__", None),
            kvikio_compat_mode=str(kvikio.defaults.get("compat_mode")),
            gds_used=not self.compat,
            method="kvikio CuFile read into / write from GPU memory, one call per --kv-io-block-mb; writes "
                   "fsynced, and the file's page cache dropped (POSIX_FADV_DONTNEED) after each write and before "
                   "each read, so compatibility mode cannot be served from memory; the payload is copied to the "
                   "GPU before the timed write")

    def _thread_state(self):
        """This thread's (side stream, GPU write buffer of one staging block)."""
        st = getattr(self._local, "state", None)
        if st is None:
            torch = self.torch
            device = self.ctx.compute.device
            st = self._local.state = (torch.cuda.Stream(device=device),
                                      torch.empty(self.ctx.staging.block, dtype=torch.uint8, device=device))
        return st

    def _copy(self, dst, src) -> None:
        """A synchronous copy between host and GPU memory, outside every timed region."""
        torch = self.torch
        stream = self._thread_state()[0]
        done = torch.cuda.Event(enable_timing=True)
        with torch.cuda.stream(stream):
            dst.copy_(src, non_blocking=True)
            done.record(stream)
        done.synchronize()

    def write(self, key: str, nbytes: int) -> IOResult:
        padded = self.footprint(nbytes)
        staging, block = self.ctx.staging, self.ctx.staging.block
        dev = self._thread_state()[1]
        claim = self.slots.claim(key, padded)
        path = os.path.join(self.dir, claim.name)
        dur = 0
        try:
            t = start = time.perf_counter_ns()
            failed = [err for err in map(self._remove_file, claim.drop) if err]
            if failed:
                raise failed[0]
            if claim.spare_size is not None and claim.spare_size > padded:
                os.truncate(path, padded)
            f = self.kvikio.CuFile(path, "r+" if claim.recycled else "w")
            dur += time.perf_counter_ns() - t
            try:
                for off in range(0, padded, block):
                    n = min(block, padded - off)
                    self._copy(dev[:n], self.torch.from_numpy(staging.payload(self.ctx.noise, key, off, n)))
                    t = time.perf_counter_ns()
                    written = f.write(dev[:n], n, off)
                    dur += time.perf_counter_ns() - t
                    if written != n:
                        raise BackendError(f"write of {key!r} to {path}: {written} of {n} bytes at {off}")
                t = time.perf_counter_ns()
                os.fsync(f.fileno())  # compat mode may leave the bytes in the page cache
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                f.close()
            end = time.perf_counter_ns()
            dur += end - t
        except (OSError, RuntimeError, BackendError) as e:
            self._remove_file(claim.name)  # disk and bookkeeping agree after a failed write
            self.slots.discard(claim.name, padded)
            if isinstance(e, BackendError):
                raise
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise BackendFull(f"the drive holding {self.dir} is full ({e.strerror}) while writing {padded} "
                                  "bytes; free space there or lower --kv-nvme-capacity-gb") from e
            raise BackendError(f"gds write of {key!r} ({padded} bytes) to {path} failed: {e}") from e
        self.slots.commit(key, claim, padded)
        # the bytes are on the drive at the fsync: one transfer ending then
        return IOResult(nbytes=padded, end_ns=end, dur_ns=dur, start_ns=start, transfers=((end, padded),))

    def read(self, key: str, nbytes: int) -> IOResult:
        padded = self.footprint(nbytes)
        path = self.path_of(key)
        if path is None:
            raise BackendError(f"read of {key!r}: not an entry of this backend")
        block = self.ctx.staging.block
        dst = self.ctx.compute.destination(padded)  # the GPU memory the load ends in
        verifier = self.ctx.verifier
        dur = 0
        transfers = []
        try:
            t = start = time.perf_counter_ns()
            f = self.kvikio.CuFile(path, "r")
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # compat mode: not from the page cache
            dur += time.perf_counter_ns() - t
            try:
                for off in range(0, padded, block):
                    n = min(block, padded - off)
                    t = time.perf_counter_ns()
                    got = f.read(dst[off : off + n], n, off)
                    now = time.perf_counter_ns()
                    dur += now - t
                    if got != n:
                        raise BackendError(f"read of {key!r} from {path}: {got} of {n} bytes at {off}, "
                                           f"expected {padded} in all")
                    transfers.append((now, n))
                    if verifier is not None:  # copied back to host, outside the timed region
                        host = self.ctx.staging.get()[:n]
                        self._copy(self.torch.from_numpy(host), dst[off : off + n])
                        verifier.check(key, off, host)
            finally:
                t = time.perf_counter_ns()
                f.close()
                end = time.perf_counter_ns()
                dur += end - t
        except FileNotFoundError as e:
            raise BackendError(f"read of {key!r}: {path} does not exist") from e
        except (OSError, RuntimeError) as e:
            raise BackendError(f"gds read of {key!r} from {path} failed: {e}") from e
        return IOResult(nbytes=padded, end_ns=end, dur_ns=dur, start_ns=start, transfers=tuple(transfers))

    def close(self) -> None:
        super().close()
        self._local = threading.local()  # drops the threads' GPU write buffers
