"""Serf's agent RPC protocol (``ipc.go`` in Serf's sources): how ``serf members``, ``serf join``
and the other commands drive a running agent, so the real ``serf`` binary can drive a shoal
agent and ``swim members`` can drive either.

The wire, as Serf 0.9 writes it:

* A TCP connection carries msgpack objects back to back with no other framing.  A request is a
  header ``{Command, Seq}`` followed, for the commands that take one, by a body; a reply is a
  header ``{Seq, Error}`` followed, for the commands that return one, by a body.  Whether a body
  follows is fixed per command (:data:`SERF_COMMANDS`), and the client's Go code decodes a reply
  body even when ``Error`` is set, except for "Authentication required".
* Both ends use go-msgpack's ``MsgpackHandle{RawToString: true, WriteExt: true}``: strings are
  msgpack str (str8 included) and ``[]byte`` fields (``Addr``, ``Payload``) are bin; absent or
  nil fields mean Go's zero value.
* ``handshake {Version: 1}`` must come first; an agent with an auth key then needs
  ``auth {AuthKey}`` before anything but another handshake.
* ``stream {Type}`` is acknowledged by a header alone; every event it lets through then arrives
  as another header with the same ``Seq`` and a record body, until ``stop {Stop: seq}``.  A
  query arrives so too, with an ``ID`` the client answers it by: ``respond {ID, Payload}``.

The modules:

* :mod:`~swim.rpc.schema`: the records (members, events, key tallies, queries), each request
  and reply body, described on the struct codec; Serf's error strings; addresses.
* :mod:`~swim.rpc.filters`: Serf's event and member filters.
* :mod:`~swim.rpc.connection`: the protocol as sans-IO state machines, one per end.
* :mod:`~swim.rpc.server`: :class:`RpcServer` (and :func:`serve_rpc`) over TCP (AnyIO), driving
  an :class:`AgentBackend`.
* :mod:`~swim.rpc.client`: :class:`RpcClient` over TCP (AnyIO).

The endpoint is trusted the way Serf's is: whoever reaches it can make the agent leave, so bind
it to loopback or set an auth key.
"""

from swim.rpc.client import DEFAULT_TIMEOUT, RpcClient, RpcConnectionError
from swim.rpc.connection import (
    FIRST_COMMAND_TIMEOUT,
    HANDSHAKE_TIMEOUT,
    MAX_PENDING_QUERIES,
    MAX_REPLY_BYTES,
    MAX_REQUEST_BYTES,
    MAX_STREAMS,
    STREAM_BUFFER,
    TOO_MANY_STREAMS,
    ClientConnection,
    ServerConnection,
)
from swim.rpc.filters import event_matches, filter_members, parse_event_filter
from swim.rpc.schema import (
    AUTH_REQUIRED,
    DEFAULT_RPC_ADDR,
    DUPLICATE_HANDSHAKE,
    HANDSHAKE_REQUIRED,
    INVALID_AUTH_TOKEN,
    INVALID_FILTER,
    INVALID_QUERY_ID,
    IPC_VERSION,
    MEMBER_EVENTS,
    QUERY_RECORD_TYPES,
    REGEX_ERROR_PREFIX,
    SERF_COMMANDS,
    STREAM_EXISTS,
    UNSUPPORTED_COMMAND,
    UNSUPPORTED_IPC_VERSION,
    RpcError,
    RpcEvent,
    RpcKeyError,
    RpcKeyResult,
    RpcLogRecord,
    RpcMember,
    RpcMemberEvent,
    RpcQuery,
    RpcQueryEvent,
    RpcQueryRecord,
    RpcUserEvent,
    host_port,
    ip_text,
    parse_rpc_addr,
)
from swim.rpc.server import (
    MAX_CONNECTIONS,
    AgentBackend,
    RpcServer,
    RpcServerStatistics,
    serve_rpc,
)

__all__ = [
    "AUTH_REQUIRED",
    "DEFAULT_RPC_ADDR",
    "DEFAULT_TIMEOUT",
    "DUPLICATE_HANDSHAKE",
    "FIRST_COMMAND_TIMEOUT",
    "HANDSHAKE_REQUIRED",
    "HANDSHAKE_TIMEOUT",
    "INVALID_AUTH_TOKEN",
    "INVALID_FILTER",
    "INVALID_QUERY_ID",
    "IPC_VERSION",
    "MAX_CONNECTIONS",
    "MAX_PENDING_QUERIES",
    "MAX_REPLY_BYTES",
    "MAX_REQUEST_BYTES",
    "MAX_STREAMS",
    "MEMBER_EVENTS",
    "QUERY_RECORD_TYPES",
    "REGEX_ERROR_PREFIX",
    "SERF_COMMANDS",
    "STREAM_BUFFER",
    "STREAM_EXISTS",
    "TOO_MANY_STREAMS",
    "UNSUPPORTED_COMMAND",
    "UNSUPPORTED_IPC_VERSION",
    "AgentBackend",
    "ClientConnection",
    "RpcClient",
    "RpcConnectionError",
    "RpcError",
    "RpcEvent",
    "RpcKeyError",
    "RpcKeyResult",
    "RpcLogRecord",
    "RpcMember",
    "RpcMemberEvent",
    "RpcQuery",
    "RpcQueryEvent",
    "RpcQueryRecord",
    "RpcServer",
    "RpcServerStatistics",
    "RpcUserEvent",
    "ServerConnection",
    "event_matches",
    "filter_members",
    "host_port",
    "ip_text",
    "parse_event_filter",
    "parse_rpc_addr",
    "serve_rpc",
]
