"""Limits and shutdown: slow handshakes, max_connections, graceful aclose(), memory under floods."""

from __future__ import annotations

import struct
import tracemalloc

import pytest
import trio
import trio.testing

from trio_ws import (
    CloseReason,
    ConnectionClosed,
    WebSocketRequest,
    WebSocketServer,
    open_websocket,
    serve_websocket,
)

from .conftest import HOST, MemoryNetwork, RawClient, echo_handler, echo_loop, frame, start_server


async def test_a_slowloris_is_dropped_at_connect_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, memory_network: MemoryNetwork
) -> None:
    """One header byte per second never finishes a request: the server drops it at connect_timeout."""
    await memory_network.start_server(nursery, echo_handler, connect_timeout=10)
    client = await memory_network.connect()
    sent = 0
    async with client.stream:
        start = trio.current_time()
        request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"x" * 100
        try:
            for byte in request:
                await client.stream.send_all(bytes([byte]))
                sent += 1
                await trio.sleep(1)
        except trio.BrokenResourceError:
            pass
        assert await client.receive_eof() == b""
        dropped_after = trio.current_time() - start
    assert 9 <= dropped_after <= 11
    assert sent <= 12


async def test_max_connections_answers_503(nursery: trio.Nursery) -> None:
    release = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await release.wait()
        await echo_loop(ws)

    server = await start_server(nursery, handler, max_connections=2)
    async with (
        open_websocket(HOST, server.port, "/", use_ssl=False) as first,
        open_websocket(HOST, server.port, "/", use_ssl=False) as second,
    ):
        from trio_ws import ConnectionRejected

        with pytest.raises(ConnectionRejected) as info:
            async with open_websocket(HOST, server.port, "/", use_ssl=False):
                pytest.fail("over the limit")  # pragma: no cover
        assert info.value.status_code == 503
        assert (b"retry-after", b"1") in info.value.headers
        release.set()
        for ws in (first, second):
            await ws.send_message("still served")
            assert await ws.get_message() == "still served"
    # Below the limit again: served.
    async with open_websocket(HOST, server.port, "/", use_ssl=False) as third:
        await third.send_message("room again")
        assert await third.get_message() == "room again"


@pytest.mark.parametrize("bad", [0, -1, 1.5])
async def test_max_connections_is_checked(bad: object) -> None:
    with pytest.raises(ValueError, match="max_connections"):
        await serve_websocket(echo_handler, HOST, 0, None, max_connections=bad)  # type: ignore[arg-type]


async def test_graceful_aclose() -> None:
    """aclose(): no new connections, 1001 to every open one, handlers see ConnectionClosed and return."""
    seen: list[CloseReason | None] = []
    handlers_done = 0
    async with trio.open_nursery() as nursery:

        async def handler(request: WebSocketRequest) -> None:
            nonlocal handlers_done
            ws = await request.accept()
            try:
                while True:
                    await ws.send_message(await ws.get_message())
            except ConnectionClosed as exc:
                seen.append(exc.reason)
            handlers_done += 1

        server: WebSocketServer = await nursery.start(serve_websocket, handler, HOST, 0, None)
        port = server.port
        clients = []
        for _ in range(3):
            ws = await connect_client(nursery, port)
            clients.append(ws)
        await server.aclose()
        assert handlers_done == 3
        assert len(seen) == 3
        for reason in seen:
            assert reason is not None
            assert (reason.code, reason.reason) == (1001, "server shutting down")
        for ws in clients:
            with pytest.raises(ConnectionClosed) as info:
                await ws.get_message()
            assert info.value.reason is not None
            assert info.value.reason.code == 1001
        with pytest.raises(OSError, match="failed"):  # the listener is closed
            await trio.open_tcp_stream(HOST, port)
        await server.aclose()  # idempotent
    # serve_websocket returned by itself: the nursery closed without being cancelled.


async def connect_client(nursery: trio.Nursery, port: int) -> object:
    from trio_ws import connect_websocket

    return await connect_websocket(nursery, HOST, port, "/", use_ssl=False)


@pytest.mark.parametrize("own_nursery", [True, False], ids=["server's nursery", "handler_nursery"])
async def test_aclose_cancels_handlers_that_will_not_stop(
    autojump_clock: trio.testing.MockClock, memory_network: MemoryNetwork, own_nursery: bool
) -> None:
    async with trio.open_nursery() as nursery:
        handler_nursery = None if own_nursery else nursery
        cancelled = trio.Event()

        async def stubborn(request: WebSocketRequest) -> None:
            await request.accept()
            try:
                await trio.sleep_forever()  # never looks at its connection
            except trio.Cancelled:
                cancelled.set()
                raise

        server = await memory_network.start_server(
            nursery, stubborn, disconnect_timeout=5, handler_nursery=handler_nursery
        )
        ws = await connect_client(nursery, memory_network.port)
        start = trio.current_time()
        await server.aclose()
        assert trio.current_time() - start == pytest.approx(5, abs=0.5)
        assert cancelled.is_set()
        del ws


@pytest.mark.deadline(60)  # it waits up to 30 s for the message itself
async def test_tiny_fragments_do_not_multiply_memory(nursery: trio.Nursery) -> None:
    """A message of 50,000 one-byte fragments costs about its size, not fifty times it."""
    got: list[int] = []
    received = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        got.append(len(await ws.get_message()))
        received.set()

    server = await start_server(nursery, handler, max_message_size=2**20)
    client = RawClient(await trio.open_tcp_stream(HOST, server.port))
    count = 50_000
    fragments = frame(0x2, b"x", fin=False) + frame(0x0, b"x", fin=False) * (count - 2) + frame(0x0, b"x")
    async with client.stream:
        await client.handshake()
        tracemalloc.start()
        try:
            await client.stream.send_all(fragments)
            with trio.fail_after(30):
                await received.wait()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert got == [count]
    assert peak < len(fragments) + 4 * count, f"peak {peak} bytes for a {count}-byte message"


async def test_a_ping_flood_is_answered_within_bounded_memory(nursery: trio.Nursery) -> None:
    server = await start_server(nursery, echo_handler)
    client = RawClient(await trio.open_tcp_stream(HOST, server.port))
    async with client.stream:
        await client.handshake()
        flood = frame(0x9, b"p" * 125) * 5000
        pongs = 0
        async with trio.open_nursery() as sender:
            # Sent while the pongs are read: a peer that only sends would be
            # stopped by TCP once our pongs filled its receive window.
            sender.start_soon(client.stream.send_all, flood + frame(0x8, struct.pack("!H", 1000)))
            while True:
                opcode, _ = await client.receive_frame()
                if opcode == 0x8:
                    break
                pongs += 1
    assert pongs == 5000
