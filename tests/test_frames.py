"""The framing layer on its own (Sans-I/O): frames in, events out, and masking."""

from __future__ import annotations

import os
import struct
import subprocess
import sys

import pytest

from trio_ws import _mask
from trio_ws._frames import (
    BINARY,
    CLOSE,
    CONTINUATION,
    MESSAGE,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    PING,
    PONG,
    TEXT,
    FrameError,
    Parser,
    close_frame,
    frame,
)

from .conftest import frame as raw_frame


def parse_all(parser: Parser, data: bytes, *, step: int | None = None) -> list[tuple[int, object]]:
    """Feed ``data`` (in pieces of ``step`` bytes) and collect every event."""
    events: list[tuple[int, object]] = []
    pieces = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    for piece in pieces:
        parser.feed(piece)
        while (event := parser.next_event()) is not None:
            events.append(event)
    return events


def server_parser(max_message_size: int = 2**20) -> Parser:
    return Parser(client=False, max_message_size=max_message_size)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 2**20])
@pytest.mark.parametrize("step", [None, 1, 7, 4096])
def test_round_trip_sizes_and_pieces(size: int, step: int | None) -> None:
    if step in (1, 7) and size > 70000:
        pytest.skip("byte by byte through a megabyte is slow and proves nothing more")
    payload = os.urandom(size)
    data = frame(BINARY, payload, mask=True) + frame(TEXT, b"done", mask=True)
    assert parse_all(server_parser(), data, step=step) == [(MESSAGE, payload), (MESSAGE, "done")]
    # And the other way: a server's unmasked frames to a client.
    client = Parser(client=True, max_message_size=2**20)
    assert parse_all(client, frame(BINARY, payload, mask=False), step=step) == [(MESSAGE, payload)]


def test_fragments_and_interleaved_control_frames() -> None:
    data = (
        raw_frame(TEXT, "h\u00e9".encode()[:2], fin=False)
        + raw_frame(OP_PING, b"p")
        + raw_frame(CONTINUATION, "h\u00e9".encode()[2:] + b" there", fin=False)
        + raw_frame(OP_PONG, b"q")
        + raw_frame(CONTINUATION, b"!")
    )
    for step in (None, 1, 3):
        assert parse_all(server_parser(), data, step=step) == [
            (PING, b"p"),
            (PONG, b"q"),
            (MESSAGE, "h\u00e9 there!"),
        ]


@pytest.mark.parametrize(
    ("payload", "event"),
    [
        (b"", (CLOSE, (1005, ""))),
        (struct.pack("!H", 1000), (CLOSE, (1000, ""))),
        (struct.pack("!H", 4999) + "bye \u00e9".encode(), (CLOSE, (4999, "bye \u00e9"))),
        (struct.pack("!H", 1014), (CLOSE, (1014, ""))),
    ],
)
def test_close_frames(payload: bytes, event: tuple[int, object]) -> None:
    parser = server_parser()
    data = raw_frame(OP_CLOSE, payload) + raw_frame(TEXT, b"after the close")
    assert parse_all(parser, data) == [event]  # nothing after a Close is parsed


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (raw_frame(0x3, b"x"), 1002),  # reserved data opcode
        (raw_frame(0xB, b"x"), 1002),  # reserved control opcode
        (raw_frame(TEXT, b"x", rsv=4), 1002),  # RSV1 without an extension
        (raw_frame(TEXT, b"x", rsv=1), 1002),  # RSV3
        (raw_frame(TEXT, b"unmasked", mask=False), 1002),
        (raw_frame(OP_PING, b"x" * 126), 1002),
        (raw_frame(OP_PING, b"x", fin=False), 1002),
        (raw_frame(CONTINUATION, b"x"), 1002),
        (raw_frame(TEXT, b"a", fin=False) + raw_frame(BINARY, b"b"), 1002),
        (b"\x81\xfe\x00\x05" + b"\x00" * 4 + b"hello", 1002),  # 2-byte length for 5 bytes
        (b"\x82\xff" + struct.pack("!Q", 5) + b"\x00" * 4 + b"hello", 1002),  # 8-byte length for 5
        (b"\x82\xff" + struct.pack("!Q", 1 << 63) + b"\x00" * 4, 1002),  # most significant bit set
        (raw_frame(OP_CLOSE, b"\x03"), 1002),
        (raw_frame(OP_CLOSE, struct.pack("!H", 1005)), 1002),
        (raw_frame(OP_CLOSE, struct.pack("!H", 999)), 1002),
        (raw_frame(OP_CLOSE, struct.pack("!H", 2000)), 1002),
        (raw_frame(OP_CLOSE, struct.pack("!H", 1000) + b"\xff"), 1007),
        (raw_frame(TEXT, b"\xff"), 1007),
        (raw_frame(TEXT, b"ok", fin=False) + raw_frame(CONTINUATION, b"\xed\xa0\x80", fin=False), 1007),
    ],
)
def test_protocol_errors(data: bytes, code: int) -> None:
    for step in (None, 1):
        parser = server_parser()
        with pytest.raises(FrameError) as info:
            parse_all(parser, data, step=step)
        assert info.value.code == code
        assert info.value.fatal
        assert parser.next_event() is None  # the parser has stopped


def test_invalid_utf8_is_found_before_the_frame_ends() -> None:
    parser = server_parser()
    header = b"\x81\xfe" + struct.pack("!H", 1000) + b"\x00" * 4  # a 1000-byte text frame, zero mask
    parser.feed(header + b"valid " + b"\xc0")
    with pytest.raises(FrameError) as info:
        parser.next_event()
    assert info.value.code == 1007


@pytest.mark.parametrize("opcode", [TEXT, BINARY])
def test_max_message_size(opcode: int) -> None:
    unit = "\u00e9" if opcode == TEXT else "x"
    ok = (unit * 10).encode()
    too_big = (unit * 11).encode()
    parser = server_parser(max_message_size=10)
    assert parse_all(parser, raw_frame(opcode, ok)) == [(MESSAGE, ok.decode() if opcode == TEXT else ok)]
    with pytest.raises(FrameError) as info:
        parse_all(parser, raw_frame(opcode, too_big))
    assert info.value.code == 1009
    assert not info.value.fatal
    # The parser goes on: the peer's Close is still seen.
    assert parse_all(parser, raw_frame(OP_CLOSE, struct.pack("!H", 1000))) == [(CLOSE, (1000, ""))]


def test_an_oversized_fragmented_message_is_dropped_and_parsing_goes_on() -> None:
    parser = server_parser(max_message_size=10)
    with pytest.raises(FrameError):
        parse_all(parser, raw_frame(BINARY, b"x" * 8, fin=False) + raw_frame(CONTINUATION, b"x" * 8, fin=False))
    rest = raw_frame(OP_PING, b"p") + raw_frame(CONTINUATION, b"x" * 1000) + raw_frame(BINARY, b"next")
    assert parse_all(parser, rest) == [(PING, b"p"), (MESSAGE, b"next")]


def test_close_frame_writer() -> None:
    assert close_frame(1005, None, mask=False) == b"\x88\x00"
    assert close_frame(1000, "bye", mask=False) == b"\x88\x05\x03\xe8bye"
    long = close_frame(1000, "\u00e9" * 100, mask=False)
    assert len(long) == 2 + 2 + 122  # cut at 123 bytes, on a character boundary
    parser = Parser(client=True, max_message_size=100)
    assert parse_all(parser, long) == [(CLOSE, (1000, "\u00e9" * 61))]


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 31, 32, 33, 1000, 65537])
def test_masking_implementations_agree(size: int) -> None:
    data, key = os.urandom(size), os.urandom(4)
    expected = bytes(byte ^ key[index % 4] for index, byte in enumerate(data))
    assert _mask.python_apply_mask(data, key) == expected
    assert _mask.apply_mask(data, key) == expected
    # With a prefix (a frame's header, in the same allocation), and from any buffer.
    assert _mask.python_apply_mask(memoryview(data), key, b"head") == b"head" + expected
    assert _mask.apply_mask(memoryview(data), key, b"head") == b"head" + expected
    assert _mask.apply_mask(bytearray(data), key, b"") == expected


def test_masking_keys_are_fresh() -> None:
    frames = [frame(0x2, b"", mask=True) for _ in range(3000)]  # through the pool's refills
    keys = [f[2:6] for f in frames]
    assert len(set(keys)) > 2990  # 32-bit random keys: a few collisions at most


def test_the_pure_python_path_works_end_to_end() -> None:
    """Without the C extension (TRIO_WS_NO_SPEEDUPS=1), a pair still exchanges large messages."""
    script = (
        "import trio, os\n"
        "from trio_ws import _mask\n"
        "from trio_ws.testing import websocket_pair\n"
        "assert not _mask.SPEEDUPS\n"
        "async def main():\n"
        "    data = os.urandom(300_000)\n"
        "    async with websocket_pair() as (client, server):\n"
        "        await client.send_message(data)\n"
        "        assert await server.get_message() == data\n"
        "trio.run(main)\n"
        "print('pure python ok')\n"
    )
    env = dict(os.environ, TRIO_WS_NO_SPEEDUPS="1")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "pure python ok" in result.stdout
