"""memberlist's wire format: bytes <-> messages, compression, encryption and framing.

Everything here is pure: no sockets, no clocks, no global randomness (encryption nonces come
from a function the caller may replace).  Decoders raise :class:`DecodeError` and nothing else.
"""

from swim.wire.crypto import Keyring, KeyringError, decode_key, encode_key
from swim.wire.errors import DecodeError, EncodeError
from swim.wire.messages import (
    Ack,
    Alive,
    Compound,
    Compress,
    Dead,
    Err,
    IndirectPing,
    Message,
    MessageType,
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
    make_compounds,
)
from swim.wire.packet import (
    ReplayedPacket,
    ReplayFilter,
    WireOptions,
    decode_packet,
    encode_packet,
)
from swim.wire.stream import (
    PushPull,
    StreamMessage,
    StreamReader,
    encode_stream,
    seal_stream,
    stream_body,
)

__all__ = [
    "Ack",
    "Alive",
    "Compound",
    "Compress",
    "Dead",
    "DecodeError",
    "EncodeError",
    "Err",
    "IndirectPing",
    "Keyring",
    "KeyringError",
    "Message",
    "MessageType",
    "Nack",
    "NodeState",
    "Ping",
    "PushNodeState",
    "PushPull",
    "PushPullHeader",
    "ReplayFilter",
    "ReplayedPacket",
    "StreamMessage",
    "StreamReader",
    "Suspect",
    "User",
    "UserMsgHeader",
    "WireOptions",
    "decode",
    "decode_key",
    "decode_packet",
    "encode",
    "encode_key",
    "encode_packet",
    "encode_stream",
    "make_compounds",
    "seal_stream",
    "stream_body",
]
