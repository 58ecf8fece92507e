"""trio_ws against its peers, server role and client role, on loopback.

    python benchmarks/bench.py            # full: 5 rounds (3 for idle memory and broadcast), 9-10 minutes
    python benchmarks/bench.py --quick    # 1 round, shorter workloads, about 2 minutes
    python benchmarks/bench.py --compare before=../baseline/.venv/bin/python   # and another trio_ws, interleaved
    python benchmarks/bench.py --tls      # every workload over TLS 1.3 (wss://), against raw trio over TLS
    python benchmarks/bench.py --peer picows --role client   # clients against a picows server on uvloop

Each measurement runs the peer under test in one process and a fast peer in
another: in the server role a C-accelerated client (websockets' asyncio
client; a plain asyncio client for the raw baseline), in the client role a
C-accelerated server.  The baseline is a raw trio TCP echo with 4-byte
length-prefixed frames: the physical limit of trio on this machine.  Rounds
interleave the implementations; each figure is turned into a cost (how many
times worse than raw trio in the same round: 1.0 is as fast as raw trio) and
the table shows the median cost over rounds, with the median raw figure.

Peers run from benchmarks/.venv-peers (made from requirements-peers.txt on
first use); trio_ws and the raw trio peer from the project's interpreter.
``--compare NAME=PYTHON`` adds a row: the trio_ws that PYTHON imports (another
checkout's virtual environment: the code before a change), run by this
checkout's peers.py in the same interleaved rounds, so that a before/after
comparison shares every slow minute of the machine.
Results are saved as JSON in benchmarks/results/.

``--tls`` runs every process over TLS 1.3 with a throw-away CA (trustme,
made once per run, written to a temporary directory that every process
reads): the baseline is then raw trio over trio.SSLStream (and the blocking
reference over ssl-wrapped sockets), the WebSocket peers speak wss://.  It
measures the six per-connection columns only: broadcast and idle memory
(a thousand TLS handshakes per implementation) on request, with --only.

``--peer picows`` changes the fixed server of the client role: picows (a
Cython WebSocket server on uvloop) for the WebSocket clients, and for raw
trio raw_uvloop, a uvloop Protocol echoing the same length-prefixed frames
(so both sides of each ratio face a server of one kind).  The server role
is unchanged; ``--role client`` skips it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

from _procs import free_port  # benchmarks/_procs.py (this directory is on sys.path)

HERE = Path(__file__).resolve().parent
PEERS_VENV = HERE / ".venv-peers"
PEERS_PY = PEERS_VENV / "bin" / "python"
PROJECT_PY = Path(sys.executable)
UNDER_TEST = ["raw", "trio_ws", "trio_websocket", "websockets_trio"]
# (column, workload, metric, higher_is_better)
COLUMNS = [
    ("lat p50", "latency", "p50_us", False),
    ("32 B msg/s", "throughput-32", "msgs_per_s", True),
    ("1 KiB msg/s", "throughput-1024", "msgs_per_s", True),
    ("64 KiB MB/s", "throughput-65536", "mb_per_s", True),
    ("1 MiB MB/s", "throughput-1048576", "mb_per_s", True),
    ("handshakes/s", "handshakes", "per_s", True),
]
BROADCAST = ("broadcast", "broadcast", "msgs_per_s", True)  # to 1000 connections (300 with --quick)
IDLE = ("KiB/idle conn", "idle", "kib_per_conn", False)


def ensure_peers() -> None:
    """Make benchmarks/.venv-peers, or bring it up to date when requirements-peers.txt changed
    since it was installed (a copy of what was installed is kept in the venv)."""
    wanted = (HERE / "requirements-peers.txt").read_text()
    installed = PEERS_VENV / "requirements-installed.txt"
    if PEERS_PY.exists() and installed.exists() and installed.read_text() == wanted:
        return
    if not PEERS_PY.exists():
        print("making benchmarks/.venv-peers ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    else:
        print("updating benchmarks/.venv-peers to requirements-peers.txt ...", flush=True)
    subprocess.run(
        [str(PEERS_PY), "-m", "pip", "install", "--quiet", "-r", str(HERE / "requirements-peers.txt")], check=True
    )
    installed.write_text(wanted)


# --tls: the directory of ca.pem, cert.pem, key.pem that every peers.py process is given.
TLS_DIR: str | None = None


def tls_arguments() -> list[str]:
    return [] if TLS_DIR is None else ["--tls", TLS_DIR]


def write_certificates(directory: str) -> None:
    """A throw-away CA and a certificate for 127.0.0.1 signed by it, as PEM files."""
    try:
        import trustme
    except ImportError:
        raise SystemExit("--tls needs trustme in this interpreter: pip install -e '.[test]'") from None
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(Path(directory) / "ca.pem"))
    server.private_key_pem.write_to_path(str(Path(directory) / "key.pem"))
    with open(Path(directory) / "cert.pem", "wb") as chain:
        for pem in server.cert_chain_pems:
            chain.write(pem.bytes())


# --compare NAME=PYTHON: more trio_ws builds, each run as peers.py's "trio_ws" by its own interpreter.
COMPARED: dict[str, Path] = {}


def python_for(impl: str) -> Path:
    if impl in COMPARED:
        return COMPARED[impl]
    return PROJECT_PY if impl in ("trio_ws", "raw_trio", "raw_sync", "floor_trio") else PEERS_PY


def peer_name(impl: str) -> str:
    """The implementation's name for peers.py (a compared build is trio_ws to it)."""
    return "trio_ws" if impl in COMPARED else impl


class Server:
    """A peers.py server process; it stops when its stdin closes (or is killed)."""

    def __init__(self, impl: str) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                str(python_for(impl)),
                str(HERE / "peers.py"),
                "server",
                peer_name(impl),
                "--port",
                str(self.port),
                *tls_arguments(),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "READY":
            self.stop()
            raise RuntimeError(f"server {impl} did not start")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()


CLIENT_TIMEOUT = 15  # seconds for one client run (a workload measures for a second or two)
# Idle memory and the broadcast vary little from round to round, and each
# opens a thousand connections per implementation: a full run measures them
# in its first 3 rounds only, to stay under 10 minutes on a 2-core machine.
MANY_CONNECTION_ROUNDS = 3


def run_client(impl: str, workload: str, port: int, options: dict[str, Any]) -> dict[str, Any]:
    command = [str(python_for(impl)), str(HERE / "peers.py"), "client", peer_name(impl), workload, "--port", str(port)]
    command += ["--options", json.dumps(options), *tls_arguments()]
    # A client that makes no progress (websockets.trio's client stalls now and
    # then on 1 MiB echoes) costs a bounded time, and its column shows "-".
    result = subprocess.run(command, capture_output=True, text=True, timeout=CLIENT_TIMEOUT, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"client {impl} {workload} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# --peer: the fixed servers of the client role, (for raw trio, for the WebSocket clients).
PEERS = {"fast_ws": ("raw_sync", "fast_ws"), "picows": ("raw_uvloop", "picows")}
PEER = "fast_ws"


def pair(role: str, impl: str, workload: str) -> tuple[str, str]:
    """(server impl, client impl) measuring ``impl`` in ``role``.

    The other side is the fastest reference there is: blocking sockets and C
    masking (raw_sync, fast_ws; in the client role, --peer may name another
    kind); for many connections at once (idle memory, broadcast) an asyncio
    client (websockets' C-accelerated one).
    """
    many = workload in ("idle", "broadcast")
    raw_server, ws_server = PEERS[PEER]
    if impl == "raw":
        return ("raw_trio", "raw_asyncio" if many else "raw_sync") if role == "server" else (raw_server, "raw_trio")
    return (impl, "websockets_asyncio" if many else "fast_ws") if role == "server" else (ws_server, impl)


def measure(role: str, impl: str, workload: str, options: dict[str, Any]) -> dict[str, Any]:
    server_impl, client_impl = pair(role, impl, workload)
    server = Server(server_impl)
    try:
        if workload == "idle":
            return measure_idle(server, client_impl, options)
        return run_client(client_impl, workload, server.port, options)
    finally:
        server.stop()


def measure_idle(server: Server, client_impl: str, options: dict[str, Any]) -> dict[str, Any]:
    """Server RSS per connection: open N connections, use each once, leave them idle."""
    before = server.rss_kib()
    command = [str(python_for(client_impl)), str(HERE / "peers.py"), "client", peer_name(client_impl), "idle"]
    command += ["--port", str(server.port), "--options", json.dumps(options), *tls_arguments()]
    client = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert client.stdout is not None
    assert client.stdin is not None
    try:
        if client.stdout.readline().strip() != "READY":
            raise RuntimeError("idle client did not get ready")
        time.sleep(0.5)
        during = server.rss_kib()
        client.stdin.write("go\n")
        client.stdin.flush()
        client.wait(timeout=120)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        client.stdin.close()
        client.stdout.close()
    return {"kib_per_conn": (during - before) / options["connections"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--only", nargs="*", default=None, help="column names to run (e.g. 'lat p50')")
    parser.add_argument(
        "--floor", action="store_true", help="also measure floor_trio: the protocol's own cost over raw trio"
    )
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="NAME=PYTHON",
        help="also measure the trio_ws that PYTHON imports, as row NAME (repeatable)",
    )
    parser.add_argument(
        "--tls", action="store_true", help="every connection over TLS 1.3 (wss://), against raw trio over TLS"
    )
    parser.add_argument("--peer", choices=sorted(PEERS), default="fast_ws", help="the fixed servers of the client role")
    parser.add_argument("--role", choices=["server", "client", "both"], default="both")
    args = parser.parse_args()
    global PEER
    PEER = args.peer
    if args.tls:
        with tempfile.TemporaryDirectory(prefix="bench-tls-") as directory:
            global TLS_DIR
            TLS_DIR = directory
            write_certificates(directory)
            return run(args, parser)
    return run(args, parser)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    under_test = [*UNDER_TEST, "floor_trio"] if args.floor else list(UNDER_TEST)
    for spec in args.compare:
        name, _, python = spec.partition("=")
        if not name or not python or not Path(python).exists():
            parser.error(f"--compare wants NAME=PYTHON with an existing interpreter, not {spec!r}")
        COMPARED[name] = Path(python).absolute()  # (not resolve(): a venv's python is a symlink)
        under_test.append(name)
    ensure_peers()
    rounds = args.rounds or (1 if args.quick else 5)
    seconds = 0.5 if args.quick else 1.0
    idle_n = 300 if args.quick else 1000
    sinks = 300 if args.quick else 1000
    if args.only is not None:
        columns = [c for c in [*COLUMNS, BROADCAST, IDLE] if c[0] in args.only]
    else:  # over TLS, a thousand handshakes per implementation for two columns: on request only
        columns = list(COLUMNS) if args.tls else [*COLUMNS, BROADCAST, IDLE]
    results: dict[str, dict[str, dict[str, list[float]]]] = {}  # role -> impl -> column -> costs
    raw_values: dict[str, dict[str, list[float]]] = {}
    started = time.monotonic()
    for round_number in range(rounds):
        for role in ("server", "client") if args.role == "both" else (args.role,):
            for name, workload, metric, higher in columns:
                if workload in ("idle", "broadcast") and (role == "client" or round_number >= MANY_CONNECTION_ROUNDS):
                    continue  # server-side figures, 3 rounds at most
                options: dict[str, Any] = {"seconds": seconds}
                if workload == "idle":
                    options = {"connections": idle_n}
                elif workload == "broadcast":
                    options = {"connections": sinks, "messages": 5 if args.quick else 20, "size": 64}
                # Interleave: rotate the order each round.
                order = under_test[round_number % len(under_test) :] + under_test[: round_number % len(under_test)]
                if workload in ("idle", "broadcast"):
                    order = [impl for impl in order if impl != "floor_trio"]  # it serves /echo only
                values: dict[str, float] = {}
                column_started = time.monotonic()
                for impl in order:
                    try:
                        values[impl] = float(measure(role, impl, workload, options)[metric])
                    except Exception as exc:  # one broken measurement must not end the run
                        print(f"  {role} {impl} {workload}: {exc}", file=sys.stderr)
                raw = values.get("raw")
                if raw:
                    raw_values.setdefault(role, {}).setdefault(name, []).append(raw)
                for impl, value in values.items():
                    if impl == "raw" or not raw or not value:
                        continue
                    cost = raw / value if higher else value / raw
                    results.setdefault(role, {}).setdefault(impl, {}).setdefault(name, []).append(cost)
                took = time.monotonic() - column_started
                figures = "  ".join(f"{k}={v:.4g}" for k, v in values.items())
                print(f"round {round_number + 1} {role:6} {name:14} {figures}  ({took:.0f} s)", flush=True)
    elapsed = time.monotonic() - started
    table = render(results, raw_values, columns, rounds, elapsed, under_test)
    print(table)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S") + ("-tls" if args.tls else "") + ("" if PEER == "fast_ws" else "-" + PEER)
    (out / f"bench-{stamp}.json").write_text(
        json.dumps({"costs": results, "raw": raw_values, "rounds": rounds, "tls": args.tls, "peer": PEER}, indent=1)
    )
    (out / f"bench-{stamp}.md").write_text(table)
    return 0


def render(
    results: dict[str, dict[str, dict[str, list[float]]]],
    raw_values: dict[str, dict[str, list[float]]],
    columns: list[tuple[str, str, str, bool]],
    rounds: int,
    elapsed: float,
    under_test: list[str],
) -> str:
    of = f"median of {rounds} round(s)"
    if rounds > MANY_CONNECTION_ROUNDS:
        of += f" ({MANY_CONNECTION_ROUNDS} for broadcast and idle memory)"
    baseline = "raw trio" if TLS_DIR is None else "raw trio over TLS 1.3 (trio.SSLStream)"
    lines = [f"cost = times worse than {baseline} in the same round (1.0 = as fast); {of}", ""]
    for role in ("server", "client"):
        if role not in raw_values and role not in results:
            continue  # --role
        names = [c[0] for c in columns if not (role == "client" and c[1] in ("idle", "broadcast"))]
        against = f" (against {PEERS[PEER][1]}; raw trio against {PEERS[PEER][0]})" if role == "client" else ""
        lines.append(f"{role} role{against} | " + " | ".join(names))
        lines.append("---|" + "|".join("---:" for _ in names))
        raw = raw_values.get(role, {})
        lines.append(
            ("raw trio (value)" if TLS_DIR is None else "raw trio TLS (value)")
            + " | "
            + " | ".join(f"{median(raw[n]):.4g}" if n in raw else "-" for n in names)
        )
        for impl in under_test[1:]:
            costs = results.get(role, {}).get(impl, {})
            cells = [f"{median(costs[n]):.2f}" if n in costs else "-" for n in names]
            lines.append(f"{impl} | " + " | ".join(cells))
        lines.append("")
    lines.append(f"wall time {elapsed:.0f} s; command: python benchmarks/bench.py {' '.join(sys.argv[1:])}".rstrip())
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
