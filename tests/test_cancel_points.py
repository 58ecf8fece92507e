"""Cancel every operation at each of its scheduling steps in turn, and check what is left.

For an operation (connecting, sending, receiving, pinging, closing, the server's
answer to a handshake, a ``websocket_pair`` block, and the message stream's
``receive()``, ``receive_fragments()`` iteration and a message sent in pieces
from an async iterable), the task running it is
cancelled after exactly k of its scheduling steps, for k = 1, 2, ... until the
operation completes before the k-th step: N, the number of steps it takes, is
then known and must be bounded.  After each k, whatever the step:

- the operation completed or raised ``Cancelled``, nothing else;
- the connection's ``state`` is the one docs/cancellation.md gives for that
  point, and ``closed`` agrees with it;
- no task is left (the nurseries are empty and exit; the server's handlers
  have returned);
- no socket is left open (the process has as many socket descriptors as before);
- the server (or the other side of the pair) is still healthy.

The cancellation is delivered by a ``trio.abc.Instrument`` that counts the
steps of that one task and cancels a scope around the operation after the k-th.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.testing

from trio_ws import (
    ConnectionClosed,
    ConnectionRejected,
    ConnectionState,
    HandshakeError,
    WebSocketConnection,
    WebSocketRequest,
    WebSocketServer,
    connect_websocket,
    open_websocket,
    wrap_client_stream,
)
from trio_ws.testing import websocket_pair

from .conftest import HOST, RESOURCE, start_server

STEP_LIMIT = 500  # an operation that takes more steps than this is a failure in itself
DISCONNECT_TIMEOUT = 2.0  # short, so that a closing handshake that hangs shows up as a failure
PER_K_TIMEOUT = 10.0
TEST_TIMEOUT = 30.0
LARGE = b"\x5a" * (4 * 2**20)  # more than a loopback socket buffers: send_all blocks
SEND_ABORT_REASON = "a send was cancelled part way through a frame; the stream cannot be resumed"


# --- the instrument -------------------------------------------------------------


class _CancelAfterSteps(trio.abc.Instrument):
    """Cancel ``scope`` after the ``k``-th scheduling step of ``task``."""

    def __init__(self, task: trio.lowlevel.Task, scope: trio.CancelScope, k: int) -> None:
        self.task = task
        self.scope = scope
        self.k = k
        self.steps = 0
        self.fired = False
        self.active = True

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task and self.active:
            self.steps += 1
            if self.steps == self.k:
                self.fired = True
                self.scope.cancel()


@dataclass
class Outcome:
    k: int
    fired: bool = False  # the scope was cancelled (the operation had at least k steps)
    completed: bool = False
    cancelled: bool = False  # Cancelled came out of the operation and the scope caught it
    error: BaseException | None = None  # anything else (a failure)
    grouped: BaseExceptionGroup[BaseException] | None = None  # Cancelled, but inside an ExceptionGroup
    value: Any = None

    def check(self, what: str, *, tolerate_group: bool = False) -> None:
        """The operation completed, or raised the Cancelled that we caused; nothing else."""
        if self.error is not None:
            raise AssertionError(
                f"{what}, cancelled after step {self.k}, raised {self.error!r} instead of Cancelled"
            ) from self.error
        if self.grouped is not None and not tolerate_group:
            raise AssertionError(
                f"{what}, cancelled after step {self.k}, raised {self.grouped!r} instead of a bare Cancelled"
            ) from self.grouped
        assert self.completed != self.cancelled, self
        if self.cancelled:
            assert self.fired, f"{what}: Cancelled at k={self.k} without our cancellation"


async def run_cancelled(k: int, operation: Callable[[], Awaitable[Any]]) -> Outcome:
    """Run ``operation`` in the current task, cancelled after its ``k``-th scheduling step.

    What happened is in the returned Outcome, to be checked in the test's own
    task (this also runs inside server handlers, where an assertion would only
    be logged).  Only a Cancelled that is not ours propagates.
    """
    outcome = Outcome(k)
    scope = trio.CancelScope()
    counter = _CancelAfterSteps(trio.lowlevel.current_task(), scope, k)
    trio.lowlevel.add_instrument(counter)
    try:
        with scope:
            try:
                outcome.value = await operation()
            except trio.Cancelled:
                outcome.cancelled = True
                raise
            except BaseExceptionGroup as group:
                if group.split(trio.Cancelled)[1] is not None:
                    outcome.error = group
                else:  # only Cancelled inside: our scope catches it, but the caller saw a group
                    outcome.cancelled = True
                    outcome.grouped = group
                    raise
            except BaseException as exc:  # ConnectionClosed, LocalProtocolError, a mixed group...: a failure
                outcome.error = exc
            else:
                outcome.completed = True
    finally:
        counter.active = False
        trio.lowlevel.remove_instrument(counter)
    outcome.fired = counter.fired
    return outcome


# --- checks -------------------------------------------------------------------


def socket_fds() -> list[str]:
    gc.collect()
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the directory listing's own descriptor, gone already
            continue
        if target.startswith("socket:"):
            found.append(target)
    return sorted(found)


async def settle_sockets(before: list[str], what: str) -> None:
    """Let every task run until blocked; then the sockets must be those there were before."""
    for _ in range(50):
        await trio.testing.wait_all_tasks_blocked()
        if len(socket_fds()) == len(before):
            return
    now = socket_fds()
    assert len(now) == len(before), f"{what}: sockets left open: {sorted(set(now) - set(before))}"


def assert_consistent(ws: WebSocketConnection) -> None:
    """``closed`` agrees with ``state``."""
    if ws.state in (ConnectionState.CONNECTING, ConnectionState.OPEN):
        assert ws.closed is None, (ws.state, ws.closed)
    else:
        assert ws.closed is not None, ws.state


def assert_closed_cleanly(ws: WebSocketConnection, code: int = 1000) -> None:
    assert ws.state is ConnectionState.CLOSED, ws.state
    assert ws.closed is not None
    assert (ws.closed.code, ws.closed.was_clean) == (code, True), ws.closed


async def assert_aborted_by_the_send(ws: WebSocketConnection) -> None:
    """Case 3 of send_message(): CLOSED, 1006, no Close frame; later operations raise ConnectionClosed."""
    assert ws.state is ConnectionState.CLOSED, ws.state
    assert ws.closed is not None
    assert (ws.closed.code, ws.closed.reason, ws.closed.was_clean) == (1006, SEND_ABORT_REASON, False)
    assert ws.buffered_amount == 0
    with pytest.raises(ConnectionClosed):
        await ws.send_message("after the abort")
    with pytest.raises(ConnectionClosed):
        await ws.get_message()
    with pytest.raises(ConnectionClosed):
        await ws.ping()
    await ws.aclose()  # returns at once
    assert ws.closed.code == 1006


async def assert_echoes(ws: WebSocketConnection, message: str = "echo?") -> None:
    assert ws.state is ConnectionState.OPEN
    await ws.send_message(message)
    assert await ws.get_message() == message


async def assert_no_children(nursery: trio.Nursery) -> None:
    await trio.testing.wait_all_tasks_blocked()
    assert not nursery.child_tasks, nursery.child_tasks


# --- the server the clients talk to --------------------------------------------

PIECES_PREFIX = "pieces:"
PIECES_FAILED = "a message sent in pieces could not be finished"


class Checkpointed:
    """An async iterator over pieces, with a checkpoint before each (and none after the last)."""

    def __init__(self, pieces: list[Any]) -> None:
        self.pieces = pieces
        self.given = 0

    def __aiter__(self) -> Checkpointed:
        return self

    async def __anext__(self) -> Any:
        if self.given == len(self.pieces):
            raise StopAsyncIteration
        await trio.lowlevel.checkpoint()
        self.given += 1
        return self.pieces[self.given - 1]


class Bench:
    """An echo server on loopback whose handler can instead cancel its own accept() or reject()."""

    def __init__(self) -> None:
        self.server: WebSocketServer | None = None
        self.mode = "echo"  # or "accept", "reject": the handler cancels that call after k steps
        self.k: int | None = None
        self.active = 0  # handlers running
        self._idle = trio.Event()
        self._idle.set()
        self.answered = trio.Event()  # the instrumented handler has its outcome
        self.outcome: Outcome | None = None
        self.state_after: ConnectionState | None = None  # the server connection's, right after the call
        self.connection: WebSocketConnection | None = None
        self.seen: set[str] = set()  # the outcomes met so far, by name

    def saw(self, what: str) -> None:
        self.seen.add(what)

    def check_tolerating_group(self, outcome: Outcome, what: str) -> None:
        """Outcome.check(): a bare Cancelled, never one inside an ExceptionGroup."""
        outcome.check(what)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    async def start(self, nursery: trio.Nursery) -> None:
        self.server = await start_server(
            nursery,
            self.handler,
            max_message_size=2 * len(LARGE),
            receive_buffer_size=2**18,
            disconnect_timeout=DISCONNECT_TIMEOUT,
        )

    async def handler(self, request: WebSocketRequest) -> None:
        self.active += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        try:
            k, self.k = self.k, None  # only the connection the test makes is cancelled
            if self.mode == "echo" or k is None:
                await self.echo(await request.accept())
                return
            self.connection = request._connection  # to see its state, which a request does not show
            call = request.accept if self.mode == "accept" else lambda: request.reject(403)
            self.outcome = await run_cancelled(k, call)
            self.state_after = self.connection.state
            self.answered.set()
            if self.outcome.completed and self.mode == "accept":
                await self.echo(self.outcome.value)
        finally:
            self.active -= 1
            if not self.active:
                self._idle.set()

    @staticmethod
    async def echo(ws: WebSocketConnection) -> None:
        """Echo, except that a large message is answered with its length, and that
        ``"pieces:a|b|c"`` is answered with ``"abc"`` sent in pieces (a checkpoint before each)."""
        try:
            while True:
                message = await ws.get_message()
                if isinstance(message, str) and message.startswith(PIECES_PREFIX):
                    await ws.send_message(Checkpointed(message[len(PIECES_PREFIX) :].split("|")))
                    continue
                await ws.send_message(message if len(message) <= 1024 else str(len(message)))
        except ConnectionClosed:
            pass

    def arm(self, k: int) -> None:
        self.k = k
        self.outcome = self.state_after = self.connection = None
        self.answered = trio.Event()

    async def assert_healthy(self) -> None:
        """A new connection to the same server echoes and closes cleanly; then no handler is left."""
        async with open_websocket(
            HOST, self.port, RESOURCE, use_ssl=False, disconnect_timeout=DISCONNECT_TIMEOUT
        ) as ws:
            await assert_echoes(ws, "still there?")
        assert_closed_cleanly(ws)
        await self._idle.wait()

    async def connect(self, nursery: trio.Nursery) -> WebSocketConnection:
        return await connect_websocket(
            nursery, HOST, self.port, RESOURCE, use_ssl=False, disconnect_timeout=DISCONNECT_TIMEOUT
        )


# --- the operations -------------------------------------------------------------
#
# Each takes the bench and k, runs one attempt, checks it, and returns whether
# the cancellation fired (False: the operation took fewer than k steps).


async def open_websocket_block(bench: Bench, k: int) -> bool:
    """Entering (connecting), the body (an echo) and leaving ``async with open_websocket(...)``."""
    opened: list[WebSocketConnection] = []

    async def operation() -> None:
        async with open_websocket(
            HOST, bench.port, RESOURCE, use_ssl=False, disconnect_timeout=DISCONNECT_TIMEOUT
        ) as ws:
            opened.append(ws)
            await ws.send_message("body")
            assert await ws.get_message() == "body"

    outcome = await run_cancelled(k, operation)
    bench.check_tolerating_group(outcome, "open_websocket")
    if opened:
        # Cancelled in the body or on the way out: closed with 1000 after a full closing handshake.
        assert_closed_cleanly(opened[0])
        bench.saw("completed" if outcome.completed else "closed cleanly after the cancellation")
    else:
        assert outcome.cancelled  # cancelled while connecting: no connection exists
        bench.saw("cancelled while connecting")
    return outcome.fired


async def connect_websocket_call(bench: Bench, k: int) -> bool:
    async with trio.open_nursery() as nursery:
        outcome = await run_cancelled(k, lambda: bench.connect(nursery))
        bench.check_tolerating_group(outcome, "connect_websocket")
        if outcome.completed:
            ws = outcome.value
            await assert_echoes(ws)
            await ws.aclose()
            assert_closed_cleanly(ws)
        await assert_no_children(nursery)  # the reader, if it started, is gone too
    return outcome.fired


async def wrap_client_stream_call(bench: Bench, k: int) -> bool:
    stream = await trio.open_tcp_stream(HOST, bench.port)
    try:
        async with trio.open_nursery() as nursery:
            outcome = await run_cancelled(
                k,
                lambda: wrap_client_stream(nursery, stream, HOST, RESOURCE, disconnect_timeout=DISCONNECT_TIMEOUT),
            )
            outcome.check("wrap_client_stream")
            if outcome.completed:
                ws = outcome.value
                await assert_echoes(ws)
                await ws.aclose()
                assert_closed_cleanly(ws)
            else:
                assert stream.socket.fileno() == -1  # "the stream is closed"
            await assert_no_children(nursery)
    finally:
        await trio.aclose_forcefully(stream)  # a no-op unless something above failed
    return outcome.fired


async def _on_open_connection(
    bench: Bench,
    k: int,
    body: Callable[[WebSocketConnection, Outcome], Awaitable[None]],
    operation: Callable[[WebSocketConnection], Awaitable[Any]],
) -> bool:
    async with trio.open_nursery() as nursery:
        ws = await bench.connect(nursery)
        outcome = await run_cancelled(k, lambda: operation(ws))
        assert_consistent(ws)
        await body(ws, outcome)
        if ws.state is not ConnectionState.CLOSED:
            await ws.aclose()
            assert_closed_cleanly(ws)
        await assert_no_children(nursery)
    return outcome.fired


async def send_small(bench: Bench, k: int) -> bool:
    async def after(ws: WebSocketConnection, outcome: Outcome) -> None:
        outcome.check("send_message(small)")
        # A small frame fits in the socket buffer: never cancelled part way (case 3).
        assert ws.state is ConnectionState.OPEN
        assert ws.buffered_amount == 0
        if outcome.completed:
            assert await ws.get_message() == "small"
        # Cancelled: nothing was sent, so the next echo is the next message's.
        await assert_echoes(ws, "next")

    return await _on_open_connection(bench, k, after, lambda ws: ws.send_message("small"))


async def send_large(bench: Bench, k: int) -> bool:
    async def after(ws: WebSocketConnection, outcome: Outcome) -> None:
        outcome.check("send_message(4 MiB)")
        assert ws.buffered_amount == 0
        if outcome.completed:
            assert ws.state is ConnectionState.OPEN
            assert await ws.get_message() == str(len(LARGE))  # all of it arrived
            await assert_echoes(ws, "next")
            bench.saw("completed")
        elif ws.state is ConnectionState.OPEN:
            await assert_echoes(ws, "next")  # cancelled before writing: nothing was sent
            bench.saw("cancelled before writing")
        else:
            await assert_aborted_by_the_send(ws)  # cancelled inside send_all
            bench.saw("aborted")

    return await _on_open_connection(bench, k, after, lambda ws: ws.send_message(LARGE))


async def get_message(bench: Bench, k: int) -> bool:
    async with trio.open_nursery() as nursery:
        ws = await bench.connect(nursery)
        await ws.send_message("awaited")  # its echo is what get_message() waits for
        outcome = await run_cancelled(k, ws.get_message)
        assert_consistent(ws)
        outcome.check("get_message")
        assert ws.state is ConnectionState.OPEN
        if outcome.completed:
            assert outcome.value == "awaited"
        else:
            assert await ws.get_message() == "awaited"  # no message lost
        await assert_echoes(ws, "next")
        await ws.aclose()
        assert_closed_cleanly(ws)
        await assert_no_children(nursery)
    return outcome.fired


async def receive(bench: Bench, k: int) -> bool:
    """As get_message(): the channel's receive() loses no message either."""
    async with trio.open_nursery() as nursery:
        ws = await bench.connect(nursery)
        await ws.send("awaited")
        outcome = await run_cancelled(k, ws.receive)
        assert_consistent(ws)
        outcome.check("receive")
        assert ws.state is ConnectionState.OPEN
        if outcome.completed:
            assert outcome.value == "awaited"
            bench.saw("completed")
        else:
            assert await ws.receive() == "awaited"  # no message lost
            bench.saw("cancelled")
        await assert_echoes(ws, "next")
        await ws.aclose()
        assert_closed_cleanly(ws)
        with pytest.raises(trio.EndOfChannel):
            await ws.receive()
        await assert_no_children(nursery)
    return outcome.fired


async def receive_fragments(bench: Bench, k: int) -> bool:
    """Iterating over the pieces of a message the server sends in pieces: cancelled at any
    point, the iteration goes on where it stopped, and no piece is lost."""
    pieces = ["one ", "two ", "three ", "four"]
    async with trio.open_nursery() as nursery:
        ws = await bench.connect(nursery)
        fragments = ws.receive_fragments()
        await ws.send_message(PIECES_PREFIX + "|".join(pieces))
        got: list[str | bytes] = []

        async def iterate() -> None:
            async for piece in fragments:
                got.append(piece)

        outcome = await run_cancelled(k, iterate)
        assert_consistent(ws)
        outcome.check("receive_fragments() iteration")
        assert ws.state is ConnectionState.OPEN
        if outcome.cancelled:
            got += [piece async for piece in fragments]  # the rest, from the same iterator
            bench.saw("cancelled")
        else:
            bench.saw("completed")
        assert "".join(got) == "".join(pieces)  # type: ignore[arg-type]
        assert fragments.text is True
        await assert_echoes(ws, "next")
        await ws.aclose()
        assert_closed_cleanly(ws)
        await assert_no_children(nursery)
    return outcome.fired


async def send_in_pieces(bench: Bench, k: int) -> bool:
    """send_message() of an async iterable: cancelled before anything was sent, nothing
    happens; between pieces, the message can never be finished and the connection closes with
    1011 (a clean closing handshake); in the middle of a frame's write, it aborts (1006)."""
    pieces = [b"head", LARGE, b"tail"]
    async with trio.open_nursery() as nursery:
        ws = await bench.connect(nursery)
        before = ws.statistics().bytes_sent
        outcome = await run_cancelled(k, lambda: ws.send_message(Checkpointed(pieces)))
        assert_consistent(ws)
        outcome.check("send_message(pieces)")
        assert ws.buffered_amount == 0
        if outcome.completed:
            assert ws.state is ConnectionState.OPEN
            assert await ws.get_message() == str(sum(len(piece) for piece in pieces))  # all of it arrived
            await assert_echoes(ws, "next")
            bench.saw("completed")
        elif ws.closed is None:
            assert ws.state is ConnectionState.OPEN
            assert ws.statistics().bytes_sent == before  # not a byte of the message
            await assert_echoes(ws, "next")
            bench.saw("nothing sent")
        elif ws.closed.code == 1011:
            assert ws.closed.reason == PIECES_FAILED
            with pytest.raises(ConnectionClosed):
                await ws.send_message("after")
            reason = await ws.wait_closed()  # the server answers our Close
            assert (reason.code, reason.was_clean) == (1011, True)
            bench.saw("closed with 1011")
        else:
            await assert_aborted_by_the_send(ws)  # cancelled inside send_all
            bench.saw("aborted")
        if ws.state is not ConnectionState.CLOSED:
            await ws.aclose()
            assert_closed_cleanly(ws)
        await assert_no_children(nursery)
    return outcome.fired


async def ping(bench: Bench, k: int) -> bool:
    async def after(ws: WebSocketConnection, outcome: Outcome) -> None:
        outcome.check("ping")
        assert ws.state is ConnectionState.OPEN  # a Ping frame is small: never cut part way
        # Cancelled while sending or waiting for the pong: the ping is forgotten,
        # and its payload may be used again.
        await ws.ping(b"probe")
        await assert_echoes(ws, "next")

    return await _on_open_connection(bench, k, after, lambda ws: ws.ping(b"probe"))


async def pong(bench: Bench, k: int) -> bool:
    async def after(ws: WebSocketConnection, outcome: Outcome) -> None:
        outcome.check("pong")
        assert ws.state is ConnectionState.OPEN  # like a small send_message(): nothing sent, or all of it
        await assert_echoes(ws, "next")  # the server ignored the unsolicited pong, if it came

    return await _on_open_connection(bench, k, after, lambda ws: ws.pong(b"heartbeat"))


async def aclose(bench: Bench, k: int) -> bool:
    async def after(ws: WebSocketConnection, outcome: Outcome) -> None:
        outcome.check("aclose")
        # Shielded: the closing handshake ran to its end whenever the cancellation came...
        assert_closed_cleanly(ws)
        # ... and then the cancellation was raised.
        assert outcome.cancelled == outcome.fired
        with pytest.raises(ConnectionClosed):
            await ws.get_message()
        await ws.aclose()  # again: returns at once

    return await _on_open_connection(bench, k, after, lambda ws: ws.aclose())


async def server_accept(bench: Bench, k: int) -> bool:
    bench.arm(k)
    async with trio.open_nursery() as nursery:
        try:
            ws: WebSocketConnection | None = await bench.connect(nursery)
            error: BaseException | None = None
        except HandshakeError as exc:
            ws, error = None, exc
        with trio.fail_after(PER_K_TIMEOUT):
            await bench.answered.wait()
        outcome = bench.outcome
        assert outcome is not None
        outcome.check("request.accept()")
        if outcome.completed:
            assert bench.state_after is ConnectionState.OPEN
            assert ws is not None, error
            await assert_echoes(ws)
            await ws.aclose()
            assert_closed_cleanly(ws)
            bench.saw("completed")
        else:
            bench.saw("cancelled")
            # Before the 101 was written: still CONNECTING, then closed by the
            # reader without a response (the client sees HandshakeError).  While
            # writing it: aborted.
            assert bench.state_after in (ConnectionState.CONNECTING, ConnectionState.CLOSED)
            assert ws is None
            assert type(error) is HandshakeError, repr(error)
        await assert_no_children(nursery)
    assert bench.connection is not None
    await bench.assert_healthy()
    assert bench.connection.state is ConnectionState.CLOSED
    assert_consistent(bench.connection)
    return outcome.fired


async def server_reject(bench: Bench, k: int) -> bool:
    bench.arm(k)
    async with trio.open_nursery() as nursery:
        with pytest.raises(HandshakeError) as caught:
            await bench.connect(nursery)
        with trio.fail_after(PER_K_TIMEOUT):
            await bench.answered.wait()
        outcome = bench.outcome
        assert outcome is not None
        outcome.check("request.reject(403)")
        if outcome.completed:
            assert bench.state_after is ConnectionState.CLOSED
            assert isinstance(caught.value, ConnectionRejected)
            assert caught.value.status_code == 403
            bench.saw("completed")
        elif isinstance(caught.value, ConnectionRejected):
            # Cancelled while lingering: the response is out; the connection is
            # closed once the handler returns, without waiting further.
            assert caught.value.status_code == 403
            assert bench.state_after is ConnectionState.CONNECTING
            bench.saw("cancelled while lingering")
        else:
            # Cancelled before the response was written (waiting for the lock,
            # or with the cancellation pending): nothing was sent, the client
            # sees the connection close without a response, as for accept().
            assert type(caught.value) is HandshakeError, repr(caught.value)
            assert bench.state_after in (ConnectionState.CONNECTING, ConnectionState.CLOSED)
            bench.saw("cancelled before writing")
        await assert_no_children(nursery)
    assert bench.connection is not None
    await bench.assert_healthy()
    assert bench.connection.state is ConnectionState.CLOSED
    assert_consistent(bench.connection)
    return outcome.fired


async def websocket_pair_block(bench: Bench, k: int) -> bool:
    """Entering, a body that talks both ways, and leaving ``async with websocket_pair()``."""
    pairs: list[tuple[WebSocketConnection, WebSocketConnection]] = []

    async def operation() -> None:
        async with websocket_pair(disconnect_timeout=DISCONNECT_TIMEOUT) as (client, server):
            pairs.append((client, server))
            await client.send_message("to the server")
            assert await server.get_message() == "to the server"
            await server.send_message("to the client")
            assert await client.get_message() == "to the client"

    outcome = await run_cancelled(k, operation)
    bench.check_tolerating_group(outcome, "websocket_pair")
    if pairs:
        client, server = pairs[0]
        assert client.closed is not None
        assert server.closed is not None
        if SEND_ABORT_REASON in (client.closed.reason, server.closed.reason):
            # The body was cancelled inside a send_message(): case 3, even for a
            # small message, because a memory stream's send_all() checkpoints
            # before it takes the data.  That side aborted (1006, no Close
            # frame); the other saw its transport close without a Close frame.
            assert outcome.cancelled
            aborted, other = (client, server) if client.closed.reason == SEND_ABORT_REASON else (server, client)
            await assert_aborted_by_the_send(aborted)
            assert other.state is ConnectionState.CLOSED
            assert other.closed is not None
            assert (other.closed.code, other.closed.was_clean) == (1006, False), other.closed
            assert other.closed.reason == "the peer closed the TCP connection without a Close frame"
            bench.saw("a send aborted")
        else:
            # Cancelled while connecting, or in the body outside a send, or
            # while leaving: the closing handshake ran, 1000 on both sides.
            assert_closed_cleanly(client)
            assert_closed_cleanly(server)
            bench.saw("completed" if outcome.completed else "closed cleanly after the cancellation")
    else:
        assert outcome.cancelled
        bench.saw("cancelled while connecting")
    # Leaving the block proves its nursery (both readers, the server's accept) is empty.
    return outcome.fired


# --- the sweep ------------------------------------------------------------------


@dataclass
class Case:
    name: str
    run: Callable[[Bench, int], Awaitable[bool]]
    mode: str = "echo"
    # Outcomes the sweep must meet, so that it is known to exercise each documented path.
    must_see: frozenset[str] = frozenset()


CASES = [
    Case(
        "open_websocket",
        open_websocket_block,
        must_see=frozenset({"cancelled while connecting", "closed cleanly after the cancellation", "completed"}),
    ),
    Case("connect_websocket", connect_websocket_call),
    Case("wrap_client_stream", wrap_client_stream_call),
    Case("send_message_small", send_small),
    # An uncontended send takes the lock without a schedule point, so its first
    # step ends inside send_all(): "cancelled before writing" needs a contended
    # lock or a cancellation pending at the call, which a step count cannot make.
    Case("send_message_4MiB", send_large, must_see=frozenset({"aborted", "completed"})),
    Case("get_message", get_message),
    Case("receive", receive, must_see=frozenset({"cancelled", "completed"})),
    Case("receive_fragments", receive_fragments, must_see=frozenset({"cancelled", "completed"})),
    Case(
        "send_message_in_pieces",
        send_in_pieces,
        must_see=frozenset({"nothing sent", "closed with 1011", "aborted", "completed"}),
    ),
    Case("ping", ping),
    Case("pong", pong),
    Case("aclose", aclose),
    # accept() writes the 101 at once (a free send lock is no schedule point) and a
    # short write completes: counting steps cannot land a cancellation inside it.
    Case("server_accept", server_accept, "accept", frozenset({"completed"})),
    Case(
        "server_reject",
        server_reject,
        "reject",
        # As for accept(), the response goes out before the first step ends.
        frozenset({"cancelled while lingering", "completed"}),
    ),
    Case(
        "websocket_pair",
        websocket_pair_block,
        must_see=frozenset(
            {"cancelled while connecting", "a send aborted", "closed cleanly after the cancellation", "completed"}
        ),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_cancel_after_each_step(case: Case, nursery: trio.Nursery) -> None:
    bench = Bench()
    bench.mode = case.mode
    await bench.start(nursery)
    await bench.assert_healthy()
    with trio.fail_after(TEST_TIMEOUT):
        for k in range(1, STEP_LIMIT + 1):
            before = socket_fds()
            with trio.fail_after(PER_K_TIMEOUT):
                fired = await case.run(bench, k)
                await bench.assert_healthy()
                await settle_sockets(before, f"{case.name}, k={k}")
            assert bench.active == 0
            if not fired:
                break
        else:
            pytest.fail(f"{case.name} was still running after {STEP_LIMIT} steps")
    steps = k - 1
    assert steps >= 1  # every operation here has at least one checkpoint
    assert case.must_see <= bench.seen, f"never met: {sorted(case.must_see - bench.seen)}"
    print(f"\n{case.name}: N = {steps} steps")


# --- known defects ----------------------------------------------------------------

@pytest.mark.parametrize("entry", ["open_websocket", "connect_websocket", "websocket_pair"])
async def test_cancelled_at_the_first_step_of_connecting_raises_a_bare_cancelled(
    entry: str, nursery: trio.Nursery
) -> None:
    bench = Bench()
    await bench.start(nursery)

    async def enter_and_leave() -> None:
        if entry == "open_websocket":
            async with open_websocket(HOST, bench.port, RESOURCE, use_ssl=False):
                pass
        else:
            async with websocket_pair():
                pass

    with trio.fail_after(PER_K_TIMEOUT):
        async with trio.open_nursery() as readers:
            if entry == "connect_websocket":
                outcome = await run_cancelled(1, lambda: bench.connect(readers))
            else:
                outcome = await run_cancelled(1, enter_and_leave)
            await assert_no_children(readers)
        assert outcome.cancelled
        outcome.check(entry)  # a bare Cancelled, never a BaseExceptionGroup of them
