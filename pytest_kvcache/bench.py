"""Bridge to pytest-benchmark: replay a scenario's measured latencies into ``benchmark``.

pytest-benchmark times rounds with its timer; we give it a timer that returns 0, s1, 0, s2, ...
so that round i's ``end - start`` is exactly the i-th recorded latency and its statistics are
computed from our samples. Saved runs then compare between drives with ``--benchmark-compare``
and ``--benchmark-compare-fail``. pytest-benchmark has no percentiles: P95 gates are criteria.
"""

from __future__ import annotations

from . import ops
from .result import ScenarioResult


class ReplayTimer:
    """A timer for pytest-benchmark that replays recorded durations (seconds)."""

    __name__ = "kvcache.recorded_io_latency"

    def __init__(self, samples: list[float]):
        self._values = iter([v for s in samples for v in (0.0, s)])

    def __call__(self) -> float:
        return next(self._values)

    def __repr__(self) -> str:
        return self.__name__


def headline_op(result: ScenarioResult) -> tuple[str, str] | None:
    """The (tier, op) whose latencies stand for the scenario (``ops.headline_op``)."""
    return ops.headline_op(result.tiers, lambda tier, op: bool(result.samples.get((tier, op))))


def extra_info(result: ScenarioResult) -> dict:
    """The summary's headline figures (as every other renderer shows them) and each (tier, op)."""
    info = {f"kv_{key}": value for key, value in (result.summary.get("headline") or {}).items()}
    info["kv_trace_sha256"] = result.trace.get("sha256", "")
    for tier, ops_ in result.summary.get("tiers", {}).items():
        for op, f in ops_.items():
            lat = f["latency_ms"]
            info[f"{tier}.{op}"] = {"p50_ms": lat.get("p50"), "p95_ms": lat.get("p95"), "p99_ms": lat.get("p99"),
                                    "gbps": f.get("gbps"), "iops": f["iops"], "count": f["count"]}
    return info


def feed(benchmark, result: ScenarioResult) -> tuple[str, str] | None:
    """Replay the headline op's latencies into ``benchmark``; returns which (tier, op) it used."""
    benchmark.extra_info.update(extra_info(result))
    picked = headline_op(result)
    if picked is None:
        return None
    benchmark.extra_info["kv_headline"] = f"{picked[0]}.{picked[1]} latency (seconds per I/O)"
    samples = result.samples[picked]
    saved = benchmark._timer
    benchmark._timer = ReplayTimer(samples)
    try:
        benchmark.pedantic(lambda: None, rounds=len(samples), iterations=1, warmup_rounds=0)
    finally:
        benchmark._timer = saved
    return picked
