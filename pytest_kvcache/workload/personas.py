"""User personas and QoS classes.

A persona fixes the shape of one kind of user's traffic (how long its prompts and answers are,
how many turns a conversation lasts, how long the user thinks between turns). Mixing personas
is what makes a trace look like a shared serving deployment rather than one synthetic user.
"""

from __future__ import annotations

from dataclasses import dataclass

Range = tuple[int, int]


@dataclass(frozen=True)
class Persona:
    """Inclusive ranges a persona's requests are drawn from uniformly."""

    name: str
    context_tokens: Range
    generate_tokens: Range
    turns: Range
    think_time_s: tuple[float, float]


PERSONAS: dict[str, Persona] = {
    p.name: p
    for p in (
        Persona("chatbot", (256, 1024), (64, 256), (2, 8), (0.2, 1.0)),
        Persona("coding", (1024, 4096), (128, 512), (3, 10), (0.5, 2.0)),
        Persona("document", (2048, 8192), (256, 1024), (1, 3), (1.0, 3.0)),
    )
}

DEFAULT_PERSONA_MIX: dict[str, float] = {"chatbot": 0.6, "coding": 0.25, "document": 0.15}

QOS_CLASSES: tuple[str, ...] = ("interactive", "responsive", "batch")
"""In priority order: the scheduler serves earlier classes first (without starving batch)."""

QOS_P95_SLA_S: dict[str, float] = {"interactive": 0.05, "responsive": 0.1, "batch": 1.0}

PERSONA_QOS: dict[str, str] = {"chatbot": "interactive", "coding": "responsive", "document": "batch"}
