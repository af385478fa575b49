"""The I/O trace (``--kv-io-trace PATH``): every backend I/O of a scenario as CSV, so fio, warp,
sai3-bench or another tool can replay the storage side of the run.

Columns are the MLPerf reference's (``kv_cache/tracer.py`` of mlcommons/storage, its
``--io-trace-log``), plus one of ours at the end, so tools that read the reference's six
columns by name or by position read ours too:

- ``Timestamp``: when the I/O started, Unix epoch seconds with 6 decimals (our clock is
  ``perf_counter_ns``; one wall-clock offset taken when the log is made converts it);
- ``Operation``: ``Read`` (read, demote_read), ``Write`` (write, demote_write) or ``Delete``
  (evict, delete: no bytes; the reference has no such rows, filter them out to match it);
- ``Object_Size_Bytes``: bytes the I/O moved (padded to the medium's alignment, as measured;
  0 for a delete; a transfer cut as the run ended counts what it moved);
- ``Tier``: the reference's labels ``Tier-0`` (gpu), ``Tier-1`` (cpu), ``Tier-2`` (nvme); other
  tiers by name;
- ``Key``: the KV block's cache key (24 hex digits, or ``<conversation>.tail``), sanitized to
  ``[A-Za-z0-9._-]`` and never ``.``, ``..`` or starting with ``-``, so it is safe as a file or
  object name in a replay tool;
- ``Phase``: as the reference uses it, the role of the op, not a request stage: ``Prefill``
  (writes: the KV a prefill stores), ``Decode`` (reads: KV loaded for generation), ``Evict``
  (demotions and deletions);
- ``Window``: ours: ``warmup``, ``window`` or ``drain`` by when the I/O completed, the rule
  the figures use (only ``window`` rows count toward throughput).

Rows are sorted by Timestamp. Writing never slows the measured I/O: the recorder appends a
compact record (three int64, one byte, a reference to the key string: about 40 bytes, plus
the key when the cache has dropped it) to preallocated-growth arrays under the lock it holds
anyway; the file is written after the run, before the result is built. At most ``CAP``
records are kept (about 100 MB); beyond it I/Os are counted as ``dropped`` and the report
says the file is incomplete. ``.gz`` is gzip (stdlib); ``.zst`` needs the ``zstandard`` package.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import os
import re
import time
from array import array
from pathlib import Path

import numpy as np

from .backends.base import IOResult
from .errors import ConfigError

COLUMNS = ("Timestamp", "Operation", "Object_Size_Bytes", "Tier", "Key", "Phase", "Window")
CAP = 2_000_000
TIER_LABELS = {"gpu": "Tier-0", "cpu": "Tier-1", "nvme": "Tier-2"}
_OPS = ("read", "write", "demote_read", "demote_write", "evict", "delete")
_OPERATION = {"read": "Read", "demote_read": "Read", "write": "Write", "demote_write": "Write",
              "evict": "Delete", "delete": "Delete"}
_PHASE = {"read": "Decode", "write": "Prefill", "demote_read": "Evict", "demote_write": "Evict",
          "evict": "Evict", "delete": "Evict"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_written: set[Path] = set()  # files this process wrote: a later scenario never overwrites one


def sanitize_key(key: str) -> str:
    """``key`` safe as a file or object name and a CSV field: other characters become ``_``;
    an empty name, ``.``, ``..`` or a leading ``-`` gets a ``k`` in front."""
    out = _UNSAFE.sub("_", str(key))
    return "k" + out if out in ("", ".", "..") or out.startswith("-") else out


def check_io_trace_path(path: str | Path) -> None:
    """ConfigError naming the fix when the file cannot be compressed as its suffix asks."""
    if str(path).endswith(".zst"):
        try:
            import zstandard  # noqa: F401
        except ImportError:
            raise ConfigError(f"--kv-io-trace {path}: a .zst file needs the zstandard package; install it "
                              "(pip install zstandard) or name the file .csv.gz (gzip, no package needed).") from None


class IOLog:
    """Compact records of every I/O, appended by ``Recorder.io`` under its lock."""

    def __init__(self, cap: int = CAP):
        self.offset_ns = time.time_ns() - time.perf_counter_ns()  # perf_counter -> Unix epoch
        self.cap = cap
        self.start = array("q")
        self.end = array("q")
        self.nbytes = array("q")
        self.code = array("B")  # tier index * 8 + op index
        self.keys: list[str] = []
        self.tiers: list[str] = []
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, tier: str, op: str, res: IOResult, key: str) -> None:
        if len(self.keys) >= self.cap:
            self.dropped += 1
            return
        try:
            t = self.tiers.index(tier)
        except ValueError:
            self.tiers.append(tier)
            t = len(self.tiers) - 1
        self.start.append(res.end_ns - res.dur_ns if res.start_ns is None else res.start_ns)
        self.end.append(res.end_ns)
        self.nbytes.append(res.nbytes if _OPERATION[op] != "Delete" else 0)
        self.code.append(t * 8 + _OPS.index(op))
        self.keys.append(key)

    def rows(self, window_start_ns: int | None, window_end_ns: int | None):
        """The CSV rows (without the header) in Timestamp order."""
        order = np.argsort(np.frombuffer(self.start, dtype=np.int64), kind="stable") if self.keys else []
        labels = [TIER_LABELS.get(t, sanitize_key(t)) for t in self.tiers]
        for i in order:
            i = int(i)
            code, end = self.code[i], self.end[i]
            op = _OPS[code % 8]
            where = ("warmup" if window_start_ns is None or end < window_start_ns else
                     "drain" if window_end_ns is not None and end > window_end_ns else "window")
            yield (f"{(self.start[i] + self.offset_ns) / 1e9:.6f}", _OPERATION[op], self.nbytes[i],
                   labels[code // 8], sanitize_key(self.keys[i]), _PHASE[op], where)


def output_path(base: str | Path, scenario: str) -> Path:
    """``base`` with the scenario's name before the suffixes (``io.csv.gz`` -> ``io.<scenario>.csv.gz``),
    and ``-2``, ``-3`` ... after it when this process wrote that file already (trials, a second test)."""
    base = Path(base)
    name, tail = base.name, ""
    for suffix in (".gz", ".zst", ".csv"):
        if name.endswith(suffix) and len(name) > len(suffix):
            name, tail = name[:-len(suffix)], suffix + tail
    label = re.sub(r"[^A-Za-z0-9._+-]", "_", scenario)
    path, n = base.with_name(f"{name}.{label}{tail}"), 1
    while path in _written:
        n += 1
        path = base.with_name(f"{name}.{label}-{n}{tail}")
    return path


def _open_out(path: Path, name: str):
    """``path`` for writing text, compressed as ``name``'s suffix asks."""
    if name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "wb", compresslevel=1), encoding="utf-8", newline="")
    if name.endswith(".zst"):
        import zstandard

        raw = path.open("wb")
        return io.TextIOWrapper(zstandard.ZstdCompressor(level=3).stream_writer(raw), encoding="utf-8", newline="")
    return path.open("w", encoding="utf-8", newline="")


def write_io_trace(log: IOLog, base: str | Path, scenario: str, window_start_ns: int | None,
                   window_end_ns: int | None) -> dict:
    """Write the log as CSV (``output_path``) after the run; the report's ``run.io_trace``.

    Written to ``<file>.part`` and renamed, so a failed write leaves no partial file: the
    returned dict then has ``error`` (the cause and the fix) instead of raising.
    """
    path = output_path(base, scenario)
    part = path.with_name(path.name + ".part")
    t = time.perf_counter()
    info = {"path": str(path), "records": len(log), "dropped": log.dropped, "columns": list(COLUMNS),
            "complete": log.dropped == 0, "write_s": None, "error": None}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _open_out(part, path.name) as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(COLUMNS)
            writer.writerows(log.rows(window_start_ns, window_end_ns))
        os.replace(part, path)
    except OSError as exc:
        with contextlib.suppress(OSError):  # the partial file, if it was made at all
            part.unlink(missing_ok=True)
        info.update(path=None, error=f"cannot write the I/O trace {path}: {exc.strerror or exc}; choose a writable "
                                     "--kv-io-trace path with room for it")
        return info
    _written.add(path)
    info["write_s"] = round(time.perf_counter() - t, 3)
    info["bytes"] = path.stat().st_size
    return info
