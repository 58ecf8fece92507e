"""``python -m trio_ws``: the echo server and the interactive client, run as subprocesses."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio

from trio_ws import (
    CloseReason,
    ConnectionClosed,
    WebSocketRequest,
    WebSocketServer,
    open_websocket_url,
    serve_websocket,
)

from . import test_proxy
from .conftest import HOST, RESOURCE, echo_handler

# A real tinyproxy for the --proxy test: test_proxy's fixtures, used here too.
proxy_dir = test_proxy.proxy_dir
tinyproxy = test_proxy.tinyproxy

# Generous: each subprocess starts a Python interpreter and imports trio.
LIMIT = 15

COMMAND = [sys.executable, "-m", "trio_ws"]


class Output:
    """Read a subprocess's output stream up to a marker."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.seen = b""

    async def read_until(self, marker: bytes) -> bytes:
        while marker not in self.seen:
            data = await self.stream.receive_some(4096)
            if not data:
                raise AssertionError(f"output ended before {marker!r}; got {self.seen!r}")
            self.seen += data
        return self.seen

    async def read_rest(self) -> bytes:
        while data := await self.stream.receive_some(4096):
            self.seen += data
        return self.seen


# The CLI client takes its proxy from the environment: the tests' own loopback
# servers are reached directly, whatever the machine's environment says.
ENV = {name: value for name, value in os.environ.items() if not name.lower().endswith("_proxy")}


def _default_sigint() -> None:
    """In the child: Ctrl-C as at a terminal.  A shell starts a background job (``.ci/run &``,
    say) with SIGINT ignored, its children inherit that, and Python then installs no
    KeyboardInterrupt handler: the Ctrl-C test would wait for an exit that cannot come."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@asynccontextmanager
async def cli(*args: str, stdin: bool = False, env: dict[str, str] | None = None) -> AsyncIterator[trio.Process]:
    """Run ``python -m trio_ws ARGS``; on the way out kill it if still running, reap it, close its pipes."""
    process = await trio.lowlevel.open_process(
        [*COMMAND, *args],
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV if env is None else env,
        preexec_fn=_default_sigint,
    )
    try:
        yield process
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream is not None:
                    await stream.aclose()


async def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(LIMIT):
        return await trio.run_process(
            [*COMMAND, *args],
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=ENV if env is None else env,
        )


async def read_server_port(process: trio.Process) -> int:
    """The port in the URL that ``serve`` prints when it is listening."""
    assert process.stdout is not None
    first_line = (await Output(process.stdout).read_until(b"\n")).decode().splitlines()[0]
    match = re.search(r"ws://127\.0\.0\.1:(\d+)/?", first_line)
    assert match is not None, first_line
    port = int(match.group(1))
    assert port != 0
    return port


async def test_serve_prints_its_url_and_echoes() -> None:
    with trio.fail_after(LIMIT):
        async with cli("serve", "--host", HOST, "--port", "0") as process:
            port = await read_server_port(process)
            async with open_websocket_url(f"ws://{HOST}:{port}{RESOURCE}", subprotocols=["chat"]) as ws:
                assert ws.subprotocol == "chat"  # the echo server picks the first offered
                for message in ("hello", b"\x00\xffbinary", "é" * 1000):
                    await ws.send_message(message)
                    assert await ws.get_message() == message
            assert ws.closed is not None
            assert ws.closed.code == 1000
            # Still serving after a client left; then stopped by its process object.
            assert process.returncode is None
            process.kill()
            assert await process.wait() == -signal.SIGKILL


async def test_serve_stops_cleanly_on_ctrl_c() -> None:
    with trio.fail_after(LIMIT):
        async with cli("serve", "--host", HOST, "--port", "0") as process:
            assert process.stderr is not None
            await read_server_port(process)
            process.send_signal(signal.SIGINT)
            returncode = await process.wait()
            stderr = (await Output(process.stderr).read_rest()).decode()
    assert "Traceback" not in stderr, stderr
    assert returncode in (130, -signal.SIGINT), stderr


async def test_interactive_client_echo_and_close_1000(nursery: trio.Nursery) -> None:
    close_reasons: list[CloseReason | None] = []
    received: list[str | bytes] = []
    handler_done = trio.Event()

    async def recording_echo(request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            while True:
                message = await ws.get_message()
                received.append(message)
                await ws.send_message(message)
        except ConnectionClosed as exc:
            close_reasons.append(exc.reason)
        handler_done.set()

    server: WebSocketServer = await nursery.start(partial(serve_websocket, recording_echo, HOST, 0, None))
    with trio.fail_after(LIMIT):
        async with cli(f"ws://{HOST}:{server.port}{RESOURCE}", stdin=True) as process:
            assert process.stdin is not None
            assert process.stdout is not None
            output = Output(process.stdout)
            await process.stdin.send_all(b"hello\n")
            await output.read_until(b"< hello\n")
            await process.stdin.send_all(b"second line\n")
            await output.read_until(b"< second line\n")
            await process.stdin.aclose()  # end of input: the client closes with 1000
            returncode = await process.wait()
            await output.read_rest()
        await handler_done.wait()
    assert returncode == 0, output.seen
    assert received == ["hello", "second line"]
    assert len(close_reasons) == 1
    reason = close_reasons[0]
    assert reason is not None
    assert reason.code == 1000


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("http://127.0.0.1/", "scheme"),
        ("no-scheme-at-all", "scheme"),
        ("ws://", "host"),
    ],
)
async def test_bad_url_is_a_clear_error(url: str, complaint: str) -> None:
    result = await run_cli(url)
    assert result.returncode != 0
    stderr = result.stderr.decode()
    assert "Traceback" not in stderr, stderr
    assert "WebSocket URL" in stderr, stderr
    assert complaint in stderr, stderr


async def test_unreachable_port_exits_2() -> None:
    # A socket that is bound but not listening: its port is ours, and refuses connections.
    with trio.socket.socket() as sock:
        await sock.bind((HOST, 0))
        port = sock.getsockname()[1]
        result = await run_cli(f"ws://{HOST}:{port}{RESOURCE}")
    assert result.returncode == 2, result
    stderr = result.stderr.decode()
    assert "Traceback" not in stderr, stderr
    assert "could not connect" in stderr, stderr
    assert str(port) in stderr, stderr


async def test_interactive_client_reconnects_when_asked(nursery: trio.Nursery) -> None:
    """--reconnect: the server drops the first connection (1001); the client connects again and goes on."""
    connections = 0

    async def first_drops(request: WebSocketRequest) -> None:
        nonlocal connections
        connections += 1
        ws = await request.accept()
        if connections == 1:
            await ws.get_message()
            await ws.aclose(1001, "restarting")
            return
        async for message in ws:
            await ws.send_message(message)

    server: WebSocketServer = await nursery.start(partial(serve_websocket, first_drops, HOST, 0, None))
    with trio.fail_after(LIMIT):
        async with cli(f"ws://{HOST}:{server.port}{RESOURCE}", "--reconnect", "--no-proxy", stdin=True) as process:
            assert process.stdin is not None
            assert process.stdout is not None
            output = Output(process.stdout)
            await process.stdin.send_all(b"lost\n")
            await output.read_until(b"reconnecting...\n")
            await output.read_until(b"connected to ")
            await process.stdin.send_all(b"after the reconnect\n")
            await output.read_until(b"< after the reconnect\n")
            await process.stdin.aclose()
            assert await process.wait() == 0
            await output.read_rest()
    assert connections == 2
    assert b"connection closed: 1001 GOING_AWAY restarting" in output.seen


async def test_proxy_flags(nursery: trio.Nursery, tinyproxy: str, proxy_dir: Path) -> None:
    """--proxy URL goes through that proxy (a real tinyproxy); by default the client takes the
    environment's proxy; --no-proxy ignores it."""
    server: WebSocketServer = await nursery.start(partial(serve_websocket, echo_handler, HOST, 0, None))
    url = f"ws://{HOST}:{server.port}{RESOURCE}"
    dead_proxy = f"http://{HOST}:1"  # nothing listens on port 1: a client that uses it cannot connect

    async def echo_once(*args: str, env: dict[str, str] | None = None) -> bytes:
        async with cli(url, *args, stdin=True, env=env) as process:
            assert process.stdin is not None
            assert process.stdout is not None
            output = Output(process.stdout)
            await process.stdin.send_all(b"via\n")
            await output.read_until(b"< via\n")
            await process.stdin.aclose()
            assert await process.wait() == 0
            await output.read_rest()
        return output.seen

    with trio.fail_after(LIMIT):
        await echo_once("--proxy", tinyproxy, env={**ENV, "ws_proxy": dead_proxy})
        await echo_once("--no-proxy", env={**ENV, "ws_proxy": dead_proxy})
        result = await run_cli(url, env={**ENV, "ws_proxy": dead_proxy})
    assert result.returncode == 2, result  # the environment's proxy was used, and refused
    assert "Traceback" not in result.stderr.decode()
    # The first echo went through tinyproxy (its log has the CONNECT), and only the first.
    log = (proxy_dir / "tinyproxy.log").read_text(errors="replace")
    assert log.count(f"CONNECT {HOST}:{server.port}") == 1, log[-2000:]
