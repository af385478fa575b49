"""How a conversation's growing token stream maps onto cache entries.

With ``chunk_tokens > 0`` (LMCache-style, default 256) the stream is cut into fixed blocks, so
every full entry has the same size and per-operation latency percentiles compare between drives
whatever the context length. The partially filled last block is an entry too; when later tokens
extend it the cache rewrites it under the same key. With ``chunk_tokens == 0`` each append is one
entry of exactly its size, as the MLPerf reference stores one entry per turn.

Any stream of tokens that is stored and later reloaded (a shared prefix, a RAG document) can use
this layout; ``conversation_id`` is then that stream's id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ConfigError

_KEY_RE = re.compile(r"[A-Za-z0-9._-]+\Z")  # keys appear in reports, logs and CSV


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    tokens: int


class ConversationLayout:
    __slots__ = ("conversation_id", "chunk_tokens", "_total", "_segments")

    def __init__(self, conversation_id: str, chunk_tokens: int = 256) -> None:
        if not isinstance(conversation_id, str) or not _KEY_RE.match(conversation_id):
            raise ConfigError(f"conversation id {conversation_id!r} must be a non-empty string of [A-Za-z0-9._-]")
        if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 0:
            raise ConfigError(f"chunk_tokens must be an integer >= 0 (0 = one entry per turn), not {chunk_tokens!r}")
        self.conversation_id = conversation_id
        self.chunk_tokens = chunk_tokens
        self._total = 0
        self._segments: list[int] = []  # token count per segment (chunk_tokens == 0 only)

    @property
    def total_tokens(self) -> int:
        return self._total

    def _block(self, index: int) -> Entry:
        filled = min(self.chunk_tokens, self._total - index * self.chunk_tokens)
        return Entry(f"{self.conversation_id}.k{index:05d}", filled)

    def _segment(self, index: int) -> Entry:
        return Entry(f"{self.conversation_id}.s{index:04d}", self._segments[index])

    def append(self, n_tokens: int) -> list[Entry]:
        """Add ``n_tokens``; return the entries that must be (re)written to store them."""
        if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 0:
            raise ValueError(f"n_tokens must be an integer >= 0, not {n_tokens!r}")
        if n_tokens == 0:
            return []
        start = self._total
        self._total += n_tokens
        if self.chunk_tokens == 0:
            self._segments.append(n_tokens)
            return [self._segment(len(self._segments) - 1)]
        first, last = start // self.chunk_tokens, (self._total - 1) // self.chunk_tokens
        return [self._block(i) for i in range(first, last + 1)]

    def entries(self) -> list[Entry]:
        """Every entry holding the conversation so far, in order: what a later turn loads."""
        if self.chunk_tokens == 0:
            return [self._segment(i) for i in range(len(self._segments))]
        return [self._block(i) for i in range(-(-self._total // self.chunk_tokens))]
