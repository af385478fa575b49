"""Network tier scenarios: KV in a Redis server and in an S3-compatible object store.

Real KV-offload systems (LMCache's remote backend, Dynamo, Mooncake) keep KV chunks in
Redis/Valkey and object stores as well as on local drives. Each parameter runs the seeded
workload on one configuration of ``pytest_kvcache.tiers.TIER_CONFIGS``: the network tier alone,
or with host RAM in front of it (0.25 GB unless --kv-cpu-mem-gb is given, so that KV spills to the network tier within the window). Without ``--kv-redis-url`` the redis scenarios start a local
``redis-server`` on a loopback port, and without ``--kv-s3-endpoint``/``--kv-s3-bucket`` the
object scenarios start a local ``moto`` S3 server (slow: it is Python); each skips with the
reason when that server or the client package is not installed. Point them at your own
server to measure it. The figures are the network store's: no block device of this host sees
its bytes, so the device-ratio criteria are n/a with that reason.
"""

import pytest


@pytest.mark.kv_defaults(duration=8.0, cpu_mem_gb=0.25)
@pytest.mark.parametrize("kv_tiers", ["redis-only", "cpu+redis"], indirect=True)
def test_redis_tiers(kv_tiers, kv_run, benchmark):
    """How fast is a Redis server as a KV-cache tier (alone, or behind host RAM): its read and write latencies and GB/s, and the hit rate its budget holds?"""
    kv_run(kv_tiers, benchmark=benchmark)


@pytest.mark.kv_defaults(duration=8.0, cpu_mem_gb=0.25)
@pytest.mark.parametrize("kv_tiers", ["object-only", "cpu+object"], indirect=True)
def test_object_tiers(kv_tiers, kv_run, benchmark):
    """How fast is an S3-compatible object store as a KV-cache tier (alone, or behind host RAM): its PUT/GET latencies, multipart uploads for large chunks, GB/s and hit rate?"""
    kv_run(kv_tiers, benchmark=benchmark)
