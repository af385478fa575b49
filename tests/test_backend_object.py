"""The object tier against a real S3 server on loopback (moto, started by the fixtures):
content, multipart with a transfer per part, byte counts, the budget and eviction,
namespacing, a cut multipart upload, and a missing bucket or endpoint."""

import pytest
from remote_helpers import BLOCK, MiB, make_cache, make_ctx, settings_for

from pytest_kvcache.backends.base import TierSpec
from pytest_kvcache.errors import BackendError, ConfigError, IOCut
from pytest_kvcache.tiers import TIER_CONFIGS, tier_specs

boto3 = pytest.importorskip("boto3", reason="the object tier tests need boto3 (pip install '.[s3]')")

PART = 5 * MiB


def backend(server, run_dir, capacity=64 * MiB, bucket=None, endpoint=None, **options):
    from pytest_kvcache.backends.object import ObjectBackend

    opts = {"endpoint": endpoint or server.url, "bucket": bucket or server.bucket, "part_bytes": PART, "timeout_s": 10,
            **options}
    return ObjectBackend(TierSpec("object", "object", capacity, opts), make_ctx(run_dir))


def client(server):
    return boto3.client("s3", endpoint_url=server.url, region_name="us-east-1")


def test_round_trip_counts_exact_bytes_per_transfer_and_checks_content(kv_s3_server, tmp_path):
    b = backend(kv_s3_server, tmp_path / "kvcache-run-a")
    s3 = client(kv_s3_server)
    try:
        small = b.write("small", 100_000)
        assert small.nbytes == 100_000 and small.transfers == () and b.describe()["multipart_uploads"] == 0
        n = 2 * PART + 12345  # three parts: 5 MiB, 5 MiB, the rest
        big = b.write("big", n)
        assert big.nbytes == n and [t[1] for t in big.transfers] == [PART, PART, 12345]
        assert big.start_ns < big.transfers[0][0] <= big.transfers[1][0] <= big.transfers[2][0] <= big.end_ns
        assert b.describe()["multipart_uploads"] == 1
        body = s3.get_object(Bucket=kv_s3_server.bucket, Key="kvcache-run-a/big")["Body"].read()
        assert body == bytes(b.ctx.noise.expected("big", n))  # the parts joined in order on the server
        r = b.read("big", n)
        assert r.nbytes == n and sum(t[1] for t in r.transfers) == n
        assert len(r.transfers) == -(-n // BLOCK)  # one transfer per staging block
        assert b.ctx.verifier.checked == len(r.transfers) and b.ctx.verifier.mismatches == 0
        assert b.stored_keys() == {"small", "big"}
        assert b.delete("big").nbytes == n and b.stored_keys() == {"small"}
        with pytest.raises(BackendError, match="no object for 'big'"):
            b.read("big", n)
        d = b.describe()
        assert d["medium"] == "network" and d["location"] == f"S3 at {kv_s3_server.url}, bucket {kv_s3_server.bucket}"
        assert d["block_device"] is None and d["retries"] == 0
    finally:
        b.close()
    assert "Contents" not in s3.list_objects_v2(Bucket=kv_s3_server.bucket, Prefix="kvcache-run-a/")


def test_close_removes_only_this_runs_objects(kv_s3_server, tmp_path):
    s3 = client(kv_s3_server)
    s3.put_object(Bucket=kv_s3_server.bucket, Key="kvcache-run-other/x", Body=b"keep")
    a = backend(kv_s3_server, tmp_path / "kvcache-run-a")
    b = backend(kv_s3_server, tmp_path / "kvcache-run-b")
    try:
        a.write("same", 4096)
        b.write("same", 8192)
        assert a.stored_keys() == {"same"} and b.stored_keys() == {"same"}
        a.close()
        assert b.read("same", 8192).nbytes == 8192
        assert s3.get_object(Bucket=kv_s3_server.bucket, Key="kvcache-run-other/x")["Body"].read() == b"keep"
    finally:
        b.close()
        s3.delete_object(Bucket=kv_s3_server.bucket, Key="kvcache-run-other/x")


def test_the_budget_evicts_and_every_byte_is_counted(kv_s3_server, tmp_path):
    b = backend(kv_s3_server, tmp_path / "kvcache-run-e", capacity=10 * 64 * 1024)
    cache, rec = make_cache([b])
    try:
        for i in range(20):  # 64 KiB entries into a 640 KiB budget (high water 512 KiB)
            assert cache.put(f"e{i}", 64) == "object"
        tier = cache.tiers[0]
        assert len(tier.entries) == 8 and tier.used == 8 * 64 * 1024 and tier.peak <= tier.budget
        assert rec.total[("object", "write")][:2] == [20, 20 * 64 * 1024]
        assert rec.total[("object", "evict")][0] == 12
        assert b.stored_keys() == set(tier.entries) == {f"e{i}" for i in range(12, 20)}
        assert cache.read("e19", "multi_turn") == "object"
        assert rec.total[("object", "read")][:2] == [1, 64 * 1024]
        assert cache.check_invariants() == []
    finally:
        b.close()


def test_a_multipart_upload_is_cut_between_parts_as_the_run_ends_and_leaves_nothing(kv_s3_server, tmp_path):
    b = backend(kv_s3_server, tmp_path / "kvcache-run-cut")
    s3 = client(kv_s3_server)
    try:
        b.ctx.ending.set()
        with pytest.raises(IOCut) as cut:
            b.write("big", 3 * PART)
        res = cut.value.result
        assert res.complete is False and res.nbytes == PART and [t[1] for t in res.transfers] == [PART]
        assert b.stored_keys() == set()
        uploads = s3.list_multipart_uploads(Bucket=kv_s3_server.bucket, Prefix="kvcache-run-cut/")
        assert not uploads.get("Uploads")  # the upload was aborted
    finally:
        b.close()


def test_a_missing_bucket_or_endpoint_is_an_error_naming_the_fix(kv_s3_server, tmp_path):
    from pytest_kvcache.servers import free_port

    with pytest.raises(ConfigError, match="does not exist"):
        backend(kv_s3_server, tmp_path / "kvcache-run-x", bucket="no-such-bucket")
    with pytest.raises(BackendError, match="--kv-s3-endpoint"):
        backend(kv_s3_server, tmp_path / "kvcache-run-y", endpoint=f"http://127.0.0.1:{free_port()}", timeout_s=2)


def test_settings_point_the_tier_at_the_bucket_and_check_the_options(tmp_path):
    s = settings_for(tmp_path, s3_endpoint="http://minio:9000", s3_bucket="kv", object_capacity_gb=2,
                     object_part_mb=5.5, s3_profile="lab")
    (spec,) = tier_specs(TIER_CONFIGS["object-only"], s)
    assert (spec.tier, spec.backend, spec.capacity_bytes) == ("object", "object", 2_000_000_000)
    assert spec.options["endpoint"] == "http://minio:9000" and spec.options["bucket"] == "kv"
    assert spec.options["profile"] == "lab" and spec.options["part_bytes"] == int(5.5 * MiB)
    assert spec.options["part_bytes"] % 4096 == 0
    with pytest.raises(ConfigError, match="--kv-s3-bucket NAME"):
        tier_specs(TIER_CONFIGS["cpu+object"], settings_for(tmp_path))
    with pytest.raises(ConfigError, match="smallest multipart part"):
        settings_for(tmp_path, object_part_mb=4)
    with pytest.raises(ConfigError, match="not an http"):
        settings_for(tmp_path, s3_endpoint="minio:9000")
