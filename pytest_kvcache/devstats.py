"""Block device counters (``/sys/class/block/<dev>/stat``) over a measurement window.

The application's own timings can flatter a drive (caching, readahead) or blame it for Python
overhead; the kernel's per-device counters show what the device itself did in the same window,
so the report can put both side by side. They count every I/O on the device, not just ours.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, fields

SECTOR = 512  # /sys/class/block/*/stat counts 512-byte sectors whatever the device's block size

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
    """Parse ``<sys_root>/class/block/<dev>/stat`` (a disk's or a partition's own counters);
    None if absent, unreadable or malformed."""
    if not dev:
        return None
    try:
        with open(os.path.join(sys_root, "class", "block", dev, "stat")) as f:
            values = [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return None
    if len(values) < _N:
        return None
    return DiskStat(*values[:_N])  # discard/flush fields (kernel 4.18+, 5.5+) are not used


class DeviceWindow:
    """Snapshot the counters of one or more devices at ``start()`` and ``stop()``; ``result()``
    gives the deltas summed over the devices (a btrfs file system over several drives).

    ``devices``: names under ``/sys/class/block`` (one name, a list, or None/empty when none was
    found, in which case ``reason`` says why and goes into the result).
    """

    def __init__(self, devices, sys_root: str = "/sys", clock=time.perf_counter,
                 reason: str | None = None, found_by: str | None = None):
        self.devices = [devices] if isinstance(devices, str) else list(devices or ())
        self.dev = "+".join(self.devices) or None  # the label reports show
        self.sys_root = sys_root
        self.reason = reason
        self.found_by = found_by
        self._clock = clock
        self._a: list = []
        self._b: list = []
        self._ta = self._tb = 0.0

    def _snapshot(self) -> list:
        return [read_stat(d, self.sys_root) for d in self.devices]

    def start(self) -> None:
        self._a, self._ta = self._snapshot(), self._clock()

    def stop(self) -> None:
        self._b, self._tb = self._snapshot(), self._clock()

    def _unavailable(self, reason: str) -> dict:
        return {"available": False, "device": self.dev, "devices": self.devices, "reason": reason}

    def result(self) -> dict:
        if not self.devices:
            return self._unavailable(self.reason or "no block device behind the path")
        if not self._a or not self._b:
            return self._unavailable("the window was not run")
        missing = [d for d, a, b in zip(self.devices, self._a, self._b) if a is None or b is None]
        if missing:
            return self._unavailable(", ".join(f"{self.sys_root}/class/block/{d}/stat" for d in missing)
                                     + " unreadable")
        d = {f.name: sum(getattr(b, f.name) - getattr(a, f.name) for a, b in zip(self._a, self._b))
             for f in fields(DiskStat)}
        if any(v < 0 for k, v in d.items() if k != "in_flight"):
            return self._unavailable("counters went backwards")
        elapsed = max(self._tb - self._ta, 0.0)
        # the busiest device's share of the window: several drives are as busy as the busiest
        busiest = max(b.io_ticks - a.io_ticks for a, b in zip(self._a, self._b))
        util = busiest / (elapsed * 1000.0) if elapsed > 0 else None
        out = {
            "available": True,
            "device": self.dev,
            "devices": self.devices,
            "elapsed_s": elapsed,
            "read_bytes": d["read_sectors"] * SECTOR,
            "write_bytes": d["write_sectors"] * SECTOR,
            "read_ios": d["read_ios"],
            "write_ios": d["write_ios"],
            "busy_ms": busiest,
            # io_ticks has jiffy granularity, so it can overshoot a short window slightly
            "utilization": None if util is None else min(util, 1.0),
            "read_latency_ms": d["read_ticks"] / d["read_ios"] if d["read_ios"] else None,
            "write_latency_ms": d["write_ticks"] / d["write_ios"] if d["write_ios"] else None,
            "note": NOTE,
        }
        if self.found_by:
            out["found_by"] = self.found_by
        return out


#: Below this many bytes of ours in one direction over the window, the device ÷ ours ratio is not
#: judged: a few I/Os in flight at the window's edges, or other processes' I/O, would swing it.
RATIO_FLOOR_BYTES = 64 * 2**20


EDGE_MULTIPLE = 10
"""A direction's ratio is judged only when our bytes are at least this many times the bytes of
transfers in flight at the window's edges (which the counters may or may not have seen)."""


def compare_with_ours(counters: dict, ours: dict[str, int], floor: int = RATIO_FLOOR_BYTES,
                      edge_bytes: dict[str, int] | None = None) -> dict[str, float]:
    """Put our window bytes per direction (``ours``: {"read": n, "write": n}) beside the device's.

    Adds ``app_<dir>_bytes`` and ``<dir>_ratio`` (device bytes ÷ ours, None when ours is 0) to
    ``counters`` (an available ``DeviceWindow.result()``), and ``<dir>_ratio_reason`` where ours
    is under ``floor`` bytes or under ``EDGE_MULTIPLE`` times that direction's ``edge_bytes``.
    Returns the ratios that can be judged, as the flat metrics ``device.<dir>_ratio``; a
    direction that cannot be judged is absent (n/a).
    """
    metrics = {}
    edge_bytes = edge_bytes or {}
    counters["ratio_floor_bytes"] = floor
    for kind, nbytes in ours.items():
        ratio = counters[f"{kind}_bytes"] / nbytes if nbytes else None
        counters[f"app_{kind}_bytes"] = nbytes
        counters[f"{kind}_ratio"] = None if ratio is None else round(ratio, 4)
        need = max(floor, EDGE_MULTIPLE * edge_bytes.get(kind, 0))
        if nbytes >= need:
            metrics[f"device.{kind}_ratio"] = ratio
        else:
            verb = {"read": "read", "write": "wrote"}.get(kind, kind)
            why = "needed" if need == floor else f"needed against {edge_bytes[kind] / 2**20:.1f} MiB in flight at the window's edges"
            counters[f"{kind}_ratio_reason"] = (f"not judged: we {verb} {nbytes / 2**20:.1f} MiB in the window, "
                                                f"under the {need / 2**20:.0f} MiB {why}")
    return metrics
