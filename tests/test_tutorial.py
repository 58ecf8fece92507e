"""The tutorial (docs/tutorial/*.md), run as written.

Every ``python`` block of the tutorial runs here, and what it prints is compared with the
untagged block that follows it.  The client pages talk to the demo server at
``ws://127.0.0.1:8765``; here the demo runs on a free port, and the URL is changed to it.  The
server programs that serve forever (``if __name__ == "__main__":``) are imported as modules, and
their handlers served on a free port.  ``chat.py`` and ``test_chat.py`` are written to a
temporary directory, as a reader would save them, and the workers import ``chat`` from there.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_ws import ConnectionRejected, open_websocket_url, serve_websocket
from trio_ws._demo import run_demo

TUTORIAL = Path(__file__).parent.parent / "docs" / "tutorial"
HOST = "127.0.0.1"


def examples(page: str) -> list[tuple[str, str | None]]:
    """The page's ``python`` blocks, each with the untagged block after it (its output) or None."""
    text = (TUTORIAL / page).read_text()
    found: list[tuple[str, str | None]] = []
    for block in re.finditer(r"^```(\w*)\n(.*?)^```$", text, re.S | re.M):
        language, body = block[1], block[2]
        if language == "python":
            found.append((body, None))
        elif language == "" and found and found[-1][1] is None:
            found[-1] = (found[-1][0], body)
    return found


def load(page: str, code: str, **names: Any) -> dict[str, Any]:
    """Execute an example as a module (not ``__main__``), all but a final ``trio.run(main)``."""
    namespace: dict[str, Any] = {"__name__": "tutorial_example", **names}
    exec(compile(code.removesuffix("\ntrio.run(main)\n"), str(TUTORIAL / page), "exec"), namespace)
    return namespace


class Printed:
    """Stands in for ``print`` in an example, and keeps what it would have written."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, *args: object) -> None:
        self.lines.append(" ".join(map(str, args)))

    @property
    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines)


def test_every_example_is_run_here() -> None:
    """A new block on a page needs a test below: this count says so."""
    counts = {page.name: len(examples(page.name)) for page in sorted(TUTORIAL.glob("*.md"))}
    assert counts == {
        "chat.md": 1,
        "first-client.md": 2,
        "first-server.md": 2,
        "index.md": 0,
        "testing.md": 1,
        "workers.md": 1,
    }


@pytest.mark.parametrize("index", [0, 1])
async def test_first_client(index: int) -> None:
    code, expected = examples("first-client.md")[index]
    assert "ws://127.0.0.1:8765/" in code
    printed = Printed()
    async with trio.open_nursery() as nursery:
        demo = await nursery.start(partial(run_demo, HOST, 0))
        code = code.replace("ws://127.0.0.1:8765/", f"ws://{HOST}:{demo.port}/")
        namespace = load("first-client.md", code, print=printed)
        with trio.fail_after(10):
            await namespace["main"]()
        nursery.cancel_scope.cancel()
    assert printed.text == expected


async def test_first_server_program() -> None:
    """server.py: its handler echoes on /echo and refuses other paths with 404."""
    code, expected = examples("first-server.md")[0]
    assert expected is None
    assert 'if __name__ == "__main__":' in code
    echo = load("first-server.md", code)["echo"]
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve_websocket, echo, HOST, 0, None))
        with trio.fail_after(10):
            async with open_websocket_url(f"ws://{HOST}:{server.port}/echo") as ws:
                await ws.send("hello")
                assert await ws.receive() == "hello"
            with pytest.raises(ConnectionRejected) as refused:
                async with open_websocket_url(f"ws://{HOST}:{server.port}/"):
                    pass
            assert refused.value.status_code == 404
        nursery.cancel_scope.cancel()


async def test_first_server_with_its_client() -> None:
    code, expected = examples("first-server.md")[1]
    printed = Printed()
    namespace = load("first-server.md", code, print=printed)
    with trio.fail_after(10):
        await namespace["main"]()
    assert printed.text == expected


@pytest.fixture
def chat_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """chat.py saved in a directory that is both the working directory and on ``sys.path``."""
    (code, expected), *_ = examples("chat.md")
    assert expected is None
    (tmp_path / "chat.py").write_text(code)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "chat", raising=False)
    yield tmp_path
    sys.modules.pop("chat", None)


async def test_the_chat_tests(chat_module: Path) -> None:
    """test_chat.py, next to chat.py: each of its tests, with a nursery as pytest-trio gives one."""
    (code, expected), *_ = examples("testing.md")
    assert expected is None
    (chat_module / "test_chat.py").write_text(code)
    namespace = load("testing.md", code)
    tests = {name: function for name, function in namespace.items() if name.startswith("test_")}
    assert sorted(tests) == ["test_a_line_reaches_everyone", "test_other_paths_are_refused", "test_the_page"]
    for test in tests.values():
        assert list(inspect.signature(test).parameters) == ["nursery"]
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await test(nursery)
                nursery.cancel_scope.cancel()


@pytest.mark.slow
async def test_the_chat_with_workers(chat_module: Path) -> None:
    (code, expected), *_ = examples("workers.md")
    printed = Printed()
    namespace = load("workers.md", code, print=printed)
    with trio.fail_after(20):
        await namespace["main"]()
    assert printed.text == expected
