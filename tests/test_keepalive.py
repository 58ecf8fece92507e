"""Keepalive: ping_interval / ping_timeout, latency, and what a slow reader does to it."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel
import trio.testing

from trio_ws import (
    CloseReason,
    ConnectionClosed,
    ConnectionState,
    WebSocketConnection,
    WebSocketRequest,
    connect_websocket,
    open_websocket,
    serve_websocket,
)
from trio_ws._keepalive import SWEEP_PAYLOAD
from trio_ws.testing import websocket_pair

from .conftest import HOST, CloseWatcher, MemoryNetwork, RawClient, RawServerPeer, echo_handler, frame


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


# --- a server's keepalive: one task for all its connections (KeepaliveSweep) -------------


def task_names() -> list[str]:
    names: list[str] = []

    def walk(task: trio.lowlevel.Task) -> None:
        names.append(task.name)
        for child_nursery in task.child_nurseries:
            for child in child_nursery.child_tasks:
                walk(child)

    walk(trio.lowlevel.current_root_task())
    return names


async def answer(client: RawClient) -> None:
    """Answer every ping, until the server's Close."""
    while True:
        opcode, payload = await client.receive_frame()
        if opcode == 0x9:
            await client.stream.send_all(frame(0xA, payload))
        elif opcode == 0x8:
            return


async def close_cleanly(client: RawClient) -> None:
    """Send a Close (1000) and read up to the server's answering Close."""
    await client.stream.send_all(frame(0x8, b"\x03\xe8"))
    while (await client.receive_frame())[0] != 0x8:
        pass


async def test_a_server_pings_all_its_connections_from_one_task(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, memory_network: MemoryNetwork
) -> None:
    accepted: list[WebSocketConnection] = []

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        accepted.append(ws)
        await ws.wait_closed()

    server = await memory_network.start_server(nursery, handler, ping_interval=2, ping_timeout=1)
    clients = [await memory_network.connect() for _ in range(5)]
    start = trio.current_time()
    for client in clients:
        await client.handshake()
    for _ in range(2):  # two rounds of pings, each answered
        for client in clients:
            assert await client.receive_frame() == (0x9, SWEEP_PAYLOAD)
            await client.stream.send_all(frame(0xA, SWEEP_PAYLOAD))
    assert trio.current_time() - start == pytest.approx(4, abs=0.1)
    names = task_names()
    assert names.count("trio_ws._keepalive.KeepaliveSweep.run") == 1
    assert "trio_ws._keepalive.keepalive" not in names  # no task per connection
    async with trio.open_nursery() as answering:  # five more rounds, answered
        for client in clients:
            answering.start_soon(answer, client)
        await trio.sleep(10)
        answering.cancel_scope.cancel()
    assert [ws.state for ws in accepted] == [ConnectionState.OPEN] * 5
    assert all(ws.latency is not None for ws in accepted)
    assert server._keepalive is not None
    assert len(server._keepalive) == 5
    for client in clients:  # a clean close each: the sweep lets go of them
        await close_cleanly(client)
    for ws in accepted:
        await ws.wait_closed()
    assert len(server._keepalive) == 0


@pytest.mark.deadline(60)  # 35 s of the virtual clock
async def test_the_sweep_closes_the_silent_peer_and_keeps_the_others(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, memory_network: MemoryNetwork
) -> None:
    closes: list[CloseReason | None] = []
    accepted: list[WebSocketConnection] = []

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        accepted.append(ws)
        await ws.wait_closed()
        closes.append(ws.closed)

    await memory_network.start_server(nursery, handler, ping_interval=3, ping_timeout=2)
    alive, silent = await memory_network.connect(), await memory_network.connect()
    await alive.handshake()
    await silent.handshake()
    start = trio.current_time()
    async with trio.open_nursery() as answering:
        answering.start_soon(answer, alive)
        assert (await silent.receive_frame())[0] == 0x9  # never answered
        opcode, payload = await silent.receive_frame()
        assert opcode == 0x8
        assert payload[:2] == b"\x03\xf3"  # 1011
        assert b"keepalive: no pong within 2 s" in payload
        assert trio.current_time() - start == pytest.approx(3 + 2, abs=0.1)  # interval, then timeout
        await accepted[1].wait_closed()  # our Close is never answered: the closing handshake gets ping_timeout
        assert trio.current_time() - start == pytest.approx(3 + 2 + 2, abs=0.1)
        await trio.sleep(30)
        assert [ws.state for ws in accepted] == [ConnectionState.OPEN, ConnectionState.CLOSED]
        answering.cancel_scope.cancel()
    await close_cleanly(alive)
    await accepted[0].wait_closed()
    assert closes[0] is not None
    assert closes[0].code == 1011


@pytest.mark.deadline(60)  # 40 s of the virtual clock
async def test_the_sweep_waits_while_a_server_application_does_not_read(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, memory_network: MemoryNetwork
) -> None:
    """The server's inbox is full and unread: no ping, no close; the peer is not at fault.
    Once the handler reads, the sweep pings again, and a peer that never answers is closed."""
    read = trio.Event()
    got: list[str | bytes] = []
    closes: list[CloseReason | None] = []

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await read.wait()
        try:
            while True:
                got.append(await ws.get_message())
        except ConnectionClosed as exc:
            closes.append(exc.reason)

    await memory_network.start_server(nursery, handler, ping_interval=1, ping_timeout=1, message_queue_size=1)
    client = await memory_network.connect()
    await client.handshake()
    for n in range(3):
        await client.stream.send_all(frame(0x1, f"message {n}".encode()))
    with trio.move_on_after(30):
        opcode, _ = await client.receive_frame()
        pytest.fail(f"the server sent opcode {opcode:#x} while its application was not reading")
    resumed = trio.current_time()
    read.set()
    assert (await client.receive_frame())[0] == 0x9  # the sweep pings again; no pong
    assert (await client.receive_frame())[0] == 0x8
    assert trio.current_time() - resumed <= 1 + 1 + 0.1
    assert got == ["message 0", "message 1", "message 2"]
    assert closes[0] is not None
    assert closes[0].code == 1011


async def test_the_sweep_serves_connections_in_a_callers_handler_nursery(
    autojump_clock: trio.testing.MockClock, memory_network: MemoryNetwork
) -> None:
    """With ``handler_nursery``, connections live in the caller's nursery and may outlive
    the server's ``run()``: the sweep lives there too, pings them after ``run()`` was
    cancelled, and returns once the last has left, so that the nursery can close."""
    closes: list[CloseReason | None] = []

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.wait_closed()
        closes.append(ws.closed)

    async with trio.open_nursery() as handlers:
        async with trio.open_nursery() as serving:
            options = {"ping_interval": 2, "ping_timeout": 1, "handler_nursery": handlers}
            await memory_network.start_server(serving, handler, **options)
            client = await memory_network.connect()
            await client.handshake()
            start = trio.current_time()
            serving.cancel_scope.cancel()  # the server stops; the connection lives on
        assert task_names().count("trio_ws._keepalive.KeepaliveSweep.run") == 1
        assert (await client.receive_frame()) == (0x9, SWEEP_PAYLOAD)
        await client.stream.send_all(frame(0xA, SWEEP_PAYLOAD))
        assert (await client.receive_frame()) == (0x9, SWEEP_PAYLOAD)  # not answered
        opcode, payload = await client.receive_frame()
        assert (opcode, payload[:2]) == (0x8, b"\x03\xf3")
        assert trio.current_time() - start == pytest.approx(2 + 2 + 1, abs=0.1)
        await client.stream.send_all(frame(0x8, payload[:2]))  # the closing handshake completes
    # (the nursery closed: the sweep returned with its last connection)
    assert "trio_ws._keepalive.KeepaliveSweep.run" not in task_names()
    assert closes[0] is not None
    assert closes[0].code == 1011


async def test_the_sweep_pings_every_interval_when_the_timeout_is_longer(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, memory_network: MemoryNetwork
) -> None:
    """A pong schedules the next ping ``ping_interval`` later, even while the sweep sleeps
    toward a later pong deadline (``ping_timeout`` > ``ping_interval``)."""
    await memory_network.start_server(nursery, CloseWatcher(), ping_interval=1, ping_timeout=5)
    client = await memory_network.connect()
    await client.handshake()
    start = trio.current_time()
    times = []
    for _ in range(4):
        assert await client.receive_frame() == (0x9, SWEEP_PAYLOAD)
        times.append(trio.current_time() - start)
        await client.stream.send_all(frame(0xA, SWEEP_PAYLOAD))
    assert times == pytest.approx([1, 2, 3, 4], abs=0.05)
    await close_cleanly(client)


async def test_a_server_with_keepalive_shuts_down_without_waiting_for_the_sweep(
    autojump_clock: trio.testing.MockClock, memory_network: MemoryNetwork
) -> None:
    """aclose() closes the connections; run() returns as soon as they are gone, not at
    the sweep's next ping (30 s away here)."""

    async def answer_close(client: RawClient) -> None:
        await client.handshake()
        while True:
            opcode, payload = await client.receive_frame()
            if opcode == 0x8:
                await client.stream.send_all(frame(0x8, payload[:2]))
                return

    async with trio.open_nursery() as clients:
        async with trio.open_nursery() as serving:
            server = await memory_network.start_server(serving, echo_handler, ping_interval=30, ping_timeout=30)
            for _ in range(3):
                clients.start_soon(answer_close, await memory_network.connect())
            await trio.testing.wait_all_tasks_blocked()
            assert len(server.connections) == 3
            started = trio.current_time()
            await server.aclose()
        assert trio.current_time() - started < 1  # run() returned: its nursery closed
