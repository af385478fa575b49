"""Shared pieces of the network-tier tests: a backend context, a cache over backends, and a
small engine run against a server."""

from pytest_kvcache.backends.base import BackendContext
from pytest_kvcache.cache import MultiTierCache
from pytest_kvcache.payload import NoiseSource, StagingBuffers, Verifier
from pytest_kvcache.recorder import Recorder
from pytest_kvcache.settings import build_settings
from pytest_kvcache.workload import WorkloadParams, generate_trace

MiB = 1 << 20
BLOCK = 1 << 20


def make_ctx(run_dir, verify=True):
    """A context whose run directory names the run (the key prefix) and whose verifier checks reads."""
    noise = NoiseSource(7, size=4 * MiB)
    return BackendContext(noise=noise, staging=StagingBuffers(BLOCK), run_dir=run_dir,
                          verifier=Verifier(noise, BLOCK) if verify else None)


def make_cache(backends, bytes_per_token=1024):
    rec = Recorder()
    rec.open_window(0)
    return MultiTierCache(backends, rec, bytes_per_token), rec


def settings_for(cache_dir, **extra):
    cli = {"cache_dir": str(cache_dir), "model": "tiny-1b", "duration": "30", "warmup": 0, "users": 2,
           "requests_per_user": "50", "think_time_scale": "0", "generation_mode": "none", "cpu_mem_gb": "0.02",
           "chunk_tokens": 64, "io_block_mb": 1, "redis_mem_gb": 0.05, "object_capacity_gb": 0.05}
    cli.update({k: str(v) for k, v in extra.items()})
    return build_settings(cli, {}, {})


def small_trace(s):
    return generate_trace(WorkloadParams(seed=s.seed, users=s.users, requests_per_user=s.requests_per_user,
                                         think_time_scale=s.think_time_scale, max_context_tokens=512))
