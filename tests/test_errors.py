"""CloseReason and the exception family."""

from __future__ import annotations

import copy
import pickle

import pytest

from trio_ws import CloseReason, ConnectionClosed, ConnectionRejected, HandshakeError


@pytest.mark.parametrize(
    ("code", "name"),
    [
        (1000, "NORMAL_CLOSURE"),
        (1001, "GOING_AWAY"),
        (1002, "PROTOCOL_ERROR"),
        (1006, "ABNORMAL_CLOSURE"),
        (1007, "INVALID_FRAME_PAYLOAD_DATA"),
        (1009, "MESSAGE_TOO_BIG"),
        (1011, "INTERNAL_ERROR"),
        (1004, "RFC_RESERVED"),
        (2999, "RFC_RESERVED"),
        (3000, "IANA_RESERVED"),
        (4999, "PRIVATE_RESERVED"),
        (999, "INVALID_CODE"),
        (5000, "INVALID_CODE"),
    ],
)
def test_close_reason_names(code: int, name: str) -> None:
    reason = CloseReason(code, "why")
    assert (reason.code, reason.name, reason.reason) == (code, name, "why")
    assert reason.was_clean is False


def test_close_reason_repr() -> None:
    assert repr(CloseReason(1000, None)) == "CloseReason<code=1000, name=NORMAL_CLOSURE, reason=None>"
    assert CloseReason(1000, None, was_clean=True).was_clean


def test_connection_closed_carries_reason() -> None:
    reason = CloseReason(1001, "bye")
    exc = ConnectionClosed(reason)
    assert exc.reason is reason
    assert repr(exc) == "ConnectionClosed<CloseReason<code=1001, name=GOING_AWAY, reason=bye>>"
    assert copy.copy(exc).reason is reason
    assert pickle.loads(pickle.dumps(exc)).reason.code == 1001


def test_connection_rejected() -> None:
    exc = ConnectionRejected(403, ((b"a", b"b"),), b"no")
    assert isinstance(exc, HandshakeError)
    assert (exc.status_code, exc.headers, exc.body) == (403, ((b"a", b"b"),), b"no")
    assert repr(exc) == "ConnectionRejected<status_code=403>"
    again = pickle.loads(pickle.dumps(exc))
    assert (again.status_code, again.headers, again.body) == (403, ((b"a", b"b"),), b"no")
