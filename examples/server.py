"""A small WebSocket echo server built on trio_ws.

    python examples/server.py [--host 127.0.0.1] [--port 8000]

Each connection is accepted (with the first subprotocol the client offers, if
any) and every message it sends is sent back.  Connections that open and
close are logged on standard output.  Ctrl-C or SIGTERM stops the server
gracefully: it cancels the server, and trio_ws closes every open connection
with 1001 (Going Away) before the program exits.
"""

from __future__ import annotations

import argparse
import signal

import trio

from trio_ws import ConnectionClosed, Endpoint, WebSocketRequest, WebSocketServer, serve_websocket


async def echo(request: WebSocketRequest) -> None:
    """Handle one connection: accept it, then echo until the client leaves."""
    subprotocol = request.proposed_subprotocols[0] if request.proposed_subprotocols else None
    ws = await request.accept(subprotocol=subprotocol)
    peer = ws.remote
    who = f"{peer.address}:{peer.port}" if isinstance(peer, Endpoint) else peer
    print(f"{who} connected to {request.path}", flush=True)
    try:
        while True:
            message = await ws.get_message()
            await ws.send_message(message)
    except ConnectionClosed as exc:
        # Raised by get_message() or send_message() once the connection is
        # closed; the reason says who closed it and why.
        print(f"{who} left: {exc.reason}", flush=True)
    # Returning closes the connection (1000) if it is still open.


async def main(host: str, port: int) -> None:
    async with trio.open_nursery() as nursery:
        server: WebSocketServer = await nursery.start(serve_websocket, echo, host, port, None)
        for listener in server.listeners:
            print(f"listening on {getattr(listener, 'url', listener)}/", flush=True)
        # Turn Ctrl-C and SIGTERM into a cancellation of the server: a clean
        # shutdown, instead of a KeyboardInterrupt raised wherever it lands.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                print(f"{signal.Signals(signum).name}: shutting down", flush=True)
                nursery.cancel_scope.cancel()
                break


def cli() -> None:
    parser = argparse.ArgumentParser(description="WebSocket echo server (trio_ws example).")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port, 0 for any free one (default: 8000)")
    args = parser.parse_args()
    trio.run(main, args.host, args.port)


if __name__ == "__main__":
    cli()
