"""Workload: personas, the deterministic request trace, and the cache-entry layout of a conversation."""

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
