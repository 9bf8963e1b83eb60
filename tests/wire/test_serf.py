"""Tests for swim.wire.serf: Serf's payloads, byte for byte as Serf 0.9.4 writes them."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from swim.wire.errors import DecodeError, EncodeError
from swim.wire.limits import DEFAULT_META_MAX_BYTES
from swim.wire.serf import (
    QUERY_FLAG_ACK,
    QUERY_FLAG_NO_BROADCAST,
    QUERY_RESPONSE_SIZE_LIMIT,
    QUERY_SIZE_LIMIT,
    USER_EVENT_SIZE_LIMIT,
    ConflictResponse,
    Coordinate,
    JoinIntent,
    KeyRequest,
    KeyResponse,
    LeaveIntent,
    Member,
    MemberStatus,
    NodeFilter,
    Query,
    QueryResponse,
    RecentEvent,
    RecentEvents,
    Relay,
    SerfMessage,
    SerfMessageType,
    SerfPushPull,
    TagFilter,
    UserEvent,
    decode_coordinate,
    decode_filter,
    decode_relay,
    decode_serf,
    decode_tags,
    encode_coordinate,
    encode_node_filter,
    encode_relay,
    encode_serf,
    encode_tag_filter,
    encode_tags,
)

LOCALHOST = bytes([127, 0, 0, 1])
ACK_RESPONSE = QueryResponse(ltime=3, id=99, from_node="py", flags=QUERY_FLAG_ACK)

# The "Serf" table of vectors.md: (name, Go's bytes, the object, its encoder, its decoder).
VECTORS: list[tuple[str, str, object, Callable[[Any], bytes], Callable[[bytes], object]]] = [
    ("tags role=web", "ff81a4726f6c65a3776562", {"role": "web"}, encode_tags, decode_tags),
    ("tags empty", "ff80", {}, encode_tags, decode_tags),
    (
        "join intent",
        "0182a54c54696d6505a44e6f6465a27079",
        JoinIntent(ltime=5, node="py"),
        encode_serf,
        decode_serf,
    ),
    (
        "leave intent",
        "0083a54c54696d6506a44e6f6465a27079a55072756e65c2",
        LeaveIntent(ltime=6, node="py", prune=False),
        encode_serf,
        decode_serf,
    ),
    (
        "user event",
        "0384a24343c3a54c54696d6502a44e616d65a66465706c6f79a75061796c6f6164a27631",
        UserEvent(ltime=2, name="deploy", payload=b"v1", coalesce=True),
        encode_serf,
        decode_serf,
    ),
    (
        "query",
        "048ba441646472a47f000001a746696c74657273c0a5466c61677301a2494463a54c54696d6503a44e616d"
        "65aa5f736572665f70696e67a75061796c6f6164c0a4506f7274cd1f0aab52656c6179466163746f7200aa"
        "536f757263654e6f6465a27331a754696d656f7574ce77359400",
        Query(
            ltime=3,
            id=99,
            addr=LOCALHOST,
            port=7946,
            source_node="s1",
            name="_serf_ping",
            flags=QUERY_FLAG_ACK,
            timeout_ns=2_000_000_000,
        ),
        encode_serf,
        decode_serf,
    ),
    (
        "query response ack",
        "0585a5466c61677301a446726f6da27079a2494463a54c54696d6503a75061796c6f6164c0",
        ACK_RESPONSE,
        encode_serf,
        decode_serf,
    ),
    (
        "relay",
        "0982a8446573744164647283a24950a47f000001a4506f7274cd1f0aa45a6f6e65a0a8446573744e616d65"
        "a273310585a5466c61677301a446726f6da27079a2494463a54c54696d6503a75061796c6f6164c0",
        Relay(LOCALHOST, 7946, "s1", encode_serf(ACK_RESPONSE)),
        encode_serf,
        decode_serf,
    ),
    (
        "tag filter",
        "0182a445787072a3776562a3546167a4726f6c65",
        TagFilter(tag="role", expr="web"),
        lambda f: encode_tag_filter(f.tag, f.expr),
        decode_filter,
    ),
    (
        "node filter",
        "0092a161a162",
        NodeFilter(("a", "b")),
        lambda f: encode_node_filter(f.names),
        decode_filter,
    ),
    (
        "key response",
        "0884a44b65797391a16ba74d657373616765a0aa5072696d6172794b6579a16ba6526573756c74c3",
        KeyResponse(result=True, message="", keys=("k",), primary_key="k"),
        encode_serf,
        decode_serf,
    ),
    (
        # Integers on purpose: they must still go out as float64.
        "coordinate",
        "0184aa41646a7573746d656e74cb0000000000000000a54572726f72cb3ff8000000000000a6486569676874"
        "cb3ee4f8b588e368f1a356656398" + "cb0000000000000000" * 8,
        Coordinate(vec=(0,) * 8, error=1.5, adjustment=0, height=1e-5),
        encode_coordinate,
        decode_coordinate,
    ),
]
VECTOR_IDS = [v[0] for v in VECTORS]


@pytest.mark.parametrize(("name", "wire", "obj", "encode", "decode"), VECTORS, ids=VECTOR_IDS)
def test_vector_encode(
    name: str, wire: str, obj: object, encode: Callable[[Any], bytes], decode: object
) -> None:
    assert encode(obj).hex() == wire


@pytest.mark.parametrize(("name", "wire", "obj", "encode", "decode"), VECTORS, ids=VECTOR_IDS)
def test_vector_decode(
    name: str, wire: str, obj: object, encode: object, decode: Callable[[bytes], object]
) -> None:
    assert decode(bytes.fromhex(wire)) == obj


def test_relay_vector_through_decode_relay() -> None:
    wire = bytes.fromhex(VECTORS[7][1])
    relay = decode_relay(wire)
    assert relay == VECTORS[7][2]
    assert decode_serf(relay.inner) == ACK_RESPONSE


def test_constants() -> None:
    assert [t.value for t in SerfMessageType] == list(range(10))
    assert (QUERY_FLAG_ACK, QUERY_FLAG_NO_BROADCAST) == (1, 2)
    assert USER_EVENT_SIZE_LIMIT == 9 * 1024
    assert QUERY_SIZE_LIMIT == QUERY_RESPONSE_SIZE_LIMIT == 1024


# ---------------------------------------------------------------------------------------------
# Tags


def test_tags_are_written_in_sorted_key_order() -> None:
    assert encode_tags({"b": "1", "a": "2"}) == encode_tags({"a": "2", "b": "1"})
    assert encode_tags({"b": "1", "a": "2"}).hex() == "ff82a161a132a162a131"


def test_tags_limit() -> None:
    exact = {"k": "v" * (DEFAULT_META_MAX_BYTES - 7)}  # ff 81 a1 6b da xxxx + value
    assert len(encode_tags(exact)) == DEFAULT_META_MAX_BYTES
    with pytest.raises(EncodeError, match=rf"513 bytes.*{DEFAULT_META_MAX_BYTES}"):
        encode_tags({"k": "v" * (DEFAULT_META_MAX_BYTES - 6)})
    with pytest.raises(EncodeError, match=r"11 bytes.*10"):
        encode_tags({"role": "web"}, limit=10)
    assert len(encode_tags({"k": "v" * 1000}, limit=2000)) > DEFAULT_META_MAX_BYTES


@pytest.mark.parametrize(
    ("meta", "tags"),
    [
        (b"", {"role": ""}),
        (b"web", {"role": "web"}),
        (b"\x80web", {"role": "\ufffdweb"}),
    ],
)
def test_tags_compatibility_path(meta: bytes, tags: dict[str, str]) -> None:
    assert decode_tags(meta) == tags


@pytest.mark.parametrize(
    "meta",
    [
        "ff",  # nothing after the magic byte
        "ffc0",  # nil, not a map
        "ff91a161",  # an array
        "ff8101a161",  # integer key
        "ff81a16101",  # integer value
        "ff81a161c0",  # nil value
        "ff81a1ffa161",  # key is not UTF-8
        "ff81a161a1ff",  # value is not UTF-8
        "ff8000",  # trailing bytes
        "ff81a161",  # truncated
    ],
)
def test_tags_malformed(meta: str) -> None:
    with pytest.raises(DecodeError):
        decode_tags(bytes.fromhex(meta))


# ---------------------------------------------------------------------------------------------
# Messages: Go's conventions


def test_push_pull_sends_empty_collections_as_go_does() -> None:
    # Serf's LocalState always makes LeftMembers, StatusLTimes and the event ring non-nil.
    wire = encode_serf(SerfPushPull(ltime=1))
    assert wire == b"\x02" + msgpack.packb(
        {
            "EventLTime": 0,
            "Events": [],
            "LTime": 1,
            "LeftMembers": [],
            "QueryLTime": 0,
            "StatusLTimes": {},
        },
        use_bin_type=False,
    )
    nils = {"Events": None, "LTime": 1, "LeftMembers": None, "StatusLTimes": None}
    assert decode_serf(b"\x02" + msgpack.packb(nils)) == SerfPushPull(ltime=1)


def test_push_pull_event_ring() -> None:
    state = SerfPushPull(
        ltime=7,
        status_ltimes={"b": 2, "a": 3},
        left_members=("c",),
        event_ltime=4,
        events=(None, RecentEvents(2, (RecentEvent("deploy", b"v1"),)), None),
        query_ltime=5,
    )
    wire = encode_serf(state)
    decoded = msgpack.unpackb(wire[1:], raw=False)
    assert list(decoded["StatusLTimes"]) == ["a", "b"]
    assert decoded["Events"] == [
        None,
        {"Events": [{"Name": "deploy", "Payload": "v1"}], "LTime": 2},
        None,
    ]
    assert decode_serf(wire) == state


def test_conflict_response() -> None:
    member = Member(
        name="n1",
        addr=LOCALHOST,
        port=7946,
        tags={"role": "web"},
        status=MemberStatus.ALIVE,
        protocol_min=1,
        protocol_max=5,
        protocol_cur=2,
        delegate_min=2,
        delegate_max=5,
        delegate_cur=4,
    )
    wire = encode_serf(ConflictResponse(member))
    keys = list(msgpack.unpackb(wire[1:], raw=False))
    assert wire[0] == SerfMessageType.CONFLICT_RESPONSE
    assert keys == sorted(keys)
    assert keys[:5] == ["Addr", "DelegateCur", "DelegateMax", "DelegateMin", "Name"]
    assert keys[5:] == ["Port", "ProtocolCur", "ProtocolMax", "ProtocolMin", "Status", "Tags"]
    assert decode_serf(wire) == ConflictResponse(member)
    # A responder that knows no such member answers Go's nil.
    assert encode_serf(ConflictResponse(None)) == b"\x06\xc0"
    assert decode_serf(b"\x06\xc0") == ConflictResponse(None)


def test_unknown_member_status_is_refused() -> None:
    with pytest.raises(DecodeError, match="member status"):
        decode_serf(b"\x06" + msgpack.packb({"Name": "n", "Status": 9}))


def test_absent_fields_take_go_zero_values() -> None:
    assert decode_serf(b"\x01\x80") == JoinIntent(ltime=0, node="")
    assert decode_serf(b"\x07\x80") == KeyRequest()
    assert decode_serf(b"\x06\x80") == ConflictResponse(Member(name="", addr=b"", port=0))


@pytest.mark.parametrize(
    "wire",
    ["", "0a80", "ff80", "01", "0191", "0182a54c54696d65ff", "0180c0", "0181a54c54696d65a178"],
)
def test_decode_serf_malformed(wire: str) -> None:
    with pytest.raises(DecodeError):
        decode_serf(bytes.fromhex(wire))


def test_encode_serf_refuses_other_objects() -> None:
    with pytest.raises(TypeError):
        encode_serf(object())  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Relay, filters, coordinates


def test_relay_with_empty_inner() -> None:
    wire = encode_relay(LOCALHOST, 1, "x", b"")
    assert decode_relay(wire) == Relay(LOCALHOST, 1, "x", b"")


@pytest.mark.parametrize(
    "wire",
    [
        b"",
        b"\x01\x80",  # not a relay
        b"\x09",  # no header
        b"\x09\x82\xa8DestAddr",  # truncated header
        b"\x09\x90",  # header is not a map
        b"\x09" + msgpack.packb({"DestAddr": {"Port": 70000}, "DestName": "x"}),
        b"\x09" + msgpack.packb({"DestAddr": [], "DestName": "x"}),
    ],
)
def test_relay_malformed(wire: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_relay(wire)


@pytest.mark.parametrize("wire", ["", "02", "0280", "00a161", "0191"])
def test_filter_malformed(wire: str) -> None:
    with pytest.raises(DecodeError):
        decode_filter(bytes.fromhex(wire))


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x00\x80",  # version 0
        b"\x02\x80",  # version 2
        b"\x01" + msgpack.packb({"Vec": "x"}),
        b"\x01" + msgpack.packb({"Vec": [1.0, "x"]}),
        b"\x01" + msgpack.packb({"Error": "x"}),
        b"\x01\x80\x80",  # trailing bytes
    ],
)
def test_coordinate_malformed(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_coordinate(payload)


def test_coordinate_accepts_float32_and_integers() -> None:
    wire = b"\x01" + msgpack.packb(
        {"Adjustment": 1, "Error": 0.5, "Height": 0.25, "Vec": [1.5, 2]}, use_single_float=True
    )
    assert decode_coordinate(wire) == Coordinate((1.5, 2.0), 0.5, 1.0, 0.25)


# ---------------------------------------------------------------------------------------------
# Round trips

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
u64 = st.integers(0, 2**64 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
text = st.text(max_size=12)
raw = st.binary(max_size=12)
names = st.lists(text, max_size=4).map(tuple)
tag_maps = st.dictionaries(text, text, max_size=4)
floats = st.floats(allow_nan=False)

recent_events = st.builds(
    RecentEvents, u64, st.lists(st.builds(RecentEvent, text, raw), max_size=3).map(tuple)
)
members = st.builds(
    Member, text, raw, u16, tag_maps, st.sampled_from(MemberStatus), u8, u8, u8, u8, u8, u8
)
serf_messages: st.SearchStrategy[SerfMessage] = st.one_of(
    st.builds(LeaveIntent, u64, text, st.booleans()),
    st.builds(JoinIntent, u64, text),
    st.builds(
        SerfPushPull,
        u64,
        st.dictionaries(text, u64, max_size=4),
        names,
        u64,
        st.lists(st.none() | recent_events, max_size=4).map(tuple),
        u64,
    ),
    st.builds(UserEvent, u64, text, raw, st.booleans()),
    st.builds(
        Query,
        u64,
        u32,
        raw,
        u16,
        text,
        text,
        raw,
        st.lists(raw, max_size=3).map(tuple),
        u32,
        u8,
        i64,
    ),
    st.builds(QueryResponse, u64, u32, text, u32, raw),
    st.builds(ConflictResponse, st.none() | members),
    st.builds(KeyRequest, raw),
    st.builds(KeyResponse, st.booleans(), text, names, text),
    st.builds(Relay, raw, u16, text, st.binary(max_size=40)),
)
coordinates = st.builds(Coordinate, st.lists(floats, max_size=8).map(tuple), floats, floats, floats)


@given(serf_messages)
def test_serf_round_trip(message: SerfMessage) -> None:
    wire = encode_serf(message)
    assert wire[0] == message.TYPE
    assert decode_serf(wire) == message


@given(tag_maps)
def test_tags_round_trip(tags: dict[str, str]) -> None:
    assert decode_tags(encode_tags(tags, limit=1 << 20)) == tags


@given(names)
def test_node_filter_round_trip(node_names: tuple[str, ...]) -> None:
    assert decode_filter(encode_node_filter(node_names)) == NodeFilter(node_names)


@given(text, text)
def test_tag_filter_round_trip(tag: str, expr: str) -> None:
    assert decode_filter(encode_tag_filter(tag, expr)) == TagFilter(tag, expr)


@given(raw, u16, text, st.binary(max_size=40))
def test_relay_round_trip(addr: bytes, port: int, name: str, inner: bytes) -> None:
    assert decode_relay(encode_relay(addr, port, name, inner)) == Relay(addr, port, name, inner)


@given(coordinates)
def test_coordinate_round_trip(coordinate: Coordinate) -> None:
    assert decode_coordinate(encode_coordinate(coordinate)) == coordinate


# ---------------------------------------------------------------------------------------------
# Robustness: bad input never raises anything but DecodeError.

DECODERS: list[Callable[[bytes], object]] = [
    decode_serf,
    decode_tags,
    decode_filter,
    decode_relay,
    decode_coordinate,
]


def decode_or_refuse(data: bytes) -> None:
    """Every decoder either decodes ``data`` or raises DecodeError."""
    for decode in DECODERS:
        with contextlib.suppress(DecodeError):
            decode(data)


@pytest.mark.parametrize("wire", [bytes.fromhex(v[1]) for v in VECTORS], ids=VECTOR_IDS)
def test_truncations_and_bit_flips_of_vectors(wire: bytes) -> None:
    for end in range(len(wire)):
        decode_or_refuse(wire[:end])
    for bit in range(len(wire) * 8):
        flipped = bytearray(wire)
        flipped[bit // 8] ^= 1 << (bit % 8)
        decode_or_refuse(bytes(flipped))


@given(st.binary(max_size=64))
def test_random_bytes(data: bytes) -> None:
    decode_or_refuse(data)


field_names = st.sampled_from(
    [
        "LTime", "Node", "Prune", "CC", "Name", "Payload", "Addr", "Filters", "Flags", "ID",
        "Port", "RelayFactor", "SourceNode", "Timeout", "From", "Key", "Keys", "Message",
        "PrimaryKey", "Result", "EventLTime", "Events", "LeftMembers", "QueryLTime",
        "StatusLTimes", "Status", "Tags", "DelegateCur", "ProtocolMin", "DestAddr", "DestName",
        "IP", "Zone", "Expr", "Tag", "Adjustment", "Error", "Height", "Vec",
    ]
)  # fmt: skip
msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.binary(max_size=8)
    | st.sampled_from([b"\xff", b"\xc3\x28"]),  # invalid UTF-8
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            field_names | st.binary(max_size=3) | st.integers(-5, 5), inner, max_size=5
        )
    ),
    max_leaves=12,
)


@given(st.integers(0, 0xFF), msgpack_values, st.binary(max_size=4))
def test_well_formed_msgpack_of_the_wrong_shape(kind: int, value: object, tail: bytes) -> None:
    decode_or_refuse(bytes((kind,)) + msgpack.packb(value, use_bin_type=False) + tail)


@given(serf_messages, st.data())
def test_truncations_and_bit_flips_of_round_trips(
    message: SerfMessage, data: st.DataObject
) -> None:
    wire = encode_serf(message)
    decode_or_refuse(wire[: data.draw(st.integers(0, len(wire) - 1))])
    flipped = bytearray(wire)
    flipped[data.draw(st.integers(0, len(wire) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    decode_or_refuse(bytes(flipped))
