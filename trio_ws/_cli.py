"""``python -m trio_ws``: the demo server and an interactive client.

python -m trio_ws serve [--host H] [--port P] [--tls] [--compression deflate]
    serve the demo (a page at /, a chat at /chat, uploads at /upload, echo elsewhere), print its URL
python -m trio_ws URL [--subprotocol S] [--cafile F] [--proxy URL | --no-proxy] [--reconnect]
    connect (through the proxy the environment names, unless told otherwise;
    following redirects); each line typed is sent, each message received is
    printed; end of input (Ctrl-D) closes the connection with 1000.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import tempfile
from collections.abc import Sequence
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

__all__ = ["main"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def _say(*parts: object) -> None:
    print(*parts, flush=True)


def _throwaway_tls(host: str) -> tuple[ssl.SSLContext, str]:
    """A server context signed by a new, throw-away CA; the CA's PEM file to trust it."""
    try:
        import trustme
    except ImportError:
        raise SystemExit("--tls needs trustme: pip install trustme (or: pip install 'trio-ws[demo]')") from None
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(host, "localhost", "127.0.0.1", "::1").configure_cert(context)
    handle, path = tempfile.mkstemp(prefix="trio_ws-demo-ca-", suffix=".pem")
    with os.fdopen(handle, "wb") as file:
        file.write(ca.cert_pem.bytes())
    return context, path


async def _serve(host: str, port: int, tls: bool, compression: str | None) -> None:
    context, ca_file = _throwaway_tls(host) if tls else (None, None)
    try:
        await _run_demo(host, port, context, ca_file, compression)
    finally:
        if ca_file:
            os.unlink(ca_file)


async def _run_demo(
    host: str, port: int, context: ssl.SSLContext | None, ca_file: str | None, compression: str | None
) -> None:
    async with trio.open_nursery() as nursery:
        server: WebSocketServer = await nursery.start(
            partial(run_demo, host, port, ssl_context=context, compression=compression)
        )
        for listener in server.listeners:
            url = getattr(listener, "url", str(listener))
            page = url.replace("wss://", "https://").replace("ws://", "http://")
            _say(f"trio_ws demo: open {page}/ in a browser (chat at {url}/chat, echo at {url}/); Ctrl-C to stop")
        if ca_file:
            _say(f"TLS with a throw-away CA: trust {ca_file} (e.g. --cafile {ca_file} for the CLI client)")


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
            options = parser.parse_args(args[1:])
            trio.run(_serve, options.host, options.port, options.tls, options.compression)
            return 0
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
