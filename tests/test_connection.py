"""WebSocketConnection: messages, pings, closing, limits and protocol errors."""

from __future__ import annotations

import socket
import struct
from functools import partial

import pytest
import trio
import trio.testing

from trio_ws import (
    CloseReason,
    ConnectionClosed,
    ConnectionState,
    WebSocketConnection,
    WebSocketRequest,
    WebSocketServer,
    connect_websocket,
    open_websocket,
    serve_websocket,
    wrap_client_stream,
    wrap_server_stream,
)
from trio_ws._engine import _READER_TASK
from trio_ws.testing import assert_closed_with, expect_close, websocket_pair

from .conftest import (
    HOST,
    UPGRADE_REQUEST,
    CloseWatcher,
    MemoryNetwork,
    RawClient,
    RawServerPeer,
    close_payload,
    echo_handler,
    frame,
    start_raw_server,
    start_server,
)

# --- messages -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "received"),
    [
        ("text", "text"),
        ("", ""),
        ("non-ASCII: \u00e9\u00e8 \u4e2d\u6587 \U0001f600", "non-ASCII: \u00e9\u00e8 \u4e2d\u6587 \U0001f600"),
        (b"\x00\xff binary", b"\x00\xff binary"),
        (b"", b""),
        (bytearray(b"from a bytearray"), b"from a bytearray"),
        (memoryview(b"from a memoryview"), b"from a memoryview"),
        (memoryview(bytes(range(16))).cast("B", (4, 4)), bytes(range(16))),
    ],
)
async def test_send_and_receive_types(sent: str | bytes | bytearray | memoryview, received: str | bytes) -> None:
    async with websocket_pair() as (client, server):
        await client.send_message(sent)
        got = await server.get_message()
        assert got == received
        assert type(got) is type(received)
        await server.send_message(sent)
        assert await client.get_message() == received


async def test_send_invalid_type() -> None:
    async with websocket_pair() as (client, _):
        with pytest.raises(ValueError, match="must be str, bytes"):
            await client.send_message(42)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="must be str, bytes"):
            await client.send_message(None)  # type: ignore[arg-type]


async def test_negative_message_queue_size_is_refused(echo_server: WebSocketServer) -> None:
    # trio-websocket gets this ValueError from trio.open_memory_channel.
    with pytest.raises(ValueError, match="message_queue_size"):
        async with open_websocket(HOST, echo_server.port, "/", use_ssl=False, message_queue_size=-1):
            pass  # pragma: no cover


async def test_queue_of_zero_still_delivers_in_order() -> None:
    async with websocket_pair(message_queue_size=0) as (client, server), trio.open_nursery() as nursery:

        async def send_then_close() -> None:
            for i in range(20):
                await server.send_message(str(i))
            await server.aclose(1000, "done")  # answered once the client has read up to it

        nursery.start_soon(send_then_close)
        assert [await client.get_message() for _ in range(20)] == [str(i) for i in range(20)]
        with pytest.raises(ConnectionClosed) as info:
            await client.get_message()
        assert info.value.reason is not None
        assert info.value.reason.code == 1000


async def test_ping_behind_a_full_queue_is_answered() -> None:
    """Messages, a Ping and a Close in one read, to a client with a queue of 1: the Ping that
    get_message() finds while the reader is paused goes to the reader, which answers it."""
    got: list[tuple[int, bytes]] = []

    async def script(peer: RawServerPeer) -> None:
        await peer.accept()
        data = frame(0x1, b"a", mask=False) + frame(0x1, b"b", mask=False) + frame(0x9, b"p", mask=False)
        await peer.stream.send_all(data + frame(0x8, close_payload(1000), mask=False))
        while True:
            got.append(await peer.receive_frame())
            if got[-1][0] == 0x8:
                break

    async with trio.open_nursery() as nursery:
        port = await start_raw_server(nursery, script)
        async with open_websocket(HOST, port, "/", use_ssl=False, message_queue_size=1) as ws:
            assert [await ws.get_message(), await ws.get_message()] == ["a", "b"]
            with pytest.raises(ConnectionClosed):
                await ws.get_message()
        nursery.cancel_scope.cancel()
    assert got == [(0xA, b"p"), (0x8, close_payload(1000))]


async def test_large_messages_and_no_interleaving() -> None:
    big_a = b"a" * 300_000
    big_b = "b" * 300_000
    async with websocket_pair(max_message_size=2**20, message_queue_size=2) as (client, server):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_message, big_a)
            nursery.start_soon(client.send_message, big_b)
            received = {await server.get_message(), await server.get_message()}
        assert received == {big_a, big_b}


async def test_large_and_small_messages_over_tcp_arrive_whole_and_in_order(nursery: trio.Nursery) -> None:
    """A client over plain TCP: the header-alone reads after large frames, the joined parts."""
    sizes = [300_000, 2**20, 5, 2**20, 70_000, 1, 200_000, 0, 2**20]
    messages = [bytes([n]) * size for n, size in enumerate(sizes)]

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        for message in messages:
            await ws.send_message(message)
        await ws.get_message()  # until the client closes

    server = await start_server(nursery, handler, max_message_size=2**20)
    async with open_websocket(HOST, server.port, "/", use_ssl=False, max_message_size=2**20) as ws:
        assert [await ws.get_message() for _ in messages] == messages


async def test_messages_before_remote_close_are_delivered() -> None:
    async with websocket_pair(message_queue_size=2) as (client, server):
        await server.send_message("1")
        await server.send_message("2")
        await server.aclose(1000, "done")
        assert await client.get_message() == "1"
        assert await client.get_message() == "2"
        with pytest.raises(ConnectionClosed) as info:
            await client.get_message()
        assert info.value.reason is not None
        assert (info.value.reason.code, info.value.reason.reason) == (1000, "done")


async def test_local_close_drops_unread_messages() -> None:
    async with websocket_pair(message_queue_size=2) as (client, server):
        await server.send_message("unread")
        await client.aclose()
        with pytest.raises(ConnectionClosed):
            await client.get_message()


async def test_full_queue_stops_the_reader_and_pushes_back(autojump_clock: trio.testing.MockClock) -> None:
    """With a queue of 1 and nobody reading, the sender is eventually blocked by the transport."""
    client_stream, server_stream = trio.testing.lockstep_stream_pair()
    async with trio.open_nursery() as nursery:
        accepted: list[WebSocketConnection] = []

        async def serve() -> None:
            request = await wrap_server_stream(nursery, server_stream, message_queue_size=1)
            accepted.append(await request.accept())

        nursery.start_soon(serve)
        client = await wrap_client_stream(nursery, client_stream, "h", "/")
        await client.send_message("queued")  # sits in the server's queue
        await client.send_message("held by the reader")  # the reader waits to queue it
        with trio.move_on_after(5) as blocked:
            await client.send_message("not read from the transport")
        assert blocked.cancelled_caught  # pushed back...
        assert client.state is ConnectionState.CLOSED  # ...and a half-sent frame aborts the connection
        assert client.closed is not None
        assert client.closed.code == 1006
        assert client.closed.reason is not None
        assert "cancelled part way" in client.closed.reason
        server = accepted[0]
        assert await server.get_message() == "queued"
        assert await server.get_message() == "held by the reader"
        nursery.cancel_scope.cancel()


async def test_buffered_amount(autojump_clock: trio.testing.MockClock) -> None:
    client_stream, server_stream = trio.testing.lockstep_stream_pair()
    async with trio.open_nursery() as nursery:

        async def serve() -> None:
            request = await wrap_server_stream(nursery, server_stream, message_queue_size=0)
            await request.accept()

        nursery.start_soon(serve)
        client = await wrap_client_stream(nursery, client_stream, "h", "/")
        assert client.buffered_amount == 0
        await client.send_message("x")  # the server's reader takes it and waits for a reader
        nursery.start_soon(client.send_message, "\u00e9" * 10)  # 20 bytes of UTF-8, blocked
        await trio.testing.wait_all_tasks_blocked()
        assert client.buffered_amount == 20
        nursery.cancel_scope.cancel()


async def test_a_flood_of_input_does_not_starve_other_tasks(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader reads a plain socket directly; while data keeps coming it still yields."""
    # Keep every read small, so that the flood takes many reads.
    monkeypatch.setattr("trio_ws._transport._MORE_WAITING_READ", 256)
    count = 8000
    all_sent = trio.Event()
    progress: list[int] = []

    async def handler(request: WebSocketRequest) -> None:
        await all_sent.wait()  # the whole flood waits in the kernel before the reader starts
        ws = await request.accept()
        inbox = ws._inbox
        # This task only yields; it runs between the reader's steps, if any.
        while len(inbox) < count and len(progress) < 100_000:
            progress.append(len(inbox))
            await trio.lowlevel.checkpoint()
        for _ in range(count):
            assert await ws.get_message() == b"x"

    server = await start_server(nursery, handler, message_queue_size=count, receive_buffer_size=256)
    async with await trio.open_tcp_stream(HOST, server.port) as stream:
        await stream.send_all(UPGRADE_REQUEST + frame(0x2, b"x") * count)
        all_sent.set()
        client = RawClient(stream)
        await client.receive_until(b"\r\n\r\n")
        # 8000 frames of 7 bytes are about 220 reads of 256 bytes, so the
        # reader yields about 27 times: the task above must have seen the
        # inbox grow in many steps, not in one or two.  (Trio runs the tasks
        # of each pass in a random order, and a pass where the task above runs
        # before the reader shows it no new length: about 20 of the 27 show.)
        with trio.fail_after(10):
            await stream.send_all(frame(0x8, close_payload(1000)))
            assert await client.receive_frame() == (0x8, close_payload(1000))  # not 1011: the handler got all
    assert len(set(progress)) >= 10


# --- ping and pong ----------------------------------------------------------------


@pytest.mark.parametrize("side", ["client", "server"])
async def test_ping_pong(side: str) -> None:
    """ping() returns once the peer's Pong for it has arrived, and not before: while the peer's
    reader is held by an unread message nothing answers, and unsolicited Pongs do not count."""
    async with websocket_pair(message_queue_size=0) as (client, server):
        pinger, peer = (client, server) if side == "client" else (server, client)
        answered: list[bytes | None] = []

        async def ping(payload: bytes | None) -> None:
            await pinger.ping(payload)
            answered.append(payload)

        await pinger.send_message("holds the peer's reader")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ping, b"A")
            nursery.start_soon(ping, None)  # a random payload
            await trio.testing.wait_all_tasks_blocked()  # both Pings sent; the peer reads neither
            await peer.pong(b"unsolicited")
            await peer.pong()  # an empty payload
            await peer.send_message("behind the Pongs")
            assert await pinger.get_message() == "behind the Pongs"  # the pinger has read both Pongs...
            assert answered == []  # ...and neither answered its pings
            assert await peer.get_message() == "holds the peer's reader"  # the peer's reader goes on, and answers
        assert sorted(answered, key=repr) == [None, b"A"]
        await pinger.send_message("still open")
        assert await peer.get_message() == "still open"


async def test_concurrent_pings() -> None:
    pongs = 0
    async with websocket_pair() as (client, _):

        async def ping() -> None:
            nonlocal pongs
            await client.ping()
            pongs += 1

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(ping)
    assert pongs == 5


async def test_ping_payload_rules() -> None:
    async with websocket_pair() as (client, _):
        errors = 0

        async def ping_a() -> None:
            nonlocal errors
            try:
                await client.ping(b"same")
            except ValueError:
                errors += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ping_a)
            nursery.start_soon(ping_a)
        assert errors == 1
        with pytest.raises(ValueError, match="at most 125"):
            await client.ping(b"x" * 126)
        with pytest.raises(ValueError, match="at most 125"):
            await client.pong(b"x" * 126)
        await client.ping(b"x" * 125)


async def test_ping_and_pong_after_close() -> None:
    async with websocket_pair() as (client, _):
        pass
    with pytest.raises(ConnectionClosed):
        await client.ping(b"late")
    with pytest.raises(ConnectionClosed):
        await client.pong(b"late")


async def test_a_pong_answers_earlier_pings_too(nursery: trio.Nursery) -> None:
    async def script(peer: RawServerPeer) -> None:
        await peer.accept()
        payloads = [(await peer.receive_frame())[1] for _ in range(3)]
        await peer.stream.send_all(frame(0xA, payloads[-1], mask=False))  # answer only the last
        opcode, payload = await peer.receive_frame()
        assert opcode == 0x8
        await peer.stream.send_all(frame(0x8, payload, mask=False))
        await peer.receive_eof()

    port = await start_raw_server(nursery, script)
    answered = 0
    async with open_websocket(HOST, port, "/", use_ssl=False) as ws:

        async def ping(payload: bytes) -> None:
            nonlocal answered
            await ws.ping(payload)
            answered += 1

        async with trio.open_nursery() as pings:
            for payload in (b"1", b"2", b"3"):
                pings.start_soon(ping, payload)
                await trio.testing.wait_all_tasks_blocked()
    assert answered == 3


async def test_ping_on_a_lost_connection_raises(nursery: trio.Nursery) -> None:
    async def script(peer: RawServerPeer) -> None:
        await peer.accept()
        await peer.receive_frame()  # the ping: never answered
        # then the TCP connection just ends

    port = await start_raw_server(nursery, script)
    ws = await connect_websocket(nursery, HOST, port, "/", use_ssl=False)
    with trio.fail_after(5), pytest.raises(ConnectionClosed) as info:
        await ws.ping(b"anyone?")
    assert info.value.reason is not None
    assert info.value.reason.code == 1006


async def test_ping_pending_when_peer_closes_raises() -> None:
    async with websocket_pair(message_queue_size=0) as (client, server):
        await client.send_message("blocks the server's reader, so the ping is not answered")

        async def close_server_side() -> None:
            await trio.testing.wait_all_tasks_blocked()
            assert await server.get_message()  # frees the reader: it answers the ping...
            await server.aclose(1001)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(close_server_side)
            outcome: CloseReason | str | None = "answered"
            try:
                await client.ping(b"p")
            except ConnectionClosed as exc:  # ...unless the Close overtook it: either way, no hang
                outcome = exc.reason
    # Answered, or failed on the server's Close (not on a lost connection).
    assert outcome == "answered" or (isinstance(outcome, CloseReason) and outcome.code == 1001), outcome
    for side in (client, server):
        assert side.closed is not None
        assert (side.closed.code, side.closed.was_clean) == (1001, True)


async def test_cancelled_ping_frees_its_payload(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, memory_network: MemoryNetwork
) -> None:
    async def script(peer: RawServerPeer) -> None:
        await peer.accept()
        await peer.receive_eof()  # never answers

    port = await memory_network.start_raw_server(nursery, script)
    ws = await connect_websocket(nursery, HOST, port, "/", use_ssl=False, disconnect_timeout=1)
    with trio.move_on_after(1):
        await ws.ping(b"same")
    with trio.move_on_after(1) as again:
        await ws.ping(b"same")  # no ValueError: the cancelled ping is gone
    assert again.cancelled_caught
    await ws.aclose()


# --- closing -------------------------------------------------------------------------


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 3000, 4999])
async def test_close_codes_that_may_be_sent(code: int) -> None:
    async with websocket_pair() as (client, server):
        await client.aclose(code, "r")
        with pytest.raises(ConnectionClosed) as info:
            await server.get_message()
    assert info.value.reason is not None
    assert (info.value.reason.code, info.value.reason.reason) == (code, "r")


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1014, 1015, 1016, 2000, 2999, 5000])
async def test_close_codes_that_may_not_be_sent(code: int) -> None:
    async with websocket_pair() as (client, _):
        with pytest.raises(ValueError, match=f"close code {code} may not be sent"):
            await client.aclose(code)
        assert client.state is ConnectionState.OPEN


async def test_close_reason_length_and_type() -> None:
    async with websocket_pair() as (client, server):
        with pytest.raises(ValueError, match="124 bytes"):
            await client.aclose(1000, "x" * 124)
        with pytest.raises(ValueError, match="124 bytes"):
            await client.aclose(1000, "\u00e9" * 62)
        with pytest.raises(UnicodeEncodeError):
            await client.aclose(1000, "\ud800")  # a lone surrogate is not UTF-8
        with pytest.raises(TypeError):
            await client.aclose(1000, b"bytes")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await client.aclose("1000")  # type: ignore[arg-type]
        assert client.state is ConnectionState.OPEN
        await client.aclose(1000, "\u00e9" * 61 + "x")  # 123 bytes: fits
        with pytest.raises(ConnectionClosed) as info:
            await server.get_message()
    assert info.value.reason is not None
    assert info.value.reason.reason == "\u00e9" * 61 + "x"


async def test_states_through_a_close(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[ConnectionState] = []
    async with websocket_pair(message_queue_size=0) as (client, server):
        assert client.state is server.state is ConnectionState.OPEN
        await client.send_message("blocks the server's reader")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.aclose)
            await trio.testing.wait_all_tasks_blocked()
            seen.append(client.state)  # Close sent, no answer yet
            assert client.closed is not None
            assert not client.closed.was_clean
            assert await server.get_message() == "blocks the server's reader"
        seen.append(client.state)
    assert seen == [ConnectionState.CLOSING, ConnectionState.CLOSED]
    assert client.closed is not None
    assert client.closed.was_clean
    assert server.state is ConnectionState.CLOSED


async def test_send_racing_a_remote_close_raises_connection_closed() -> None:
    async def spam(client: WebSocketConnection, reasons: list[CloseReason | None]) -> None:
        try:
            while True:
                await client.send_message("x")
                await client.ping()
        except ConnectionClosed as exc:
            reasons.append(exc.reason)

    for _ in range(20):
        reasons: list[CloseReason | None] = []
        async with websocket_pair() as (client, server), trio.open_nursery() as nursery:
            nursery.start_soon(server.aclose)
            nursery.start_soon(spam, client, reasons)
        # The sender stops on the server's Close (1000), whichever call meets it...
        assert len(reasons) == 1
        assert reasons[0] is not None
        assert reasons[0].code == 1000
        # ...and both sides end with a clean closing handshake.
        for side in (client, server):
            assert side.state is ConnectionState.CLOSED
            assert side.closed is not None
            assert (side.closed.code, side.closed.was_clean) == (1000, True)


async def test_ping_racing_a_local_close() -> None:
    async def ping(client: WebSocketConnection, outcomes: list[CloseReason | str | None]) -> None:
        try:
            await client.ping()
        except ConnectionClosed as exc:
            outcomes.append(exc.reason)
        else:
            outcomes.append("pong")

    for _ in range(20):
        outcomes: list[CloseReason | str | None] = []
        async with websocket_pair() as (client, server), trio.open_nursery() as nursery:
            nursery.start_soon(ping, client, outcomes)
            nursery.start_soon(client.aclose)
        # The ping is answered before the close, or fails with our own close's code.
        assert len(outcomes) == 1
        outcome = outcomes[0]
        assert outcome == "pong" or (isinstance(outcome, CloseReason) and outcome.code == 1000), outcome
        for side in (client, server):
            assert side.state is ConnectionState.CLOSED
            assert side.closed is not None
            assert (side.closed.code, side.closed.was_clean) == (1000, True)


async def test_nothing_is_sent_after_our_close(nursery: trio.Nursery) -> None:
    frames: list[tuple[int, bytes]] = []

    async def script(peer: RawServerPeer) -> None:
        await peer.accept()
        while True:
            opcode, payload = await peer.receive_frame()
            frames.append((opcode, payload))
            if opcode == 0x8:
                break
        await peer.stream.send_all(frame(0x8, payload, mask=False))
        frames.append((0, await peer.receive_eof()))
        peer_done.set()

    peer_done = trio.Event()
    port = await start_raw_server(nursery, script)
    ws = await connect_websocket(nursery, HOST, port, "/", use_ssl=False)
    async with trio.open_nursery() as tasks:
        tasks.start_soon(ws.aclose)
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(3):
            with pytest.raises(ConnectionClosed):
                await ws.send_message("after close")
    await peer_done.wait()  # the peer has seen our EOF and recorded what came before it
    assert frames[-2][0] == 0x8
    assert frames[-1] == (0, b"")


# --- abnormal closes (1006) say why ---------------------------------------------------------


@pytest.mark.parametrize(("reset", "why"), [(False, "without a Close frame"), (True, "ConnectionResetError")])
async def test_transport_lost_without_close(nursery: trio.Nursery, reset: bool, why: str) -> None:
    async def script(peer: RawServerPeer) -> None:
        await peer.accept()
        if reset:  # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
            peer.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    port = await start_raw_server(nursery, script)
    ws = await connect_websocket(nursery, HOST, port, "/", use_ssl=False)
    with pytest.raises(ConnectionClosed) as info:
        await ws.get_message()
    reason = info.value.reason
    assert reason is not None
    assert reason.code == 1006
    assert reason.reason is not None
    assert why in reason.reason
    assert not reason.was_clean
    assert ws.state is ConnectionState.CLOSED


async def send_two_then_wait(request: WebSocketRequest) -> None:
    """A handler that sends "a" and "b", then waits until the client goes."""
    ws = await request.accept()
    for text in ("a", "b"):
        await ws.send_message(text)
    with pytest.raises(ConnectionClosed):
        await ws.get_message()


async def test_the_stream_closed_under_a_paused_reader_ends_the_connection(nursery: trio.Nursery) -> None:
    """The caller owns a wrapped stream and may close it while the reader is not waiting on it."""

    server = await start_server(nursery, send_two_then_wait)
    stream = await trio.open_tcp_stream(HOST, server.port)
    ws = await wrap_client_stream(nursery, stream, HOST, "/", message_queue_size=1)
    await trio.testing.wait_all_tasks_blocked()  # our reader holds two messages and waits for us
    await stream.aclose()
    assert [await ws.get_message(), await ws.get_message()] == ["a", "b"]
    with pytest.raises(ConnectionClosed) as info:
        await ws.get_message()  # the reader resumes, on a socket closed under it
    assert info.value.reason is not None
    assert info.value.reason.code == 1006
    assert ws.state is ConnectionState.CLOSED


async def test_sending_on_a_stream_closed_under_the_connection_ends_it(nursery: trio.Nursery) -> None:
    server = await start_server(nursery, send_two_then_wait)
    stream = await trio.open_tcp_stream(HOST, server.port)
    ws = await wrap_client_stream(nursery, stream, HOST, "/", message_queue_size=1)
    await trio.testing.wait_all_tasks_blocked()  # our reader is paused: it will not notice the close
    await stream.aclose()  # the caller owns the stream, and may
    with pytest.raises(ConnectionClosed) as info:
        await ws.send_message("after the stream closed")
    assert info.value.reason is not None
    assert info.value.reason.code == 1006
    assert ws.state is ConnectionState.CLOSED
    assert [await ws.get_message(), await ws.get_message()] == ["a", "b"]  # received before: kept


async def test_close_timeout_reason(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, memory_network: MemoryNetwork
) -> None:
    async def script(peer: RawServerPeer) -> None:
        await peer.accept()
        await peer.receive_eof()  # reads the Close, never answers

    port = await memory_network.start_raw_server(nursery, script)
    ws = await connect_websocket(nursery, HOST, port, "/", use_ssl=False, disconnect_timeout=3)
    start = trio.current_time()
    await ws.aclose(1000, "bye")
    assert trio.current_time() - start == pytest.approx(3)
    assert ws.state is ConnectionState.CLOSED
    assert ws.closed is not None
    assert (ws.closed.code, ws.closed.reason, ws.closed.was_clean) == (1000, "bye", False)


async def test_client_waits_a_bounded_time_for_the_server_to_close_tcp(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, memory_network: MemoryNetwork
) -> None:
    async def script(peer: RawServerPeer) -> None:
        await peer.accept()
        await peer.stream.send_all(frame(0x8, close_payload(1000), mask=False))
        await peer.receive_frame()  # the client's answer
        await trio.sleep_forever()  # but never close the transport

    """RFC 6455 7.1.1: the server closes TCP first; a client waits for that one second, then closes."""
    port = await memory_network.start_raw_server(nursery, script)
    for timeout in (2.0, 0.5):  # the grace is 1 s, and never more than disconnect_timeout
        ws = await connect_websocket(nursery, HOST, port, "/", use_ssl=False, disconnect_timeout=timeout)
        with pytest.raises(ConnectionClosed):
            await ws.get_message()
        assert ws.state is ConnectionState.CLOSING
        waited = min(1.0, timeout)
        await trio.sleep(waited - 0.1)
        assert ws.state is ConnectionState.CLOSING
        await trio.sleep(0.2)
        assert ws.state is ConnectionState.CLOSED
        assert ws.closed is not None
        assert ws.closed.code == 1000
        assert ws.closed.was_clean  # a Close went each way: the wait is not a failure
    nursery.cancel_scope.cancel()


# --- limits and protocol errors ---------------------------------------------------------------


async def test_max_message_size_closes_1009_on_both_sides() -> None:
    async with websocket_pair(max_message_size=100) as (client, server):
        await server.send_message(b"A" * 100)
        assert await client.get_message() == b"A" * 100
        await server.send_message(b"B" * 101)
        with expect_close(1009):
            await client.get_message()
        with expect_close(1009):
            await server.get_message()
    assert assert_closed_with(client, 1009).was_clean


async def test_max_message_size_counts_characters_of_text() -> None:
    async with websocket_pair(max_message_size=10) as (client, server):
        await server.send_message("\u00e9" * 10)  # 10 characters, 20 bytes of UTF-8
        assert await client.get_message() == "\u00e9" * 10


async def test_oversized_fragmented_message_fails_fast(nursery: trio.Nursery) -> None:
    """A message that never ends is refused once it passes the limit, without buffering the rest."""
    server: WebSocketServer = await nursery.start(
        partial(serve_websocket, accept_and_read, HOST, 0, None, max_message_size=1000)
    )
    client = RawClient(await trio.open_tcp_stream(HOST, server.port))
    async with client.stream:
        await client.handshake()
        sent = 0
        await client.stream.send_all(frame(0x2, b"x" * 100, fin=False))
        sent += 100

        async def keep_sending() -> None:
            nonlocal sent
            try:
                while sent < 10_000_000:
                    await client.stream.send_all(frame(0x0, b"x" * 100, fin=False))
                    sent += 100
            except trio.BrokenResourceError:
                pass

        async with trio.open_nursery() as sender:
            sender.start_soon(keep_sending)
            opcode, payload = await client.receive_frame()
            sender.cancel_scope.cancel()
        assert opcode == 0x8
        assert struct.unpack("!H", payload[:2])[0] == 1009
        assert sent < 10_000_000


async def accept_and_read(request: WebSocketRequest) -> None:
    ws = await request.accept()
    try:
        while True:
            await ws.get_message()
    except ConnectionClosed:
        pass


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (frame(0x3, b"reserved opcode"), 1002),
        (frame(0x1, b"\xff\xfe not UTF-8"), 1007),
        (frame(0x1, b"ok", rsv=4), 1002),  # RSV1 without an extension
        (frame(0x9, b"x" * 126), 1002),  # control frame too long
        (frame(0x9, b"ping", fin=False), 1002),  # fragmented control frame
        (frame(0x0, b"continuation of nothing"), 1002),
        (frame(0x1, b"unmasked", mask=False), 1002),
        (frame(0x8, b"\x03"), 1002),  # a one-byte Close payload
        (frame(0x8, close_payload(1005)), 1002),  # a code that may not be sent
        (frame(0x8, struct.pack("!H", 1000) + b"\xff"), 1007),  # reason not UTF-8
    ],
)
async def test_protocol_errors_close_with_the_rfc_code(nursery: trio.Nursery, data: bytes, code: int) -> None:
    handler = CloseWatcher()
    closes, done = handler.closes, handler.done

    server: WebSocketServer = await nursery.start(partial(serve_websocket, handler, HOST, 0, None))
    client = RawClient(await trio.open_tcp_stream(HOST, server.port))
    async with client.stream:
        await client.handshake()
        await client.stream.send_all(data)
        opcode, payload = await client.receive_frame()
        assert opcode == 0x8
        assert struct.unpack("!H", payload[:2])[0] == code
        assert await client.receive_eof() == b""  # and the server drops the connection
    await done.wait()
    assert closes[0] is not None
    assert closes[0].code == code


async def test_invalid_utf8_fails_at_the_bad_fragment(nursery: trio.Nursery) -> None:
    server: WebSocketServer = await nursery.start(partial(serve_websocket, accept_and_read, HOST, 0, None))
    client = RawClient(await trio.open_tcp_stream(HOST, server.port))
    async with client.stream:
        await client.handshake()
        await client.stream.send_all(frame(0x1, b"valid start ", fin=False))
        await client.stream.send_all(frame(0x0, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80", fin=False))
        # No more fragments are sent: the server must not wait for the end of the message.
        opcode, payload = await client.receive_frame()
        assert (opcode, struct.unpack("!H", payload[:2])[0]) == (0x8, 1007)


async def test_client_answers_a_server_protocol_error(nursery: trio.Nursery) -> None:
    got: list[tuple[int, bytes]] = []
    done = trio.Event()

    async def script(peer: RawServerPeer) -> None:
        await peer.accept()
        await peer.stream.send_all(frame(0x1, b"masked by a server", mask=True))
        got.append(await peer.receive_frame())
        done.set()

    port = await start_raw_server(nursery, script)
    ws = await connect_websocket(nursery, HOST, port, "/", use_ssl=False)
    with pytest.raises(ConnectionClosed) as info:
        await ws.get_message()
    assert info.value.reason is not None
    assert info.value.reason.code == 1002
    await done.wait()
    assert got[0][0] == 0x8
    assert struct.unpack("!H", got[0][1][:2])[0] == 1002
    await ws.aclose()
    assert ws.state is ConnectionState.CLOSED


async def test_websocket_pair_body_errors_pass_through() -> None:
    with pytest.raises(KeyError):
        async with websocket_pair():
            raise KeyError("mine")


async def test_websocket_pair_closes_cleanly_when_cancelled() -> None:
    with trio.CancelScope() as scope:
        async with websocket_pair() as (client, server):
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught
    for side in (client, server):
        assert side.closed is not None
        assert (side.closed.code, side.closed.was_clean) == (1000, True)


async def test_oversized_single_frame_fails_fast(nursery: trio.Nursery) -> None:
    """A frame announcing 100 MB is refused once its first bytes pass the limit."""
    server: WebSocketServer = await nursery.start(
        partial(serve_websocket, accept_and_read, HOST, 0, None, max_message_size=1000)
    )
    client = RawClient(await trio.open_tcp_stream(HOST, server.port))
    async with client.stream:
        await client.handshake()
        header = struct.pack("!BBQ", 0x82, 0x80 | 127, 100_000_000) + b"\x00\x00\x00\x00"
        await client.stream.send_all(header + b"x" * 2000)
        sent = 2000

        async def keep_sending() -> None:
            nonlocal sent
            try:
                while sent < 100_000_000:
                    await client.stream.send_all(b"x" * 65536)
                    sent += 65536
            except trio.BrokenResourceError:
                pass

        async with trio.open_nursery() as sender:
            sender.start_soon(keep_sending)
            opcode, payload = await client.receive_frame()
            sender.cancel_scope.cancel()
        assert (opcode, struct.unpack("!H", payload[:2])[0]) == (0x8, 1009)
        assert sent < 50_000_000


async def test_websocket_pair_exits_with_unread_server_messages() -> None:
    with trio.fail_after(5):
        async with websocket_pair(message_queue_size=1) as (client, server):
            for n in range(3):
                await client.send_message(f"unread {n}")
            await trio.testing.wait_all_tasks_blocked()
    assert client.closed is not None
    assert client.closed.was_clean
    assert server.state is ConnectionState.CLOSED


async def test_websocket_pair_with_a_subprotocol_the_client_did_not_offer() -> None:
    with trio.fail_after(5), pytest.raises(ValueError, match="not proposed"):
        async with websocket_pair(subprotocol="chat"):
            pytest.fail("must not open")  # pragma: no cover


async def test_frames_sent_with_the_upgrade_request_are_not_lost(nursery: trio.Nursery) -> None:
    server = await start_server(nursery, echo_handler)
    client = RawClient(await trio.open_tcp_stream(HOST, server.port))
    async with client.stream:
        await client.stream.send_all(UPGRADE_REQUEST + frame(0x1, b"eager") + frame(0x9, b"p"))
        assert (await client.receive_until(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        frames = {await client.receive_frame(), await client.receive_frame()}
        assert frames == {(0x1, b"eager"), (0xA, b"p")}


def test_task_names_are_the_ones_trio_would_give() -> None:
    """The per-connection tasks are named by constants (one string, not one per task); they
    must stay the names trio would make from the functions, which debugging output shows."""
    from trio_ws import _engine, _keepalive, _server

    def trio_name(fn: object) -> str:
        return f"{fn.__module__}.{fn.__qualname__}"  # type: ignore[attr-defined]

    assert trio_name(_engine.Engine._reader_task) == _engine._READER_TASK
    assert trio_name(_engine.Engine._write_behind) == _engine._WRITER_TASK
    assert trio_name(_keepalive.keepalive) == _engine._KEEPALIVE_TASK
    assert trio_name(_server.WebSocketServer._handle_connection) == _server._HANDLER_TASK
    assert trio_name(_keepalive.KeepaliveSweep.run) == _server._SWEEP_TASK


def _trio_ws_frames(task: trio.lowlevel.Task) -> list[str]:
    """The names of trio_ws's functions in ``task``'s chain of awaits, outermost first."""
    names: list[str] = []
    awaited: object = task.coro
    while awaited is not None:
        code = getattr(awaited, "cr_code", None) or getattr(awaited, "gi_code", None)
        if code is not None and "trio_ws" in code.co_filename.replace("\\", "/").split("/"):
            names.append(code.co_name)
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return names


async def test_an_idle_reader_waits_in_receive_itself(echo_server: WebSocketServer) -> None:
    """Memory per idle connection: each coroutine frame an idle reader waits in lives as
    long as the connection (a helper's costs 256 bytes), so over plain TCP the reader task
    waits in Transport.receive() itself, in both roles."""
    async with open_websocket(HOST, echo_server.port, "/", use_ssl=False) as ws:
        await ws.send_message("warm")  # (both readers have read once)
        assert await ws.get_message() == "warm"
        await trio.testing.wait_all_tasks_blocked()
        readers = [task for task in _all_tasks() if task.name == _READER_TASK]
        assert len(readers) == 2  # the client's and the server's
        for task in readers:
            assert _trio_ws_frames(task) == ["_reader_task", "receive"]


def _all_tasks() -> list[trio.lowlevel.Task]:
    tasks: list[trio.lowlevel.Task] = []
    pending = [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        tasks.append(task)
        pending.extend(child for nursery in task.child_nurseries for child in nursery.child_tasks)
    return tasks
