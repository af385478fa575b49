"""Repository-level conftest: the plugin itself is loaded through its pytest11 entry point.

``pytester`` runs pytest-in-pytest for the plugin's end-to-end tests.

Tests give their ``tmp_path`` as ``--kv-cache-dir``, which must be on a drive (a memory file system
is a usage error without ``--kv-allow-memory-fs``). Where the system temp dir is memory (tmpfs
``/tmp`` on many distributions), pytest's temp dirs go to ``/var/tmp`` instead.
"""

import os
import tempfile

from pytest_kvcache.fsinfo import memory_medium

pytest_plugins = ["pytester"]

if ("PYTEST_DEBUG_TEMPROOT" not in os.environ and memory_medium(tempfile.gettempdir())
        and os.path.isdir("/var/tmp") and not memory_medium("/var/tmp")):
    os.environ["PYTEST_DEBUG_TEMPROOT"] = "/var/tmp"  # read by pytest's tmp_path_factory
