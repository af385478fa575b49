"""The network tiers' settings: which tiers are remote, their ``TierSpec``, the checks across
their options, and URLs with the password left out.

``redis`` (``backends/redis.py``) keeps each KV chunk as one value on a Redis server;
``object`` (``backends/object.py``) keeps each as one object in an S3 bucket. Neither has a
block device on this host, so the device-counter criteria are n/a for them, with the reason.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from .backends.base import TierSpec
from .errors import ConfigError

GB = 10**9
MiB = 1 << 20
REMOTE_TIERS: tuple[str, ...] = ("redis", "object")
S3_MIN_PART_MB = 5.0
"""S3's smallest part of a multipart upload (every part but the last), MiB."""


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for reports and messages)."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def remote_spec(tier: str, settings) -> TierSpec:
    """The ``TierSpec`` of network tier ``tier`` (one of ``REMOTE_TIERS``) from ``settings``.

    Raises ConfigError naming the option when the tier has nowhere to go (no URL, no bucket):
    the scenarios fill those in with local servers before provisioning.
    """
    check_remote(settings, tier)
    if tier == "redis":
        return TierSpec("redis", "redis", int(settings.redis_mem_gb * GB),
                        {"url": settings.redis_url, "timeout_s": settings.remote_timeout})
    if tier == "object":
        return TierSpec("object", "object", int(settings.object_capacity_gb * GB), {
            "endpoint": settings.s3_endpoint, "bucket": settings.s3_bucket, "region": settings.s3_region,
            "profile": settings.s3_profile,
            "part_bytes": -(-int(settings.object_part_mb * MiB) // 4096) * 4096, "timeout_s": settings.remote_timeout})
    raise ValueError(f"not a network tier: {tier!r}")


def check_remote(settings, tier: str | None = None) -> None:
    """Checks of the network-tier options (of ``tier`` only, when given; with ``None`` only
    those that hold whatever the scenario). Raises ConfigError naming the fix."""
    if settings.object_part_mb < S3_MIN_PART_MB:
        raise ConfigError(f"--kv-object-part-mb {settings.object_part_mb:g} is below S3's smallest multipart part "
                          f"({S3_MIN_PART_MB:g} MiB, every part but the last); give 5 or more, e.g. 8.")
    if settings.redis_url and urlsplit(settings.redis_url).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"--kv-redis-url {redact_url(settings.redis_url)!r} is not a Redis URL; write "
                          "redis://host:6379/0 (rediss:// for TLS, unix:///path/to/redis.sock for a socket).")
    if settings.s3_endpoint and urlsplit(settings.s3_endpoint).scheme not in ("http", "https"):
        raise ConfigError(f"--kv-s3-endpoint {settings.s3_endpoint!r} is not an http(s) URL; write it as "
                          "http://host:9000 or https://s3.example.com.")
    if tier == "redis" and not settings.redis_url:
        raise ConfigError("the redis tier needs a server: give --kv-redis-url redis://host:6379/0 (the scenarios "
                          "start a local redis-server when it is empty).")
    if tier == "object" and not settings.s3_bucket:
        raise ConfigError("the object tier needs a bucket: give --kv-s3-bucket NAME (an existing bucket; with your "
                          "own endpoint also --kv-s3-endpoint URL). The scenarios start a local moto server when "
                          "both are empty.")
