"""Decisions of the user-pool autoscaler and the SLA search (issue 11), on measured step figures.

Pure and clock-free, like the rest of ``load``: each policy is fed one measured step at a time
(the users that ran, the storage GB/s and the p95s the recorder saw in that step) and answers
the next user count, a decision and its reason. ``scaling.UserScaler`` measures the steps and
changes the real load.

- ``QosPolicy`` (``--kv-autoscale qos``): holds a target *saturation*, defined as

      saturation = p95 of the SLA metric over the step ÷ the SLA target

  (``--kv-sla-metric``, ``--kv-sla-target-ms``; 1.0 = exactly at the SLA). Below
  ``target - BAND`` it adds users, above ``target + BAND`` it removes them (a quarter of the
  current count, at least one; below half the low mark it doubles them, above twice the high
  mark it halves them), and after any change it holds for ``COOLDOWN_STEPS`` steps so
  the next decision sees the new load settled. The settled count is the last step's users.
- ``CapacityPolicy`` (``--kv-autoscale capacity``): grows users by half (at least one) while
  the storage tier's GB/s over the step rises by more than ``MIN_GAIN`` over the best so far;
  stops after ``STOP_AFTER`` steps that do not, or at the most users. Reports the peak GB/s and
  the users at the peak.
- ``SlaSearch`` (``--kv-autoscale sla-search``): the most users whose step p95 of the SLA metric
  meets the target, the question AIPerf's "adaptive scale" answers for a server in one run
  (raise the load while every SLA window passes; docs.nvidia.com/aiperf, tutorials,
  metrics-analysis/adaptive-scale) and SageMaker's find-max-concurrency search: double from the
  starting count until a step misses the target (or the most users pass), then bisect between
  the last count that met it and the first that missed. The knee is the largest count that met
  it; with noisy short steps a count above the knee may have passed once (the bisection trusts
  each step), so longer intervals give a steadier knee.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..errors import ConfigError

BAND = 0.1  # qos: the low and high marks are the target saturation -/+ this
COOLDOWN_STEPS = 1  # qos: steps held after a change before the next decision
MIN_GAIN = 0.02  # capacity: a step improves on the peak when its GB/s is above peak x (1 + this)
STOP_AFTER = 2  # capacity: stop after this many steps in a row that do not improve
SLA_STATS = {"p50": 50.0, "p95": 95.0, "p99": 99.0}

_METRIC = re.compile(r"^(?:qos\.(?P<cls>[a-z0-9_]+)|(?P<e2e>e2e)|(?P<tier>[a-z0-9_]+)\.(?P<op>[a-z_]+))\.(?P<stat>p\d+)$")


@dataclass(frozen=True)
class SlaMetric:
    """A latency judged per step: ``kind`` "io" (``tier``/``op``; tier "storage" = the
    scenario's storage tier), "e2e" (every request) or "qos" (the requests of class ``cls``);
    ``percentile`` of it in 0..100."""

    text: str
    kind: str
    percentile: float
    tier: str | None = None
    op: str | None = None
    cls: str | None = None


def parse_sla_metric(text: str) -> SlaMetric:
    """Parse ``--kv-sla-metric`` (e.g. ``storage.read.p95``, ``nvme.read.p99``, ``e2e.p95``,
    ``qos.interactive.p95``). Raises ConfigError naming the fix."""
    m = _METRIC.match(str(text).strip())
    if m is None or m["stat"] not in SLA_STATS:
        raise ConfigError(f"--kv-sla-metric {text!r} is not a step latency; write <tier>.<op>.<stat> (tier 'storage' "
                          f"= the storage tier, e.g. storage.read.p95 or nvme.write.p99), e2e.<stat> or "
                          f"qos.<class>.<stat>, with stat one of {', '.join(SLA_STATS)}.")
    pct = SLA_STATS[m["stat"]]
    if m["e2e"]:
        return SlaMetric(text, "e2e", pct)
    if m["cls"]:
        return SlaMetric(text, "qos", pct, cls=m["cls"])
    return SlaMetric(text, "io", pct, tier=m["tier"], op=m["op"])


@dataclass(frozen=True)
class Decision:
    users: int  # the count for the next step
    decision: str  # up, down, hold, stop
    reason: str


def _grow(users: int, fraction: float) -> int:
    return users + max(1, math.ceil(users * fraction))


class QosPolicy:
    """Hold ``target`` saturation (see the module docstring) between 1 and ``max_users``."""

    def __init__(self, target: float, max_users: int, min_users: int = 1):
        self.target, self.max_users, self.min_users = target, max_users, min_users
        self.low, self.high = target - BAND, target + BAND
        self._cooldown = 0

    def decide(self, users: int, saturation: float | None) -> Decision:
        if saturation is None:
            return Decision(users, "hold", "no sample of the SLA metric in this step")
        if self._cooldown:
            self._cooldown -= 1
            return Decision(users, "hold", f"cooldown after a change (saturation {saturation:.2f})")
        if saturation < self.low:
            if users >= self.max_users:
                return Decision(users, "hold", f"saturation {saturation:.2f} < low mark {self.low:.2f} but at the most users")
            self._cooldown = COOLDOWN_STEPS
            far = saturation < self.low / 2
            return Decision(min(self.max_users, _grow(users, 1.0 if far else 0.25)), "up",
                            f"saturation {saturation:.2f} < {'half the ' if far else ''}low mark {self.low:.2f}")
        if saturation > self.high:
            if users <= self.min_users:
                return Decision(users, "hold", f"saturation {saturation:.2f} > high mark {self.high:.2f} but at the fewest users")
            self._cooldown = COOLDOWN_STEPS
            far = saturation > self.high * 2
            cut = users // 2 if far else max(1, math.ceil(users * 0.25))
            return Decision(max(self.min_users, users - cut), "down",
                            f"saturation {saturation:.2f} > {'twice the ' if far else ''}high mark {self.high:.2f}")
        return Decision(users, "hold", f"saturation {saturation:.2f} within [{self.low:.2f}, {self.high:.2f}]")


class CapacityPolicy:
    """Grow users while storage GB/s rises; stop after ``STOP_AFTER`` steps without a gain."""

    def __init__(self, max_users: int):
        self.max_users = max_users
        self.peak_gbps: float | None = None
        self.peak_users: int | None = None
        self._flat = 0

    def decide(self, users: int, gbps: float | None) -> Decision:
        if gbps is not None and (self.peak_gbps is None or gbps > self.peak_gbps * (1 + MIN_GAIN)):
            self.peak_gbps, self.peak_users, self._flat = gbps, users, 0
            why = f"{gbps:.3f} GB/s is a new peak"
        else:
            self._flat += 1
            why = (f"{'no storage bytes' if gbps is None else f'{gbps:.3f} GB/s'} does not improve on the peak "
                   f"{self.peak_gbps or 0:.3f} GB/s by {MIN_GAIN:.0%} ({self._flat} in a row)")
            if self._flat >= STOP_AFTER:
                return Decision(users, "stop", why + f"; peak {self.peak_gbps or 0:.3f} GB/s at {self.peak_users} user{'s' * (self.peak_users != 1)}")
        if users >= self.max_users:
            return Decision(users, "stop", why + "; at the most users (--kv-autoscale-max-users)")
        return Decision(min(self.max_users, _grow(users, 0.5)), "up", why)


class SlaSearch:
    """The most users in 1..``max_users`` whose step p95 meets the target (doubling, then bisecting)."""

    def __init__(self, start: int, max_users: int):
        self.start, self.max_users = start, max_users
        self.lo = 0  # most users that met the target so far (0 = none)
        self.hi: int | None = None  # fewest users that missed it so far
        self.p95_at: dict[int, float | None] = {}

    def record(self, users: int, p95: float | None, target: float) -> Decision:
        """Step figures for ``users``; returns the next count or ``stop`` when the knee is found."""
        self.p95_at[users] = p95
        ok = p95 is not None and p95 <= target
        if ok:
            self.lo = max(self.lo, users)
        else:
            self.hi = users if self.hi is None else min(self.hi, users)
        what = "n/a (no samples)" if p95 is None else f"{p95 * 1e3:.2f} ms"
        why = f"p95 {what} {'meets' if ok else 'misses'} the target {target * 1e3:g} ms"
        nxt = self.next_users()
        if nxt is None:
            return Decision(users, "stop", why + (f"; knee at {self.lo} users" if self.lo else "; no count met it"))
        return Decision(nxt, "up" if nxt > users else "down", why)

    def next_users(self) -> int | None:
        """The next count to try, or None when the search is over."""
        if self.hi is None:
            if self.lo >= self.max_users:
                return None
            return self.start if self.lo == 0 else min(self.max_users, self.lo * 2)
        if self.hi - self.lo <= 1:
            return None
        return (self.lo + self.hi) // 2

    @property
    def knee(self) -> tuple[int | None, float | None]:
        """(most users that met the target, its p95 in s); (None, None) when none did."""
        return (self.lo, self.p95_at[self.lo]) if self.lo else (None, None)
