"""The session report: a JSON file and the terminal tables.

The JSON keeps the MLPerf reference's key names where they mean the same thing, and says
how every figure was measured (file I/O mode, device counters, window).
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

from . import __version__
from .criteria import render_table

SCHEMA_VERSION = 1
OP_ORDER = ("read", "write", "demote_read", "demote_write", "evict", "delete")


def build_report(session, final: bool) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "pytest-kvcache", "version": __version__},
        "complete": final and not session.interrupted,
        "created_unix": round(time.time(), 3),
        "host": {"node": platform.node(), "python": platform.python_version(), "platform": platform.platform()},
        "model": session.model.to_dict(),
        "settings": session.settings.to_dict(),
        "seed": session.settings.seed,
        "criteria": [c.text for c in session.criteria],
        "scenarios": [r.to_dict() for r in session.results],
    }


def write_json(path: Path, data: dict) -> None:
    """Write atomically: a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".kvcache-report-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, default=str)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _ms(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def tier_table(summary: dict) -> str:
    rows = []
    for tier, ops in summary.get("tiers", {}).items():
        for op in sorted(ops, key=lambda o: OP_ORDER.index(o) if o in OP_ORDER else 99):
            f = ops[op]
            lat = f["latency_ms"]
            moving = op not in ("evict", "delete")
            rows.append([tier, op, f["count"], f"{f['bytes'] / 1e9:.3f}", f"{f['gbps']:.3f}" if moving else "-",
                         _ms(lat.get("p50")), _ms(lat.get("p95")), _ms(lat.get("p99")), _ms(lat.get("max"))])
    return tabulate(rows, headers=["tier", "op", "count", "GB", "GB/s", "p50 ms", "p95 ms", "p99 ms", "max ms"],
                    tablefmt="simple")


def _ratio(dev: dict, kind: str, of: str = "") -> str:
    """``x1.002``, or n/a, and whether it was too small to judge (devstats.compare_with_ours)."""
    value = dev.get(f"{kind}_ratio")
    text = ("x n/a" if value is None else f"x{value:.3f}") + of
    if dev.get(f"{kind}_ratio_reason"):
        text += f", not judged: ours under {dev.get('ratio_floor_bytes', 0) / 2**20:.0f} MiB"
    return text


def scenario_text(result) -> str:
    s = result.summary
    lines = [f"{result.name} [{result.status.upper()}] tiers: {' > '.join(result.tiers)}",
             f"  {result.question}"]
    e2e = s.get("end_to_end_latency_ms", {})
    lines.append(
        f"  requests {s.get('total_requests', 0)} in {s.get('window_s', 0)} s window | "
        f"generated {s.get('total_tokens_per_sec', 0):,.1f} tok/s | "
        f"storage {s.get('storage_throughput_tokens_per_sec', 0):,.1f} tok/s | "
        f"hit rate {s.get('cache_hit_rate', 0) * 100:.1f}% | e2e p95 {_ms(e2e.get('p95'))} ms | "
        f"working set peak {s.get('kv_working_set_peak_bytes', 0) / 1e9:.2f} GB")
    for b in result.backends:
        if "io_mode" in b:
            where = "memory, not a drive" if b.get("medium") == "memory" else b.get("block_device") or "no block device"
            lines.append(f"  {b['tier']}: {b.get('path')} ({b.get('fstype')}, {where}), "
                         f"I/O mode {b['io_mode']}: {b.get('io_mode_reason', '')}")
            if "recycle" in b:
                lines.append(f"  {b['tier']} files: {b.get('files_created', 0)} created, "
                             f"{b.get('files_recycled', 0)} recycled (recycling {'on' if b['recycle'] else 'off'})")
    dev = result.device_counters
    if dev.get("available"):
        util = dev.get("utilization")
        lines.append(f"  device {dev['device']} over the window: read {dev['read_bytes'] / 1e9:.3f} GB "
                     f"({_ratio(dev, 'read', ' of ours')}), write {dev['write_bytes'] / 1e9:.3f} GB "
                     f"({_ratio(dev, 'write')}), busy {'-' if util is None else f'{util * 100:.0f}%'}")
    elif result.backends and any("io_mode" in b for b in result.backends):
        lines.append(f"  device counters: {dev.get('reason', 'unavailable')}")
    table = tier_table(s)
    if table:
        lines.append(table)
    if result.outcomes:
        lines.append(render_table(result.outcomes))
    for problem in result.invariant_problems + result.errors:
        lines.append(f"  ! {problem}")
    return "\n".join(lines)
