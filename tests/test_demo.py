"""The demo server (python -m trio_ws serve): page, chat, ticks, echo, upload."""

from __future__ import annotations

import hashlib
import json
import os
from functools import partial

import pytest
import trio

from trio_ws import ConnectionClosed, WebSocketServer, _demo, open_websocket
from trio_ws._demo import MAX_MESSAGE_SIZE, run_demo

from .conftest import HOST, RawClient


@pytest.fixture
async def demo(nursery: trio.Nursery) -> WebSocketServer:
    server: WebSocketServer = await nursery.start(partial(run_demo, HOST, 0))
    return server


async def next_of(ws: object, kind: str) -> dict[str, object]:
    """The next JSON message of type ``kind`` (skipping ticks and others)."""
    while True:
        message = json.loads(await ws.get_message())  # type: ignore[attr-defined]
        if message["type"] == kind:
            return message  # type: ignore[no-any-return]


async def test_page(demo: WebSocketServer) -> None:
    client = RawClient(await trio.open_tcp_stream(HOST, demo.port))
    async with client.stream:
        await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        response = await client.receive_eof()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"text/html" in head
    assert b"new WebSocket(url" in body
    assert b"bufferedAmount" in body


async def test_chat_broadcast_and_ticks(demo: WebSocketServer) -> None:
    async with (
        open_websocket(HOST, demo.port, "/chat", use_ssl=False, subprotocols=["chat.v1"]) as alice,
        open_websocket(HOST, demo.port, "/chat", use_ssl=False, subprotocols=["chat.v1"]) as bob,
    ):
        assert alice.subprotocol == bob.subprotocol == "chat.v1"
        tick = await next_of(alice, "tick")  # the server speaks first
        assert isinstance(tick["time"], float)
        await alice.send_message("hello, everyone")
        for ws in (alice, bob):
            chat = await next_of(ws, "chat")
            assert chat["text"] == "hello, everyone"
            assert str(chat["name"]).startswith("guest-")
        await bob.send_message(b"\x00\x01")
        assert (await next_of(alice, "chat"))["text"] == "[2 bytes of binary]"
    async with open_websocket(HOST, demo.port, "/chat", use_ssl=False) as carol:
        assert carol.subprotocol is None
        assert (await next_of(carol, "join"))["online"] == 1


async def test_echo_elsewhere(demo: WebSocketServer) -> None:
    async with open_websocket(HOST, demo.port, "/", use_ssl=False, subprotocols=["x"]) as ws:
        assert ws.subprotocol == "x"
        await ws.send_message("echo?")
        assert await ws.get_message() == "echo?"


async def test_a_slow_page_is_dropped(demo: WebSocketServer) -> None:
    """A member that never reads is closed with 1013 (Try Again Later) once more than
    write_limit bytes wait for it; the others get every message meanwhile.

    Real time (not autojump_clock): the bytes pile up because TCP pushes back on
    the server's writes, which only real sockets do.  The slow page, once it
    reads, gets the messages queued before the close, then the Close.
    """
    async with (
        open_websocket(HOST, demo.port, "/chat", use_ssl=False, message_queue_size=0) as slow,
        open_websocket(HOST, demo.port, "/chat", use_ssl=False) as chatty,
    ):
        big = "x" * 1000
        for number in range(1500):
            await chatty.send_message(f"{number} {big}")
            assert (await next_of(chatty, "chat"))["text"] == f"{number} {big}"[:2000]
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await slow.get_message()
        assert info.value.reason is not None
        assert info.value.reason.code == 1013


async def test_the_chat_runs_no_task_per_page(demo: WebSocketServer) -> None:
    """broadcast() needs no outbox or writer task per page: a chat page costs its handler
    (and its connection's reader), as an echo connection does."""

    def tasks() -> int:
        root = trio.lowlevel.current_root_task()
        assert root is not None
        count, pending = 0, [root]
        while pending:
            task = pending.pop()
            count += 1
            for nursery in task.child_nurseries:
                pending.extend(nursery.child_tasks)
        return count

    async with open_websocket(HOST, demo.port, "/echo", use_ssl=False) as echo:
        await echo.send_message("x")
        await echo.get_message()
        per_echo = tasks()
    async with open_websocket(HOST, demo.port, "/chat", use_ssl=False) as chat:
        await next_of(chat, "join")
        per_chat = tasks()
    assert per_chat == per_echo


async def test_upload_counts_and_hashes_in_pieces(demo: WebSocketServer) -> None:
    """/upload answers each message with its size and SHA-256, over max_message_size too."""
    data = os.urandom(8 * 2**20)
    chunks = [data[i : i + 2**16] for i in range(0, len(data), 2**16)]
    text = "h\u00e9llo \U0001f600 " * 1000
    async with open_websocket(HOST, demo.port, "/upload", use_ssl=False) as ws:
        await ws.send_message(iter(chunks))  # one message, in 128 frames
        ack = await next_of(ws, "upload")
        assert ack["bytes"] == len(data)
        assert ack["sha256"] == hashlib.sha256(data).hexdigest()
        pieces, largest = ack["pieces"], ack["largest"]
        assert isinstance(pieces, int)
        assert isinstance(largest, int)
        assert pieces > 1  # taken as it came,
        assert largest <= 2**20  # a read at a time
        await ws.send_message(text)  # a text message counts as its UTF-8
        ack = await next_of(ws, "upload")
        assert ack["bytes"] == len(text.encode())
        assert ack["sha256"] == hashlib.sha256(text.encode()).hexdigest()
        await ws.send_message(b"")
        ack = await next_of(ws, "upload")
        assert (ack["bytes"], ack["sha256"], ack["largest"]) == (0, hashlib.sha256().hexdigest(), 0)


async def test_upload_takes_more_than_max_message_size(demo: WebSocketServer) -> None:
    """One frame over the connection's max_message_size: receive_fragments' bound is the one that counts."""
    data = os.urandom(MAX_MESSAGE_SIZE + 1)
    async with open_websocket(HOST, demo.port, "/upload", use_ssl=False) as ws:
        await ws.send_message(data)
        ack = await next_of(ws, "upload")
    assert ack["bytes"] == len(data)
    assert ack["sha256"] == hashlib.sha256(data).hexdigest()


async def test_upload_too_big(demo: WebSocketServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A message over UPLOAD_MAX_SIZE closes the connection with 1009."""
    monkeypatch.setattr(_demo, "UPLOAD_MAX_SIZE", 1000)
    async with open_websocket(HOST, demo.port, "/upload", use_ssl=False) as ws:
        await ws.send_message(b"x" * 1000)
        assert (await next_of(ws, "upload"))["bytes"] == 1000
        with pytest.raises(ConnectionClosed) as info:
            # The server may close before the last piece is out: then the send raises.
            await ws.send_message([b"x" * 600, b"x" * 401])
            await ws.get_message()
    assert info.value.reason is not None
    assert info.value.reason.code == 1009


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_the_chat_across_two_demos_on_one_bus(
    nursery: trio.Nursery, backend: str, request: pytest.FixtureRequest
) -> None:
    """Two demos (as two workers would be) on one bus: a page on each hears the other.
    (Real workers, and the worker ids the pages show: tests/test_browser.py.)"""
    url = "memory://demo-test" if backend == "memory" else request.getfixturevalue("redis_server").url
    servers: list[WebSocketServer] = [await nursery.start(partial(run_demo, HOST, 0, pubsub=url)) for _ in range(2)]
    with trio.fail_after(10):
        async with (
            open_websocket(HOST, servers[0].port, "/chat", use_ssl=False) as ann,
            open_websocket(HOST, servers[1].port, "/chat", use_ssl=False) as ben,
        ):
            await next_of(ann, "tick")
            await next_of(ben, "tick")
            assert (await next_of(ann, "join"))["online"] == 1  # ann's own join...
            assert (await next_of(ann, "join"))["online"] == 1  # ...and ben's, on the other demo
            await ann.send_message("hello from the first demo")
            for ws in (ann, ben):
                chat = await next_of(ws, "chat")
                assert chat["text"] == "hello from the first demo"


async def test_the_chat_says_which_worker_and_goes_local_when_the_bus_is_down(
    nursery: trio.Nursery, redis_server: object, caplog: pytest.LogCaptureFixture
) -> None:
    """With the bus down, the pages of this worker still hear what is said here (and a
    warning says why the others do not)."""
    url = redis_server.url  # type: ignore[attr-defined]
    server: WebSocketServer = await nursery.start(partial(run_demo, HOST, 0, pubsub=url))
    with trio.fail_after(10):
        async with open_websocket(HOST, server.port, "/chat", use_ssl=False) as ann:
            await ann.send_message("through the bus")
            chat = await next_of(ann, "chat")
            assert (chat["text"], chat["worker"]) == ("through the bus", None)
            redis_server.stop()  # type: ignore[attr-defined]
            await ann.send_message("while it is down")
            assert (await next_of(ann, "chat"))["text"] == "while it is down"
    assert any("the chat's bus is down" in record.getMessage() for record in caplog.records)
