"""The redis tier: each KV chunk is one value on a Redis server (as LMCache's remote backend).

Keys are ``kvcache:<run dir name>:<chunk key>``, so runs sharing a server never meet, and
``close`` removes this run's keys and nothing else. A write is ``SET`` of the whole chunk from a
reused, pre-filled buffer; a read is ``GET`` into the bytes redis-py returns; a delete is
``UNLINK``. Timed: the command round trip only (sending, the server's work, receiving and the
client's parsing), never the payload fill or ``--kv-verify``. A chunk moves in one call, so it
is one transfer, counted when the call returns.

Nothing is retried and every socket has ``--kv-remote-timeout``: a server that dies or stops
answering makes the call fail within that time (``BackendError``), which ends the run with the
figures gathered so far; a server out of memory (its ``maxmemory``) is ``BackendFull``.
"""

from __future__ import annotations

import threading
import time
import warnings

from ..errors import BackendError, BackendFull, ConfigError
from ..remote import redact_url
from .base import BackendContext, IOResult, TierSpec
from .network import NetworkBackend, import_client

_DELETE_BATCH = 500



class RedisBackend(NetworkBackend):
    name = "redis"

    def __init__(self, spec: TierSpec, ctx: BackendContext):
        super().__init__(spec, ctx)
        redis = import_client("redis", "redis", "redis")
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._redis = redis
        self.url = spec.options.get("url") or ""
        if not self.url:
            raise ConfigError("the redis tier needs a server URL: --kv-redis-url redis://host:6379/0.")
        self.timeout_s = float(spec.options.get("timeout_s", 10.0))
        run = ctx.run_dir.name if ctx.run_dir is not None else f"kvcache-run-{id(self):x}"
        self.prefix = f"kvcache:{run}:"
        try:
            self.client = redis.Redis.from_url(self.url, socket_timeout=self.timeout_s,
                                               socket_connect_timeout=self.timeout_s,
                                               retry=Retry(NoBackoff(), 0), health_check_interval=0)
        except ValueError as exc:  # redis-py's words for a malformed URL
            raise ConfigError(f"--kv-redis-url {redact_url(self.url)!r}: {exc}; write redis://host:6379/0.") from None
        self._sizes: dict[str, int] = {}  # chunk key -> bytes stored, for deletes and the invariants
        self._lock = threading.Lock()
        try:
            self._server = self._server_info()
        except BaseException:
            self.client.close()
            raise

    @property
    def location(self) -> str:
        return f"redis at {redact_url(self.url)}"

    def _server_info(self) -> dict:
        """Ping the server and read its version and memory limit; refuse a budget above it."""
        redis = self._redis
        try:
            info = self.client.info("server")
        except redis.AuthenticationError as exc:
            raise BackendError(f"redis tier: the server at {redact_url(self.url)} refused the credentials ({exc}); put "
                               "its password in --kv-redis-url (redis://:PASSWORD@host:port/db, or "
                               "redis://USER:PASSWORD@... for an ACL user).") from None
        except redis.RedisError as exc:
            raise BackendError(f"redis tier: cannot reach the server at {redact_url(self.url)}: {exc}; start it or "
                               "point --kv-redis-url at a running server.") from None
        out = {"redis_version": info.get("redis_version"), "maxmemory": None, "maxmemory_policy": None}
        try:
            conf = self.client.config_get("maxmemory*")
            out["maxmemory"] = int(conf.get("maxmemory", 0)) or None
            out["maxmemory_policy"] = conf.get("maxmemory-policy")
        except redis.RedisError:  # CONFIG is often disabled on managed servers: the limit stays unknown
            out["config"] = "CONFIG GET refused by the server: its memory limit is unknown"
        limit = out["maxmemory"]
        if limit is not None and self.capacity_bytes > limit:
            raise ConfigError(f"--kv-redis-mem-gb {self.capacity_bytes / 1e9:g} is more than the maxmemory of the "
                              f"server at {redact_url(self.url)} ({limit / 1e9:g} GB); lower --kv-redis-mem-gb or "
                              "raise the server's maxmemory.")
        if limit is not None and out["maxmemory_policy"] not in (None, "noeviction"):
            out["note"] = (f"maxmemory-policy {out['maxmemory_policy']}: the server may evict this run's values; "
                           "a read of one it evicted is an error")
        return out

    def _key(self, key: str) -> str:
        return self.prefix + key

    def _failure(self, what: str, key: str, exc: Exception) -> BackendError:
        where = redact_url(self.url)
        if isinstance(exc, self._redis.exceptions.OutOfMemoryError) or str(exc).startswith("OOM"):
            return BackendFull(f"redis tier: the server at {where} is out of memory (its maxmemory) on the {what} "
                               f"of {key!r}: {exc}; raise the server's maxmemory or lower --kv-redis-mem-gb.")
        if isinstance(exc, (self._redis.ConnectionError, self._redis.TimeoutError)):
            return BackendError(f"redis tier: {what} of {key!r} at {where} failed: {type(exc).__name__}: {exc} "
                                f"(the server is gone, or gave no reply within --kv-remote-timeout "
                                f"{self.timeout_s:g} s)")
        return BackendError(f"redis tier: {what} of {key!r} at {where} failed: {type(exc).__name__}: {exc}")

    def write(self, key: str, nbytes: int) -> IOResult:
        data = self.whole_payload(key, nbytes)  # untimed
        t0 = time.perf_counter_ns()
        try:
            self.client.set(self._key(key), data)
        except self._redis.RedisError as exc:
            raise self._failure("write", key, exc) from exc
        t1 = time.perf_counter_ns()
        with self._lock:
            self._sizes[key] = nbytes
        return IOResult(nbytes, t1, t1 - t0)

    def read(self, key: str, nbytes: int) -> IOResult:
        t0 = time.perf_counter_ns()
        try:
            value = self.client.get(self._key(key))
        except self._redis.RedisError as exc:
            raise self._failure("read", key, exc) from exc
        t1 = time.perf_counter_ns()
        if value is None:
            raise BackendError(f"redis tier: no value for {key!r} at {redact_url(self.url)} (evicted by the server "
                               "or removed by another client)")
        if len(value) != nbytes:
            raise BackendError(f"redis tier: {key!r} holds {len(value)} bytes at {redact_url(self.url)}, "
                               f"expected {nbytes}")
        self.verify(key, value)
        return IOResult(nbytes, t1, t1 - t0)

    def delete(self, key: str) -> IOResult:
        with self._lock:
            size = self._sizes.pop(key, None)
        if size is None:
            raise BackendError(f"redis tier: no entry {key!r} to delete")
        t0 = time.perf_counter_ns()
        try:
            removed = self.client.unlink(self._key(key))
        except self._redis.RedisError as exc:
            raise self._failure("delete", key, exc) from exc
        t1 = time.perf_counter_ns()
        if not removed:
            raise BackendError(f"redis tier: {key!r} was already gone from {redact_url(self.url)} (evicted by the "
                               "server or removed by another client)")
        return IOResult(size, t1, t1 - t0)

    def _server_keys(self) -> list[bytes]:
        return list(self.client.scan_iter(match=self.prefix + "*", count=1000))

    def stored_keys(self) -> set[str]:
        """This run's keys on the server now (a SCAN of its prefix); BackendError when unreachable."""
        try:
            names = self._server_keys()
        except self._redis.RedisError as exc:
            raise self._failure("listing", self.prefix + "*", exc) from exc
        cut = len(self.prefix)
        return {n.decode()[cut:] for n in names}

    def describe(self) -> dict:
        return {**super().describe(), "url": redact_url(self.url), "timeout_s": self.timeout_s, "retries": 0,
                "key_prefix": self.prefix, **self._server,
                "method": "one value per chunk: SET from a pre-filled reused buffer, GET into the bytes the client "
                          "returns, UNLINK; timed: the command round trip; one transfer per call"}

    def close(self) -> None:
        """Remove this run's keys from the server (a warning when it cannot be reached)."""
        try:
            names = self._server_keys()
            for i in range(0, len(names), _DELETE_BATCH):
                self.client.unlink(*names[i:i + _DELETE_BATCH])
        except self._redis.RedisError as exc:
            warnings.warn(f"kvcache: could not remove this run's keys ({self.prefix}*) from {self.location}: {exc}",
                          stacklevel=2)
        finally:
            with self._lock:
                self._sizes.clear()
            self.client.close()
