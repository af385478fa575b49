"""Workload: personas, the deterministic request trace, the cache-entry layout of a conversation,
and the block model (prompts as chains of content-addressed KV blocks)."""

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
from .personas import (
    DEFAULT_PERSONA_MIX,
    PERSONA_QOS,
    PERSONAS,
    QOS_CLASSES,
    QOS_P95_SLA_S,
    Persona,
)
from .trace import (
    TRACE_FORMAT,
    Request,
    Trace,
    WorkloadParams,
    generate_trace,
    load_jsonl,
    save_jsonl,
)

__all__ = [
    "Block",
    "BlockSequence",
    "HitTally",
    "Segment",
    "chain_key",
    "longest_cached_prefix",
    "plan_blocks",
    "synthetic_identity",
    "tally_hits",
    "token_identity",
    "DEFAULT_PERSONA_MIX",
    "PERSONAS",
    "PERSONA_QOS",
    "QOS_CLASSES",
    "QOS_P95_SLA_S",
    "TRACE_FORMAT",
    "ConversationLayout",
    "Entry",
    "Persona",
    "Request",
    "Trace",
    "WorkloadParams",
    "generate_trace",
    "load_jsonl",
    "save_jsonl",
]
