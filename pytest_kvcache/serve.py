"""What one request does to the multi-tier cache: the I/O of a serving engine with KV offload.

Design section 3. A request's prompt is a chain of content-addressed KV blocks
(``workload.blocks``): its conversation's ``BlockSequence`` grows by the request's segments
(system prompt, pool prefix, per-user context, RAG documents, this turn's new text; the earlier
turns are history). Then, as vLLM and LMCache with prefix caching do:

1. *lookup*: the longest prefix of the prompt's blocks that the cache holds (the first missing
   block ends the hit); *load* those blocks, each a real read through the cache. A block that
   was found but could not be read back (evicted meanwhile, a failed read) ends the hit there:
   a hit is only ever a block that was found and read back;
2. *prefill*: the missed blocks, from the first miss to the end of the prompt, are stored.
   Closed blocks are content-addressed and stored put-if-absent (``MultiTierCache.put(...,
   shared=True)``): a block that some user already stored, or is storing right now, is not
   written again, so shared blocks are stored once whatever the number of users; the private
   open tail block is rewritten in place;
3. *decode*: paced at the generation mode's time per token (with the ``reference`` read model,
   the whole prompt is re-read every 32 decoded tokens, as the MLPerf reference does);
4. the output's blocks are stored, so the next turn finds them.

Every looked-up block is recorded per lookup kind (``prefix``, ``multi_turn``, ``rag``, ``new``)
with its tokens, so hit rates come in tokens and in blocks. RAG documents (``Trace.documents``)
are stored by ``prepare`` before any user starts, outside the window.

Disaggregated phases (``phase``, ``--kv-phase``): ``mixed`` is all of the above. ``prefill``
(a prefill node: write-heavy) skips step 1, so a request never looks up or loads; it stores its
prompt's blocks (put-if-absent) and its output. ``decode`` (a decode node: read-heavy) finds the
KV a prefill node made: ``prepare`` stores the users' prompts and outputs first, turn by turn
across users, outside the window (at most ``DECODE_POPULATE_FRACTION`` of the tiers' summed
high-water marks and ``DECODE_POPULATE_MAX_BYTES``, so what is populated fits and is not
evicted by itself), then requests only look up and load (a block not populated is a miss) and
store nothing. When the run is ending
(``ending`` set), a request finishes the backend call it is in and skips the rest. Who sends
which request when is the load layer's business (``runner``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from .cache import MultiTierCache
from .recorder import Recorder
from .workload import Block, BlockSequence, Request, Trace, plan_blocks

SECONDS_PER_TOKEN = {"none": 0.0, "fast": 0.002, "realistic": 0.030}
REFERENCE_REREAD_TOKENS = 32  # MLPerf reference: re-read the whole entry every 32 decoded tokens
DECODE_POPULATE_FRACTION = 0.5  # of the tiers' summed high-water marks
DECODE_POPULATE_MAX_BYTES = 4 * 10**9


class RequestServer:
    """Serves requests against ``cache``, recording each finished one in ``recorder``.

    ``config`` is the runner's ``RunConfig`` (generation mode, read model, chunk tokens).
    ``allocs``, when given, is held around every cache store, so at most its count of stores
    allocate at once (MLPerf's ``--max-concurrent-allocs``, set by the load layer).
    Thread-safe: any number of workers call ``serve`` at once (each with its own sequence).
    """

    def __init__(self, cache: MultiTierCache, recorder: Recorder, config, ending: threading.Event,
                 allocs: threading.Semaphore | None = None):
        self.cache, self.recorder, self.config, self.ending = cache, recorder, config, ending
        self.allocs = allocs
        self.per_token_s = SECONDS_PER_TOKEN[config.generation_mode]
        self._lock = threading.Lock()
        self._live_tokens = 0
        self.peak_live_tokens = 0  # most KV tokens the users' open conversations held at once
        self.phase = "mixed"  # options.PHASES; set before the run (engine: --kv-phase)
        self.populated: dict | None = None  # decode: what prepare stored before the window

    def prepare(self, trace: Trace) -> int:
        """Ingest the trace's documents (RAG) as shared blocks, before any user starts and before
        the window opens (their writes are in the run's totals, not the window's). Returns the
        blocks written or found stored."""
        stored = 0
        for doc in trace.documents:
            for block in plan_blocks([doc], self.config.chunk_tokens, doc.source):
                if self.ending.is_set():
                    return stored
                stored += self.cache.put(block.key, block.tokens, shared=True) is not None  # ingest: before the window
        if self.phase == "decode":
            stored += self._populate(trace)
        return stored

    def _populate(self, trace: Trace) -> int:
        """Decode phase: store the users' prompts and outputs as a prefill node would have, turn
        by turn across users, up to the byte bound (module docstring). Returns blocks stored;
        sets ``populated`` ({requests, blocks, bytes, seconds, bound_bytes})."""
        cache = self.cache
        bound = int(min(DECODE_POPULATE_FRACTION * sum(t.high_water for t in cache.tiers), DECODE_POPULATE_MAX_BYTES))
        seqs: dict[int, BlockSequence] = {}
        t0 = time.perf_counter()
        requests = blocks = nbytes = 0
        longest = max(map(len, trace.per_user), default=0)
        for turn in range(longest):
            for user, reqs in enumerate(trace.per_user):
                if turn >= len(reqs) or nbytes >= bound or self.ending.is_set():
                    continue
                req = reqs[turn]
                seq = seqs.get(user)
                if seq is None or seq.owner != req.conversation_id:
                    seq = seqs[user] = BlockSequence(self.config.chunk_tokens, req.conversation_id)
                elif seq.total_tokens:
                    seq.begin_turn()
                seq.extend(req.prompt_segments())
                seq.extend([req.output_segment()])
                for block in seq.blocks():
                    if block.closed and not cache.contains(block.key):
                        if cache.put(block.key, block.tokens, shared=True) is not None:
                            blocks += 1
                            nbytes += block.tokens * cache.bytes_per_token
                requests += 1
            if nbytes >= bound or self.ending.is_set():
                break
        self.populated = {"requests": requests, "blocks": blocks, "bytes": nbytes,
                          "seconds": round(time.perf_counter() - t0, 3), "bound_bytes": bound}
        return blocks

    def conversation_for(self, req: Request, current: BlockSequence | None) -> BlockSequence:
        """The block sequence ``req`` extends: ``current`` if it is the same conversation, else a
        new one (the old one's tokens no longer count toward the live working set)."""
        if current is not None and current.owner == req.conversation_id:
            return current
        if current is not None:
            self._grow(-current.total_tokens)
        return BlockSequence(self.config.chunk_tokens, req.conversation_id)

    def serve(self, req: Request, seq: BlockSequence, submit_ns: int) -> bool:
        """One request sent at ``submit_ns`` (``perf_counter_ns``); False (and nothing
        recorded) when the run's end cut it short."""
        start_ns = time.perf_counter_ns()
        if seq.total_tokens:
            seq.begin_turn()  # the earlier turns' text and output are history now
        _, stale_tail = self._extend(seq, req.prompt_segments())
        prompt = seq.blocks()
        hits, done = (0, True) if self.phase == "prefill" else self._lookup_and_load(prompt)
        retrieval_ns = time.perf_counter_ns() - start_ns
        if self.phase != "decode":  # prefill: misses and new text (a decode node stores nothing)
            done = done and self._store(prompt[hits:], seq if stale_tail else None)
        storage_ns = time.perf_counter_ns() - start_ns
        ttft_ns = time.perf_counter_ns() - submit_ns + int(self.per_token_s * 1e9)
        if done:
            gen_ns, reread_ns, done = self._decode(req, prompt)
            storage_ns += reread_ns
        if done:
            t = time.perf_counter_ns()
            changed, stale_tail = self._extend(seq, [req.output_segment()])
            if self.phase != "decode":
                done = self._store(changed, seq if stale_tail else None)  # keep the answer for the next turn
            storage_ns += time.perf_counter_ns() - t
        if not done:
            return False
        end_ns = time.perf_counter_ns()
        timings = {"e2e": end_ns - submit_ns, "queue_wait": start_ns - submit_ns, "storage_time": storage_ns,
                   "generation_time": gen_ns, "ttft": ttft_ns}
        if req.rag_chunk_ids:  # what a RAG query waits on before prefill: its cached prompt
            timings["retrieval"] = retrieval_ns
        self.recorder.request(
            end_ns, timings,
            {"requests": 1, "generated_tokens": req.generate_tokens, "context_tokens": req.context_tokens},
            qos=req.qos,
        )
        return True

    def _lookup_and_load(self, prompt: Sequence[Block]) -> tuple[int, bool]:
        """Load the longest cached prefix of ``prompt``; record every block's lookup per kind.
        Returns (blocks found and read back, False if the run's end cut the loads short)."""
        cache = self.cache
        found = 0
        for block in prompt:  # longest_cached_prefix, but read as we go: found AND read back
            if not block.closed or not cache.contains(block.key):
                break
            if self.ending.is_set():
                return found, False
            tier = cache.read(block.key, None)
            if tier is None:  # gone or unreadable since: the hit ends here
                break
            self._record(block, True, time.perf_counter_ns(), tier)
            found += 1
        now = time.perf_counter_ns()
        for block in prompt[found:]:
            self._record(block, False, now)
        return found, True

    def _record(self, block: Block, hit: bool, t_ns: int, tier: str | None = None) -> None:
        """Record ``block``'s lookup per kind; a hit names the ``tier`` that served it."""
        for i, (kind, tokens) in enumerate(block.kind_tokens):
            self.recorder.lookup(kind, hit, t_ns, tokens, blocks=1 if i == 0 else 0, tier=tier)

    def _extend(self, seq: BlockSequence, segments) -> tuple[list[Block], bool]:
        """Add ``segments`` to ``seq``; returns the changed blocks and whether the stored open
        tail went stale (its tokens are in a closed block now and no new tail took its slot)."""
        had_tail, before = seq.has_tail, seq.total_tokens
        changed = seq.extend(segments)
        self._grow(seq.total_tokens - before)
        return changed, had_tail and not seq.has_tail

    def _grow(self, delta: int) -> None:
        with self._lock:
            self._live_tokens += delta
            self.peak_live_tokens = max(self.peak_live_tokens, self._live_tokens)

    def _store(self, blocks: Sequence[Block], stale: BlockSequence | None = None) -> bool:
        """Write ``blocks``: closed ones put-if-absent (shared), the open tail in place; then
        delete ``stale``'s former tail entry, if given. False if the run's end cut it short."""
        if stale is not None:
            self.cache.discard(stale.tail_key)
        for block in blocks:
            if self.ending.is_set():
                return False
            self._put(block.key, block.tokens, shared=block.closed)
        return True

    def _put(self, key: str, tokens: int, shared: bool = False) -> None:
        """One cache store, within the bound on concurrent allocations when there is one."""
        if self.allocs is None:
            self.cache.put(key, tokens, shared=shared)
            return
        with self.allocs:
            self.cache.put(key, tokens, shared=shared)

    def _decode(self, req: Request, prompt: Sequence[Block]) -> tuple[int, int, bool]:
        """Pace generation. Returns (generation ns, ns spent re-reading KV in the reference
        model, False if the run's end cut the pacing or the re-reads short)."""
        t0 = time.perf_counter_ns()
        reread = 0
        done = True
        if self.config.read_model == "reference" and self.phase != "prefill":  # a prefill node loads nothing
            left = req.generate_tokens
            while left > 0 and done:
                step = min(REFERENCE_REREAD_TOKENS, left)
                done = not self.ending.wait(step * self.per_token_s)
                t = time.perf_counter_ns()
                done = done and self._reread(prompt)
                reread += time.perf_counter_ns() - t
                left -= step
        elif self.per_token_s:
            done = not self.ending.wait(req.generate_tokens * self.per_token_s)
        return time.perf_counter_ns() - t0 - reread, reread, done

    def _reread(self, prompt: Sequence[Block]) -> bool:
        """The reference model's re-read of the whole prompt (lookup kind ``decode``); a block
        evicted meanwhile is recomputed and stored again. False if the run's end cut it short."""
        for block in prompt:
            if self.ending.is_set():
                return False
            if self.cache.read(block.key, "decode", block.tokens) is None:
                self._put(block.key, block.tokens, shared=block.closed)
        return True
