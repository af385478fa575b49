"""The run's directory on the drive under test: checking ``--kv-cache-dir``, making the run's
private directory in it, and the lock that keeps two scenarios off one drive at once."""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

from .errors import ConfigError
from .fsinfo import free_bytes, memory_medium


def check_cache_dir(path: Path, need_bytes: float = 0, allow_memory: bool = False) -> None:
    """Raise ConfigError, naming the fix, unless ``path`` is a writable directory with room, on a
    drive (memory file systems only with ``allow_memory``, i.e. --kv-allow-memory-fs)."""
    if not path.exists():
        raise ConfigError(f"--kv-cache-dir {path} does not exist; create it or point --kv-cache-dir at an existing directory on the drive under test.")
    if not path.is_dir():
        raise ConfigError(f"--kv-cache-dir {path} is not a directory; point --kv-cache-dir at a directory on the drive under test.")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"--kv-cache-dir {path} is not writable by this user; choose a directory you can write to, or fix its permissions.")
    memory = memory_medium(path)
    if memory and not allow_memory:
        raise ConfigError(f"--kv-cache-dir {path} is on {memory}: memory, not a drive, so the nvme tier would "
                          "measure RAM. Point --kv-cache-dir at a directory on the drive under test, or add "
                          "--kv-allow-memory-fs to measure memory on purpose (its figures are then marked "
                          "memory and fail the criterion storage.memory_tiers==0).")
    free = free_bytes(path)
    if need_bytes > free:
        raise ConfigError(f"--kv-nvme-capacity-gb {need_bytes / 1e9:g} is more than the {free / 1e9:.1f} GB free in "
                          f"{path}; lower it or free space on that drive.")


def make_run_dir(cache_root: Path, allow_memory: bool = False) -> Path:
    """A new private directory (mode 0700) in ``cache_root``; ConfigError naming the fix when it cannot be made."""
    check_cache_dir(cache_root, allow_memory=allow_memory)
    try:
        return Path(tempfile.mkdtemp(prefix="kvcache-run-", dir=cache_root))  # mode 0700
    except OSError as exc:
        raise ConfigError(f"cannot create the run directory in --kv-cache-dir {cache_root}: {exc.strerror}; choose a writable directory.") from None


class DriveLock:
    """An exclusive ``flock`` on the cache dir itself, held while a scenario owns the drive.

    Scenarios that share a drive must not run at once (pytest-xdist workers, or two pytest
    sessions pointed at one drive): each waits for the other. Locking the directory creates
    no file, and the kernel releases the lock if the process dies.
    """

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = -1
