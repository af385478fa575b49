"""The object tier: each KV chunk is one object in an S3 bucket (AWS, MinIO, Ceph RGW, moto ...).

Objects are ``<run dir name>/<chunk key>`` in ``--kv-s3-bucket``, so ``close`` removes this
run's objects (and any unfinished multipart upload of it) and nothing else. A chunk up to
``--kv-object-part-mb`` is one ``PutObject``; a larger one is a multipart upload in parts of
that size, each part a transfer whose bytes count when its ``UploadPart`` returns. A read is
``GetObject`` whose body is read in ``--kv-io-block-mb`` pieces into the thread's staging
buffer, each piece a transfer. A delete is ``DeleteObject``.

Timed: the requests and body reads only (boto3's own work in them included: signing, the
checksums it computes), never the payload fill, its copy into the request body, the copy into
the staging buffer or ``--kv-verify``. Nothing is retried (``total_max_attempts`` 1) and
connect and read time out after ``--kv-remote-timeout``: an unreachable endpoint fails the call
(``BackendError``) and so ends the run with the figures gathered so far.
"""

from __future__ import annotations

import threading
import time
import warnings

import numpy as np

from ..errors import BackendError, ConfigError, IOCut
from .base import BackendContext, IOResult, TierSpec
from .network import NetworkBackend, import_client

MAX_POOL_CONNECTIONS = 256
"""HTTP connections the client keeps (boto3's default of 10 would queue more users than that)."""


class ObjectBackend(NetworkBackend):
    name = "object"

    def __init__(self, spec: TierSpec, ctx: BackendContext):
        super().__init__(spec, ctx)
        boto3 = import_client("boto3", "object", "s3")
        from botocore.config import Config
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            NoCredentialsError,
            ProfileNotFound,
        )

        self._errors = (BotoCoreError, ClientError)
        opts = spec.options
        self.endpoint = opts.get("endpoint") or None
        self.bucket = opts.get("bucket") or ""
        if not self.bucket:
            raise ConfigError("the object tier needs a bucket: --kv-s3-bucket NAME.")
        self.part_bytes = int(opts.get("part_bytes", 8 << 20))
        self.timeout_s = float(opts.get("timeout_s", 10.0))
        run = ctx.run_dir.name if ctx.run_dir is not None else f"kvcache-run-{id(self):x}"
        self.prefix = f"{run}/"
        try:
            session = boto3.session.Session(profile_name=opts.get("profile") or None)
        except ProfileNotFound as exc:
            raise ConfigError(f"--kv-s3-profile: {exc}; name a profile of your AWS configuration, or leave it empty "
                              "for the usual credential chain.") from None
        self.region = opts.get("region") or session.region_name or "us-east-1"
        config = Config(connect_timeout=self.timeout_s, read_timeout=self.timeout_s,
                        retries={"total_max_attempts": 1}, max_pool_connections=MAX_POOL_CONNECTIONS,
                        s3={"addressing_style": "path"} if self.endpoint else None)
        self.client = session.client("s3", endpoint_url=self.endpoint, region_name=self.region, config=config)
        self.endpoint = self.endpoint or self.client.meta.endpoint_url
        self._sizes: dict[str, int] = {}  # chunk key -> bytes stored, for deletes and the invariants
        self._lock = threading.Lock()
        self.multipart_uploads = 0
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except NoCredentialsError:
            raise ConfigError("the object tier found no AWS credentials: set AWS_ACCESS_KEY_ID and "
                              "AWS_SECRET_ACCESS_KEY, or name a profile with --kv-s3-profile.") from None
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchBucket"):
                raise ConfigError(f"--kv-s3-bucket {self.bucket!r} does not exist at {self.location}; create it or "
                                  "name an existing bucket.") from None
            if code in ("403", "AccessDenied"):
                raise ConfigError(f"access to bucket {self.bucket!r} at {self.location} is denied; check the "
                                  "credentials (AWS_* variables, --kv-s3-profile) and the bucket policy.") from None
            raise BackendError(f"object tier: cannot use bucket {self.bucket!r} at {self.location}: {exc}") from None
        except BotoCoreError as exc:
            raise BackendError(f"object tier: cannot reach {self.location}: {exc}; start the server or point "
                               "--kv-s3-endpoint at a running one.") from None

    @property
    def location(self) -> str:
        return f"S3 at {self.endpoint}, bucket {self.bucket}"

    def _key(self, key: str) -> str:
        return self.prefix + key

    def _failure(self, what: str, key: str, exc: Exception) -> BackendError:
        return BackendError(f"object tier: {what} of {key!r} at {self.location} failed: {type(exc).__name__}: {exc} "
                            f"(no retries; --kv-remote-timeout {self.timeout_s:g} s)")

    def write(self, key: str, nbytes: int) -> IOResult:
        try:
            if nbytes <= self.part_bytes:
                body = bytes(self.whole_payload(key, nbytes))  # untimed: boto3 takes bytes, not a view
                t0 = time.perf_counter_ns()
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=body)
                t1 = time.perf_counter_ns()
                result = IOResult(nbytes, t1, t1 - t0)
            else:
                result = self._multipart(key, nbytes)
        except self._errors as exc:
            raise self._failure("write", key, exc) from exc
        with self._lock:
            self._sizes[key] = nbytes
        return result

    def _multipart(self, key: str, nbytes: int) -> IOResult:
        """Upload ``key`` in parts of ``part_bytes``; each part is a transfer. Cut between parts
        as the run ends (``errors.IOCut``); a cut or failed upload is aborted."""
        name = self._key(key)
        t = start = time.perf_counter_ns()
        upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=name)["UploadId"]
        dur = time.perf_counter_ns() - t
        parts, transfers = [], []
        try:
            for number, off in enumerate(range(0, nbytes, self.part_bytes), 1):
                if off and self.ctx.ending.is_set():  # the run is ending: stop between parts
                    raise IOCut(IOResult(nbytes=off, end_ns=transfers[-1][0], dur_ns=dur, start_ns=start,
                                         transfers=tuple(transfers), complete=False))
                n = min(self.part_bytes, nbytes - off)
                body = bytes(self.whole_payload(key, n, off))  # untimed
                t = time.perf_counter_ns()
                etag = self.client.upload_part(Bucket=self.bucket, Key=name, UploadId=upload, PartNumber=number,
                                               Body=body)["ETag"]
                now = time.perf_counter_ns()
                dur += now - t
                parts.append({"ETag": etag, "PartNumber": number})
                transfers.append((now, n))
            t = time.perf_counter_ns()
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload,
                                                  MultipartUpload={"Parts": parts})
            end = time.perf_counter_ns()
            dur += end - t
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload)
            except self._errors:
                pass  # close() aborts what is left under this run's prefix
            raise
        with self._lock:
            self.multipart_uploads += 1
        return IOResult(nbytes=nbytes, end_ns=end, dur_ns=dur, start_ns=start, transfers=tuple(transfers))

    def read(self, key: str, nbytes: int) -> IOResult:
        buf = self.ctx.staging.get()
        block = self.ctx.staging.block
        transfers = []
        body = None
        try:
            t = start = time.perf_counter_ns()
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            body = resp["Body"]
            dur = time.perf_counter_ns() - t
            if resp.get("ContentLength") != nbytes:
                raise BackendError(f"object tier: {key!r} holds {resp.get('ContentLength')} bytes at "
                                   f"{self.location}, expected {nbytes}")
            off = 0
            while off < nbytes:
                if off and self.ctx.ending.is_set():  # the run is ending: stop between transfers
                    raise IOCut(IOResult(nbytes=off, end_ns=transfers[-1][0], dur_ns=dur, start_ns=start,
                                         transfers=tuple(transfers), complete=False))
                n = min(block, nbytes - off)
                got = 0
                while got < n:
                    t = time.perf_counter_ns()
                    piece = body.read(n - got)
                    now = time.perf_counter_ns()
                    dur += now - t
                    if not piece:
                        raise BackendError(f"object tier: {key!r} at {self.location} ended at {off + got} bytes, "
                                           f"expected {nbytes}")
                    buf[got:got + len(piece)] = np.frombuffer(piece, dtype=np.uint8)  # into the compute device's buffer, untimed
                    got += len(piece)
                transfers.append((now, n))
                self.verify(key, buf[:n], off)
                off += n
        except self._errors as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404"):
                raise BackendError(f"object tier: no object for {key!r} at {self.location} (removed by another "
                                   "client)") from exc
            raise self._failure("read", key, exc) from exc
        finally:
            if body is not None:
                body.close()
        return IOResult(nbytes=nbytes, end_ns=transfers[-1][0], dur_ns=dur, start_ns=start, transfers=tuple(transfers))

    def delete(self, key: str) -> IOResult:
        with self._lock:
            size = self._sizes.pop(key, None)
        if size is None:
            raise BackendError(f"object tier: no entry {key!r} to delete")
        t0 = time.perf_counter_ns()
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except self._errors as exc:
            raise self._failure("delete", key, exc) from exc
        t1 = time.perf_counter_ns()
        return IOResult(size, t1, t1 - t0)

    def _listed(self) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", ())]

    def stored_keys(self) -> set[str]:
        """This run's objects in the bucket now (a listing of its prefix); BackendError when unreachable."""
        try:
            names = self._listed()
        except self._errors as exc:
            raise self._failure("listing", self.prefix, exc) from exc
        return {n[len(self.prefix):] for n in names}

    def describe(self) -> dict:
        with self._lock:
            multipart = self.multipart_uploads
        return {**super().describe(), "endpoint": self.endpoint, "bucket": self.bucket, "region": self.region,
                "key_prefix": self.prefix, "part_bytes": self.part_bytes, "multipart_uploads": multipart,
                "timeout_s": self.timeout_s, "retries": 0,
                "method": "one object per chunk: PutObject (multipart above part_bytes, each part a transfer), "
                          "GetObject read in staging-block pieces (each a transfer), DeleteObject; timed: the "
                          "requests and body reads"}

    def close(self) -> None:
        """Remove this run's objects and unfinished uploads (a warning when the endpoint cannot be reached)."""
        try:
            names = self._listed()
            for i in range(0, len(names), 1000):
                self.client.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": n} for n in names[i:i + 1000]], "Quiet": True})
            uploads = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=self.prefix).get("Uploads", ())
            for u in uploads:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=u["Key"], UploadId=u["UploadId"])
        except self._errors as exc:
            warnings.warn(f"kvcache: could not remove this run's objects ({self.prefix}*) from {self.location}: {exc}",
                          stacklevel=2)
        finally:
            with self._lock:
                self._sizes.clear()
