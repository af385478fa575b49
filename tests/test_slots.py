"""The nvme tier's slot allocator on its own (no disk): claim order, spare drops, accounting, counts."""

import pytest

from pytest_kvcache.backends.slots import SlotTable
from pytest_kvcache.errors import BackendError

PAGE = 4096


def store(table, key, padded):
    """A completed write: claim, then commit; returns the claim."""
    claim = table.claim(key, padded)
    table.commit(key, claim, padded)
    return claim


def spares_of(table, sizes, recycle=True):
    """Make one spare of each size (in pages), freed in the given order; returns their names."""
    names = {}
    for i, pages in enumerate(sizes):
        names[pages] = store(table, f"s{i}", pages * PAGE).name
    for i in range(len(sizes)):
        table.free(f"s{i}")
    return names


def test_a_new_key_gets_a_new_slot_file_and_is_counted_as_created():
    t = SlotTable(1 << 30)
    a, b = store(t, "a", PAGE), store(t, "b", 2 * PAGE)
    assert (a.spare_size, a.drop, a.recycled) == (None, (), False)
    assert a.name != b.name and a.name.startswith("slot") and a.name.endswith(".kv")
    assert t.name_of("a") == a.name and t.name_of("b") == b.name and t.name_of("c") is None
    assert t.keys_by_name() == {a.name: "a", b.name: "b"}
    assert t.disk_bytes == 3 * PAGE
    assert t.counts() == {"files_created": 2, "files_recycled": 0, "spare_files": 0}


def test_a_claim_takes_the_same_size_spare_first():
    t = SlotTable(1 << 30)
    names = spares_of(t, [1, 2, 3])
    c = t.claim("x", 2 * PAGE)
    assert (c.name, c.spare_size, c.drop) == (names[2], 2 * PAGE, ())


def test_a_claim_takes_the_nearest_larger_spare_when_none_is_the_same_size():
    t = SlotTable(1 << 30)
    names = spares_of(t, [1, 5, 3])
    c = t.claim("x", 2 * PAGE)
    assert (c.name, c.spare_size) == (names[3], 3 * PAGE)
    assert t.disk_bytes == 1 * PAGE + 5 * PAGE + 2 * PAGE  # the spare is cut to the write's size


def test_a_claim_takes_the_largest_spare_when_all_are_smaller():
    t = SlotTable(1 << 30)
    names = spares_of(t, [1, 3, 2])
    c = t.claim("x", 8 * PAGE)
    assert (c.name, c.spare_size, c.recycled) == (names[3], 3 * PAGE, True)
    assert t.disk_bytes == 1 * PAGE + 2 * PAGE + 8 * PAGE  # the write extends it


def test_a_claim_of_a_stored_key_is_refused_and_changes_nothing():
    t = SlotTable(1 << 30)
    store(t, "a", PAGE)
    with pytest.raises(BackendError, match="already stored"):
        t.claim("a", PAGE)
    assert t.disk_bytes == PAGE and len(t.ours()) == 1


def test_a_growing_spare_drops_another_spare_so_all_files_fit_the_capacity():
    t = SlotTable(6 * PAGE)
    names = spares_of(t, [1, 1, 1, 3])  # 6 pages of spares: the whole capacity
    c = t.claim("e", 4 * PAGE)  # takes the 3-page spare and grows it by one page
    assert c.name == names[3] and c.spare_size == 3 * PAGE
    assert len(c.drop) == 1 and c.drop[0] != c.name  # one 1-page spare goes
    assert t.disk_bytes == 6 * PAGE and t.counts()["spare_files"] == 2
    assert c.drop[0] not in t.ours()  # the caller unlinks it; it is no longer ours


def test_spares_are_dropped_largest_first():
    t = SlotTable(10 * PAGE)
    names = spares_of(t, [1, 2, 3, 4])  # 10 pages of spares
    c = t.claim("x", 5 * PAGE)  # takes the 4-page spare: 11 pages, so the 3-page one goes
    assert c.name == names[4] and c.drop == (names[3],)
    assert t.disk_bytes == 8 * PAGE and t.ours() == {names[1], names[2], names[4]}


def test_a_claim_drops_several_spares_when_one_is_not_enough_and_stops_when_none_is_left():
    t = SlotTable(6 * PAGE)
    spares_of(t, [1, 1, 1, 3])
    c = t.claim("x", 5 * PAGE)  # takes the 3-page spare (+2 pages): two 1-page spares go
    assert c.spare_size == 3 * PAGE and len(c.drop) == 2
    assert t.disk_bytes == 6 * PAGE and t.counts()["spare_files"] == 1
    t.commit("x", c, 5 * PAGE)
    c = t.claim("y", 4 * PAGE)  # the last spare grows; nothing is left to drop
    assert c.spare_size == PAGE and c.drop == ()
    # over the capacity: keeping live entries within it is the cache's job, not the table's
    assert t.disk_bytes == 9 * PAGE


def test_commit_counts_recycled_and_created_writes():
    t = SlotTable(1 << 30)
    store(t, "a", PAGE)
    t.free("a")
    c = store(t, "b", PAGE)
    store(t, "c", PAGE)
    assert c.recycled
    assert t.counts() == {"files_created": 2, "files_recycled": 1, "spare_files": 0}


def test_free_with_recycling_keeps_the_file_as_a_spare_and_its_bytes():
    t = SlotTable(1 << 30)
    a = store(t, "a", 3 * PAGE)
    assert t.free("a") == (a.name, 3 * PAGE)
    assert t.name_of("a") is None and t.keys_by_name() == {}
    assert t.ours() == {a.name} and t.disk_bytes == 3 * PAGE and t.counts()["spare_files"] == 1
    with pytest.raises(BackendError, match="not an entry"):
        t.free("a")


def test_free_without_recycling_counts_the_bytes_until_the_file_is_removed():
    t = SlotTable(1 << 30, recycle=False)
    a = store(t, "a", 3 * PAGE)
    assert t.free("a") == (a.name, 3 * PAGE)
    assert t.ours() == set() and t.counts()["spare_files"] == 0
    assert t.disk_bytes == 3 * PAGE  # still on disk until the caller's unlink
    t.removed(3 * PAGE)
    assert t.disk_bytes == 0
    assert not store(t, "b", PAGE).recycled  # no spares: every write creates
    assert t.counts() == {"files_created": 2, "files_recycled": 0, "spare_files": 0}


@pytest.mark.parametrize("recycle", [True, False])
def test_discard_after_a_failed_write_forgets_the_file_and_its_bytes(recycle):
    t = SlotTable(1 << 30, recycle=recycle)
    store(t, "a", PAGE)
    c = t.claim("b", 2 * PAGE)
    assert t.disk_bytes == 3 * PAGE and c.name in t.ours()
    t.discard(c.name, 2 * PAGE)
    assert t.disk_bytes == PAGE and c.name not in t.ours() and t.name_of("b") is None
    assert t.counts() == {"files_created": 1, "files_recycled": 0, "spare_files": 0}
    store(t, "b", PAGE)  # the key can be written again


def test_discard_of_a_claimed_spare_loses_the_spare():
    t = SlotTable(1 << 30)
    names = spares_of(t, [2])
    c = t.claim("x", 2 * PAGE)
    t.discard(c.name, 2 * PAGE)  # the failed write removed the spare's file
    assert c.name == names[2] and t.ours() == set() and t.disk_bytes == 0


@pytest.mark.parametrize("recycle", [True, False])
def test_keep_cut_keeps_a_cut_write_as_a_spare_at_its_real_size(recycle):
    t = SlotTable(1 << 30, recycle=recycle)
    c = t.claim("a", 5 * PAGE)
    t.keep_cut(c.name, 2 * PAGE, 5 * PAGE)  # the run ended after two pages reached the file
    assert t.name_of("a") is None and t.keys_by_name() == {} and t.ours() == {c.name}
    assert t.disk_bytes == 2 * PAGE and t.counts()["spare_files"] == 1
    again = t.claim("b", 2 * PAGE)
    assert (again.name, again.spare_size) == (c.name, 2 * PAGE)


def test_stray_files_stay_ours_until_clear_hands_them_back():
    t = SlotTable(1 << 30)
    a = store(t, "a", PAGE)
    c = t.claim("c", 4 * PAGE)  # being written
    b = store(t, "b", PAGE)
    t.free("b")  # a spare
    t.stray("old.kv")
    assert t.ours() == {a.name, b.name, c.name, "old.kv"}
    assert sorted(t.clear()) == sorted([a.name, b.name, c.name, "old.kv"])
    assert t.ours() == set() and t.disk_bytes == 0 and t.keys_by_name() == {}
    assert t.clear() == []
    assert t.counts() == {"files_created": 2, "files_recycled": 0, "spare_files": 0}  # counts are kept
