"""Every ``python`` block of the documentation runs somewhere in the tests; this file runs the
pages that have no test file of their own, and checks that no block is left out.

A block that begins with a comment saying ``# fragment`` (part of a program, shown on its own)
or ``# Needs ...`` (it needs something CI does not have: a proxy at a real address, a
certificate for a real domain) is not run; the comment is what the page tells its reader about
why.  Every other block runs as its program would, in this process and within a deadline, and
what it prints is compared with the untagged block that follows it, as for docs/routing.md.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any

import pytest
import trio

from trio_ws import serve_websocket

from .test_router import DOCS, doc_examples, run_doc_example

# Pages whose examples their own test files run (the module that does, for the reader).
RUN_ELSEWHERE = {
    "authentication.md": "tests/test_auth.py",
    "broadcast.md": "tests/test_broadcast.py",
    "compression.md": "tests/test_deflate_options.py",
    "pubsub.md": "tests/test_pubsub.py",
    "routing.md": "tests/test_router.py",
    "testing.md": "tests/test_testing_kit.py",
    "workers.md": "tests/test_workers.py",
    "tutorial/": "tests/test_tutorial.py",
}
# Pages written before the examples were run, whose blocks are mostly pieces of programs
# without the "# fragment" line: how many blocks each has that no test runs.  Lower a count
# when you make a block run (or mark it); a new block must run, or the count goes wrong.
NOT_YET_RUN: dict[str, int] = {}  # every page is at 0 now: keep it so, or say why here
NOT_RUN = re.compile(r"\A# (fragment|Needs )")


def pages() -> list[str]:
    return sorted(str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md") if "_build" not in path.parts)


def runs_elsewhere(page: str) -> bool:
    return any(page == name or (name.endswith("/") and page.startswith(name)) for name in RUN_ELSEWHERE)


def run_here() -> list[Any]:
    return [
        pytest.param(page, *param.values, id=param.id)
        for page in pages()
        if not runs_elsewhere(page) and page not in NOT_YET_RUN
        for param in doc_examples(page)
        if not NOT_RUN.match(param.values[0])
    ]


@pytest.mark.parametrize(("page", "code", "expected"), run_here())
def test_doc_example(monkeypatch: pytest.MonkeyPatch, page: str, code: str, expected: str | None) -> None:
    run_doc_example(monkeypatch, page, code, expected)


def test_the_blocks_not_run_are_counted() -> None:
    unrun = {page: sum(1 for param in doc_examples(page) if not NOT_RUN.match(param.values[0])) for page in NOT_YET_RUN}
    assert unrun == NOT_YET_RUN
    assert [param.id for param in run_here()]  # the pages run here have examples


async def test_the_readmes_client_and_server(nursery: trio.Nursery) -> None:
    """README.md's two programs, together: its echo server (on a free port, not 8765) and its
    client (pointed at that port) print what the README's reader would see."""
    readme = (DOCS.parent / "README.md").read_text()
    client_code, server_code = re.findall(r"^```python\n(.*?)^```$", readme, re.S | re.M)
    assert client_code.endswith("trio.run(main)\n")
    assert server_code.endswith('trio.run(serve_websocket, echo, "127.0.0.1", 8765, None)\n')
    server_namespace: dict[str, Any] = {"__name__": "readme_server"}
    exec(compile(server_code.rpartition("trio.run(")[0], "README.md", "exec"), server_namespace)
    server = await nursery.start(partial(serve_websocket, server_namespace["echo"], "127.0.0.1", 0, None))
    printed: list[str] = []
    client_namespace: dict[str, Any] = {
        "__name__": "readme_client",
        "print": lambda *args: printed.append(" ".join(map(str, args))),
    }
    code = client_code.removesuffix("trio.run(main)\n").replace(":8765/", f":{server.port}/")
    exec(compile(code, "README.md", "exec"), client_namespace)
    with trio.fail_after(10):
        await client_namespace["main"]()
    assert printed == ["received: hello"]
