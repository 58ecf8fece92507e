"""``python -m trio_ws``: the demo server and an interactive client.

python -m trio_ws serve [--host H] [--port P] [--tls] [--compression deflate] [--workers N] [--pubsub URL]
    serve the demo (a page at /, a chat at /chat, uploads at /upload, echo elsewhere), print its URL;
    with --pubsub (redis://...), the chat reaches the pages of every worker
python -m trio_ws run MODULE:HANDLER [--host H] [--port P] [--workers N] [--tls CERT KEY]
                      [--compression deflate] [--http-handler MODULE:NAME] [--log-level L] ...
    serve HANDLER from N worker processes sharing the port (SO_REUSEPORT), print the URL when
    they all listen; SIGTERM or Ctrl-C stops them gracefully (1001 to every client)
python -m trio_ws URL [--subprotocol S] [--cafile F] [--proxy URL | --no-proxy] [--reconnect]
    connect (through the proxy the environment names, unless told otherwise;
    following redirects); each line typed is sent, each message received is
    printed; end of input (Ctrl-D) closes the connection with 1000.
"""

from __future__ import annotations

import argparse
import logging
import os
import ssl
import sys
import tempfile
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import trio

from ._client import open_websocket_url
from ._connection import WebSocketConnection
from ._demo import run_demo
from ._errors import ConnectionClosed, HandshakeError
from ._reconnect import reconnecting_websocket_url
from ._server import WebSocketServer
from ._url import parse_url
from ._workers import (
    DEFAULT_RESTART_BACKOFF,
    LOG_FORMAT,
    WorkerError,
    WorkerLogFilter,
    WorkerPool,
    _import_name,
    _run_pool,
    _server_options,
    _Spec,
    run_workers,
)

__all__ = ["main"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def _say(*parts: object) -> None:
    print(*parts, flush=True)


def _throwaway_cert(host: str) -> tuple[Any, str]:
    """A certificate for ``host`` signed by a new, throw-away CA; the CA's PEM file to trust it."""
    try:
        import trustme
    except ImportError:
        raise SystemExit("--tls needs trustme: pip install trustme (or: pip install 'trio-ws[demo]')") from None
    ca = trustme.CA()
    return ca.issue_cert(host, "localhost", "127.0.0.1", "::1"), _temp_file("ca", ca.cert_pem.bytes())


def _temp_file(what: str, content: bytes) -> str:
    handle, path = tempfile.mkstemp(prefix=f"trio_ws-demo-{what}-", suffix=".pem")
    with os.fdopen(handle, "wb") as file:
        file.write(content)
    return path


def _throwaway_tls(host: str) -> tuple[ssl.SSLContext, str]:
    """A server context signed by a new, throw-away CA; the CA's PEM file to trust it."""
    cert, ca_file = _throwaway_cert(host)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context, ca_file


async def _serve(host: str, port: int, tls: bool, compression: str | None, pubsub: str | None) -> None:
    context, ca_file = _throwaway_tls(host) if tls else (None, None)
    try:
        await _run_demo(host, port, context, ca_file, compression, pubsub)
    finally:
        if ca_file:
            os.unlink(ca_file)


async def _run_demo(
    host: str,
    port: int,
    context: ssl.SSLContext | None,
    ca_file: str | None,
    compression: str | None,
    pubsub: str | None,
) -> None:
    async with trio.open_nursery() as nursery:
        server: WebSocketServer = await nursery.start(
            partial(run_demo, host, port, ssl_context=context, compression=compression, pubsub=pubsub)
        )
        for listener in server.listeners:
            url = getattr(listener, "url", str(listener))
            page = url.replace("wss://", "https://").replace("ws://", "http://")
            _say(f"trio_ws demo: open {page}/ in a browser (chat at {url}/chat, echo at {url}/); Ctrl-C to stop")
        if ca_file:
            _say(f"TLS with a throw-away CA: trust {ca_file} (e.g. --cafile {ca_file} for the CLI client)")


def _configure_logging(level: str) -> None:
    """The parent of the workers logs as they do (LOG_FORMAT), as worker ``main``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(WorkerLogFilter("main"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level.upper())


class _Announce:
    """The ``task_status`` of the pool: says where it serves once every worker listens."""

    def __init__(self, describe: Callable[[WorkerPool], str]) -> None:
        self.describe = describe
        self.pool: WorkerPool | None = None

    def started(self, value: WorkerPool | None = None) -> None:
        assert value is not None
        self.pool = value
        _say(self.describe(value))


def _pids(pool: WorkerPool) -> str:
    return ", ".join(f"{worker}: {pid}" for worker, pid in sorted(pool.pids.items()))


def _exit_code(announce: _Announce) -> int:
    """0 when every worker stopped gracefully; 1 when some had to be killed."""
    pool = announce.pool
    return 1 if pool is not None and pool.killed else 0


async def _run(options: argparse.Namespace) -> int:
    def describe(pool: WorkerPool) -> str:
        return (
            f"trio_ws: serving {options.target} at {pool.url}/ with {len(pool.pids)} worker(s) "
            f"(pids {_pids(pool)}); Ctrl-C or SIGTERM to stop"
        )

    announce = _Announce(describe)
    await run_workers(
        options.target,
        options.host,
        options.port,
        workers=options.workers,
        tls=options.tls,
        http_handler=options.http_handler,
        compression=options.compression,
        disconnect_timeout=options.disconnect_timeout,
        max_connections=options.max_connections,
        log_level=options.log_level,
        grace_period=options.grace_period,
        task_status=announce,
    )
    return _exit_code(announce)


async def _serve_workers(
    host: str, port: int, tls: bool, compression: str | None, pubsub: str | None, workers: int
) -> int:
    """The demo in ``workers`` processes; with ``pubsub``, their chat rooms share one bus."""
    paths: tuple[str, str] | None = None
    ca_file = None
    if tls:  # files, for the workers to load
        cert, ca_file = _throwaway_cert(host)
        chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
        paths = (_temp_file("cert", chain), _temp_file("key", cert.private_key_pem.bytes()))
    server = _server_options(
        compression=compression,
        message_queue_size=1,
        max_message_size=16 * 2**20,
        receive_buffer_size=4096,
        connect_timeout=60,
        disconnect_timeout=5,
        ping_interval=None,
        ping_timeout=None,
        write_limit=2**16,
        server_header=None,
        origins=None,
        max_connections=None,
    )
    spec = _Spec("demo", None, None, paths, server, "INFO", 128, pubsub)

    def describe(pool: WorkerPool) -> str:
        page = pool.url.replace("wss://", "https://").replace("ws://", "http://")
        lines = [
            f"trio_ws demo: open {page}/ in a browser (chat at {pool.url}/chat, echo at {pool.url}/); Ctrl-C to stop",
            f"{len(pool.pids)} worker(s) (pids {_pids(pool)}); "
            + ("their chat rooms share the --pubsub bus" if pubsub else "each has its own chat room"),
        ]
        if ca_file:
            lines.append(f"TLS with a throw-away CA: trust {ca_file} (e.g. --cafile {ca_file} for the CLI client)")
        return "\n".join(lines)

    announce = _Announce(describe)
    try:
        await _run_pool(spec, host, port, workers, None, DEFAULT_RESTART_BACKOFF, True, announce)
    finally:
        for path in (ca_file, *(paths or ())):
            if path:
                os.unlink(path)
    return _exit_code(announce)


def _run_command(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trio_ws run",
        description="Serve MODULE:HANDLER (a coroutine function taking a WebSocketRequest, or a trio_ws.Router) "
        "from worker processes that share one port (SO_REUSEPORT).  SIGTERM or Ctrl-C stops them gracefully "
        "(1001 to every client); a second one kills them.  A worker that crashes is restarted.",
    )
    parser.add_argument(
        "target", metavar="MODULE:HANDLER", help="the handler, e.g. app:handler (imported by each worker)"
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"interface to bind (default {DEFAULT_HOST})")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free port)"
    )
    parser.add_argument("--workers", type=int, help="how many worker processes (default: one per CPU)")
    parser.add_argument(
        "--tls", nargs=2, metavar=("CERT", "KEY"), help="serve wss:// with this certificate and key (PEM)"
    )
    parser.add_argument("--compression", choices=["deflate"], help="accept permessage-deflate")
    parser.add_argument("--http-handler", metavar="MODULE:NAME", help="answers plain HTTP requests (default: 426)")
    parser.add_argument("--max-connections", type=int, help="per worker: more get 503")
    parser.add_argument(
        "--disconnect-timeout", type=float, default=5.0, help="seconds for each closing handshake on stop (default 5)"
    )
    parser.add_argument(
        "--grace-period", type=float, help="seconds after a stop before the workers are killed (default: timeout + 5)"
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO (default), WARNING, ERROR")
    options = parser.parse_args(args)
    for name in (options.target, options.http_handler):
        if name is not None:
            try:
                _import_name(name)
            except ValueError as exc:
                parser.error(str(exc))
    if options.workers is not None and options.workers < 1:
        parser.error("--workers must be at least 1")
    _configure_logging(options.log_level)
    try:
        return trio.run(_run, options)
    except WorkerError as exc:
        print(f"trio_ws run: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        parser.error(str(exc))


def _show(message: str | bytes) -> str:
    if isinstance(message, str):
        return f"< {message}"
    return f"< [binary, {len(message)} bytes] {message[:64].hex(' ')}{' ...' if len(message) > 64 else ''}"


async def _print_incoming(ws: WebSocketConnection, done: trio.CancelScope) -> None:
    try:
        while True:
            _say(_show(await ws.get_message()))
    except ConnectionClosed as exc:
        reason = exc.reason
        if reason is not None:
            _say(f"connection closed: {reason.code} {reason.name} {reason.reason or ''}".rstrip())
    done.cancel()


async def _read_lines(lines: trio.MemorySendChannel[str]) -> None:
    """Every line typed, for whichever connection is open; the channel closes at the end of input."""
    async with lines:
        while line := await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True):
            await lines.send(line.rstrip("\r\n"))


async def _session(ws: WebSocketConnection, lines: trio.MemoryReceiveChannel[str]) -> bool:
    """Lines typed go out, messages received are printed; ``True`` at the end of input."""
    _say(f"connected to {ws.url}" + (f" (subprotocol {ws.subprotocol})" if ws.subprotocol else ""))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_print_incoming, ws, nursery.cancel_scope)
        async for line in lines:
            try:
                await ws.send_message(line)
            except ConnectionClosed:
                return False
        nursery.cancel_scope.cancel()  # end of input: leave the block, which closes with 1000
        return True
    return False  # the connection closed (_print_incoming cancelled the nursery)


async def _client(
    url: str, subprotocols: list[str], cafile: str | None, proxy: str | bool | None, reconnect: bool
) -> int:
    parse_url(url)  # a bad URL is the command line's error (ValueError), before anything starts
    context = ssl.create_default_context(cafile=cafile) if cafile else None
    options: dict[str, Any] = {"subprotocols": subprotocols, "proxy": proxy, "follow_redirects": True}
    send_lines, lines = trio.open_memory_channel[str](0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_read_lines, send_lines)
        try:
            if reconnect:
                async with reconnecting_websocket_url(url, context, **options) as connections:
                    async for ws in connections:
                        if await _session(ws, lines):
                            break
                        _say("reconnecting...")
                return 0
            async with open_websocket_url(url, context, **options) as ws:
                await _session(ws, lines)
            closed = ws.closed
            return 0 if closed is None or closed.code in (1000, 1001) else 1
        except HandshakeError as exc:
            cause = f" ({exc.__cause__})" if exc.__cause__ else ""
            print(f"could not connect to {url}: {exc!r}{cause}", file=sys.stderr)
            return 2
        finally:
            nursery.cancel_scope.cancel()  # the line reader


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] == "serve":
            parser = argparse.ArgumentParser(
                prog="python -m trio_ws serve",
                description="Serve the demo: a page at / and, on the same port, a WebSocket chat at /chat, "
                "a streamed upload at /upload and an echo server at any other path.",
            )
            parser.add_argument("--host", default=DEFAULT_HOST, help=f"interface to bind (default {DEFAULT_HOST})")
            parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
            parser.add_argument("--tls", action="store_true", help="https/wss with a throw-away CA (needs trustme)")
            parser.add_argument("--compression", choices=["deflate"], help="accept permessage-deflate")
            parser.add_argument(
                "--workers", type=int, help="serve from N worker processes sharing the port (each its own chat room)"
            )
            parser.add_argument(
                "--pubsub",
                metavar="URL",
                help="carry the chat to every worker's pages over this bus (redis://host:port/db; trio-ws[redis])",
            )
            options = parser.parse_args(args[1:])
            if options.workers is not None:
                if options.workers < 1:
                    parser.error("--workers must be at least 1")
                _configure_logging("INFO")
                serve = partial(
                    _serve_workers, options.host, options.port, options.tls, options.compression, options.pubsub
                )
                return trio.run(serve, options.workers)
            trio.run(_serve, options.host, options.port, options.tls, options.compression, options.pubsub)
            return 0
        if args and args[0] == "run":
            return _run_command(args[1:])
        parser = argparse.ArgumentParser(
            prog="python -m trio_ws",
            description="Interactive WebSocket client: lines you type are sent, messages received are printed. "
            "Use 'python -m trio_ws serve' to run an echo server.",
        )
        parser.add_argument("url", help="ws:// or wss:// URL")
        parser.add_argument("--subprotocol", action="append", default=[], help="offer this subprotocol (repeatable)")
        parser.add_argument("--cafile", help="trust this CA bundle for wss:// (PEM)")
        proxies = parser.add_mutually_exclusive_group()
        proxies.add_argument(
            "--proxy", help="connect through this proxy (http://, https://, socks5://...; default: the environment's)"
        )
        proxies.add_argument("--no-proxy", action="store_true", help="connect directly, whatever the environment says")
        parser.add_argument(
            "--reconnect", action="store_true", help="when the connection is lost, connect again (with backoff)"
        )
        options = parser.parse_args(args)
        proxy: str | bool | None = None if options.no_proxy else (options.proxy or True)
        try:
            return trio.run(_client, options.url, options.subprotocol, options.cafile, proxy, options.reconnect)
        except ValueError as exc:
            parser.error(str(exc))
    except BaseException as exc:
        # Ctrl-C arrives as KeyboardInterrupt, or inside an ExceptionGroup
        # when it hit a task in a nursery.
        if isinstance(exc, BaseExceptionGroup):
            interrupted = exc.split(KeyboardInterrupt)[0] is not None
        else:
            interrupted = isinstance(exc, KeyboardInterrupt)
        if not interrupted:
            raise
        _say("stopped")
        return 130
