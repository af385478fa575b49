"""What one request does to the multi-tier cache: the I/O of a serving engine with KV offload.

Design section 3: load the conversation's history (a hit in a lower tier is real I/O), store
the new context (prefill), pace decode at the generation mode's time per token (and, with the
``reference`` read model, re-read the whole KV every 32 decoded tokens, as the MLPerf
reference does), store the generated tokens so the next turn finds them. When the run is
ending (``ending`` set), a request finishes the backend call it is in and skips the rest.
Who sends which request when is the load layer's business (``runner``).
"""

from __future__ import annotations

import threading
import time

from .cache import MultiTierCache
from .recorder import Recorder
from .workload import ConversationLayout, Request

SECONDS_PER_TOKEN = {"none": 0.0, "fast": 0.002, "realistic": 0.030}
REFERENCE_REREAD_TOKENS = 32  # MLPerf reference: re-read the whole entry every 32 decoded tokens


class RequestServer:
    """Serves requests against ``cache``, recording each finished one in ``recorder``.

    ``config`` is the runner's ``RunConfig`` (generation mode, read model, chunk tokens).
    ``allocs``, when given, is held around every cache store, so at most its count of stores
    allocate at once (MLPerf's ``--max-concurrent-allocs``, set by the load layer).
    Thread-safe: any number of workers call ``serve`` at once.
    """

    def __init__(self, cache: MultiTierCache, recorder: Recorder, config, ending: threading.Event,
                 allocs: threading.Semaphore | None = None):
        self.cache, self.recorder, self.config, self.ending = cache, recorder, config, ending
        self.allocs = allocs
        self.per_token_s = SECONDS_PER_TOKEN[config.generation_mode]
        self._lock = threading.Lock()
        self._live_tokens = 0
        self.peak_live_tokens = 0  # most KV tokens the users' open conversations held at once

    def conversation_for(self, req: Request, current: ConversationLayout | None) -> ConversationLayout:
        """The cache layout ``req`` extends: ``current`` if it is the same conversation, else a new
        one (the old one's tokens no longer count toward the live working set)."""
        if current is not None and current.conversation_id == req.conversation_id:
            return current
        if current is not None:
            self._grow(-current.total_tokens)
        return ConversationLayout(req.conversation_id, self.config.chunk_tokens)

    def serve(self, req: Request, layout: ConversationLayout, submit_ns: int) -> bool:
        """One request sent at ``submit_ns`` (``perf_counter_ns``); False (and nothing
        recorded) when the run's end cut it short."""
        start_ns = time.perf_counter_ns()
        done = self._load(layout, "multi_turn")  # the conversation so far
        done = done and self._store(layout, req.context_tokens)  # prefill of the new context
        storage_ns = time.perf_counter_ns() - start_ns
        ttft_ns = time.perf_counter_ns() - submit_ns + int(self.per_token_s * 1e9)
        if done:
            gen_ns, reread_ns, done = self._decode(req, layout)
            storage_ns += reread_ns
        if done:
            t = time.perf_counter_ns()
            done = self._store(layout, req.generate_tokens)  # keep the answer for the next turn
            storage_ns += time.perf_counter_ns() - t
        if not done:
            return False
        end_ns = time.perf_counter_ns()
        self.recorder.request(
            end_ns,
            {"e2e": end_ns - submit_ns, "queue_wait": start_ns - submit_ns, "storage_time": storage_ns,
             "generation_time": gen_ns, "ttft": ttft_ns},
            {"requests": 1, "generated_tokens": req.generate_tokens, "context_tokens": req.context_tokens},
            qos=req.qos,
        )
        return True

    def _load(self, layout: ConversationLayout, kind: str) -> bool:
        """Read every entry of the conversation; False if the run's end cut it short."""
        for entry in layout.entries():
            if self.ending.is_set():
                return False
            if self.cache.read(entry.key, kind) is None:
                self._put(entry.key, entry.tokens)  # evicted: recompute and store again
        return True

    def _grow(self, delta: int) -> None:
        with self._lock:
            self._live_tokens += delta
            self.peak_live_tokens = max(self.peak_live_tokens, self._live_tokens)

    def _store(self, layout: ConversationLayout, tokens: int) -> bool:
        """Write the entries that hold ``tokens`` more; False if the run's end cut it short."""
        self._grow(tokens)
        for entry in layout.append(tokens):
            if self.ending.is_set():
                return False
            self._put(entry.key, entry.tokens)
        return True

    def _put(self, key: str, tokens: int) -> None:
        """One cache store, within the bound on concurrent allocations when there is one."""
        if self.allocs is None:
            self.cache.put(key, tokens)
            return
        with self.allocs:
            self.cache.put(key, tokens)

    def _decode(self, req: Request, layout: ConversationLayout) -> tuple[int, int, bool]:
        """Pace generation. Returns (generation ns, ns spent re-reading KV in the reference
        model, False if the run's end cut the pacing or the re-reads short)."""
        t0 = time.perf_counter_ns()
        reread = 0
        done = True
        if self.config.read_model == "reference":
            left = req.generate_tokens
            while left > 0 and done:
                step = min(REFERENCE_REREAD_TOKENS, left)
                done = not self.ending.wait(step * self.per_token_s)
                t = time.perf_counter_ns()
                done = done and self._load(layout, "decode")
                reread += time.perf_counter_ns() - t
                left -= step
        elif self.per_token_s:
            done = not self.ending.wait(req.generate_tokens * self.per_token_s)
        return time.perf_counter_ns() - t0 - reread, reread, done
