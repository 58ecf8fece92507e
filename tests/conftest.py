"""Shared fixtures: echo servers on loopback, trustme TLS contexts, raw-socket helpers, loopback over memory streams.

Every test runs under pytest-trio.  Warnings are errors (pyproject.toml), so a
socket left open (ResourceWarning) or an exception nobody retrieved fails
the test; ``no_fd_leak`` also checks that each test closes every file
descriptor it opened.  Three more rules hold for every test:

- **An ERROR from trio_ws fails the test** unless the test declares it.  The
  server logs (logger ``trio_ws``) and closes with 1011 when a handler
  raises, so an ``assert`` inside a handler would otherwise fail nothing.
  A test that expects errors requests the ``logged_errors`` fixture, which
  is the list of the ERROR records trio_ws writes during the test, and
  asserts on it (how many, which exception); requesting it is the
  declaration, and nothing else turns the check off.  The check runs when
  the test function returns (its trio fixtures torn down): undeclared errors
  fail a test that passed, and are added as a note to one that failed.
- **Every async test has a deadline**: ``DEADLINE`` seconds of trio time for
  the test and its trio fixtures, set up and torn down (virtual time under
  ``autojump_clock``, where a stuck test jumps straight to it).
  ``@pytest.mark.deadline(seconds)`` gives a test (or, as ``pytestmark``, a
  module) another.  Sync tests bound themselves: pure computations, or each
  ``trio.run`` inside a ``trio.fail_after`` (see test_fuzz.run_example).
- **autojump_clock only without sockets.**  MockClock's autojump fires when
  every task is blocked, and trio cannot tell a task waiting on loopback
  bytes that are on their way from one waiting forever, so the clock can
  jump while socket I/O is in flight.  A test on the autojump clock uses
  memory streams: ``trio_ws.testing.websocket_pair()``, the
  ``memory_network`` fixture (a ``WebSocketServer`` and its clients, raw or
  trio_ws's, without sockets), or ``trio.testing`` stream pairs; one that
  opens a TCP socket fails (``no_sockets_under_autojump``).  A test that
  needs real sockets (TCP's push-back, say) runs in real time, and waits
  for events rather than for the clock.
"""

from __future__ import annotations

import errno
import gc
import logging
import math
import os
import socket
import ssl
import struct
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
import trustme

from trio_ws import (
    CloseReason,
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    WebSocketServer,
    serve_websocket,
)

# trio_ws's own pytest plugin (ws_server_factory, ws_pair, ...), which users get through its entry
# point; this suite turns the entry point off (pyproject.toml: -p no:trio_ws) and loads the plugin here,
# after coverage has started.
pytest_plugins = ["trio_ws._pytest_plugin"]

HOST = "127.0.0.1"
RESOURCE = "/resource"
DEADLINE = 30.0  # seconds of trio time for an async test; @pytest.mark.deadline(seconds) for another


def _open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


@pytest.fixture(autouse=True)
def no_fd_leak() -> Iterator[None]:
    """Fail a test that leaves a file descriptor (a socket, usually) open.

    The garbage collector runs only when descriptors are left after the test:
    an unreachable socket in a reference cycle is then closed here (and its
    ResourceWarning, an error, lands on this test), and what is still open is a
    leak.  (A full collection per test cost about 70 ms, a minute of the suite.)
    """
    before = _open_fds()
    yield
    leaked = _new_sockets(before)
    if leaked:
        gc.collect()
        leaked = _new_sockets(before)
    assert not leaked, f"file descriptors left open: {[os.readlink(f'/proc/self/fd/{fd}') for fd in leaked]}"


def _new_sockets(before: set[int]) -> set[int]:
    """Descriptors opened since ``before`` and still open, other than files (sockets, pipes)."""
    leaked = {fd for fd in _open_fds() - before if os.path.exists(f"/proc/self/fd/{fd}")}
    return {fd for fd in leaked if not os.readlink(f"/proc/self/fd/{fd}").startswith("/")}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"deadline(seconds): the trio time this async test and its trio fixtures may take (default {DEADLINE:g})",
    )


# --- ERROR logs from trio_ws fail the test unless it declares them ---------------


class ErrorLog(logging.Handler):
    """Collects the ERROR (and CRITICAL) records of the ``trio_ws`` logger during one test."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []
        self.declared = False  # the test requested ``logged_errors``
        self.reported = 0  # records already reported by an earlier check

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def undeclared(self) -> str | None:
        """The records not yet reported, as text, unless the test declared its errors."""
        new = self.records[self.reported :]
        self.reported = len(self.records)
        if self.declared or not new:
            return None
        formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
        shown = "\n".join("    " + formatter.format(record).replace("\n", "\n    ") for record in new)
        return (
            f"trio_ws logged {len(new)} ERROR record(s) that the test did not declare "
            f"(a test that expects errors requests the `logged_errors` fixture and asserts on it):\n{shown}"
        )


_ERROR_LOG = pytest.StashKey[ErrorLog]()


@pytest.fixture(autouse=True)
def trio_ws_error_log(request: pytest.FixtureRequest) -> Iterator[ErrorLog]:
    """Record trio_ws's ERROR logs for the test; undeclared ones fail it (see the module docstring)."""
    log = ErrorLog()
    logger = logging.getLogger("trio_ws")
    level = logger.level
    if not logger.isEnabledFor(logging.ERROR):
        logger.setLevel(logging.ERROR)
    logger.addHandler(log)
    request.node.stash[_ERROR_LOG] = log
    try:
        yield log
    finally:
        logger.removeHandler(log)
        logger.setLevel(level)
    # Normally reported by pytest_runtest_call, below; this catches what comes later.
    message = log.undeclared()
    if message is not None:
        pytest.fail(message, pytrace=False)


@pytest.fixture
def logged_errors(trio_ws_error_log: ErrorLog) -> list[logging.LogRecord]:
    """The ERROR records trio_ws writes during the test (a live list).

    Requesting it declares that the test expects errors: they no longer fail
    it, and the test asserts on them instead.
    """
    trio_ws_error_log.declared = True
    return trio_ws_error_log.records


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """After the test function (async: with its trio fixtures torn down), check trio_ws's errors."""
    log = item.stash.get(_ERROR_LOG, None)
    try:
        result = yield
    except BaseException as exc:
        message = log.undeclared() if log is not None else None
        if message is not None:
            exc.add_note(message)
        raise
    message = log.undeclared() if log is not None else None
    if message is not None:
        pytest.fail(message, pytrace=False)
    return result


# --- a deadline for every async test ---------------------------------------------


@pytest.hookimpl(trylast=True)  # after pytest-trio has marked the async tests
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run each trio test (fixtures included) with a deadline, through pytest-trio's ``run=``."""
    for item in items:
        if item.get_closest_marker("trio") is None:
            continue
        run = next((mark.kwargs["run"] for mark in item.iter_markers("trio") if "run" in mark.kwargs), trio.run)
        deadline = item.get_closest_marker("deadline")
        seconds = float(deadline.args[0]) if deadline is not None else DEADLINE
        # pytest-trio takes the first trio marker with a run=: this one.
        item.add_marker(pytest.mark.trio(run=partial(_run_with_deadline, run, seconds)), append=False)


def _run_with_deadline(
    run: Callable[..., object], seconds: float, test: Callable[[], Awaitable[None]], **options: Any
) -> object:
    return run(partial(_within_deadline, test, seconds), **options)


async def _within_deadline(test: Callable[[], Awaitable[None]], seconds: float) -> None:
    exceeded = f"the test exceeded its deadline of {seconds:g} s of trio time (virtual time under autojump_clock)"
    hint = "A test that needs longer says so: @pytest.mark.deadline(seconds)"
    with trio.CancelScope(deadline=trio.current_time() + seconds) as scope:
        try:
            await test()
        except BaseException as exc:
            if scope.cancel_called:
                message = f"{exceeded}; the traceback above shows where it was waiting. {hint}"
                raise pytest.fail.Exception(message, pytrace=False) from exc
            raise
    if scope.cancel_called:  # the test caught the cancellation and went on
        pytest.fail(f"{exceeded}. {hint}", pytrace=False)


# --- autojump_clock only without sockets -------------------------------------------


class _NetworkSocketWatch:
    """Records the network sockets opened while ``on`` (a ``socket.__new__`` audit hook, installed once)."""

    def __init__(self) -> None:
        self.on = False
        self.opened: list[str] = []

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if self.on and event == "socket.__new__" and args[1] in (socket.AF_INET, socket.AF_INET6):
            self.opened.append(socket.AddressFamily(args[1]).name)


_network_sockets = _NetworkSocketWatch()
sys.addaudithook(_network_sockets)  # for the life of the process; it records nothing unless on


@pytest.fixture(autouse=True)
def no_sockets_under_autojump(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test on ``autojump_clock`` that opens a network socket (see the module docstring)."""
    if "autojump_clock" not in request.fixturenames:
        yield
        return
    _network_sockets.opened = []
    _network_sockets.on = True
    try:
        yield
    finally:
        _network_sockets.on = False
    if _network_sockets.opened:
        pytest.fail(
            f"the test runs on autojump_clock and opened {len(_network_sockets.opened)} network socket(s) "
            f"({', '.join(sorted(set(_network_sockets.opened)))}), and MockClock can jump while socket I/O is "
            "in flight: use memory streams instead (trio_ws.testing.websocket_pair, the memory_network fixture)",
            pytrace=False,
        )


async def echo_loop(ws: WebSocketConnection) -> None:
    """Send every message back until the connection closes."""
    try:
        while True:
            await ws.send_message(await ws.get_message())
    except ConnectionClosed:
        pass


async def echo_handler(request: WebSocketRequest) -> None:
    """Accept (picking the first proposed subprotocol) and echo every message."""
    await echo_loop(await request.accept(subprotocol=next(iter(request.proposed_subprotocols), None)))


class CloseWatcher:
    """A server handler: accept, wait for a message, and record why the connection closed."""

    def __init__(self) -> None:
        self.closes: list[CloseReason | None] = []
        self.done = trio.Event()

    async def __call__(self, request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            await ws.get_message()
        except ConnectionClosed as exc:
            self.closes.append(exc.reason)
        self.done.set()


async def start_server(nursery: trio.Nursery, handler: object, **options: object) -> WebSocketServer:
    """serve_websocket(handler) on a free loopback port, in ``nursery``."""
    server: WebSocketServer = await nursery.start(partial(serve_websocket, handler, HOST, 0, None, **options))
    return server


@pytest.fixture
async def echo_server(nursery: trio.Nursery) -> WebSocketServer:
    return await start_server(nursery, echo_handler)


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST, "localhost", "::1").configure_cert(context)
    return context


@pytest.fixture(scope="session")
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


# --- raw protocol helpers, to play a misbehaving peer -----------------------


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bool = True, rsv: int = 0) -> bytes:
    """One WebSocket frame, masked (as a client sends) unless ``mask`` is false."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    length = len(payload)
    mask_bit = 0x80 if mask else 0
    if length < 126:
        header = struct.pack("!BB", first, mask_bit | length)
    elif length < 2**16:
        header = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, length)
    if not mask:
        return header + payload
    key = b"\x01\x02\x03\x04"
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()


UPGRADE_REQUEST = (
    b"GET /raw HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class RawClient:
    """A client (over TCP or a memory stream) that speaks WebSocket by hand, to send what a good client would not."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = b""
        self.rsv = 0  # the RSV bits of the last frame receive_frame() returned

    async def receive_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError(f"EOF before {marker!r}; got {self.buffer!r}")
            self.buffer += data
        head, _, self.buffer = self.buffer.partition(marker)
        return head + marker

    async def handshake(self, request: bytes = UPGRADE_REQUEST) -> bytes:
        await self.stream.send_all(request)
        return await self.receive_until(b"\r\n\r\n")

    async def receive_frame(self) -> tuple[int, bytes]:
        """The next frame: (opcode, payload), unmasked if it was masked."""
        while True:
            if len(self.buffer) >= 2:
                length = self.buffer[1] & 0x7F
                masked = bool(self.buffer[1] & 0x80)
                offset = 2
                if length == 126:
                    (length,) = struct.unpack("!H", self.buffer[2:4])
                    offset = 4
                elif length == 127:
                    (length,) = struct.unpack("!Q", self.buffer[2:10])
                    offset = 10
                key = self.buffer[offset : offset + 4] if masked else b""
                offset += len(key)
                if len(self.buffer) >= offset + length:
                    opcode = self.buffer[0] & 0x0F
                    self.rsv = self.buffer[0] & 0x70
                    payload = self.buffer[offset : offset + length]
                    if masked:
                        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
                    self.buffer = self.buffer[offset + length :]
                    return opcode, payload
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError("EOF while waiting for a frame")
            self.buffer += data

    async def receive_eof(self) -> bytes:
        """Read until the server closes TCP; return whatever came."""
        rest = self.buffer
        while data := await self.stream.receive_some(65536):
            rest += data
        self.buffer = b""
        return rest


@pytest.fixture
async def raw_client(echo_server: WebSocketServer) -> AsyncIterator[RawClient]:
    stream = await trio.open_tcp_stream(HOST, echo_server.port)
    async with stream:
        yield RawClient(stream)


def accept_token(key: bytes) -> bytes:
    import base64
    import hashlib

    return base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())


class RawServerPeer(RawClient):
    """The server end of a raw TCP connection: answers the upgrade by hand, then follows a script."""

    async def accept(self, extra: bytes = b"") -> bytes:
        request = await self.receive_until(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in request.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        await self.stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_token(key) + b"\r\n" + extra + b"\r\n"
        )
        return request


def raw_peer_handler(
    script: Callable[[RawServerPeer], Awaitable[None]],
) -> Callable[[trio.abc.Stream], Awaitable[None]]:
    """A stream handler that runs ``script`` on each connection, and closes it after."""

    async def handle(stream: trio.abc.Stream) -> None:
        async with stream:
            try:
                await script(RawServerPeer(stream))
            except (trio.BrokenResourceError, trio.ClosedResourceError, EOFError):
                pass

    return handle


async def start_raw_server(nursery: trio.Nursery, script: Callable[[RawServerPeer], Awaitable[None]]) -> int:
    """Serve TCP on a free loopback port; each connection runs ``script``.  Returns the port."""
    listeners = await nursery.start(partial(trio.serve_tcp, raw_peer_handler(script), 0, host=HOST))
    port: int = listeners[0].socket.getsockname()[1]
    return port


# --- loopback without sockets, for tests on autojump_clock -------------------------


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener without sockets: ``connect()`` hands it one end of a ``memory_stream_pair()``."""

    def __init__(self) -> None:
        self._incoming, self._accepting = trio.open_memory_channel[trio.abc.Stream](math.inf)

    async def connect(self) -> trio.abc.Stream:
        """The client's end of a new connection; OSError (refused) once the listener is closed."""
        await trio.lowlevel.checkpoint()
        client, server = trio.testing.memory_stream_pair()
        try:
            self._incoming.send_nowait(server)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise OSError(errno.ECONNREFUSED, "connection refused: the memory listener is closed") from None
        return client

    async def accept(self) -> trio.abc.Stream:
        return await self._accepting.receive()  # ClosedResourceError once closed, as a socket listener

    async def aclose(self) -> None:
        self._accepting.close()
        self._incoming.close()
        await trio.lowlevel.checkpoint()


class MemoryNetwork:
    """One server at ``HOST``:``port`` over memory streams, and clients of it (see ``memory_network``)."""

    port = 8080  # any: it only appears in the Host header and URLs

    def __init__(self) -> None:
        self.listener = MemoryListener()

    async def start_server(self, nursery: trio.Nursery, handler: Any, **options: Any) -> WebSocketServer:
        """A WebSocketServer (the server behind serve_websocket) on this network, in ``nursery``."""
        server: WebSocketServer = await nursery.start(WebSocketServer(handler, [self.listener], **options).run)
        return server

    async def start_raw_server(self, nursery: trio.Nursery, script: Callable[[RawServerPeer], Awaitable[None]]) -> int:
        """Like ``start_raw_server``: each connection runs ``script``.  Returns the port to connect to."""
        await nursery.start(trio.serve_listeners, raw_peer_handler(script), [self.listener])
        return self.port

    async def connect(self) -> RawClient:
        """A raw client of the server."""
        return RawClient(await self.listener.connect())

    async def open_tcp_stream(self, host: str | bytes, port: int, **_: object) -> trio.abc.Stream:
        """What ``trio.open_tcp_stream`` is in a test with ``memory_network``."""
        if (host, port) != (HOST, self.port):
            raise OSError(errno.ECONNREFUSED, f"nothing listens at {host!r}:{port} on the memory network")
        return await self.listener.connect()


@pytest.fixture
def memory_network(monkeypatch: pytest.MonkeyPatch) -> MemoryNetwork:
    """Loopback over memory streams, for tests on ``autojump_clock``.

    Servers run on ``network.start_server()`` (or ``start_raw_server()``) and
    raw clients come from ``network.connect()``; ``trio.open_tcp_stream`` is
    replaced for the test, so that ``open_websocket(HOST, network.port, ...)``
    and ``connect_websocket`` reach the server too, through trio_ws's own
    client code, without a socket.
    """
    network = MemoryNetwork()
    monkeypatch.setattr(trio, "open_tcp_stream", network.open_tcp_stream)
    return network


# --- a real redis-server (tests/_redis.py) -----------------------------------------


@pytest.fixture
def redis_server() -> Iterator[Any]:
    """A redis-server on a free loopback port, without persistence (a ``tests._redis.RedisServer``)."""
    from tests._redis import run_redis_server

    yield from run_redis_server()
