"""The one definition of the operations the cache records and of which tier is 'storage'.

Every module that lists ops, sums bytes moved or picks a scenario's headline figures reads
them from here, so the tier table, the progress line, the timeline, the plots, criteria and
the device-counter check can never disagree (design section 6).
"""

from __future__ import annotations

COMPUTE_TIER = "compute"
"""The pseudo-tier of the compute device's own copies (``compute.py``): with a GPU, a load from a
host tier ends with an ``h2d`` copy from pinned staging into GPU memory, recorded under this name
beside the tier's ``read`` (the storage leg), so each leg has its own figures."""

LOAD_OPS: tuple[str, ...] = ("h2d",)
"""Ops of the compute tier: host-to-device copies of loaded KV (CUDA-event time)."""

DATA_OPS: tuple[str, ...] = ("read", "write", "demote_read", "demote_write", "promote_write") + LOAD_OPS
"""Ops that move bytes to or from a tier's medium (or, ``h2d``, into the compute device): the
only ones counted as bytes moved (GB, GB/s)."""

EVENT_OPS: tuple[str, ...] = ("evict", "delete")
"""Ops that free an entry: counted and timed, never bytes moved (a recycled delete makes no system call)."""

OPS: tuple[str, ...] = DATA_OPS + EVENT_OPS
"""Every op, in the order reports show them."""

READ_OPS: tuple[str, ...] = ("read", "demote_read")
WRITE_OPS: tuple[str, ...] = ("write", "demote_write", "promote_write")

MEMORY_TIERS: tuple[str, ...] = ("gpu", "cpu")


def storage_tier(tiers) -> str | None:
    """The tier whose figures are 'storage': the slowest tier that is not memory, or None.

    ``tiers`` is a scenario's tiers, fastest first (e.g. ``["gpu", "cpu", "nvme"]``).
    """
    below_memory = [t for t in tiers if t not in MEMORY_TIERS]
    return below_memory[-1] if below_memory else None


def op_order(op: str) -> int:
    """Sort key that puts ops in report order (unknown ops last)."""
    return OPS.index(op) if op in OPS else len(OPS)


def possible_ops(tiers, tier: str) -> tuple[str, ...]:
    """The ops that can happen on ``tier`` in a scenario with ``tiers`` (fastest first).

    Every tier is read, written, evicted and deleted from; only a tier with one below it
    demotes (demote_read), only a tier with one above it receives demotions
    (demote_write), and only the first tier of two or more receives promotions
    (promote_write, with ``--kv-promotion on-hit``; the hit's read is the promotion's read).
    Only the compute pseudo-tier copies to the GPU (``h2d``), whatever the tiers. Returns ()
    for a tier the scenario does not have.
    """
    if tier == COMPUTE_TIER:
        return LOAD_OPS
    tiers = list(tiers)
    if tier not in tiers:
        return ()
    i = tiers.index(tier)
    impossible = set(LOAD_OPS)
    if i == len(tiers) - 1:
        impossible.add("demote_read")
    if i == 0:
        impossible.add("demote_write")
    if i > 0 or len(tiers) == 1:
        impossible.add("promote_write")
    return tuple(o for o in OPS if o not in impossible)


def headline_op(tiers, measured) -> tuple[str, str] | None:
    """The (tier, op) whose latencies stand for a scenario: reads from its slowest tier, else
    its writes (or the demotions into it) when nothing was read; None when none was measured.

    ``measured(tier, op)`` says whether the window has samples for that pair.
    """
    tier = list(tiers)[-1]
    for op in ("read", "write", "demote_write"):
        if measured(tier, op):
            return tier, op
    return None
