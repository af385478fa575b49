"""pytest-kvcache: benchmark the storage tiers that hold an LLM's KV cache, as a pytest suite."""

__version__ = "0.1.0"
