"""swim.wire.messages: every memberlist message, byte for byte as Go's memberlist 0.2.2 writes it.

The vectors are the bytes Go produced (reference/vectors.md); decoding must also accept what
Go's lenient decoder accepts, and refuse with DecodeError what it cannot represent.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swim.wire import lzw, structs
from swim.wire.errors import DecodeError, EncodeError
from swim.wire.limits import MAX_COMPOUND_PART_BYTES, MAX_COMPOUND_PARTS
from swim.wire.messages import (
    Ack,
    Alive,
    Compound,
    Compress,
    Dead,
    Err,
    IndirectPing,
    Message,
    Nack,
    NodeState,
    Ping,
    PushNodeState,
    PushPullHeader,
    Suspect,
    User,
    UserMsgHeader,
    decode,
    encode,
    encode_body,
    encode_compound,
    make_compounds,
)
from swim.wire.packet import decompress_message
from tests.wire import strategies as s
from tests.wire.strategies import bin8, bin16, bin32, packed, str8, struct_bytes

IP = bytes([10, 0, 0, 1])
PORT = 7946
VSN = bytes([1, 5, 2, 2, 5, 4])
HELLO = b"hello hello hello hello"

# ---------------------------------------------------------------------------------------------
# Go's bytes (vectors.md)

PING = bytes.fromhex(
    "0085a44e6f6465a66e6f64652d62a55365714e6f07aa536f7572636541646472a40a000001aa536f757263"
    "654e6f6465a66e6f64652d61aa536f75726365506f7274cd1f0a"
)
PING_OMITEMPTY = bytes.fromhex("0082a44e6f6465a66e6f64652d62a55365714e6f07")
INDIRECT_PING = bytes.fromhex(
    "0188a44e61636bc3a44e6f6465a66e6f64652d63a4506f7274cd1f0aa55365714e6fcd012caa536f75726365"
    "41646472a40a000001aa536f757263654e6f6465a66e6f64652d61aa536f75726365506f7274cd1f0aa654"
    "6172676574a40a000001"
)
ACK_NIL = bytes.fromhex("0282a75061796c6f6164c0a55365714e6f07")
ACK_PAYLOAD = bytes.fromhex("0282a75061796c6f6164a3010203a55365714e6fce00011170")
NACK = bytes.fromhex("0b81a55365714e6f07")
SUSPECT = bytes.fromhex(
    "0383a446726f6da66e6f64652d61ab496e6361726e6174696f6e03a44e6f6465a66e6f64652d62"
)
ALIVE = bytes.fromhex(
    "0486a441646472a40a000001ab496e6361726e6174696f6e01a44d657461da0028"
    + "ff" * 40
    + "a44e6f6465a66e6f64652d61a4506f7274cd1f0aa356736ea6010502020504"
)
ALIVE_NIL_META = bytes.fromhex(
    "0486a441646472a40a000001ab496e6361726e6174696f6e01a44d657461c0a44e6f6465a66e6f64652d61"
    "a4506f7274cd1f0aa356736ea6010502020504"
)
DEAD = bytes.fromhex(
    "0583a446726f6da66e6f64652d61ab496e6361726e6174696f6e04a44e6f6465a66e6f64652d61"
)
ERR = bytes.fromhex("0d81a54572726f72a4626f6f6d")
PUSH_PULL_HEADER = bytes.fromhex("0683a44a6f696ec3a54e6f64657301ac5573657253746174654c656e00")
PUSH_NODE_STATE = bytes.fromhex(
    "87a441646472a40a000001ab496e6361726e6174696f6e01a44d657461a178a44e616d65a66e6f64652d61"
    "a4506f7274cd1f0aa5537461746500a356736ea6010502020504"
)
USER_MSG_HEADER = bytes.fromhex("81aa557365724d73674c656e05")
COMPOUND = bytes.fromhex(
    "0702001500270082a44e6f6465a66e6f64652d62a55365714e6f070383a446726f6da66e6f64652d61ab49"
    "6e6361726e6174696f6e03a44e6f6465a66e6f64652d62"
)
COMPRESS = bytes.fromhex("0982a4416c676f00a3427566b200d19461c3e60d0881040d222c787060c180")
LONG_STRINGS_PREFIX = bytes.fromhex("0383a446726f6dda012c6666")

VECTORS: list[tuple[str, Message, bytes]] = [
    (
        "ping",
        Ping(seq_no=7, node="node-b", source_addr=IP, source_port=PORT, source_node="node-a"),
        PING,
    ),
    ("ping omitempty", Ping(seq_no=7, node="node-b"), PING_OMITEMPTY),
    (
        "indirect ping",
        IndirectPing(
            seq_no=300,
            target=IP,
            port=PORT,
            node="node-c",
            nack=True,
            source_addr=IP,
            source_port=PORT,
            source_node="node-a",
        ),
        INDIRECT_PING,
    ),
    ("ack nil payload", Ack(seq_no=7), ACK_NIL),
    ("ack payload", Ack(seq_no=70000, payload=b"\x01\x02\x03"), ACK_PAYLOAD),
    ("nack", Nack(seq_no=7), NACK),
    ("suspect", Suspect(incarnation=3, node="node-b", from_node="node-a"), SUSPECT),
    (
        "alive",
        Alive(incarnation=1, node="node-a", addr=IP, port=PORT, vsn=VSN, meta=b"\xff" * 40),
        ALIVE,
    ),
    (
        "alive nil meta",
        Alive(incarnation=1, node="node-a", addr=IP, port=PORT, vsn=VSN),
        ALIVE_NIL_META,
    ),
    ("dead", Dead(incarnation=4, node="node-a", from_node="node-a"), DEAD),
    ("err", Err(error="boom"), ERR),
    ("push-pull header", PushPullHeader(nodes=1, user_state_len=0, join=True), PUSH_PULL_HEADER),
    ("compound", Compound(parts=(PING_OMITEMPTY, SUSPECT)), COMPOUND),
    ("compress", Compress(buf=lzw.compress(HELLO)), COMPRESS),
]

GO_NODE_STATE = PushNodeState(
    name="node-a",
    addr=IP,
    port=PORT,
    incarnation=1,
    state=NodeState.ALIVE,
    vsn=VSN,
    meta=b"x",
)


@pytest.mark.parametrize(("message", "wire"), [v[1:] for v in VECTORS], ids=[v[0] for v in VECTORS])
def test_encodes_to_go_bytes(message: Message, wire: bytes) -> None:
    assert encode(message) == wire


@pytest.mark.parametrize(("message", "wire"), [v[1:] for v in VECTORS], ids=[v[0] for v in VECTORS])
def test_decodes_go_bytes(message: Message, wire: bytes) -> None:
    assert decode(wire) == message


def test_push_node_state_body_matches_go() -> None:
    assert encode_body(GO_NODE_STATE) == PUSH_NODE_STATE
    assert structs.unpack_struct(PushNodeState, PUSH_NODE_STATE) == GO_NODE_STATE


def test_user_msg_header_body_matches_go() -> None:
    assert encode_body(UserMsgHeader(user_msg_len=5)) == USER_MSG_HEADER
    assert structs.unpack_struct(UserMsgHeader, USER_MSG_HEADER) == UserMsgHeader(5)


def test_compound_of_two_matches_go() -> None:
    assert encode_compound([PING_OMITEMPTY, SUSPECT]) == COMPOUND
    assert make_compounds([PING_OMITEMPTY, SUSPECT]) == [COMPOUND]
    parts = decode(COMPOUND)
    assert isinstance(parts, Compound)
    assert [decode(part) for part in parts.parts] == [
        Ping(seq_no=7, node="node-b"),
        Suspect(incarnation=3, node="node-b", from_node="node-a"),
    ]


def test_compress_vector_holds_the_text() -> None:
    assert decompress_message(COMPRESS) == HELLO


def test_long_strings_use_raw16_like_go() -> None:
    message = Suspect(incarnation=1, node="n" * 40, from_node="f" * 300)
    wire = encode(message)
    assert wire[:12] == LONG_STRINGS_PREFIX
    assert decode(wire) == message


def test_user_message_is_the_raw_bytes_after_the_type_byte() -> None:
    assert encode(User(b"\xff\x81abc")) == b"\x08\xff\x81abc"
    assert decode(b"\x08") == User(b"")
    assert decode(b"\x08\x00\x01") == User(b"\x00\x01")


# ---------------------------------------------------------------------------------------------
# Round trips


@settings(max_examples=300, deadline=None)
@given(s.messages)
def test_every_message_round_trips(message: Message) -> None:
    assert decode(encode(message)) == message


@settings(deadline=None)
@given(s.push_node_states)
def test_push_node_state_round_trips(state: PushNodeState) -> None:
    assert structs.unpack_struct(PushNodeState, encode_body(state)) == state


@settings(deadline=None)
@given(s.user_msg_headers)
def test_user_msg_header_round_trips(header: UserMsgHeader) -> None:
    assert structs.unpack_struct(UserMsgHeader, encode_body(header)) == header


@pytest.mark.parametrize(
    ("length", "header"),
    [
        (0, b"\xa0"),
        (31, b"\xbf"),
        (32, b"\xda\x00\x20"),
        (255, b"\xda\x00\xff"),
        (65535, b"\xda\xff\xff"),
        (65536, b"\xdb\x00\x01\x00\x00"),
    ],
)
def test_strings_and_bytes_use_go_raw_headers_never_str8_or_bin(length: int, header: bytes) -> None:
    """go-msgpack's zero handle writes both as fixraw/raw16/raw32, never 0xd9 or 0xc4-0xc6."""
    payload = b"\xff" * length
    expected_payload = b"\xc0" if length == 0 else header + payload  # nil []byte is nil
    assert encode(Ack(seq_no=1, payload=payload)) == (
        b"\x02\x82\xa7Payload" + expected_payload + b"\xa5SeqNo\x01"
    )
    name = "n" * length
    assert encode(Err(error=name)) == b"\x0d\x81\xa5Error" + header + name.encode()


# ---------------------------------------------------------------------------------------------
# Go's leniency on decode


@pytest.mark.parametrize(
    ("type_byte", "expected"),
    [
        (0, Ping(seq_no=0)),
        (1, IndirectPing(seq_no=0, target=b"", port=0, node="")),
        (2, Ack(seq_no=0)),
        (3, Suspect(incarnation=0, node="", from_node="")),
        (5, Dead(incarnation=0, node="", from_node="")),
        (6, PushPullHeader(nodes=0, user_state_len=0)),
        (9, Compress(buf=b"")),
        (11, Nack(seq_no=0)),
        (13, Err(error="")),
    ],
)
def test_absent_fields_take_go_zero_values(type_byte: int, expected: Message) -> None:
    assert decode(bytes((type_byte, 0x80))) == expected


def test_absent_fields_of_alive_and_node_state_take_zero_values_except_vsn() -> None:
    assert decode(struct_bytes({"Vsn": packed(VSN)}, 4)) == Alive(
        incarnation=0, node="", addr=b"", port=0, vsn=VSN
    )
    assert structs.unpack_struct(PushNodeState, struct_bytes({"Vsn": packed(VSN)})) == (
        PushNodeState(name="", addr=b"", port=0, incarnation=0, state=NodeState.ALIVE, vsn=VSN)
    )


def test_nil_values_take_go_zero_values() -> None:
    nil = packed(None)
    wire = struct_bytes({"Node": nil, "SeqNo": nil, "SourceAddr": nil, "SourcePort": nil}, 0)
    assert decode(wire) == Ping(seq_no=0)


def test_unknown_keys_are_ignored() -> None:
    extra = {"Zzz": packed([1, 2, {b"a": None}]), "Aaa": packed(3.5), "SeqNo": packed(7)}
    assert decode(struct_bytes({**extra, "Node": packed(b"node-b")}, 0)) == Ping(7, "node-b")
    # a non-string key, as msgpack allows
    wire = b"\x0b\x82" + packed(1) + packed(2) + packed(b"SeqNo") + packed(9)
    assert decode(wire) == Nack(9)


def test_vsn_as_an_array_of_ints_is_accepted() -> None:
    wire = ALIVE_NIL_META.replace(bytes.fromhex("a6010502020504"), packed(list(VSN)))
    assert wire != ALIVE_NIL_META
    assert decode(wire) == decode(ALIVE_NIL_META)
    state = PUSH_NODE_STATE.replace(bytes.fromhex("a6010502020504"), packed(list(VSN)))
    assert structs.unpack_struct(PushNodeState, state) == GO_NODE_STATE


@pytest.mark.parametrize(("value", "expected"), [(0, False), (1, True)])
def test_bools_as_zero_or_one_are_accepted(value: int, expected: bool) -> None:
    wire = INDIRECT_PING.replace(b"\xa4Nack\xc3", b"\xa4Nack" + packed(value))
    message = decode(wire)
    assert isinstance(message, IndirectPing)
    assert message.nack is expected
    header = decode(struct_bytes({"Join": packed(value), "Nodes": packed(2)}, 6))
    assert header == PushPullHeader(nodes=2, user_state_len=0, join=expected)


@pytest.mark.parametrize("wrap", [str8, bin8, bin16, bin32], ids=["str8", "bin8", "bin16", "bin32"])
def test_byte_fields_accept_str8_and_bin(wrap: Callable[[bytes], bytes]) -> None:
    ack = struct_bytes({"Payload": wrap(b"\x01\x02\x03"), "SeqNo": packed(70000)}, 2)
    assert decode(ack) == decode(ACK_PAYLOAD)
    alive = struct_bytes(
        {
            "Addr": wrap(IP),
            "Incarnation": packed(1),
            "Meta": wrap(b"\xff" * 40),
            "Node": packed(b"node-a"),
            "Port": packed(PORT),
            "Vsn": wrap(VSN),
        },
        4,
    )
    assert decode(alive) == decode(ALIVE)


def test_string_fields_accept_str8() -> None:
    wire = struct_bytes(
        {"From": str8(b"node-a"), "Incarnation": packed(3), "Node": str8(b"node-b")}, 3
    )
    assert decode(wire) == decode(SUSPECT)


def test_integers_in_wider_encodings_are_accepted() -> None:
    """Go writes the smallest form, but any msgpack integer form of a valid value decodes."""
    for seq in (
        b"\xcc\x07",
        b"\xcd\x00\x07",
        b"\xce\x00\x00\x00\x07",
        b"\xd0\x07",
        b"\xd3" + bytes(7) + b"\x07",
    ):
        assert decode(b"\x0b\x81\xa5SeqNo" + seq) == Nack(7)


def test_node_states_decode_as_the_enum() -> None:
    for state in NodeState:
        wire = PUSH_NODE_STATE.replace(b"\xa5State\x00", b"\xa5State" + packed(int(state)))
        decoded = structs.unpack_struct(PushNodeState, wire)
        assert decoded.state is state


# ---------------------------------------------------------------------------------------------
# Refusals


def _alive_with(field: bytes, value: bytes) -> bytes:
    """The Go alive vector with one field's packed value replaced."""
    fields = {
        "Addr": packed(IP),
        "Incarnation": packed(1),
        "Meta": packed(None),
        "Node": packed(b"node-a"),
        "Port": packed(PORT),
        "Vsn": packed(VSN),
    }
    fields[field.decode()] = value
    return struct_bytes(fields, 4)


def test_alive_helper_rebuilds_the_vector() -> None:
    assert _alive_with(b"Meta", packed(None)) == ALIVE_NIL_META


REFUSED: list[tuple[str, bytes]] = [
    ("empty input", b""),
    ("vsn of 5 bytes", _alive_with(b"Vsn", packed(VSN[:5]))),
    ("vsn of 7 bytes", _alive_with(b"Vsn", packed(VSN + b"\x00"))),
    ("vsn of 5 ints", _alive_with(b"Vsn", packed(list(VSN[:5])))),
    ("vsn with an int over 255", _alive_with(b"Vsn", packed([1, 5, 2, 2, 5, 256]))),
    ("vsn absent", struct_bytes({"Node": packed(b"n")}, 4)),
    ("vsn as a list of strings", _alive_with(b"Vsn", packed(["a"] * 6))),
    ("port 70000", _alive_with(b"Port", packed(70000))),
    ("negative port", _alive_with(b"Port", packed(-1))),
    ("incarnation 2**32", _alive_with(b"Incarnation", packed(2**32))),
    ("name not UTF-8", _alive_with(b"Node", packed(b"\xff\xfe"))),
    ("name is an int", _alive_with(b"Node", packed(5))),
    ("addr is a list", _alive_with(b"Addr", packed([10, 0, 0, 1]))),
    ("negative seq no", b"\x0b\x81\xa5SeqNo" + packed(-1)),
    ("seq no 2**32", b"\x0b\x81\xa5SeqNo" + packed(2**32)),
    ("seq no 2**64 - 1", b"\x0b\x81\xa5SeqNo" + packed(2**64 - 1)),
    ("seq no a float", b"\x0b\x81\xa5SeqNo" + packed(7.0)),
    ("seq no a bool", b"\x0b\x81\xa5SeqNo" + packed(True)),
    ("seq no a string", b"\x0b\x81\xa5SeqNo" + packed(b"7")),
    ("bool 2", INDIRECT_PING.replace(b"\xa4Nack\xc3", b"\xa4Nack\x02")),
    ("bool a string", INDIRECT_PING.replace(b"\xa4Nack\xc3", b"\xa4Nack\xa1\x01")),
    ("push-pull count over int64", struct_bytes({"Nodes": packed(2**63)}, 6)),
    ("suspect source not UTF-8", SUSPECT.replace(b"node-a", b"node\xc3(")),
    ("error text not UTF-8", ERR.replace(b"boom", b"bo\xedm")),
    ("body is an array", b"\x00" + packed([7, b"node-b"])),
    ("body is a string", b"\x00" + packed(b"abc")),
    ("body is nil", b"\x00\xc0"),
    ("no body", b"\x00"),
    ("truncated body", PING[:-1]),
    ("trailing bytes", NACK + b"\x00"),
    ("two maps", NACK + NACK[1:]),
    ("compress algo 256", struct_bytes({"Algo": packed(256), "Buf": packed(b"")}, 9)),
    ("unknown type 14", b"\x0e\x80"),
    ("unknown type 100", b"\x64\x80"),
    ("unknown type 255", b"\xff\x80"),
    ("encrypt type is not a message", b"\x0a\x80"),
    ("crc type is not a message", b"\x0c\x80"),
    ("label type is not a message", b"\xf4\x80"),
    ("compound without count", b"\x07"),
    ("compound with a truncated length table", b"\x07\x02\x00\x01\x00"),
    ("compound with a truncated part", b"\x07\x01\x00\x05\x0b\x81"),
    ("compound with trailing bytes", COMPOUND + b"\x00"),
]


@pytest.mark.parametrize("wire", [r[1] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_refuses_with_decode_error(wire: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        decode(wire)
    assert type(info.value) is DecodeError
    assert info.value.reason


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("node state 4", PUSH_NODE_STATE.replace(b"\xa5State\x00", b"\xa5State\x04")),
        ("node state -1", PUSH_NODE_STATE.replace(b"\xa5State\x00", b"\xa5State\xff")),
        ("node state 256", PUSH_NODE_STATE.replace(b"\xa5State\x00", b"\xa5State\xcd\x01\x00")),
        ("vsn of 5 bytes", PUSH_NODE_STATE.replace(b"\xa6\x01\x05\x02\x02\x05\x04", b"\xa5abcde")),
        (
            "vsn of 7 bytes",
            PUSH_NODE_STATE.replace(b"\xa6\x01\x05\x02\x02\x05\x04", b"\xa7abcdefg"),
        ),
        ("port 70000", PUSH_NODE_STATE.replace(b"\xcd\x1f\x0a", packed(70000))),
    ],
)
def test_node_state_refusals(name: str, body: bytes) -> None:
    assert body != PUSH_NODE_STATE, name
    with pytest.raises(DecodeError):
        structs.unpack_struct(PushNodeState, body)


# ---------------------------------------------------------------------------------------------
# Compounds


def _nack_parts(count: int) -> list[bytes]:
    return [encode(Nack(seq_no=i)) for i in range(count)]


def test_make_compounds_splits_600_parts_into_3_in_order() -> None:
    parts = _nack_parts(600)
    compounds = make_compounds(parts)
    assert len(compounds) == 3
    decoded: list[bytes] = []
    for wire in compounds:
        compound = decode(wire)
        assert isinstance(compound, Compound)
        assert len(compound.parts) <= MAX_COMPOUND_PARTS
        decoded.extend(compound.parts)
    assert decoded == parts
    assert [decode(p) for p in decoded] == [Nack(seq_no=i) for i in range(600)]


@pytest.mark.parametrize(("count", "expected"), [(0, 0), (1, 1), (255, 1), (256, 2), (510, 2)])
def test_make_compounds_uses_as_few_compounds_as_fit(count: int, expected: int) -> None:
    assert len(make_compounds(_nack_parts(count))) == expected


def test_compound_of_255_parts_is_fine_but_256_is_refused() -> None:
    parts = _nack_parts(256)
    assert decode(encode_compound(parts[:255])) == Compound(tuple(parts[:255]))
    with pytest.raises(EncodeError):
        encode_compound(parts)
    with pytest.raises(EncodeError):
        encode(Compound(tuple(parts)))


def test_compound_part_of_65536_bytes_is_refused() -> None:
    largest = b"\x08" + bytes(MAX_COMPOUND_PART_BYTES - 1)
    assert decode(encode_compound([largest])) == Compound((largest,))
    too_large = largest + b"\x00"
    with pytest.raises(EncodeError):
        encode_compound([NACK, too_large])
    with pytest.raises(EncodeError):
        make_compounds([too_large])
    with pytest.raises(EncodeError):
        encode(Compound((too_large,)))


def test_empty_compound_holds_nothing() -> None:
    assert encode(Compound(())) == b"\x07\x00"
    assert decode(b"\x07\x00") == Compound(())


@settings(deadline=None)
@given(st.lists(st.binary(max_size=70), max_size=300))
def test_make_compounds_round_trips_any_parts(parts: list[bytes]) -> None:
    decoded: list[bytes] = []
    for wire in make_compounds(parts):
        compound = decode(wire)
        assert isinstance(compound, Compound)
        decoded.extend(compound.parts)
    assert decoded == parts


# ---------------------------------------------------------------------------------------------
# Encoding out-of-range values


@pytest.mark.parametrize(
    "message",
    [
        Nack(seq_no=-1),
        Nack(seq_no=2**32),
        Nack(seq_no=2**64),
        Alive(incarnation=1, node="a", addr=IP, port=70000, vsn=VSN),
        Alive(incarnation=1, node="a", addr=IP, port=PORT, vsn=VSN[:5]),
    ],
    ids=["seq -1", "seq 2**32", "seq 2**64", "port 70000", "vsn 5 bytes"],
)
def test_encode_refuses_out_of_range_fields(message: Message) -> None:
    with pytest.raises(EncodeError):
        encode(message)
