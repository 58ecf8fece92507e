"""Run the Autobahn|Testsuite (../shared/autobahn) against trio_ws, as server and as client.

    python scripts/autobahn.py                      # both roles, all cases 1.* to 13.*
    python scripts/autobahn.py --role server --cases '1.*,2.*'
    python scripts/autobahn.py --quick              # the CI subset: 1.* to 7.*, 10.*, six compression cases

Prints the suite's summary for each role and exits non-zero unless every
case's behaviour is OK or INFORMATIONAL and every close behaviour OK or
INFORMATIONAL (no FAILED, NON-STRICT, UNIMPLEMENTED, UNCLEAN...).  Reports
land in reports/autobahn/{server,client}/ (git-ignored).

The same file is the echo server and the client loop the suite drives:

    python scripts/autobahn.py serve --port 9001    # echo server, compression on
    python scripts/autobahn.py client               # the getCaseCount/runCase/updateReports loop
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import trio

from trio_ws import ConnectionClosed, WebSocketRequest, open_websocket_url, serve_websocket

ROOT = Path(__file__).resolve().parent.parent
SUITE = Path(os.environ.get("AUTOBAHN_DIR", ROOT.parent / "shared" / "autobahn"))
REPORTS = ROOT / "reports" / "autobahn"
# The suite sends messages of up to 16 MiB (9.1.6), in up to 65536 fragments.
MAX_MESSAGE_SIZE = 2**25
QUICK = "1.*,2.*,3.*,4.*,5.*,6.*,7.*,10.*,12.1.1,12.1.2,12.1.3,13.1.1,13.1.2,13.1.3"
ALL = "*"
GOOD = {"OK", "INFORMATIONAL"}


# --- the peers under test ------------------------------------------------------


async def _echo(request: WebSocketRequest) -> None:
    ws = await request.accept()
    try:
        while True:
            await ws.send_message(await ws.get_message())
    except ConnectionClosed:
        pass


async def serve(host: str, port: int, lifetime: float) -> None:
    with trio.move_on_after(lifetime):
        await serve_websocket(
            _echo, host, port, None, max_message_size=MAX_MESSAGE_SIZE, compression="deflate"
        )


async def client_loop(url: str, agent: str, case_timeout: float) -> None:
    async with open_websocket_url(f"{url}/getCaseCount") as ws:
        count = int(json.loads(await ws.get_message()))
    print(f"{count} cases", file=sys.stderr, flush=True)
    for case in range(1, count + 1):
        try:
            with trio.fail_after(case_timeout):
                async with open_websocket_url(
                    f"{url}/runCase?case={case}&agent={agent}",
                    max_message_size=MAX_MESSAGE_SIZE,
                    compression="deflate",
                ) as ws:
                    while True:
                        await ws.send_message(await ws.get_message())
        except ConnectionClosed:
            pass
        except Exception as exc:  # one broken case must not end the run
            print(f"case {case}: {exc!r}", file=sys.stderr, flush=True)
    async with open_websocket_url(f"{url}/updateReports?agent={agent}", connect_timeout=600) as ws:
        try:
            await ws.get_message()
        except ConnectionClosed:
            pass


# --- running the suite ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _wait_listening(port: int, limit: float = 20) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"the trio_ws echo server did not listen on port {port}")


def _verdict(report_dir: Path) -> tuple[dict[str, dict[str, int]], list[str]]:
    """Counts of behaviour per case group, and the cases that are not fully OK."""
    index = json.loads((report_dir / "index.json").read_text())
    counts: dict[str, dict[str, int]] = {}
    bad: list[str] = []
    for cases in index.values():
        for case_id, result in cases.items():
            group = case_id.split(".")[0] + ".*"
            behavior, close = result["behavior"], result["behaviorClose"]
            counts.setdefault(group, {}).setdefault(behavior, 0)
            counts[group][behavior] += 1
            if behavior not in GOOD or close not in GOOD:
                bad.append(f"{case_id} {behavior}/{close}")
    return counts, bad


def _run_role(role: str, cases: str) -> bool:
    report_dir = REPORTS / role
    env = dict(os.environ, AUTOBAHN_AGENT="trio_ws", REPORT_DIR=str(report_dir))
    me = [sys.executable, str(Path(__file__).resolve())]
    started = time.monotonic()
    if role == "server":
        port = _free_port()
        server = subprocess.Popen([*me, "serve", "--port", str(port)])
        try:
            _wait_listening(port)
            subprocess.run([str(SUITE / "test-server.sh"), f"ws://127.0.0.1:{port}", cases], env=env, check=False)
        finally:
            server.terminate()
            server.wait(timeout=30)
    else:
        command = " ".join([*me, "client"])
        subprocess.run([str(SUITE / "test-client.sh"), command, cases], env=env, check=False)
    elapsed = time.monotonic() - started
    counts, bad = _verdict(report_dir)
    total = sum(sum(c.values()) for c in counts.values())
    print(f"\n== trio_ws as {role}: {total} cases in {elapsed:.0f} s")
    for group in sorted(counts, key=lambda g: int(g.split(".")[0])):
        print(f"   {group:6} " + ", ".join(f"{k} {v}" for k, v in sorted(counts[group].items())))
    print("   not fully OK: " + (", ".join(bad) if bad else "none"))
    return not bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    p_serve = sub.add_parser("serve", help="run the echo server the suite tests")
    p_serve.add_argument("--host", default="127.0.0.1")
    p_serve.add_argument("--port", type=int, default=9001)
    p_serve.add_argument("--lifetime", type=float, default=3 * 3600, help="stop by itself after this many seconds")
    p_client = sub.add_parser("client", help="run the client loop against $AUTOBAHN_URL")
    p_client.add_argument("--case-timeout", type=float, default=600)
    parser.add_argument("--role", choices=["server", "client", "both"], default="both")
    parser.add_argument("--cases", default=None, help=f"case patterns (default {ALL!r})")
    parser.add_argument("--quick", action="store_true", help=f"the CI subset: {QUICK}")
    args = parser.parse_args()

    if args.command == "serve":
        trio.run(serve, args.host, args.port, args.lifetime)
        return 0
    if args.command == "client":
        url = os.environ.get("AUTOBAHN_URL", "ws://127.0.0.1:9001")
        trio.run(client_loop, url, os.environ.get("AUTOBAHN_AGENT", "trio_ws"), args.case_timeout)
        return 0

    if not (SUITE / "setup.sh").exists():
        print(f"autobahn: no suite at {SUITE} (set AUTOBAHN_DIR)", file=sys.stderr)
        return 2
    subprocess.run([str(SUITE / "setup.sh"), "suite"], check=True, stdout=subprocess.DEVNULL)
    cases = args.cases or (QUICK if args.quick else ALL)
    roles = ["server", "client"] if args.role == "both" else [args.role]
    results = [_run_role(role, cases) for role in roles]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
