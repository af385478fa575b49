"""CPUBackend: a pre-faulted arena of fixed pages; real copies in, real copies out."""

import numpy as np
import pytest

from pytest_kvcache.backends.base import BackendContext, TierSpec
from pytest_kvcache.backends.cpu import CPUBackend
from pytest_kvcache.errors import BackendError
from pytest_kvcache.payload import NoiseSource, StagingBuffers, Verifier

PAGE = 4096
NOISE = NoiseSource(5, size=1 << 20)


def make(pages=8, block=1 << 16, verify=False):
    ctx = BackendContext(noise=NOISE, staging=StagingBuffers(block),
                         verifier=Verifier(NOISE, block) if verify else None)
    return CPUBackend(TierSpec("cpu", "cpu", pages * PAGE, {"page_bytes": PAGE}), ctx)


def test_round_trip_content_is_the_keys_payload():
    be = make()
    res = be.write("conv.k00000", 10_000)
    assert res.nbytes == 10_000 and res.end_ns > 0 and res.dur_ns >= 0
    assert be.content("conv.k00000") == NOISE.expected("conv.k00000", 10_000).tobytes()
    assert be.stored_keys() == {"conv.k00000"}
    rd = be.read("conv.k00000", 10_000)
    assert rd.nbytes == 10_000


def test_distinct_keys_have_distinct_content():
    be = make()
    be.write("a", 8192)
    be.write("b", 8192)
    assert be.content("a") != be.content("b")


def test_footprint_is_whole_pages():
    be = make()
    assert be.page == PAGE
    assert be.footprint(1) == PAGE
    assert be.footprint(PAGE) == PAGE
    assert be.footprint(PAGE + 1) == 2 * PAGE
    assert be.footprint(0) == PAGE
    assert be.describe()["page_bytes"] == PAGE


def test_page_is_never_larger_than_the_staging_block():
    ctx = BackendContext(noise=NOISE, staging=StagingBuffers(8192))
    be = CPUBackend(TierSpec("cpu", "cpu", 1 << 20), ctx)  # default 1 MiB pages
    assert be.page == 8192


def test_write_fails_when_out_of_pages_and_delete_frees_them():
    be = make(pages=4)
    be.write("a", 3 * PAGE)
    with pytest.raises(BackendError):
        be.write("b", 2 * PAGE)  # one page left
    assert be.stored_keys() == {"a"}  # the failed write took nothing
    be.write("c", PAGE)
    with pytest.raises(BackendError):
        be.write("d", 1)
    res = be.delete("a")
    assert res.nbytes == 3 * PAGE
    be.write("b", 2 * PAGE)
    assert be.content("b") == NOISE.expected("b", 2 * PAGE).tobytes()
    assert be.stored_keys() == {"b", "c"}


def test_write_of_an_existing_key_is_refused():
    be = make()
    be.write("a", 100)
    with pytest.raises(BackendError):
        be.write("a", 100)


def test_read_and_delete_of_a_missing_key_fail():
    be = make()
    with pytest.raises(BackendError):
        be.read("nope", 10)
    with pytest.raises(BackendError):
        be.delete("nope")


def test_read_copies_into_the_staging_buffer():
    be = make()
    be.write("a", 3000)  # fits in one page and in the staging buffer
    staging = be.ctx.staging.get()
    staging[:] = 0
    be.read("a", 3000)
    assert bytes(staging[:3000]) == be.content("a")
    assert be.ctx.staging.allocated_bytes == staging.nbytes  # one buffer for this thread, reused
    be.read("a", 3000)
    assert be.ctx.staging.allocated_bytes == staging.nbytes


def test_multi_page_read_passes_every_page_through_staging():
    be = make(verify=True)
    be.write("a", 3 * PAGE + 100)
    be.read("a", 3 * PAGE + 100)
    assert be.ctx.verifier.checked == 4 and be.ctx.verifier.mismatches == 0
    # the last page is what the buffer holds at the end
    staging = be.ctx.staging.get()
    assert bytes(staging[:100]) == be.content("a")[3 * PAGE:]


def test_verifier_catches_a_corrupted_arena_byte():
    be = make(verify=True)
    be.write("a", 2 * PAGE)
    pages, _ = be._pages["a"]
    be.arena[pages[1] * PAGE + 17] ^= 0xFF
    be.read("a", 2 * PAGE)
    assert be.ctx.verifier.mismatches == 1
    assert f"byte {PAGE + 17}" in be.ctx.verifier.first[0]


def test_close_releases_the_arena():
    be = make()
    be.write("a", 100)
    assert isinstance(be.arena, np.ndarray)
    be.close()
    assert be.arena is None
    assert be.stored_keys() == set()
