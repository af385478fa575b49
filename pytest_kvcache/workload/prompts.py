"""A prompt generator after seed 000 (AIPerf's ``PromptGenerator``): controlled prefix sharing.

Each request's prompt is, in order (most shared first, so the cache can reuse a prefix):

1. one shared system prompt of ``system_prompt_tokens`` (source ``sys``), the same for all;
2. a prefix from a pool of ``prefix_pool`` prompts of ``prefix_tokens`` each (``pfx{i}``),
   chosen per conversation (a later turn's prompt contains the earlier one, so its prefix cannot
   change mid-conversation; with one-turn conversations that is per request, as in seed 000);
3. a per-user context of ``user_context_tokens`` (``user{u}``), shared by the user's own
   conversations that drew the same prefix (its hits count as lookup kind ``prefix``);
4. the conversation's history (earlier turns' text and output), then this turn's new text:
   ``input`` tokens from the shared corpus at a drawn start position (``corpus_tokens > 0``;
   source ``corpus``, so two prompts that start at the same position share content), or
   private text (``{conversation}.in{turn}``) when ``corpus_tokens == 0``.

The generated output (``{conversation}.out{turn}``) is stored after decode and becomes history.
``prompt_segments(req)`` and ``output_segment(req)`` give these as ``blocks.Segment`` objects for a
conversation's ``BlockSequence``.

Named streams (seed 000: ``dataset.prompt.length``/``.corpus``/``.prefix``), one set per user
so adding users never changes existing users' requests: ``prompt.user{u}.`` + ``input_length``,
``output_length``, ``corpus``, ``prefix``, ``persona``, ``turns``, ``think``, ``qos``. Each
request takes a fixed number of raw draws from each stream, so changing one setting (say the
input stddev or the pool size) changes only what that stream decides.

Lengths: with ``input_mean`` set, a positive normal integer per seed 000 (``mean``/``stddev``):
``max(1, round(mean + stddev * z))`` with ``z`` from Box–Muller on two raw 53-bit uniforms
(truncation, not resampling, so request i always uses draws 2i and 2i+1); with it unset
(``None``), uniform in the persona's range as ``trace.py`` draws it. The same for the output.
As in ``trace.py``, numbers come from the raw PCG64 bits through our own helpers, never from
numpy's distribution methods, so the trace (and its SHA-256) does not move with numpy.

Personas decide turns per conversation, think time and, unless ``qos_mix`` is given, the QoS
class. The result is a ``trace.Trace`` of ``PromptRequest`` (a ``trace.Request`` with the
corpus position added), so the runner, the hash and the summary work on it unchanged.

Errors: ``PromptParams`` raises ``ConfigError`` with a one-paragraph message naming the fix.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import accumulate

from ..errors import ConfigError
from ..rng import derive
from .blocks import Segment
from .personas import DEFAULT_PERSONA_MIX, PERSONA_QOS, PERSONAS, QOS_CLASSES
from .trace import LazyRequests, Request, Trace, check_mix
from .trace import between as _between
from .trace import unit as _unit

_STREAMS = ("input_length", "output_length", "corpus", "prefix", "persona", "turns", "think", "qos")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def positive_normal_int(raw1: int, raw2: int, mean: float, stddev: float) -> int:
    """``max(1, round(mean + stddev * z))``, ``z`` standard normal by Box–Muller from two raw
    64-bit draws (``u1`` in (0, 1] so the log is finite). Stable across numpy versions."""
    u1 = 1.0 - _unit(raw1)
    z = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * _unit(raw2))
    return max(1, round(mean + stddev * z))


@dataclass(frozen=True, slots=True)
class PromptRequest(Request):
    """A ``trace.Request`` from the prompt generator. ``context_tokens`` is this turn's new
    text; ``prefix_id`` the pool prefix (``pfx{i}``) or None; ``corpus_start`` the new text's
    start in the shared corpus, or None when the text is private."""

    corpus_start: int | None = None

    def to_dict(self) -> dict:
        out = Request.to_dict(self)
        if self.corpus_start is not None:
            out["corpus_start"] = self.corpus_start
        return out


@dataclass
class PromptParams:
    """Everything a prompt trace depends on (token counts in tokens, times in seconds).

    Validated on creation; see the module text for what each field does.
    """

    seed: int
    users: int
    requests_per_user: int
    input_mean: float | None = None
    input_stddev: float = 0.0
    output_mean: float | None = None
    output_stddev: float = 0.0
    system_prompt_tokens: int = 0
    prefix_pool: int = 0
    prefix_tokens: int = 0
    user_context_tokens: int = 0
    corpus_tokens: int = 0
    persona_mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_PERSONA_MIX))
    qos_mix: dict[str, float] | None = None
    think_time_scale: float = 1.0

    def __post_init__(self) -> None:
        self.validate()

    def lookup_kinds(self) -> set[str]:
        """The lookup kinds this trace's prompts can hit, from the parameters alone (generating
        the trace to find them costs seconds for a large one): ``prefix`` with a system prompt,
        a pool or a user context; ``multi_turn`` when a persona of the mix has conversations of
        more than one turn and a user sends more than one request."""
        kinds = set()
        if self.system_prompt_tokens or self.prefix_pool or self.user_context_tokens:
            kinds.add("prefix")
        if self.requests_per_user > 1 and any(PERSONAS[k].turns[1] > 1 for k, w in self.persona_mix.items() if w > 0):
            kinds.add("multi_turn")
        return kinds

    def validate(self) -> None:
        if not _is_int(self.seed):
            raise ConfigError(f"prompt seed must be an integer, not {self.seed!r}; set --kv-seed")
        for name in ("users", "requests_per_user"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, not {value!r}")
        for side in ("input", "output"):
            mean, stddev = getattr(self, f"{side}_mean"), getattr(self, f"{side}_stddev")
            if mean is not None and (not _is_num(mean) or mean < 1):
                raise ConfigError(f"{side}_mean must be a number of tokens >= 1 (or unset to use the "
                                  f"personas' ranges), not {mean!r}; set --kv-{side}-tokens-mean")
            if not _is_num(stddev) or stddev < 0:
                raise ConfigError(f"{side}_stddev must be a number of tokens >= 0, not {stddev!r}; "
                                  f"set --kv-{side}-tokens-stddev to 0 for a fixed length")
            if mean is None and stddev:
                raise ConfigError(f"{side}_stddev is {stddev!r} but {side}_mean is unset; set "
                                  f"--kv-{side}-tokens-mean too, or drop the stddev to use the personas' ranges")
        for name in ("system_prompt_tokens", "prefix_pool", "prefix_tokens", "user_context_tokens", "corpus_tokens"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, not {value!r}")
        if self.prefix_tokens and not self.prefix_pool:
            raise ConfigError(f"prefix_tokens is {self.prefix_tokens} but the prefix pool is empty; set "
                              "--kv-prefix-pool to the number of prefixes (1 or more), or --kv-prefix-tokens 0 "
                              "for no prefix")
        if self.prefix_pool and not self.prefix_tokens:
            raise ConfigError(f"the prefix pool has {self.prefix_pool} prefixes of 0 tokens; set "
                              "--kv-prefix-tokens to their length, or --kv-prefix-pool 0 for no prefix")
        scale = self.think_time_scale
        if not _is_num(scale) or scale < 0:
            raise ConfigError(f"think_time_scale must be a finite number >= 0, not {scale!r}")
        check_mix("persona_mix", self.persona_mix, PERSONAS, DEFAULT_PERSONA_MIX, "persona")
        if self.qos_mix is not None:
            check_mix("qos_mix", self.qos_mix, QOS_CLASSES, {"interactive": 0.15, "responsive": 0.35, "batch": 0.5}, "QoS class")

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["persona_mix"] = {k: self.persona_mix[k] for k in sorted(self.persona_mix)}
        if self.qos_mix is not None:
            out["qos_mix"] = {k: self.qos_mix[k] for k in sorted(self.qos_mix)}
        return out


def _picker(mix: dict[str, float]):
    """Weighted choice from one raw draw; sorted names so the dict's order does not matter."""
    names = sorted(k for k, w in mix.items() if w > 0)
    cum = list(accumulate(float(mix[k]) for k in names))
    return lambda raw: names[min(bisect.bisect_right(cum, _unit(raw) * cum[-1]), len(names) - 1)]


def _length(raw: tuple[int, int], mean: float | None, stddev: float, lo_hi: tuple[int, int]) -> int:
    """A turn's length from its two raw draws: uniform in the persona's range, or a positive
    normal of ``mean``/``stddev``."""
    if mean is None:
        return _between(raw[0], *lo_hi)
    return positive_normal_int(raw[0], raw[1], mean, stddev)


class _Draws:
    """One named stream's raw 64-bit draws, taken from the bit generator 256 at a time: the
    same sequence as drawing them one by one (PCG64's raw output), for a tenth of the calls."""

    __slots__ = ("_gen", "_buf", "_i")

    def __init__(self, gen):
        self._gen, self._buf, self._i = gen, [], 0

    def next(self) -> int:
        if self._i == len(self._buf):
            self._buf, self._i = self._gen.random_raw(256).tolist(), 0
        self._i += 1
        return self._buf[self._i - 1]


def _user_stream(p: PromptParams, u: int) -> Iterator[PromptRequest]:
    """User ``u``'s requests in order, drawn one at a time (``LazyRequests`` reads it).

    Each named stream is consumed in the same order however far the list is read (a persona and
    a turn count per conversation; two lengths each for input and output, one corpus position,
    prefix choice, think time and QoS draw per request), so the requests are the same as drawing
    every stream's values for the whole list at once.
    """
    n = p.requests_per_user
    d = {name: _Draws(derive(p.seed, f"prompt.user{u}.{name}").bit_generator) for name in _STREAMS}
    inp, out, corpus, prefix, think, qos = (d[k].next for k in
                                            ("input_length", "output_length", "corpus", "prefix", "think", "qos"))
    pick_persona = _picker(p.persona_mix)
    pick_qos = _picker(p.qos_mix) if p.qos_mix is not None else None
    conv = turns = turn = 0
    cid = name = prefix_id = None
    for i in range(n):  # conversations back to back; the last one may be cut short
        if turn == turns:
            name = PERSONAS[pick_persona(d["persona"].next())].name
            turns = min(_between(d["turns"].next(), *PERSONAS[name].turns), n - i)
            cid, turn, conv = f"u{u:04d}c{conv:04d}", 0, conv + 1
        turn += 1
        persona = PERSONAS[name]
        in_raw, out_raw = (inp(), inp()), (out(), out())
        corpus_raw, prefix_raw, think_raw, qos_raw = corpus(), prefix(), think(), qos()
        if turn == 1 and p.prefix_pool:
            prefix_id = f"pfx{min(int(_unit(prefix_raw) * p.prefix_pool), p.prefix_pool - 1)}"
        lo, hi = persona.think_time_s
        context = _length(in_raw, p.input_mean, p.input_stddev, persona.context_tokens)
        start = corpus_raw % p.corpus_tokens if p.corpus_tokens else None
        yield PromptRequest(
            user_id=u, seq=i, conversation_id=cid, turn=turn, persona=name,
            qos=pick_qos(qos_raw) if pick_qos else PERSONA_QOS[name],
            context_tokens=context,
            generate_tokens=_length(out_raw, p.output_mean, p.output_stddev, persona.generate_tokens),
            think_time_s=round((lo + _unit(think_raw) * (hi - lo)) * p.think_time_scale, 6),
            prefix_id=prefix_id, corpus_start=start,
            segments=tuple(_segments(p, u, cid, turn, prefix_id, context, start)),
        )


def generate_prompts(params: PromptParams) -> Trace:
    """The prompt trace: a pure function of ``params`` (same params, same SHA-256). Each user's
    list is generated as far as it is read (``trace.LazyRequests``)."""
    params.validate()
    return Trace(params, [LazyRequests(_user_stream(params, u), params.requests_per_user)
                          for u in range(params.users)])


def prompt_segments(req: PromptRequest, params: PromptParams) -> list[Segment]:
    """The segments a turn adds to its conversation's ``BlockSequence`` before the lookup:
    on turn 1 the system prompt, the pool prefix and the user context, then the new text."""
    return _segments(params, req.user_id, req.conversation_id, req.turn, req.prefix_id,
                     req.context_tokens, req.corpus_start)


def _segments(params: PromptParams, user_id: int, conversation_id: str, turn: int, prefix_id: str | None,
              context_tokens: int, corpus_start: int | None) -> list[Segment]:
    out: list[Segment] = []
    if turn == 1:
        out.append(Segment("system", "sys", params.system_prompt_tokens))
        if prefix_id is not None:
            out.append(Segment("prefix", prefix_id, params.prefix_tokens))
        out.append(Segment("prefix", f"user{user_id}", params.user_context_tokens))
    if corpus_start is not None:
        out.append(Segment("new", "corpus", context_tokens, start=corpus_start))
    else:
        out.append(Segment("new", f"{conversation_id}.in{turn}", context_tokens))
    return [seg for seg in out if seg.tokens]


def output_segment(req: PromptRequest) -> Segment:
    """The generated tokens of a turn, stored after decode (history for the next turn)."""
    return Segment("output", f"{req.conversation_id}.out{req.turn}", req.generate_tokens)
