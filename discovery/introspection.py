"""Service introspection: full metadata fetched peer-to-peer, cached by revision.

Gossip carries only each instance's metadata *revision*: a 32-bit digest of the packed metadata
(0 for none), so it changes whenever the metadata does and, unlike a counter, never comes back
to an old number with other contents after a restart.  The full metadata comes on demand
from the instance's own node, whose metadata service listens on the port in its ``svc-meta``
tag.  One request per TCP connection, each message one frame: a 4-byte big-endian length, then
a body, which in a plaintext cluster is a msgpack map::

    request   {"service": str, "revision": int}     (the revision the asker knows)
    response  {"revision": int, "metadata": map}    (the current one)
           or {"error": str}

In an encrypted cluster (its nodes have a keyring) the request also carries ``"nonce"``: 16
random bytes, which the response or refusal must echo, so that a recorded answer cannot be
replayed to a later request.  Every body is then the map sealed by :class:`FrameSeal` with the
cluster's keyring, as memberlist seals a packet (version 1, AES-GCM nonce, ciphertext and tag:
:data:`SEAL_OVERHEAD` bytes more, which the frame limits allow for), bound to the associated
data ``b"shoal-metadata/" + (b"request" | b"response") + b"/" + label``: a request cannot pass
for a response, nor a frame of one cluster for one of another.  Both ends must agree: an
encrypted node refuses plaintext frames and a plaintext node cannot read sealed ones (the
gossip's ``verify_incoming`` / ``verify_outgoing`` migration switches do not apply here).

This module holds the codec (sans-IO, every size bounded, one exception type for bad input) and
the cache; the sockets, and the random nonces, are in :mod:`discovery.host` and
:mod:`discovery.client`.
"""

from __future__ import annotations

import collections
import enum
import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import msgpack

from discovery.catalog import Instance
from swim.wire import DecodeError, Keyring
from swim.wire.crypto import ENCRYPTION_VERSION, encrypted_length

MAX_REQUEST_BYTES = 1024
"""The largest request body in the clear."""
MAX_METADATA_BYTES = 64 * 1024
"""The largest metadata a service may register; a response is at most this plus a few bytes."""
MAX_RESPONSE_BYTES = MAX_METADATA_BYTES + 256
"""The largest response body in the clear."""
SEAL_OVERHEAD = encrypted_length(ENCRYPTION_VERSION, 0)
"""What sealing adds to a body: the version byte, the AES-GCM nonce and the tag."""
NONCE_BYTES = 16
"""The random bytes a request carries in an encrypted cluster, echoed by its answer."""
_LENGTH = struct.Struct(">I")
_SEALED = bytes((ENCRYPTION_VERSION,))

Metadata = Mapping[str, Any]


class ProtocolError(ValueError):
    """A metadata message is malformed or too large; ``reason`` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MetadataError(Exception):
    """Metadata could not be fetched from an instance's node; the message says why."""


@dataclass(frozen=True, slots=True)
class Request:
    service: str
    revision: int
    nonce: bytes = b""
    """Empty in a plaintext cluster."""


@dataclass(frozen=True, slots=True)
class Response:
    revision: int
    metadata: Metadata


@dataclass(frozen=True, slots=True)
class Refusal:
    error: str


def frame(body: Mapping[str, Any]) -> bytes:
    """One message on the wire: length, then msgpack."""
    return FrameSeal(None).frame(body, Direction.REQUEST)


class Direction(enum.Enum):
    """Which way a frame travels; a seal binds it, so that one cannot pass for the other."""

    REQUEST = b"request"
    RESPONSE = b"response"


@dataclass(frozen=True, slots=True)
class FrameSeal:
    """How one cluster's metadata frames travel: sealed with its ``keyring``, or in the clear
    when it has none.  Make one per request, ``FrameSeal(node.keyring,
    node.config.label.encode())``, so that it follows the node's keys as they rotate."""

    keyring: Keyring | None
    label: bytes = b""

    @property
    def sealed(self) -> bool:
        return self.keyring is not None

    def reader(self, direction: Direction) -> FrameReader:
        """A reader for one frame going ``direction``, its limit grown by the seal."""
        limit = MAX_REQUEST_BYTES if direction is Direction.REQUEST else MAX_RESPONSE_BYTES
        return FrameReader(limit + SEAL_OVERHEAD if self.sealed else limit)

    def frame(self, body: Mapping[str, Any], direction: Direction) -> bytes:
        """``body`` as one frame going ``direction``: packed, then sealed with the keyring."""
        packed: bytes = msgpack.packb(body, use_bin_type=True)
        if self.keyring is not None:
            packed = self.keyring.encrypt(packed, self._aad(direction))
        return _LENGTH.pack(len(packed)) + packed

    def open(self, body: bytes, direction: Direction) -> bytes:
        """The msgpack in the ``body`` of a frame going ``direction``; :class:`ProtocolError`
        when it is sealed and this node has no keyring, in the clear and this node has one, or
        sealed for another key, label or direction."""
        what = direction.name.lower()
        sealed = body[:1] == _SEALED
        if self.keyring is None:
            if sealed:
                raise ProtocolError(
                    f"the {what} is encrypted, but this node has no cluster key; "
                    "give it the cluster's keyring"
                )
            return body
        if not sealed:
            raise ProtocolError(
                f"the {what} is not encrypted, but this node's cluster is; "
                "give the other end the cluster's keyring"
            )
        try:
            return self.keyring.decrypt(body, self._aad(direction))
        except DecodeError:
            raise ProtocolError(
                f"cannot decrypt the {what}: the other end and this node do not share a cluster "
                f"key and label (or it is not a {what}); give both the same keyring and label"
            ) from None

    def _aad(self, direction: Direction) -> bytes:
        return b"shoal-metadata/" + direction.value + b"/" + self.label


def encode_metadata(metadata: Metadata) -> bytes:
    """``metadata`` packed, refused when msgpack cannot carry it or it is too large."""
    if not all(isinstance(key, str) for key in metadata):
        raise ValueError("metadata keys must be strings")
    try:
        packed: bytes = msgpack.packb(dict(metadata), use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"metadata cannot be encoded with msgpack: {exc}") from None
    if len(packed) > MAX_METADATA_BYTES:
        raise ValueError(
            f"metadata is {len(packed)} bytes packed, over the limit of {MAX_METADATA_BYTES}; "
            "keep large documents elsewhere and put their address in the metadata"
        )
    return packed


def revision_of(packed: bytes) -> int:
    """The revision of metadata packed by :func:`encode_metadata`: 0 for none, else a digest."""
    if packed == encode_metadata({}):
        return 0
    return int.from_bytes(hashlib.blake2b(packed, digest_size=4).digest(), "big") or 1


class FrameReader:
    """Collects bytes until one whole frame is in; bounded by ``limit``."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._buffer = bytearray()

    def receive_data(self, data: bytes) -> bytes | None:
        """The frame's body once complete, else None; :class:`ProtocolError` when too large."""
        self._buffer += data
        if len(self._buffer) < _LENGTH.size:
            return None
        (length,) = _LENGTH.unpack_from(self._buffer)
        if length > self._limit:
            raise ProtocolError(f"frame of {length} bytes, over the limit of {self._limit}")
        end = _LENGTH.size + length
        if len(self._buffer) < end:
            return None
        if len(self._buffer) > end:
            raise ProtocolError("bytes after the frame")
        return bytes(self._buffer[_LENGTH.size :])

    def end_of_stream(self) -> NoReturn:
        """The peer closed before a whole frame arrived."""
        raise ProtocolError(f"stream ended after {len(self._buffer)} bytes, mid-frame")


def _unpack(body: bytes) -> dict[str, Any]:
    try:
        value = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises many types for bad input
        raise ProtocolError(f"not msgpack: {type(exc).__name__}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"expected a map, got {type(value).__name__}")
    return value


def decode_request(body: bytes) -> Request:
    value = _unpack(body)
    service, revision = value.get("service"), value.get("revision")
    if not isinstance(service, str) or not isinstance(revision, int) or revision < 0:
        raise ProtocolError("a request needs a service name and a revision of 0 or more")
    nonce = value.get("nonce", b"")
    if not isinstance(nonce, bytes) or len(nonce) not in (0, NONCE_BYTES):
        raise ProtocolError(f"a request's nonce must be {NONCE_BYTES} bytes")
    return Request(service, revision, nonce)


def decode_response(body: bytes, nonce: bytes = b"") -> Response | Refusal:
    """The answer to a request that carried ``nonce``, which the answer must echo."""
    value = _unpack(body)
    if value.get("nonce", b"") != nonce:
        raise ProtocolError(
            "an answer to another request (its nonce is not this request's): "
            "a replayed or misdirected answer"
        )
    if isinstance(value.get("error"), str):
        return Refusal(value["error"])
    revision, metadata = value.get("revision"), value.get("metadata")
    if not isinstance(revision, int) or revision < 0 or not isinstance(metadata, dict):
        raise ProtocolError("a response needs a revision of 0 or more and a metadata map")
    if not all(isinstance(key, str) for key in metadata):
        raise ProtocolError("metadata keys must be strings")
    return Response(revision, metadata)


class MetadataCache:
    """Fetched metadata by (cluster, node, service) at one revision each, least recently used
    first out; an entry at another revision than the instance's is a miss."""

    def __init__(self, capacity: int = 1024) -> None:
        self._capacity = capacity
        self._entries: collections.OrderedDict[tuple[str, str, str], Response] = (
            collections.OrderedDict()
        )

    def get(self, instance: Instance) -> Metadata | None:
        """The metadata of ``instance`` at its revision, if cached."""
        if instance.revision == 0:
            return {}
        entry = self._entries.get(instance.key)
        if entry is None or entry.revision != instance.revision:
            return None
        self._entries.move_to_end(instance.key)
        return entry.metadata

    def put(self, instance: Instance, response: Response) -> None:
        """Keep ``response`` as the instance's metadata (the node's current, which gossip may
        not have brought here yet)."""
        self._entries[instance.key] = response
        self._entries.move_to_end(instance.key)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)
