"""RAG workload: documents ingested as KV blocks, queries that load their top-k documents.

After the RAG mode of the MLPerf reference ``kv-cache.py`` that seed 003 describes:

- *Ingestion*: ``documents`` documents (the reference's default is 10), each ``doc_tokens``
  long, drawn uniformly from 4,000–12,000 tokens, or 1,024–4,096 for large models, whose KV per
  token is bigger (the reference's rule: hidden size >= 8192 or >= 64 layers; with this
  catalog's models that is ``layers >= 64``). Each document is a *standalone* segment
  (``blocks.Segment(standalone=True)``): its blocks are keyed by the document alone, so what a
  query loads is exactly what ingestion stored. Ingestion happens before the window (warm-up).
- *Queries*: each request retrieves ``top_k`` distinct documents, Zipf-skewed: document i
  (0-based popularity rank) is drawn with weight ``1 / (i + 1) ** zipf_s`` (the reference's
  ``1/1, 1/2, 1/3, ...`` is ``zipf_s = 1``; 0 = uniform), without replacement, in the order
  drawn. The prompt is an optional shared system prompt, the documents (lookup kind ``rag``),
  then the question (``question_tokens``, uniform; seed 000's document-QA example has 50–120
  token questions); the answer is ``answer_tokens`` long (uniform).

Requests are ``trace.Request`` objects with ``rag_chunk_ids`` = the retrieved document ids, one
turn each, persona ``document`` (its think time and QoS class), so the trace hash and the runner
work on them unchanged. Streams: ``rag.documents`` for the sizes and ``rag.user{u}.`` +
``retrieval``/``question``/``answer``/``think`` per user; numbers from raw bits as in
``trace.py``.

Errors: ``RagParams`` raises ``ConfigError`` naming the fix (top-k above the document count,
empty or inverted ranges, a negative skew).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..errors import ConfigError
from ..rng import derive
from .blocks import Segment
from .personas import PERSONA_QOS, PERSONAS
from .trace import Request, Trace
from .trace import between as _between
from .trace import unit as _unit

SMALL_MODEL_DOC_TOKENS = (4000, 12000)
LARGE_MODEL_DOC_TOKENS = (1024, 4096)
LARGE_MODEL_LAYERS = 64
DEFAULT_DOCUMENTS = 10
DEFAULT_TOP_K = 2
_PERSONA = "document"


def doc_token_range(layers: int) -> tuple[int, int]:
    """Default document size range (tokens) for a model with ``layers`` layers."""
    return LARGE_MODEL_DOC_TOKENS if layers >= LARGE_MODEL_LAYERS else SMALL_MODEL_DOC_TOKENS


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _range_ok(r) -> bool:
    return (isinstance(r, tuple) and len(r) == 2 and all(_is_int(x) for x in r) and 1 <= r[0] <= r[1])


@dataclass(frozen=True, slots=True)
class Document:
    doc_id: str
    tokens: int

    def segment(self) -> Segment:
        """The document as a standalone ``rag`` segment: the same blocks at ingestion and query."""
        return Segment("rag", self.doc_id, self.tokens, standalone=True)


@dataclass
class RagParams:
    """Everything a RAG trace depends on. Token counts in tokens; validated on creation."""

    seed: int
    users: int
    requests_per_user: int
    documents: int = DEFAULT_DOCUMENTS
    doc_tokens: tuple[int, int] = SMALL_MODEL_DOC_TOKENS
    top_k: int = DEFAULT_TOP_K
    zipf_s: float = 1.0
    question_tokens: tuple[int, int] = (50, 150)
    answer_tokens: tuple[int, int] = (64, 256)
    system_prompt_tokens: int = 0
    think_time_scale: float = 1.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not _is_int(self.seed):
            raise ConfigError(f"RAG seed must be an integer, not {self.seed!r}; set --kv-seed")
        for name in ("users", "requests_per_user"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be an integer >= 1, not {getattr(self, name)!r}")
        if not _is_int(self.documents) or self.documents < 1:
            raise ConfigError(f"the RAG document count must be an integer >= 1, not {self.documents!r}; "
                              "set --kv-rag-documents")
        if not _is_int(self.top_k) or self.top_k < 1:
            raise ConfigError(f"RAG top-k must be an integer >= 1, not {self.top_k!r}; set --kv-rag-top-k")
        if self.top_k > self.documents:
            raise ConfigError(f"RAG top-k ({self.top_k}) is larger than the document count ({self.documents}): "
                              "a query cannot retrieve more distinct documents than exist; lower --kv-rag-top-k "
                              "or raise --kv-rag-documents")
        for name in ("doc_tokens", "question_tokens", "answer_tokens"):
            if not _range_ok(getattr(self, name)):
                raise ConfigError(f"{name} must be a (min, max) pair of token counts with 1 <= min <= max, "
                                  f"not {getattr(self, name)!r}")
        s = self.zipf_s
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s < 0:
            raise ConfigError(f"zipf_s must be a number >= 0 (0 = uniform, 1 = the reference's 1/rank), not {s!r}")
        if not _is_int(self.system_prompt_tokens) or self.system_prompt_tokens < 0:
            raise ConfigError(f"system_prompt_tokens must be an integer >= 0, not {self.system_prompt_tokens!r}")
        t = self.think_time_scale
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ConfigError(f"think_time_scale must be a finite number >= 0, not {t!r}")

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for k in ("doc_tokens", "question_tokens", "answer_tokens"):
            out[k] = list(out[k])
        return out


def make_documents(params: RagParams) -> list[Document]:
    """The document set, in popularity order (``doc0000`` is retrieved most often)."""
    raws = derive(params.seed, "rag.documents").bit_generator.random_raw(params.documents).tolist()
    return [Document(f"doc{i:04d}", _between(raw, *params.doc_tokens)) for i, raw in enumerate(raws)]


def zipf_top_k(raws: list[int], n: int, s: float) -> list[int]:
    """``len(raws)`` distinct indices in [0, n), each draw weighted ``1 / (i + 1) ** s`` among
    those not drawn yet (one raw 64-bit draw per pick, so the draw count is fixed)."""
    left = list(range(n))
    weights = [1.0 / (i + 1) ** s for i in left]
    picks = []
    for raw in raws:
        target = _unit(raw) * sum(weights)
        acc, j = 0.0, len(left) - 1
        for idx, w in enumerate(weights):
            acc += w
            if target < acc:
                j = idx
                break
        picks.append(left.pop(j))
        weights.pop(j)
    return picks


def _user_requests(p: RagParams, u: int, docs: list[Document]) -> list[Request]:
    n, k = p.requests_per_user, p.top_k
    s = {name: derive(p.seed, f"rag.user{u}.{name}").bit_generator
         for name in ("retrieval", "question", "answer", "think")}
    retrieval = s["retrieval"].random_raw(n * k).tolist()
    questions, answers = s["question"].random_raw(n).tolist(), s["answer"].random_raw(n).tolist()
    thinks = s["think"].random_raw(n).tolist()
    lo, hi = PERSONAS[_PERSONA].think_time_s
    by_id = {d.doc_id: d for d in docs}
    out = []
    for i in range(n):
        picked = zipf_top_k(retrieval[i * k:(i + 1) * k], len(docs), p.zipf_s)
        out.append(Request(
            user_id=u, seq=i, conversation_id=f"u{u:04d}q{i:04d}", turn=1, persona=_PERSONA,
            qos=PERSONA_QOS[_PERSONA],
            context_tokens=_between(questions[i], *p.question_tokens),
            generate_tokens=_between(answers[i], *p.answer_tokens),
            think_time_s=round((lo + _unit(thinks[i]) * (hi - lo)) * p.think_time_scale, 6),
            rag_chunk_ids=tuple(docs[j].doc_id for j in picked),
        ))
        out[-1] = dataclasses.replace(out[-1], segments=tuple(rag_segments(out[-1], by_id, p.system_prompt_tokens)))
    return out


def generate_rag_trace(params: RagParams) -> tuple[list[Document], Trace]:
    """The documents to ingest and the query trace: a pure function of ``params``."""
    params.validate()
    docs = make_documents(params)
    return docs, Trace(params, [_user_requests(params, u, docs) for u in range(params.users)],
                       tuple(d.segment() for d in docs))


def rag_segments(req: Request, documents: dict[str, Document], system_prompt_tokens: int = 0) -> list[Segment]:
    """A query's prompt: the shared system prompt, its documents (standalone), the question."""
    out = [Segment("system", "sys", system_prompt_tokens)] if system_prompt_tokens else []
    out.extend(documents[d].segment() for d in req.rag_chunk_ids)
    out.append(Segment("new", f"{req.conversation_id}.in1", req.context_tokens))
    return out
