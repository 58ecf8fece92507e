"""A real redis-server for tests: on a free loopback port, without persistence, stopped by its handle.

``RedisServer`` starts ``redis-server`` (the Debian package) and can kill and
start it again on the same port, for tests of a lost connection.  Under CI
(``CI=1``) a missing redis-server fails the test; elsewhere it skips.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator

from ._programs import find_program, free_port

HOST = "127.0.0.1"
_START_TIMEOUT = 10.0  # seconds for redis-server to accept connections


def redis_server_path() -> str:
    """The redis-server program (see tests/_programs.py)."""
    return find_program("redis-server", "apt-get install -y redis-server")


class RedisServer:
    """One redis-server process on ``port``; ``stop()`` and ``start()`` again keep the port."""

    def __init__(self, program: str, port: int) -> None:
        self.program = program
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        assert self.process is None, "already running"
        self.process = subprocess.Popen(
            [
                self.program,
                "--port", str(self.port),
                "--bind", HOST,
                "--save", "",
                "--appendonly", "no",
                "--protected-mode", "no",
                "--loglevel", "warning",
                "--dir", "/tmp",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        # Bounded polling of an external process: it is ready when it accepts a connection.
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                self.process = None
                raise RuntimeError(f"redis-server exited at start (port {self.port} taken?)")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5) as connection:
                    connection.sendall(b"PING\r\n")
                    if connection.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer on port {self.port} within {_START_TIMEOUT} s")
            time.sleep(0.02)

    def stop(self) -> None:
        """Kill the server (SIGKILL: a crash, as a lost Redis looks to its clients) and reap it."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


def run_redis_server() -> Iterator[RedisServer]:
    """The body of a fixture: a started RedisServer, stopped after the test."""
    server = RedisServer(redis_server_path(), free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def redis_command(port: int, *args: str | bytes) -> bytes:
    """Send one command to the server (RESP, by hand: the test does not trust the client it tests)
    and return the start of the raw reply."""
    import trio

    parts = [arg.encode() if isinstance(arg, str) else arg for arg in args]
    request = f"*{len(parts)}\r\n".encode() + b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)
    stream = await trio.open_tcp_stream(HOST, port)
    async with stream:
        await stream.send_all(request)
        return await stream.receive_some(65536)
