"""The tier configurations the scenarios test, the question each answers, and their budgets."""

from __future__ import annotations

from dataclasses import dataclass

from .backends.base import TierSpec
from .fsinfo import free_bytes
from .remote import REMOTE_TIERS, remote_spec
from .settings import GB, Settings

NVME_DEFAULT_FRACTION = 0.5
NVME_DEFAULT_MAX = 64 * GB


@dataclass(frozen=True)
class TierConfig:
    name: str
    tiers: tuple[str, ...]
    question: str

    @property
    def remote(self) -> bool:
        """Whether a tier of it is a network store (``remote.REMOTE_TIERS``: redis, object)."""
        return any(t in REMOTE_TIERS for t in self.tiers)


TIER_CONFIGS: dict[str, TierConfig] = {c.name: c for c in (
    TierConfig("gpu-only", ("gpu",),
               "Best-case latency: how fast is the KV path when everything fits in GPU memory, and how many users does that memory hold?"),
    TierConfig("cpu-only", ("cpu",),
               "How does serving KV from host RAM alone perform, and how much CPU memory does this load need?"),
    TierConfig("storage-only", ("nvme",),
               "What can the drive sustain on its own (tokens/s, GB/s) and what are its read/write latencies under this load?"),
    TierConfig("gpu+cpu", ("gpu", "cpu"),
               "Does offloading from GPU memory to host RAM keep latency acceptable without any storage?"),
    TierConfig("cpu+storage", ("cpu", "nvme"),
               "With RAM in front of the drive, how much spills to storage and what does the spillover cost?"),
    TierConfig("gpu+cpu+storage", ("gpu", "cpu", "nvme"),
               "The full hierarchy: where does the KV live under load, and does the drive keep up with what falls through?"),
    TierConfig("redis-only", ("redis",),
               "A Redis server as the only KV store (LMCache's remote backend): what are its read/write latencies and GB/s over the network, and what hit rate does its budget hold?"),
    TierConfig("cpu+redis", ("cpu", "redis"),
               "With host RAM in front of a Redis server, how much spills to Redis and what does a load from it cost?"),
    TierConfig("object-only", ("object",),
               "An S3-compatible object store as the only KV store: what are its PUT/GET latencies (multipart for large chunks) and GB/s?"),
    TierConfig("cpu+object", ("cpu", "object"),
               "With host RAM in front of an object store, how much spills to it and what does a load from it cost?"),
)}

LOCAL_CONFIGS: tuple[str, ...] = tuple(n for n, c in TIER_CONFIGS.items() if not c.remote)
"""The configurations on this host's memory and drive: the six that the tier, trace and ShareGPT
scenarios run (the network tiers have their own, ``scenarios/test_remote_tiers.py``)."""

def nvme_capacity(settings: Settings) -> int:
    if settings.nvme_capacity_gb > 0:
        return int(settings.nvme_capacity_gb * GB)
    return int(min(free_bytes(settings.cache_root) * NVME_DEFAULT_FRACTION, NVME_DEFAULT_MAX))


def tier_specs(config: TierConfig, settings: Settings) -> list[TierSpec]:
    specs = []
    for tier in config.tiers:
        if tier == "gpu":
            specs.append(TierSpec("gpu", "gpu", int(settings.gpu_mem_gb * GB)))
        elif tier == "cpu":
            specs.append(TierSpec("cpu", "cpu", int(settings.cpu_mem_gb * GB)))
        elif tier == "nvme":
            options = {} if settings.file_io_mode == "auto" else {"io_mode": settings.file_io_mode}
            if settings.nvme_backend in ("file", "gds"):  # gds keeps the file tier's files and recycling
                options["recycle"] = settings.file_recycle == "on"
            specs.append(TierSpec("nvme", settings.nvme_backend, nvme_capacity(settings), options))
        elif tier in REMOTE_TIERS:
            specs.append(remote_spec(tier, settings))
        else:
            raise ValueError(f"unknown tier {tier!r}")
    return specs
