"""Serf's RPC protocol rules on the sans-IO connections, bytes in and bytes out: no sockets, no
trio, no clock but the ``now`` each test passes in.  The bytes a reply must have are the ones
Serf's Go clients read (and shoal's server sent before it was sans-IO)."""

from __future__ import annotations

import math
import struct
from collections import Counter
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from swim.rpc import (
    AUTH_REQUIRED,
    DUPLICATE_HANDSHAKE,
    FIRST_COMMAND_TIMEOUT,
    HANDSHAKE_REQUIRED,
    HANDSHAKE_TIMEOUT,
    INVALID_AUTH_TOKEN,
    INVALID_FILTER,
    INVALID_QUERY_ID,
    MAX_PENDING_QUERIES,
    MAX_REQUEST_BYTES,
    MAX_STREAMS,
    STREAM_EXISTS,
    TOO_MANY_STREAMS,
    UNSUPPORTED_COMMAND,
    UNSUPPORTED_IPC_VERSION,
    ClientConnection,
    RpcEvent,
    RpcKeyResult,
    RpcMember,
    RpcMemberEvent,
    RpcQuery,
    RpcQueryEvent,
    RpcQueryRecord,
    RpcUserEvent,
    ServerConnection,
)
from swim.rpc.connection import (
    NEED_DATA,
    OK,
    ConnectionClosed,
    Failed,
    QueryDone,
    QueryRecord,
    Reply,
    Request,
    Response,
    StreamRecord,
    Unreadable,
)
from swim.rpc.schema import (
    CoordinateReply,
    EventRequest,
    ForceLeave,
    GetCoordinate,
    Handshake,
    InstallKey,
    Join,
    Joined,
    Leave,
    ListKeys,
    MemberList,
    Members,
    MembersFiltered,
    RequestBody,
    Respond,
    Stats,
    StatsReply,
    Stop,
    Stream,
    Tags,
)
from swim.wire.serf import Coordinate
from tests.test_rpc import CLUSTER, KEY, KEY_1

NOW = 1000.0


def pack(*objects: object) -> bytes:
    return b"".join(msgpack.packb(o, use_bin_type=True) for o in objects)


def unpack(data: bytes) -> list[Any]:
    unpacker = msgpack.Unpacker()
    unpacker.feed(data)
    return list(unpacker)


def server(auth_key: str | None = None, *, shaken: bool = True) -> ServerConnection:
    """A server end accepted at NOW, which has already shaken hands unless told not to."""
    connection = ServerConnection(auth_key, NOW)
    if shaken:
        assert feed(connection, {"Command": "handshake", "Seq": 0}, {"Version": 1}) is NEED_DATA
        assert unpack(connection.data_to_send()) == [{"Seq": 0, "Error": ""}]
    return connection


def feed(connection: ServerConnection, *objects: object) -> object:
    connection.receive_data(pack(*objects))
    return connection.next_event()


def answered(connection: ServerConnection, *objects: object) -> list[Any]:
    """What the connection answers on its own to ``objects``, which it keeps serving."""
    assert feed(connection, *objects) is NEED_DATA
    return unpack(connection.data_to_send())


def closes(connection: ServerConnection, *objects: object) -> tuple[str, list[Any]]:
    """Why the connection closes after ``objects``, and what it answered first."""
    event = feed(connection, *objects)
    assert isinstance(event, ConnectionClosed), event
    assert event.error
    assert connection.next_event() == event  # and stays closed
    return event.error, unpack(connection.data_to_send())


def request(connection: ServerConnection, *objects: object) -> Request:
    event = feed(connection, *objects)
    assert isinstance(event, Request), event
    assert connection.data_to_send() == b""
    return event


# ---------------------------------------------------------------------------------------------
# The handshake and authentication.


def test_a_command_before_the_handshake_is_refused_and_closes() -> None:
    connection = server(shaken=False)
    why, replies = closes(connection, {"Command": "members", "Seq": 3})
    assert why == "'members' came before the handshake"
    assert replies == [{"Seq": 3, "Error": HANDSHAKE_REQUIRED}]  # bare, though members has a body
    connection = server(shaken=False)
    assert closes(connection, {"Command": "auth", "Seq": 1}, {"AuthKey": KEY})[1] == [
        {"Seq": 1, "Error": HANDSHAKE_REQUIRED}
    ]


def test_handshake_versions() -> None:
    connection = server(shaken=False)
    assert answered(connection, {"Command": "handshake", "Seq": 1}, {"Version": 2}) == [
        {"Seq": 1, "Error": UNSUPPORTED_IPC_VERSION}
    ]
    assert answered(connection, {"Command": "handshake", "Seq": 2}, {"Version": 1}) == [
        {"Seq": 2, "Error": ""}
    ]
    assert answered(connection, {"Command": "handshake", "Seq": 3}, {"Version": 1}) == [
        {"Seq": 3, "Error": DUPLICATE_HANDSHAKE}
    ]


def test_with_an_auth_key_commands_wait_for_auth() -> None:
    connection = server(KEY)
    # Refused bare (the one error Serf's client reads no body after), the body skipped.
    assert answered(connection, {"Command": "members", "Seq": 1}) == [
        {"Seq": 1, "Error": AUTH_REQUIRED}
    ]
    assert answered(connection, {"Command": "event", "Seq": 2}, {"Name": "deploy"}) == [
        {"Seq": 2, "Error": AUTH_REQUIRED}
    ]
    assert answered(connection, {"Command": "auth", "Seq": 3}, {"AuthKey": "guess"}) == [
        {"Seq": 3, "Error": INVALID_AUTH_TOKEN}
    ]
    assert answered(connection, {"Command": "auth", "Seq": 4}, {"AuthKey": KEY}) == [
        {"Seq": 4, "Error": ""}
    ]
    assert request(connection, {"Command": "event", "Seq": 5}, {"Name": "deploy"}) == Request(
        5, EventRequest("deploy")
    )


def test_without_an_auth_key_any_key_is_invalid_as_in_serf() -> None:
    connection = server()
    assert answered(connection, {"Command": "auth", "Seq": 1}, {"AuthKey": KEY}) == [
        {"Seq": 1, "Error": INVALID_AUTH_TOKEN}
    ]
    assert request(connection, {"Command": "members", "Seq": 2}) == Request(2, Members())


# ---------------------------------------------------------------------------------------------
# Commands and their bodies.


def test_an_unknown_command_is_answered_then_closes() -> None:
    why, replies = closes(server(), {"Command": "self-destruct", "Seq": 4}, {"Now": True})
    assert why == "unknown command 'self-destruct', whose body cannot be skipped"
    assert replies == [{"Seq": 4, "Error": UNSUPPORTED_COMMAND}]


def test_serf_commands_shoal_does_not_serve_keep_the_connection() -> None:
    connection = server()
    assert answered(connection, {"Command": "monitor", "Seq": 2}, {"LogLevel": "debug"}) == [
        {"Seq": 2, "Error": UNSUPPORTED_COMMAND}
    ]
    assert request(connection, {"Command": "join", "Seq": 4}, {"Existing": ["10.0.0.9"]}) == (
        Request(4, Join(("10.0.0.9",)))
    )


@pytest.mark.parametrize(
    ("command", "body", "error"),
    [
        ("event", {"Name": 5}, "Name is a int, not a string"),
        ("event", {"Name": b"\xff"}, "Name is not valid UTF-8"),
        ("event", {"Name": "a", "Payload": 5}, "Payload is a int, not bytes"),
        ("event", {"Name": "a", "Coalesce": 1}, "Coalesce is a int, not a boolean"),
        ("join", ["10.0.0.9"], "the join request is a list, not a map"),
        ("join", {"Existing": "10.0.0.9"}, "Existing is a str, not a list of strings"),
        ("join", {"Existing": [7]}, "Existing is a int, not a string"),
        ("members-filtered", {"Tags": ["role"]}, "Tags is a list, not a map of strings"),
        ("tags", {"Tags": {"role": 1}}, "Tags is a int, not a string"),
        ("install-key", {"Key": None, "Extra": 1}, ""),  # Go ignores what it does not know
        ("install-key", {"Key": 7}, "Key is a int, not a string"),
        ("stop", {"Stop": -1}, "Stop is -1, not an integer in [0, 18446744073709551615]"),
        ("query", {"RelayFactor": 256}, "RelayFactor is 256, not an integer in [0, 255]"),
        ("query", {"Timeout": 1.5}, "Timeout is 1.5, not an integer in [0, 9223372036854775807]"),
        (
            "handshake",
            {"Version": "1"},
            "Version is '1', not an integer in [-2147483648, 2147483647]",
        ),
    ],
)
def test_a_body_of_the_wrong_shape_is_refused_and_the_connection_goes_on(
    command: str, body: object, error: str
) -> None:
    connection = server()
    event = feed(connection, {"Command": command, "Seq": 1}, body)
    if not error:
        assert isinstance(event, Request)
        return
    assert event is NEED_DATA
    replies = unpack(connection.data_to_send())
    assert replies[0] == {"Seq": 1, "Error": f"decode failed: {error}"}
    # Serf's client reads a body after the error for the commands that return one.
    assert replies[1:] == ([{}] if command in ("join", "members-filtered", "install-key") else [])
    assert request(connection, {"Command": "stats", "Seq": 2}) == Request(2, Stats())


def test_absent_and_nil_fields_are_go_zero_values() -> None:
    connection = server()
    # A nil payload, an absent flag; a str payload (older encoders) is bytes too, and a bin
    # name is a string.
    for seq, body, wanted in [
        (1, {"Name": "a", "Payload": None}, EventRequest("a")),
        (2, {"Name": "b", "Payload": "text"}, EventRequest("b", b"text")),
        (3, {"Name": b"c", "Payload": b"\x00"}, EventRequest("c", b"\x00")),
        (4, None, EventRequest("")),
    ]:
        assert request(connection, {"Command": "event", "Seq": seq}, body) == Request(seq, wanted)
        assert unpack(connection.send(OK)) == [{"Seq": seq, "Error": ""}]


def test_every_request_decodes_to_its_typed_body() -> None:
    connection = server()
    requests: list[tuple[dict[str, Any], object, RequestBody]] = [
        ({"Command": "members"}, None, Members()),
        (
            {"Command": "members-filtered"},
            {"Tags": {"role": "w.*"}, "Status": "alive", "Name": "web-."},
            MembersFiltered({"role": "w.*"}, "alive", "web-."),
        ),
        ({"Command": "join"}, {"Existing": ["a", "b"], "Replay": True}, Join(("a", "b"), True)),
        ({"Command": "force-leave"}, {"Node": "web-2", "Prune": True}, ForceLeave("web-2", True)),
        ({"Command": "tags"}, {"Tags": {"a": "1"}, "DeleteTags": ["b"]}, Tags({"a": "1"}, ("b",))),
        ({"Command": "install-key"}, {"Key": KEY_1}, InstallKey(KEY_1)),
        ({"Command": "list-keys"}, None, ListKeys()),
        ({"Command": "leave"}, None, Leave()),
        (
            {"Command": "query"},
            {
                "FilterNodes": ["web-1"],
                "FilterTags": {"role": "w.*"},
                "RequestAck": True,
                "RelayFactor": 2,
                "Timeout": 1_500_000_000,
                "Name": "uptime",
                "Payload": b"?",
            },
            RpcQuery("uptime", b"?", ("web-1",), {"role": "w.*"}, True, 2, 1.5),
        ),
    ]
    for seq, (header, body, wanted) in enumerate(requests, 1):
        objects = (header | {"Seq": seq}, body) if body is not None else (header | {"Seq": seq},)
        assert request(connection, *objects) == Request(seq, wanted)
        connection.send(Failed("not now"))


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\xc1", "not msgpack (FormatError: "),
        (pack([1, 2, 3]), "the request header is a list, not a map"),
        (pack({"Command": 7, "Seq": 1}), "Command is a int, not a string"),
        (pack({"Command": "event", "Seq": -1}), "Seq is -1, not an integer in [0, "),
        (pack({"Command": "event", "Seq": 1}) + b"\xa2\xff\xfe", "not msgpack (UnicodeDecodeError"),
    ],
)
def test_what_is_not_a_request_closes(data: bytes, why: str) -> None:
    connection = server()
    connection.receive_data(data)
    event = connection.next_event()
    assert isinstance(event, ConnectionClosed)
    assert event.error.startswith(why)
    assert connection.data_to_send() == b""


def test_a_request_larger_than_the_buffer_closes() -> None:
    connection = server()
    event = EventRequest("x", bytes(MAX_REQUEST_BYTES))
    header = pack({"Command": "event", "Seq": 1})
    connection.receive_data(header + pack({"Name": event.name, "Payload": event.payload}))
    assert connection.next_event() == ConnectionClosed(
        f"an object is larger than {MAX_REQUEST_BYTES} bytes"
    )


def test_requests_arrive_in_any_pieces_and_eof_closes() -> None:
    connection = server()
    data = pack({"Command": "join", "Seq": 1}, {"Existing": ["10.0.0.9"]})
    for i in range(len(data) - 1):
        connection.receive_data(data[i : i + 1])
        assert connection.next_event() is NEED_DATA
    connection.receive_data(data[-1:])
    assert connection.next_event() == Request(1, Join(("10.0.0.9",)))
    connection.send(Joined(1))
    connection.receive_data(pack({"Command": "members", "Seq": 2})[:3])
    assert connection.next_event() is NEED_DATA
    connection.receive_data(b"")  # the client closed its end mid-request
    assert connection.next_event() == ConnectionClosed()


def test_requests_are_counted_by_command() -> None:
    counts: Counter[str] = Counter()
    connection = ServerConnection(None, NOW, requests=counts)
    feed(connection, {"Command": "handshake", "Seq": 0}, {"Version": 1})
    feed(connection, {"Command": "monitor", "Seq": 1}, {})
    feed(connection, {"Command": "members", "Seq": 2})
    connection.send(MemberList(()))
    feed(connection, {"Command": "made-up", "Seq": 3})  # closes; unknown names are not kept
    assert counts == {"handshake": 1, "monitor": 1, "members": 1}


# ---------------------------------------------------------------------------------------------
# Replies, in the bytes Serf's clients read.


def test_each_request_takes_one_reply_of_its_type() -> None:
    connection = server()
    with pytest.raises(RuntimeError, match="no request awaits one"):
        connection.send(OK)
    assert request(connection, {"Command": "join", "Seq": 1}, {"Existing": []}).seq == 1
    with pytest.raises(RuntimeError, match="request 1 awaits its reply"):
        connection.next_event()
    with pytest.raises(TypeError, match="a join request is answered with Joined, not Ok"):
        connection.send(OK)


def test_the_members_reply_uses_bin_for_addresses_and_str_for_text() -> None:
    connection = server()
    request(connection, {"Command": "members", "Seq": 1})
    data = connection.send(MemberList(tuple(CLUSTER)))
    # The bytes shoal's server wrote before the codec described them: these keys in this order.
    wire = [
        {
            "Name": m.name,
            "Addr": m.addr,
            "Port": m.port,
            "Tags": m.tags,
            "Status": m.status,
            "ProtocolMin": m.protocol_min,
            "ProtocolMax": m.protocol_max,
            "ProtocolCur": m.protocol_cur,
            "DelegateMin": m.delegate_min,
            "DelegateMax": m.delegate_max,
            "DelegateCur": m.delegate_cur,
        }
        for m in CLUSTER
    ]
    assert data == pack({"Seq": 1, "Error": ""}, {"Members": wire})
    _, reply = unpack(data)  # raw=False: str arrives as str and bin as bytes
    first, v6 = reply["Members"][0], reply["Members"][3]
    assert (first["Name"], first["Addr"], len(v6["Addr"])) == ("web-1", bytes([10, 0, 0, 1]), 16)


def test_replies_and_errors_carry_the_body_their_command_returns() -> None:
    connection = server()
    tally = RpcKeyResult(2, 2, 1, {"db-1": "not allowed"}, {KEY_1: 2})
    wire_tally = {
        "Messages": {"db-1": "not allowed"},
        "Keys": {KEY_1: 2},
        "NumNodes": 2,
        "NumErr": 1,
        "NumResp": 2,
    }
    no_keys = wire_tally | {"Keys": None}  # Go leaves Keys nil but for list-keys
    failure = Failed("1/2 nodes reported failure", tally)
    cases: list[tuple[dict[str, Any], object, Reply, list[Any]]] = [
        ({"Command": "event"}, {"Name": "a"}, OK, [{"Seq": 1, "Error": ""}]),
        ({"Command": "join"}, {}, Joined(3), [{"Seq": 2, "Error": ""}, {"Num": 3}]),
        ({"Command": "join"}, {}, Failed("no"), [{"Seq": 3, "Error": "no"}, {}]),
        ({"Command": "leave"}, None, Failed("no"), [{"Seq": 4, "Error": "no"}]),
        (
            {"Command": "stats"},
            None,
            StatsReply({"agent": {"name": "web-1"}}),
            [{"Seq": 5, "Error": ""}, {"agent": {"name": "web-1"}}],
        ),
        ({"Command": "list-keys"}, None, tally, [{"Seq": 6, "Error": ""}, wire_tally]),
        ({"Command": "install-key"}, {"Key": KEY_1}, tally, [{"Seq": 7, "Error": ""}, no_keys]),
        (
            {"Command": "remove-key"},
            {"Key": KEY_1},
            failure,
            [{"Seq": 8, "Error": failure.message}, no_keys],
        ),
        ({"Command": "use-key"}, {"Key": KEY_1}, Failed("down"), [{"Seq": 9, "Error": "down"}, {}]),
        ({"Command": "join"}, {}, failure, [{"Seq": 10, "Error": failure.message}, {}]),
    ]
    for seq, (header, body, reply, wire) in enumerate(cases, 1):
        objects = (header | {"Seq": seq}, body) if body is not None else (header | {"Seq": seq},)
        request(connection, *objects)
        assert unpack(connection.send(reply)) == wire


def test_a_coordinate_reply_is_serfs_coordinate_response_byte_for_byte() -> None:
    connection = server()
    ask = {"Command": "get-coordinate", "Seq": 1}
    assert request(connection, ask, {"Node": "web-1"}) == Request(1, GetCoordinate("web-1"))
    coordinate = Coordinate((0.5,) + (0.0,) * 7, error=1.5, adjustment=0.25, height=1e-5)
    sent = connection.send(CoordinateReply(coordinate))
    header = msgpack.packb({"Seq": 1, "Error": ""})
    assert sent.startswith(header)
    body = sent[len(header) :]
    # struct fields in Go's sorted order, every number a float64, as go-msgpack writes them
    assert body == (
        b"\x82\xa5Coord\x84\xaaAdjustment\xcb"
        + struct.pack(">d", 0.25)
        + b"\xa5Error\xcb"
        + struct.pack(">d", 1.5)
        + b"\xa6Height\xcb"
        + struct.pack(">d", 1e-5)
        + b"\xa3Vec\x98"
        + b"".join(b"\xcb" + struct.pack(">d", x) for x in coordinate.vec)
        + b"\xa2Ok\xc3"
    )
    # none known: Go's zero coordinate (a nil vector) and Ok false
    request(connection, ask | {"Seq": 2}, {"Node": "ghost"})
    assert unpack(connection.send(CoordinateReply(None))) == [
        {"Seq": 2, "Error": ""},
        {"Coord": {"Adjustment": 0.0, "Error": 0.0, "Height": 0.0, "Vec": None}, "Ok": False},
    ]


def test_a_failure_takes_the_exception_message_or_its_type() -> None:
    assert Failed.of(RuntimeError("no seed answered")) == Failed("no seed answered")
    assert Failed.of(KeyError("ghost")) == Failed("'ghost'")
    assert Failed.of(ValueError()) == Failed("ValueError")


# ---------------------------------------------------------------------------------------------
# Streams and queries.


def test_a_stream_is_opened_acknowledged_fed_and_stopped() -> None:
    connection = server()
    assert request(connection, {"Command": "stream", "Seq": 5}, {"Type": "member-leave,user"}) == (
        Request(5, Stream("member-leave,user"))
    )
    joined = RpcMemberEvent("member-join", (CLUSTER[0],))
    left = RpcMemberEvent("member-leave", (CLUSTER[2],))
    deploy = RpcUserEvent("deploy", b"v3", coalesce=True, ltime=42)
    assert [connection.wants(5, e) for e in (joined, left, deploy)] == [False, True, True]
    assert connection.wants(6, deploy) is False  # no such stream
    assert unpack(connection.send(OK)) == [{"Seq": 5, "Error": ""}]
    assert answered(connection, {"Command": "stream", "Seq": 5}, {"Type": "*"}) == [
        {"Seq": 5, "Error": STREAM_EXISTS}
    ]
    header, record = unpack(connection.send(StreamRecord(5, left)))
    assert (header, record["Event"], [m["Name"] for m in record["Members"]]) == (
        {"Seq": 5, "Error": ""},
        "member-leave",
        ["db-1"],
    )
    assert connection.send(StreamRecord(5, deploy)) == pack(
        {"Seq": 5, "Error": ""},
        {"Event": "user", "LTime": 42, "Name": "deploy", "Payload": b"v3", "Coalesce": True},
    )
    assert request(connection, {"Command": "stop", "Seq": 6}, {"Stop": 5}) == Request(6, Stop(5))
    # From now on nothing goes out for it, not even what was queued before the stop.
    assert connection.send(StreamRecord(5, deploy)) == b""
    assert connection.wants(5, deploy) is False
    assert unpack(connection.send(OK)) == [{"Seq": 6, "Error": ""}]
    # Stopping what is not a stream succeeds, as in Serf, and needs nothing of the driver.
    assert answered(connection, {"Command": "stop", "Seq": 7}, {"Stop": 99}) == [
        {"Seq": 7, "Error": ""}
    ]


def test_a_query_goes_out_on_a_stream_and_only_what_went_out_can_be_answered() -> None:
    connection = server()
    request(connection, {"Command": "stream", "Seq": 5}, {"Type": "query:uptime"})
    connection.send(OK)
    uptime = RpcQueryEvent(7, ltime=12, name="uptime", payload=b"?")
    assert connection.wants(5, uptime)
    assert not connection.wants(5, RpcQueryEvent(8, 13, "load", b""))
    assert not connection.wants(5, RpcUserEvent("uptime", b"", False, 1))
    # Nothing went out with ID 7 yet: Serf's answer to an ID it does not know.
    assert answered(connection, {"Command": "respond", "Seq": 6}, {"ID": 7, "Payload": b"3d"}) == [
        {"Seq": 6, "Error": INVALID_QUERY_ID}
    ]
    assert connection.send(StreamRecord(5, uptime)) == pack(
        {"Seq": 5, "Error": ""},
        {"Event": "query", "ID": 7, "LTime": 12, "Name": "uptime", "Payload": b"?"},
    )
    respond = {"Command": "respond", "Seq": 8}
    assert request(connection, respond, {"ID": 7, "Payload": b"3d"}) == Request(
        8, Respond(7, b"3d")
    )
    assert unpack(connection.send(Failed("the response is too large"))) == [
        {"Seq": 8, "Error": "the response is too large"}
    ]
    # once, twice: whether it may still be answered is the agent's to say
    assert request(connection, respond | {"Seq": 9}, {"ID": 7}) == Request(9, Respond(7))
    assert unpack(connection.send(OK)) == [{"Seq": 9, "Error": ""}]


def test_a_connection_remembers_the_newest_queries_it_delivered() -> None:
    connection = server()
    request(connection, {"Command": "stream", "Seq": 1}, {"Type": "query"})
    connection.send(OK)
    for query_id in range(1, MAX_PENDING_QUERIES + 2):
        connection.send(StreamRecord(1, RpcQueryEvent(query_id, query_id, "q", b"")))
    respond = {"Command": "respond", "Seq": 2}
    assert answered(connection, respond, {"ID": 1}) == [{"Seq": 2, "Error": INVALID_QUERY_ID}]
    assert request(connection, respond, {"ID": 2}) == Request(2, Respond(2))


def test_a_stream_that_cannot_open_is_refused() -> None:
    connection = server()
    assert answered(connection, {"Command": "stream", "Seq": 1}, {"Type": "member-exploded"}) == [
        {"Seq": 1, "Error": INVALID_FILTER}
    ]
    for seq in range(2, MAX_STREAMS + 2):
        request(connection, {"Command": "stream", "Seq": seq}, {"Type": "user"})
        connection.send(OK)
    assert answered(connection, {"Command": "stream", "Seq": 100}, {"Type": "*"}) == [
        {"Seq": 100, "Error": TOO_MANY_STREAMS}
    ]
    request(connection, {"Command": "stop", "Seq": 101}, {"Stop": 2})
    connection.send(OK)
    request(connection, {"Command": "stream", "Seq": 102}, {"Type": "*"})
    # A stream the driver could not subscribe is not open.
    assert unpack(connection.send(Failed("backend gone"))) == [
        {"Seq": 102, "Error": "backend gone"}
    ]
    assert not connection.wants(102, RpcUserEvent("x", b"", False, 1))
    request(connection, {"Command": "stream", "Seq": 103}, {"Type": "*"})


def test_query_records_and_done_as_serf_writes_them() -> None:
    connection = server()
    request(connection, {"Command": "query", "Seq": 3}, {"Name": "uptime"})
    assert unpack(connection.send(OK)) == [{"Seq": 3, "Error": ""}]
    assert unpack(connection.send(QueryRecord(3, RpcQueryRecord("ack", "web-1")))) == [
        {"Seq": 3, "Error": ""},
        {"Type": "ack", "From": "web-1", "Payload": b""},
    ]
    answer = RpcQueryRecord("response", "web-1", b"up 3 days\n")
    assert connection.send(QueryRecord(3, answer)) == pack(
        {"Seq": 3, "Error": ""}, {"Type": "response", "From": "web-1", "Payload": b"up 3 days\n"}
    )
    assert connection.send(QueryDone(3)) == pack(
        {"Seq": 3, "Error": ""}, {"Type": "done", "From": "", "Payload": None}
    )


# ---------------------------------------------------------------------------------------------
# Deadlines.


def test_the_handshake_is_due_first_then_the_first_command() -> None:
    connection = server(shaken=False)
    assert connection.next_deadline() == NOW + HANDSHAKE_TIMEOUT
    assert connection.expired(NOW + HANDSHAKE_TIMEOUT - 0.001) is None
    answered(connection, {"Command": "handshake", "Seq": 0}, {"Version": 1})
    assert connection.next_deadline() == NOW + FIRST_COMMAND_TIMEOUT
    assert connection.expired(NOW + HANDSHAKE_TIMEOUT) is None
    request(connection, {"Command": "stats", "Seq": 1})
    assert connection.next_deadline() == math.inf  # from now on it may idle for good
    assert connection.expired(NOW + 100 * FIRST_COMMAND_TIMEOUT) is None


def test_with_an_auth_key_authentication_is_due_with_the_handshake() -> None:
    connection = server(KEY)
    assert connection.next_deadline() == NOW + HANDSHAKE_TIMEOUT
    answered(connection, {"Command": "members", "Seq": 1})  # refused: it does not count
    assert connection.next_deadline() == NOW + HANDSHAKE_TIMEOUT
    answered(connection, {"Command": "auth", "Seq": 2}, {"AuthKey": KEY})
    assert connection.next_deadline() == NOW + FIRST_COMMAND_TIMEOUT


@pytest.mark.parametrize(
    ("auth_key", "objects", "reason"),
    [
        (None, [], f"it did not shake hands within {HANDSHAKE_TIMEOUT:g} s of connecting"),
        (
            KEY,
            [{"Command": "handshake", "Seq": 0}, {"Version": 1}],
            f"it did not authenticate within {HANDSHAKE_TIMEOUT:g} s of connecting, and this "
            "agent has an RPC auth key",
        ),
        (
            None,
            [{"Command": "handshake", "Seq": 0}, {"Version": 1}],
            f"it sent no command within {FIRST_COMMAND_TIMEOUT:g} s of connecting",
        ),
    ],
)
def test_a_connection_past_its_deadline_says_why_and_closes(
    auth_key: str | None, objects: list[object], reason: str
) -> None:
    connection = server(auth_key, shaken=False)
    if objects:
        assert feed(connection, *objects) is NEED_DATA
    assert connection.expired(connection.next_deadline()) == reason
    assert connection.next_event() == ConnectionClosed(reason)
    assert connection.next_deadline() == math.inf


# ---------------------------------------------------------------------------------------------
# The client's end.


def client_reads(connection: ClientConnection, *objects: object) -> list[object]:
    connection.receive_data(pack(*objects))
    events: list[object] = []
    for _ in range(len(objects) + 1):
        event = connection.next_event()
        if event is NEED_DATA:
            return events
        events.append(event)
        if isinstance(event, ConnectionClosed):
            return events
    raise AssertionError(f"more events than objects: {events}")


def test_the_client_writes_requests_as_serf_does() -> None:
    connection = ClientConnection()
    sent = [
        connection.send(Handshake()),
        connection.send(Members()),
        connection.send(Join(("10.0.0.9",), True)),
        connection.send(Stats()),
        connection.send(RpcQuery("uptime", timeout=1.5)),
    ]
    assert sent == [
        (1, pack({"Command": "handshake", "Seq": 1}, {"Version": 1})),
        (2, pack({"Command": "members", "Seq": 2})),
        (3, pack({"Command": "join", "Seq": 3}, {"Existing": ["10.0.0.9"], "Replay": True})),
        (4, pack({"Command": "stats", "Seq": 4})),
        (
            5,
            pack(
                {"Command": "query", "Seq": 5},
                {
                    "FilterNodes": [],
                    "FilterTags": {},
                    "RequestAck": False,
                    "RelayFactor": 0,
                    "Timeout": 1_500_000_000,
                    "Name": "uptime",
                    "Payload": b"",
                },
            ),
        ),
    ]


def test_the_client_reads_replies_and_skips_no_body_after_auth_required() -> None:
    connection = ClientConnection()
    members, _ = connection.send(Members())
    keys, _ = connection.send(ListKeys())
    join, _ = connection.send(Join(()))
    assert client_reads(
        connection,
        {"Seq": members, "Error": AUTH_REQUIRED},  # no body follows
        {"Seq": keys, "Error": "1/2 nodes reported failure"},
        {"Messages": {"db-1": "no"}, "NumNodes": 2, "NumErr": 1, "NumResp": 2},
        {"Seq": join, "Error": ""},
        {"Num": 2},
    ) == [
        Response(members, AUTH_REQUIRED, None),
        Response(keys, "1/2 nodes reported failure", RpcKeyResult(2, 2, 1, {"db-1": "no"})),
        Response(join, "", Joined(2)),
    ]


def test_the_client_passes_on_stream_and_query_records_until_forgotten() -> None:
    connection = ClientConnection()
    stream, _ = connection.send(Stream("*"))
    query, _ = connection.send(RpcQuery("uptime"))
    deploy = {"Event": "user", "LTime": 7, "Name": "deploy", "Payload": b"v2", "Coalesce": True}
    ack = {"Type": "ack", "From": "web-1", "Payload": None}
    assert client_reads(
        connection,
        {"Seq": stream, "Error": ""},
        {"Seq": query, "Error": ""},
        {"Seq": stream, "Error": ""},
        deploy,
        {"Seq": stream, "Error": ""},
        {"Event": "query", "ID": 1, "Name": "q"},  # absent fields are Go's zero values
        {"Seq": query, "Error": ""},
        ack,
        {"Seq": stream, "Error": ""},
        {"Event": "member-exploded"},  # a kind Serf 0.9 never sends: skipped
    ) == [
        Response(stream, "", None),
        Response(query, "", None),
        StreamRecord(stream, RpcUserEvent("deploy", b"v2", True, 7)),
        StreamRecord(stream, RpcQueryEvent(1, 0, "q", b"")),
        QueryRecord(query, RpcQueryRecord("ack", "web-1")),
    ]
    connection.forget(stream)
    done = {"Type": "done", "From": "", "Payload": None}
    assert client_reads(connection, {"Seq": stream, "Error": ""}, deploy) == []
    assert client_reads(connection, {"Seq": query, "Error": ""}, done) == [QueryDone(query)]
    # Both are over: the query forgotten on "done", the stream kept for what Serf may still send.
    assert client_reads(connection, {"Seq": stream, "Error": ""}, deploy) == []
    assert client_reads(connection, {"Seq": query, "Error": ""}) == [
        ConnectionClosed(f"carried a reply to request {query}, which was never sent")
    ]


def test_what_the_client_cannot_read_costs_one_reply_or_the_connection() -> None:
    connection = ClientConnection()
    join, _ = connection.send(Join(()))
    stream, _ = connection.send(Stream("user"))
    refused, _ = connection.send(Stream("nope"))
    assert client_reads(
        connection,
        {"Seq": join, "Error": ""},
        {"Num": "two"},
        {"Seq": stream, "Error": ""},
        {"Seq": stream, "Error": ""},
        [1],
        {"Seq": refused, "Error": INVALID_FILTER},
    ) == [
        Unreadable(join, "Num is 'two', not an integer in [-2147483648, 2147483647]"),
        Response(stream, "", None),
        Unreadable(stream, "a stream record is a list, not a map"),
        Response(refused, INVALID_FILTER, None),
    ]
    assert client_reads(connection, {"Seq": refused, "Error": ""}) == [
        ConnectionClosed(f"carried a reply to request {refused}, which was never sent")
    ]
    for data, why in [
        (b"\xc1", "carried bytes shoal cannot read: not msgpack (FormatError: "),
        (pack({"Seq": "1"}), "carried a reply shoal cannot read: Seq is '1', not an integer"),
        (b"", ""),
    ]:
        connection = ClientConnection()
        connection.receive_data(data)
        event = connection.next_event()
        assert isinstance(event, ConnectionClosed)
        assert event.error.startswith(why) and bool(event.error) == bool(why)


# ---------------------------------------------------------------------------------------------
# Both ends together.

texts = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=20)
tag_maps = st.dictionaries(texts, texts, max_size=3)
members = st.builds(
    RpcMember,
    name=texts,
    addr=st.one_of(st.binary(min_size=4, max_size=4), st.binary(min_size=16, max_size=16)),
    port=st.integers(0, 0xFFFF),
    tags=tag_maps,
    status=st.sampled_from(["alive", "leaving", "left", "failed"]),
    protocol_min=st.integers(0, 255),
    protocol_max=st.integers(0, 255),
    protocol_cur=st.integers(0, 255),
    delegate_min=st.integers(0, 255),
    delegate_max=st.integers(0, 255),
    delegate_cur=st.integers(0, 255),
)
events = st.one_of(
    st.builds(
        RpcMemberEvent,
        event=st.sampled_from(["member-join", "member-leave", "member-failed"]),
        members=st.lists(members, max_size=3).map(tuple),
    ),
    st.builds(
        RpcUserEvent,
        name=texts,
        payload=st.binary(max_size=50),
        coalesce=st.booleans(),
        ltime=st.integers(0, 2**64 - 1),
    ),
    st.builds(
        RpcQueryEvent,
        id=st.integers(0, 2**64 - 1),
        ltime=st.integers(0, 2**64 - 1),
        name=texts,
        payload=st.binary(max_size=50),
    ),
)
queries = st.builds(
    RpcQuery,
    name=texts,
    payload=st.binary(max_size=50),
    filter_nodes=st.lists(texts, max_size=3).map(tuple),
    filter_tags=tag_maps,
    request_ack=st.booleans(),
    relay_factor=st.integers(0, 255),
    timeout=st.integers(0, 10**12).map(lambda ns: ns / 1e9),
)


def served(peer: ServerConnection, data: bytes) -> Request:
    peer.receive_data(data)
    event = peer.next_event()
    assert isinstance(event, Request)
    return event


def connected() -> tuple[ClientConnection, ServerConnection]:
    client, peer = ClientConnection(), ServerConnection(None, NOW)
    seq, data = client.send(Handshake())
    peer.receive_data(data)
    assert peer.next_event() is NEED_DATA
    client.receive_data(peer.data_to_send())
    assert client.next_event() == Response(seq, "", None)
    return client, peer


@given(st.lists(members, max_size=4), events, queries)
def test_what_one_end_sends_the_other_reads_as_it_was(
    cluster: list[RpcMember], event: RpcEvent, query: RpcQuery
) -> None:
    client, peer = connected()
    seq, data = client.send(Members())
    assert served(peer, data) == Request(seq, Members())
    client.receive_data(peer.send(MemberList(tuple(cluster))))
    assert client.next_event() == Response(seq, "", MemberList(tuple(cluster)))
    seq, data = client.send(query)
    assert served(peer, data) == Request(seq, query)
    client.receive_data(peer.send(OK))
    assert client.next_event() == Response(seq, "", None)
    stream, data = client.send(Stream())
    served(peer, data)
    client.receive_data(peer.send(OK) + peer.send(StreamRecord(stream, event)))
    assert [client.next_event(), client.next_event()] == [
        Response(stream, "", None),
        StreamRecord(stream, event),
    ]
    if isinstance(event, RpcQueryEvent):  # a query the stream delivered can be answered
        seq, data = client.send(Respond(event.id, b"answer"))
        assert served(peer, data) == Request(seq, Respond(event.id, b"answer"))
        client.receive_data(peer.send(OK))
        assert client.next_event() == Response(seq, "", None)
