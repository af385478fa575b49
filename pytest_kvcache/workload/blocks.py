"""Requests as chains of content-addressed KV blocks (design.md section 3).

A prompt is a list of *segments* (a system prompt, a pool prefix, a RAG document, a
conversation's history, this turn's new text, the generated output). The token stream they
make is cut into *blocks* of ``chunk_tokens`` consecutive tokens (positions 0..C-1, C..2C-1, ...
of the whole stream, as vLLM's paged blocks and LMCache's chunks are). A block's cache key is a
hash chained over its parent's key and the block's own identity::

    key(i) = sha256(key(i-1) + "\\n" + identity(i)).hexdigest()[:24]      key(-1) = ""

so two prompts that share a prefix share those blocks' keys, and a prompt that diverges at
block k has different keys from k on even where later identities coincide (vLLM block hashes,
LMCache chunk hashes and Mooncake ``hash_ids`` are built the same way). 24 hex digits are 96
bits: the chance of any collision among 10^9 blocks is below 10^-11.

Identity of a block's tokens (one function per kind of source):

- synthetic sources: ``synthetic_identity(source, start, end)``: "tokens start..end of stream
  *source*" (a pool prefix id, a conversation id, a document id, the shared corpus). Adjacent
  pieces of one stream are merged first, so how the stream was split into segments does not
  change the key;
- tokenized text (ShareGPT, later): ``token_identity(token_ids)``: the token ids themselves;
- traces with their own block hashes (Mooncake ``hash_ids``, later): one segment per hash id
  with ``source=f"h{hash_id}"`` and the trace's block size as ``chunk_tokens``.

Which blocks can be shared (decided here, after vLLM, whose prefix cache hashes full blocks
only): a *closed* block, one that can no longer grow, is keyed by content and shared by every
request that has the same prefix. The *open tail* (the last, partly filled block of a stream
that may still grow) is private: its key is ``f"{owner}.tail"``, one slot per sequence, so each
rewrite replaces the previous version in place instead of leaving stale partial entries behind.
When later tokens fill it, the now-closed block gets its content key, which differs from the
tail's key: the next turn's lookup never finds a partial block, exactly as with vLLM. Whether
the runner writes the tail at all is its choice (``Block.closed`` says which it is); it is
never a prefix hit.

A *standalone* segment (a RAG document) has KV computed on its own, as documents ingested
ahead of time are: it starts a new block, its blocks are keyed from the root (so the document's
keys are the same whatever precedes it in a prompt), and its last block is closed even when
short. The blocks after it still chain over everything before them.

``chunk_tokens == 0`` is the reference's one-entry-per-turn mode: each segment is one closed
block of exactly its size.

Lookup kinds (what a hit counts as): system and prefix segments → ``prefix``, rag →
``rag``, history → ``multi_turn``, this turn's new text → ``new``. ``BlockSequence.begin_turn``
turns the previous turns' new text and output into history. Hit rates per kind are
hit tokens ÷ looked-up tokens, as LMCache and vLLM report them (``tally_hits``).

Errors: bad segments or settings raise ``ConfigError`` (a ``ValueError``) naming the fix.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

KEY_HEX_DIGITS = 24
SEGMENT_KINDS = ("system", "prefix", "rag", "history", "new", "output")
LOOKUP_KINDS = ("prefix", "multi_turn", "rag", "new")
_LOOKUP_KIND = {"system": "prefix", "prefix": "prefix", "rag": "rag", "history": "multi_turn",
                "new": "new", "output": "new"}
_ID_RE = re.compile(r"[A-Za-z0-9._-]+\Z")  # ids end up in keys, reports and file names


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def synthetic_identity(source: str, start: int, end: int) -> bytes:
    """Identity of tokens ``start..end`` (end exclusive) of the synthetic stream ``source``."""
    return f"s:{source}:{start}:{end};".encode()


def token_identity(token_ids: Sequence[int]) -> bytes:
    """Identity of a run of token ids: the ids as little-endian uint32 (vocabularies < 2**32)."""
    ids = np.asarray(token_ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 1 << 32):
        raise ConfigError("token ids must be integers in [0, 2**32); check the tokenizer output")
    return b"t:" + ids.astype("<u4").tobytes() + b";"


def chain_key(parent: str, identity: bytes) -> str:
    """Cache key of a block: ``sha256(parent + "\\n" + identity)``, first 24 hex digits."""
    return hashlib.sha256(parent.encode() + b"\n" + identity).hexdigest()[:KEY_HEX_DIGITS]


@dataclass(frozen=True, slots=True)
class Segment:
    """A run of ``tokens`` prompt tokens from one stream.

    ``kind``: one of ``SEGMENT_KINDS``. ``source``: the stream id ([A-Za-z0-9._-]); ``start``:
    the offset of the first token in that stream. ``token_ids``: the real token ids when the
    source is tokenized text (then the identity is the ids, and ``source``/``start`` only name
    it). ``standalone``: KV computed on its own (an ingested RAG document), see the module text.
    """

    kind: str
    source: str
    tokens: int
    start: int = 0
    token_ids: tuple[int, ...] | None = None
    standalone: bool = False

    def __post_init__(self) -> None:
        if self.kind not in SEGMENT_KINDS:
            raise ConfigError(f"segment kind {self.kind!r} is not one of {list(SEGMENT_KINDS)}")
        if not isinstance(self.source, str) or not _ID_RE.match(self.source):
            raise ConfigError(f"segment source {self.source!r} must be a non-empty string of [A-Za-z0-9._-]")
        if not _is_int(self.tokens) or self.tokens < 0:
            raise ConfigError(f"segment tokens must be an integer >= 0, not {self.tokens!r}")
        if not _is_int(self.start) or self.start < 0:
            raise ConfigError(f"segment start must be an integer >= 0, not {self.start!r}")
        if self.token_ids is not None and len(self.token_ids) != self.tokens:
            raise ConfigError(f"segment {self.source!r} has {len(self.token_ids)} token ids for "
                              f"{self.tokens} tokens; give one id per token")


@dataclass(frozen=True, slots=True)
class Block:
    """One KV block of a prompt.

    ``key``: cache key; ``index``: position in the sequence (0-based); ``tokens``: tokens it
    holds (``chunk_tokens``, or fewer for the open tail, a standalone segment's last block or
    every block when ``chunk_tokens == 0``). ``kind``: the lookup kind of its first token;
    ``kind_tokens``: its tokens per lookup kind, in order, for exact per-kind token counts.
    ``closed``: False only for the open tail, whose key is private to the sequence.
    """

    key: str
    index: int
    tokens: int
    kind: str
    kind_tokens: tuple[tuple[str, int], ...]
    closed: bool


# A piece: the part of one segment that falls inside one block.
# (kind, source, start, end, token_ids or None, turn)
_Piece = tuple


def _identity(pieces: Iterable[_Piece]) -> bytes:
    """Merge adjacent runs of one synthetic stream and adjacent token-id runs, then encode."""
    runs: list[list] = []
    for _kind, source, start, end, ids, _turn in pieces:
        last = runs[-1] if runs else None
        if ids is not None:
            if last is not None and last[0] == "t":
                last[1].extend(ids)
            else:
                runs.append(["t", list(ids)])
        elif last is not None and last[0] == "s" and last[1] == source and last[3] == start:
            last[3] = end
        else:
            runs.append(["s", source, start, end])
    return b"".join(token_identity(r[1]) if r[0] == "t" else synthetic_identity(*r[1:]) for r in runs)


class BlockSequence:
    """The growing token stream of one conversation (or one prompt), cut into keyed blocks.

    ``owner`` names the private tail key (``f"{owner}.tail"``) and must be unique among live
    sequences (a conversation id). Typical use by a runner, per turn::

        seq.begin_turn()                       # earlier new text and output become history
        seq.extend(new_segments)
        prompt = seq.blocks()
        hits = longest_cached_prefix(prompt, cache.contains)
        # load prompt[:hits]; prefill computes and stores prompt[hits:]
        out = seq.extend([output_segment])     # after decode, store these

    ``extend`` returns the blocks that changed: the former tail (closed now, or still open with
    more tokens) and every new block. Not thread-safe: one sequence belongs to one request flow.
    """

    __slots__ = ("chunk_tokens", "owner", "_closed", "_open", "_open_tokens", "_parent",
                 "_turn", "_total")

    def __init__(self, chunk_tokens: int, owner: str) -> None:
        if not _is_int(chunk_tokens) or chunk_tokens < 0:
            raise ConfigError(f"chunk_tokens must be an integer >= 0 (0 = one block per segment), not {chunk_tokens!r}")
        if not isinstance(owner, str) or not _ID_RE.match(owner):
            raise ConfigError(f"sequence owner {owner!r} must be a non-empty string of [A-Za-z0-9._-]")
        self.chunk_tokens = chunk_tokens
        self.owner = owner
        # closed blocks: [key, tokens, pieces, stable-from turn, cached Block, turn it was built]
        self._closed: list[list] = []
        self._open: list[_Piece] = []
        self._open_tokens = 0
        self._parent = ""  # key the next normal block chains from
        self._turn = 0
        self._total = 0

    @property
    def tail_key(self) -> str:
        """The private key of the open tail (constant for the sequence)."""
        return f"{self.owner}.tail"

    @property
    def has_tail(self) -> bool:
        return self._open_tokens > 0

    @property
    def total_tokens(self) -> int:
        return self._total

    def begin_turn(self) -> None:
        """Start a new turn: tokens added so far as ``new``/``output`` now count as history."""
        self._turn += 1

    # -- building -------------------------------------------------------------------------
    def _close(self, pieces: tuple[_Piece, ...], tokens: int, parent: str) -> str:
        key = chain_key(parent, _identity(pieces))
        # from this turn on the block's lookup kinds no longer change: its Block can be reused
        stable = max((p[5] + 1 for p in pieces if p[0] in ("new", "output")), default=0)
        self._closed.append([key, tokens, pieces, stable, None, -1])  # ..., Block, turn built
        return key

    def _close_open(self) -> None:
        if self._open_tokens:
            self._parent = self._close(tuple(self._open), self._open_tokens, self._parent)
            self._open, self._open_tokens = [], 0

    def _add(self, seg: Segment) -> None:
        C = self.chunk_tokens
        ids = seg.token_ids
        if C == 0:  # one closed block per segment
            piece = (seg.kind, seg.source, seg.start, seg.start + seg.tokens, ids, self._turn)
            if seg.standalone:
                key = self._close((piece,), seg.tokens, "")
                self._parent = chain_key(self._parent, b"standalone:" + key.encode())
            else:
                self._parent = self._close((piece,), seg.tokens, self._parent)
            return
        if seg.standalone:
            self._close_open()
            parent = ""
            for off in range(0, seg.tokens, C):
                n = min(C, seg.tokens - off)
                piece = (seg.kind, seg.source, seg.start + off, seg.start + off + n,
                         None if ids is None else ids[off:off + n], self._turn)
                parent = self._close((piece,), n, parent)
            self._parent = chain_key(self._parent, b"standalone:" + parent.encode())
            return
        off = 0
        while off < seg.tokens:
            n = min(C - self._open_tokens, seg.tokens - off)
            self._open.append((seg.kind, seg.source, seg.start + off, seg.start + off + n,
                               None if ids is None else ids[off:off + n], self._turn))
            self._open_tokens += n
            off += n
            if self._open_tokens == C:
                self._close_open()

    def extend(self, segments: Iterable[Segment]) -> list[Block]:
        """Append segments (empty ones are skipped); return the blocks that changed."""
        first = len(self._closed)
        for seg in segments:
            if not isinstance(seg, Segment):
                raise ConfigError(f"a prompt is made of Segment objects, not {type(seg).__name__}")
            if seg.tokens:
                self._add(seg)
                self._total += seg.tokens
        return self._blocks(first)

    # -- reading --------------------------------------------------------------------------
    def _kind(self, piece: _Piece) -> str:
        kind = piece[0]
        if kind in ("new", "output") and piece[5] < self._turn:
            return "multi_turn"
        return _LOOKUP_KIND[kind]

    def _block(self, index: int, key: str, tokens: int, pieces, closed: bool) -> Block:
        counts: dict[str, int] = {}
        for p in pieces:
            k = self._kind(p)
            counts[k] = counts.get(k, 0) + (p[3] - p[2])
        kinds = tuple(counts.items())
        return Block(key, index, tokens, kinds[0][0], kinds, closed)

    def _blocks(self, first: int) -> list[Block]:
        out = []
        turn = self._turn
        for i in range(first, len(self._closed)):
            rec = self._closed[i]
            if rec[4] is None or (rec[5] != turn and rec[5] < rec[3]):
                rec[4], rec[5] = self._block(i, rec[0], rec[1], rec[2], True), turn
            out.append(rec[4])
        if self._open_tokens:
            out.append(self._block(len(self._closed), self.tail_key, self._open_tokens, self._open, False))
        return out

    def blocks(self) -> list[Block]:
        """Every block of the sequence so far, in order; the open tail (if any) last."""
        return self._blocks(0)


def plan_blocks(segments: Iterable[Segment], chunk_tokens: int, owner: str) -> list[Block]:
    """The blocks of one whole prompt given at once (history listed as ``history`` segments)."""
    seq = BlockSequence(chunk_tokens, owner)
    seq.extend(segments)
    return seq.blocks()


def longest_cached_prefix(blocks: Sequence[Block], contains: Callable[[str], bool]) -> int:
    """How many leading blocks are cached: the first missing block ends the hit, as vLLM's and
    LMCache's prefix caching do. The open tail never counts (it is private and partial)."""
    for i, block in enumerate(blocks):
        if not block.closed or not contains(block.key):
            return i
    return len(blocks)


@dataclass
class HitTally:
    """Looked-up and hit tokens and blocks of one lookup kind (hit rate = hit ÷ looked up)."""

    lookup_tokens: int = 0
    hit_tokens: int = 0
    lookup_blocks: int = 0
    hit_blocks: int = 0

    def token_hit_rate(self) -> float | None:
        """None when nothing of this kind was looked up (n/a, never 0)."""
        return self.hit_tokens / self.lookup_tokens if self.lookup_tokens else None


def tally_hits(blocks: Sequence[Block], hits: int) -> dict[str, HitTally]:
    """Per lookup kind, what a prompt looked up and what its first ``hits`` blocks served.

    Tokens count exactly per kind (a block may span two segments); a block counts once, under
    its first token's kind. Only pass as ``hits`` blocks that were really found *and* read back.
    """
    if not _is_int(hits) or not 0 <= hits <= len(blocks):
        raise ValueError(f"hits must be an integer in [0, {len(blocks)}], not {hits!r}")
    out: dict[str, HitTally] = {}
    for i, block in enumerate(blocks):
        t = out.setdefault(block.kind, HitTally())
        t.lookup_blocks += 1
        t.hit_blocks += i < hits
        for kind, n in block.kind_tokens:
            k = out.setdefault(kind, HitTally())
            k.lookup_tokens += n
            if i < hits:
                k.hit_tokens += n
    return out
