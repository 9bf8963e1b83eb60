"""swim.wire.stream: the one message each side writes on a TCP stream, read as bytes arrive.

A stream is plaintext ``[type] + msgpack objects + raw bytes``, optionally compressed
(``[9]`` + a compress message) and encrypted (``[10][uint32 length][payload]``), behind an
optional label.  :class:`StreamReader` must yield the message exactly when its last byte
arrives, however the bytes are split, and refuse anything malformed with DecodeError.
"""

from __future__ import annotations

import itertools
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from swim.wire import lzw
from swim.wire.errors import DecodeError, EncodeError
from swim.wire.limits import MAX_PUSH_STATES, MAX_STREAM_BYTES
from swim.wire.messages import (
    Ack,
    Compress,
    Err,
    NodeState,
    Ping,
    PushNodeState,
    PushPullHeader,
    User,
    UserMsgHeader,
    decode,
    encode,
    encode_body,
)
from swim.wire.packet import WireOptions
from swim.wire.stream import (
    PushPull,
    StreamMessage,
    StreamReader,
    encode_plain,
    encode_stream,
)
from swim.wire.structs import unpacker
from tests.wire import strategies as s
from tests.wire.strategies import KEY, LABEL, OTHER_KEY, keyring, packed, struct_bytes

IP = bytes([10, 0, 0, 1])
VSN = bytes([1, 5, 2, 2, 5, 4])

# Go's bytes (vectors.md)
GO_PUSH_PULL_HEADER = bytes.fromhex(
    "0683a44a6f696ec3a54e6f64657301ac5573657253746174654c656e00"
)  # {Join: true, Nodes: 1, UserStateLen: 0}
GO_PUSH_NODE_STATE = bytes.fromhex(
    "87a441646472a40a000001ab496e6361726e6174696f6e01a44d657461a178a44e616d65a66e6f64652d61"
    "a4506f7274cd1f0aa5537461746500a356736ea6010502020504"
)
GO_NODE_STATE = PushNodeState(
    name="node-a", addr=IP, port=7946, incarnation=1, state=NodeState.ALIVE, vsn=VSN, meta=b"x"
)
GO_USER_MSG_HEADER = bytes.fromhex("81aa557365724d73674c656e05")  # {UserMsgLen: 5}

STREAM_OPTIONS = {
    "plain": WireOptions(),
    "compressed": WireOptions(compress=True),
    "encrypted": WireOptions(keyring=keyring()),
    "labelled": WireOptions(label=LABEL),
    "all": WireOptions(keyring=keyring(), compress=True, label=LABEL),
}
OPTION_NAMES = list(STREAM_OPTIONS)


def node(i: int) -> PushNodeState:
    return PushNodeState(
        name=f"node-{i}",
        addr=bytes([10, 0, i // 256, i % 256]),
        port=7946,
        incarnation=i,
        state=NodeState(i % 4),
        vsn=VSN,
        meta=b"\xff\x81\xa4role\xa3web" if i % 2 else b"",
    )


SAMPLES: dict[str, StreamMessage] = {
    "push-pull empty": PushPull(),
    "push-pull one state": PushPull(states=[GO_NODE_STATE], join=True),
    "push-pull many states and user state": PushPull(
        states=[node(i) for i in range(40)], user_state=b"\x00serf state" * 30
    ),
    "push-pull user state only": PushPull(user_state=b"\x01\x02\x03"),
    "ping": Ping(seq_no=9, node="node-b", source_addr=IP, source_port=7946, source_node="a"),
    "ack": Ack(seq_no=9, payload=b"\x01coordinate"),
    "ack nil payload": Ack(seq_no=10),
    "user": User(payload=b"\x03user event payload"),
    "user empty": User(payload=b""),
    "err": Err(error="push/pull failed"),
}
SAMPLE_NAMES = list(SAMPLES)


def read_in_chunks(chunks: list[bytes], options: WireOptions) -> StreamMessage:
    """Feed ``chunks``; the message must appear with the last chunk and not before, and any
    earlier end of stream must be refused."""
    reader = StreamReader(options)
    for chunk in chunks[:-1]:
        assert reader.receive_data(chunk) is None
        with pytest.raises(DecodeError):
            reader.end_of_stream()
    message = reader.receive_data(chunks[-1])
    assert message is not None
    assert reader.end_of_stream() == message
    return message


def read_whole(data: bytes, options: WireOptions) -> StreamMessage:
    return read_in_chunks([data], options)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


# ---------------------------------------------------------------------------------------------
# Every message kind under every option set


@pytest.mark.parametrize("option", OPTION_NAMES)
@pytest.mark.parametrize("sample", SAMPLE_NAMES)
def test_stream_read_whole(sample: str, option: str) -> None:
    options = STREAM_OPTIONS[option]
    assert read_whole(encode_stream(SAMPLES[sample], options), options) == SAMPLES[sample]


@pytest.mark.parametrize("option", OPTION_NAMES)
@pytest.mark.parametrize("sample", SAMPLE_NAMES)
def test_stream_read_byte_by_byte(sample: str, option: str) -> None:
    options = STREAM_OPTIONS[option]
    data = encode_stream(SAMPLES[sample], options)
    chunks = [data[i : i + 1] for i in range(len(data))]
    assert read_in_chunks(chunks, options) == SAMPLES[sample]


@settings(max_examples=150, deadline=None)
@given(s.stream_messages, st.sampled_from(OPTION_NAMES), st.data())
def test_stream_read_in_any_chunks(
    message: StreamMessage, option: str, data: st.DataObject
) -> None:
    options = STREAM_OPTIONS[option]
    wire = encode_stream(message, options)
    cuts = data.draw(st.lists(st.integers(min_value=1, max_value=len(wire) - 1), max_size=12))
    assert read_in_chunks(split(wire, cuts), options) == message


@pytest.mark.parametrize("option", OPTION_NAMES)
def test_bytes_after_the_message_are_ignored(option: str) -> None:
    options = STREAM_OPTIONS[option]
    message = SAMPLES["push-pull many states and user state"]
    reader = StreamReader(options)
    assert reader.receive_data(encode_stream(message, options) + b"\x00garbage") == message
    assert reader.receive_data(b"more garbage") == message
    assert reader.end_of_stream() == message


@pytest.mark.parametrize("option", OPTION_NAMES)
def test_empty_or_cut_stream_is_refused_at_end(option: str) -> None:
    options = STREAM_OPTIONS[option]
    wire = encode_stream(SAMPLES["push-pull one state"], options)
    for size in (0, 1, len(wire) // 2, len(wire) - 1):
        reader = StreamReader(options)
        assert reader.receive_data(wire[:size]) is None
        with pytest.raises(DecodeError):
            reader.end_of_stream()


def test_push_pull_announcing_more_states_than_sent_never_completes() -> None:
    header = encode(PushPullHeader(nodes=2, user_state_len=0))
    reader = StreamReader(WireOptions())
    assert reader.receive_data(header + GO_PUSH_NODE_STATE) is None
    with pytest.raises(DecodeError):
        reader.end_of_stream()


def test_user_state_shorter_than_announced_never_completes() -> None:
    reader = StreamReader(WireOptions())
    assert reader.receive_data(encode(PushPullHeader(nodes=0, user_state_len=4)) + b"abc") is None
    assert reader.receive_data(b"d") == PushPull(user_state=b"abcd")


# ---------------------------------------------------------------------------------------------
# Go's bytes


def test_go_join_request_parses() -> None:
    """Reference §6.8: ``[6] + {Join, Nodes: 1, UserStateLen: 0}`` + one node state."""
    wire = GO_PUSH_PULL_HEADER + GO_PUSH_NODE_STATE
    expected = PushPull(states=[GO_NODE_STATE], user_state=b"", join=True)
    assert read_whole(wire, WireOptions()) == expected
    assert encode_stream(expected, WireOptions()) == wire


def test_go_user_message_stream_parses() -> None:
    wire = b"\x08" + GO_USER_MSG_HEADER + b"hello"
    assert read_whole(wire, WireOptions()) == User(b"hello")
    assert encode_stream(User(b"hello"), WireOptions()) == wire
    assert encode_body(UserMsgHeader(5)) == GO_USER_MSG_HEADER


def test_ping_ack_and_err_streams_are_the_packet_encoding() -> None:
    for message in (SAMPLES["ping"], SAMPLES["ack"], SAMPLES["err"]):
        assert isinstance(message, Ping | Ack | Err)
        assert encode_stream(message, WireOptions()) == encode(message)


def test_compressed_stream_is_compressed_even_when_larger() -> None:
    """memberlist compresses every stream when compression is on, without a size check."""
    wire = encode_stream(Ack(seq_no=1), WireOptions(compress=True))
    assert wire[0] == 9
    assert len(wire) > len(encode(Ack(seq_no=1)))


def test_go_style_compressed_stream_parses() -> None:
    plain = GO_PUSH_PULL_HEADER + GO_PUSH_NODE_STATE
    wire = encode(Compress(buf=lzw.compress(plain)))
    assert read_whole(wire, WireOptions()) == PushPull(states=[GO_NODE_STATE], join=True)


# ---------------------------------------------------------------------------------------------
# Encryption


def test_encrypted_header_gives_the_payload_length() -> None:
    for options in (WireOptions(keyring=keyring()), STREAM_OPTIONS["all"]):
        wire = encode_stream(SAMPLES["push-pull many states and user state"], options)
        prefix = 2 + len(options.label) if options.label else 0
        assert wire[:prefix] == (bytes((244, len(LABEL))) + LABEL if options.label else b"")
        assert wire[prefix] == 10
        assert int.from_bytes(wire[prefix + 1 : prefix + 5], "big") == len(wire) - 5 - prefix
        assert wire[prefix + 5] == 1  # encryption version 1


def test_plaintext_stream_is_refused_when_incoming_verification_is_on() -> None:
    options = WireOptions(keyring=keyring())
    for sender in (WireOptions(), WireOptions(compress=True)):
        wire = encode_stream(SAMPLES["ping"], sender)
        reader = StreamReader(options)
        with pytest.raises(DecodeError):
            reader.receive_data(wire[:1])  # refused on the first byte


@pytest.mark.parametrize("sender", ["plain", "compressed", "encrypted", "all-but-label"])
def test_any_stream_is_accepted_when_incoming_verification_is_off(sender: str) -> None:
    options = {
        "plain": WireOptions(),
        "compressed": WireOptions(compress=True),
        "encrypted": WireOptions(keyring=keyring()),
        "all-but-label": WireOptions(keyring=keyring(), compress=True),
    }[sender]
    receiver = WireOptions(keyring=keyring(), verify_incoming=False)
    for message in SAMPLES.values():
        assert read_whole(encode_stream(message, options), receiver) == message


def test_outgoing_verification_off_writes_plaintext() -> None:
    sender = WireOptions(keyring=keyring(), verify_outgoing=False)
    message = SAMPLES["push-pull one state"]
    assert encode_stream(message, sender) == encode_stream(message, WireOptions())


def test_wrong_key_is_refused() -> None:
    wire = encode_stream(SAMPLES["ping"], WireOptions(keyring=keyring(KEY)))
    with pytest.raises(DecodeError):
        StreamReader(WireOptions(keyring=keyring(OTHER_KEY))).receive_data(wire)
    secondary = WireOptions(keyring=keyring(OTHER_KEY, KEY))
    assert read_whole(wire, secondary) == SAMPLES["ping"]


def test_encrypted_stream_to_a_node_without_keyring_is_refused() -> None:
    wire = encode_stream(SAMPLES["ping"], WireOptions(keyring=keyring()))
    with pytest.raises(DecodeError):
        StreamReader(WireOptions()).receive_data(wire)


def _encrypted(option: str = "encrypted") -> tuple[bytes, WireOptions, int]:
    options = STREAM_OPTIONS[option]
    wire = encode_stream(SAMPLES["push-pull one state"], options)
    return wire, options, (2 + len(options.label) if options.label else 0)


@pytest.mark.parametrize("option", ["encrypted", "all"])
@pytest.mark.parametrize("delta", [-1, 1, 1000])
def test_tampered_length_is_refused(option: str, delta: int) -> None:
    wire, options, at = _encrypted(option)
    length = int.from_bytes(wire[at + 1 : at + 5], "big")
    tampered = wire[: at + 1] + (length + delta).to_bytes(4, "big") + wire[at + 5 :]
    reader = StreamReader(options)
    try:
        message = reader.receive_data(tampered + bytes(max(delta, 0)))  # pad what it waits for
    except DecodeError:
        return
    pytest.fail(f"tampered length accepted: {message!r}")


@pytest.mark.parametrize("option", ["encrypted", "all"])
def test_cut_short_by_a_larger_length_is_refused_at_end(option: str) -> None:
    wire, options, at = _encrypted(option)
    length = int.from_bytes(wire[at + 1 : at + 5], "big")
    tampered = wire[: at + 1] + (length + 1).to_bytes(4, "big") + wire[at + 5 :]
    reader = StreamReader(options)
    assert reader.receive_data(tampered) is None
    with pytest.raises(DecodeError):
        reader.end_of_stream()


@pytest.mark.parametrize("option", ["encrypted", "all"])
def test_tampered_body_is_refused(option: str) -> None:
    wire, options, at = _encrypted(option)
    for index in range(at, len(wire), 7):
        if at < index < at + 5:
            continue  # the length, tested above
        tampered = bytearray(wire)
        tampered[index] ^= 0x20
        with pytest.raises(DecodeError):
            read_whole(bytes(tampered), options)


@pytest.mark.parametrize("label", [b"", LABEL])
@pytest.mark.parametrize("length", [MAX_STREAM_BYTES + 1, 2**31, 2**32 - 1])
def test_declared_length_over_20_mib_is_refused_after_the_header(length: int, label: bytes) -> None:
    options = WireOptions(keyring=keyring(), label=label)
    prefix = bytes((244, len(label))) + label if label else b""
    header = prefix + b"\x0a" + length.to_bytes(4, "big")
    reader = StreamReader(options)
    for i in range(len(header) - 1):
        assert reader.receive_data(header[i : i + 1]) is None
    with pytest.raises(DecodeError):
        reader.receive_data(header[-1:])


def test_declared_length_of_20_mib_waits_for_data() -> None:
    reader = StreamReader(WireOptions(keyring=keyring()))
    assert reader.receive_data(b"\x0a" + MAX_STREAM_BYTES.to_bytes(4, "big")) is None
    assert reader.receive_data(bytes(1000)) is None
    with pytest.raises(DecodeError):
        reader.end_of_stream()


@pytest.mark.parametrize(
    "plain",
    [
        b"",
        b"\x0a\x00\x00\x00\x00",
        b"\x03" + encode(Ack(seq_no=1))[1:],
        encode(Compress(buf=lzw.compress(encode(Compress(buf=lzw.compress(b"\x0d\x80")))))),
        encode_plain(SAMPLES["push-pull one state"])[:-1],
    ],
    ids=["empty", "encrypt inside", "suspect type", "compressed twice", "truncated"],
)
def test_bad_plaintext_inside_encryption_is_refused(plain: bytes) -> None:
    ring = keyring()
    length = 1 + 12 + len(plain) + 16
    header = b"\x0a" + length.to_bytes(4, "big")
    wire = header + ring.encrypt(plain, header)
    with pytest.raises(DecodeError):
        StreamReader(WireOptions(keyring=ring)).receive_data(wire)


def test_hand_built_encrypted_stream_with_header_as_aad_parses() -> None:
    """memberlist 0.2.2 binds the 5 header bytes as AAD (reference §2.3)."""
    ring = keyring()
    plain = GO_PUSH_PULL_HEADER + GO_PUSH_NODE_STATE
    header = b"\x0a" + (1 + 12 + len(plain) + 16).to_bytes(4, "big")
    wire = header + ring.encrypt(plain, header)
    expected = PushPull(states=[GO_NODE_STATE], join=True)
    assert read_whole(wire, WireOptions(keyring=ring)) == expected
    without_aad = header + ring.encrypt(plain)
    with pytest.raises(DecodeError):
        read_whole(without_aad, WireOptions(keyring=ring))


# ---------------------------------------------------------------------------------------------
# Hostile headers and types


def _header(**fields: bytes) -> bytes:
    return struct_bytes(fields, 6)


@pytest.mark.parametrize(
    "header",
    [
        _header(Nodes=packed(-1)),
        _header(Nodes=packed(MAX_PUSH_STATES + 1)),
        _header(Nodes=packed(2**40)),
        _header(Nodes=packed(2**63 - 1)),
        _header(UserStateLen=packed(-1)),
        _header(UserStateLen=packed(MAX_STREAM_BYTES + 1)),
        _header(UserStateLen=packed(2**62)),
        _header(Nodes=packed(-(2**63))),
        _header(Nodes=packed(2**64 - 1)),
        _header(Nodes=packed(b"1")),
    ],
    ids=[
        "nodes -1",
        "nodes over limit",
        "nodes 2**40",
        "nodes max int64",
        "user state -1",
        "user state over 20 MiB",
        "user state 2**62",
        "nodes min int64",
        "nodes max uint64",
        "nodes a string",
    ],
)
def test_absurd_push_pull_header_is_refused_at_once(header: bytes) -> None:
    reader = StreamReader(WireOptions())
    with pytest.raises(DecodeError):
        reader.receive_data(header)


@pytest.mark.parametrize("length", [-1, MAX_STREAM_BYTES + 1, 2**40])
def test_absurd_user_message_length_is_refused_at_once(length: int) -> None:
    reader = StreamReader(WireOptions())
    with pytest.raises(DecodeError):
        reader.receive_data(b"\x08" + struct_bytes({"UserMsgLen": packed(length)}))


def test_absurd_header_inside_encryption_is_refused() -> None:
    options = WireOptions(keyring=keyring())
    plain = _header(Nodes=packed(-1))
    header = b"\x0a" + (1 + 12 + len(plain) + 16).to_bytes(4, "big")
    with pytest.raises(DecodeError):
        StreamReader(options).receive_data(header + keyring().encrypt(plain, header))


def test_bad_node_state_in_push_pull_is_refused() -> None:
    bad_state = GO_PUSH_NODE_STATE.replace(b"\xa5State\x00", b"\xa5State\x04")
    with pytest.raises(DecodeError):
        StreamReader(WireOptions()).receive_data(GO_PUSH_PULL_HEADER + bad_state)


@pytest.mark.parametrize("kind", [1, 3, 4, 5, 7, 11, 12, 14, 0x80, 0xFF])
def test_message_types_that_never_travel_alone_on_streams_are_refused(kind: int) -> None:
    reader = StreamReader(WireOptions())
    with pytest.raises(DecodeError):
        reader.receive_data(bytes((kind,)))


def test_malformed_msgpack_is_refused() -> None:
    for wire in (b"\x00\xc1", b"\x00\x91\x07", b"\x02\x81\xa7Payload\xc1"):
        with pytest.raises(DecodeError):
            StreamReader(WireOptions()).receive_data(wire)


def test_compressed_twice_is_refused() -> None:
    once = encode_stream(SAMPLES["ping"], WireOptions(compress=True))
    twice = encode(Compress(buf=lzw.compress(once)))
    with pytest.raises(DecodeError):
        StreamReader(WireOptions()).receive_data(twice)


def test_plaintext_stream_over_20_mib_is_refused() -> None:
    reader = StreamReader(WireOptions())
    header = b"\x08" + encode_body(UserMsgHeader(MAX_STREAM_BYTES))
    assert reader.receive_data(header) is None
    chunk = bytes(1 << 20)
    with pytest.raises(DecodeError):
        for _ in range(21):
            assert reader.receive_data(chunk) is None


@pytest.mark.parametrize("options", [WireOptions(), WireOptions(keyring=keyring())])
def test_stream_over_20_mib_cannot_be_written(options: WireOptions) -> None:
    with pytest.raises(EncodeError):
        encode_stream(User(bytes(MAX_STREAM_BYTES)), options)


# ---------------------------------------------------------------------------------------------
# Labels


@pytest.mark.parametrize(
    ("sender", "receiver"),
    [
        (WireOptions(label=b"a"), WireOptions(label=b"b")),
        (WireOptions(), WireOptions(label=b"a")),
        (WireOptions(label=b"a"), WireOptions()),
        (WireOptions(label=b"a", keyring=keyring()), WireOptions(label=b"b", keyring=keyring())),
        (WireOptions(keyring=keyring()), WireOptions(label=b"a", keyring=keyring())),
        (WireOptions(label=b"a", keyring=keyring()), WireOptions(keyring=keyring())),
    ],
    ids=["wrong", "missing", "unexpected", "wrong, enc", "missing, enc", "unexpected, enc"],
)
def test_label_mismatch_is_refused(sender: WireOptions, receiver: WireOptions) -> None:
    wire = encode_stream(SAMPLES["push-pull one state"], sender)
    reader = StreamReader(receiver)
    with pytest.raises(DecodeError):
        reader.receive_data(wire)
        reader.end_of_stream()


def test_label_is_bound_to_the_encrypted_payload() -> None:
    wire = encode_stream(SAMPLES["ping"], WireOptions(label=b"a", keyring=keyring()))
    relabelled = b"\xf4\x01b" + wire[3:]
    with pytest.raises(DecodeError):
        StreamReader(WireOptions(label=b"b", keyring=keyring())).receive_data(relabelled)


def test_empty_label_header_is_refused() -> None:
    wire = b"\xf4\x00" + encode_stream(SAMPLES["ping"], WireOptions())
    reader = StreamReader(WireOptions())
    with pytest.raises(DecodeError):
        reader.receive_data(wire)
        reader.end_of_stream()


# ---------------------------------------------------------------------------------------------
# Cost of slow peers


class _CountingUnpacker:
    """Stands in for the stream reader's msgpack unpacker, counting the bytes fed to it."""

    fed = 0

    def __init__(self) -> None:
        self._inner = unpacker()

    def feed(self, data: bytes) -> None:
        _CountingUnpacker.fed += len(data)
        self._inner.feed(data)

    def unpack(self) -> object:
        return self._inner.unpack()


def test_compressed_stream_in_small_pieces_reads_each_byte_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A compressed stream arriving in TCP-sized pieces is parsed incrementally: re-reading
    the whole buffer on each piece would make a 20 MiB stream cost minutes of CPU."""
    monkeypatch.setattr("swim.wire.stream.structs.unpacker", _CountingUnpacker)
    _CountingUnpacker.fed = 0
    size, chunk = 1_000_000, 1460
    compressed = encode(Compress(buf=os.urandom(size)))[:-1]  # never completes
    reader = StreamReader(WireOptions())
    for i in range(0, len(compressed), chunk):
        assert reader.receive_data(compressed[i : i + chunk]) is None
    assert _CountingUnpacker.fed == len(compressed) - 1  # all but the type byte, once


# ---------------------------------------------------------------------------------------------
# Layer order and older peers


def test_stream_layers_are_label_then_encryption_then_compression() -> None:
    options = STREAM_OPTIONS["all"]
    message = SAMPLES["push-pull many states and user state"]
    wire = encode_stream(message, options)
    prefix = bytes((244, len(LABEL))) + LABEL
    assert wire.startswith(prefix)
    header = wire[len(prefix) : len(prefix) + 5]
    plain = keyring().decrypt(wire[len(prefix) + 5 :], header + LABEL)
    assert plain[0] == 9
    compressed = decode(plain)
    assert isinstance(compressed, Compress)
    assert lzw.decompress(compressed.buf) == encode_plain(message)


def test_version_0_encrypted_stream_is_accepted() -> None:
    """A protocol 1 peer pads (PKCS7) and its header counts the padding."""
    plain = GO_PUSH_PULL_HEADER + GO_PUSH_NODE_STATE
    pad = 16 - len(plain) % 16
    header = b"\x0a" + (1 + 12 + len(plain) + pad + 16).to_bytes(4, "big")
    nonce = bytes(range(12))
    sealed = AESGCM(KEY).encrypt(nonce, plain + bytes((pad,)) * pad, header)
    wire = header + b"\x00" + nonce + sealed
    expected = PushPull(states=[GO_NODE_STATE], join=True)
    assert read_whole(wire, WireOptions(keyring=keyring())) == expected


def test_a_push_pull_announcing_more_members_than_allowed_is_refused_before_its_states() -> None:
    """The count comes first: a flood of member states costs nothing to refuse."""
    options = WireOptions(max_push_states=2)
    states = [s.GO_LIKE_PUSH_PULL.states[0]] * 3
    data = encode_stream(PushPull(states), WireOptions())
    header_only = data[: len(encode(PushPullHeader(3, 0, False)))]
    with pytest.raises(DecodeError, match="announces 3 members, over the 2"):
        StreamReader(options).receive_data(header_only)
    assert StreamReader(options).receive_data(
        encode_stream(PushPull(states[:2]), WireOptions())
    ) == PushPull(states[:2])
