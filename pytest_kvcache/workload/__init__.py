"""Workload: personas, the deterministic request trace, the cache-entry layout of a conversation,
the block model (prompts as chains of content-addressed KV blocks) the seed-000 prompt generator, the RAG workload and the mixed (kitchen-sink) workload."""

from .blocks import (
    Block,
    BlockSequence,
    HitTally,
    Segment,
    chain_key,
    longest_cached_prefix,
    plan_blocks,
    synthetic_identity,
    tally_hits,
    token_identity,
)
from .layout import ConversationLayout, Entry
from .mixed import DEFAULT_RAG_USER_SHARE, MixedParams, generate_mixed, is_rag_user
from .personas import (
    DEFAULT_PERSONA_MIX,
    PERSONA_QOS,
    PERSONAS,
    QOS_CLASSES,
    QOS_P95_SLA_S,
    Persona,
)
from .prompts import (
    PromptParams,
    PromptRequest,
    generate_prompts,
    output_segment,
    positive_normal_int,
    prompt_segments,
)
from .rag import (
    Document,
    RagParams,
    doc_token_range,
    generate_rag_trace,
    make_documents,
    rag_segments,
    zipf_top_k,
)
from .trace import (
    Request,
    Trace,
    WorkloadParams,
    generate_trace,
)
from .tracefile import TRACE_FORMAT, load_jsonl, save_jsonl

__all__ = [
    "Block",
    "BlockSequence",
    "HitTally",
    "Segment",
    "chain_key",
    "doc_token_range",
    "longest_cached_prefix",
    "make_documents",
    "output_segment",
    "plan_blocks",
    "positive_normal_int",
    "synthetic_identity",
    "tally_hits",
    "token_identity",
    "zipf_top_k",
    "DEFAULT_PERSONA_MIX",
    "DEFAULT_RAG_USER_SHARE",
    "MixedParams",
    "generate_mixed",
    "is_rag_user",
    "PERSONAS",
    "PERSONA_QOS",
    "QOS_CLASSES",
    "QOS_P95_SLA_S",
    "TRACE_FORMAT",
    "ConversationLayout",
    "Document",
    "Entry",
    "Persona",
    "PromptParams",
    "PromptRequest",
    "RagParams",
    "Request",
    "Trace",
    "WorkloadParams",
    "generate_prompts",
    "generate_rag_trace",
    "generate_trace",
    "load_jsonl",
    "save_jsonl",
    "prompt_segments",
    "rag_segments",
]
