"""Mixed workload (the "kitchen sink"): RAG users and chat users in one trace.

Users are split by a fixed stride, not by a draw: with ``rag_user_share`` = s, user ``u`` is a
RAG user when ``ceil((u + 1) * s) > ceil(u * s)`` (s = 0.25: users 0, 4, 8, ...), so the first
``n`` users always hold ``ceil(n * s)`` RAG users, user 0 is one whenever s > 0, and adding
users (``--kv-autoscale``) never changes an existing user's kind. A RAG user's requests are
``rag.RagParams``' user ``u`` (single-turn queries that load their top-k documents, from the
``rag.user{u}.`` streams); a chat user's are ``prompts.PromptParams``' user ``u`` (the
personas' multi-turn conversations with the system prompt, prefix pool and length options,
from the ``prompt.user{u}.`` streams). Both parameter sets carry the same seed, user count and
requests per user; the RAG documents are the trace's ``documents`` (stored before the window)
when any user is a RAG user. So the trace is a pure function of ``MixedParams``, and its
SHA-256, ``save_jsonl``/``load_jsonl`` and ``lookup_kinds`` work as for the other generators.

Errors: ``MixedParams`` raises ``ConfigError`` naming the fix (a share outside [0, 1],
parameter sets that disagree).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import ConfigError
from .prompts import PromptParams, generate_prompts
from .rag import Document, RagParams, _user_requests, make_documents
from .trace import LazyRequests, Request, Trace

DEFAULT_RAG_USER_SHARE = 0.25


def is_rag_user(u: int, share: float) -> bool:
    """Whether user ``u`` (0-based) of a mixed trace is a RAG user (the stride rule above)."""
    return math.ceil((u + 1) * share) > math.ceil(u * share)


@dataclass
class MixedParams:
    """Everything a mixed trace depends on: the chat users' ``PromptParams``, the RAG users'
    ``RagParams`` (same seed, users and requests per user) and the share of RAG users."""

    chat: PromptParams
    rag: RagParams
    rag_user_share: float = DEFAULT_RAG_USER_SHARE

    def __post_init__(self) -> None:
        self.validate()

    @property
    def users(self) -> int:
        return self.chat.users

    def validate(self) -> None:
        s = self.rag_user_share
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or not 0 <= s <= 1:
            raise ConfigError(f"the RAG user share must be a number from 0 to 1 (0.25 = every fourth user), not "
                              f"{s!r}; set --kv-rag-user-share")
        if not isinstance(self.chat, PromptParams) or not isinstance(self.rag, RagParams):
            raise ConfigError("MixedParams needs a PromptParams (chat) and a RagParams (rag)")
        self.chat.validate()
        self.rag.validate()
        for name in ("seed", "users", "requests_per_user", "system_prompt_tokens", "think_time_scale"):
            if getattr(self.chat, name) != getattr(self.rag, name):
                raise ConfigError(f"mixed workload: chat and RAG {name} differ ({getattr(self.chat, name)!r} vs "
                                  f"{getattr(self.rag, name)!r}); build both from the same settings")

    def rag_users(self) -> list[int]:
        """The RAG users' indices, in order."""
        return [u for u in range(self.users) if is_rag_user(u, self.rag_user_share)]

    def lookup_kinds(self) -> set[str]:
        """The lookup kinds the trace can hit, from the parameters alone: the chat kinds when a
        user is a chat user, ``rag`` (and ``prefix`` with a system prompt) when one is a RAG user."""
        rag_users = len(self.rag_users())
        kinds = self.chat.lookup_kinds() if rag_users < self.users else set()
        if rag_users:
            kinds.add("rag")
            if self.rag.system_prompt_tokens:
                kinds.add("prefix")
        return kinds

    def to_dict(self) -> dict:
        return {"rag_user_share": self.rag_user_share, "chat": self.chat.to_dict(), "rag": self.rag.to_dict()}

    @classmethod
    def from_dict(cls, raw: object) -> MixedParams:
        """From ``to_dict``'s form (a trace file's header); ConfigError names what is wrong."""
        if not isinstance(raw, dict) or set(raw) != {"rag_user_share", "chat", "rag"} \
                or not isinstance(raw["chat"], dict) or not isinstance(raw["rag"], dict):
            raise ConfigError("mixed params must be an object with rag_user_share, chat and rag; regenerate the trace")
        rag = RagParams(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw["rag"].items()})
        return cls(PromptParams(**raw["chat"]), rag, raw["rag_user_share"])


def _rag_stream(params: RagParams, u: int, docs: list[Document]) -> Iterator[Request]:
    yield from _user_requests(params, u, docs)  # the user's whole list at its first read


def generate_mixed(params: MixedParams) -> Trace:
    """The mixed trace: a pure function of ``params`` (same params, same SHA-256). Each user's
    list is generated as far as it is read (``trace.LazyRequests``; a RAG user's at once)."""
    params.validate()
    chat = generate_prompts(params.chat).per_user  # lazy: only the chat users' lists are ever read
    docs = make_documents(params.rag) if params.rag_users() else []
    n = params.rag.requests_per_user
    per_user = [LazyRequests(_rag_stream(params.rag, u, docs), n) if is_rag_user(u, params.rag_user_share)
                else chat[u] for u in range(params.users)]
    return Trace(params, per_user, tuple(d.segment() for d in docs))
