"""The nvme tier's slot allocator: which file holds which chunk, and the spare files kept for reuse.

Recycling (on by default): files are slots. The table maps each key to the file holding it;
deleting an entry keeps its file as a spare, and the next write overwrites a spare in place (the
same size if there is one, else the nearest larger one cut to size, else the largest, which the
write extends), as a slab allocator reuses slots. Creating a file costs the file system far more
than a small write (17 us to over 1 ms per create on ext4 after many deletes, and a rename still
about 20 us; see docs/performance.md), so without this a tier that evicts, or rewrites the
growing last chunk of a conversation, measures inode allocation instead of the drive. Every
file of ours, spare or live, is the size of what it holds, and together they stay within the
tier's capacity (the cache keeps the live ones within it; spares give way when one must grow).

:class:`SlotTable` is bookkeeping only: it never touches the disk. ``backends/file.py`` does the
timed I/O and the system calls (open, write, ``ftruncate``, ``unlink``, ``fstat``) and tells the
table what happened. Sizes are bytes, always the padded footprint of an entry (whole pages).
"""

from __future__ import annotations

import bisect
import itertools
import threading
from dataclasses import dataclass

from ..errors import BackendError


@dataclass(frozen=True)
class Claim:
    """A file claimed for one write: ``name`` (in the run directory) to write; ``spare_size``, the
    size in bytes of the spare it reuses (None: a new file to create); ``drop``, the names of
    spares to unlink before the write so that all our files stay within the tier's capacity."""

    name: str
    spare_size: int | None
    drop: tuple[str, ...]

    @property
    def recycled(self) -> bool:
        """True when the write overwrites a spare rather than creating a file."""
        return self.spare_size is not None


class SlotTable:
    """Which file of the run directory holds which key, the spares by size, and the bytes of all
    our files on disk. Thread-safe (one lock of its own); does no I/O.

    ``capacity_bytes``: the tier's capacity, which live, being-written and spare files together
    stay within. ``recycle``: keep a freed file as a spare (True) or let the caller unlink it.
    """

    def __init__(self, capacity_bytes: int, recycle: bool = True):
        self.capacity_bytes = capacity_bytes
        self.recycle = recycle
        self._lock = threading.Lock()
        self._live: dict[str, tuple[str, int]] = {}  # key -> (its file's name, padded bytes)
        self._names: dict[str, str] = {}  # file name -> key, for every live file (or being written)
        self._spares: dict[int, list[str]] = {}  # file size -> freed files of ours kept for reuse
        self._spare_sizes: list[int] = []  # the keys of _spares, sorted
        self._disk_bytes = 0  # live + being written + spare (the cache keeps live within capacity)
        self._stray: list[str] = []  # files of ours whose removal failed: close() tries again
        self._serial = itertools.count()
        self._files_created = 0
        self._files_recycled = 0

    @property
    def disk_bytes(self) -> int:
        """Bytes of all our files as the table accounts them: live, being written and spare."""
        with self._lock:
            return self._disk_bytes

    def name_of(self, key: str) -> str | None:
        """The name of the file holding ``key`` now, or None."""
        slot = self._live.get(key)
        return None if slot is None else slot[0]

    def claim(self, key: str, padded: int) -> Claim:
        """Claim a file for writing ``padded`` bytes of ``key``: the spare of the same size, else
        the nearest larger, else the largest, else a new ``slotNNNNNNNN.kv`` (a slot, not a key:
        it is reused). Accounts ``padded`` bytes for it at once, and picks spares to drop, largest
        first, while all our files would exceed the capacity.

        Raises BackendError when ``key`` is already stored. Follow with :meth:`commit`, or
        :meth:`discard` / :meth:`keep_cut` if the write does not complete.
        """
        with self._lock:
            if key in self._live:
                raise BackendError(f"write of {key!r}: it is already stored; delete it first")
            spare = size = None
            if self._spare_sizes:
                i = bisect.bisect_left(self._spare_sizes, padded)
                size = self._spare_sizes[min(i, len(self._spare_sizes) - 1)]
                spare = self._pop_spare(size)
            self._disk_bytes += padded - (size or 0)
            drop = []
            while self._spare_sizes and self._disk_bytes > self.capacity_bytes:
                largest = self._spare_sizes[-1]
                drop.append(self._pop_spare(largest))
                self._disk_bytes -= largest
            name = spare or f"slot{next(self._serial):08d}.kv"
            self._names[name] = key
            return Claim(name, size, tuple(drop))

    def commit(self, key: str, claim: Claim, padded: int) -> None:
        """The write of ``key`` into ``claim`` completed: the file now holds ``padded`` bytes."""
        with self._lock:
            self._live[key] = (claim.name, padded)
            if claim.recycled:
                self._files_recycled += 1
            else:
                self._files_created += 1

    def discard(self, name: str, padded: int) -> None:
        """A failed write's file ``name`` (claimed for ``padded`` bytes) was removed: forget it."""
        with self._lock:
            self._names.pop(name, None)
            self._disk_bytes -= padded

    def keep_cut(self, name: str, size: int, padded: int) -> None:
        """Keep the file of a write cut as the run ended as a spare at its real ``size`` (its
        content is never read: a spare is overwritten before it holds an entry); the claim
        accounted ``padded`` bytes for it."""
        with self._lock:
            self._names.pop(name, None)
            self._put_spare(size, name)
            self._disk_bytes += size - padded

    def free(self, key: str) -> tuple[str, int]:
        """Free ``key``'s file and return (its name, its size in bytes). With recycling it becomes
        a spare; without, the caller unlinks it and then calls :meth:`removed`.

        Raises BackendError when ``key`` is not stored."""
        with self._lock:
            slot = self._live.pop(key, None)
            if slot is None:
                raise BackendError(f"delete of {key!r}: not an entry of this backend")
            name, size = slot
            del self._names[name]
            if self.recycle:
                self._put_spare(size, name)
            return slot

    def removed(self, size: int) -> None:
        """A freed file of ``size`` bytes was unlinked (or given up as stray): stop counting it."""
        with self._lock:
            self._disk_bytes -= size

    def stray(self, name: str) -> None:
        """The removal of our file ``name`` failed: keep it for :meth:`clear` to hand back."""
        with self._lock:
            self._stray.append(name)

    def keys_by_name(self) -> dict[str, str]:
        """File name -> key for every live file (and every file being written)."""
        with self._lock:
            return dict(self._names)

    def ours(self) -> set[str]:
        """Every file name that is ours: live, being written, spare, or awaiting removal."""
        with self._lock:
            names = set(self._names) | set(self._stray)
            names.update(n for names in self._spares.values() for n in names)
            return names

    def counts(self) -> dict[str, int]:
        """``files_created``, ``files_recycled`` (writes that overwrote a spare), ``spare_files``."""
        with self._lock:
            return {"files_created": self._files_created, "files_recycled": self._files_recycled,
                    "spare_files": sum(len(v) for v in self._spares.values())}

    def clear(self) -> list[str]:
        """Forget everything and return the names of all our files (live, being written, spare,
        stray) for the caller to remove. The counts are kept."""
        with self._lock:
            names = list(self._names) + [n for v in self._spares.values() for n in v] + self._stray
            self._stray = []
            self._names.clear()
            self._live.clear()
            self._spares.clear()
            self._spare_sizes.clear()
            self._disk_bytes = 0
            return names

    def _pop_spare(self, size: int) -> str:
        names = self._spares[size]
        name = names.pop()
        if not names:
            del self._spares[size]
            self._spare_sizes.remove(size)
        return name

    def _put_spare(self, size: int, name: str) -> None:
        if size not in self._spares:
            self._spares[size] = []
            bisect.insort(self._spare_sizes, size)
        self._spares[size].append(name)
