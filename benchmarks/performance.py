"""Every performance target of trio_ws in one command, and whether each is met.

    python benchmarks/performance.py            # the full runs, about 22 minutes on 2 cores
    python benchmarks/performance.py --quick    # one short round of each, about 6 minutes
    python benchmarks/performance.py --only tls compression   # some parts

It runs the benchmark scripts of this directory one after the other (never
two at once: they would measure each other), each in its own process with
this interpreter, reads the JSON each leaves in ``benchmarks/results/``, and
prints one table: each target, the figure measured, met or not.  The table
is saved as ``results/performance-STAMP.md``.

Parts (in this order):

- ``plain``: ``bench.py --floor``, trio_ws against its peers and raw trio on
  plain TCP, with ``floor_trio`` (the least a WebSocket over trio does) for
  the handshake target;
- ``tls``: ``bench.py --tls --floor``, the same over TLS 1.3 against raw trio
  over ``trio.SSLStream`` (``floor_trio`` over TLS shows what the WebSocket
  handshakes add to a TLS handshake, which raw trio does not make);
- ``compression``: ``compression.py``, permessage-deflate memory, ratio and
  speed against websockets.trio;
- ``idle``: ``idle.py``, many idle connections to one server process;
- ``picows``: ``bench.py --peer picows --role client``, the client role against a
  picows/uvloop server (raw trio against a uvloop echo).

Each script can be run alone, with more options; benchmarks/README.md says how.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

# (part, script and arguments, quick arguments, the results file pattern)
PARTS: dict[str, tuple[list[str], list[str], str]] = {
    "plain": (["bench.py", "--floor"], ["--quick"], "bench-*.json"),
    "tls": (["bench.py", "--tls", "--floor"], ["--quick"], "bench-*-tls.json"),
    "compression": (["compression.py"], ["--quick"], "compression-*.json"),
    "idle": (["idle.py"], ["--quick"], "idle-*.json"),
    "picows": (
        ["bench.py", "--peer", "picows", "--role", "client", "--only", "64 KiB MB/s", "1 MiB MB/s"],
        ["--rounds", "1"],
        "bench-*-picows.json",
    ),
}


def run_part(name: str, quick: bool, reuse: bool = False) -> dict[str, Any] | None:
    """Run one part's script; its results file, or ``None`` if it failed or left none.
    ``reuse``: run nothing, read the part's newest results file."""
    arguments, quick_arguments, pattern = PARTS[name]
    command = [sys.executable, str(HERE / arguments[0]), *arguments[1:], *(quick_arguments if quick else [])]
    started = 0.0
    if not reuse:
        print(f"== {name}: {' '.join(command[1:])}", flush=True)
        started = time.time()
        result = subprocess.run(command, check=False)
        if result.returncode != 0 and not (name == "idle" and result.returncode == 1):
            # (idle.py exits 1 when a check fails, the memory target among them: the table says which)
            print(f"== {name} failed (exit status {result.returncode})", flush=True)
            return None
    newest = [p for p in RESULTS.glob(pattern) if p.stat().st_mtime >= started - 1]  # (started 0: any)
    if name == "plain":  # bench-*.json also matches the --tls and --peer files
        newest = [p for p in newest if p.stem.count("-") == 2]
    if not newest:
        print(f"== {name} left no {pattern} in {RESULTS}", flush=True)
        return None
    path = max(newest, key=lambda p: p.stat().st_mtime)
    data: dict[str, Any] = json.loads(path.read_text())
    data["_file"] = str(path.relative_to(HERE.parent))
    return data


# --- the targets (issue 16), each read from its part's results ----------------------------------

Row = tuple[str, str, bool | None]  # (target, what was measured, met: True / False / None = not measured)


def _cost(data: dict[str, Any], role: str, impl: str, column: str) -> float | None:
    values = data.get("costs", {}).get(role, {}).get(impl, {}).get(column)
    return median(values) if values else None


def _value(data: dict[str, Any], name: str) -> float | None:
    values = data.get(name)
    return median(values) if values else None


def plain_targets(data: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for role in ("server", "client"):
        mine = _cost(data, role, "trio_ws", "handshakes/s")
        floor = _cost(data, role, "floor_trio", "handshakes/s")
        if mine is None or floor is None:
            rows.append((f"5. handshakes, {role}: <= 1.1x floor_trio", "not measured", None))
            continue
        ratio = mine / floor
        rows.append(
            (
                f"5. handshakes, {role}: <= 1.1x floor_trio",
                f"{ratio:.2f}x (trio_ws {mine:.2f}, floor {floor:.2f} times raw trio)",
                ratio <= 1.1,
            )
        )
    for role in ("client",):
        mine = _cost(data, role, "trio_ws", "1 MiB MB/s")
        rows.append(
            (
                "6. client 1 MiB vs the blocking peer: <= 1.1x raw trio",
                "not measured" if mine is None else f"{mine:.2f}x",
                None if mine is None else mine <= 1.1,
            )
        )
    return rows


def tls_targets(data: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for role in ("server", "client"):
        mine = data.get("costs", {}).get(role, {}).get("trio_ws", {})
        if not mine:
            rows.append((f"3. wss:// {role}: <= 1.15x raw trio TLS, every column", "not measured", None))
            continue
        costs = {column: median(values) for column, values in mine.items()}
        worst = max(costs, key=lambda column: costs[column])
        rows.append(
            (
                f"3. wss:// {role}: <= 1.15x raw trio TLS, every column",
                ", ".join(f"{column} {cost:.2f}" for column, cost in costs.items()) + f" (worst: {worst})",
                costs[worst] <= 1.15,
            )
        )
        behind = []
        for peer in ("trio_websocket", "websockets_trio"):
            theirs = data["costs"][role].get(peer, {})
            behind += [f"{peer} {c}" for c in costs if c in theirs and median(theirs[c]) <= costs[c]]
        rows.append(
            (
                f"3. wss:// {role}: ahead of both Trio peers",
                "ahead on every column" if not behind else "not ahead: " + ", ".join(behind),
                not behind,
            )
        )
        # Raw trio over TLS makes no opening or closing handshake of WebSocket: what
        # the protocol itself costs on top shows against floor_trio over TLS.
        floor = _cost(data, role, "floor_trio", "handshakes/s")
        if floor is not None and "handshakes/s" in costs:
            rows.append(
                (
                    f"3. wss:// {role} handshakes against floor_trio over TLS (reported)",
                    f"{costs['handshakes/s'] / floor:.2f}x (floor {floor:.2f} times raw trio TLS)",
                    None,
                )
            )
    return rows


def compression_targets(data: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    mine, theirs = _value(data, "memory trio_ws KiB/pair"), _value(data, "memory websockets_trio KiB/pair")
    if mine is not None and theirs is not None:
        rows.append(
            (
                "1. compressed pair <= 0.5x websockets.trio's memory",
                f"{mine / theirs:.2f}x ({mine:.1f} KiB against {theirs:.1f})",
                mine / theirs <= 0.5,
            )
        )
    new, former = _value(data, "ratio trio_ws"), _value(data, "ratio trio_ws_w15")
    if new is not None and former is not None:
        rows.append(
            (
                "1. compression ratio within 10 % of the former settings'",
                f"{new / former:.3f} ({new:.2f} against {former:.2f})",
                new / former >= 0.9,
            )
        )
    for role in ("server", "client"):
        ws, peer = _value(data, f"msgs/s {role} json trio_ws"), _value(data, f"msgs/s {role} json websockets_trio")
        if ws is not None and peer is not None:
            rows.append(
                (
                    f"2. 1 KiB JSON with deflate, {role}: >= 1.5x websockets.trio",
                    f"{ws / peer:.2f}x ({ws:.0f} against {peer:.0f} msgs/s)",
                    ws / peer >= 1.5,
                )
            )
        cpu_ws, cpu_peer = (
            _value(data, f"cpu us/msg {role} json trio_ws"),
            _value(data, f"cpu us/msg {role} json websockets_trio"),
        )
        cpu_plain = _value(data, f"cpu us/msg {role} json trio_ws_plain")
        if cpu_ws is not None and cpu_peer is not None and cpu_plain is not None:
            rows.append(
                (
                    f"2. the same by CPU time per message, {role} (reported)",
                    f"{cpu_peer / cpu_ws:.2f}x ({cpu_ws:.0f} µs against {cpu_peer:.0f}; "
                    f"{cpu_plain:.0f} µs without compression)",
                    None,
                )
            )
        plain, deflate = (
            _value(data, f"msgs/s {role} random trio_ws_plain"),
            _value(data, f"msgs/s {role} random trio_ws"),
        )
        if plain is not None and deflate is not None:
            rows.append(
                (
                    f"2. random bytes with deflate, {role}: <= 1.3x cost of no compression",
                    f"{plain / deflate:.2f}x",
                    plain / deflate <= 1.3,
                )
            )
    return rows


def idle_targets(data: dict[str, Any]) -> list[Row]:
    idle, keepalive = data.get("idle") or {}, data.get("keepalive") or {}
    per, count, asked = idle.get("kib_per_connection"), idle.get("connections"), data.get("asked")
    rows: list[Row] = [
        (
            "4. idle server connection <= 10 KiB RSS",
            "not measured" if per is None else f"{per:.2f} KiB/conn over {count:,} connections",
            None if per is None else per <= 10,
        )
    ]
    if count is not None and asked is not None and count < asked:
        rows.append(("4. 100,000 connections in one process", f"{count:,}: the open-files limit (idle.py)", False))
    if "open_seconds" in idle:
        rows.append(("4. time to open them all (reported)", f"{idle['open_seconds']:.1f} s", None))

    def latency(phase: dict[str, Any]) -> str:
        return f"p50 {phase['p50_us']:,.0f} µs, p99 {phase['p99_us']:,.0f} µs, max {phase['max_us']:,.0f} µs"

    if "idle" in idle:
        rows.append(("4. one active connection, all idle (reported)", latency(idle["idle"]), None))
    if "sweep" in keepalive:
        rows.append(("4. one active connection, keepalive sweep (reported)", latency(keepalive["sweep"]), None))
    return rows


def picows_targets(data: dict[str, Any]) -> list[Row]:
    mine = _cost(data, "client", "trio_ws", "1 MiB MB/s")
    return [
        (
            "6. client 1 MiB vs picows: <= 1.1x raw trio (vs uvloop)",
            "not measured" if mine is None else f"{mine:.2f}x",
            None if mine is None else mine <= 1.1,
        )
    ]


TARGETS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "plain": plain_targets,
    "tls": tls_targets,
    "compression": compression_targets,
    "idle": idle_targets,
    "picows": picows_targets,
}


def render(rows: list[Row], files: list[str], elapsed: float, argv: list[str]) -> str:
    mark = {True: "met", False: "**not met**", None: "-"}
    lines = ["target | measured | met?", "---|---|---"]
    lines += [f"{target} | {measured} | {mark[met]}" for target, measured, met in rows]
    lines += ["", "results: " + ", ".join(files)]
    lines.append(
        f"wall time {elapsed / 60:.1f} min; command: python benchmarks/performance.py {' '.join(argv)}".rstrip()
    )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one short round of each part")
    parser.add_argument("--only", nargs="+", choices=list(PARTS), help="run these parts only")
    parser.add_argument("--reuse", action="store_true", help="run nothing: the table from each part's newest results")
    args = parser.parse_args()
    started = time.monotonic()
    rows: list[Row] = []
    files: list[str] = []
    failed = False
    for name in args.only or list(PARTS):
        data = run_part(name, args.quick, args.reuse)
        if data is None:
            failed = True
            rows.append((f"({name})", "the part failed: see its output above", False))
            continue
        files.append(data["_file"])
        rows += TARGETS[name](data)
    table = render(rows, files, time.monotonic() - started, sys.argv[1:])
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"performance-{time.strftime('%Y%m%d-%H%M%S')}.md").write_text(table)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
