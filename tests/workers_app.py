"""Handlers for tests/test_workers.py: imported by each worker process as ``tests.workers_app:NAME``."""

from __future__ import annotations

import os

import trio

from trio_ws import ConnectionClosed, HTTPRequest, HTTPResponse, Router, WebSocketRequest

WORKER = os.environ.get("TRIO_WS_WORKER")


async def echo_pid(request: WebSocketRequest) -> None:
    """Answers each message with ``"<pid> <worker id> <message>"``; ``crash`` ends the process, ``stuck``
    makes the handler ignore the server's shutdown."""
    ws = await request.accept()
    try:
        async for message in ws:
            if message == "crash":
                os._exit(3)
            if message == "stuck":
                with trio.CancelScope(shield=True):
                    await trio.sleep_forever()
            await ws.send_message(f"{os.getpid()} {WORKER} {message}")
    except ConnectionClosed:
        pass


router = Router()
router.websocket("/pid")(echo_pid)


@router.http("/health")
async def health(request: HTTPRequest) -> HTTPResponse:
    return HTTPResponse(200, [(b"content-type", b"text/plain")], f"ok {os.getpid()}\n".encode())


not_callable = 42
