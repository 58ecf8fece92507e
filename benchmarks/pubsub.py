"""Publish-to-receive latency of open_pubsub() for 32-byte messages, against broadcast().

    python benchmarks/pubsub.py [--count 2000] [--peers 10]

Three figures, p50 and p99, each message sent alone (paced, so that no queue
builds up and what is measured is one message's way, not a backlog):

- memory:// in one process: publish() to a subscriber task's receive();
- redis:// across two processes: this one publishes, a child process
  subscribes; the timestamp travels in the message, CLOCK_MONOTONIC
  (time.monotonic_ns), which is system-wide on Linux;
- broadcast() in one process to ``--peers`` loopback WebSocket connections:
  from the call to each client's receive.

redis:// needs redis-server (Debian's package) and coredis (``trio-ws[redis]``):
a redis-server is started on a free loopback port, without persistence, and
stopped at the end.  Loopback only; the whole run takes a few seconds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import struct
import subprocess
import sys
import time
from functools import partial

import trio
from _procs import free_port  # benchmarks/_procs.py (this directory is on sys.path)

import trio_ws

SIZE = 32
PACE = 0.001  # seconds between two messages


def stamp() -> bytes:
    return struct.pack("!Q", time.monotonic_ns()).ljust(SIZE, b".")


def age_us(message: str | bytes) -> float:
    assert isinstance(message, bytes) and len(message) == SIZE
    return (time.monotonic_ns() - struct.unpack("!Q", message[:8])[0]) / 1000


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def bench_bus(url: str, count: int) -> list[float]:
    samples: list[float] = []
    async with trio_ws.open_pubsub(url, max_backlog=count) as bus, bus.subscribe("bench") as messages:
        async with trio.open_nursery() as nursery:

            async def receive() -> None:
                for _ in range(count):
                    samples.append(age_us(await messages.receive()))

            nursery.start_soon(receive)
            for _ in range(count):
                await bus.publish("bench", stamp())
                await trio.sleep(PACE)
    return samples


async def subscriber(url: str, count: int) -> None:
    """The child process of the redis:// figure: print "ready", then the ages as JSON."""
    samples: list[float] = []
    async with trio_ws.open_pubsub(url, max_backlog=count) as bus, bus.subscribe("bench") as messages:
        print("ready", flush=True)
        with trio.move_on_after(30):
            for _ in range(count):
                samples.append(age_us(await messages.receive()))
    print(json.dumps(samples), flush=True)


async def publisher(url: str, count: int, child: subprocess.Popen[str]) -> list[float]:
    assert child.stdout is not None
    line = await trio.to_thread.run_sync(child.stdout.readline)
    assert line.strip() == "ready", line
    async with trio_ws.open_pubsub(url) as bus:
        for _ in range(count):
            await bus.publish("bench", stamp())
            await trio.sleep(PACE)
    out = await trio.to_thread.run_sync(child.stdout.read)
    samples: list[float] = json.loads(out)
    return samples


async def bench_broadcast(peers: int, count: int) -> list[float]:
    samples: list[float] = []

    async def handler(request: trio_ws.WebSocketRequest) -> None:
        ws = await request.accept()
        async for _ in ws:
            pass

    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(trio_ws.serve_websocket, handler, "127.0.0.1", 0, None))
        async with trio.open_nursery() as clients:
            received = trio.Semaphore(0, max_value=peers * count)

            async def client() -> None:
                async with trio_ws.open_websocket_url(f"ws://127.0.0.1:{server.port}/") as ws:
                    for _ in range(count):
                        samples.append(age_us(await ws.get_message()))
                        received.release()

            for _ in range(peers):
                clients.start_soon(client)
            while len(server.connections) < peers:
                await trio.sleep(0.01)
            for _ in range(count):
                trio_ws.broadcast(server.connections, stamp())
                for _ in range(peers):
                    await received.acquire()
                await trio.sleep(PACE)
        nursery.cancel_scope.cancel()
    return samples


def bench_redis(count: int) -> list[float] | str:
    program = shutil.which("redis-server")
    if program is None:
        return "skipped: no redis-server"
    port = free_port()
    server = subprocess.Popen(
        [program, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:  # bounded wait for the server to accept connections
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        url = f"redis://127.0.0.1:{port}/0"
        child = subprocess.Popen(
            [sys.executable, __file__, "--subscriber", url, "--count", str(count)], stdout=subprocess.PIPE, text=True
        )
        try:
            return trio.run(publisher, url, count, child)
        finally:
            child.kill()
            child.wait()
    finally:
        server.kill()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--peers", type=int, default=10)
    parser.add_argument("--subscriber", metavar="URL", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.subscriber:
        trio.run(subscriber, options.subscriber, options.count)
        return
    results = {
        "memory:// (one process)": trio.run(bench_bus, "memory://", options.count),
        "redis:// (two processes)": bench_redis(options.count),
        f"broadcast() to {options.peers} loopback peers": trio.run(bench_broadcast, options.peers, options.count),
    }
    print(f"{SIZE}-byte messages, {options.count} each, one every {PACE * 1000:g} ms; latency in microseconds")
    for name, samples in results.items():
        if isinstance(samples, str):
            print(f"  {name:40} {samples}")
        else:
            p50, p99 = percentiles(samples)
            print(f"  {name:40} p50 {p50:8.1f}   p99 {p99:8.1f}   (n={len(samples)})")


if __name__ == "__main__":
    main()
