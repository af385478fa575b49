"""A bounded admission queue ordered by QoS class, then arrival, with aging (design.md 3a).

``offer`` puts a request in the queue, or refuses it when ``depth`` requests already wait:
a refused request is counted per class (a figure for the report, not an error), and the queue
never grows past its bound. ``take`` hands out the waiting request with the best *effective
priority*, then the earliest arrival: a request's class priority (0 = interactive first) less
one for every full ``aging_s`` seconds it has waited, never below 0, so a waiting batch request
reaches the interactive level after ``2 * aging_s`` and cannot starve (the reference serves a
plain priority queue, where it can). Ties are broken by an arrival sequence number: request
objects are never compared.

``max_in_service`` bounds how many taken requests are being served at once (``release`` frees
one); ``take`` waits for both a request and a free place, so a place that frees up always goes
to the best request waiting at that moment. MLPerf's ``--max-concurrent-allocs`` bounds cache
allocations the same way; a runner can bound those with a ``threading.BoundedSemaphore``.

Time: the queue never reads a clock. ``clock`` (seconds, monotonic) is injected by the caller,
the runner's own clock in a run and a fake one in tests. All methods are thread-safe.

Within one class requests wait in a FIFO, so the head of each class is its oldest and most
aged request: ``take`` compares only the class heads (cost O(number of classes)).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .qos import DEFAULT_QOS

DEFAULT_MAX_IN_SERVICE = 256
"""Requests in service when ``--kv-max-inflight`` is 0: at most this many (fewer with fewer
users). vLLM's scheduler serves at most ``max_num_seqs`` sequences at once, 256 by default
(``vllm.config.SchedulerConfig.max_num_seqs``)."""


def workers_for(users: int, max_inflight: int) -> int:
    """Worker threads of a run, i.e. the most requests in service at once: ``max_inflight``, or
    when it is 0, ``min(users, DEFAULT_MAX_IN_SERVICE)``."""
    return max_inflight if max_inflight > 0 else max(1, min(users, DEFAULT_MAX_IN_SERVICE))


@dataclass(frozen=True, slots=True)
class Admitted:
    """A request handed out by ``take``: times in the injected clock's seconds."""

    item: Any
    qos: str
    seq: int
    arrival_s: float
    taken_s: float

    @property
    def wait_s(self) -> float:
        """Queue wait: part of the request's end-to-end latency."""
        return self.taken_s - self.arrival_s


class AdmissionQueue:
    """Bounded, class-ordered, aging admission queue with a bound on requests in service.

    ``depth``: most requests waiting (>= 1). ``aging_s``: seconds of waiting per class step
    up (None or 0 = no aging). ``max_in_service``: most taken and not yet released requests
    (0 = no bound). ``priorities``: class name -> priority (0 first); defaults to the QoS
    classes. Raises ``ConfigError`` for bad settings and for a request of an unknown class.
    """

    def __init__(self, depth: int, clock: Callable[[], float], aging_s: float | None = None,
                 max_in_service: int = 0, priorities: Mapping[str, int] | None = None) -> None:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ConfigError(f"the admission queue depth must be an integer >= 1, not {depth!r}; "
                              "set --kv-queue-depth (requests beyond it are rejected and counted)")
        if aging_s is not None and (isinstance(aging_s, bool) or not isinstance(aging_s, (int, float))
                                    or not math.isfinite(aging_s) or aging_s < 0):
            raise ConfigError(f"aging_s must be a number of seconds >= 0 (0 = no aging), not {aging_s!r}")
        if isinstance(max_in_service, bool) or not isinstance(max_in_service, int) or max_in_service < 0:
            raise ConfigError(f"max_in_service must be an integer >= 0 (0 = no bound), not {max_in_service!r}")
        prio = dict(priorities) if priorities is not None else {n: c.priority for n, c in DEFAULT_QOS.items()}
        if not prio or any(isinstance(p, bool) or not isinstance(p, int) or p < 0 for p in prio.values()):
            raise ConfigError(f"priorities must map class names to integers >= 0, not {priorities!r}")
        self.depth = depth
        self.aging_s = aging_s or None
        self.max_in_service = max_in_service
        self._clock = clock
        self._prio = prio
        self._queues: dict[str, deque] = {name: deque() for name in sorted(prio, key=prio.__getitem__)}
        self._cond = threading.Condition(threading.Lock())
        self._seq = 0
        self._waiting = 0
        self._in_service = 0
        self._closed = False
        self.offered = dict.fromkeys(prio, 0)
        self.rejected = dict.fromkeys(prio, 0)
        self.admitted = dict.fromkeys(prio, 0)
        self.peak_waiting = 0
        self.peak_in_service = 0

    # -- producer -------------------------------------------------------------------------
    def offer(self, item: Any, qos: str) -> bool:
        """Queue ``item`` of class ``qos``; False (and one more rejection) when full.

        After ``close`` (the window is over) it returns False and counts nothing: a request
        offered then is not part of the measurement.
        """
        if qos not in self._prio:
            raise ConfigError(f"unknown QoS class {qos!r}; the queue knows {list(self._queues)}")
        with self._cond:
            if self._closed:
                return False
            self.offered[qos] += 1
            if self._waiting >= self.depth:
                self.rejected[qos] += 1
                return False
            self._queues[qos].append((self._seq, self._clock(), item))
            self._seq += 1
            self._waiting += 1
            self.peak_waiting = max(self.peak_waiting, self._waiting)
            self._cond.notify_all()
            return True

    # -- consumers ------------------------------------------------------------------------
    def effective_priority(self, qos: str, waited_s: float) -> int:
        """The class priority less one per full ``aging_s`` waited, never below 0."""
        base = self._prio[qos]
        if self.aging_s is None or waited_s <= 0:
            return base
        return max(0, base - int(waited_s // self.aging_s))

    def _pick(self, now: float) -> str | None:
        best = None
        for name, q in self._queues.items():
            if q:
                seq, arrival, _ = q[0]
                rank = (self.effective_priority(name, now - arrival), seq)
                if best is None or rank < best[0]:
                    best = (rank, name)
        return None if best is None else best[1]

    def take(self, timeout: float | None = None) -> Admitted | None:
        """The best waiting request once a place in service is free; None on timeout or close.

        ``timeout`` in seconds (None = wait as long as it takes). The caller must ``release``
        every request it got, when its service ends.
        """
        with self._cond:
            ready = self._cond.wait_for(
                lambda: self._closed or (self._waiting and (not self.max_in_service or self._in_service < self.max_in_service)),
                timeout)
            if not ready or self._closed:
                return None
            now = self._clock()
            name = self._pick(now)
            seq, arrival, item = self._queues[name].popleft()
            self._waiting -= 1
            self._in_service += 1
            self.peak_in_service = max(self.peak_in_service, self._in_service)
            self.admitted[name] += 1
            return Admitted(item, name, seq, arrival, now)

    def release(self) -> None:
        """End the service of one taken request, freeing its place."""
        with self._cond:
            if self._in_service == 0:
                raise RuntimeError("release() without a matching take()")
            self._in_service -= 1
            self._cond.notify_all()

    def close(self) -> list[Any]:
        """Stop: waiting and future ``take`` calls return None, ``offer`` refuses. Returns the
        requests still waiting (in arrival order), which were never admitted."""
        with self._cond:
            self._closed = True
            left = sorted((e for q in self._queues.values() for e in q), key=lambda e: e[0])
            for q in self._queues.values():
                q.clear()
            self._waiting = 0
            self._cond.notify_all()
            return [item for _, _, item in left]

    # -- figures --------------------------------------------------------------------------
    @property
    def waiting(self) -> int:
        with self._cond:
            return self._waiting

    @property
    def in_service(self) -> int:
        with self._cond:
            return self._in_service

    def counts(self) -> dict:
        """Per class offered/admitted/rejected, plus the peaks: for the report."""
        with self._cond:
            return {"offered": dict(self.offered), "admitted": dict(self.admitted),
                    "rejected": dict(self.rejected), "peak_waiting": self.peak_waiting,
                    "peak_in_service": self.peak_in_service}
