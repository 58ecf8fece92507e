"""The frame layer on its own (Sans-I/O): FrameReader, the frame writers, masking, MessageAssembler.

``FrameReader`` turns bytes into pieces: ``(opcode, payload, flags)``, a
control frame whole (flags 0) or a piece of a data message (opcode TEXT or
BINARY, the message's, also for continuation frames; flags FIRST, LAST,
COMPRESSED).  It raises :exc:`FrameError` (1002) for anything a frame's header
or its place in the sequence breaks (RFC 6455 5.2-5.5).  ``MessageAssembler``
joins pieces into messages and owns what their content can break: UTF-8
(1007), ``max_message_size`` (1009), compressed data (1007).

``raw_frame`` below builds frames by hand, including every invalid layout,
for this module and for tests/test_protocol.py and tests/test_differential.py.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable

import pytest

from trio_ws import _frames, _mask
from trio_ws._deflate import PerMessageDeflate
from trio_ws._frames import (
    BINARY,
    COMPRESSED,
    CONTINUATION,
    FIRST,
    LAST,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    TEXT,
    FrameError,
    FrameReader,
    Piece,
    close_frame,
    frame,
)
from trio_ws._messages import MessageAssembler

KEY = b"\x37\xfa\x21\x3d"  # a masking key with every byte distinct and nonzero
RSV1, RSV2, RSV3 = 4, 2, 1  # as raw_frame's ``rsv`` (bits 6, 5, 4 of the first byte)


def mask_bytes(data: bytes, key: bytes) -> bytes:
    """``data`` XOR ``key`` repeated (RFC 6455 5.3), written independently of trio_ws._mask."""
    if not data:
        return b""
    size = len(data)
    stream = (key * (size // 4 + 1))[:size]
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(size, "big")


def raw_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    key: bytes = KEY,
    width: int | None = None,
    length: int | None = None,
) -> bytes:
    """One frame, built by hand: anything RFC 6455 allows, and anything it forbids.

    ``rsv``: RSV1..3 as bits 4, 2, 1.  ``width``: the length field's size (0,
    2 or 8 bytes after the 7-bit field; ``None``: the shortest form).
    ``length``: the length to announce, if not the payload's.
    """
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    size = len(payload) if length is None else length
    if width is None:
        width = 0 if size < 126 else 2 if size < 65536 else 8
    mask_bit = 0x80 if mask else 0
    if width == 0:
        header = struct.pack("!BB", first, mask_bit | size)
    elif width == 2:
        header = struct.pack("!BBH", first, mask_bit | 126, size)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, size)
    if not mask:
        return header + payload
    return header + key + mask_bytes(payload, key)


def client_frame(opcode: int, payload: bytes = b"", **kwargs: object) -> bytes:
    """A frame as a client sends it: masked (what a server's reader expects)."""
    return raw_frame(opcode, payload, mask=True, **kwargs)  # type: ignore[arg-type]


def server_reader(*, compression: bool = False, max_whole: int = 2**20) -> FrameReader:
    """The reader a server uses: it reads a client's (masked) frames."""
    return FrameReader(client=False, compression=compression, max_whole=max_whole)


def client_reader(*, compression: bool = False, max_whole: int = 2**20) -> FrameReader:
    """The reader a client uses: it reads a server's (unmasked) frames."""
    return FrameReader(client=True, compression=compression, max_whole=max_whole)


def read_all(reader: FrameReader, data: bytes, *, step: int | None = None) -> list[Piece]:
    """Feed ``data`` (in pieces of ``step`` bytes) and collect every piece the reader returns."""
    pieces: list[Piece] = []
    chunks = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    for chunk in chunks:
        reader.feed(chunk)
        while (piece := reader.next_piece()) is not None:
            pieces.append(piece)
    return pieces


def join_messages(pieces: list[Piece]) -> list[tuple[int, bytes]]:
    """Data pieces joined into ``(opcode, payload)`` messages, control frames as they are; checks the flags."""
    out: list[tuple[int, bytes]] = []
    current: bytearray | None = None
    for opcode, payload, flags in pieces:
        if opcode >= OP_CLOSE:
            assert flags == 0
            out.append((opcode, payload))
            continue
        assert bool(flags & FIRST) == (current is None), "FIRST marks exactly the first piece of a message"
        if current is None:
            current = bytearray()
        current += payload
        if flags & LAST:
            out.append((opcode, bytes(current)))
            current = None
    assert current is None, "a message was left without its LAST piece"
    return out


def reader_error(reader: FrameReader, data: bytes, *, step: int | None = None) -> FrameError:
    with pytest.raises(FrameError) as info:
        read_all(reader, data, step=step)
    return info.value


# --- FrameReader: frames that are valid ------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 2**20])
@pytest.mark.parametrize("step", [None, 1, 7, 4096])
def test_round_trip_sizes_and_pieces(size: int, step: int | None) -> None:
    """Frames of every length encoding, fed whole or in pieces, both directions (RFC 6455 5.2)."""
    if step in (1, 7) and size > 70000:
        pytest.skip("byte by byte through a megabyte is slow and proves nothing more")
    payload = os.urandom(size)
    text = "d\u00f6ne \U0001f600".encode()
    data = frame(BINARY, payload, mask=True) + frame(TEXT, text, mask=True)
    assert join_messages(read_all(server_reader(), data, step=step)) == [(BINARY, payload), (TEXT, text)]
    # And the other way: a server's unmasked frames to a client.
    data = frame(BINARY, payload, mask=False) + frame(TEXT, text, mask=False)
    assert join_messages(read_all(client_reader(), data, step=step)) == [(BINARY, payload), (TEXT, text)]


def test_a_whole_frame_is_one_piece() -> None:
    reader = server_reader()
    reader.feed(client_frame(TEXT, b"hello") + client_frame(BINARY, b"\x00\x01"))
    assert reader.next_piece() == (TEXT, b"hello", FIRST | LAST)
    assert reader.next_piece() == (BINARY, b"\x00\x01", FIRST | LAST)
    assert reader.next_piece() is None
    assert reader.buffered == 0


def test_every_prefix_of_a_frame_waits_for_more() -> None:
    """A header or control frame cut anywhere is not an error: the reader waits (and keeps it)."""
    for data in (
        client_frame(OP_PING, b"ping"),
        client_frame(BINARY, b"x" * 300),
        client_frame(BINARY, b"x" * 70000),
    ):
        for cut in range(min(len(data), 14)):
            reader = server_reader()
            reader.feed(data[:cut])
            assert reader.next_piece() is None
            assert reader.buffered == cut


def test_fragments_and_interleaved_control_frames() -> None:
    """RFC 6455 5.4: control frames may come between the fragments of a message, and come whole."""
    text = "h\u00e9 there!".encode()
    data = (
        client_frame(TEXT, text[:2], fin=False)
        + client_frame(OP_PING, b"p")
        + client_frame(CONTINUATION, text[2:9], fin=False)
        + client_frame(OP_PONG, b"q")
        + client_frame(CONTINUATION, text[9:])
    )
    expected = [(OP_PING, b"p"), (OP_PONG, b"q"), (TEXT, text)]
    for step in (None, 1, 3):
        pieces = read_all(server_reader(), data, step=step)
        assert join_messages(pieces) == expected
    pieces = read_all(server_reader(), data)
    # Continuation frames carry the message's opcode; only the last has LAST.
    assert pieces == [
        (TEXT, text[:2], FIRST),
        (OP_PING, b"p", 0),
        (TEXT, text[2:9], 0),
        (OP_PONG, b"q", 0),
        (TEXT, text[9:], LAST),
    ]


def test_empty_frames() -> None:
    data = (
        client_frame(BINARY, b"", fin=False)
        + client_frame(CONTINUATION, b"", fin=False)
        + client_frame(CONTINUATION, b"")
        + client_frame(TEXT, b"")
        + client_frame(OP_CLOSE, b"")
    )
    assert read_all(server_reader(), data) == [
        (BINARY, b"", FIRST),
        (BINARY, b"", 0),
        (BINARY, b"", LAST),
        (TEXT, b"", FIRST | LAST),
        (OP_CLOSE, b"", 0),
    ]


def test_a_new_message_after_a_fragmented_one_ended() -> None:
    data = client_frame(BINARY, b"a", fin=False) + client_frame(CONTINUATION, b"b") + client_frame(TEXT, b"c")
    assert read_all(server_reader(), data) == [(BINARY, b"a", FIRST), (BINARY, b"b", LAST), (TEXT, b"c", FIRST | LAST)]


@pytest.mark.parametrize(("size", "width"), [(126, 2), (65535, 2), (65536, 8)])
def test_shortest_length_encodings_at_their_bounds_are_valid(size: int, width: int) -> None:
    data = raw_frame(BINARY, b"z" * size, width=width)
    assert read_all(server_reader(), data) == [(BINARY, b"z" * size, FIRST | LAST)]


def test_a_63_bit_length_is_read_as_it_arrives() -> None:
    """RFC 6455 5.2: the 64-bit length's most significant bit is 0; 2**63 - 1 is a valid length.

    The reader does not wait for (or allocate) the frame: it hands on what came.
    """
    length = 2**63 - 1
    for opcode in (TEXT, BINARY):
        reader = server_reader()
        reader.feed(raw_frame(opcode, b"", length=length) + mask_bytes(b"abcdef", KEY))
        assert reader.next_piece() == (opcode, b"abcdef", FIRST)
        assert reader.wants == length - 6
        reader.feed(b"\x00" * 5)
        piece = reader.next_piece()
        assert piece is not None
        assert piece[0] == opcode
        assert piece[2] == 0  # neither FIRST nor LAST
        assert piece[1] == mask_bytes(b"\x00" * 5, KEY[2:] + KEY[:2])  # the mask goes on at offset 6
        assert reader.wants == length - 11


# --- FrameReader: pieces of a large frame ----------------------------------------------------


@pytest.mark.parametrize("step", [1, 3, 7, 1000])
def test_a_text_frame_is_handed_on_in_pieces_as_it_arrives(step: int) -> None:
    """Text goes piece by piece (so that invalid UTF-8 fails at the first bad piece); the mask follows."""
    payload = bytes(range(256)) * 8
    data = client_frame(TEXT, payload[:1000], fin=False) + client_frame(CONTINUATION, payload[1000:])
    pieces = read_all(server_reader(), data, step=step)
    assert len(pieces) > 2
    assert b"".join(piece[1] for piece in pieces) == payload
    assert all(piece[0] == TEXT for piece in pieces)
    assert pieces[0][2] == FIRST
    assert [piece[2] for piece in pieces[1:-1]] == [0] * (len(pieces) - 2)  # no FIRST on the second frame
    assert pieces[-1][2] == LAST


def test_wants_says_how_much_of_a_frame_is_missing() -> None:
    reader = server_reader()
    data = client_frame(TEXT, b"x" * 1000)
    reader.feed(data[:500])  # a 4-byte length, a mask: 8 bytes of header
    assert reader.wants == 0  # unknown until a frame is under way
    assert reader.next_piece() == (TEXT, b"x" * 492, FIRST)
    assert reader.wants == 508
    reader.feed(data[500:])
    assert reader.next_piece() == (TEXT, b"x" * 508, LAST)
    assert reader.wants == 0


@pytest.mark.parametrize("size", [100, 1000, 2**20])
def test_a_binary_frame_up_to_1_mib_is_taken_whole(size: int) -> None:
    """A binary frame up to 1 MiB waits until it is all here (``wants`` says how much is missing)."""
    payload = os.urandom(size)
    data = client_frame(BINARY, payload)
    reader = server_reader()
    half = len(data) // 2
    reader.feed(data[:half])
    assert reader.next_piece() is None
    assert reader.wants == len(data) - half
    assert reader.buffered == half  # nothing consumed: the header is read again
    reader.feed(data[half:-1])
    assert reader.next_piece() is None
    assert reader.wants == 1
    reader.feed(data[-1:])
    assert reader.next_piece() == (BINARY, payload, FIRST | LAST)
    assert reader.wants == 0


def test_a_binary_continuation_frame_is_taken_whole_too() -> None:
    data = client_frame(BINARY, b"a", fin=False) + client_frame(CONTINUATION, b"b" * 5000)
    assert read_all(server_reader(), data, step=100) == [(BINARY, b"a", FIRST), (BINARY, b"b" * 5000, LAST)]


def test_a_large_awaited_frame_is_joined_and_the_next_frame_kept() -> None:
    """The rest of a large frame comes in parts, the last one with the next frame's start."""
    payload = os.urandom(300_000)
    reader = server_reader()
    data = client_frame(BINARY, payload) + client_frame(TEXT, b"next")
    pieces = read_all(reader, data, step=70_000)
    assert pieces == [(BINARY, payload, FIRST | LAST), (TEXT, b"next", FIRST | LAST)]
    assert reader.buffered == 0
    assert reader.read_limit == 0  # a server's frames come masked: unmasking copies anyway


def test_a_client_reads_a_header_alone_after_a_large_frame_and_takes_the_next_read_as_the_payload() -> None:
    first, second = os.urandom(200_000), os.urandom(200_000)
    reader = client_reader()
    assert reader.read_limit == 0  # no large frame yet
    data = raw_frame(BINARY, first, mask=False)
    assert read_all(reader, data[:65536]) == []
    assert reader.read_limit == 0  # (bytes are buffered)
    assert read_all(reader, data[65536:]) == [(BINARY, first, FIRST | LAST)]
    assert reader.read_limit == 10  # the next frame's header: 2 bytes, an 8-byte length, no mask
    reader.feed(raw_frame(BINARY, second, mask=False)[:10])
    assert reader.next_piece() is None
    assert reader.wants == len(second)
    reader.feed(second)
    piece = reader.next_piece()
    assert piece == (BINARY, second, FIRST | LAST)
    assert piece[1] is second  # the read's bytes themselves: no copy
    reader.feed(raw_frame(TEXT, b"y" * 200_000, mask=False)[:10])  # a large text frame: in pieces
    assert reader.next_piece() is None
    assert reader.read_limit == 0  # inside a frame: its rest in as few reads as can be
    reader.feed(b"y" * 200_000)
    assert reader.next_piece() == (TEXT, b"y" * 200_000, FIRST | LAST)
    assert reader.read_limit == 0  # (a frame taken in pieces: reads sized as usual)
    reader.feed(raw_frame(BINARY, b"small", mask=False) + raw_frame(TEXT, b"x" * 200_000, mask=False)[:9])
    assert reader.next_piece() == (BINARY, b"small", FIRST | LAST)
    assert reader.read_limit == 0  # after a small frame, reads are sized as usual
    reader.feed(b"\x40" + b"x" * 100_000)  # the text frame's header ends here, its payload goes in pieces
    assert reader.next_piece() == (TEXT, b"x" * 100_000, FIRST)
    reader.feed(b"x" * 100_000)
    assert reader.next_piece() == (TEXT, b"x" * 100_000, LAST)
    assert reader.read_limit == 0


def test_a_payload_read_in_several_parts_is_joined_and_a_bytearray_copied() -> None:
    """Only one ``bytes`` read that is exactly the payload is taken as it is (TLS reads are bytearrays)."""
    payload = os.urandom(150_000)
    for parts in ([payload[:70_000], payload[70_000:]], [bytearray(payload)]):
        reader = client_reader()
        read_all(reader, raw_frame(BINARY, b"\0" * 100_000, mask=False), step=50_000)
        reader.feed(raw_frame(BINARY, payload, mask=False)[:10])
        assert reader.next_piece() is None
        for part in parts:
            reader.feed(part)
        piece = reader.next_piece()
        assert piece == (BINARY, payload, FIRST | LAST)
        assert type(piece[1]) is bytes


def test_a_binary_frame_over_1_mib_goes_in_pieces() -> None:
    payload = b"\x00" * (2**20 + 1)
    pieces = read_all(server_reader(max_whole=2**21), client_frame(BINARY, payload), step=2**19)
    assert len(pieces) > 1
    assert [flags for _, _, flags in pieces] == [FIRST] + [0] * (len(pieces) - 2) + [LAST]
    assert b"".join(piece for _, piece, _ in pieces) == payload


def test_a_binary_frame_larger_than_max_whole_goes_in_pieces() -> None:
    """``max_whole`` (the message size limit): a frame larger than a message may be is not waited for."""
    pieces = read_all(server_reader(max_whole=100), client_frame(BINARY, b"b" * 101), step=50)
    assert pieces == [(BINARY, b"b" * 44, FIRST), (BINARY, b"b" * 50, 0), (BINARY, b"b" * 7, LAST)]


def test_a_compressed_binary_frame_goes_in_pieces() -> None:
    """The inflater bounds a compressed message as it comes, so its frames are not waited for."""
    data = raw_frame(BINARY, b"c" * 100, rsv=RSV1, fin=False) + raw_frame(CONTINUATION, b"d" * 100)
    pieces = read_all(server_reader(compression=True), data, step=60)
    assert [flags for _, _, flags in pieces] == [
        FIRST | COMPRESSED,
        COMPRESSED,
        COMPRESSED,
        COMPRESSED,
        COMPRESSED | LAST,
    ]
    assert b"".join(piece for _, piece, _ in pieces) == b"c" * 100 + b"d" * 100


def test_compressed_flag_only_for_messages_with_rsv1() -> None:
    data = (
        raw_frame(TEXT, b"a", rsv=RSV1)
        + raw_frame(TEXT, b"b")
        + raw_frame(BINARY, b"c", rsv=RSV1, fin=False)
        + raw_frame(OP_PING)
        + raw_frame(CONTINUATION, b"d")
    )
    assert read_all(server_reader(compression=True), data) == [
        (TEXT, b"a", FIRST | LAST | COMPRESSED),
        (TEXT, b"b", FIRST | LAST),
        (BINARY, b"c", FIRST | COMPRESSED),
        (OP_PING, b"", 0),
        (BINARY, b"d", LAST | COMPRESSED),
    ]


@pytest.mark.parametrize("offset", range(1, 9))
def test_the_mask_continues_across_pieces_at_any_offset(offset: int) -> None:
    payload = bytes(range(200))
    data = client_frame(TEXT, payload)
    reader = server_reader()
    cut = 8 + offset  # the header: 2 bytes, a 2-byte length, a 4-byte key
    reader.feed(data[:cut])
    first = reader.next_piece()
    reader.feed(data[cut:])
    rest = reader.next_piece()
    assert first is not None
    assert rest is not None
    assert first[1] + rest[1] == payload


# --- FrameReader: frames that break RFC 6455 (all 1002) --------------------------------------


def test_masking_direction() -> None:
    """RFC 6455 5.1: a client masks every frame; a server masks none."""
    for opcode in (TEXT, BINARY, OP_PING, OP_CLOSE):
        assert reader_error(server_reader(), raw_frame(opcode, b"x", mask=False)).code == 1002
        assert reader_error(client_reader(), raw_frame(opcode, b"x", mask=True)).code == 1002
    error = reader_error(server_reader(), raw_frame(TEXT, b"x", mask=False))
    assert error.reason == "unmasked frame from a client"
    error = reader_error(client_reader(), raw_frame(TEXT, b"x", mask=True))
    assert error.reason == "masked frame from a server"


@pytest.mark.parametrize("rsv", range(1, 8))
def test_rsv_bits_without_compression(rsv: int) -> None:
    """RFC 6455 5.2: a nonzero RSV bit without an extension that defines it."""
    for opcode in (TEXT, BINARY, OP_PING, OP_PONG, OP_CLOSE):
        error = reader_error(server_reader(), raw_frame(opcode, b"x", rsv=rsv))
        assert error.code == 1002
        assert "reserved bit" in error.reason
        assert reader_error(client_reader(), raw_frame(opcode, b"x", rsv=rsv, mask=False)).code == 1002


@pytest.mark.parametrize(
    "data",
    [
        raw_frame(TEXT, b"x", rsv=RSV2),
        raw_frame(TEXT, b"x", rsv=RSV3),
        raw_frame(TEXT, b"x", rsv=RSV1 | RSV2),
        raw_frame(BINARY, b"x", rsv=RSV1 | RSV3),
        raw_frame(OP_PING, b"x", rsv=RSV1),  # RFC 7692 6: RSV1 only on data frames
        raw_frame(OP_CLOSE, b"", rsv=RSV1),
        raw_frame(TEXT, b"x", fin=False) + raw_frame(CONTINUATION, b"y", rsv=RSV1),  # ... only on the first
        raw_frame(TEXT, b"x", rsv=RSV1, fin=False) + raw_frame(CONTINUATION, b"y", rsv=RSV1),
    ],
)
def test_rsv_bits_with_compression(data: bytes) -> None:
    """RFC 7692 6: permessage-deflate defines RSV1 on the first frame of a data message, nothing else."""
    assert reader_error(server_reader(compression=True), data).code == 1002


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_reserved_opcodes(opcode: int) -> None:
    """RFC 6455 5.2: opcodes 0x3-0x7 and 0xB-0xF are reserved."""
    for reader, mask in ((server_reader(), True), (client_reader(), False)):
        error = reader_error(reader, raw_frame(opcode, b"x", mask=mask))
        assert error.code == 1002
        assert f"{opcode:#x}" in error.reason
    # Also inside a fragmented message.
    assert reader_error(server_reader(), raw_frame(TEXT, b"a", fin=False) + raw_frame(opcode)).code == 1002


@pytest.mark.parametrize("opcode", [OP_CLOSE, OP_PING, OP_PONG])
def test_control_frame_rules(opcode: int) -> None:
    """RFC 6455 5.5: control frames are not fragmented and carry at most 125 bytes."""
    assert read_all(server_reader(), raw_frame(opcode, b"\x03\xe8" + b"x" * 123)) == [
        (opcode, b"\x03\xe8" + b"x" * 123, 0)
    ]
    error = reader_error(server_reader(), raw_frame(opcode, b"x", fin=False))
    assert (error.code, error.reason) == (1002, "fragmented control frame")
    for size, width in ((126, None), (65536, None), (5, 2), (125, 8)):
        error = reader_error(server_reader(), raw_frame(opcode, b"x" * size, width=width))
        assert error.code == 1002


@pytest.mark.parametrize(
    ("size", "width"),
    [(0, 2), (5, 2), (125, 2), (0, 8), (125, 8), (126, 8), (65535, 8)],
)
def test_lengths_not_in_their_shortest_form(size: int, width: int) -> None:
    """RFC 6455 5.2: "the minimal number of bytes MUST be used to encode the length"."""
    for opcode in (TEXT, BINARY):
        error = reader_error(server_reader(), raw_frame(opcode, b"x" * size, width=width))
        assert error.code == 1002
        assert "shortest" in error.reason


def test_a_64_bit_length_with_its_most_significant_bit_set() -> None:
    header = b"\x82\xff" + struct.pack("!Q", 1 << 63) + KEY
    assert reader_error(server_reader(), header).code == 1002
    header = b"\x82\xff" + struct.pack("!Q", 2**64 - 1) + KEY
    assert reader_error(server_reader(), header).code == 1002


def test_the_length_is_checked_before_the_mask_key_arrives() -> None:
    """A non-shortest length fails as soon as the length field is here."""
    reader = server_reader()
    reader.feed(b"\x82\xfe\x00\x05")  # a 2-byte length of 5, no mask key yet
    with pytest.raises(FrameError):
        reader.next_piece()


def test_continuation_without_a_message() -> None:
    """RFC 6455 5.4: a continuation frame continues a fragmented message; there is none."""
    for data in (
        raw_frame(CONTINUATION, b"x"),
        raw_frame(CONTINUATION, b"x", fin=False),
        raw_frame(CONTINUATION, b""),
        raw_frame(TEXT, b"a") + raw_frame(CONTINUATION, b"b"),  # the message ended already
        raw_frame(BINARY, b"a", fin=False) + raw_frame(CONTINUATION, b"b") + raw_frame(CONTINUATION, b"c"),
    ):
        error = reader_error(server_reader(), data)
        assert (error.code, error.reason) == (1002, "continuation frame without a message to continue")


def test_a_continuation_frame_is_checked_at_its_header() -> None:
    """The order of frames is checked once the header is here, before any payload."""
    reader = server_reader()
    reader.feed(raw_frame(CONTINUATION, b"", length=1000))
    with pytest.raises(FrameError):
        reader.next_piece()


@pytest.mark.parametrize("first", [TEXT, BINARY])
@pytest.mark.parametrize("second", [TEXT, BINARY])
def test_a_new_message_inside_a_fragmented_one(first: int, second: int) -> None:
    """RFC 6455 5.4: the fragments of one message are not interleaved with another's."""
    data = raw_frame(first, b"a", fin=False) + raw_frame(second, b"b")
    error = reader_error(server_reader(), data)
    assert (error.code, error.reason) == (1002, "new message before the previous one ended")
    # Also when the first message's frame is still arriving in pieces.
    data = raw_frame(first, b"a" * 2000, fin=False) + raw_frame(second, b"b")
    for step in (1, 100):
        assert reader_error(server_reader(max_whole=10), data, step=step).code == 1002


@pytest.mark.parametrize("step", [None, 1])
def test_errors_behind_valid_frames(step: int | None) -> None:
    """The valid frames before an error are handed on; the error comes in its turn."""
    reader = server_reader()
    data = raw_frame(TEXT, b"ok") + raw_frame(OP_PING, b"p") + raw_frame(0x3)
    pieces: list[Piece] = []
    with pytest.raises(FrameError):
        chunks = [data] if step is None else [data[i : i + 1] for i in range(len(data))]
        for chunk in chunks:
            reader.feed(chunk)
            while (piece := reader.next_piece()) is not None:
                pieces.append(piece)
    assert join_messages(pieces) == [(TEXT, b"ok"), (OP_PING, b"p")]


# --- writing frames --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "header"),
    [
        (0, b"\x82\x00"),
        (125, b"\x82\x7d"),
        (126, b"\x82\x7e\x00\x7e"),
        (65535, b"\x82\x7e\xff\xff"),
        (65536, b"\x82\x7f" + struct.pack("!Q", 65536)),
    ],
)
def test_frame_writes_the_shortest_length(size: int, header: bytes) -> None:
    payload = b"p" * size
    assert frame(BINARY, payload, mask=False) == header + payload
    masked = frame(BINARY, payload, mask=True)
    assert masked[:1] == header[:1]
    assert masked[1] == header[1] | 0x80
    assert masked[2 : len(header)] == header[2:]
    key = masked[len(header) : len(header) + 4]
    assert mask_bytes(masked[len(header) + 4 :], key) == payload


def test_frame_first_byte() -> None:
    assert frame(TEXT, b"", mask=False) == b"\x81\x00"
    assert frame(OP_PING, b"", mask=False) == b"\x89\x00"
    assert frame(OP_PONG, b"x", mask=False) == b"\x8a\x01x"
    assert frame(TEXT, b"", mask=False, rsv1=True) == b"\xc1\x00"
    assert frame(BINARY, b"", mask=True, rsv1=True)[:2] == b"\xc2\x80"


@pytest.mark.parametrize("opcode", [TEXT, BINARY, OP_PING, OP_PONG, OP_CLOSE])
@pytest.mark.parametrize("size", [0, 3, 125])
def test_written_frames_read_back(opcode: int, size: int) -> None:
    """What ``frame()`` writes, the reader of the other role reads back exactly."""
    payload = bytes(range(size)) if opcode != TEXT else b"t" * size
    if opcode == OP_CLOSE and size:
        payload = b"\x03\xe8" + payload[2:]
    for mask, reader in ((True, server_reader()), (False, client_reader())):
        flags = 0 if opcode >= OP_CLOSE else FIRST | LAST
        assert read_all(reader, frame(opcode, payload, mask=mask)) == [(opcode, payload, flags)]


def test_close_frame_writer() -> None:
    assert close_frame(1005, None, mask=False) == b"\x88\x00"  # "no code": an empty payload
    assert close_frame(1005, "ignored", mask=False) == b"\x88\x00"
    assert close_frame(1000, None, mask=False) == b"\x88\x02\x03\xe8"
    assert close_frame(1000, "bye", mask=False) == b"\x88\x05\x03\xe8bye"
    assert close_frame(4999, "", mask=False) == b"\x88\x02\x13\x87"
    masked = close_frame(1001, "away", mask=True)
    assert masked[:2] == b"\x88\x86"
    assert mask_bytes(masked[6:], masked[2:6]) == b"\x03\xe9away"


def test_close_frame_cuts_long_reasons_on_a_character_boundary() -> None:
    exact = close_frame(1000, "a" * 123, mask=False)
    assert exact == b"\x88\x7d\x03\xe8" + b"a" * 123
    long = close_frame(1000, "\u00e9" * 100, mask=False)
    assert len(long) == 2 + 2 + 122  # 61 two-byte characters: the 62nd would pass 123 bytes
    assert long[4:].decode() == "\u00e9" * 61
    emoji = close_frame(1000, "\U0001f600" * 40, mask=False)
    assert emoji[4:].decode() == "\U0001f600" * 30  # 120 bytes
    assert read_all(client_reader(), long) == [(OP_CLOSE, long[2:], 0)]


def test_masking_keys_are_fresh() -> None:
    """RFC 6455 5.3: a fresh, unpredictable key for every frame."""
    frames = [frame(BINARY, b"", mask=True) for _ in range(3000)]  # through the pool's refills
    keys = [data[2:6] for data in frames]
    assert len(set(keys)) > 2990  # 32-bit random keys: a few collisions at most


def test_masking_keys_come_from_a_pool_of_os_randomness(monkeypatch: pytest.MonkeyPatch) -> None:
    """One ``os.urandom(4096)`` per 1024 keys, every key a new slice of it."""
    calls: list[int] = []
    pools: list[bytes] = []
    real_urandom = os.urandom

    def counting_urandom(size: int) -> bytes:
        calls.append(size)
        pools.append(real_urandom(size))
        return pools[-1]

    monkeypatch.setattr(os, "urandom", counting_urandom)  # (the module _frames calls it through)
    monkeypatch.setattr(_frames, "_keys", b"")
    monkeypatch.setattr(_frames, "_keys_used", 0)
    keys = [frame(BINARY, b"", mask=True)[2:6] for _ in range(2049)]
    assert calls == [4096, 4096, 4096]
    assert b"".join(keys[:1024]) == pools[0]
    assert b"".join(keys[1024:2048]) == pools[1]
    assert keys[2048] == pools[2][:4]


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 31, 32, 33, 1000, 65537])
def test_masking_implementations_agree(size: int) -> None:
    data, key = os.urandom(size), os.urandom(4)
    expected = bytes(byte ^ key[index % 4] for index, byte in enumerate(data))
    assert mask_bytes(data, key) == expected
    assert _mask.python_apply_mask(data, key) == expected
    assert _mask.apply_mask(data, key) == expected
    # With a prefix (a frame's header, in the same allocation), and from any buffer.
    assert _mask.python_apply_mask(memoryview(data), key, b"head") == b"head" + expected
    assert _mask.apply_mask(memoryview(data), key, b"head") == b"head" + expected
    assert _mask.apply_mask(bytearray(data), key, b"") == expected
    assert _mask.python_apply_mask(bytearray(data), key) == expected


def _c_apply_mask() -> Callable[..., bytes] | None:
    try:
        from trio_ws._speedups import apply_mask as c_apply_mask
    except ImportError:
        return None
    return c_apply_mask


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 63, 64, 65, 4097])
def test_the_c_masking_agrees_with_python(size: int) -> None:
    c_apply_mask = _c_apply_mask()
    if c_apply_mask is None:
        pytest.skip("the C extension is not built")
    data, key = os.urandom(size), os.urandom(4)
    assert c_apply_mask(data, key) == _mask.python_apply_mask(data, key)
    assert c_apply_mask(memoryview(data)[1:], key, b"h") == _mask.python_apply_mask(data[1:], key, b"h")
    assert c_apply_mask(bytearray(data), key) == _mask.python_apply_mask(data, key)


def test_the_c_masking_is_used_when_built() -> None:
    built = _c_apply_mask() is not None and not os.environ.get("TRIO_WS_NO_SPEEDUPS")
    assert built == _mask.SPEEDUPS
    if _mask.SPEEDUPS:
        assert _mask.apply_mask is not _mask.python_apply_mask


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


# --- MessageAssembler --------------------------------------------------------------------------


def assembler(max_message_size: int = 2**20) -> MessageAssembler:
    return MessageAssembler(max_message_size, None)


def add_pieces(target: MessageAssembler, opcode: int, pieces: list[bytes]) -> str | bytes | None:
    """Add ``pieces`` as one message; each piece but the last must return None."""
    for index, payload in enumerate(pieces):
        flags = (FIRST if index == 0 else 0) | (LAST if index == len(pieces) - 1 else 0)
        result = target.add(opcode, payload, flags)
        if index < len(pieces) - 1:
            assert result is None
        else:
            return result
    raise AssertionError("no pieces")


def assembler_error(target: MessageAssembler, opcode: int, payload: bytes, flags: int) -> FrameError:
    with pytest.raises(FrameError) as info:
        target.add(opcode, payload, flags)
    return info.value


def test_whole_messages() -> None:
    target = assembler()
    assert target.add(TEXT, "h\u00e9llo".encode(), FIRST | LAST) == "h\u00e9llo"
    assert target.add(BINARY, b"\x00\xff", FIRST | LAST) == b"\x00\xff"
    assert target.add(TEXT, b"", FIRST | LAST) == ""
    assert target.add(BINARY, b"", FIRST | LAST) == b""


@pytest.mark.parametrize("text", ["\u00e9", "\u20ac", "\U0001f600", "a\u00e9\u20ac\U0001f600z"])
def test_utf8_split_across_pieces_at_every_byte(text: str) -> None:
    """RFC 6455 5.6: text is UTF-8 over the whole message; a character may span frames."""
    data = text.encode()
    for cut in range(len(data) + 1):
        assert add_pieces(assembler(), TEXT, [data[:cut], data[cut:]]) == text
    # One byte per piece, with empty pieces around.
    assert add_pieces(assembler(), TEXT, [b"", *(bytes([byte]) for byte in data), b""]) == text


def test_binary_pieces_are_joined() -> None:
    assert add_pieces(assembler(), BINARY, [b"ab", b"", b"cd", b"e"]) == b"abcde"


@pytest.mark.parametrize(
    ("pieces", "bad"),
    [
        ([b"ok", b"\xff", b"more"], 1),
        ([b"ok\xc0", b"\x80"], 0),  # C0 never starts a character: fails at once
        ([b"ok", b"\xed\xa0\x80", b"x"], 1),  # a UTF-16 surrogate
        ([b"\xf4\x90\x80\x80", b"x"], 0),  # above U+10FFFF
        ([b"\xe2\x82", b"A", b"x"], 1),  # a character cut by a byte that cannot continue it
        ([b"\xe0\x80\x80"], 0),  # overlong
        ([b"ok", b"\xe2\x82"], 1),  # the message ends inside a character
        ([b"\xf0\x9f", b"\x98", b""], 2),
    ],
)
def test_invalid_utf8_fails_at_the_first_bad_piece(pieces: list[bytes], bad: int) -> None:
    """RFC 6455 8.1: fail fast, at the first piece that cannot be part of valid UTF-8 (1007)."""
    target = assembler()
    for index, payload in enumerate(pieces):
        flags = (FIRST if index == 0 else 0) | (LAST if index == len(pieces) - 1 else 0)
        if index < bad:
            assert target.add(TEXT, payload, flags) is None
        else:
            assert assembler_error(target, TEXT, payload, flags).code == 1007
            break


def test_invalid_utf8_in_a_whole_message() -> None:
    error = assembler_error(assembler(), TEXT, b"caf\xe9", FIRST | LAST)
    assert error.code == 1007
    assert "UTF-8" in error.reason


@pytest.mark.parametrize(("opcode", "unit"), [(TEXT, "\u00e9"), (TEXT, "\U0001f600"), (BINARY, "x")])
def test_max_message_size_in_len_units(opcode: int, unit: str) -> None:
    """The limit counts what ``len()`` counts: characters for text, bytes for binary."""

    def message(count: int) -> str | bytes:
        return unit * count if opcode == TEXT else (unit * count).encode()

    ok = (unit * 10).encode()
    too_big = (unit * 11).encode()
    # Whole.
    assert assembler(10).add(opcode, ok, FIRST | LAST) == message(10)
    assert assembler_error(assembler(10), opcode, too_big, FIRST | LAST).code == 1009
    # In pieces, split inside a character.
    assert add_pieces(assembler(10), opcode, [ok[:5], ok[5:]]) == message(10)
    target = assembler(10)
    assert target.add(opcode, too_big[:-3], FIRST) is None
    assert assembler_error(target, opcode, too_big[-3:], LAST).code == 1009


def test_max_message_size_fails_at_the_piece_that_passes_it() -> None:
    target = assembler(10)
    assert target.add(BINARY, b"x" * 6, FIRST) is None
    error = assembler_error(target, BINARY, b"x" * 5, 0)
    assert error.code == 1009
    assert "max_message_size (10" in error.reason


@pytest.mark.parametrize("opcode", [TEXT, BINARY])
def test_after_1009_the_rest_is_dropped_and_the_next_message_goes_on(opcode: int) -> None:
    target = assembler(10)
    assert target.add(opcode, b"x" * 8, FIRST) is None
    assert assembler_error(target, opcode, b"x" * 8, 0).code == 1009
    # The rest of that message is dropped, whatever it holds (even invalid UTF-8)...
    assert target.add(opcode, b"\xff" * 1000, 0) is None
    assert target.add(opcode, b"x", LAST) is None
    # ... and the next message is whole.
    assert target.add(TEXT, b"next", FIRST | LAST) == "next"
    assert add_pieces(target, BINARY, [b"a", b"b"]) == b"ab"


def test_a_1009_on_the_last_piece_leaves_nothing_to_drop() -> None:
    target = assembler(3)
    assert target.add(TEXT, b"ab", FIRST) is None
    assert assembler_error(target, TEXT, b"cd", LAST).code == 1009
    assert target.add(TEXT, b"new", FIRST | LAST) == "new"
    assert assembler_error(target, BINARY, b"four", FIRST | LAST).code == 1009
    assert target.add(BINARY, b"abc", FIRST | LAST) == b"abc"


def _agreed_deflate(max_message_size: int) -> PerMessageDeflate:
    """A server's permessage-deflate, agreed with default parameters."""
    deflate = PerMessageDeflate(client=False, max_message_size=max_message_size)
    assert deflate.accept("permessage-deflate") == ""
    return deflate


def _compress(data: bytes) -> bytes:
    """A message compressed as RFC 7692 7.2.1 says (raw deflate, sync flush, tail removed)."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def test_compressed_messages_in_pieces() -> None:
    target = MessageAssembler(2**20, _agreed_deflate(2**20))
    text = ("compressed \u00e9 " * 50).encode()
    data = _compress(text)
    pieces = [data[:7], data[7:8], data[8:]]
    flags = [FIRST | COMPRESSED, COMPRESSED, LAST | COMPRESSED]
    assert target.add(TEXT, pieces[0], flags[0]) is None
    assert target.add(TEXT, pieces[1], flags[1]) is None
    assert target.add(TEXT, pieces[2], flags[2]) == text.decode()
    assert target.add(BINARY, _compress(b"again"), FIRST | LAST | COMPRESSED) == b"again"


def test_compressed_data_that_does_not_inflate() -> None:
    target = MessageAssembler(2**20, _agreed_deflate(2**20))
    assert assembler_error(target, BINARY, b"\xff\xff\xff\xff", FIRST | LAST | COMPRESSED).code == 1007


@pytest.mark.parametrize(("opcode", "unit"), [(TEXT, "\u00e9"), (BINARY, "b")])
def test_a_compressed_message_is_bounded_in_len_units(opcode: int, unit: str) -> None:
    target = MessageAssembler(100, _agreed_deflate(100))
    expected = unit * 100 if opcode == TEXT else (unit * 100).encode()
    assert target.add(opcode, _compress((unit * 100).encode()), FIRST | LAST | COMPRESSED) == expected
    too_big = _compress((unit * 101).encode())
    assert assembler_error(target, opcode, too_big, FIRST | LAST | COMPRESSED).code == 1009
    # The connection goes on reading (for the Close): the next message is assembled.  (A
    # compressed one after a 1009: see test_protocol's xfail tests of that.)
    assert target.add(TEXT, b"ok", FIRST | LAST) == "ok"
