"""The load layer: who sends which request when, and how many are served at once (design 3a).

Users are records, not threads. A bounded pool of worker threads serves requests taken from one
``load.AdmissionQueue`` (ordered by QoS class, then arrival, with aging so batch cannot starve);
what one request does to the cache is ``serve.RequestServer``. Two arrival processes feed the
queue:

- **closed loop** (``request_rate == 0``, the default): each user sends its next turn when the
  last one finished plus its think time. A scheduler thread keeps one heap of next send times
  (not a sleeping thread per user) and offers each due turn to the queue; the queue's depth is
  the user count, so a closed-loop turn is never rejected.
- **open loop** (``request_rate > 0``): requests arrive at the seeded Poisson times of
  ``load.poisson_arrivals`` (seed, rate, warm-up + duration), whatever the system does. Arrival
  k carries the next turn of the user that has been idle longest (users start idle in index
  order; a user is busy from the moment its turn is queued until it is served, since a turn
  needs its conversation's earlier turns stored); think times are not used. An arrival that
  finds the queue full (``queue_depth`` waiting) is rejected, and one that finds every user busy
  is rejected as ``no_idle_user``: both are figures of the run, not errors.
- **trace timestamps** (a trace whose requests carry ``arrival_s``, ``workload.replay``): each
  user's one request arrives at ``arrival_s / trace_speedup`` (``load.trace_arrivals``) into the
  same bounded queue; a rejected request is never sent again. When every request has arrived and
  been served or rejected, the trace has run out and the run ends (the window closes then).

The closed-loop user pool can change during the run (``set_active_users``, used by
``scaling.UserScaler`` for ``--kv-autoscale``): the trace holds the most users the pool may
reach, ``RunConfig.start_users`` of them start; an added user starts its own conversations
(user k sends the trace's user k's requests, so the load is deterministic), a removed user
finishes the request it has in the system and then stops, never cut mid-request.

Requests in service are at most ``workers`` = ``max_inflight`` or, when that is 0,
``min(users, DEFAULT_MAX_IN_SERVICE)`` (``load.workers_for``); staging buffers belong to threads, so their number is
bounded by the workers, not by the users. ``max_concurrent_allocs`` (MLPerf's
``--max-concurrent-allocs``) bounds the cache stores under way at once with a semaphore that
``RequestServer`` holds around each ``put``. Queue wait (arrival or send time to the start of
service) is part of every request's end-to-end latency.

The runner opens the recorder's window after the warm-up, closes it after the duration, then
ends promptly (design section 3a, "End of a run"): the queue is closed (waiting requests are
never served), a request in service finishes the transfer it is in (a backend call of several
transfers stops at the next boundary, ``errors.IOCut``; no cache entry is left being written or
moved) and skips the rest of its loads, stores and pacing; the cache gives up reservations that
have not started writing.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from .cache import MultiTierCache
from .load import (
    DEFAULT_QOS,
    AdmissionQueue,
    QoSClass,
    poisson_arrivals,
    trace_arrivals,
    workers_for,
)
from .recorder import NO_IDLE_USER, Recorder
from .serve import RequestServer
from .workload import Request, Trace

_DRAIN_TIMEOUT_S = 300.0  # a backend call still running this long after the window is reported stuck

DEFAULT_AGING_S = 0.5
"""Seconds of queue wait per QoS class step up: a batch request that has waited 1 s (its p95
target) competes with interactive ones, so it cannot starve."""


@dataclass
class RunConfig:
    duration_s: float
    warmup_s: float = 0.0
    generation_mode: str = "fast"
    read_model: str = "once"
    chunk_tokens: int = 256
    max_inflight: int = 0  # requests in service at once; 0 = min(users, DEFAULT_MAX_IN_SERVICE)
    request_rate: float = 0.0  # open-loop arrivals per second; 0 = closed-loop users
    queue_depth: int = 64  # open loop: most requests waiting for service; more are rejected
    max_concurrent_allocs: int = 0  # most cache stores under way at once; 0 = no bound
    qos: dict[str, QoSClass] = field(default_factory=lambda: dict(DEFAULT_QOS))
    qos_aging_s: float = DEFAULT_AGING_S
    seed: int = 0  # root seed: the open-loop arrival schedule's stream derives from it
    start_users: int = 0  # closed loop: users sending at the start (the rest wait for set_active_users); 0 = all
    trace_speedup: float = 1.0  # timestamped traces: arrivals at arrival_s / trace_speedup


@dataclass
class RunInfo:
    started_ns: int = 0
    finished_ns: int = 0
    requests_started: int = 0  # taken from the queue into service
    requests_finished: int = 0  # ran to the end; started - finished were cut short when the run ended
    requests_unserved: int = 0  # still waiting in the queue when the run ended (never served)
    users_exhausted: int = 0
    peak_live_tokens: int = 0  # most KV tokens the users' open conversations held at once
    workers: int = 0  # threads serving requests = the bound on requests in service
    peak_in_service: int = 0
    peak_waiting: int = 0
    arrivals: int = 0  # open loop: arrivals scheduled up to the run's end
    trace_exhausted: bool = False
    aborted: bool = False
    drain_s: float | None = None  # window close -> last worker ended, seconds (None if aborted)
    errors: list[str] = field(default_factory=list)


class _User:
    """One simulated user: its request list and where it is in it, and its open conversation."""

    __slots__ = ("index", "requests", "pos", "conversation", "wanted", "in_system")

    def __init__(self, index: int, requests: list[Request]):
        self.index, self.requests, self.pos, self.conversation = index, requests, 0, None
        self.wanted = True  # closed loop: the pool wants this user sending (set_active_users)
        self.in_system = False  # closed loop: a turn of it is scheduled, queued or in service

    @property
    def next_request(self) -> Request | None:
        return self.requests[self.pos] if self.pos < len(self.requests) else None


class Runner:
    def __init__(self, cache: MultiTierCache, trace: Trace, recorder: Recorder, config: RunConfig,
                 window_hooks: tuple = (), on_tick=None, sync=None):
        self.cache, self.trace, self.recorder, self.config = cache, trace, recorder, config
        self.window_hooks = window_hooks  # objects with start()/stop(), e.g. device counters
        # sync(stage): waits for the other MPI ranks (cluster.Cluster.sync) before the warm-up,
        # as the window opens and after it ends, so the ranks' windows coincide; None alone
        self.sync = sync or (lambda stage: None)
        self.on_tick = on_tick  # called about 4 times a second with (runner, elapsed_s)
        self.info = RunInfo()
        self._stop = threading.Event()  # no new requests
        self._ending = threading.Event()  # the run is ending: finish the backend call under way, skip the rest
        allocs = threading.BoundedSemaphore(config.max_concurrent_allocs) if config.max_concurrent_allocs else None
        self.server = RequestServer(cache, recorder, config, self._ending, allocs=allocs)
        users = len(trace.per_user)
        self.workers = workers_for(users, config.max_inflight)
        self.info.workers = self.workers
        self.timed = next((reqs[0].arrival_s for reqs in trace.per_user if reqs), None) is not None  # trace timestamps
        self.open_loop = config.request_rate > 0 or self.timed
        priorities = {name: c.priority for name, c in config.qos.items()}
        self.queue = AdmissionQueue(config.queue_depth if self.open_loop else max(1, users), time.perf_counter,
                                    aging_s=config.qos_aging_s, max_in_service=self.workers,
                                    priorities=priorities)
        recorder.set_sla_targets({name: c.p95_s for name, c in config.qos.items()})
        self._lock = threading.Lock()
        self._users: list[_User] = []
        self._active_users = 0  # users whose request list is not done
        self._ended = threading.Event()  # the last user finished, or a request failed
        self._ended_ns: int | None = None
        self._wake = threading.Condition()  # guards the closed-loop heap; notified when it changes
        self._heap: list[tuple[int, int, _User]] = []  # (send time ns, user index, user)
        self._idle: deque[_User] = deque()  # open loop: users with no turn in the system, idle longest first
        self._served: set[int] = set()  # users that finished a request since take_served_users()

    # -- the arrival processes ----------------------------------------------------------
    def _offer(self, user: _User, send_ns: int) -> bool:
        """Queue ``user``'s next turn, sent at ``send_ns``; False when the queue refused it."""
        req = user.next_request
        accepted = self.queue.offer((user, req, send_ns), req.qos)
        if self.open_loop:
            self.recorder.arrival(req.qos, rejected=not accepted, t_ns=send_ns)
        return accepted

    def _closed_loop(self) -> None:
        """Offer each user's turn when its send time comes (one heap, one thread)."""
        with self._wake:
            while not self._stop.is_set():
                if not self._heap:
                    self._wake.wait(0.25)
                    continue
                due = self._heap[0][0]
                now = time.perf_counter_ns()
                if due > now:
                    self._wake.wait(min(0.25, (due - now) / 1e9))
                    continue
                _, _, user = heapq.heappop(self._heap)
                if not user.wanted:  # removed from the pool while thinking: it stops here
                    user.in_system = False
                    continue
                self._offer(user, due)  # never full: the queue holds every user once

    def _open_loop(self, t0: int) -> None:
        """Seeded Poisson arrivals until the window's end, each carrying an idle user's next turn."""
        cfg = self.config
        times = poisson_arrivals(cfg.seed, cfg.request_rate, horizon_s=cfg.warmup_s + cfg.duration_s)
        self.info.arrivals = len(times)
        for t in times:
            due = t0 + int(t * 1e9)
            delay = (due - time.perf_counter_ns()) / 1e9
            if (delay > 0 and self._stop.wait(delay)) or self._stop.is_set():
                return
            with self._lock:
                user = self._idle.popleft() if self._idle else None
            if user is None:
                self.recorder.arrival(NO_IDLE_USER, rejected=True, t_ns=due)
                continue
            if not self._offer(user, due):
                with self._lock:
                    self._idle.appendleft(user)  # still idle longest: the next arrival takes it

    def _timed_arrivals(self, t0: int) -> None:
        """Each user's one request at its trace timestamp (scaled by the speed-up)."""
        cfg = self.config
        users = self._users  # each with one request (workload.replay.check_timed)
        schedule = trace_arrivals([u.requests[0].arrival_s for u in users], cfg.trace_speedup,
                                  cfg.warmup_s + cfg.duration_s)
        self.info.arrivals = len(schedule)
        for t, i in schedule:
            due = t0 + int(t * 1e9)
            delay = (due - time.perf_counter_ns()) / 1e9
            if (delay > 0 and self._stop.wait(delay)) or self._stop.is_set():
                return
            user = users[i]
            if not self._offer(user, due):  # rejected: this user's only request is gone
                with self._lock:
                    user.wanted = False
                    self._active_users -= 1
                    last = self._active_users == 0
                if last:
                    self._end_now()

    # -- serving ------------------------------------------------------------------------
    def _worker(self) -> None:
        try:
            while True:
                taken = self.queue.take()
                if taken is None:
                    return  # the run is ending
                user, req, send_ns = taken.item
                try:
                    with self._lock:
                        self.info.requests_started += 1
                    user.conversation = self.server.conversation_for(req, user.conversation)
                    served = self.server.serve(req, user.conversation, send_ns)
                finally:
                    self.queue.release()
                if not served:
                    return  # the run's end cut it short
                with self._lock:
                    self.info.requests_finished += 1
                    self._served.add(user.index)
                self._next(user)
        except BaseException as exc:  # a failed I/O ends the run; the scenario reports it
            message = f"{type(exc).__name__}: {exc}"
            self.recorder.error(message)
            with self._lock:
                self.info.errors.append(message)
            self._stop.set()
            self._end_now()

    def _next(self, user: _User) -> None:
        """``user``'s turn finished: schedule its next one, count it done, or (removed from the
        pool) let it stop."""
        user.pos += 1
        req = user.next_request
        if req is None:
            with self._wake:
                user.in_system = False
                wanted, user.wanted = user.wanted, False
            with self._lock:
                self.info.users_exhausted += 1
                self._active_users -= wanted
                last = self._active_users == 0
            if last:
                self._end_now()
            return
        if self.open_loop:
            with self._lock:
                self._idle.append(user)
            return
        now = time.perf_counter_ns()
        with self._wake:  # under the lock set_active_users changes ``wanted`` with
            if not user.wanted:
                user.in_system = False
                return
            if req.think_time_s > 0:
                heapq.heappush(self._heap, (now + int(req.think_time_s * 1e9), user.index, user))
                self._wake.notify()
                return
        self._offer(user, now)  # straight back into the queue, no scheduler hop

    def _end_promptly(self) -> None:
        """No new requests; waiting ones are never served; those in service finish their
        backend call and skip the rest."""
        self._stop.set()
        self._ending.set()
        with self._wake:
            self._wake.notify_all()
        self.info.requests_unserved += len(self.queue.close())
        self.cache.end_promptly()

    def _end_now(self) -> None:
        with self._lock:
            if self._ended_ns is None:
                self._ended_ns = time.perf_counter_ns()
        self._ended.set()

    def active_users(self) -> int:
        """Users in the pool whose request list is not done (the progress line shows it)."""
        with self._lock:
            return self._active_users

    def set_active_users(self, n: int) -> int:
        """Closed loop: make the first ``n`` users (by index) of the trace the pool; thread-safe.

        An added user sends its next turn now; a removed one finishes the turn it has in the
        system (scheduled turns of a thinking user are dropped) and stops; re-added, it goes on
        with its own conversation. Users whose list is done are not counted. Returns the
        users in the pool. Raises ValueError on an open-loop run.
        """
        if self.open_loop:
            raise ValueError("the user pool is closed-loop only; open-loop arrivals do not come from users")
        n = max(0, min(n, len(self._users)))
        now = time.perf_counter_ns()
        with self._wake:
            for user in self._users:
                user.wanted = user.index < n and user.next_request is not None
                if user.wanted and not user.in_system:
                    user.in_system = True
                    heapq.heappush(self._heap, (now, user.index, user))
            active = sum(u.wanted for u in self._users)
            self._wake.notify()
        with self._lock:
            self._active_users = active
        return active

    def take_served_users(self) -> set[int]:
        """The users (trace indices) that finished a request since the last call."""
        with self._lock:
            served, self._served = self._served, set()
        return served

    def end_run(self) -> None:
        """End the run now (the autoscaler's search is over): the window closes at this moment."""
        self._end_now()

    def _start(self, t0: int) -> list[threading.Thread]:
        self._users = [_User(u, reqs) for u, reqs in enumerate(self.trace.per_user) if reqs]
        start = self.config.start_users
        if start and not self.open_loop:
            for user in self._users:
                user.wanted = user.index < start
        self._active_users = sum(u.wanted for u in self._users)
        if not self._users:
            self._end_now()
        threads = [threading.Thread(target=self._worker, name=f"kv-worker-{i}", daemon=True)
                   for i in range(self.workers)]
        if self.open_loop:
            self._idle.extend(self._users)
            target = self._timed_arrivals if self.timed else self._open_loop
            threads.append(threading.Thread(target=target, args=(t0,), name="kv-arrivals", daemon=True))
        else:
            for user in self._users:
                user.in_system = user.wanted
            self._heap = [(t0 + int(u.requests[0].think_time_s * 1e9), u.index, u) for u in self._users if u.wanted]
            heapq.heapify(self._heap)
            threads.append(threading.Thread(target=self._closed_loop, name="kv-scheduler", daemon=True))
        for th in threads:
            th.start()
        return threads

    def run(self) -> RunInfo:
        cfg = self.config
        try:  # RAG documents: stored before any user starts and before the window
            self.server.prepare(self.trace)
        except BaseException:
            self.info.aborted = True
            raise
        self.sync("warm-up")
        self.info.started_ns = t0 = time.perf_counter_ns()
        warm_end = t0 + int(cfg.warmup_s * 1e9)
        # Set before any request starts: I/O completing from warm_end on counts, even when the
        # warm-up is 0 and a short trace is done before this thread looks at the clock again.
        self.recorder.open_window(warm_end)
        threads = self._start(t0)
        try:
            opened = False
            deadline = t0 + int((cfg.warmup_s + cfg.duration_s) * 1e9)
            while True:
                now = time.perf_counter_ns()
                if not opened and now >= warm_end:
                    self.sync("window")
                    for hook in self.window_hooks:
                        hook.start()
                    opened = True
                if now >= deadline or self._ended.is_set():
                    break
                if self.on_tick:
                    self.on_tick(self, (now - t0) / 1e9)
                wake = deadline if opened else warm_end  # wake for the window's start, then its end
                self._ended.wait(min(0.25, max(0.001, (wake - now) / 1e9)))
            if not opened:  # everything ended before the warm-up did: an empty window
                self.sync("window")
                self.recorder.open_window()
            # close at the moment the run really ended, not at the next poll: idle time after
            # the last I/O must not dilute the window's rates
            ended = self._ended_ns if opened else None
            self.recorder.close_window(max(warm_end, min(ended, deadline)) if ended is not None else None)
            for hook in self.window_hooks:
                hook.stop()
            self.sync("end")
            self.info.trace_exhausted = self.active_users() == 0 and not self.info.errors
            self._end_promptly()
            closed_ns = self.recorder.window_end_ns
            if not _join(threads, _DRAIN_TIMEOUT_S):  # a backend call that does not return
                self.info.errors.append(f"requests still in a backend call {_DRAIN_TIMEOUT_S:g} s after the window closed")
            self.info.drain_s = round((time.perf_counter_ns() - closed_ns) / 1e9, 3)
        except BaseException:
            self.info.aborted = True
            self._end_promptly()
            _join(threads, 30)
            raise
        finally:
            self.info.finished_ns = time.perf_counter_ns()
            self.info.peak_live_tokens = self.server.peak_live_tokens
            counts = self.queue.counts()
            self.info.peak_in_service, self.info.peak_waiting = counts["peak_in_service"], counts["peak_waiting"]
        return self.info


def _join(threads: list[threading.Thread], timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` in all for ``threads`` to end; True if they all did."""
    deadline = time.monotonic() + timeout_s
    for th in threads:
        th.join(timeout=max(0.0, deadline - time.monotonic()))
    return not any(th.is_alive() for th in threads)
