"""HTTP Basic authentication (RFC 7617) for WebSocket and plain HTTP handlers: :func:`basic_auth`.

The other ways of authenticating a WebSocket client (a token in the query
string, in a cookie, in a subprotocol or in the first message) are recipes in
docs/authentication.md: a few lines of handler code each, which a helper
would hide rather than simplify.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import inspect
import logging
import re
import unicodedata
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar, overload

from ._handshake import Headers, HTTPRequest, HTTPResponse
from ._router import SUPPLIED_KEYWORDS, handler_signature, log_request
from ._server import WebSocketRequest

__all__ = ["CredentialCheck", "basic_auth"]

_T = TypeVar("_T")

#: ``check(user, password)``: whether the credentials are good (``bool``, or an awaitable of one).
CredentialCheck = Callable[[str, str], "bool | Awaitable[bool]"]

USER_KEYWORD = "user"  # the keyword argument that carries the user name to the handler
_REALM = re.compile(r"[\x20-\x7e]*\Z")  # printable ASCII: the realm is sent in a header, and shown to users
_UNAUTHORIZED = b"401 Unauthorized\n"
_BY_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _digest(text: str) -> bytes:
    """A fixed-length stand-in for ``text``, so that comparisons take the same time whatever its length."""
    return hashlib.sha256(unicodedata.normalize("NFC", text).encode("utf-8")).digest()


def _parse(headers: Headers) -> tuple[str, str] | None:
    """The user name and password of the request's ``Authorization: Basic`` header, if it has exactly one."""
    values = [value for name, value in headers if name == b"authorization"]
    if len(values) != 1:
        return None
    scheme, _, token = values[0].strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    user, colon, password = decoded.partition(":")
    if not colon:
        return None
    return unicodedata.normalize("NFC", user), password


class _Table:
    """``credentials=``: compared in constant time, every entry every time."""

    def __init__(self, credentials: Mapping[str, str]) -> None:
        self._entries: list[tuple[bytes, bytes]] = []
        for user, password in credentials.items():
            if not isinstance(user, str) or not isinstance(password, str):
                raise TypeError("credentials must map user names (str) to passwords (str)")
            if ":" in user:
                raise ValueError(f"user name {user!r} contains ':', which Basic authentication cannot carry")
            self._entries.append((_digest(user), _digest(password)))

    def __call__(self, user: str, password: str) -> bool:
        given_user, given_password = _digest(user), _digest(password)
        found = False
        for known_user, known_password in self._entries:
            # Both comparisons for every entry, and no short cut: the time
            # taken says nothing about which part was wrong, nor about which
            # user names exist.
            same_user = hmac.compare_digest(known_user, given_user)
            same_password = hmac.compare_digest(known_password, given_password)
            found |= same_user & same_password
        return found


def _challenge(realm: str) -> bytes:
    if not isinstance(realm, str) or not _REALM.match(realm):
        raise ValueError(f"realm must be printable ASCII text, not {realm!r}")
    quoted = realm.replace("\\", "\\\\").replace('"', '\\"')
    return f'Basic realm="{quoted}", charset="UTF-8"'.encode("ascii")


def _name(handler: object) -> str:
    return str(getattr(handler, "__qualname__", None) or repr(handler))


async def _verify(verify: CredentialCheck, user: str, password: str) -> bool:
    good = verify(user, password)
    if inspect.isawaitable(good):
        good = await good
    return bool(good)


def _check_takes_user(handler: Callable[..., object]) -> None:
    signature = handler_signature(handler)
    if signature is None:  # pragma: no cover - builtins and the like: nothing to check
        return
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.VAR_KEYWORD:
            return
        if parameter.name == USER_KEYWORD and parameter.kind in _BY_KEYWORD:
            return
    raise TypeError(f"basic_auth: {_name(handler)}() must take the keyword argument {USER_KEYWORD!r}, the user name")


@overload
def basic_auth(
    handler: Callable[..., Awaitable[_T]],
    *,
    realm: str = ...,
    credentials: Mapping[str, str] | None = ...,
    check: CredentialCheck | None = ...,
) -> Callable[..., Awaitable[_T | HTTPResponse | None]]: ...


@overload
def basic_auth(
    handler: None = ...,
    *,
    realm: str = ...,
    credentials: Mapping[str, str] | None = ...,
    check: CredentialCheck | None = ...,
) -> Callable[[Callable[..., Awaitable[_T]]], Callable[..., Awaitable[_T | HTTPResponse | None]]]: ...


def basic_auth(
    handler: Callable[..., Awaitable[Any]] | None = None,
    *,
    realm: str = "trio_ws",
    credentials: Mapping[str, str] | None = None,
    check: CredentialCheck | None = None,
) -> Any:
    """Require HTTP Basic authentication (RFC 7617) before ``handler`` runs.

    ``basic_auth(handler, ...)`` returns the wrapped handler;
    ``basic_auth(...)`` without one returns a decorator.  The handler may be
    a WebSocket handler (of :func:`serve_websocket`, or of a :class:`Router`
    route) or a plain HTTP one (an ``http_handler``, or a route of
    :meth:`Router.http`), and is called with the request, the keyword
    arguments it was called with (a route's parameters) and one more,
    ``user``: the user name, as the client sent it (NFC-normalized).

    A request without valid credentials is answered ``401 Unauthorized``
    with ``WWW-Authenticate: Basic realm="<realm>", charset="UTF-8"``, and
    the handler is not called.  (A WebSocket request is rejected, a plain
    one answered.)  A wrong password is logged at INFO (on the server's
    logger, ``trio_ws.server`` by default) with the user name tried, never
    the password; missing credentials at DEBUG.

    :param realm: names the protected space; browsers show it in their
        password dialog.  Printable ASCII.
    :param credentials: user name to password.  Read once, here; every
        check compares the given name and password with every entry in
        constant time (the time taken reveals neither which part was wrong
        nor whether the user exists).
    :param check: instead of ``credentials``: a function (or an async
        function) ``check(user, password) -> bool``, for passwords kept
        elsewhere (hashed in a database, say).  It gets the user name
        NFC-normalized and the password as sent; comparing in constant time
        is then its job.  An exception from it is the handler's: logged,
        and answered with 500.
    :raises TypeError: neither or both of ``credentials`` and ``check``, or
        a handler that takes no ``user`` keyword argument.
    :raises ValueError: a realm that is not printable ASCII, or a user name
        with ``:``.
    """
    if (credentials is None) == (check is None):
        raise TypeError("basic_auth needs either credentials= (a mapping) or check= (a function), and not both")
    challenge = _challenge(realm)
    verify: CredentialCheck = _Table(credentials) if credentials is not None else check  # type: ignore[assignment]

    def decorate(handler: Callable[..., Awaitable[_T]]) -> Callable[..., Awaitable[_T | HTTPResponse | None]]:
        _check_takes_user(handler)
        supplied = frozenset(getattr(handler, SUPPLIED_KEYWORDS, ()))
        if USER_KEYWORD in supplied:
            raise TypeError(f"basic_auth: {_name(handler)}() is wrapped already, by something passing {USER_KEYWORD!r}")

        @functools.wraps(handler)
        async def authenticated(request: WebSocketRequest | HTTPRequest, **parameters: Any) -> _T | HTTPResponse | None:
            given = _parse(request.headers)
            if given is not None:
                if await _verify(verify, *given):
                    return await handler(request, **parameters, **{USER_KEYWORD: given[0]})
                log_request(
                    request, logging.INFO, "basic_auth: wrong credentials for user %r on %s", given[0], request.path
                )
            else:
                log_request(request, logging.DEBUG, "basic_auth: no valid Basic credentials on %s", request.path)
            headers = [(b"www-authenticate", challenge), (b"content-type", b"text/plain; charset=utf-8")]
            if isinstance(request, HTTPRequest):
                return HTTPResponse(401, headers, _UNAUTHORIZED)
            await request.reject(401, extra_headers=headers, body=_UNAUTHORIZED)
            return None

        setattr(authenticated, SUPPLIED_KEYWORDS, supplied | {USER_KEYWORD})
        return authenticated

    return decorate if handler is None else decorate(handler)
