"""The pytest face of the network tiers: local servers for the session, and a scenario's
settings pointed at them when the user gave no server of their own.

``kv_redis_server`` and ``kv_s3_server`` start a real ``redis-server`` / ``moto`` S3 server on
loopback once per session (``servers.py``) and stop it at the end; a test can use them
directly. ``remote_settings`` is what ``kv_tiers`` and ``kv_run`` call: a scenario with a redis
tier and no ``--kv-redis-url``, or an object tier with neither ``--kv-s3-endpoint`` nor
``--kv-s3-bucket``, runs against the local server, and skips with the reason when that server
(or the client package) is not installed.
"""

from __future__ import annotations

import pytest

from .servers import LocalMoto, LocalRedis, redis_unavailable_reason, s3_unavailable_reason

LOCAL_CREDENTIAL = "kvcache-local"
"""Access key id and secret given to boto3 for the local moto server when the environment has
no AWS credentials (moto checks no signature, but boto3 signs only with some credentials)."""


@pytest.fixture(scope="session")
def kv_redis_server():
    """A ``servers.LocalRedis`` on a free loopback port for the session; skips (with the
    reason) when the redis client or the ``redis-server`` binary is missing."""
    reason = redis_unavailable_reason(local=True)
    if reason:
        pytest.skip(reason)
    try:
        server = LocalRedis()
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"could not start a local redis-server: {exc}")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kv_s3_server():
    """A ``servers.LocalMoto`` S3 server with its bucket, for the session; skips (with the
    reason) when boto3 or moto's server is missing. Without AWS credentials in the environment,
    boto3 gets dummy ones for the session (``LOCAL_CREDENTIAL``), so requests are signed."""
    reason = s3_unavailable_reason(local=True)
    if reason:
        pytest.skip(reason)
    import boto3

    try:
        server = LocalMoto()
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"could not start a local moto S3 server: {exc}")
    env = pytest.MonkeyPatch()
    if boto3.session.Session().get_credentials() is None:
        env.setenv("AWS_ACCESS_KEY_ID", LOCAL_CREDENTIAL)
        env.setenv("AWS_SECRET_ACCESS_KEY", LOCAL_CREDENTIAL)
    yield server
    env.undo()
    server.stop()


def remote_settings(request, config, settings):
    """``settings`` for tier configuration ``config`` (a ``tiers.TierConfig``), with the local
    servers filled in for its network tiers where the user named none; skips the test, with the
    reason, when a network tier cannot run here."""
    if "redis" in config.tiers:
        local = not settings.redis_url
        reason = redis_unavailable_reason(local)
        if reason:
            pytest.skip(f"{config.name}: {reason}")
        if local:
            settings = settings.replace(redis_url=request.getfixturevalue("kv_redis_server").url)
    if "object" in config.tiers:
        local = not settings.s3_endpoint and not settings.s3_bucket
        reason = s3_unavailable_reason(local)
        if reason:
            pytest.skip(f"{config.name}: {reason}")
        if local:
            server = request.getfixturevalue("kv_s3_server")
            settings = settings.replace(s3_endpoint=server.url, s3_bucket=server.bucket)
    return settings
