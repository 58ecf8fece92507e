"""trio_ws's protocol against wsproto's, on the same random and mutated frame streams (hypothesis).

Both roles: a trio_ws server (``ServerProtocol``, OPEN through a real
handshake) and a wsproto server (``wsproto.connection.Connection`` with
``ConnectionType.SERVER``, which starts OPEN) read the same masked client
frames; a trio_ws client and a wsproto client read the same unmasked server
frames.  The stream is built from a strategy of frames (every opcode, the
reserved ones too; FIN and RSV bits; right and wrong masking; lengths in
their shortest form or not; payloads with valid and invalid UTF-8 cut
anywhere; Close payloads with valid and invalid codes and reasons), mutated at
the byte level (a byte flipped, the stream cut short, bytes inserted or
removed, a frame repeated or dropped), and fed in random pieces, then EOF.

Both must agree on the *outcome*: the sequence of messages (wsproto's
TextMessage/BytesMessage fragments joined), pings and pongs, and how the
connection ends (the peer's Close and its code and reason, or the code of the
failure, or 1006 at EOF).  Where they may differ, it is by design, and each
such case is a named function below (``DIFFERENCES``): it recognises the case,
says why, and checks trio_ws's exact outcome instead.  Anything else is a
disagreement, and fails.

The deliberate differences (also listed in docs/architecture.md):

- ``close_code_1014``: trio_ws accepts a received Close with code 1014 (Bad
  Gateway, IANA registry); wsproto fails the connection with 1002.
- ``eager_header_check``: wsproto checks a header's first two bytes (reserved
  opcode, fragmented or long control frame, RSV bits, masking) before the
  extended length and masking key have arrived; trio_ws checks a header once
  it is complete, so a stream that ends inside such a header ends with 1006,
  not 1002.
- ``order_checked_at_header``: trio_ws checks a data frame's place in the
  sequence (continuation without a message, new message inside a fragmented
  one) at its header; wsproto only once payload arrives (or for an empty
  frame), so a stream that ends right after such a header is 1002 for
  trio_ws, 1006 for wsproto.
- ``bounded()`` (the small-limit test): wsproto has no ``max_message_size``;
  trio_ws fails a message over it (counted in characters for text, bytes for
  binary) with 1009 at the frame that passes it, queues its Close at once, then
  drops data until the peer's Close, which it still reads (pings and pongs are
  still reported; each later message over the limit reports 1009 again).  A
  binary frame no longer than the limit is taken whole, so one cut short by
  EOF is not seen at all.

And where they agree, though one might expect otherwise: both stop at the
first fatal error and read nothing after it; both fail invalid UTF-8 at the
first bad fragment (wsproto may have handed earlier fragments of that message
over, but never the whole message); both refuse received close codes 1005,
1006 and 1015 (1002).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from trio_ws._frames import CONTINUATION, OP_CLOSE, OP_PING, OP_PONG
from trio_ws._protocol import BINARY, CLOSE, MESSAGE, PING, PONG, TEXT, VIOLATION, YIELD, Protocol, State

from .test_frames import mask_bytes
from .test_protocol import Role, open_role

DIFF = settings(
    max_examples=500,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# An outcome: what the application sees, in order, then how the connection ends.
# Items: ("message", str | bytes), ("ping", bytes), ("pong", bytes); the end:
# ("close", code, reason) for the peer's valid Close, ("fail", code) for a
# failure we detect, ("eof", 1006) when the stream ended first.
Item = tuple[object, ...]


@dataclass(frozen=True)
class Outcome:
    items: tuple[Item, ...]
    end: Item


# --- building streams ------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """A frame as generated: anything RFC 6455 allows and much it forbids."""

    opcode: int
    payload: bytes
    fin: bool = True
    rsv: int = 0
    masked: bool = True
    key: bytes = b"\x00\x00\x00\x00"
    width: int | None = None  # None: shortest length form; else 0, 2 or 8 length bytes

    def encode(self) -> bytes:
        first = (0x80 if self.fin else 0) | (self.rsv << 4) | self.opcode
        size = len(self.payload)
        width = self.width
        if width is None or (width == 0 and size > 125) or (width == 2 and size > 65535):
            width = 0 if size < 126 else 2 if size < 65536 else 8
        mask_bit = 0x80 if self.masked else 0
        if width == 0:
            header = struct.pack("!BB", first, mask_bit | size)
        elif width == 2:
            header = struct.pack("!BBH", first, mask_bit | 126, size)
        else:
            header = struct.pack("!BBQ", first, mask_bit | 127, size)
        if not self.masked:
            return header + self.payload
        return header + self.key + mask_bytes(self.payload, self.key)


INVALID_UTF8 = [
    b"\xff",
    b"\xc0\xaf",  # overlong
    b"\xed\xa0\x80",  # a surrogate
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\xe2\x82",  # a character cut short
    b"\x80",  # a lone continuation byte
]
CLOSE_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4000, 4999]
BAD_CLOSE_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535]


def often(draw: st.DrawFn, tenths: int) -> bool:
    """True ``tenths`` times in ten."""
    return draw(st.integers(0, 9)) < tenths


@st.composite
def text_payloads(draw: st.DrawFn) -> bytes:
    """UTF-8 text (with multi-byte characters), now and then with an invalid sequence in it."""
    data = draw(st.text(alphabet=st.characters(codec="utf-8"), max_size=40)).encode()
    if often(draw, 1):
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from(INVALID_UTF8)) + data[at:]
    return data


@st.composite
def close_payloads(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return b""
    if kind == 1:
        return draw(st.binary(min_size=1, max_size=1))
    if kind <= 6:
        code = draw(st.sampled_from(CLOSE_CODES))
    elif kind <= 8:
        code = draw(st.sampled_from(BAD_CLOSE_CODES))
    else:
        code = draw(st.integers(0, 65535))
    reason = draw(st.text(max_size=20)).encode()
    if often(draw, 1):
        reason = draw(st.sampled_from(INVALID_UTF8)) + reason
    return struct.pack("!H", code) + reason[:123]


@st.composite
def message_frames(draw: st.DrawFn, peer_masks: bool) -> list[Frame]:
    """One data message, split into fragments anywhere (inside a character too), control frames between."""
    opcode = draw(st.sampled_from([TEXT, BINARY]))
    if opcode == TEXT:
        payload = draw(text_payloads())
    elif often(draw, 1):
        payload = bytes([draw(st.integers(0, 255))]) * draw(st.sampled_from([125, 126, 65535, 65536, 70000]))
    else:
        payload = draw(st.binary(max_size=300))
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=4)))
    parts = [payload[start:end] for start, end in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
    frames: list[Frame] = []
    for index, part in enumerate(parts):
        if index and often(draw, 2):
            frames.append(draw(control_frames(peer_masks)))
        frames.append(
            Frame(
                opcode if index == 0 else CONTINUATION,
                part,
                fin=index == len(parts) - 1,
                masked=peer_masks,
                key=draw(keys),
                width=draw(widths),
            )
        )
    return frames


keys = st.binary(min_size=4, max_size=4)
# The length's form: mostly the shortest; now and then 2 or 8 bytes where fewer would do.
widths = st.sampled_from([None] * 18 + [2, 8])


@st.composite
def control_frames(draw: st.DrawFn, peer_masks: bool) -> Frame:
    opcode = draw(st.sampled_from([OP_PING, OP_PONG]))
    return Frame(opcode, draw(st.binary(max_size=125)), masked=peer_masks, key=draw(keys), width=draw(widths))


@st.composite
def close_frames(draw: st.DrawFn, peer_masks: bool) -> Frame:
    return Frame(OP_CLOSE, draw(close_payloads()), masked=peer_masks, key=draw(keys), width=draw(widths))


@st.composite
def random_frames(draw: st.DrawFn, peer_masks: bool) -> Frame:
    """Any opcode (reserved ones too), FIN, RSV bits, masking either way, any payload."""
    opcode = draw(st.integers(0, 15))
    if opcode == TEXT or (opcode == CONTINUATION and often(draw, 5)):
        payload = draw(text_payloads())
    elif opcode == OP_CLOSE and often(draw, 7):
        payload = draw(close_payloads())
    else:
        payload = draw(st.binary(max_size=200))
    return Frame(
        opcode,
        payload,
        fin=often(draw, 8),
        rsv=draw(st.sampled_from([0, 0, 0, 0, 0, 1, 2, 4, 7])),
        masked=peer_masks if often(draw, 9) else not peer_masks,
        key=draw(keys),
        width=draw(widths),
    )


@st.composite
def frame_lists(draw: st.DrawFn, peer_masks: bool) -> list[Frame]:
    frames: list[Frame] = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 9))
        if kind <= 4:
            frames += draw(message_frames(peer_masks))
        elif kind <= 6:
            frames.append(draw(control_frames(peer_masks)))
        elif kind == 7:
            frames.append(draw(close_frames(peer_masks)))
        else:
            frames.append(draw(random_frames(peer_masks)))
    if frames and often(draw, 2):  # a frame repeated, or dropped
        index = draw(st.integers(0, len(frames) - 1))
        if often(draw, 5):
            frames.insert(index, frames[index])
        else:
            del frames[index]
    if often(draw, 3):
        frames.append(draw(close_frames(peer_masks)))
    return frames


@st.composite
def streams(draw: st.DrawFn, peer_masks: bool) -> list[bytes]:
    """The encoded frames, perhaps mutated, cut into the pieces they arrive in."""
    data = b"".join(frame.encode() for frame in draw(frame_lists(peer_masks)))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2]))):
        mutation = draw(st.integers(0, 3))
        at = draw(st.integers(0, len(data)))
        if mutation == 0 and at < len(data):  # flip some bits of one byte
            data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
        elif mutation == 1:  # the stream is cut short
            data = data[:at]
        elif mutation == 2:  # bytes inserted
            data = data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
        else:  # bytes removed
            data = data[:at] + data[at + draw(st.integers(1, 8)) :]
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=8))))
    pieces = [data[start:end] for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return [piece for piece in pieces if piece]  # (b"" is EOF to trio_ws)


# --- running both ------------------------------------------------------------------------------


def run_trio_ws(protocol: Protocol, pieces: list[bytes], *, past_1009: bool = False) -> Outcome:
    """Feed ``pieces`` then EOF; the outcome.  ``past_1009``: a 1009 is an item, and reading goes on."""
    items: list[Item] = []
    for piece in [*pieces, b""]:
        protocol.receive_data(piece)
        while (event := protocol.next_event()) is not None:
            kind, payload = event
            if kind == MESSAGE:
                items.append(("message", payload))
            elif kind == PING:
                items.append(("ping", payload))
            elif kind == PONG:
                items.append(("pong", payload))
            elif kind == CLOSE:
                assert isinstance(payload, tuple)
                code, reason = payload
                return Outcome(tuple(items), ("close", code, reason))
            elif kind == VIOLATION:
                assert isinstance(payload, tuple)
                code = payload[0]
                if not (past_1009 and code == 1009):
                    return Outcome(tuple(items), ("fail", code))
                items.append(("fail", 1009))
            else:
                assert kind == YIELD
    assert protocol.state is State.ABORTED
    return Outcome(tuple(items), ("eof", 1006))


@dataclass(frozen=True)
class WsprotoRun:
    """wsproto's events as they came, and the end.

    Items: ``("chunk", data, message finished, frame finished)``, ``("ping", payload)``, ``("pong", payload)``.
    """

    events: tuple[Item, ...]
    end: Item

    def joined(self) -> Outcome:
        """The chunks of each message joined: what the application sees."""
        items: list[Item] = []
        chunks: list[str | bytes] = []
        for item in self.events:
            if item[0] != "chunk":
                items.append(item)
                continue
            chunk = item[1]
            assert isinstance(chunk, (str, bytes))
            chunks.append(chunk)
            if item[2]:
                items.append(("message", join(chunks)))
                chunks = []
        return Outcome(tuple(items), self.end)


def join(chunks: list[str | bytes]) -> str | bytes:
    """The chunks of one message (all ``str`` or all ``bytes``) joined."""
    texts = [chunk for chunk in chunks if isinstance(chunk, str)]
    if texts:
        assert len(texts) == len(chunks)
        return "".join(texts)
    return b"".join(chunk for chunk in chunks if isinstance(chunk, bytes))


def run_wsproto(role: Role, pieces: list[bytes]) -> WsprotoRun:
    connection = Connection(ConnectionType.SERVER if role == "server" else ConnectionType.CLIENT)
    items: list[Item] = []
    for piece in [*pieces, None]:
        connection.receive_data(piece)
        for event in connection.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                data = event.data if isinstance(event.data, str) else bytes(event.data)
                items.append(("chunk", data, event.message_finished, event.frame_finished))
            elif isinstance(event, Ping):
                items.append(("ping", bytes(event.payload)))
            elif isinstance(event, Pong):
                items.append(("pong", bytes(event.payload)))
            else:
                assert isinstance(event, CloseConnection)
                if piece is None:
                    end: Item = ("eof", int(event.code))
                elif connection.state is ConnectionState.REMOTE_CLOSING:  # the peer's Close
                    end = ("close", int(event.code), event.reason)
                else:
                    end = ("fail", int(event.code))
                return WsprotoRun(tuple(items), end)
    raise AssertionError("wsproto reports the end of the stream")


# --- the deliberate differences ----------------------------------------------------------------


@dataclass(frozen=True)
class Walked:
    """A stream cut into frames by their header layout alone (no rule checked): how both parsers see it."""

    frames: list[tuple[int, bytes]]  # (first byte, unmasked payload) of each complete frame
    tail: bytes  # the incomplete frame at the end, if any

    def header_size(self) -> int:
        """The size of the tail's header (0 if not even its first two bytes are here)."""
        if len(self.tail) < 2:
            return 0
        second = self.tail[1]
        length = second & 0x7F
        return 2 + (2 if length == 126 else 8 if length == 127 else 0) + (4 if second & 0x80 else 0)


def walk(data: bytes) -> Walked:
    frames: list[tuple[int, bytes]] = []
    position = 0
    while True:
        rest = data[position:]
        head = Walked([], rest).header_size()
        if not head or len(rest) < head:
            return Walked(frames, rest)
        length = rest[1] & 0x7F
        if length == 126:
            length = struct.unpack_from("!H", rest, 2)[0]
        elif length == 127:
            length = struct.unpack_from("!Q", rest, 2)[0]
        if len(rest) < head + length:
            return Walked(frames, rest)
        payload = rest[head : head + length]
        if rest[1] & 0x80:
            payload = mask_bytes(payload, rest[head - 4 : head])
        frames.append((rest[0], payload))
        position += head + length


def close_code_1014(data: bytes, ours: Outcome, theirs: Outcome) -> bool:
    """trio_ws accepts code 1014 (Bad Gateway) in a received Close, as the IANA registry lists it
    (and then checks its reason: UTF-8, or 1007); wsproto does not know 1014 and fails with 1002."""
    if theirs.end != ("fail", 1002) or ours.items != theirs.items:
        return False
    closes = [payload for first, payload in walk(data).frames if first & 0x0F == OP_CLOSE]
    if not closes or closes[0][:2] != struct.pack("!H", 1014):
        return False
    try:
        expected: Item = ("close", 1014, closes[0][2:].decode())
    except UnicodeDecodeError:
        expected = ("fail", 1007)
    assert ours.end == expected
    return True


def eager_header_check(data: bytes, ours: Outcome, theirs: Outcome) -> bool:
    """wsproto judges a header by its first two bytes (reserved opcode, fragmented or long control
    frame, RSV bits, masking); trio_ws waits for the whole header (extended length, masking key).
    A stream that ends inside such a header: wsproto fails it (1002), trio_ws sees EOF first (1006)."""
    if theirs.end != ("fail", 1002) or ours.items != theirs.items:
        return False
    walked = walk(data)
    if not walked.header_size() or len(walked.tail) >= walked.header_size():
        return False  # the stream does not end inside a header
    assert ours.end == ("eof", 1006)
    return True


def order_checked_at_header(data: bytes, ours: Outcome, theirs: Outcome) -> bool:
    """trio_ws checks a data frame's place in the sequence (a continuation without a message, a new
    message inside a fragmented one) once its header is complete; wsproto once payload arrives.  A
    stream that ends after such a header, before any of its payload: 1002 for trio_ws, 1006 for wsproto."""
    if theirs.end != ("eof", 1006) or ours.items != theirs.items:
        return False
    walked = walk(data)
    if walked.tail[:1] == b"" or walked.tail[0] & 0x0F > BINARY or len(walked.tail) != walked.header_size():
        return False  # the stream does not end right after a data frame's header
    assert ours.end == ("fail", 1002)
    return True


LIMIT = 2**20  # max_message_size: larger than any generated message, so that the limit plays no part

DIFFERENCES: list[Callable[[bytes, Outcome, Outcome], bool]] = [
    close_code_1014,
    eager_header_check,
    order_checked_at_header,
]


def check(role: Role, pieces: list[bytes]) -> None:
    """Both parsers on ``pieces``: the same outcome, or a deliberate difference that explains it."""
    protocol, _ = open_role(role, max_message_size=LIMIT)
    ours = run_trio_ws(protocol, pieces)
    theirs = run_wsproto(role, pieces).joined()
    if ours == theirs:
        return
    data = b"".join(pieces)
    for difference in DIFFERENCES:
        if difference(data, ours, theirs):
            return
    raise AssertionError(f"trio_ws and wsproto disagree on {data.hex()}:\n  trio_ws: {ours}\n  wsproto: {theirs}")


def masked(data: bytes) -> bytes:
    """A hand-written unmasked frame, masked with a zero key (so that a server reads it)."""
    return bytes([data[0], data[1] | 0x80]) + b"\x00\x00\x00\x00" + data[2:]


# Streams that show each deliberate difference, and cases where the two agree though one might
# expect otherwise; unmasked (for a client), and masked with a zero key (for a server).
EXAMPLES: list[list[bytes]] = [
    [b"\x88\x05\x03\xf6bye"],  # close_code_1014
    [b"\x88\x03\x03\xf6\xff"],  # close_code_1014 with a reason that is not UTF-8: 1007
    [b"\x88\x02\x03\xed"],  # 1005 received: both 1002
    [b"\x88\x02\x03\xee"],  # 1006 received: both 1002
    [b"\x88\x02\x03\xf7"],  # 1015 received: both 1002
    [b"\x01\x02ok", b"\x80\x03\xed\xa0\x80"],  # invalid UTF-8 in the second fragment: both 1007, no message
    [b"\x81\x01a", b"\x83\x00", b"\x81\x01b"],  # nothing after the first fatal error: both [a], 1002
]
SERVER_ONLY: list[list[bytes]] = [
    [b"\x83\x80\x00\x00"],  # eager_header_check: a reserved opcode, cut inside the masking key
    [b"\x89\xfe\x00"],  # eager_header_check: a ping announcing 126+ bytes, cut in its length
    [b"\x81\x05"],  # an unmasked frame from a client: both check the masking at once
    [b"\x80\x85\x00\x00\x00\x00"],  # order_checked_at_header: a continuation, no payload yet
]
CLIENT_ONLY: list[list[bytes]] = [
    [b"\x83\x80"],  # eager_header_check: a masked frame to a client, cut before its key
    [b"\x01\x01a", b"\x82\x05"],  # order_checked_at_header: a new message inside one, no payload yet
]


def _with_examples(
    examples: list[list[bytes]],
) -> Callable[[Callable[[list[bytes]], None]], Callable[[list[bytes]], None]]:
    def decorate(test: Callable[[list[bytes]], None]) -> Callable[[list[bytes]], None]:
        for pieces in reversed(examples):
            test = example(pieces=pieces)(test)
        return test

    return decorate


@settings(DIFF)
@_with_examples([[masked(piece) if index == 0 else piece for index, piece in enumerate(e)] for e in EXAMPLES])
@_with_examples(SERVER_ONLY)
@given(pieces=streams(peer_masks=True))
def test_server_role_agrees_with_wsproto(pieces: list[bytes]) -> None:
    """trio_ws's server and wsproto's read the same masked client frames."""
    check("server", pieces)


@settings(DIFF)
@_with_examples(EXAMPLES)
@_with_examples(CLIENT_ONLY)
@given(pieces=streams(peer_masks=False))
def test_client_role_agrees_with_wsproto(pieces: list[bytes]) -> None:
    """trio_ws's client and wsproto's read the same unmasked server frames."""
    check("client", pieces)


# --- a small max_message_size: the bounded difference --------------------------------------------

SMALL_LIMIT = 40


def bounded(run: WsprotoRun, limit: int, data: bytes) -> Outcome:
    """What trio_ws must do where wsproto has no limit: ``max_message_size`` (len() units).

    The data chunk that takes a message past ``limit`` is a 1009 (trio_ws queues its Close at
    once); the rest of that message and every later message are dropped, each later one that
    passes the limit reporting another 1009; pings and pongs are still seen; the peer's Close still
    ends it.  (Both read a frame's payload in pieces, so the chunk that passes the limit is in the
    same frame for both: a control frame is never on the other side of it.  But trio_ws waits for a
    binary frame no longer than the limit, and takes it whole: one cut short by EOF, it never saw.)
    """
    events = list(run.events)
    tail = walk(data).tail
    if events and events[-1][0] == "chunk" and not events[-1][3] and isinstance(events[-1][1], bytes):
        # The stream ends inside a binary frame.  trio_ws takes a binary frame of up to
        # max_message_size whole, so it never saw this one, unless it is longer than that.
        length = tail[1] & 0x7F
        if length == 126:
            length = struct.unpack_from("!H", tail, 2)[0]
        if length <= limit:
            while events and events[-1][0] == "chunk" and not events[-1][3]:
                events.pop()
    items: list[Item] = []
    closing = False
    chunks: list[str | bytes] = []
    size = 0
    for item in events:
        if item[0] != "chunk":
            items.append(item)
            continue
        chunk = item[1]
        assert isinstance(chunk, (str, bytes))
        if size <= limit < size + len(chunk):
            items.append(("fail", 1009))
            closing = True
        size += len(chunk)
        chunks.append(chunk)
        if item[2]:
            if not closing:
                items.append(("message", join(chunks)))
            chunks, size = [], 0
    return Outcome(tuple(items), run.end)


@st.composite
def valid_streams(draw: st.DrawFn, peer_masks: bool) -> list[bytes]:
    """Valid frames only (messages around the limit, pings, pongs, perhaps a valid Close), in random pieces."""
    frames: list[Frame] = []
    for _ in range(draw(st.integers(1, 6))):
        if often(draw, 7):
            opcode = draw(st.sampled_from([TEXT, BINARY]))
            size = draw(st.integers(0, 2 * SMALL_LIMIT))
            if opcode == TEXT:
                payload = draw(st.text(st.characters(codec="utf-8"), min_size=size, max_size=size)).encode()
            else:
                payload = draw(st.binary(min_size=size, max_size=size))
            cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=3)))
            parts = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
            for index, part in enumerate(parts):
                if index and often(draw, 3):
                    frames.append(draw(control_frames(peer_masks)))
                opcode_here = opcode if index == 0 else CONTINUATION
                fin = index == len(parts) - 1
                frames.append(Frame(opcode_here, part, fin=fin, masked=peer_masks, key=draw(keys)))
        else:
            frames.append(draw(control_frames(peer_masks)))
    if often(draw, 7):
        code = draw(st.sampled_from([code for code in CLOSE_CODES if code != 1014]))
        reason = draw(st.text(max_size=10)).encode()[:123]
        frames.append(Frame(OP_CLOSE, struct.pack("!H", code) + reason, masked=peer_masks, key=draw(keys)))
    data = b"".join(frame.encode() for frame in frames)
    if often(draw, 2):
        data = data[: draw(st.integers(0, len(data)))]  # cut short: EOF comes first
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=8))))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return [piece for piece in pieces if piece]


@settings(DIFF, max_examples=150)
@given(role=st.sampled_from(["server", "client"]), data=st.data())
def test_a_small_max_message_size_is_the_one_bounded_difference(role: Role, data: st.DataObject) -> None:
    """With max_message_size 40, trio_ws's outcome is wsproto's (no limit) bounded as ``bounded()`` says."""
    pieces = data.draw(valid_streams(peer_masks=role == "server"))
    protocol, _ = open_role(role, max_message_size=SMALL_LIMIT)
    ours = run_trio_ws(protocol, pieces, past_1009=True)
    expected = bounded(run_wsproto(role, pieces), SMALL_LIMIT, b"".join(pieces))
    # The other deliberate differences still apply (a control frame cut inside its header...).
    if ours != expected and not any(difference(b"".join(pieces), ours, expected) for difference in DIFFERENCES):
        assert ours == expected
