"""Requests, the trace generator, and trace files.

A trace is a pure function of ``WorkloadParams``: every report carries its SHA-256, so two runs
that claim the same workload can be checked to have replayed the same requests. To keep that
promise the generator uses no clock, no global RNG and no dict or thread order, and each user
draws from its own named streams (``workload.user{u}.persona`` / ``.turns`` / ``.lengths`` /
``.think``), so user 3's requests do not change when users are added and lengths do not change
when think time is scaled.

Numbers are mapped from the raw 64-bit PCG64 output by the small helpers below rather than by
``Generator.integers``/``uniform``: numpy keeps the bit stream stable across releases but not
the algorithms of its distribution methods, and the hash must not move with the numpy version.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import re
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate

from ..errors import ConfigError
from ..rng import derive
from .blocks import Segment
from .personas import DEFAULT_PERSONA_MIX, PERSONA_QOS, PERSONAS, QOS_CLASSES

_ID_RE = re.compile(r"[A-Za-z0-9._-]+\Z")  # ids end up inside cache keys and file names
_INV_2_53 = 1.0 / (1 << 53)


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))  # one encoder: json.dumps makes one a call


def _canonical_json(obj: dict) -> str:
    return _CANONICAL.encode(obj)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class Request:
    """One user turn. ``seq`` indexes the user's own list; ``turn`` counts from 1 per conversation.

    ``context_tokens`` are this turn's new prompt tokens; the conversation's earlier turns (their
    context and generated tokens) are history that the turn loads from the cache, see ``layout``.
    ``think_time_s`` is the pause before the user sends this request (after the previous one
    finished), rounded to microseconds so it survives a JSON round trip unchanged.
    """

    user_id: int
    seq: int
    conversation_id: str
    turn: int
    persona: str
    qos: str
    context_tokens: int
    generate_tokens: int
    think_time_s: float
    prefix_id: str | None = None
    rag_chunk_ids: tuple[str, ...] = ()
    segments: tuple[Segment, ...] = ()
    arrival_s: float | None = None  # a timestamped trace's arrival, seconds from its first request (replay.py)

    def prompt_segments(self) -> tuple[Segment, ...]:
        """What this turn adds to its conversation's prompt before the lookup (``blocks.Segment``):
        ``segments`` when the generator set them, else this turn's private new text."""
        if self.segments:
            return self.segments
        return (Segment("new", f"{self.conversation_id}.in{self.turn}", self.context_tokens),)

    def output_segment(self) -> Segment:
        """The turn's generated tokens, stored after decode (history for the next turn)."""
        return Segment("output", f"{self.conversation_id}.out{self.turn}", self.generate_tokens)

    def to_dict(self) -> dict:
        """Optional fields are written only when set, so adding one later keeps old hashes."""
        out = {
            "user_id": self.user_id,
            "seq": self.seq,
            "conversation_id": self.conversation_id,
            "turn": self.turn,
            "persona": self.persona,
            "qos": self.qos,
            "context_tokens": self.context_tokens,
            "generate_tokens": self.generate_tokens,
            "think_time_s": self.think_time_s,
        }
        if self.prefix_id is not None:
            out["prefix_id"] = self.prefix_id
        if self.rag_chunk_ids:
            out["rag_chunk_ids"] = list(self.rag_chunk_ids)
        if self.segments:
            out["segments"] = [segment_to_dict(seg) for seg in self.segments]
        if self.arrival_s is not None:
            out["arrival_s"] = self.arrival_s
        return out

    @classmethod
    def from_dict(cls, raw: object) -> Request:
        """Validate one request object; errors name the field and what it must be."""
        if not isinstance(raw, dict):
            raise ConfigError("a request must be a JSON object; fix or regenerate the trace")
        unknown = set(raw) - set(_ALL_FIELDS)
        if unknown:
            raise ConfigError(f"unknown request field(s) {sorted(unknown)}; allowed: {list(_ALL_FIELDS)}")
        missing = [k for k in _REQUIRED if k not in raw]
        if missing:
            raise ConfigError(f"request is missing field(s) {missing}; every request needs {list(_REQUIRED)}")
        for key, low in (("user_id", 0), ("seq", 0), ("turn", 1), ("context_tokens", 0), ("generate_tokens", 0)):
            if not _is_int(raw[key]) or raw[key] < low:
                raise ConfigError(f"{key} must be an integer >= {low}, not {raw[key]!r}")
        if not isinstance(raw["conversation_id"], str) or not _ID_RE.match(raw["conversation_id"]):
            raise ConfigError(f"conversation_id must be a non-empty string of [A-Za-z0-9._-], not {raw['conversation_id']!r}")
        if not isinstance(raw["persona"], str) or not raw["persona"]:
            raise ConfigError(f"persona must be a non-empty string, not {raw['persona']!r}")
        if raw["qos"] not in QOS_CLASSES:
            raise ConfigError(f"qos must be one of {list(QOS_CLASSES)}, not {raw['qos']!r}")
        think = raw["think_time_s"]
        if not isinstance(think, (int, float)) or isinstance(think, bool) or not math.isfinite(think) or think < 0:
            raise ConfigError(f"think_time_s must be a finite number of seconds >= 0, not {think!r}")
        prefix_id = raw.get("prefix_id")
        if prefix_id is not None and (not isinstance(prefix_id, str) or not _ID_RE.match(prefix_id)):
            raise ConfigError(f"prefix_id must be null or a string of [A-Za-z0-9._-], not {prefix_id!r}")
        rag = raw.get("rag_chunk_ids", [])
        if not isinstance(rag, list) or not all(isinstance(r, str) and _ID_RE.match(r) for r in rag):
            raise ConfigError(f"rag_chunk_ids must be a list of strings of [A-Za-z0-9._-], not {rag!r}")
        segments = raw.get("segments", [])
        if not isinstance(segments, list):
            raise ConfigError(f"segments must be a list of segment objects, not {segments!r}")
        arrival = raw.get("arrival_s")
        if arrival is not None and (not isinstance(arrival, (int, float)) or isinstance(arrival, bool)
                                    or not math.isfinite(arrival) or arrival < 0):
            raise ConfigError(f"arrival_s must be null or a finite number of seconds >= 0, not {arrival!r}")
        extra = {k: raw[k] for k in _EXTRA_FIELDS if k in raw}  # a subclass's fields (corpus_start)
        target = cls
        if "output_token_ids" in extra and cls is Request:  # replayed from a ShareGPT file
            from .sharegpt import ShareGPTRequest as target
            ids = extra.pop("output_token_ids")
            if not isinstance(ids, list) or len(ids) != raw["generate_tokens"] or not all(_is_int(i) for i in ids):
                raise ConfigError(f"output_token_ids must be a list of generate_tokens integers, not {ids!r:.60}")
            extra["output_ids"] = tuple(ids)
        elif extra and cls is Request:  # written by the prompt generator
            from .prompts import PromptRequest as target
        return target(**{k: raw[k] for k in _REQUIRED if k != "think_time_s"},
                   think_time_s=round(float(think), 6), prefix_id=prefix_id, rag_chunk_ids=tuple(rag),
                   segments=tuple(segment_from_dict(x) for x in segments),
                   arrival_s=None if arrival is None else round(float(arrival), 6), **extra)


_REQUIRED = ("user_id", "seq", "conversation_id", "turn", "persona", "qos",
             "context_tokens", "generate_tokens", "think_time_s")
_EXTRA_FIELDS = ("corpus_start", "output_token_ids")
_ALL_FIELDS = (*_REQUIRED, "prefix_id", "rag_chunk_ids", "segments", "arrival_s", *_EXTRA_FIELDS)
_SEGMENT_FIELDS = ("kind", "source", "tokens", "start", "token_ids", "standalone")


def segment_to_dict(seg: Segment) -> dict:
    """A segment as JSON (defaults left out, so the canonical line stays short)."""
    out = {"kind": seg.kind, "source": seg.source, "tokens": seg.tokens}
    if seg.start:
        out["start"] = seg.start
    if seg.token_ids is not None:
        out["token_ids"] = list(seg.token_ids)
    if seg.standalone:
        out["standalone"] = True
    return out


def segment_from_dict(raw: object) -> Segment:
    """Validate one segment object (``Segment`` checks the values); errors name the field."""
    if not isinstance(raw, dict) or set(raw) - set(_SEGMENT_FIELDS) or not {"kind", "source", "tokens"} <= set(raw):
        raise ConfigError(f"a segment must be an object with kind, source and tokens (optional: start, token_ids, "
                          f"standalone), not {raw!r}")
    ids = raw.get("token_ids")
    if ids is not None and (not isinstance(ids, list) or not all(_is_int(i) for i in ids)):
        raise ConfigError(f"segment token_ids must be a list of integers, not {ids!r}")
    standalone = raw.get("standalone", False)
    if not isinstance(standalone, bool):
        raise ConfigError(f"segment standalone must be true or false, not {standalone!r}")
    return Segment(raw["kind"], raw["source"], raw["tokens"], raw.get("start", 0),
                   None if ids is None else tuple(ids), standalone)


def check_mix(name: str, mix, known, example: dict, what: str) -> None:
    """Raise ConfigError naming the fix unless ``mix`` maps names of ``known`` (``what`` they
    are: persona, QoS class) to finite weights >= 0, not all zero (``example`` shows one)."""
    shown = ", ".join(f"{k}: {v}" for k, v in example.items())
    if not isinstance(mix, dict) or not mix:
        raise ConfigError(f"{name} must map {what} names to weights, e.g. {{{shown}}}")
    unknown = sorted(set(mix) - set(known))
    if unknown:
        raise ConfigError(f"{name} names unknown {what}(s) {unknown}; known: {sorted(known)}")
    for key, weight in mix.items():
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not math.isfinite(weight) or weight < 0:
            raise ConfigError(f"{name} weight for {key!r} must be a finite number >= 0, not {weight!r}")
    if sum(mix.values()) <= 0:
        raise ConfigError(f"{name} weights must not all be zero; give at least one {what} a positive weight, "
                          f"e.g. {{{shown}}}")


@dataclass
class WorkloadParams:
    """Everything the trace depends on. Validated on creation (and again by ``generate_trace``)."""

    seed: int
    users: int
    requests_per_user: int
    persona_mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_PERSONA_MIX))
    think_time_scale: float = 1.0
    max_context_tokens: int = 0  # 0 = no cap; otherwise each request's context_tokens is clamped

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not _is_int(self.seed):
            raise ConfigError(f"workload seed must be an integer, not {self.seed!r}; set --kv-seed")
        if not _is_int(self.users) or self.users < 1:
            raise ConfigError(f"workload users must be an integer >= 1, not {self.users!r}; set --kv-users")
        if not _is_int(self.requests_per_user) or self.requests_per_user < 1:
            raise ConfigError(f"requests_per_user must be an integer >= 1, not {self.requests_per_user!r}")
        scale = self.think_time_scale
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale) or scale < 0:
            raise ConfigError(f"think_time_scale must be a finite number >= 0, not {scale!r}")
        if not _is_int(self.max_context_tokens) or self.max_context_tokens < 0:
            raise ConfigError(f"max_context_tokens must be an integer >= 0 (0 = no cap), not {self.max_context_tokens!r}")
        check_mix("persona_mix", self.persona_mix, PERSONAS, DEFAULT_PERSONA_MIX, "persona")

    def to_dict(self) -> dict:
        return {
            "seed": self.seed,
            "users": self.users,
            "requests_per_user": self.requests_per_user,
            "persona_mix": {k: self.persona_mix[k] for k in sorted(self.persona_mix)},
            "think_time_scale": self.think_time_scale,
            "max_context_tokens": self.max_context_tokens,
        }

    @classmethod
    def from_dict(cls, raw: object) -> WorkloadParams:
        if not isinstance(raw, dict):
            raise ConfigError("workload params must be a JSON object")
        allowed = ("seed", "users", "requests_per_user", "persona_mix", "think_time_scale", "max_context_tokens")
        unknown = set(raw) - set(allowed)
        missing = [k for k in allowed[:3] if k not in raw]
        if unknown or missing:
            raise ConfigError(f"workload params: unknown {sorted(unknown)}, missing {missing}; allowed: {list(allowed)}")
        return cls(**raw)


def unit(raw: int) -> float:
    """[0, 1) from the top 53 bits of a raw 64-bit draw (stable across numpy versions)."""
    return (raw >> 11) * _INV_2_53


def between(raw: int, lo: int, hi: int) -> int:
    """Integer in [lo, hi] from a raw 64-bit draw; the modulo bias (span / 2**64) is far below
    anything measurable."""
    return lo + raw % (hi - lo + 1)


_unit, _between = unit, between  # former private names, still imported by older modules


def _user_stream(params: WorkloadParams, u: int, names: list[str], cum: list[float]) -> Iterator[Request]:
    """User ``u``'s requests in order, drawn one conversation at a time.

    Each stream is consumed in order (persona and turns per conversation, two lengths and one
    think time per request), so the requests are the same however far the list is read.
    """
    n = params.requests_per_user
    streams = {s: derive(params.seed, f"workload.user{u}.{s}").bit_generator
               for s in ("persona", "turns", "lengths", "think")}
    cap = params.max_context_tokens
    conv = i = 0
    while i < n:  # conversations back to back; the last one may be cut short
        pick = _unit(int(streams["persona"].random_raw())) * cum[-1]
        p = PERSONAS[names[min(bisect.bisect_right(cum, pick), len(names) - 1)]]
        turns = min(_between(int(streams["turns"].random_raw()), *p.turns), n - i)
        cid = f"u{u:04d}c{conv:04d}"
        lengths = streams["lengths"].random_raw(2 * turns).tolist()
        thinks = streams["think"].random_raw(turns).tolist()
        lo, hi = p.think_time_s
        for t in range(turns):
            context = _between(lengths[2 * t], *p.context_tokens)
            think = (lo + _unit(thinks[t]) * (hi - lo)) * params.think_time_scale
            yield Request(
                user_id=u, seq=i, conversation_id=cid, turn=t + 1, persona=p.name, qos=PERSONA_QOS[p.name],
                context_tokens=min(context, cap) if cap else context,
                generate_tokens=_between(lengths[2 * t + 1], *p.generate_tokens),
                think_time_s=round(think, 6),
            )
            i += 1
        conv += 1


class LazyRequests(Sequence):
    """One user's request list of known length, generated as far as it is read and kept.

    A run that replays a few turns per user of a long trace generates only those (the time to
    the first I/O does not grow with ``requests_per_user``); hashing or saving the trace reads
    it all. Equal to any sequence with the same requests. Thread-safe.
    """

    def __init__(self, source: Iterator[Request], length: int):
        self._source, self._length = source, length
        self._done: list[Request] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._length

    def _upto(self, n: int) -> None:
        with self._lock:
            while len(self._done) < n:
                self._done.append(next(self._source))

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._length))]
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(index)
        if index >= len(self._done):
            self._upto(index + 1)
        return self._done[index]

    def __iter__(self) -> Iterator[Request]:
        for i in range(self._length):
            yield self[i]

    def __eq__(self, other) -> bool:
        if not isinstance(other, Sequence) or len(other) != self._length:
            return NotImplemented if not isinstance(other, Sequence) else False
        return all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None

    @property
    def generated(self) -> int:
        """How many requests of the list have been generated so far."""
        return len(self._done)


def generate_trace(params: WorkloadParams) -> Trace:
    """The trace of ``params``: each user's list is generated lazily (``LazyRequests``)."""
    params.validate()
    # Sorted names and zero weights dropped: the draw does not depend on the mix dict's order.
    names = sorted(k for k, w in params.persona_mix.items() if w > 0)
    cum = list(accumulate(float(params.persona_mix[k]) for k in names))
    return Trace(params, [LazyRequests(_user_stream(params, u, names, cum), params.requests_per_user)
                          for u in range(params.users)])


@dataclass(eq=False)
class Trace:
    """``per_user[u]`` is user u's requests in order (a list, or a ``LazyRequests`` that generates
    them as they are read). Treat as immutable: the hash is cached.

    ``params`` is what the trace was generated from (``WorkloadParams``, ``prompts.PromptParams``,
    ``rag.RagParams`` or ``mixed.MixedParams``), or None for a hand-written file. ``documents`` are the standalone
    segments (RAG documents) to store before any user starts; they come first in the file and
    the hash.
    """

    params: object | None
    per_user: list[list[Request]]
    documents: tuple[Segment, ...] = ()
    _sha: str | None = field(default=None, init=False, repr=False)

    def requests(self) -> Iterator[Request]:
        """Canonical order: round-robin by seq across users (user 0 seq 0, user 1 seq 0, ...)."""
        longest = max(map(len, self.per_user), default=0)
        for seq in range(longest):
            for reqs in self.per_user:
                if seq < len(reqs):
                    yield reqs[seq]

    __iter__ = requests

    def __len__(self) -> int:
        return sum(map(len, self.per_user))

    def lookup_kinds(self) -> set[str]:
        """The lookup kinds this trace's prompts can hit: ``prefix`` (a system prompt, a pool
        prefix or a per-user context), ``rag`` (documents), ``multi_turn`` (a later turn).
        Parameters that know it answer without generating the trace (``PromptParams``, ``MixedParams``)."""
        if hasattr(self.params, "lookup_kinds"):
            return self.params.lookup_kinds()
        kinds = set()
        for r in self.requests():
            if r.turn > 1:
                kinds.add("multi_turn")
            for seg in r.prompt_segments():
                if seg.tokens and seg.kind in ("system", "prefix", "rag"):
                    kinds.add("rag" if seg.kind == "rag" else "prefix")
        return kinds

    def lines(self) -> Iterator[str]:
        """The canonical JSONL lines (with newline) that the hash covers and files hold."""
        for doc in self.documents:
            yield _canonical_json({"document": segment_to_dict(doc)}) + "\n"
        for r in self.requests():
            yield _canonical_json(r.to_dict()) + "\n"

    def sha256(self) -> str:
        if self._sha is None:
            h = hashlib.sha256()
            for line in self.lines():
                h.update(line.encode())
            self._sha = h.hexdigest()
        return self._sha

    def summary(self) -> dict:
        n = len(self)
        ctx = sum(r.context_tokens for r in self.requests())
        gen = sum(r.generate_tokens for r in self.requests())
        return {
            "requests": n,
            "users": len(self.per_user),
            "conversations": len({r.conversation_id for r in self.requests()}),
            "context_tokens_total": ctx,
            "context_tokens_mean": ctx / n if n else 0.0,
            "generate_tokens_total": gen,
            "generate_tokens_mean": gen / n if n else 0.0,
            "personas": dict(sorted(Counter(r.persona for r in self.requests()).items())),
            "qos": dict(sorted(Counter(r.qos for r in self.requests()).items())),
            "sha256": self.sha256(),
        }
