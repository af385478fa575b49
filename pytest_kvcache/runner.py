"""Closed-loop users replaying a trace against the multi-tier cache for a measurement window.

This is the load layer: who sends which request when (design section 3a). Each user is a
thread that walks its own request list in order: think, send, and wait for the answer before
the next turn; what one request does to the cache is ``serve.RequestServer``. The runner opens
the recorder's window after the warm-up, closes it after the duration, then ends promptly
(design section 3a, "End of a run"): a request in flight finishes the transfer it is in (a
backend call of several transfers stops at the next boundary, ``errors.IOCut``; no cache entry
is left being written or moved) and skips the rest of its loads, stores and pacing; the cache
gives up reservations that have not started writing.
"""

from __future__ import annotations

import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

from .cache import MultiTierCache
from .recorder import Recorder
from .serve import RequestServer
from .workload import Request, Trace

_DRAIN_TIMEOUT_S = 300.0  # a backend call still running this long after the window is reported stuck


@dataclass
class RunConfig:
    duration_s: float
    warmup_s: float = 0.0
    generation_mode: str = "fast"
    read_model: str = "once"
    chunk_tokens: int = 256
    max_inflight: int = 0


@dataclass
class RunInfo:
    started_ns: int = 0
    finished_ns: int = 0
    requests_started: int = 0
    requests_finished: int = 0  # ran to the end; started - finished were cut short when the run ended
    users_exhausted: int = 0
    peak_live_tokens: int = 0  # most KV tokens the users' open conversations held at once
    trace_exhausted: bool = False
    aborted: bool = False
    drain_s: float | None = None  # window close -> last user thread ended, seconds (None if aborted)
    errors: list[str] = field(default_factory=list)


class Runner:
    def __init__(self, cache: MultiTierCache, trace: Trace, recorder: Recorder, config: RunConfig,
                 window_hooks: tuple = (), on_tick=None):
        self.cache, self.trace, self.recorder, self.config = cache, trace, recorder, config
        self.window_hooks = window_hooks  # objects with start()/stop(), e.g. device counters
        self.on_tick = on_tick  # called about 4 times a second with (runner, elapsed_s)
        self.info = RunInfo()
        self._stop = threading.Event()  # no new requests
        self._ending = threading.Event()  # the run is ending: finish the backend call under way, skip the rest
        self.server = RequestServer(cache, recorder, config, self._ending)
        self._admit = threading.Semaphore(config.max_inflight) if config.max_inflight else None
        self._lock = threading.Lock()
        self._active_users = 0
        self._ended = threading.Event()  # the last user finished, or one failed
        self._ended_ns: int | None = None

    # -- users ------------------------------------------------------------------------
    def _user(self, requests: list[Request]) -> None:
        conversation = None
        admit = self._admit or nullcontext()
        try:
            for req in requests:
                if self._stop.is_set() or self._stop.wait(req.think_time_s):
                    return
                conversation = self.server.conversation_for(req, conversation)
                submit_ns = time.perf_counter_ns()
                with self._lock:
                    self.info.requests_started += 1
                with admit:  # --kv-max-inflight: wait in the queue for a place in service
                    served = self.server.serve(req, conversation, submit_ns)
                if not served:
                    return  # the run is ending
                with self._lock:
                    self.info.requests_finished += 1
            with self._lock:
                self.info.users_exhausted += 1
        except BaseException as exc:  # a failed I/O ends the run; the scenario reports it
            message = f"{type(exc).__name__}: {exc}"
            self.recorder.error(message)
            with self._lock:
                self.info.errors.append(message)
            self._stop.set()
            self._end_now()
        finally:
            with self._lock:
                self._active_users -= 1
                last = self._active_users == 0
            if last:
                self._end_now()

    def _end_promptly(self) -> None:
        """No new requests; those in flight finish their backend call and skip the rest."""
        self._stop.set()
        self._ending.set()
        self.cache.end_promptly()

    def _end_now(self) -> None:
        with self._lock:
            if self._ended_ns is None:
                self._ended_ns = time.perf_counter_ns()
        self._ended.set()

    def active_users(self) -> int:
        with self._lock:
            return self._active_users

    def run(self) -> RunInfo:
        cfg = self.config
        threads = [threading.Thread(target=self._user, args=(reqs,), name=f"kv-user-{u}", daemon=True)
                   for u, reqs in enumerate(self.trace.per_user)]
        self._active_users = len(threads)
        try:  # RAG documents: stored before any user starts and before the window
            self.server.prepare(self.trace)
        except BaseException:
            self.info.aborted = True
            raise
        self.info.started_ns = t0 = time.perf_counter_ns()
        warm_end = t0 + int(cfg.warmup_s * 1e9)
        # Set before any user starts: I/O completing from warm_end on counts, even when the
        # warm-up is 0 and a short trace is done before this thread looks at the clock again.
        self.recorder.open_window(warm_end)
        for th in threads:
            th.start()
        try:
            opened = False
            deadline = t0 + int((cfg.warmup_s + cfg.duration_s) * 1e9)
            while True:
                now = time.perf_counter_ns()
                if not opened and now >= warm_end:
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
                self.recorder.open_window()
            # close at the moment the run really ended, not at the next poll: idle time after
            # the last I/O must not dilute the window's rates
            ended = self._ended_ns if opened else None
            self.recorder.close_window(max(warm_end, min(ended, deadline)) if ended is not None else None)
            for hook in self.window_hooks:
                hook.stop()
            self.info.trace_exhausted = self.active_users() == 0 and not self.info.errors
            self._end_promptly()
            closed_ns = self.recorder.window_end_ns
            if not _join(threads, _DRAIN_TIMEOUT_S):  # a backend call that does not return
                self.info.errors.append(f"users still in a backend call {_DRAIN_TIMEOUT_S:g} s after the window closed")
            self.info.drain_s = round((time.perf_counter_ns() - closed_ns) / 1e9, 3)
        except BaseException:
            self.info.aborted = True
            self._end_promptly()
            _join(threads, 30)
            raise
        finally:
            self.info.finished_ns = time.perf_counter_ns()
            self.info.peak_live_tokens = self.server.peak_live_tokens
        return self.info


def _join(threads: list[threading.Thread], timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` in all for ``threads`` to end; True if they all did."""
    deadline = time.monotonic() + timeout_s
    for th in threads:
        th.join(timeout=max(0.0, deadline - time.monotonic()))
    return not any(th.is_alive() for th in threads)
