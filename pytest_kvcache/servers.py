"""Local servers for the network tiers: a real ``redis-server`` and a ``moto`` S3 server.

Each starts as a child process bound to a loopback port, is polled until it answers, and is
stopped (SIGTERM, then SIGKILL) by ``stop``. They stand in for the user's own Redis or S3
endpoint when ``--kv-redis-url`` / ``--kv-s3-endpoint`` are not given (the scenarios and the
tests start them through fixtures). Nothing here imports pytest: ``*_unavailable_reason`` says
why a server cannot be started, and the fixtures turn that into a skip.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

START_TIMEOUT_S = 180.0
"""Longest wait for a server to answer after its start (moto imports Flask and botocore; on a
2-core VM shared with other jobs that took from 5 s to 2 minutes)."""


def redis_unavailable_reason(local: bool) -> str | None:
    """Why the redis tier cannot run here (no ``redis`` client package; with ``local``, no
    ``redis-server`` binary to start), naming the fix; None when it can."""
    if importlib.util.find_spec("redis") is None:
        return "the redis tier needs the Python client: pip install 'pytest-kvcache[redis]'"
    if local and shutil.which("redis-server") is None:
        return ("no redis-server binary on PATH to start a local server (apt-get install redis-server), "
                "and no --kv-redis-url given")
    return None


def s3_unavailable_reason(local: bool) -> str | None:
    """Why the object tier cannot run here (no ``boto3``; with ``local``, no ``moto`` server to
    start), naming the fix; None when it can."""
    if importlib.util.find_spec("boto3") is None:
        return "the object tier needs boto3: pip install 'pytest-kvcache[s3]'"
    if local and (importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None):
        return ("no moto server to start a local S3 endpoint (pip install 'moto[server]'), and no "
                "--kv-s3-endpoint / --kv-s3-bucket given")
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 free right now (another process may take it before we bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """A child-process server on loopback. ``url`` is where it answers; ``stop`` ends it."""

    url: str = ""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.log_path = ""

    def _spawn(self, argv: list[str]) -> None:
        fd, self.log_path = tempfile.mkstemp(prefix="kvcache-server-", suffix=".log")
        with os.fdopen(fd, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)  # Ctrl-C in pytest does not hit it first

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """End the server at once (SIGKILL): what a crash looks like to its clients."""
        if self.running:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        """End the server (SIGTERM, SIGKILL after 5 s) and remove its log and files."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(OSError):
            os.unlink(self.log_path)


class LocalRedis(LocalServer):
    """``redis-server`` on a free loopback port, no persistence, in a private temp dir.

    ``maxmemory_bytes`` (0 = none) sets the server's ``maxmemory`` with ``noeviction``, so a
    write past it fails with Redis's OOM error rather than evicting. Raises RuntimeError (with
    the server's log) when it does not answer within ``START_TIMEOUT_S``.
    """

    def __init__(self, maxmemory_bytes: int = 0, tries: int = 3):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="kvcache-redis-")
        for attempt in range(tries):
            self.port = free_port()
            self._spawn(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                         "--appendonly", "no", "--dir", self.dir, "--maxmemory", str(maxmemory_bytes),
                         "--maxmemory-policy", "noeviction", "--protected-mode", "yes"])
            self.url = f"redis://127.0.0.1:{self.port}/0"
            if self._wait():
                return
            if attempt + 1 == tries:
                log = self.log()
                self.stop()
                raise RuntimeError(f"redis-server did not start on 127.0.0.1:{self.port}: {log}")
            self.stop()

    def _wait(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.running:
                return False  # e.g. the port was taken meanwhile
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.dir, ignore_errors=True)


_MOTO_LISTENING = re.compile(rb"Running on (http://127\.0\.0\.1:\d+)")


class LocalMoto(LocalServer):
    """``python -m moto.server`` on a loopback port the server picks itself (port 0, so no
    race), with ``bucket`` created. Raises RuntimeError (with its log) when it does not start."""

    def __init__(self, bucket: str = "kvcache"):
        super().__init__()
        self.bucket = bucket
        self._spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"])
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and self.running:
            with contextlib.suppress(OSError), open(self.log_path, "rb") as f:
                found = _MOTO_LISTENING.search(f.read())
                if found:
                    self.url = found.group(1).decode()
                    break
            time.sleep(0.1)
        if not self.url or not self._create_bucket(deadline):
            log = self.log()
            self.stop()
            raise RuntimeError(f"the moto S3 server did not start: {log}")

    def _create_bucket(self, deadline: float) -> bool:
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config

        client = boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                              config=Config(signature_version=UNSIGNED))
        while time.monotonic() < deadline and self.running:
            try:
                client.create_bucket(Bucket=self.bucket)
                return True
            except Exception:  # not listening yet: try again until the deadline
                time.sleep(0.1)
        return False
