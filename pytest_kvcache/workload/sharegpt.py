"""ShareGPT replay: real conversations from a file as a trace (``--kv-workload sharegpt``).

Each conversation of the file (``sharegpt_load``) becomes one conversation of the trace, its
turns in the file's order:

- A turn is the user's message(s) (and any system message after the first user message) up to
  an assistant reply. Its request's prompt is the conversation so far: the earlier turns are
  already in the conversation's block sequence (``blocks.BlockSequence``), so they are
  ``multi_turn`` lookups, hits while their blocks are still cached. The request adds its own
  text as ``new`` segments; the reply is its output (``generate_tokens``), stored after decode
  with its own token ids, so the next turn finds it.
- System messages before the first user message are the conversation's system prompt:
  ``system`` segments (lookup kind ``prefix``). Blocks are keyed by their token ids
  (``blocks.token_identity``), so conversations that share a system prompt share its blocks,
  and one stored is a hit for all.
- A user message with no reply after it (the end of a file's conversation) is dropped: it
  has no output length.

Caps: ``max_input_tokens`` ends a conversation before the first turn whose prompt (system
prompt + earlier turns + its text) exceeds it; ``max_output_tokens`` cuts a longer reply to
that many tokens (the next turn's history holds the cut reply); ``conversations`` keeps the
first N of the seeded order.

Order: the conversations are shuffled by a seeded permutation (stream ``sharegpt.order``,
raw bits, so the order does not move with the numpy version) and dealt round-robin to the
users; a user sends its conversations one after another. Requests are chat requests (persona
``chatbot``, QoS ``interactive``); the pause before each is drawn from the chatbot persona's
think time (stream ``sharegpt.user{u}.think``) times ``think_time_scale``. The trace is a pure
function of the file's bytes, the tokenizer and these parameters.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..rng import derive
from .blocks import Segment
from .personas import PERSONA_QOS, PERSONAS
from .sharegpt_load import ASSISTANT, SYSTEM, Conversations, load_conversations
from .trace import Request, Trace, between, unit

PERSONA = "chatbot"


@dataclass(frozen=True, slots=True)
class ShareGPTRequest(Request):
    """A ``trace.Request`` replayed from a file: ``output_ids`` are the reply's token ids (cut to
    ``generate_tokens``), so the stored output blocks are keyed by real content."""

    output_ids: tuple[int, ...] | None = None

    def output_segment(self) -> Segment:
        return Segment("output", f"{self.conversation_id}.out{self.turn}", self.generate_tokens,
                       token_ids=self.output_ids)

    def to_dict(self) -> dict:
        out = Request.to_dict(self)
        if self.output_ids is not None:
            out["output_token_ids"] = list(self.output_ids)
        return out


@dataclass
class ShareGPTParams:
    """What a ShareGPT trace depends on: the file (``file_sha256`` of its bytes), the
    tokenizer (``--kv-tokenizer``), the seed, the users and the caps (tokens; 0 = none)."""

    file: str
    file_sha256: str
    tokenizer: str
    seed: int
    users: int
    conversations: int = 0
    max_input_tokens: int = 0
    max_output_tokens: int = 0
    think_time_scale: float = 1.0
    cache: str = field(default="auto", compare=False)

    def to_dict(self) -> dict:
        return {"file": self.file, "file_sha256": self.file_sha256, "tokenizer": self.tokenizer, "seed": self.seed,
                "users": self.users, "conversations": self.conversations, "max_input_tokens": self.max_input_tokens,
                "max_output_tokens": self.max_output_tokens, "think_time_scale": self.think_time_scale}

    @classmethod
    def from_dict(cls, raw: dict) -> ShareGPTParams:
        return cls(**raw)


def check_sharegpt_settings(settings) -> None:
    """Checks of the ShareGPT options against each other; raises ConfigError naming the fix."""
    if settings.workload == "sharegpt" and not settings.sharegpt:
        raise ConfigError("--kv-workload sharegpt replays a ShareGPT file: give it with --kv-sharegpt PATH (a JSON "
                          "list of conversations), or choose another --kv-workload.")


def _file_sha(path: str) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    except OSError as exc:
        raise ConfigError(f"--kv-sharegpt {path}: cannot read it ({exc.strerror}); give an existing ShareGPT JSON "
                          "file.") from None
    return h.hexdigest()


def sharegpt_params(settings) -> ShareGPTParams:
    """The parameters ``--kv-sharegpt`` and its options give (users: ``Settings.most_users``)."""
    check_sharegpt_settings(settings)
    return ShareGPTParams(file=str(settings.sharegpt), file_sha256=_file_sha(settings.sharegpt),
                          tokenizer=settings.tokenizer, seed=settings.seed, users=settings.most_users,
                          conversations=settings.sharegpt_conversations,
                          max_input_tokens=settings.sharegpt_max_input_tokens,
                          max_output_tokens=settings.sharegpt_max_output_tokens,
                          think_time_scale=settings.think_time_scale, cache=settings.sharegpt_cache)


_LOADED: dict[tuple, Conversations] = {}


def preload(settings) -> None:
    """Read, validate and tokenize ``--kv-sharegpt`` now (at configure time), so a malformed
    file is a usage error before anything runs; the scenarios reuse what was read."""
    if settings.sharegpt:
        conversations_for(sharegpt_params(settings))


def conversations_for(params: ShareGPTParams) -> Conversations:
    """The file's tokenized conversations (kept in this process per file hash and tokenizer)."""
    key = (params.file, params.file_sha256, params.tokenizer, params.cache)
    if key not in _LOADED:
        convs = load_conversations(params.file, params.tokenizer, params.cache)
        if convs.file_sha256 != params.file_sha256:
            raise ConfigError(f"--kv-sharegpt {params.file} changed while it was read; run again when it is complete.")
        _LOADED.clear()  # one file at a time: a 100 MB file's arrays are kept, not every file's
        _LOADED[key] = convs
    return _LOADED[key]


def _order(seed: int, n: int) -> list[int]:
    """A seeded permutation of range(n) (Fisher-Yates on raw 64-bit draws)."""
    order = list(range(n))
    raw = derive(seed, "sharegpt.order").bit_generator.random_raw(max(n - 1, 0)).tolist()
    for k, i in enumerate(range(n - 1, 0, -1)):
        j = between(raw[k], 0, i)
        order[i], order[j] = order[j], order[i]
    return order


# One planned turn: (conversation index, turn, system message indices, new message indices,
# reply message index, reply tokens kept, think time)
_Turn = tuple


@dataclass
class _Stats:
    turns_over_input_cap: int = 0
    conversations_without_turns: int = 0
    replies_cut: int = 0
    unanswered: int = 0


def _turns(convs: Conversations, c: int, params: ShareGPTParams, stats: _Stats) -> list[tuple]:
    """The turns of conversation ``c``: (system msgs, new msgs, reply msg, reply tokens kept)."""
    out = []
    system: list[int] = []
    pending: list[int] = []
    started = False
    history = 0
    for m in range(int(convs.conv_offsets[c]), int(convs.conv_offsets[c + 1])):
        role = int(convs.roles[m])
        if role == SYSTEM and not started:
            system.append(m)
        elif role != ASSISTANT:
            started = True
            pending.append(m)
        else:
            started = True
            first = not out
            prompt = history + sum(map(convs.tokens, pending)) + (sum(map(convs.tokens, system)) if first else 0)
            if params.max_input_tokens and prompt > params.max_input_tokens:
                stats.turns_over_input_cap += 1
                return out
            kept = convs.tokens(m)
            if params.max_output_tokens and kept > params.max_output_tokens:
                kept = params.max_output_tokens
                stats.replies_cut += 1
            out.append((tuple(system) if first else (), tuple(pending), m, kept))
            history, pending = prompt + kept, []
    stats.unanswered += bool(pending)
    return out


class _UserRequests(Sequence):
    """One user's requests, built from the file's arrays when read (not kept: a whole file's
    token ids as Python tuples would take about 36 bytes a token)."""

    def __init__(self, convs: Conversations, user: int, plan: list[_Turn]):
        self._convs, self._user, self._plan = convs, user, plan

    def __len__(self) -> int:
        return len(self._plan)

    def _ids(self, m: int, n: int | None = None) -> tuple[int, ...]:
        first = int(self._convs.msg_offsets[m])
        end = int(self._convs.msg_offsets[m + 1]) if n is None else first + n
        return tuple(self._convs.ids[first:end].tolist())

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        c, turn, system, new, reply, kept, think = self._plan[index]
        cid = self._convs.conv_ids[c]
        segments = [Segment("system", f"{cid}.sys{j}", self._convs.tokens(m), token_ids=self._ids(m))
                    for j, m in enumerate(system)]
        news = [Segment("new", f"{cid}.in{turn}.{j}", self._convs.tokens(m), token_ids=self._ids(m))
                for j, m in enumerate(new)]
        return ShareGPTRequest(
            user_id=self._user, seq=index, conversation_id=cid, turn=turn, persona=PERSONA, qos=PERSONA_QOS[PERSONA],
            context_tokens=sum(s.tokens for s in news), generate_tokens=kept, think_time_s=think,
            segments=tuple(segments + news), output_ids=self._ids(reply, kept))


@dataclass(eq=False)
class ShareGPTTrace(Trace):
    """A ``trace.Trace`` replayed from a ShareGPT file; ``source`` says what was replayed
    (file, SHA-256, tokenizer, counts; the report's ``trace.source``)."""

    source: dict = field(default_factory=dict)
    kinds: frozenset = frozenset()

    def lookup_kinds(self) -> set[str]:
        return set(self.kinds)


def generate_sharegpt(params: ShareGPTParams) -> ShareGPTTrace:
    """The trace of ``params`` (see the module text). Raises ConfigError when the file is
    malformed or no conversation has a turn within the caps."""
    convs = conversations_for(params)
    order = _order(params.seed, len(convs))
    if params.conversations:
        order = order[:params.conversations]
    stats = _Stats()
    plans: list[list[_Turn]] = [[] for _ in range(params.users)]
    think_lo, think_hi = PERSONAS[PERSONA].think_time_s
    streams = [None] * params.users
    used = 0
    system_prompts: Counter = Counter()
    for c in order:
        turns = _turns(convs, c, params, stats)
        if not turns:
            stats.conversations_without_turns += 1
            continue
        u = used % params.users
        used += 1
        if streams[u] is None:
            streams[u] = derive(params.seed, f"sharegpt.user{u}.think").bit_generator
        if turns[0][0]:
            system_prompts[hashlib.sha256(b"".join(convs.ids[convs.msg_offsets[m]:convs.msg_offsets[m + 1]].tobytes()
                                                   for m in turns[0][0])).hexdigest()] += 1
        for t, (system, new, reply, kept) in enumerate(turns, 1):
            think = (think_lo + unit(int(streams[u].random_raw())) * (think_hi - think_lo)) * params.think_time_scale
            plans[u].append((c, t, system, new, reply, kept, round(think, 6)))
    if not used:
        raise ConfigError(f"--kv-sharegpt {params.file}: no conversation has a user turn with a reply"
                          + (f" within --kv-sharegpt-max-input-tokens {params.max_input_tokens}; raise it"
                             if params.max_input_tokens else "; give conversations with user and assistant messages")
                          + ".")
    requests = sum(map(len, plans))
    kinds = {"prefix"} if system_prompts else set()
    if any(p[1] > 1 for plan in plans for p in plan):
        kinds.add("multi_turn")
    shared = sum(n for n in system_prompts.values() if n > 1)
    source = {
        "format": "sharegpt", "path": params.file, "file_sha256": params.file_sha256, "tokenizer": convs.tokenizer,
        "token_ids": ("derived from the text (4 characters a token), not a model's vocabulary"
                      if params.tokenizer in ("", "estimate") else "the tokenizer's"),
        "tokenization_cache": convs.cache, "conversations_in_file": len(convs), "conversations": used,
        "requests": requests, "system_prompts": len(system_prompts), "conversations_sharing_a_system_prompt": shared,
        "turns_over_max_input_tokens": stats.turns_over_input_cap, "replies_cut_to_max_output_tokens": stats.replies_cut,
        "conversations_without_a_turn": stats.conversations_without_turns, "unanswered_messages_dropped": stats.unanswered,
    }
    source["text"] = (f"ShareGPT {params.file} (sha256 {params.file_sha256[:16]}...), tokenizer {convs.tokenizer}, "
                      f"{used} of {len(convs)} conversations, {requests} requests, {shared} conversations share a "
                      f"system prompt")
    per_user = [_UserRequests(convs, u, plan) for u, plan in enumerate(plans)]
    return ShareGPTTrace(params, per_user, source=source, kinds=frozenset(kinds))

