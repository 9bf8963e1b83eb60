"""The run's trace: every delivery, stream outcome, event and fault, with its virtual time.

Each record is serialised canonically (a tag byte, the time as an IEEE double, names and bytes
with their lengths) and fed to SHA-256, so two runs agree on :attr:`Trace.hash` exactly when
they delivered the same bytes and saw the same events at the same times.  Records are hashed
in chunks; with ``keep=True`` they are also kept, readable, for debugging small runs.
"""

from __future__ import annotations

import hashlib
import struct

_TIME = struct.Struct("<d").pack
_LENGTH = struct.Struct("<I").pack
_CHUNK = 1 << 20


class Trace:
    """A SHA-256 over canonical records, and optionally the records themselves."""

    __slots__ = ("_buffer", "_hasher", "keep", "records")

    def __init__(self, keep: bool = False) -> None:
        self._hasher = hashlib.sha256()
        self._buffer = bytearray()
        self.keep = keep
        self.records: list[tuple[float, str, str, str, bytes]] = []
        """(time, kind, source or observer, target or subject, payload) when ``keep``."""

    def datagram(self, time: float, source: bytes, target: bytes, data: bytes) -> None:
        """A datagram reached ``target``'s engine; names are pre-encoded as ``name + NUL``."""
        buffer = self._buffer
        buffer += b"".join((b"d", _TIME(time), source, target, _LENGTH(len(data)), data))
        if len(buffer) > _CHUNK:
            self._flush()
        if self.keep:
            self._keep(time, "datagram", source, target, data)

    def record(self, time: float, kind: str, source: str, target: str, payload: bytes) -> None:
        """Any other record: a stream delivery or failure, an event, a fault."""
        buffer = self._buffer
        buffer += b"r"
        buffer += _TIME(time)
        for text in (kind, source, target):
            buffer += text.encode()
            buffer += b"\0"
        buffer += _LENGTH(len(payload))
        buffer += payload
        if len(buffer) > _CHUNK:
            self._flush()
        if self.keep:
            self.records.append((time, kind, source, target, payload))

    @property
    def hash(self) -> str:
        """The hex SHA-256 of every record so far."""
        self._flush()
        return self._hasher.hexdigest()

    def _flush(self) -> None:
        self._hasher.update(self._buffer)
        self._buffer.clear()

    def _keep(self, time: float, kind: str, source: bytes, target: bytes, data: bytes) -> None:
        self.records.append((time, kind, source[:-1].decode(), target[:-1].decode(), data))
