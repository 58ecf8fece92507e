"""reconnecting_websocket_url(): scripted servers, the waits between attempts, the retry policy, the ending.

Most tests run on ``autojump_clock`` over the ``memory_network`` fixture:
the waits are virtual, so the times at which the client tries to connect
are the delays themselves, checked against a twin of the seeded source of
jitter.  A ``Script`` replaces ``trio.open_tcp_stream``: each connection
attempt follows the next plan (refuse, reset, answer with an HTTP status,
hang, accept and then drop, close or serve).  A few tests run on real
loopback, in real time, with short waits.
"""

from __future__ import annotations

import errno
import logging
import random
import socket
import ssl
import struct
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from functools import partial
from http import HTTPStatus
from typing import Any

import pytest
import trio
import trio.testing

import trio_ws
from trio_ws import (
    ConnectionClosed,
    ConnectionRejected,
    ConnectionTimeout,
    HandshakeError,
    WebSocketRequest,
    _reconnect,
)
from trio_ws._proxy import ProxyError
from trio_ws._reconnect import Backoff, _retry_after, is_retryable, reconnecting_websocket_url

from .conftest import HOST, CloseWatcher, MemoryNetwork, RawServerPeer, close_payload, frame, start_server

URL = f"ws://{HOST}:{MemoryNetwork.port}/"

Plan = Callable[[RawServerPeer, "Script"], Awaitable[None]]


# --- a scripted network --------------------------------------------------------------------


class Script:
    """``trio.open_tcp_stream`` for a test: each connection attempt follows the next plan.

    ``REFUSE`` fails the attempt there; any other plan is run by the raw server
    on the connection.  ``attempts`` holds the trio time of every attempt,
    ``closes`` the close code of every Close frame the server received.
    """

    def __init__(self, network: MemoryNetwork) -> None:
        self.network = network
        self.plans: deque[Plan | None] = deque()
        self.default: Plan | None = REFUSE
        self.attempts: list[float] = []
        self.closes: list[int] = []
        self._accepted: deque[Plan] = deque()

    def plan(self, *plans: Plan | None, then: Plan | None = None) -> None:
        self.plans.extend(plans)
        self.default = then

    def gaps(self) -> list[float]:
        return [later - earlier for earlier, later in zip(self.attempts, self.attempts[1:], strict=False)]

    async def open_tcp_stream(self, host: str | bytes, port: int, **_: object) -> trio.abc.Stream:
        self.attempts.append(trio.current_time())
        plan = self.plans.popleft() if self.plans else self.default
        if plan is REFUSE:
            await trio.lowlevel.checkpoint()
            raise ConnectionRefusedError(errno.ECONNREFUSED, "connection refused (scripted)")
        assert plan is not None, "the script has no plan for this attempt"
        self._accepted.append(plan)
        return await self.network.open_tcp_stream(host, port)

    async def serve(self, peer: RawServerPeer) -> None:
        await self._accepted.popleft()(peer, self)

    async def serve_frames(self, peer: RawServerPeer) -> bool:
        """Echo messages until the client's Close (recorded, answered): True; or EOF: False."""
        while True:
            opcode, payload = await peer.receive_frame()
            if opcode == 0x8:
                self.closes.append(struct.unpack("!H", payload[:2])[0] if payload else 1005)
                await peer.stream.send_all(frame(0x8, payload[:2], mask=False))
                return True
            if opcode in (0x1, 0x2):
                await peer.stream.send_all(frame(opcode, payload, mask=False))


REFUSE = None  # the plan for a refused connection (no server side)


async def reset(peer: RawServerPeer, script: Script) -> None:
    """Read the request and close the connection without an answer."""
    await peer.receive_until(b"\r\n\r\n")


async def hang(peer: RawServerPeer, script: Script) -> None:
    """Read the request and never answer."""
    await peer.receive_until(b"\r\n\r\n")
    await trio.sleep_forever()


def reject(status: int, *headers: tuple[str, str]) -> Plan:
    """Answer with an HTTP error."""

    async def plan(peer: RawServerPeer, script: Script) -> None:
        await peer.receive_until(b"\r\n\r\n")
        lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", *(f"{n}: {v}" for n, v in headers)]
        await peer.stream.send_all(("\r\n".join([*lines, "Content-Length: 0", "", ""])).encode())

    return plan


def accept(after: float = float("inf"), close: int | None = None) -> Plan:
    """Accept and echo; after ``after`` seconds, drop the connection (or send Close ``close``)."""

    async def plan(peer: RawServerPeer, script: Script) -> None:
        await peer.accept()
        with trio.move_on_after(after):
            if await script.serve_frames(peer):
                return
        if close is not None:
            await peer.stream.send_all(frame(0x8, close_payload(close), mask=False))
            await script.serve_frames(peer)
        # else: return, and the connection is dropped (no Close frame)

    return plan


async def accept_and_ignore(peer: RawServerPeer, script: Script) -> None:
    """Accept, then read nothing and answer nothing (a closing handshake times out)."""
    await peer.accept()
    await trio.sleep_forever()


@pytest.fixture
async def script(nursery: trio.Nursery, memory_network: MemoryNetwork, monkeypatch: pytest.MonkeyPatch) -> Script:
    scripted = Script(memory_network)
    await memory_network.start_raw_server(nursery, scripted.serve)
    monkeypatch.setattr(trio, "open_tcp_stream", scripted.open_tcp_stream)
    return scripted


@pytest.fixture
def twin(monkeypatch: pytest.MonkeyPatch) -> random.Random:
    """Seed the jitter; the twin returned draws the same numbers, for the expected waits."""
    monkeypatch.setattr(_reconnect, "_RANDOM", random.Random(1234))
    return random.Random(1234)


class _Longest(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.fixture
def longest(monkeypatch: pytest.MonkeyPatch) -> None:
    """No jitter: every wait is its ceiling."""
    monkeypatch.setattr(_reconnect, "_RANDOM", _Longest())


def tasks_under_test() -> list[str]:
    """The names of the tasks running under the test's own task."""
    names: list[str] = []
    pending = [trio.lowlevel.current_task()]
    while pending:
        for nursery in pending.pop().child_nurseries:
            names.extend(task.name for task in nursery.child_tasks)
            pending.extend(nursery.child_tasks)
    return names


def no_tasks_left() -> None:
    """Nothing the block started runs any more: no owner task, hence none of its
    connection's (its reader, under it).  (Servers in the ``nursery`` fixture run
    under the test's task too.)"""
    assert [name for name in tasks_under_test() if "Reconnector" in name] == []


def retry_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "trio_ws.client" and hasattr(r, "ws_delay")]


async def echo(ws: trio_ws.WebSocketConnection, message: str) -> None:
    await ws.send_message(message)
    assert await ws.get_message() == message


# --- the script: refused, 503 with Retry-After, accepted, dropped ------------------


async def test_refused_then_503_then_accepted_then_dropped(
    autojump_clock: trio.testing.MockClock, script: Script, twin: random.Random, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_ws.client")
    backoff = Backoff(initial=1, maximum=20, factor=2, reset_after=60)
    script.plan(REFUSE, reject(503, ("Retry-After", "7")), accept(after=2), accept())
    connections = 0
    async with reconnecting_websocket_url(URL, backoff=backoff) as reconnector:
        async for ws in reconnector:
            connections += 1
            assert reconnector.connection is ws
            await echo(ws, f"hello {connections}")
            if connections == 2:
                break
            with pytest.raises(ConnectionClosed) as info:
                await ws.get_message()  # the server drops the connection 2 s after accepting it
            assert info.value.reason is not None
            assert info.value.reason.code == 1006
    no_tasks_left()
    d0, d1, d2 = (backoff.delay(step, twin) for step in range(3))
    assert d1 < 7  # so the server's delay is the one waited
    assert script.gaps() == pytest.approx([d0, 7, 2 + d2])
    assert script.closes == [1000]  # break closed the second connection cleanly
    records = retry_records(caplog)
    assert [r.levelno for r in records] == [logging.INFO] * 3
    assert [r.ws_delay for r in records] == pytest.approx([d0, 7, d2])  # type: ignore[attr-defined]
    messages = [r.getMessage() for r in records]
    assert messages[0].startswith(f"{URL}: attempt 1 failed (HandshakeError: ")
    assert "connection refused (scripted)" in messages[0]
    assert f"retrying in {d0:.2f} s" in messages[0]
    assert "attempt 2 failed (the server answered HTTP 503); retrying in 7.00 s" in messages[1]
    assert messages[1].endswith("(the server asked for 7 s)")
    assert "ended after 2.0 s (1006 ABNORMAL_CLOSURE" in messages[2]
    assert f"reconnecting in {d2:.2f} s" in messages[2]


# --- the waits ----------------------------------------------------------------------------


async def test_waits_grow_exponentially_with_full_jitter_up_to_max_attempts(
    autojump_clock: trio.testing.MockClock, script: Script, twin: random.Random
) -> None:
    backoff = Backoff(initial=0.5, maximum=5, factor=2)
    script.plan(then=REFUSE)
    with pytest.raises(HandshakeError) as info:
        async with reconnecting_websocket_url(URL, backoff=backoff, max_attempts=8) as reconnector:
            async for _ws in reconnector:
                raise AssertionError("no connection should open")
    no_tasks_left()
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    assert any("gave up after 8 attempt(s)" in note for note in info.value.__notes__)
    gaps = script.gaps()
    assert len(gaps) == 7
    assert gaps == pytest.approx([backoff.delay(step, twin) for step in range(7)])
    ceilings = [0.5, 1, 2, 4, 5, 5, 5]
    assert [backoff.ceiling(step) for step in range(7)] == ceilings
    assert all(0 <= gap <= ceiling + 1e-9 for gap, ceiling in zip(gaps, ceilings, strict=True))
    assert len({round(gap / ceiling, 6) for gap, ceiling in zip(gaps, ceilings, strict=True)}) == 7  # jittered


async def test_waits_start_again_after_a_connection_that_stayed_open(
    autojump_clock: trio.testing.MockClock, script: Script, twin: random.Random
) -> None:
    backoff = Backoff(initial=1, maximum=8, factor=2, reset_after=5)
    # refused twice; open 1 s (too short: the waits go on growing); open 6 s
    # (long enough: they start again); refused; open until the loop leaves.
    script.plan(REFUSE, REFUSE, accept(after=1), accept(after=6), REFUSE, accept())
    opened = 0
    async with reconnecting_websocket_url(URL, backoff=backoff) as reconnector:
        async for ws in reconnector:
            opened += 1
            if opened == 3:
                break
            try:
                await ws.get_message()
            except ConnectionClosed:
                pass
    no_tasks_left()
    d = [backoff.delay(step, twin) for step in (0, 1, 2, 0, 1)]
    assert script.gaps() == pytest.approx([d[0], d[1], 1 + d[2], 6 + d[3], d[4]])


async def test_retry_after_is_a_floor_capped_by_the_maximum(
    autojump_clock: trio.testing.MockClock, script: Script, longest: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_ws.client")
    backoff = Backoff(initial=1, maximum=5, factor=2)  # no jitter: 1, 2, 4, 5, 5
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=1000), usegmt=True)
    script.plan(
        reject(429, ("Retry-After", "1000")),  # more than the maximum: the maximum
        reject(503, ("Retry-After", "0")),  # less than the backoff: the backoff (2)
        reject(500, ("Retry-After", "4.5")),  # not for a 500: the backoff (4)
        reject(503, ("Retry-After", when)),  # an HTTP date, 1000 s away: the maximum
        reject(429, ("Retry-After", "soon")),  # unusable: the backoff (5)
        accept(),
    )
    async with reconnecting_websocket_url(URL, backoff=backoff) as reconnector:
        async for _ws in reconnector:
            break
    assert script.gaps() == pytest.approx([5, 2, 4, 5, 5])
    messages = [r.getMessage() for r in retry_records(caplog)]
    assert "(the server asked for 1000 s)" in messages[0]
    assert "asked" not in messages[2]


def test_retry_after_header_values() -> None:
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    assert _retry_after(((b"retry-after", b"120"),), now) == 120
    assert _retry_after(((b"Retry-After", b" 0 "),), now) == 0
    assert _retry_after(((b"retry-after", b"Wed, 01 May 2024 12:00:30 GMT"),), now) == 30
    assert _retry_after(((b"retry-after", b"Wed, 01 May 2024 11:00:00 GMT"),), now) == 0  # past
    assert _retry_after(((b"retry-after", b"Wed, 01 May 2024 12:01:00 -0000"),), now) == 60
    assert _retry_after(((b"retry-after", "\N{SUPERSCRIPT TWO}".encode("latin-1", "replace")),), now) is None
    assert _retry_after(((b"retry-after", b"-5"),), now) is None
    assert _retry_after(((b"retry-after", b"1.5"),), now) is None
    assert _retry_after(((b"retry-after", b""),), now) is None
    assert _retry_after(((b"retry-after", b"9" * 400),), now) == float("inf")  # capped by the caller
    assert _retry_after(((b"content-type", b"text/plain"),), now) is None
    assert _retry_after((), now) is None


def test_backoff() -> None:
    backoff = Backoff(initial=0.25, maximum=3, factor=3)
    assert [backoff.ceiling(n) for n in range(5)] == [0.25, 0.75, 2.25, 3, 3]
    assert backoff.ceiling(10**6) == 3  # no OverflowError
    assert Backoff(factor=1).ceiling(50) == Backoff().initial
    source = random.Random(7)
    for attempt in range(8):
        draws = [backoff.delay(attempt, source) for _ in range(200)]
        assert all(0 <= draw <= backoff.ceiling(attempt) for draw in draws)
        assert max(draws) > 0.9 * backoff.ceiling(attempt)  # full jitter: the whole range
        assert min(draws) < 0.1 * backoff.ceiling(attempt)
    assert Backoff() == Backoff(initial=1.0, maximum=30.0, factor=2.0, reset_after=60.0)
    with pytest.raises(AttributeError):
        backoff.initial = 2  # type: ignore[misc]  # frozen
    for bad in (
        {"initial": -1},
        {"maximum": float("inf")},
        {"factor": 0.5},
        {"reset_after": float("nan")},
        {"initial": 5, "maximum": 1},
        {"initial": True},
        {"initial": "1"},
    ):
        with pytest.raises(ValueError, match="Backoff"):
            Backoff(**bad)
    with pytest.raises(ValueError, match="attempt"):
        backoff.ceiling(-1)


# --- what is retried, what is raised at once ------------------------------------------------


def _proxy_error(message: str, status_code: int | None = None, reply_code: int | None = None) -> ProxyError:
    return ProxyError(message, "http://proxy.example:3128", status_code, (), reply_code)


def _caused(error: Exception, cause: BaseException, *, suppress: bool = False) -> Exception:
    if suppress:  # `raise error from None` inside an `except` for `cause`
        error.__context__ = cause
        error.__suppress_context__ = True
    else:
        error.__cause__ = cause
    return error


def _handshake_error(cause: BaseException) -> HandshakeError:
    error = HandshakeError(f"failed: {cause}")
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (_handshake_error(ConnectionRefusedError(errno.ECONNREFUSED, "refused")), True),
        (_handshake_error(ConnectionResetError(errno.ECONNRESET, "reset")), True),
        (_handshake_error(socket.gaierror(socket.EAI_AGAIN, "temporary failure in name resolution")), True),
        (ConnectionTimeout("the opening handshake did not finish within 60 s"), True),
        (ConnectionRejected(500, (), b""), True),
        (ConnectionRejected(502, (), b""), True),
        (ConnectionRejected(503, ((b"retry-after", b"3"),), b""), True),
        (ConnectionRejected(429, (), b""), True),
        (ConnectionRejected(400, (), b""), False),
        (ConnectionRejected(401, (), b""), False),
        (ConnectionRejected(403, (), b""), False),
        (ConnectionRejected(404, (), b""), False),
        (ConnectionRejected(200, (), b""), False),
        (ConnectionRejected(302, (), b""), False),
        (_handshake_error(ssl.SSLCertVerificationError(1, "certificate verify failed")), False),
        (_handshake_error(ssl.SSLError(1, "wrong version number")), False),
        (_handshake_error(ssl.SSLEOFError(8, "EOF occurred in violation of protocol")), True),
        (_handshake_error(trio.BrokenResourceError("the stream broke")), True),
        (HandshakeError("the server closed the connection before its handshake response"), True),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), True),
        # what a rejection that is not retried causes is not retried either
        (_caused(HandshakeError("more than 5 redirects"), ConnectionRejected(301, (), b"")), False),
        (_caused(HandshakeError("a redirect to 'http://x/', which is no WebSocket URL"), ValueError("scheme")), False),
        (_caused(HandshakeError("could not connect"), ConnectionRejected(503, (), b"")), True),
        # a proxy's refusals: the HTTP status, or the SOCKS reply
        (_proxy_error("the proxy refused CONNECT: 407", status_code=407), False),
        (_proxy_error("the proxy refused CONNECT: 502", status_code=502), True),
        (_proxy_error("the proxy refused CONNECT: 429", status_code=429), True),
        (_proxy_error("refused by the proxy's rules", reply_code=0x02), False),
        (_proxy_error("the target refused the proxy", reply_code=0x05), True),
        (_caused(_proxy_error("could not connect to the proxy"), ConnectionRefusedError(111, "refused")), True),
        # the chain that a traceback shows, no more
        (_caused(HandshakeError("x"), ValueError("y"), suppress=True), True),
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), False),
        (ValueError("WebSocket URL scheme must be ws: or wss:"), False),
        (TypeError("unexpected keyword"), False),
        (RuntimeError("a bug"), False),
    ],
)
def test_default_policy(error: Exception, retried: bool) -> None:
    assert is_retryable(error) is retried


async def test_reset_and_timeout_are_retried(
    autojump_clock: trio.testing.MockClock, script: Script, longest: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_ws.client")
    script.plan(reset, hang, accept())
    async with reconnecting_websocket_url(URL, backoff=Backoff(initial=1), connect_timeout=3) as reconnector:
        async for ws in reconnector:
            await echo(ws, "at last")
            break
    assert script.gaps() == pytest.approx([1, 3 + 2])  # the timeout, then the wait
    messages = [r.getMessage() for r in retry_records(caplog)]
    assert "closed the connection before its handshake response" in messages[0]
    assert "ConnectionTimeout: the opening handshake did not finish within 3 s" in messages[1]
    assert script.closes == [1000]


async def test_a_401_is_raised_at_once(
    autojump_clock: trio.testing.MockClock, script: Script, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_ws.client")
    script.plan(reject(401, ("WWW-Authenticate", "Bearer")), then=accept())
    start = trio.current_time()
    with pytest.raises(ConnectionRejected) as info:
        async with reconnecting_websocket_url(URL) as reconnector:
            async for _ws in reconnector:
                raise AssertionError("no connection should open")
    assert info.value.status_code == 401
    assert len(script.attempts) == 1
    assert trio.current_time() == start
    assert retry_records(caplog) == []
    no_tasks_left()


async def test_redirects_are_raised_at_once(
    autojump_clock: trio.testing.MockClock, script: Script, caplog: pytest.LogCaptureFixture
) -> None:
    """A redirect not followed, and a redirect loop (open_websocket_url's errors for them)."""
    caplog.set_level(logging.INFO, logger="trio_ws.client")
    script.plan(then=reject(301, ("Location", URL)))
    with pytest.raises(ConnectionRejected) as rejected:
        async with reconnecting_websocket_url(URL) as reconnector:
            async for _ws in reconnector:
                raise AssertionError("no connection should open")
    assert rejected.value.status_code == 301
    assert len(script.attempts) == 1
    with pytest.raises(HandshakeError, match="more than 2 redirects") as looped:
        async with reconnecting_websocket_url(URL, follow_redirects=True, max_redirects=2) as reconnector:
            async for _ws in reconnector:
                raise AssertionError("no connection should open")
    assert isinstance(looped.value.__cause__, ConnectionRejected)
    assert len(script.attempts) == 1 + 3  # the first request and two redirects, once
    assert retry_records(caplog) == []


def test_bad_urls_and_arguments_are_raised_at_once() -> None:
    for url in ("http://example.com/", "example.com", "ws://", "ws://example.com:99999/"):
        with pytest.raises(ValueError, match="WebSocket URL"):
            reconnecting_websocket_url(url)
    with pytest.raises(ValueError, match="SSL context"):
        reconnecting_websocket_url("ws://example.com/", ssl.create_default_context())
    with pytest.raises(TypeError, match="conect_timeout"):
        reconnecting_websocket_url("ws://example.com/", conect_timeout=3)
    with pytest.raises(TypeError, match="Backoff"):
        reconnecting_websocket_url("ws://example.com/", backoff=(1, 2))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="retry"):
        reconnecting_websocket_url("ws://example.com/", retry=True)  # type: ignore[arg-type]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_attempts"):
            reconnecting_websocket_url("ws://example.com/", max_attempts=bad)  # type: ignore[arg-type]


async def test_an_invalid_option_is_raised_at_once(autojump_clock: trio.testing.MockClock, script: Script) -> None:
    script.plan(then=accept())
    with pytest.raises(ValueError, match="message_queue_size"):
        async with reconnecting_websocket_url(URL, message_queue_size=-1) as reconnector:
            async for _ws in reconnector:
                raise AssertionError("no connection should open")
    assert script.attempts == []


async def test_a_certificate_error_is_raised_at_once(
    nursery: trio.Nursery, server_context: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    """Real loopback: a TLS server whose certificate the client does not trust."""
    caplog.set_level(logging.INFO, logger="trio_ws.client")
    server: trio_ws.WebSocketServer = await nursery.start(
        partial(trio_ws.serve_websocket, CloseWatcher(), HOST, 0, server_context)
    )
    untrusting = ssl.create_default_context()
    with pytest.raises(HandshakeError) as info:
        async with reconnecting_websocket_url(f"wss://{HOST}:{server.port}/", untrusting) as reconnector:
            async for _ws in reconnector:
                raise AssertionError("no connection should open")
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
    assert retry_records(caplog) == []
    no_tasks_left()


async def test_a_predicate_overrides_the_policy(autojump_clock: trio.testing.MockClock, script: Script) -> None:
    seen: list[Exception] = []

    def never(error: Exception) -> bool:
        seen.append(error)
        return False

    script.plan(then=REFUSE)
    with pytest.raises(HandshakeError):
        async with reconnecting_websocket_url(URL, retry=never) as reconnector:
            async for _ws in reconnector:
                raise AssertionError("no connection should open")
    assert len(script.attempts) == 1
    assert [type(error) for error in seen] == [HandshakeError]

    def also_401(error: Exception) -> bool:
        return (isinstance(error, ConnectionRejected) and error.status_code == 401) or is_retryable(error)

    script.attempts.clear()
    script.plan(then=reject(401))
    with pytest.raises(ConnectionRejected) as info:
        async with reconnecting_websocket_url(URL, retry=also_401, max_attempts=3) as reconnector:
            async for _ws in reconnector:
                raise AssertionError("no connection should open")
    assert len(script.attempts) == 3
    assert any("gave up after 3 attempt(s)" in note for note in info.value.__notes__)


async def test_max_attempts_counts_failures_in_a_row(autojump_clock: trio.testing.MockClock, script: Script) -> None:
    """Each connection that opens starts the count again."""
    script.plan(REFUSE, accept(after=0.5), REFUSE, accept(after=0.5), REFUSE, REFUSE, accept())
    opened = 0
    with pytest.raises(HandshakeError):
        async with reconnecting_websocket_url(URL, max_attempts=2) as reconnector:
            async for ws in reconnector:
                opened += 1
                try:
                    await ws.get_message()
                except ConnectionClosed:
                    pass
    assert opened == 2
    assert len(script.attempts) == 6


# --- the loop and its end -------------------------------------------------------------------


async def test_break_closes_cleanly(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, memory_network: MemoryNetwork
) -> None:
    watcher = CloseWatcher()
    await memory_network.start_server(nursery, watcher)
    async with reconnecting_websocket_url(URL) as reconnector:
        async for _ws in reconnector:
            running = tasks_under_test()
            assert any("Reconnector._own" in name for name in running), running
            assert any("_reader_task" in name for name in running), running
            break
        ws = reconnector.connection
        assert ws is not None
        assert ws.statistics().state is trio_ws.ConnectionState.OPEN  # until the block ends
    assert ws.statistics().state is trio_ws.ConnectionState.CLOSED
    await watcher.done.wait()
    assert [reason.code if reason else None for reason in watcher.closes] == [1000]
    assert ws.closed is not None
    assert ws.closed.was_clean
    no_tasks_left()


async def test_leaving_the_body_closes_the_connection_and_reconnects(
    autojump_clock: trio.testing.MockClock, script: Script
) -> None:
    script.plan(accept(), accept(), accept())
    seen: list[trio_ws.WebSocketConnection] = []
    async with reconnecting_websocket_url(URL, backoff=Backoff(initial=0.5)) as reconnector:
        async for ws in reconnector:
            seen.append(ws)
            await echo(ws, "hi")
            if len(seen) == 3:
                break
            continue  # closed with 1000 by the next iteration
    assert script.closes == [1000, 1000, 1000]
    assert [ws.closed.code if ws.closed else None for ws in seen] == [1000, 1000, 1000]


async def test_the_server_closing_is_followed_by_a_reconnect(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, memory_network: MemoryNetwork
) -> None:
    """Whatever the code: 1001 (going away), 1000, 1012 (restart), 4000 (the application's)."""
    codes = [1001, 1000, 1012, 4000]

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send_message("bye")
        await ws.aclose(codes.pop(0) if codes else 1000)

    await memory_network.start_server(nursery, handler)
    ended: list[int] = []
    async with reconnecting_websocket_url(URL) as reconnector:
        async for ws in reconnector:
            try:
                async for message in ws:  # ends at a normal close (1000, 1001)
                    assert message == "bye"
            except ConnectionClosed:
                pass  # any other close
            assert ws.closed is not None
            ended.append(ws.closed.code)
            if len(ended) == 5:
                break
    assert ended == [1001, 1000, 1012, 4000, 1000]


async def test_stopping_on_a_normal_close(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, memory_network: MemoryNetwork
) -> None:
    """The recipe in docs/reconnect.md: a server's 1000 means "done"."""
    codes = [1001, 1000]

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.aclose(codes.pop(0))

    await memory_network.start_server(nursery, handler)
    opened = 0
    async with reconnecting_websocket_url(URL) as reconnector:
        async for ws in reconnector:
            opened += 1
            async for _message in ws:
                pass
            if ws.closed is not None and ws.closed.code == 1000:
                break
    assert opened == 2


async def test_connection_closed_out_of_the_body_ends_the_loop_with_a_hint(
    autojump_clock: trio.testing.MockClock, script: Script
) -> None:
    script.plan(accept(after=1), then=accept())
    with pytest.raises(ConnectionClosed) as info:
        async with reconnecting_websocket_url(URL) as reconnector:
            async for ws in reconnector:
                await ws.get_message()
    assert type(info.value) is ConnectionClosed  # itself, not in a group
    assert any("except trio_ws.ConnectionClosed" in note for note in info.value.__notes__)
    assert len(script.attempts) == 1
    no_tasks_left()


async def test_an_exception_in_the_body_closes_cleanly_and_comes_out_as_itself(
    autojump_clock: trio.testing.MockClock, script: Script
) -> None:
    class Oops(Exception):
        pass

    script.plan(accept())
    with pytest.raises(Oops):
        async with reconnecting_websocket_url(URL) as reconnector:
            async for _ws in reconnector:
                raise Oops
    assert script.closes == [1000]
    no_tasks_left()


async def test_cancellation_during_a_wait_ends_at_once(
    autojump_clock: trio.testing.MockClock, script: Script, longest: None
) -> None:
    script.plan(then=REFUSE)
    start = trio.current_time()
    with trio.move_on_after(5) as scope:
        async with reconnecting_websocket_url(URL, backoff=Backoff(initial=100, maximum=100)) as reconnector:
            async for _ws in reconnector:
                raise AssertionError("no connection should open")
    assert scope.cancelled_caught
    assert trio.current_time() - start == pytest.approx(5)
    assert len(script.attempts) == 1
    no_tasks_left()


async def test_cancellation_inside_the_block_during_a_wait(
    autojump_clock: trio.testing.MockClock, script: Script, longest: None
) -> None:
    """A cancel scope between the `async with` and the `async for` is safe too."""
    script.plan(then=REFUSE)
    async with reconnecting_websocket_url(URL, backoff=Backoff(initial=100, maximum=100)) as reconnector:
        with trio.move_on_after(5):
            async for _ws in reconnector:
                raise AssertionError("no connection should open")
        assert trio.current_time() == pytest.approx(5)
    no_tasks_left()


async def test_cancellation_during_a_connection_attempt_ends_at_once(
    autojump_clock: trio.testing.MockClock, script: Script
) -> None:
    script.plan(hang)
    with trio.move_on_after(3):
        async with reconnecting_websocket_url(URL, connect_timeout=60) as reconnector:
            async for _ws in reconnector:
                raise AssertionError("no connection should open")
    assert trio.current_time() == pytest.approx(3)
    assert len(script.attempts) == 1
    no_tasks_left()


async def test_cancellation_while_connected_closes_cleanly(
    autojump_clock: trio.testing.MockClock, script: Script
) -> None:
    script.plan(accept())
    with trio.move_on_after(3) as scope:
        async with reconnecting_websocket_url(URL) as reconnector:
            async for ws in reconnector:
                await ws.get_message()
    assert scope.cancelled_caught
    assert trio.current_time() == pytest.approx(3)  # the closing handshake takes no time here
    assert script.closes == [1000]
    no_tasks_left()


async def test_a_closing_handshake_that_times_out_is_logged_not_raised(
    autojump_clock: trio.testing.MockClock, script: Script, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_ws.client")
    script.plan(accept_and_ignore, accept_and_ignore)
    opened = 0
    async with reconnecting_websocket_url(URL, disconnect_timeout=2, backoff=Backoff(initial=0)) as reconnector:
        async for _ws in reconnector:
            opened += 1
            if opened == 2:
                break
    assert trio.current_time() == pytest.approx(4)  # two closing handshakes, 2 s each
    timeouts = [r for r in caplog.records if "the connection was aborted" in r.getMessage()]
    assert len(timeouts) == 2
    assert all(r.levelno == logging.INFO for r in timeouts)
    no_tasks_left()


async def test_the_loop_needs_the_async_with(autojump_clock: trio.testing.MockClock, script: Script) -> None:
    script.plan(then=accept())
    with pytest.raises(TypeError, match=r"async with trio_ws\.reconnecting_websocket_url\(url\) as connections"):
        async for _ws in reconnecting_websocket_url(URL):
            raise AssertionError("no connection should open")
    reconnector = reconnecting_websocket_url(URL)
    with pytest.raises(TypeError, match="must be entered"):
        await reconnector.__anext__()
    async with reconnector:
        with pytest.raises(RuntimeError, match="only once"):
            async with reconnector:
                pass
    with pytest.raises(RuntimeError, match="ended"):
        async for _ws in reconnector:
            pass
    with pytest.raises(RuntimeError, match="ended"):
        await reconnector.__anext__()
    assert script.attempts == []


async def test_a_second_loop_in_the_same_block(autojump_clock: trio.testing.MockClock, script: Script) -> None:
    """`break`, then iterate again: the next iteration closes the previous connection."""
    script.plan(accept(), accept())
    async with reconnecting_websocket_url(URL) as reconnector:
        async for ws in reconnector:
            first = ws
            break
        async for ws in reconnector:
            assert first.closed is not None
            assert first.closed.code == 1000
            second = ws
            break
        assert reconnector.connection is second
    assert reconnector.connection is None
    assert script.closes == [1000, 1000]


async def test_one_task_at_a_time(autojump_clock: trio.testing.MockClock, script: Script) -> None:
    script.plan(hang, then=accept())
    async with reconnecting_websocket_url(URL) as reconnector, trio.open_nursery() as nursery:
        nursery.start_soon(reconnector.__anext__)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(RuntimeError, match="another task"):
            await reconnector.__anext__()
        nursery.cancel_scope.cancel()


async def test_records_go_to_the_given_logger_and_hide_secrets(
    autojump_clock: trio.testing.MockClock, script: Script, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("test.reconnect")
    caplog.set_level(logging.INFO, logger="test.reconnect")
    script.plan(REFUSE, accept())
    url = f"ws://user:password@{HOST}:{MemoryNetwork.port}/feed?token=secret"
    async with reconnecting_websocket_url(url, logger=logger) as reconnector:
        async for _ws in reconnector:
            break
    (record,) = [r for r in caplog.records if r.name == "test.reconnect" and hasattr(r, "ws_delay")]
    assert record.levelno == logging.INFO
    assert record.getMessage().startswith(f"ws://{HOST}:{MemoryNetwork.port}/feed: attempt 1 failed")
    assert "secret" not in record.getMessage()
    assert "password" not in record.getMessage()
    assert record.ws_url == f"ws://{HOST}:{MemoryNetwork.port}/feed"  # type: ignore[attr-defined]


# --- real loopback ---------------------------------------------------------------------------


async def test_loopback_server_closes_and_the_client_reconnects(nursery: trio.Nursery) -> None:
    closes: list[int | None] = []
    closed = trio.Event()
    served = 0

    async def handler(request: WebSocketRequest) -> None:
        nonlocal served
        served += 1
        ws = await request.accept()
        if served < 3:
            await ws.aclose(1001, "restarting")
            return
        try:
            await ws.get_message()
        except ConnectionClosed as exc:
            closes.append(exc.reason.code if exc.reason else None)
            closed.set()

    server = await start_server(nursery, handler)
    backoff = Backoff(initial=0.01, maximum=0.05)
    opened = 0
    async with reconnecting_websocket_url(f"ws://{HOST}:{server.port}/", backoff=backoff) as reconnector:
        async for ws in reconnector:
            opened += 1
            if opened == 3:
                break
            async for _message in ws:
                pass
    no_tasks_left()
    assert opened == 3
    with trio.fail_after(5):
        await closed.wait()
    assert closes == [1000]


async def test_loopback_refused_until_max_attempts() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    backoff = Backoff(initial=0.01, maximum=0.02)
    with pytest.raises(HandshakeError) as info:
        async with reconnecting_websocket_url(f"ws://{HOST}:{port}/", backoff=backoff, max_attempts=3) as reconnector:
            async for _ws in reconnector:
                raise AssertionError("no connection should open")
    assert isinstance(info.value.__cause__, OSError)  # trio's, for all the addresses it tried
    assert any("gave up after 3 attempt(s)" in note for note in info.value.__notes__)


async def test_cancellation_while_connected_is_bounded_by_disconnect_timeout(
    autojump_clock: trio.testing.MockClock, script: Script
) -> None:
    """A server that never answers the Close: the closing handshake gives up after disconnect_timeout."""
    script.plan(accept_and_ignore)
    with trio.move_on_after(3):
        async with reconnecting_websocket_url(URL, disconnect_timeout=2) as reconnector:
            async for ws in reconnector:
                await ws.get_message()
    assert trio.current_time() == pytest.approx(3 + 2)
    no_tasks_left()


# --- an owner task that crashes (a bug in trio_ws, say) ------------------------------------


class Crash(Exception):
    pass


def crashing_open(error: BaseException, after: float) -> Callable[..., AbstractAsyncContextManager[object]]:
    """open_websocket_url, with a task next to the connection that raises ``error`` after ``after`` s."""
    real = trio_ws.open_websocket_url

    @asynccontextmanager
    async def open_(*args: Any, **kwargs: Any) -> AsyncIterator[object]:
        async def crash() -> None:
            await trio.sleep(after)
            raise error

        async with real(*args, **kwargs) as ws, trio.open_nursery() as nursery:
            nursery.start_soon(crash)
            yield ws

    return open_


async def test_a_crash_beside_the_connection_comes_out_as_itself(
    autojump_clock: trio.testing.MockClock, script: Script, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_reconnect, "open_websocket_url", crashing_open(Crash("a bug"), after=1))
    script.plan(accept())
    with pytest.raises(Crash, match="a bug"):
        async with reconnecting_websocket_url(URL) as reconnector:
            async for ws in reconnector:
                await ws.get_message()  # cancelled by the crash
    assert script.closes == [1000]
    assert repr(reconnector) == f"<Reconnector {URL} closed>"
    no_tasks_left()


async def test_the_body_s_own_exception_wins_over_a_crash(
    autojump_clock: trio.testing.MockClock, script: Script, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_reconnect, "open_websocket_url", crashing_open(Crash("a bug"), after=1))
    script.plan(accept())
    with pytest.raises(LookupError) as info:
        async with reconnecting_websocket_url(URL) as reconnector:
            async for _ws in reconnector:
                try:
                    await trio.sleep_forever()
                finally:
                    raise LookupError("the body's")
    assert isinstance(info.value.__context__, BaseExceptionGroup)
    assert info.value.__context__.subgroup(Crash) is not None


async def test_keyboard_interrupt_in_an_owner_task(
    autojump_clock: trio.testing.MockClock, script: Script, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_reconnect, "open_websocket_url", crashing_open(KeyboardInterrupt(), after=1))
    script.plan(accept())
    with pytest.raises(KeyboardInterrupt):
        async with reconnecting_websocket_url(URL) as reconnector:
            async for ws in reconnector:
                await ws.get_message()
