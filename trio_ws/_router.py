"""Routing by path: :class:`Router`, one handler per path pattern, for WebSockets and plain HTTP.

A router is the ``handler`` of :func:`serve_websocket` (it is called with each
:class:`WebSocketRequest`) and its :meth:`Router.handle_http` is the
``http_handler``.  Patterns are parsed, checked and put in a tree when routes
are declared, so that every mistake in a routing table (a conflict, an unknown
converter, a handler that cannot take the pattern's parameters) is an error at
import time, not a 404 or a 500 in production.

Matching, segment by segment from the left: a static segment before a
parameter, a one-segment parameter before a ``path`` parameter.  The tree is
searched depth first in that order, so the first route found is the most
specific one, and a route whose converter refuses a value (``abc`` for
``{id:int}``) simply does not match: the search goes on to the next.  Each
node of the tree is visited at most once per request (a node stands for one
position in the path), so a lookup costs at most the size of the tree.
"""

from __future__ import annotations

import inspect
import keyword
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import unquote

from ._handshake import HTTPRequest, HTTPResponse
from ._log import SERVER_LOGGER
from ._server import WebSocketRequest

__all__ = ["Converter", "Router", "SubprotocolSelector"]

#: Turns one decoded path segment into a parameter's value; raises ValueError when the segment does not fit.
Converter = Callable[[str], object]
#: ``select_subprotocol(request, supported)``: the subprotocol to accept (one the client proposed) or ``None``.
SubprotocolSelector = Callable[[WebSocketRequest, tuple[str, ...]], "str | Awaitable[str | None] | None"]

_WebSocketHandler = TypeVar("_WebSocketHandler", bound=Callable[..., Awaitable[object]])
_HTTPHandler = TypeVar("_HTTPHandler", bound=Callable[..., Awaitable["HTTPResponse | None"]])
_Payload = TypeVar("_Payload")

# The attribute in which a handler wrapper (basic_auth) lists the keyword
# arguments it passes to the function it wraps, so that the router does not
# expect them from the pattern, and refuses a parameter of the same name.
SUPPLIED_KEYWORDS = "__trio_ws_supplies__"

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")  # RFC 9110: methods and subprotocols are tokens
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
_TEXT_PLAIN = (b"content-type", b"text/plain; charset=utf-8")


def _int(value: str) -> int:
    # ASCII digits only: int() also takes "+1", " 1", "1_000" and other scripts' digits.
    if not (value.isascii() and value.isdigit()):
        raise ValueError(f"not a decimal number: {value!r}")
    return int(value)  # ValueError past sys.get_int_max_str_digits(): no match either


def _uuid(value: str) -> uuid.UUID:
    # The canonical 8-4-4-4-12 form only: uuid.UUID() also takes braces, "urn:uuid:" and no hyphens.
    if not _UUID.match(value):
        raise ValueError(f"not a UUID: {value!r}")
    return uuid.UUID(value)


_PATH = "path"  # the converter that takes the rest of the path, slashes included
_BUILTIN_CONVERTERS: dict[str, Converter] = {"str": str, "int": _int, "uuid": _uuid, _PATH: str}


# --- patterns --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Segment:
    """One segment of a pattern: static text, a parameter, or a ``path`` parameter (the rest)."""

    static: str | None  # the text of a static segment; None for a parameter
    name: str = ""  # a parameter's name
    converter: Converter = str
    rest: bool = False  # a {name:path} parameter


@dataclass(frozen=True, slots=True)
class _Pattern:
    text: str
    segments: tuple[_Segment, ...]
    parameters: tuple[_Segment, ...]  # the segments that are parameters, in order


def _parse_pattern(pattern: str, converters: Mapping[str, Converter]) -> _Pattern:
    """Parse and check ``pattern``; ValueError, naming the pattern, for anything wrong with it."""
    if not isinstance(pattern, str):
        raise TypeError(f"a route pattern must be a str, not {type(pattern).__name__}")
    if not pattern.startswith("/"):
        raise ValueError(f"route pattern {pattern!r} must start with '/'")
    if "?" in pattern or "#" in pattern:
        raise ValueError(f"route pattern {pattern!r}: the query string and fragment are not part of matching")
    texts = pattern[1:].split("/")
    segments: list[_Segment] = []
    names: set[str] = set()
    for index, text in enumerate(texts):
        last = index == len(texts) - 1
        if not (text.startswith("{") and text.endswith("}")):
            if "{" in text or "}" in text:
                raise ValueError(f"route pattern {pattern!r}: a parameter must be a whole segment, like /{{name}}/")
            if not text and not last:
                raise ValueError(f"route pattern {pattern!r} has an empty segment ('//')")
            segments.append(_Segment(static=text))
            continue
        name, colon, converter_name = text[1:-1].partition(":")
        if not colon:
            converter_name = "str"
        if not name.isidentifier() or keyword.iskeyword(name):
            raise ValueError(f"route pattern {pattern!r}: parameter name {name!r} is not a Python identifier")
        if name in names:
            raise ValueError(f"route pattern {pattern!r}: parameter {name!r} appears twice")
        names.add(name)
        if converter_name not in converters:
            known = ", ".join(sorted(converters))
            raise ValueError(f"route pattern {pattern!r}: unknown converter {converter_name!r} (known: {known})")
        rest = converter_name == _PATH
        if rest and not last:
            raise ValueError(f"route pattern {pattern!r}: a {{{name}:path}} parameter must be the last segment")
        segments.append(_Segment(static=None, name=name, converter=converters[converter_name], rest=rest))
    return _Pattern(pattern, tuple(segments), tuple(segment for segment in segments if segment.static is None))


def handler_signature(handler: Callable[..., object]) -> inspect.Signature | None:
    """The signature to check a handler's parameters against, if it has one.

    A wrapper made with :func:`functools.wraps` says it has the signature of
    the function it wraps, but it may pass that function more (or fewer)
    arguments than it takes itself.  So the wrapped function is looked at
    only behind wrappers that say which keyword arguments they supply
    (``SUPPLIED_KEYWORDS``); any other wrapper is taken at its word: its own
    ``(request, **parameters)``, which takes anything.
    """
    try:
        return inspect.signature(handler, follow_wrapped=hasattr(handler, SUPPLIED_KEYWORDS))
    except (TypeError, ValueError):  # pragma: no cover - builtins and the like
        return None


def _check_handler(handler: Callable[..., object], pattern: _Pattern) -> None:
    """TypeError unless ``handler(request, **parameters)`` is a valid call (as far as its signature says)."""
    if not callable(handler):
        raise TypeError(f"route {pattern.text!r}: the handler must be an async function, not {handler!r}")
    supplied = frozenset(getattr(handler, SUPPLIED_KEYWORDS, ()))
    names = [segment.name for segment in pattern.parameters]
    clash = supplied.intersection(names)
    if clash:
        raise ValueError(
            f"route pattern {pattern.text!r}: parameter {sorted(clash)[0]!r} has the name of a keyword "
            f"argument that the handler's wrapper passes itself"
        )
    signature = handler_signature(handler)
    if signature is None:  # pragma: no cover - builtins and the like: nothing to check
        return
    try:
        signature.bind(None, **dict.fromkeys([*names, *supplied]))
    except TypeError as exc:
        given = ", ".join([*names, *sorted(supplied)]) or "no keyword arguments"
        raise TypeError(
            f"route {pattern.text!r}: {_name(handler)}() cannot be called with the request and "
            f"the keyword arguments {given}: {exc}"
        ) from None


def log_request(request: WebSocketRequest | HTTPRequest, level: int, message: str, *args: object) -> None:
    """A record about a request: the connection's (named, to the server's ``logger=``) for a
    WebSocket request; for a plain one, which does not know its connection, ``trio_ws.server``'s."""
    if isinstance(request, WebSocketRequest):
        request._log(level, message, *args)
    else:
        SERVER_LOGGER.log(level, message, *args)


def _name(handler: object) -> str:
    return str(getattr(handler, "__qualname__", None) or repr(handler))


# --- the tree ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Node(Generic[_Payload]):
    """A position in the path: what may follow it, and the payload of the patterns that end here."""

    static: dict[str, _Node[_Payload]] = field(default_factory=dict)
    parameter: _Node[_Payload] | None = None  # a one-segment parameter, whatever its converter
    rest: _Payload | None = None  # the payload of a pattern ending with {name:path}
    rest_pattern: str = ""
    end: _Payload | None = None  # the payload of a pattern ending here
    end_pattern: str = ""


def _decode_segments(path: str) -> list[str] | None:
    """The target's path as percent-decoded segments; ``None`` if it is not an absolute path in UTF-8."""
    path = path.partition("?")[0].partition("#")[0]
    if not path.startswith("/"):
        return None  # "*", or an absolute-form target: no route has it
    try:
        return [unquote(segment, errors="strict") for segment in path[1:].split("/")]
    except UnicodeDecodeError:
        return None


def _valid_rest(value: str) -> bool:
    """A ``path`` value: non-empty segments, none of them ``.`` or ``..`` (checked after decoding)."""
    return all(part not in ("", ".", "..") for part in value.split("/"))


class _Tree(Generic[_Payload]):
    def __init__(self) -> None:
        self.root: _Node[_Payload] = _Node()

    def slot(self, pattern: _Pattern) -> tuple[_Node[_Payload], bool, str]:
        """The node where ``pattern`` ends (made as needed), whether it ends in a ``path`` parameter,
        and the pattern already there, if any."""
        node = self.root
        for segment in pattern.segments:
            if segment.rest:
                return node, True, node.rest_pattern
            if segment.static is not None:
                node = node.static.setdefault(segment.static, _Node())
            else:
                if node.parameter is None:
                    node.parameter = _Node()
                node = node.parameter
        return node, False, node.end_pattern

    def search(self, segments: list[str]) -> Iterator[tuple[_Payload, list[str]]]:
        """Every payload whose pattern's shape fits, most specific first, with the raw parameter values."""
        return self._search(self.root, segments, 0, [])

    def _search(
        self, node: _Node[_Payload], segments: list[str], index: int, values: list[str]
    ) -> Iterator[tuple[_Payload, list[str]]]:
        if index == len(segments):
            if node.end is not None:
                yield node.end, values
            return
        segment = segments[index]
        child = node.static.get(segment)
        if child is not None:
            yield from self._search(child, segments, index + 1, values)
        if node.parameter is not None and segment:
            yield from self._search(node.parameter, segments, index + 1, [*values, segment])
        if node.rest is not None:
            rest = "/".join(segments[index:])
            if _valid_rest(rest):
                yield node.rest, [*values, rest]


# --- routes -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Route:
    pattern: _Pattern
    handler: Callable[..., Awaitable[Any]]
    methods: frozenset[str] = frozenset()  # HTTP routes
    subprotocols: tuple[str, ...] = ()  # WebSocket routes
    select_subprotocol: SubprotocolSelector | None = None

    def convert(self, values: list[str]) -> dict[str, object] | None:
        """The handler's keyword arguments, or ``None`` if a converter refuses its value."""
        parameters: dict[str, object] = {}
        for segment, value in zip(self.pattern.parameters, values, strict=True):
            try:
                parameters[segment.name] = segment.converter(value)
            except ValueError:
                return None
        return parameters


def _subprotocols(subprotocols: Iterable[str] | None, pattern: str) -> tuple[str, ...]:
    if subprotocols is None:
        return ()
    if isinstance(subprotocols, str):
        raise TypeError(f"route {pattern!r}: subprotocols must be a list of names, not one string")
    names = tuple(subprotocols)
    if not names:
        raise ValueError(f"route {pattern!r}: subprotocols is empty (leave it out to accept without a subprotocol)")
    for name in names:
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise ValueError(f"route {pattern!r}: subprotocol {name!r} is not an HTTP token")
    if len(set(names)) != len(names):
        raise ValueError(f"route {pattern!r}: a subprotocol is listed twice in {list(names)!r}")
    return names


def _methods(methods: Iterable[str], pattern: str) -> frozenset[str]:
    if isinstance(methods, str):
        raise TypeError(f"route {pattern!r}: methods must be a list of names, like ['GET'], not one string")
    names = set()
    for method in methods:
        if not isinstance(method, str) or not _TOKEN.match(method):
            raise ValueError(f"route {pattern!r}: {method!r} is not an HTTP method")
        names.add(method.upper())
    if not names:
        raise ValueError(f"route {pattern!r}: methods is empty")
    if "GET" in names:
        if "HEAD" in names:
            raise ValueError(f"route {pattern!r}: HEAD comes with GET; list only GET")
        names.add("HEAD")
    return frozenset(names)


def _allow(methods: Iterable[str]) -> bytes:
    return ", ".join(sorted(methods)).encode("ascii")


class Router:
    """Sends each request to the handler of the route its path matches.

    ::

        router = Router()

        @router.websocket("/rooms/{room}")
        async def room(request: WebSocketRequest, room: str) -> None: ...

        @router.http("/health")
        async def health(request: HTTPRequest) -> HTTPResponse: ...

        await serve_websocket(router, host, port, None, http_handler=router.handle_http)

    A pattern is a path whose segments are static text or parameters,
    ``{name}`` or ``{name:converter}``; each parameter's value, converted,
    is passed to the handler as a keyword argument.  Converters: ``str``
    (the default: one non-empty segment, percent-decoded), ``int`` (ASCII
    digits), ``uuid`` (the 8-4-4-4-12 form; a :class:`uuid.UUID`), ``path``
    (the rest of the path, slashes included; last segment only), and those
    given in ``converters``: a name and a function from the decoded segment
    to the value, which raises :exc:`ValueError` for a segment that does
    not fit (the route does not match it).

    A WebSocket request that matches no route is rejected with 404 before any
    handler runs.  ``select_subprotocol`` is the default subprotocol selector
    of the router's WebSocket routes (see :meth:`websocket`).

    :raises ValueError: ``converters`` gives a built-in name (``str``,
        ``int``, ``uuid``, ``path``), or a name that is not an identifier.
    """

    def __init__(
        self,
        *,
        converters: Mapping[str, Converter] | None = None,
        select_subprotocol: SubprotocolSelector | None = None,
    ) -> None:
        self._converters = dict(_BUILTIN_CONVERTERS)
        for name, converter in (converters or {}).items():
            if name in _BUILTIN_CONVERTERS:
                raise ValueError(f"converter {name!r} is built in and cannot be replaced")
            if not name.isidentifier():
                raise ValueError(f"converter name {name!r} is not an identifier")
            if not callable(converter):
                raise TypeError(f"converter {name!r} must be callable, not {converter!r}")
            self._converters[name] = converter
        self._select_subprotocol = select_subprotocol
        self._websocket_routes: _Tree[_Route] = _Tree()
        self._http_routes: _Tree[list[_Route]] = _Tree()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} at {id(self):#x}>"

    # --- declaring routes ---------------------------------------------------------------------

    def websocket(
        self,
        pattern: str,
        *,
        subprotocols: Sequence[str] | None = None,
        select_subprotocol: SubprotocolSelector | None = None,
    ) -> Callable[[_WebSocketHandler], _WebSocketHandler]:
        """A decorator: the function handles WebSocket requests whose path matches ``pattern``.

        The handler is called as ``await handler(request, **parameters)``,
        and answers the request as any handler does (``request.accept()``,
        ``request.reject(status)``).

        ``subprotocols``: the subprotocols this route speaks, in the server's
        order of preference.  The router picks the first of them that the
        client proposed, and ``request.accept()`` accepts with it (unless the
        handler passes ``subprotocol=`` itself); a client that proposed none
        of them is rejected with 400 before the handler runs.

        ``select_subprotocol`` (here, or the router's): a function
        ``(request, supported) -> str | None`` (or an async one) that picks
        the subprotocol instead, ``supported`` being this route's
        ``subprotocols``.  It must return one of the client's
        :attr:`~WebSocketRequest.proposed_subprotocols`, or ``None``: no
        subprotocol, and a 400 if the route lists ``subprotocols``.

        :raises ValueError: a bad pattern (see :class:`Router`), a bad
            subprotocol list, or a route with the same shape as another
            (parameters in the same places), at decoration time.
        :raises TypeError: the handler cannot take the request and the
            pattern's parameters as keyword arguments.
        """
        parsed = _parse_pattern(pattern, self._converters)
        supported = _subprotocols(subprotocols, pattern)

        def register(handler: _WebSocketHandler) -> _WebSocketHandler:
            _check_handler(handler, parsed)
            node, rest, existing = self._websocket_routes.slot(parsed)
            if existing:
                raise ValueError(
                    f"WebSocket route {pattern!r} conflicts with {existing!r}: they match the same paths "
                    f"(parameters in the same places match alike, whatever their converters)"
                )
            route = _Route(parsed, handler, subprotocols=supported, select_subprotocol=select_subprotocol)
            if rest:
                node.rest, node.rest_pattern = route, pattern
            else:
                node.end, node.end_pattern = route, pattern
            return handler

        return register

    def http(self, pattern: str, *, methods: Iterable[str] = ("GET",)) -> Callable[[_HTTPHandler], _HTTPHandler]:
        """A decorator: the function answers plain HTTP requests whose path matches ``pattern``.

        The handler is called as ``await handler(request, **parameters)`` with
        the :class:`HTTPRequest`, and returns an :class:`HTTPResponse` (or
        ``None``: 404).  ``methods``: the methods it answers (``GET`` answers
        ``HEAD`` too; the server sends no body for ``HEAD``).  Routes with the
        same shape may share a pattern if their methods differ.  A request
        for a known path with another method gets 405 with ``Allow``; one
        for the path of a WebSocket route gets 426 (Upgrade Required).

        :raises ValueError: a bad pattern, bad methods, or a route with the
            same shape as another and a method in common.
        :raises TypeError: the handler cannot take the pattern's parameters.
        """
        parsed = _parse_pattern(pattern, self._converters)
        allowed = _methods(methods, pattern)

        def register(handler: _HTTPHandler) -> _HTTPHandler:
            _check_handler(handler, parsed)
            node, rest, _ = self._http_routes.slot(parsed)
            routes = node.rest if rest else node.end
            if routes is None:
                routes = []
                if rest:
                    node.rest, node.rest_pattern = routes, pattern
                else:
                    node.end, node.end_pattern = routes, pattern
            for other in routes:
                common = other.methods & allowed
                if common:
                    raise ValueError(
                        f"HTTP route {pattern!r} conflicts with {other.pattern.text!r} for {_allow(common).decode()}: "
                        f"they match the same paths (parameters in the same places match alike)"
                    )
            routes.append(_Route(parsed, handler, methods=allowed))
            return handler

        return register

    # --- serving ------------------------------------------------------------------------------

    def _match_websocket(self, path: str) -> tuple[_Route, dict[str, object]] | None:
        segments = _decode_segments(path)
        if segments is None:
            return None
        for route, values in self._websocket_routes.search(segments):
            parameters = route.convert(values)
            if parameters is not None:
                return route, parameters
        return None

    async def __call__(self, request: WebSocketRequest) -> None:
        """Handle a WebSocket request: the ``handler`` of :func:`serve_websocket`."""
        match = self._match_websocket(request.path)
        if match is None:
            log_request(request, logging.DEBUG, "no WebSocket route for %r: 404", request.path)
            await request.reject(404, extra_headers=[_TEXT_PLAIN], body=b"404 Not Found\n")
            return
        route, parameters = match
        subprotocol = await self._choose_subprotocol(route, request)
        if subprotocol is None and route.subprotocols:
            log_request(request, logging.DEBUG, "%r proposed none of the subprotocols of its route: 400", request.path)
            body = (
                f"400 Bad Request: this endpoint speaks the subprotocols {', '.join(route.subprotocols)}; "
                f"the request proposed none of them\n"
            )
            await request.reject(400, extra_headers=[_TEXT_PLAIN], body=body.encode())
            return
        if subprotocol is not None:
            request.default_subprotocol = subprotocol  # what accept() picks unless told otherwise
        await route.handler(request, **parameters)

    async def _choose_subprotocol(self, route: _Route, request: WebSocketRequest) -> str | None:
        select = route.select_subprotocol or self._select_subprotocol
        proposed = request.proposed_subprotocols
        if select is None:
            return next((name for name in route.subprotocols if name in proposed), None)
        chosen = select(request, route.subprotocols)
        if inspect.isawaitable(chosen):
            chosen = await chosen
        if chosen is not None and chosen not in proposed:
            raise ValueError(
                f"select_subprotocol {_name(select)}() chose {chosen!r}, which the client did not propose "
                f"(it proposed {list(proposed)!r}); return one of them, or None"
            )
        return chosen

    async def handle_http(self, request: HTTPRequest) -> HTTPResponse | None:
        """Answer a plain HTTP request: the ``http_handler`` of :func:`serve_websocket`.

        The matching route's response; ``None`` (which the server answers
        with 404) when no route matches; 405 for a known path and another
        method; 426 for the path of a WebSocket route.

        It calls the route's handler and sends nothing itself (the server sends
        the response): cancelling it cancels that handler, and nothing is sent.
        """
        segments = _decode_segments(request.target)
        if segments is None:
            return None
        allowed: set[str] = set()
        for routes, values in self._http_routes.search(segments):
            for route in routes:
                parameters = route.convert(values)
                if parameters is None:
                    continue
                if request.method in route.methods:
                    response: HTTPResponse | None = await route.handler(request, **parameters)
                    return response
                allowed |= route.methods
        if allowed:
            body = b"405 Method Not Allowed\n"
            return HTTPResponse(405, [(b"allow", _allow(allowed)), _TEXT_PLAIN], body)
        if any(route.convert(values) is not None for route, values in self._websocket_routes.search(segments)):
            body = b"426 Upgrade Required: this is a WebSocket endpoint; connect with a WebSocket client.\n"
            return HTTPResponse(426, [(b"upgrade", b"websocket"), _TEXT_PLAIN], body)
        return None
