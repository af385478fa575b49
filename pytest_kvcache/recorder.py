"""Every I/O and request of a run, kept in bounded memory.

Bytes count as each *transfer* of an I/O completes inside the window (a 32 MiB chunk written
in 4 MiB transfers adds 4 MiB at a time), so a window that is short against the time one chunk
takes under load is not under-counted; an I/O's count and latency go to the window when the
whole I/O completes inside it. Transfers that were in flight at the window's opening or closing
are summed as ``edge_bytes``: the uncertainty of every byte figure (design section 5). Only data
ops (``ops.DATA_OPS``) move bytes; deletes and evictions are counts and latencies. I/O outside
the window (warm-up, drain) only feeds the run totals. Latency samples are kept exactly up to
a cap per series and by reservoir sampling beyond it, so memory does not grow with the run.
"""

from __future__ import annotations

import random
import threading
import time
import zlib
from array import array
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from .backends.base import IOResult
from .ops import DATA_OPS

PERCENTILES = {"p50": 50.0, "p95": 95.0, "p99": 99.0, "p999": 99.9}
SAMPLE_CAP = 100_000
QOS_TIMINGS = ("e2e", "queue_wait", "ttft")  # the request timings kept per QoS class
NO_IDLE_USER = "no_idle_user"  # an open-loop arrival that found every user busy (``Recorder.arrival``)


class Series:
    """Count, sum, min, max and a capped reservoir of samples (nanoseconds)."""

    __slots__ = ("count", "total", "min", "max", "samples", "_rng", "_cap")

    def __init__(self, cap: int = SAMPLE_CAP, seed: int = 0):
        self.count = 0
        self.total = 0
        self.min = None
        self.max = None
        self.samples = array("q")
        self._cap = cap
        self._rng = random.Random(seed)

    def add(self, value: int) -> None:
        self.count += 1
        self.total += value
        if self.min is None or value < self.min:
            self.min = value
        if self.max is None or value > self.max:
            self.max = value
        if len(self.samples) < self._cap:
            self.samples.append(value)
        else:
            j = self._rng.randrange(self.count)
            if j < self._cap:
                self.samples[j] = value

    @property
    def exact(self) -> bool:
        return self.count <= self._cap

    def stats(self) -> dict:
        """Seconds. Percentiles are exact while every sample is kept (``exact``)."""
        if not self.count:
            return {"count": 0}
        arr = np.frombuffer(self.samples, dtype=np.int64) / 1e9
        out = {"count": self.count, "mean": self.total / self.count / 1e9,
               "min": self.min / 1e9, "max": self.max / 1e9}
        for name, q in PERCENTILES.items():
            out[name] = float(np.percentile(arr, q))
        out["exact"] = self.exact
        return out

    def quantiles_ms(self, points: int = 101) -> list[float]:
        """Latency at evenly spaced quantiles 0..100%: enough to draw a CDF from a saved report."""
        if not self.count:
            return []
        arr = np.frombuffer(self.samples, dtype=np.int64) / 1e6
        return [round(float(v), 4) for v in np.percentile(arr, np.linspace(0, 100, points))]

    def seconds(self) -> list[float]:
        return [v / 1e9 for v in self.samples]


@dataclass
class OpTotals:
    """One (tier, op) inside the window: I/Os completed, bytes and tokens moved, edge bytes."""

    count: int = 0
    bytes: int = 0  # data ops only: bytes of transfers that completed inside the window
    tokens: float = 0.0  # KV tokens those bytes hold (an entry's tokens pro rata to its bytes)
    edge_bytes: int = 0  # bytes of transfers in flight at the window's opening or closing
    latency: Series = field(default_factory=Series)


class StepFigures:
    """What completed during one autoscaler step (``Recorder.begin_step`` .. ``end_step``):
    data-op bytes per (tier, op) of transfers that completed in it, latencies of I/Os that
    completed in it, and the e2e latency of requests that finished in it (all, and per QoS
    class). Its own window, independent of the scenario's."""

    def __init__(self, start_ns: int):
        self.start_ns, self.end_ns = start_ns, None
        self.bytes: dict[tuple[str, str], int] = {}
        self.io: dict[tuple[str, str], Series] = {}
        self.e2e = Series(seed=1)
        self.qos_e2e: dict[str, Series] = {}
        self.requests = 0

    @property
    def seconds(self) -> float:
        return ((self.end_ns or time.perf_counter_ns()) - self.start_ns) / 1e9

    def gbps(self, tier: str) -> float | None:
        """Data-op GB/s of ``tier`` over the step; None when nothing moved (no figure, not 0)."""
        moved = sum(n for (t, _), n in self.bytes.items() if t == tier)
        return moved / self.seconds / 1e9 if moved and self.seconds > 0 else None

    def percentile(self, series: Series | None, pct: float) -> float | None:
        """``pct`` percentile of ``series`` in seconds; None without samples."""
        if series is None or not series.count:
            return None
        return float(np.percentile(np.frombuffer(series.samples, dtype=np.int64) / 1e9, pct))


class Progress(NamedTuple):
    """The window so far, for a live display: I/Os of every op, bytes of data ops, seconds."""

    ops: int
    data_bytes: int
    window_s: float


class Recorder:
    """Thread-safe sink for I/O, request and cache-lookup events of one scenario run."""

    def __init__(self, timeline_step_s: float = 1.0):
        self._lock = threading.Lock()
        self.window_start_ns: int | None = None
        self.window_end_ns: int | None = None
        self.window: dict[tuple[str, str], OpTotals] = {}
        self.total: dict[tuple[str, str], list[int]] = {}  # (tier, op) -> [count, bytes] whole run
        self.requests: dict[str, Series] = {}
        self.counters: dict[str, int] = {}  # inside the window (requests, tokens)
        self.run_counters: dict[str, int] = {}  # the whole run, warm-up and drain included
        # kind -> [hit blocks, missed blocks, hit tokens, missed tokens] inside the window
        self.lookups: dict[str, list[int]] = {}
        self.tier_hits: dict[tuple[str, str], int] = {}  # (tier, kind) -> hit tokens it served, in the window
        self.timeline_step_ns = int(timeline_step_s * 1e9)
        self.timeline: dict[str, list[int]] = {}  # tier -> data-op bytes completed per step of the window
        self.errors: list[str] = []
        self.error_count = 0
        self.occupancy: list[tuple[float, dict]] = []  # (seconds into the window, {tier: bytes})
        # per QoS class, inside the window: e2e / queue_wait / ttft series of finished requests,
        # how many finished within the class's p95 target, and open-loop arrivals [offered, rejected]
        self.sla_targets_ns: dict[str, int] = {}
        self.qos_requests: dict[str, dict[str, Series]] = {}
        self.qos_within: dict[str, int] = {}
        self.arrivals: dict[str, list[int]] = {}
        self._step: StepFigures | None = None  # the autoscaler's step being measured
        self.io_log = None  # --kv-io-trace: an iotrace.IOLog that keeps every I/O (set before the run)

    def begin_step(self, t_ns: int | None = None) -> None:
        """Start measuring an autoscaler step at ``t_ns`` (now): ``StepFigures``."""
        with self._lock:
            self._step = StepFigures(time.perf_counter_ns() if t_ns is None else t_ns)

    def end_step(self, t_ns: int | None = None) -> StepFigures | None:
        """End the step begun last (None if none) at ``t_ns`` (now) and return its figures."""
        with self._lock:
            step, self._step = self._step, None
        if step is not None:
            step.end_ns = time.perf_counter_ns() if t_ns is None else t_ns
        return step

    def set_sla_targets(self, p95_s: dict[str, float]) -> None:
        """Each QoS class's p95 target in seconds: a finished request within it counts toward
        the class's SLA compliance (``qos_within``), exactly, whatever the reservoir keeps."""
        with self._lock:
            self.sla_targets_ns = {name: round(t * 1e9) for name, t in p95_s.items()}

    # -- window ---------------------------------------------------------------
    def open_window(self, t_ns: int | None = None) -> None:
        with self._lock:
            self.window_start_ns = time.perf_counter_ns() if t_ns is None else t_ns

    def close_window(self, t_ns: int | None = None) -> None:
        with self._lock:
            self.window_end_ns = time.perf_counter_ns() if t_ns is None else t_ns

    def in_window(self, t_ns: int) -> bool:
        start, end = self.window_start_ns, self.window_end_ns
        return start is not None and t_ns >= start and (end is None or t_ns <= end)

    @property
    def window_s(self) -> float:
        if self.window_start_ns is None:
            return 0.0
        end = self.window_end_ns if self.window_end_ns is not None else time.perf_counter_ns()
        return (end - self.window_start_ns) / 1e9

    def progress(self) -> Progress:
        """I/Os (every op), bytes moved (``DATA_OPS`` only) and seconds of the window so far.

        Read under the recorder's lock, so it is safe to call while user threads record
        (iterating ``window`` without it can raise "dictionary changed size during iteration").
        """
        with self._lock:
            ops = sum(w.count for w in self.window.values())
            data_bytes = sum(w.bytes for (_, op), w in self.window.items() if op in DATA_OPS)
            return Progress(ops, data_bytes, self.window_s)

    # -- events ---------------------------------------------------------------
    def io(self, tier: str, op: str, res: IOResult, tokens: int, cache_key: str = "") -> None:
        """Record one completed backend I/O of ``tokens`` KV tokens of entry ``cache_key`` (see the
        module docstring); with ``io_log`` set, also keep it there for the I/O trace."""
        key = (tier, op)
        moves_bytes = op in DATA_OPS
        parts = res.parts() if moves_bytes else ()
        with self._lock:
            if self.io_log is not None:
                self.io_log.add(tier, op, res, cache_key)
            tot = self.total.setdefault(key, [0, 0])
            tot[0] += res.complete  # a cut I/O (errors.IOCut) adds its bytes, not a count
            tot[1] += res.nbytes if moves_bytes else 0
            step = self._step
            if step is not None:
                moved = sum(n for _, end, n in parts if end >= step.start_ns)
                if moved:
                    step.bytes[key] = step.bytes.get(key, 0) + moved
                if res.complete and res.end_ns >= step.start_ns:
                    step.io.setdefault(key, Series(cap=20_000)).add(res.dur_ns)
            ws, we = self.window_start_ns, self.window_end_ns
            if ws is None:
                return
            inside = edge = 0
            steps = []
            for start, end, n in parts:
                if end >= ws and (we is None or end <= we):
                    inside += n
                    steps.append(((end - ws) // self.timeline_step_ns, n))
                if start < ws < end or (we is not None and start < we < end):
                    edge += n
            completed = res.complete and self.in_window(res.end_ns)  # a cut I/O never completed
            if not (completed or inside or edge):
                return
            w = self.window.get(key)
            if w is None:
                w = self.window[key] = OpTotals(latency=Series(seed=zlib.crc32(f"{tier}.{op}".encode())))
            if completed:
                w.count += 1
                w.latency.add(res.dur_ns)
            if inside:
                w.bytes += inside
                w.tokens += tokens * inside / res.nbytes
                line = self.timeline.setdefault(tier, [])
                for step, n in steps:
                    while len(line) <= step:
                        line.append(0)
                    line[step] += n
            w.edge_bytes += edge

    def lookup(self, kind: str, hit: bool, t_ns: int, tokens: int = 0, blocks: int = 1,
               tier: str | None = None) -> None:
        """One looked-up block (or part of one) of lookup ``kind`` holding ``tokens``, found and
        read back (``hit``, from ``tier`` when given) or not, at ``t_ns``; counted only inside
        the window. A block whose tokens span kinds is recorded once per kind, with ``blocks=1``
        for the kind of its first token and ``blocks=0`` for the others."""
        with self._lock:
            if self.in_window(t_ns):
                counts = self.lookups.setdefault(kind, [0, 0, 0, 0])
                counts[0 if hit else 1] += blocks
                counts[2 if hit else 3] += tokens
                if hit and tier is not None:
                    self.tier_hits[(tier, kind)] = self.tier_hits.get((tier, kind), 0) + tokens

    def request(self, end_ns: int, timings: dict[str, int], counters: dict[str, int],
                qos: str | None = None) -> None:
        """One finished request: ``timings`` in ns (e2e, queue_wait, ...), ``counters`` summed;
        with its QoS class ``qos``, its e2e, queue wait and TTFT count for the class too."""
        with self._lock:
            step = self._step
            if step is not None and end_ns >= step.start_ns and "e2e" in timings:
                step.requests += 1
                step.e2e.add(timings["e2e"])
                if qos is not None:
                    step.qos_e2e.setdefault(qos, Series(cap=20_000)).add(timings["e2e"])
            if not self.in_window(end_ns):
                return
            for name, value in timings.items():
                series = self.requests.get(name)
                if series is None:
                    series = self.requests[name] = Series(seed=len(self.requests))
                series.add(value)
            for name, value in counters.items():
                self.counters[name] = self.counters.get(name, 0) + value
            if qos is not None:
                per = self.qos_requests.setdefault(qos, {})
                for name in QOS_TIMINGS:
                    if name in timings:
                        if name not in per:
                            per[name] = Series(seed=zlib.crc32(f"{qos}.{name}".encode()))
                        per[name].add(timings[name])
                target = self.sla_targets_ns.get(qos)
                if target is not None and timings.get("e2e", target + 1) <= target:
                    self.qos_within[qos] = self.qos_within.get(qos, 0) + 1

    def arrival(self, qos: str, rejected: bool, t_ns: int) -> None:
        """One open-loop arrival at ``t_ns`` of class ``qos`` (or a reason such as
        ``no_idle_user`` when it carried no request), refused when ``rejected``; inside the
        window only."""
        with self._lock:
            if self.in_window(t_ns):
                pair = self.arrivals.setdefault(qos, [0, 0])
                pair[0] += 1
                pair[1] += rejected

    def sample_occupancy(self, used: dict[str, int], t_ns: int | None = None) -> None:
        """At most one sample per timeline step, inside the window."""
        t_ns = time.perf_counter_ns() if t_ns is None else t_ns
        with self._lock:
            if not self.in_window(t_ns) or self.window_end_ns is not None:
                return
            t = (t_ns - self.window_start_ns) / 1e9
            if self.occupancy and t - self.occupancy[-1][0] < self.timeline_step_ns / 1e9:
                return
            self.occupancy.append((round(t, 3), dict(used)))

    def count(self, name: str, n: int = 1) -> None:
        """A whole-run event count (demotions, evictions, full tiers, drops)."""
        with self._lock:
            self.run_counters[name] = self.run_counters.get(name, 0) + n

    def error(self, message: str) -> None:
        with self._lock:
            self.error_count += 1
            if len(self.errors) < 20:
                self.errors.append(message)
