"""What the benchmark scripts share about their processes: the open-files limit, the line protocol
to the orchestrator, stopping a child, its RSS and its CPU time.

Each script starts its peers with ``subprocess.Popen``, talks to them over
stdin/stdout, and must leave nothing behind; this is the one copy of how.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any


def stop_child(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """Make sure this process (and only it) is gone: EOF on its stdin (a peer stops when its
    orchestrator's pipe closes), then SIGTERM, then SIGKILL, ``grace`` seconds apart."""
    if proc.poll() is not None:
        return
    try:
        assert proc.stdin is not None
        proc.stdin.close()
    except OSError:
        pass
    for signal_it in (None, proc.terminate, proc.kill):
        if signal_it is not None:
            signal_it()
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the kernel's choice), for a child to listen on."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


def rss(pid: int) -> int:
    """Resident set size in bytes, from /proc/PID/status (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name (field 2) may hold spaces and parentheses: split after its last ")".
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def emit(tag: str, payload: dict[str, Any]) -> None:
    """One line of the protocol between a process and the orchestrator."""
    try:
        print(f"{tag} {json.dumps(payload, separators=(',', ':'))}", flush=True)
    except BrokenPipeError:  # the orchestrator is gone; keep going quietly to our own end
        pass


class ChildFailed(RuntimeError):
    """A child process ended, or did not answer in time."""


class Child:
    """A process a benchmark script started from itself (``script argv...``, with ``python``):
    JSON commands on its stdin, ``TAG {json}`` lines on its stdout (see :func:`emit`); any
    other line it prints is shown, prefixed with its name."""

    def __init__(self, name: str, script: str, argv: list[str], python: str | Path = sys.executable) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [str(python), str(Path(script).resolve()), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.pid = self.proc.pid
        self.lines: queue.Queue[tuple[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            tag, _, rest = line.rstrip("\n").partition(" ")
            if tag.isupper() and rest.startswith("{"):
                try:
                    self.lines.put((tag, json.loads(rest)))
                    continue
                except ValueError:  # (a line of the child's own output that looks like one)
                    pass
            print(f"[{self.name}] {line}", end="", flush=True)
        self.lines.put(("EOF", None))

    def send(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def expect(self, tag: str, timeout: float) -> dict[str, Any] | None:
        """The next line tagged ``tag`` (others are dropped); ``None`` after ``timeout`` s.
        :exc:`ChildFailed` if the process ended (or reported ``FAILED``) first."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                got, payload = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if got == tag:
                return payload  # type: ignore[no-any-return]
            if got in ("EOF", "FAILED"):
                raise ChildFailed(f"{self.name} ended ({got} {payload}) while we waited for {tag}")
        return None

    def need(self, tag: str, timeout: float) -> dict[str, Any]:
        """As :meth:`expect`, with :exc:`ChildFailed` after ``timeout`` s."""
        answer = self.expect(tag, timeout)
        if answer is None:
            raise ChildFailed(f"{self.name}: no {tag} within {timeout:g} s")
        return answer

    def request(self, tag: str, timeout: float, **command: Any) -> dict[str, Any]:
        """Send ``command``, wait for the answer tagged ``tag``."""
        self.send(**command)
        return self.need(tag, timeout)

    def stop(self) -> None:
        stop_child(self.proc, 10)


async def echo_until_closed(ws: Any) -> None:
    """Send every message of a trio_ws connection back until it closes (a server handler's
    loop; trio_ws is imported here, not at the top: the peers' venv has no trio_ws)."""
    from trio_ws import ConnectionClosed

    try:
        while True:
            await ws.send_message(await ws.get_message())
    except ConnectionClosed:
        pass


async def asyncio_commands(lifetime: float) -> AsyncIterator[dict[str, Any]]:
    """The JSON commands on stdin, for an asyncio child: until EOF (the orchestrator's pipe
    closed) or ``lifetime`` seconds from the first call, whichever comes first.  A thread
    reads the lines, so that the event loop never blocks on the pipe."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, "")

    threading.Thread(target=read_stdin, daemon=True).start()
    deadline = loop.time() + lifetime
    while True:
        try:
            line = await asyncio.wait_for(lines.get(), max(0.1, deadline - loop.time()))
        except TimeoutError:
            return
        if not line:
            return
        yield json.loads(line)
