"""A small WebSocket client built on trio_ws: send one message, print the reply.

    python examples/client.py ws://127.0.0.1:8000/ [--message TEXT] [--timeout SECONDS]

Exit status: 0 when a reply arrived, 1 when the connection closed first or
no reply came in time, 2 when the connection could not be opened.
"""

from __future__ import annotations

import argparse
import sys

import trio

from trio_ws import ConnectionClosed, HandshakeError, open_websocket_url


async def main(url: str, message: str, timeout: float) -> int:
    try:
        async with open_websocket_url(url) as ws:
            print(f"connected to {ws.url}")
            await ws.send_message(message)
            print(f"> {message}")
            with trio.move_on_after(timeout) as scope:
                reply = await ws.get_message()
                print(f"< {reply!r}")
            if scope.cancelled_caught:
                print(f"no reply within {timeout:g} s", file=sys.stderr)
                return 1
        # Leaving the block closed the connection with 1000 (Normal Closure).
        print(f"closed: {ws.closed}")
        return 0
    except HandshakeError as exc:
        # Refused (ConnectionRejected), timed out (ConnectionTimeout), or a
        # network or TLS error, which is then in exc.__cause__.
        print(f"could not connect to {url}: {exc!r} {exc.__cause__ or ''}".rstrip(), file=sys.stderr)
        return 2
    except ConnectionClosed as exc:
        print(f"the server closed the connection: {exc.reason}", file=sys.stderr)
        return 1


def cli() -> int:
    parser = argparse.ArgumentParser(description="Send one WebSocket message and print the reply (trio_ws example).")
    parser.add_argument("url", help="ws:// or wss:// URL, e.g. ws://127.0.0.1:8000/")
    parser.add_argument("--message", default="hello", help="text to send (default: hello)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the reply (default: 10)")
    args = parser.parse_args()
    try:
        return trio.run(main, args.url, args.message, args.timeout)
    except ValueError as exc:  # not a ws:// or wss:// URL
        parser.error(str(exc))


if __name__ == "__main__":
    sys.exit(cli())
