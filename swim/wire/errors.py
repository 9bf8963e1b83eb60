"""The one exception a wire decoder may raise, and the one an encoder raises for bad input."""


class DecodeError(ValueError):
    """Bytes from the network could not be decoded.

    Every decoder in :mod:`swim.wire` raises this and nothing else for bad input, so a
    receiver can drop the packet or stream and count it.  ``reason`` is a short, stable
    description of what was wrong, suitable for logs and stats.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class EncodeError(ValueError):
    """A message cannot be put on the wire as given (a field out of range, a part too large)."""
