"""Open-loop arrivals: a seeded Poisson schedule (design.md 3a, issue 10 part 4), or a
timestamped trace's own times (``trace_arrivals``, issue 12).

Requests arrive at rate λ (``rate_per_s``, requests per second) whatever the system does, so a
slow drive shows up as queue wait and rejected requests rather than as a lower offered load.
Gaps between arrivals are exponential, ``gap = -ln(1 - u) / λ`` with ``u`` in [0, 1) from the
top 53 bits of the raw PCG64 output of the named stream ``load.arrivals`` (the same raw-bits
approach as ``workload/trace.py``, so the schedule does not move with the numpy version). The
schedule is a pure function of (seed, rate, count or horizon): it is part of the trace.
Times are seconds from the window's start, rounded to microseconds like think times.
"""

from __future__ import annotations

import math

from ..errors import ConfigError
from ..rng import derive
from ..workload.trace import _unit

STREAM = "load.arrivals"
_BATCH = 4096


def _check_rate(rate_per_s) -> None:
    if (isinstance(rate_per_s, bool) or not isinstance(rate_per_s, (int, float))
            or not math.isfinite(rate_per_s) or rate_per_s <= 0):
        raise ConfigError(f"the request rate must be a positive number of requests per second, not "
                          f"{rate_per_s!r}; set --kv-request-rate to e.g. 10, or leave it unset for "
                          "closed-loop users")


def poisson_arrivals(seed: int, rate_per_s: float, count: int | None = None,
                     horizon_s: float | None = None) -> list[float]:
    """Arrival times (seconds, increasing) of a Poisson process of rate ``rate_per_s``.

    Give exactly one of ``count`` (that many arrivals) or ``horizon_s`` (every arrival before
    that time). Raises ``ConfigError`` for a rate that is not a positive finite number, a
    negative count or horizon, or neither/both of them.
    """
    _check_rate(rate_per_s)
    if (count is None) == (horizon_s is None):
        raise ConfigError("give exactly one of count (number of arrivals) or horizon_s (seconds)")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
        raise ConfigError(f"count must be an integer >= 0, not {count!r}")
    if horizon_s is not None and (isinstance(horizon_s, bool) or not isinstance(horizon_s, (int, float))
                                  or not math.isfinite(horizon_s) or horizon_s < 0):
        raise ConfigError(f"horizon_s must be a finite number of seconds >= 0, not {horizon_s!r}")
    bits = derive(seed, STREAM).bit_generator
    times: list[float] = []
    t = 0.0
    while True:
        for raw in bits.random_raw(_BATCH).tolist():
            t += -math.log(1.0 - _unit(raw)) / rate_per_s
            if horizon_s is not None and t >= horizon_s:
                return times
            if count is not None and len(times) >= count:
                return times
            times.append(round(t, 6))


def trace_arrivals(arrival_s: list[float | None], speedup: float, horizon_s: float) -> list[tuple[float, int]]:
    """A timestamped trace's schedule: ``(seconds from the run's start, user index)`` of every
    user whose request arrives before ``horizon_s``, in time order (ties by user index).

    ``arrival_s[u]`` is user u's one request's arrival (``Request.arrival_s``, seconds from the
    trace's first request); times are divided by ``speedup`` (> 0). Raises ConfigError for a
    speed-up that is not a positive finite number or a missing arrival time.
    """
    if isinstance(speedup, bool) or not isinstance(speedup, (int, float)) or not math.isfinite(speedup) or speedup <= 0:
        raise ConfigError(f"--kv-trace-speedup must be a positive number, not {speedup!r}; for example 1 (real time)")
    if any(t is None for t in arrival_s):
        raise ConfigError("every request of a timestamped trace needs its arrival_s")
    schedule = sorted((t / speedup, u) for u, t in enumerate(arrival_s))
    return [(t, u) for t, u in schedule if t < horizon_s]
