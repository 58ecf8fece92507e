"""One worker process of :func:`trio_ws.run_workers`: ``python -m trio_ws._worker CONFIG``.

The parent gives the configuration as one JSON argument (see
``WorkerPool._spawn``) and a socket (``control_fd``) to report on: one JSON
line ``{"event": "ready"}`` once the server listens, or ``{"event": "error",
"message": ...}`` when it cannot start (exit code 2).  SIGTERM, SIGINT, or the
parent's end of that socket closing (the parent is gone) stops the worker
gracefully: :meth:`WebSocketServer.aclose`, 1001 to every connection within
``disconnect_timeout``; then it exits with 0.
"""

from __future__ import annotations

import importlib
import json
import logging
import signal
import socket
import ssl
import sys
from collections.abc import Sequence
from typing import Any

import trio

from ._deflate import Deflate
from ._router import Router
from ._server import WebSocketServer
from ._workers import LOG_FORMAT, WorkerLogFilter

__all__ = ["main"]

LOGGER = logging.getLogger("trio_ws.workers")


class StartError(Exception):
    """The worker cannot serve: the message goes to the parent."""


def load(name: str) -> Any:
    """The object ``"MODULE:ATTRIBUTE"`` names (attribute may be dotted)."""
    module_name, _, attribute = name.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise StartError(f"cannot import module {module_name!r}: {type(exc).__name__}: {exc}") from exc
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise StartError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not callable(obj):
        raise StartError(f"{name} is not callable: {obj!r}")
    return obj


def _configure_logging(worker: int, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(WorkerLogFilter(str(worker)))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)


async def _listener(config: dict[str, Any]) -> trio.SocketListener:
    """This worker's own SO_REUSEPORT listener, or the listening socket the parent handed down."""
    inherited = config["listener_fd"]
    if inherited is not None:
        return trio.SocketListener(trio.socket.from_stdlib_socket(socket.socket(fileno=inherited)))
    sock = trio.socket.socket(config["family"], socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        await sock.bind(tuple(config["address"]))
        sock.listen(config["backlog"])
    except OSError as exc:
        sock.close()
        raise StartError(f"cannot listen on {config['address'][0]} port {config['address'][1]}: {exc}") from exc
    return trio.SocketListener(sock)


def _tls(listener: trio.SocketListener, tls: list[str] | None) -> trio.abc.Listener[trio.abc.Stream]:
    if tls is None:
        return listener
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(*tls)
    except (OSError, ssl.SSLError) as exc:
        raise StartError(f"cannot load the TLS certificate {tls[0]!r} and key {tls[1]!r}: {exc}") from exc
    return trio.SSLListener(listener, context, https_compatible=True)


async def _serve_handler(
    config: dict[str, Any], listener: trio.abc.Listener[trio.abc.Stream], *, task_status: trio.TaskStatus[Any]
) -> None:
    handler = load(config["target"])
    http_handler = load(config["http_handler"]) if config["http_handler"] else None
    if http_handler is None and isinstance(handler, Router):
        http_handler = handler.handle_http
    options = dict(config["server"])
    if isinstance(options["compression"], dict):  # a Deflate, sent as JSON
        options["compression"] = Deflate(**options["compression"]["deflate"])
    server = WebSocketServer(handler, [listener], http_handler=http_handler, **options)
    await server.run(task_status=task_status)


async def _serve_demo(
    config: dict[str, Any], listener: trio.abc.Listener[trio.abc.Stream], *, task_status: trio.TaskStatus[Any]
) -> None:
    from ._demo import run_demo

    await run_demo(
        "",
        0,
        listeners=[listener],
        compression=config["server"]["compression"],
        pubsub=config["pubsub"],
        task_status=task_status,
    )


async def _stop_on_signal_or_eof(control: trio.SocketStream, stop: trio.Event) -> None:
    async def eof() -> None:
        while await control.receive_some(4096):
            pass  # the parent never writes; this is only the end of its side
        if not stop.is_set():
            LOGGER.info("the parent stops (or is gone): closing the connections (1001) and stopping")
        stop.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(eof)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                if not stop.is_set():
                    LOGGER.info("%s: closing the connections (1001) and stopping", signal.Signals(signum).name)
                stop.set()


async def _report(control: trio.SocketStream, event: str, **fields: object) -> None:
    try:
        await control.send_all(json.dumps({"event": event, **fields}).encode() + b"\n")
    except trio.BrokenResourceError:
        pass  # the parent is gone; we stop anyway


async def _run(config: dict[str, Any]) -> int:
    control = trio.SocketStream(trio.socket.from_stdlib_socket(socket.socket(fileno=config["control_fd"])))
    async with control, trio.open_nursery() as nursery:
        stop = trio.Event()
        # Signals first: a SIGTERM that comes while we start up still stops us gracefully.
        nursery.start_soon(_stop_on_signal_or_eof, control, stop)
        try:
            listener = _tls(await _listener(config), config["tls"])
            serve = _serve_demo if config["kind"] == "demo" else _serve_handler
            server: WebSocketServer = await nursery.start(serve, config, listener)
        except StartError as exc:
            LOGGER.debug("cannot start: %s", exc)
            await _report(control, "error", message=str(exc))
            nursery.cancel_scope.cancel()
            return 2
        await _report(control, "ready", port=server.port)
        LOGGER.debug("listening on %s", server.listeners[0])
        await stop.wait()
        await server.aclose()
        nursery.cancel_scope.cancel()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    config = json.loads(args[0])
    _configure_logging(config["id"], config["log_level"])
    # Ignored until trio's receiver takes them (the first thing _run does):
    # the parent's stop also reaches us as the end of the control socket, which
    # cannot be lost.  And trio hands a signal still pending when its receiver
    # closes back to the handler it found: ignored, a second SIGTERM (a process
    # group's and the parent's) does not kill a worker that is exiting cleanly.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return trio.run(_run, config)


if __name__ == "__main__":
    sys.exit(main())
