"""Payload content: a pure function of (seed, key, offset), unique per 4 KiB block, cheap to re-stamp."""

import numpy as np

from pytest_kvcache.payload import BLOCK, Held, NoiseSource, StagingBuffers, aligned_buffer

NOISE = NoiseSource(9, size=64 * 1024)


def test_content_does_not_depend_on_how_an_entry_is_split():
    whole = NOISE.expected("k", 200 * 1024)  # wraps the 64 KiB noise period three times
    for step in (BLOCK, 3 * BLOCK, 64 * 1024, 100 * 1024):
        parts = []
        for off in range(0, whole.size, step):
            part = np.empty(min(step, whole.size - off), dtype=np.uint8)
            NOISE.fill(part, "k", off)
            parts.append(part)
        assert np.array_equal(np.concatenate(parts), whole)


def test_every_block_differs_between_keys_and_within_a_key():
    a, b = NOISE.expected("a", 128 * 1024), NOISE.expected("b", 128 * 1024)
    blocks = [bytes(x) for x in (*a.reshape(-1, BLOCK), *b.reshape(-1, BLOCK))]
    assert len(set(blocks)) == len(blocks)  # nothing a drive could deduplicate
    assert not np.array_equal(NoiseSource(10, size=64 * 1024).expected("a", 4096), a[:4096])


def test_restamping_a_held_buffer_gives_the_same_bytes_as_a_fresh_fill():
    size = 64 * 1024
    buf = aligned_buffer(size)
    held = Held(size)
    # full and shorter transfers (a 6-block chunk over 4-block transfers), other offsets, other
    # stretches of noise, a length that is not a multiple of 8: each must equal a fresh fill
    steps = [("a", 0, size), ("b", 0, size), ("b", size, size // 2), ("c", 0, size), ("c", 2 * size, size),
             ("d", 4096, 8192), ("d", 0, size), ("e", 0, 20001), ("e", 0, 20000), ("f", 0, size)]
    for key, off, n in steps:
        NOISE.fill(buf[:n], key, off, held)
        fresh = np.empty(n, dtype=np.uint8)
        NOISE.fill(fresh, key, off)
        assert np.array_equal(buf[:n], fresh), (key, off, n)


def test_staging_payload_forgets_what_it_held_once_the_buffer_is_read_into():
    staging = StagingBuffers(8192)
    first = staging.payload(NOISE, "a", 0, 8192)
    assert np.array_equal(first, NOISE.expected("a", 8192))
    staging.get()[:] = 0  # a read lands in the buffer
    again = staging.payload(NOISE, "b", 0, 8192)
    assert np.array_equal(again, NOISE.expected("b", 8192))
