"""swim.wire.packet: the layers around messages in a UDP packet, both ways.

From the inside out: one message or a compound; LZW compression when smaller; a CRC; AES-GCM
encryption; a label prefix.  A receiver peels them in reverse, or refuses the whole packet.
"""

from __future__ import annotations

import os
import zlib

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from swim.wire import lzw
from swim.wire.errors import DecodeError, EncodeError
from swim.wire.limits import MAX_COMPOUND_PARTS, MAX_NESTING, MAX_PACKET_BYTES
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
    Ping,
    PushPullHeader,
    Suspect,
    User,
    decode,
    encode,
    encode_compound,
)
from swim.wire.packet import (
    MAX_MESSAGES_PER_PACKET,
    ReplayedPacket,
    ReplayFilter,
    WireOptions,
    decode_packet,
    encode_packet,
)
from tests.wire import strategies as s
from tests.wire.strategies import KEY, LABEL, OTHER_KEY, keyring

IP = bytes([10, 0, 0, 1])
VSN = bytes([1, 5, 2, 2, 5, 4])

# Go's bytes (vectors.md): a compound of [ping omitempty, suspect] and its parts.
GO_COMPOUND = bytes.fromhex(
    "0702001500270082a44e6f6465a66e6f64652d62a55365714e6f070383a446726f6da66e6f64652d61ab49"
    "6e6361726e6174696f6e03a44e6f6465a66e6f64652d62"
)
GO_COMPOUND_MESSAGES: list[Message] = [
    Ping(seq_no=7, node="node-b"),
    Suspect(incarnation=3, node="node-b", from_node="node-a"),
]

OPTIONS = s.all_options()
OPTION_NAMES = ["plain", "compress", "keyring", "label", "all", "lenient"]

SAMPLE: list[Message] = [
    Ping(seq_no=1, node="node-b", source_addr=IP, source_port=7946, source_node="node-a"),
    Ack(seq_no=1, payload=b"coordinate"),
    Nack(seq_no=2),
    Suspect(incarnation=3, node="node-c", from_node="node-a"),
    Alive(incarnation=4, node="node-a", addr=IP, port=7946, vsn=VSN, meta=b"\xff\x80"),
    Dead(incarnation=5, node="node-c", from_node="node-a"),
    User(payload=b"\x04serf event " * 20),
]


def crc(payload: bytes) -> bytes:
    """A memberlist CRC wrapper built by hand: ``[12][crc32 BE][payload]``."""
    return b"\x0c" + zlib.crc32(payload).to_bytes(4, "big") + payload


def round_trip(messages: list[Message], options: WireOptions, crc: bool = False) -> list[Message]:
    return decode_packet(encode_packet([encode(m) for m in messages], options, crc=crc), options)


# ---------------------------------------------------------------------------------------------
# Round trips under every option set


@pytest.mark.parametrize("with_crc", [False, True], ids=["no-crc", "crc"])
@pytest.mark.parametrize("name", OPTION_NAMES)
def test_single_message_round_trips(name: str, with_crc: bool) -> None:
    for message in SAMPLE:
        assert round_trip([message], OPTIONS[name], with_crc) == [message]


@pytest.mark.parametrize("with_crc", [False, True], ids=["no-crc", "crc"])
@pytest.mark.parametrize("name", OPTION_NAMES)
def test_many_messages_round_trip_in_order(name: str, with_crc: bool) -> None:
    assert round_trip(SAMPLE, OPTIONS[name], with_crc) == SAMPLE
    many: list[Message] = [Nack(seq_no=i) for i in range(MAX_COMPOUND_PARTS)]
    assert round_trip(many, OPTIONS[name], with_crc) == many


@settings(max_examples=150, deadline=None)
@given(
    st.lists(s.packet_messages, min_size=1, max_size=12),
    st.sampled_from(OPTION_NAMES),
    st.booleans(),
)
def test_any_messages_round_trip(messages: list[Message], name: str, with_crc: bool) -> None:
    assert round_trip(messages, OPTIONS[name], with_crc) == messages


def test_plain_packet_is_the_message_or_a_compound() -> None:
    nack = encode(Nack(seq_no=2))
    assert encode_packet([nack], WireOptions()) == nack
    assert encode_packet([nack, nack], WireOptions()) == encode_compound([nack, nack])


# ---------------------------------------------------------------------------------------------
# Compression


def test_compression_is_used_when_it_makes_the_packet_smaller() -> None:
    message = encode(User(payload=b"abcabcabc" * 100))
    packet = encode_packet([message], WireOptions(compress=True))
    assert packet[0] == 9
    assert len(packet) < len(message)
    assert decode_packet(packet, WireOptions()) == [User(payload=b"abcabcabc" * 100)]


@pytest.mark.parametrize(
    "message",
    [Nack(seq_no=1), User(payload=os.urandom(1000)), Ping(seq_no=9, node="x")],
    ids=["tiny", "incompressible", "small"],
)
def test_compression_is_skipped_when_it_would_not_shrink(message: Message) -> None:
    wire = encode(message)
    packet = encode_packet([wire], WireOptions(compress=True))
    assert packet == wire
    assert packet[0] == wire[0] != 9


def test_compressed_packet_keeps_crc_outside() -> None:
    message = encode(User(payload=b"z" * 500))
    packet = encode_packet([message], WireOptions(compress=True), crc=True)
    assert packet[0] == 12
    assert packet[5] == 9


def test_go_style_compressed_compound_decodes() -> None:
    """memberlist compresses the whole compound: ``[9] + msgpack({Algo: 0, Buf: lzw})``."""
    packet = encode(Compress(buf=lzw.compress(GO_COMPOUND)))
    assert decode_packet(packet, WireOptions()) == GO_COMPOUND_MESSAGES


# ---------------------------------------------------------------------------------------------
# CRC


def test_crc_layout_is_type_12_and_big_endian_crc32() -> None:
    message = encode(Nack(seq_no=7))
    packet = encode_packet([message], WireOptions(), crc=True)
    assert packet == b"\x0c" + zlib.crc32(message).to_bytes(4, "big") + message


def test_go_style_crc_compound_decodes() -> None:
    assert decode_packet(crc(GO_COMPOUND), WireOptions()) == GO_COMPOUND_MESSAGES


def test_crc_is_checked_even_if_we_do_not_send_it() -> None:
    for options in OPTIONS.values():
        packet = encode_packet([encode(m) for m in SAMPLE], options, crc=True)
        assert decode_packet(packet, options) == SAMPLE


@pytest.mark.parametrize("bit", range(0, 8 * (len(GO_COMPOUND) + 4), 37))
def test_crc_mismatch_is_refused(bit: int) -> None:
    packet = bytearray(crc(GO_COMPOUND))
    packet[1 + bit // 8] ^= 1 << (bit % 8)  # anywhere in the checksum or the payload
    with pytest.raises(DecodeError):
        decode_packet(bytes(packet), WireOptions())


@pytest.mark.parametrize("packet", [b"\x0c", b"\x0c\x00\x00\x00", crc(b"")])
def test_truncated_or_empty_crc_packet_is_refused(packet: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_packet(packet, WireOptions())


def test_crc_inside_encryption_is_checked() -> None:
    options = WireOptions(keyring=keyring())
    plain = crc(GO_COMPOUND)
    assert decode_packet(keyring().encrypt(plain), options) == GO_COMPOUND_MESSAGES
    broken = plain[:5] + b"\x01" + plain[6:]
    with pytest.raises(DecodeError):
        decode_packet(keyring().encrypt(broken), options)


# ---------------------------------------------------------------------------------------------
# Labels


def test_label_prefix_layout() -> None:
    message = encode(Nack(seq_no=1))
    packet = encode_packet([message], WireOptions(label=LABEL))
    assert packet == bytes((244, len(LABEL))) + LABEL + message


def test_label_prefix_is_outside_encryption_and_bound_to_it() -> None:
    options = WireOptions(keyring=keyring(), label=LABEL)
    packet = encode_packet([encode(Nack(seq_no=1))], options)
    assert packet[: 2 + len(LABEL)] == bytes((244, len(LABEL))) + LABEL
    assert packet[2 + len(LABEL)] == 1  # encryption version 1 follows
    # The same ciphertext under another label does not authenticate.
    relabelled = bytes((244, 5)) + b"other" + packet[2 + len(LABEL) :]
    with pytest.raises(DecodeError):
        decode_packet(relabelled, WireOptions(keyring=keyring(), label=b"other"))


@pytest.mark.parametrize(
    ("sender", "receiver"),
    [
        (WireOptions(label=b"a"), WireOptions(label=b"b")),
        (WireOptions(label=b"ab"), WireOptions(label=b"a")),
        (WireOptions(), WireOptions(label=b"a")),
        (WireOptions(label=b"a"), WireOptions()),
        (WireOptions(label=b"a", keyring=keyring()), WireOptions(label=b"b", keyring=keyring())),
        (WireOptions(keyring=keyring()), WireOptions(label=b"a", keyring=keyring())),
        (WireOptions(label=b"a", keyring=keyring()), WireOptions(keyring=keyring())),
    ],
    ids=[
        "wrong",
        "longer",
        "missing",
        "unexpected",
        "wrong, encrypted",
        "missing, encrypted",
        "unexpected, encrypted",
    ],
)
def test_label_mismatch_is_refused(sender: WireOptions, receiver: WireOptions) -> None:
    packet = encode_packet([encode(Nack(seq_no=1))], sender)
    with pytest.raises(DecodeError):
        decode_packet(packet, receiver)


@pytest.mark.parametrize(
    "packet",
    [b"\xf4", b"\xf4\x00" + encode(Nack(seq_no=1)), b"\xf4\x05ab", b"\xf4\x06pool-a"],
    ids=["no length", "empty label", "truncated label", "label only"],
)
def test_malformed_label_header_is_refused(packet: bytes) -> None:
    for options in (WireOptions(), WireOptions(label=LABEL)):
        with pytest.raises(DecodeError):
            decode_packet(packet, options)


# ---------------------------------------------------------------------------------------------
# Encryption


def test_encrypted_packet_hides_the_message() -> None:
    secret = b"secret payload"
    packet = encode_packet([encode(User(secret))], WireOptions(keyring=keyring()))
    assert packet[0] == 1
    assert secret not in packet
    assert len(packet) == 1 + 12 + len(secret) + 1 + 16


def test_wrong_key_is_refused() -> None:
    packet = encode_packet([encode(Nack(seq_no=1))], WireOptions(keyring=keyring(KEY)))
    with pytest.raises(DecodeError):
        decode_packet(packet, WireOptions(keyring=keyring(OTHER_KEY)))


def test_any_installed_key_decrypts() -> None:
    packet = encode_packet([encode(Nack(seq_no=1))], WireOptions(keyring=keyring(OTHER_KEY)))
    receiver = WireOptions(keyring=keyring(KEY, OTHER_KEY))
    assert decode_packet(packet, receiver) == [Nack(seq_no=1)]


def test_encrypted_packet_to_a_node_without_keyring_is_refused() -> None:
    packet = encode_packet([encode(Nack(seq_no=1))], WireOptions(keyring=keyring()))
    with pytest.raises(DecodeError):
        decode_packet(packet, WireOptions())


def test_tampered_ciphertext_is_refused() -> None:
    options = WireOptions(keyring=keyring())
    packet = encode_packet([encode(Nack(seq_no=1))], options)
    for index in (0, 1, 13, len(packet) - 1):
        tampered = bytearray(packet)
        tampered[index] ^= 0x01
        with pytest.raises(DecodeError):
            decode_packet(bytes(tampered), options)


def test_plaintext_is_refused_when_incoming_verification_is_on() -> None:
    packet = encode_packet([encode(Nack(seq_no=1))], WireOptions())
    with pytest.raises(DecodeError):
        decode_packet(packet, WireOptions(keyring=keyring()))


def test_plaintext_is_accepted_when_incoming_verification_is_off() -> None:
    receiver = WireOptions(keyring=keyring(), verify_incoming=False)
    plain = encode_packet([encode(m) for m in SAMPLE], WireOptions(), crc=True)
    assert decode_packet(plain, receiver) == SAMPLE
    # Plaintext whose first byte looks like an encryption version (0 = ping, 1 = indirect).
    for message in (*SAMPLE[:1], IndirectPing(seq_no=1, target=IP, port=1, node="n" * 60)):
        assert decode_packet(encode(message), receiver) == [message]
    encrypted = encode_packet([encode(m) for m in SAMPLE], WireOptions(keyring=keyring()))
    assert decode_packet(encrypted, receiver) == SAMPLE


def test_outgoing_verification_off_sends_plaintext() -> None:
    sender = WireOptions(keyring=keyring(), verify_outgoing=False)
    wires = [encode(m) for m in SAMPLE]
    packet = encode_packet(wires, sender)
    assert packet == encode_packet(wires, WireOptions())
    assert decode_packet(packet, WireOptions()) == SAMPLE
    # ... which a node still verifying incoming traffic refuses.
    with pytest.raises(DecodeError):
        decode_packet(packet, WireOptions(keyring=keyring()))


# ---------------------------------------------------------------------------------------------
# Size, count and content limits


def test_packet_of_65536_bytes_is_accepted_but_not_one_byte_more() -> None:
    largest = b"\x08" + bytes(MAX_PACKET_BYTES - 1)
    assert decode_packet(largest, WireOptions()) == [User(bytes(MAX_PACKET_BYTES - 1))]
    with pytest.raises(DecodeError):
        decode_packet(largest + b"\x00", WireOptions())


def test_oversized_packet_is_refused_before_decryption() -> None:
    options = WireOptions(keyring=keyring())
    packet = encode_packet([encode(User(bytes(MAX_PACKET_BYTES)))], options)
    with pytest.raises(DecodeError):
        decode_packet(packet, options)


STREAM_ONLY: list[tuple[str, bytes]] = [
    ("push-pull", encode(PushPullHeader(nodes=0, user_state_len=0))),
    ("err", encode(Err(error="boom"))),
    ("nested crc", crc(encode(Nack(seq_no=1)))),
    ("encrypt", b"\x0a\x00\x00\x00\x1e" + bytes(30)),
    ("label", b"\xf4\x01a" + encode(Nack(seq_no=1))),
]


def _wrap(inner: bytes, where: str) -> bytes:
    if where == "compound":
        return encode_compound([encode(Nack(seq_no=1)), inner])
    if where == "compress":
        return encode(Compress(buf=lzw.compress(inner)))
    if where == "crc":
        return crc(inner)
    return inner


# An outermost CRC or label is a layer, not a message; every other placement is refused.
REFUSED_INSIDE = [
    pytest.param(_wrap(inner, where), id=f"{name} in {where}")
    for name, inner in STREAM_ONLY
    for where in ("top", "compound", "compress", "crc")
    if not (where == "top" and name in ("nested crc", "label"))
]


@pytest.mark.parametrize("packet", REFUSED_INSIDE)
def test_stream_only_messages_are_refused_in_packets(packet: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_packet(packet, WireOptions())


def _nest(message: bytes, levels: int, kind: str) -> bytes:
    for _ in range(levels):
        if kind == "compound":
            message = encode_compound([message])
        else:
            message = encode(Compress(buf=lzw.compress(message)))
    return message


def test_compound_nesting_up_to_the_limit_is_accepted_and_deeper_is_refused() -> None:
    nack = encode(Nack(seq_no=1))
    assert decode_packet(_nest(nack, MAX_NESTING, "compound"), WireOptions()) == [Nack(seq_no=1)]
    with pytest.raises(DecodeError):
        decode_packet(_nest(nack, MAX_NESTING + 1, "compound"), WireOptions())
    with pytest.raises(DecodeError):
        decode_packet(_nest(nack, 40, "compound"), WireOptions())


def test_one_compression_is_accepted_and_a_second_inside_it_refused() -> None:
    nack = encode(Nack(seq_no=1))
    assert decode_packet(_nest(nack, 1, "compress"), WireOptions()) == [Nack(seq_no=1)]
    with pytest.raises(DecodeError, match="inside a compressed message"):
        decode_packet(_nest(nack, 2, "compress"), WireOptions())


def test_alternating_compound_and_compress_nesting_is_bounded() -> None:
    message = encode(Nack(seq_no=1))
    for level in range(MAX_NESTING + 1):
        message = _nest(message, 1, "compound" if level % 2 else "compress")
    with pytest.raises(DecodeError):
        decode_packet(message, WireOptions())


def test_more_than_255_messages_cannot_be_sent_in_one_packet() -> None:
    wires = [encode(Nack(seq_no=i)) for i in range(MAX_COMPOUND_PARTS + 1)]
    assert len(decode_packet(encode_packet(wires[:-1], WireOptions()), WireOptions())) == 255
    with pytest.raises(EncodeError):
        encode_packet(wires, WireOptions())
    with pytest.raises(EncodeError):
        encode_packet([], WireOptions())


def test_packet_unfolding_into_too_many_messages_is_refused() -> None:
    nacks = [encode(Nack(seq_no=i)) for i in range(MAX_COMPOUND_PARTS)]
    full = encode_compound(nacks)
    groups = -(-MAX_MESSAGES_PER_PACKET // MAX_COMPOUND_PARTS)  # compounds holding the limit
    at_limit = encode_compound([full] * groups)
    assert len(decode_packet(at_limit, WireOptions())) == groups * MAX_COMPOUND_PARTS
    assert groups * MAX_COMPOUND_PARTS == MAX_MESSAGES_PER_PACKET
    over = encode_compound([full] * groups + [nacks[0]])
    with pytest.raises(DecodeError):
        decode_packet(over, WireOptions())


@pytest.mark.parametrize(
    "packet",
    [b"", b"\x07\x01\x00\x00", b"\x07\x01\x00\x05\x0b", b"\x0e\x80", b"\x09\x80"],
    ids=["empty", "empty part", "truncated part", "unknown type", "empty compress"],
)
def test_malformed_packets_are_refused(packet: bytes) -> None:
    for options in OPTIONS.values():
        with pytest.raises(DecodeError):
            decode_packet(packet, options)


def test_bad_message_in_a_compound_drops_the_whole_packet() -> None:
    good = encode(Nack(seq_no=1))
    bad = b"\x0b\x81\xa5SeqNo\xff"  # negative seq no
    with pytest.raises(DecodeError):
        decode_packet(encode_compound([good, good, bad]), WireOptions())


def test_empty_compound_is_an_empty_packet() -> None:
    assert decode_packet(encode(Compound(())), WireOptions()) == []


def test_user_message_bytes_are_opaque() -> None:
    payload = b"\x07\x09\x0c" + bytes(10)  # look like containers, but are user data
    assert decode_packet(encode(User(payload)), WireOptions()) == [User(payload)]
    assert decode(encode(User(payload))) == User(payload)


# ---------------------------------------------------------------------------------------------
# Layer order and older peers


def test_layers_are_label_then_encryption_then_crc_then_compression() -> None:
    options = WireOptions(keyring=keyring(), label=LABEL, compress=True)
    wires = [encode(User(b"gossip " * 40)), encode(Nack(seq_no=3))]
    packet = encode_packet(wires, options, crc=True)
    assert packet[:2] == bytes((244, len(LABEL)))
    assert packet[2 : 2 + len(LABEL)] == LABEL
    plain = keyring().decrypt(packet[2 + len(LABEL) :], LABEL)
    assert plain[0] == 12
    assert zlib.crc32(plain[5:]).to_bytes(4, "big") == plain[1:5]
    compressed = decode(plain[5:])
    assert isinstance(compressed, Compress)
    assert lzw.decompress(compressed.buf) == encode_compound(wires)


def test_version_0_encryption_from_protocol_1_peers_is_accepted() -> None:
    """memberlist speaking protocol 1 pads the plaintext (PKCS7) and sends version 0."""
    plain = crc(GO_COMPOUND)
    pad = 16 - len(plain) % 16
    nonce = bytes(range(12))
    sealed = AESGCM(KEY).encrypt(nonce, plain + bytes((pad,)) * pad, None)
    packet = b"\x00" + nonce + sealed
    assert decode_packet(packet, WireOptions(keyring=keyring())) == GO_COMPOUND_MESSAGES


# ---------------------------------------------------------------------------------------------
# Replays of encrypted datagrams


def test_an_exact_replay_of_an_encrypted_datagram_is_refused() -> None:
    options = WireOptions(keyring=keyring(), label=LABEL)
    replays = ReplayFilter(16)
    ping = encode_packet([encode(Ping(seq_no=7))], options)
    assert decode_packet(ping, options, replays) == [Ping(seq_no=7)]
    with pytest.raises(ReplayedPacket, match="replayed"):
        decode_packet(ping, options, replays)
    # the same message sealed again carries a fresh nonce: not a replay
    assert decode_packet(encode_packet([encode(Ping(seq_no=7))], options), options, replays)


def test_a_forgery_cannot_spend_a_nonce_before_its_datagram_arrives() -> None:
    """Nonces are recorded only for datagrams that authenticate, so junk bearing the nonce of
    a datagram still on its way does not get that datagram refused."""
    options = WireOptions(keyring=keyring())
    replays = ReplayFilter(16)
    ping = encode_packet([encode(Ping(seq_no=1))], options)
    forged = ping[:13] + bytes(len(ping) - 13)
    with pytest.raises(DecodeError) as refused:
        decode_packet(forged, options, replays)
    assert not isinstance(refused.value, ReplayedPacket)
    assert decode_packet(ping, options, replays) == [Ping(seq_no=1)]


def test_the_replay_window_is_bounded_and_forgets_the_oldest() -> None:
    options = WireOptions(keyring=keyring())
    replays = ReplayFilter(3)
    packets = [encode_packet([encode(Ping(seq_no=i))], options) for i in range(5)]
    for packet in packets:
        decode_packet(packet, options, replays)
    assert len(replays) == 3
    assert decode_packet(packets[0], options, replays) == [Ping(seq_no=0)]  # out of the window
    with pytest.raises(ReplayedPacket):
        decode_packet(packets[4], options, replays)


def test_plaintext_accepted_while_migrating_is_not_replay_checked() -> None:
    """With verify_incoming off, plaintext has no nonce to remember: it passes as before."""
    options = WireOptions(keyring=keyring(), verify_incoming=False)
    replays = ReplayFilter(4)
    plain = encode_packet([encode(Ping(seq_no=3))], WireOptions())
    assert decode_packet(plain, options, replays) == [Ping(seq_no=3)]
    assert decode_packet(plain, options, replays) == [Ping(seq_no=3)]
    assert len(replays) == 0
