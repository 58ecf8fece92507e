"""Keepalive: ping_interval / ping_timeout, latency, and what a slow reader does to it."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel
import trio.testing

from trio_ws import (
    ConnectionClosed,
    ConnectionState,
    WebSocketRequest,
    connect_websocket,
    open_websocket,
    serve_websocket,
)
from trio_ws.testing import websocket_pair

from .conftest import HOST, CloseWatcher, MemoryNetwork, RawServerPeer, echo_handler, frame


async def test_latency_is_measured(autojump_clock: trio.testing.MockClock, memory_network: MemoryNetwork) -> None:
    async with websocket_pair() as (_, server):
        pass
    assert server.latency is None
    async with trio.open_nursery() as nursery:
        port = await memory_network.start_raw_server(nursery, answer_pings)
        ws = await connect_websocket(nursery, HOST, port, "/", use_ssl=False, ping_interval=5, ping_timeout=2)
        assert ws.latency is None
        await trio.sleep(16)  # three pings
        assert ws.latency is not None
        assert 0 <= ws.latency < 2
        assert ws.state is ConnectionState.OPEN
        nursery.cancel_scope.cancel()


async def answer_pings(peer: RawServerPeer) -> None:
    await peer.accept()
    while True:
        opcode, payload = await peer.receive_frame()
        if opcode == 0x9:
            await peer.stream.send_all(frame(0xA, payload, mask=False))


async def test_a_silent_peer_is_closed_with_1011(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, memory_network: MemoryNetwork
) -> None:
    async def silent(peer: RawServerPeer) -> None:
        await peer.accept()
        await peer.receive_eof()  # reads everything, answers nothing

    port = await memory_network.start_raw_server(nursery, silent)
    ws = await connect_websocket(nursery, HOST, port, "/", use_ssl=False, ping_interval=3, ping_timeout=2)
    start = trio.current_time()
    with pytest.raises(ConnectionClosed) as info:
        await ws.get_message()
    assert info.value.reason is not None
    assert info.value.reason.code == 1011
    assert "keepalive" in (info.value.reason.reason or "")
    assert trio.current_time() - start == pytest.approx(3 + 2, abs=0.1)  # interval, then timeout
    assert ws.state is ConnectionState.CLOSING  # our Close is out; the peer will not answer it either
    await trio.sleep(2.1)  # the closing handshake gets ping_timeout, then the transport is closed
    assert ws.state is ConnectionState.CLOSED


async def test_server_side_keepalive(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, memory_network: MemoryNetwork
) -> None:
    handler = CloseWatcher()
    closes, done = handler.closes, handler.done

    await memory_network.start_server(nursery, handler, ping_interval=1, ping_timeout=1)
    client = await memory_network.connect()
    async with client.stream:
        await client.handshake()
        opcode, _ = await client.receive_frame()  # the server's ping, never answered
        assert opcode == 0x9
        await done.wait()
    assert closes[0] is not None
    assert closes[0].code == 1011


@pytest.mark.deadline(60)  # 35 s of the virtual clock
async def test_a_slow_reader_is_not_taken_for_a_dead_peer(
    autojump_clock: trio.testing.MockClock, memory_network: MemoryNetwork
) -> None:
    """With the queue full and unread, keepalive pauses; it resumes when the application reads."""
    async with trio.open_nursery() as nursery:

        async def flood(request: WebSocketRequest) -> None:
            ws = await request.accept()
            for n in range(3):
                await ws.send_message(f"message {n}")
            await trio.sleep_forever()

        await memory_network.start_server(nursery, flood)
        async with open_websocket(
            HOST, memory_network.port, "/", use_ssl=False, message_queue_size=1, ping_interval=1, ping_timeout=1
        ) as ws:
            await trio.sleep(30)  # the application does not read for a long time
            assert ws.state is ConnectionState.OPEN
            assert [await ws.get_message() for _ in range(3)] == ["message 0", "message 1", "message 2"]
            await trio.sleep(5)  # keepalive runs again, and the peer answers
            assert ws.state is ConnectionState.OPEN
            assert ws.latency is not None
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("interval", "timeout"), [(0, None), (-1, None), (1, 0), (None, -2)])
async def test_keepalive_arguments_are_checked(interval: float | None, timeout: float | None) -> None:
    with pytest.raises(ValueError, match="ping_"):
        async with websocket_pair(ping_interval=interval, ping_timeout=timeout):
            pytest.fail("must not open")  # pragma: no cover
    with pytest.raises(ValueError, match="ping_"):
        await serve_websocket(echo_handler, HOST, 0, None, ping_interval=interval, ping_timeout=timeout)
