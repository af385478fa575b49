"""Block device counters (``/sys/block/<dev>/stat``) over a measurement window.

The application's own timings can flatter a drive (caching, readahead) or blame it for Python
overhead; the kernel's per-device counters show what the device itself did in the same window,
so the report can put both side by side. They count every I/O on the device, not just ours.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, fields

SECTOR = 512  # /sys/block/*/stat counts 512-byte sectors whatever the device's block size

NOTE = (
    "device counters include all I/O on the device in the window: other processes, "
    "file-system metadata and journal writes, not only this benchmark"
)


@dataclass(frozen=True)
class DiskStat:
    read_ios: int
    read_merges: int
    read_sectors: int
    read_ticks: int  # ms
    write_ios: int
    write_merges: int
    write_sectors: int
    write_ticks: int  # ms
    in_flight: int
    io_ticks: int  # ms the device had I/O in flight
    time_in_queue: int  # ms


_N = len(fields(DiskStat))


def read_stat(dev: str | None, sys_root: str = "/sys") -> DiskStat | None:
    """Parse ``<sys_root>/block/<dev>/stat``; None if absent, unreadable or malformed."""
    if not dev:
        return None
    try:
        with open(os.path.join(sys_root, "block", dev, "stat")) as f:
            values = [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return None
    if len(values) < _N:
        return None
    return DiskStat(*values[:_N])  # discard/flush fields (kernel 4.18+, 5.5+) are not used


class DeviceWindow:
    """Snapshot a device's counters at ``start()`` and ``stop()``; ``result()`` gives deltas."""

    def __init__(self, dev: str | None, sys_root: str = "/sys", clock=time.perf_counter):
        self.dev = dev
        self.sys_root = sys_root
        self._clock = clock
        self._a = self._b = None
        self._ta = self._tb = 0.0

    def start(self) -> None:
        self._a, self._ta = read_stat(self.dev, self.sys_root), self._clock()

    def stop(self) -> None:
        self._b, self._tb = read_stat(self.dev, self.sys_root), self._clock()

    def result(self) -> dict:
        if not self.dev:
            return {"available": False, "reason": "no block device behind the path"}
        if self._a is None or self._b is None:
            return {
                "available": False,
                "device": self.dev,
                "reason": f"{self.sys_root}/block/{self.dev}/stat unreadable or window not run",
            }
        d = {f.name: getattr(self._b, f.name) - getattr(self._a, f.name) for f in fields(DiskStat)}
        if any(v < 0 for k, v in d.items() if k != "in_flight"):
            return {"available": False, "device": self.dev, "reason": "counters went backwards"}
        elapsed = max(self._tb - self._ta, 0.0)
        util = d["io_ticks"] / (elapsed * 1000.0) if elapsed > 0 else None
        return {
            "available": True,
            "device": self.dev,
            "elapsed_s": elapsed,
            "read_bytes": d["read_sectors"] * SECTOR,
            "write_bytes": d["write_sectors"] * SECTOR,
            "read_ios": d["read_ios"],
            "write_ios": d["write_ios"],
            "busy_ms": d["io_ticks"],
            # io_ticks has jiffy granularity, so it can overshoot a short window slightly
            "utilization": None if util is None else min(util, 1.0),
            "read_latency_ms": d["read_ticks"] / d["read_ios"] if d["read_ios"] else None,
            "write_latency_ms": d["write_ticks"] / d["write_ios"] if d["write_ios"] else None,
            "note": NOTE,
        }
