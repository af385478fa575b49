"""Named random streams derived from one root seed (as AIPerf does).

Each consumer asks for its own stream by name, so adding a consumer never shifts the numbers
another one draws, and no stream is shared between threads.
"""

from __future__ import annotations

import hashlib

import numpy as np


def derive_seed(root: int, name: str) -> int:
    """63-bit seed from SHA-256 of ``f"{root}:{name}"``."""
    digest = hashlib.sha256(f"{root}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def derive(root: int, name: str) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(derive_seed(root, name)))
