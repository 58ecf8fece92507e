"""trio_ws: WebSocket client and server for Trio, a drop-in successor to trio-websocket.

Change ``import trio_websocket`` to ``import trio_ws``; everything else stays.
"""

from ._auth import basic_auth
from ._broadcast import BroadcastResult, broadcast
from ._client import (
    connect_websocket,
    connect_websocket_url,
    open_websocket,
    open_websocket_url,
    wrap_client_stream,
)
from ._connection import ConnectionState, ConnectionStatistics, MessageFragments, WebSocketConnection
from ._deflate import Deflate
from ._endpoint import Endpoint
from ._errors import (
    CloseReason,
    ConnectionClosed,
    ConnectionRejected,
    ConnectionTimeout,
    DisconnectionTimeout,
    HandshakeError,
)
from ._handshake import HTTPRequest, HTTPResponse
from ._proxy import Proxy, ProxyError, parse_proxy, proxy_from_environment
from ._pubsub import PubSub, PubSubError, PubSubState, Subscription, SubscriptionStatistics, open_pubsub
from ._reconnect import Backoff, Reconnector, is_retryable, reconnecting_websocket_url
from ._router import Router
from ._server import (
    OpenConnections,
    WebSocketRequest,
    WebSocketServer,
    open_unix_listener,
    serve_websocket,
    wrap_server_stream,
)
from ._version import __version__
from ._workers import PoolState, WorkerError, WorkerPool, WorkerState, run_workers

__all__ = [
    "Backoff",
    "BroadcastResult",
    "CloseReason",
    "ConnectionClosed",
    "ConnectionRejected",
    "ConnectionState",
    "ConnectionStatistics",
    "ConnectionTimeout",
    "Deflate",
    "DisconnectionTimeout",
    "Endpoint",
    "HTTPRequest",
    "HTTPResponse",
    "HandshakeError",
    "MessageFragments",
    "OpenConnections",
    "PoolState",
    "Proxy",
    "ProxyError",
    "PubSub",
    "PubSubError",
    "PubSubState",
    "Reconnector",
    "Router",
    "Subscription",
    "SubscriptionStatistics",
    "WebSocketConnection",
    "WebSocketRequest",
    "WebSocketServer",
    "WorkerError",
    "WorkerPool",
    "WorkerState",
    "__version__",
    "basic_auth",
    "broadcast",
    "connect_websocket",
    "connect_websocket_url",
    "open_pubsub",
    "open_websocket",
    "open_unix_listener",
    "is_retryable",
    "open_websocket_url",
    "parse_proxy",
    "proxy_from_environment",
    "reconnecting_websocket_url",
    "run_workers",
    "serve_websocket",
    "wrap_client_stream",
    "wrap_server_stream",
]
