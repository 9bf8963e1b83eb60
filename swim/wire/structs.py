"""Go structs as go-msgpack writes them, for memberlist's and Serf's messages.

hashicorp/go-msgpack with a zero ``MsgpackHandle`` writes a struct as a map keyed by the Go field
names in sorted order, strings and ``[]byte`` alike as msgpack "raw", nil slices as nil, and
integers in their smallest unsigned form.  A class here declares its fields once, as
:class:`Field` rows in wire order; :func:`pack_struct` and :func:`unpack_struct` do the rest and
validate every value, so that nothing but :class:`~swim.wire.errors.DecodeError` leaves a decoder.

Serf's agent RPC uses the other handle, ``RawToString`` with the newer spec: strings travel as
msgpack str and ``[]byte`` as bin.  A :class:`StructCodec` with ``raw=False`` reads and writes
that form, with kinds of its own that may name the field in their errors (:attr:`Kind.named`).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable
from typing import Any, ClassVar, Generic, NamedTuple, Protocol, TypeVar

import msgpack

from swim.wire.errors import DecodeError, EncodeError
from swim.wire.limits import MAX_STREAM_BYTES, VSN_LEN

_packer = msgpack.Packer(use_bin_type=False)
pack = _packer.pack
"""Pack one object as go-msgpack would (raw strings, never str8 or bin)."""


MAX_CONTAINER_LEN = 1 << 16
"""Most entries in one msgpack array or map; no memberlist or Serf structure needs more."""


def unpack(data: bytes | bytearray | memoryview) -> Any:
    """Unpack exactly one msgpack object, raising only DecodeError."""
    try:
        return msgpack.unpackb(
            data,
            raw=True,
            strict_map_key=False,
            max_array_len=MAX_CONTAINER_LEN,
            max_map_len=MAX_CONTAINER_LEN,
        )
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise DecodeError(f"malformed msgpack: {type(exc).__name__}") from None


def unpacker(max_bytes: int = MAX_STREAM_BYTES) -> msgpack.Unpacker:
    """A streaming unpacker with the same settings as :func:`unpack`, buffering at most
    ``max_bytes``, for TCP streams."""
    return msgpack.Unpacker(
        raw=True,
        strict_map_key=False,
        max_buffer_size=max_bytes,
        max_array_len=MAX_CONTAINER_LEN,
        max_map_len=MAX_CONTAINER_LEN,
    )


# ---------------------------------------------------------------------------------------------
# Field kinds: each validates one decoded value and turns it into the Python value.


def _text(value: object) -> str:
    if type(value) is bytes:
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise DecodeError("string field is not valid UTF-8") from None
    if value is None:
        return ""
    raise DecodeError(f"expected a string, got {type(value).__name__}")


def _raw(value: object) -> bytes:
    if type(value) is bytes:
        return value
    if value is None:
        return b""
    raise DecodeError(f"expected bytes, got {type(value).__name__}")


def _unsigned(bits: int) -> Callable[[object], int]:
    limit = 1 << bits

    def check(value: object) -> int:
        if type(value) is int and 0 <= value < limit:
            return value
        if value is None:
            return 0
        raise DecodeError(f"expected an unsigned {bits}-bit integer, got {value!r:.40}")

    return check


def _signed64(value: object) -> int:
    if type(value) is int and -(1 << 63) <= value < (1 << 63):
        return value
    if value is None:
        return 0
    raise DecodeError(f"expected a 64-bit integer, got {value!r:.40}")


def _boolean(value: object) -> bool:
    # Go's decoder accepts 0 and 1 as booleans too.
    if value is True or value is False:
        return value
    if type(value) is int and value in (0, 1):
        return bool(value)
    if value is None:
        return False
    raise DecodeError(f"expected a boolean, got {value!r:.40}")


def _vsn(value: object) -> bytes:
    # Go sends []uint8 as 6 raw bytes and accepts an array of ints; anything but 6 is refused
    # (upstream memberlist panicked on a short Vsn).
    if type(value) is list and all(type(v) is int and 0 <= v <= 255 for v in value):
        value = bytes(value)
    if type(value) is bytes and len(value) == VSN_LEN:
        return value
    raise DecodeError(f"Vsn must be {VSN_LEN} bytes, got {value!r:.40}")


def _raw_list(value: object) -> tuple[bytes, ...]:
    if value is None:
        return ()
    if type(value) is list and all(type(v) is bytes for v in value):
        return tuple(value)
    raise DecodeError("expected a list of byte strings")


def _text_list(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if type(value) is list:
        return tuple(_text(v) for v in value)
    raise DecodeError("expected a list of strings")


def _float(value: object) -> float:
    if type(value) is float:
        return value
    if type(value) is int:
        return float(value)
    if value is None:
        return 0.0
    raise DecodeError(f"expected a float, got {value!r:.40}")


class Kind(NamedTuple):
    """How one Go type is checked on decode, and what counts as empty for ``omitempty``.

    ``fast`` is an expression over ``v`` for the common, valid case, falling back to ``check``
    (which also accepts Go's zero values and raises DecodeError) otherwise; ``nil_when_empty``
    marks slices, which Go writes as nil when empty.
    """

    check: Callable[..., Any]
    """``check(value)``, or ``check(value, key=wire_name)`` when :attr:`named`."""
    empty: object
    fast: str = "check(v)"
    nil_when_empty: bool = False
    valid: str = ""
    """A condition over ``v`` that a value must meet to be encoded (empty: anything typed)."""
    to_wire: Callable[[Any], object] | None = None
    """What msgpack packs for a value, when not the value itself (nested structs, sorted maps,
    tuples as lists, floats as float64)."""
    named: bool = False
    """``check`` also takes the field's wire name, to say which field is wrong."""


TEXT = Kind(_text, "", "v.decode() if type(v) is bytes else check(v)")
RAW = Kind(_raw, b"", "v if type(v) is bytes else check(v)", nil_when_empty=True)
U8 = Kind(
    _unsigned(8), 0, "v if type(v) is int and 0 <= v < 0x100 else check(v)", valid="0 <= v < 0x100"
)
U16 = Kind(
    _unsigned(16),
    0,
    "v if type(v) is int and 0 <= v < 0x10000 else check(v)",
    valid="0 <= v < 0x10000",
)
U32 = Kind(
    _unsigned(32),
    0,
    "v if type(v) is int and 0 <= v < 0x100000000 else check(v)",
    valid="0 <= v < 0x100000000",
)
U64 = Kind(
    _unsigned(64),
    0,
    "v if type(v) is int and 0 <= v < 1 << 64 else check(v)",
    valid="0 <= v < 1 << 64",
)
I64 = Kind(_signed64, 0, valid="-(1 << 63) <= v < 1 << 63")
BOOL = Kind(_boolean, False, "v if v is True or v is False else check(v)")
VSN = Kind(
    _vsn,
    b"",
    "v if type(v) is bytes and len(v) == 6 else check(v)",
    nil_when_empty=True,
    valid="len(v) == 6",
)
RAW_LIST = Kind(_raw_list, (), nil_when_empty=True, to_wire=list)
TEXT_LIST = Kind(_text_list, (), nil_when_empty=True, to_wire=list)
FLOAT = Kind(_float, 0.0, "v if type(v) is float else check(v)", to_wire=float)


class Field(NamedTuple):
    """One Go struct field: its wire name, the Python attribute, its kind, and omitempty."""

    key: str
    attr: str
    kind: Kind
    omitempty: bool = False


class Struct(Protocol):
    """A class whose instances travel as one Go struct."""

    FIELDS: ClassVar[tuple[Field, ...]]


S = TypeVar("S", bound=Struct)


def _out_of_range(struct: str, attr: str, value: object) -> str:
    return f"{struct}.{attr}={value!r:.40} is out of range for its Go type"


class StructCodec(Generic[S]):
    """The compiled encoder and decoders of one struct class, with an optional prefix (the
    message type byte) written before the map and skipped before decoding.  With ``raw=False``
    strings travel as msgpack str, bytes as bin, and map keys unpack as str (Serf's RPC).

    The code is written and compiled once per class, as dataclasses does for ``__init__``: a
    generic loop over the fields costs several times more per message.
    """

    encode: Callable[[S], bytes]
    """``prefix`` + the struct as go-msgpack writes it."""
    to_map: Callable[[S], dict[str, object]]
    """The map that :attr:`encode` packs, for a struct nested in another."""
    build: Callable[[object], S]
    """The struct from an already unpacked map (as a streaming unpacker yields it)."""
    decode: Callable[[bytes | bytearray | memoryview], S]
    """The struct from ``prefix`` + exactly one msgpack map."""

    def __init__(self, cls: type[S], prefix: bytes = b"", *, raw: bool = True) -> None:
        namespace: dict[str, Any] = {
            "cls": cls,
            "pack": pack if raw else functools.partial(msgpack.packb, use_bin_type=True),
            "unpackb": msgpack.unpackb,
            "prefix": prefix,
            "limit": MAX_CONTAINER_LEN,
            "DecodeError": DecodeError,
            "EncodeError": EncodeError,
            "out_of_range": _out_of_range,
        }
        name = cls.__name__
        order = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        enc = ["    d = {}"]
        fetch, args = [], {}
        for i, (key, attr, kind, omitempty) in enumerate(cls.FIELDS):
            value = f"m.{attr}"
            if kind.to_wire is not None:
                namespace[f"to_wire{i}"] = kind.to_wire
                value = f"to_wire{i}(m.{attr})"
            if kind.valid:
                condition = re.sub(r"\bv\b", f"m.{attr}", kind.valid)
                enc.append(f"    if not ({condition}):")
                enc.append(f"        raise EncodeError(out_of_range({name!r}, {attr!r}, m.{attr}))")
            if omitempty:
                enc.append(f"    if m.{attr}: d[{key!r}] = {value}")
            elif kind.nil_when_empty:
                enc.append(f"    d[{key!r}] = {value} if m.{attr} else None")
            else:
                enc.append(f"    d[{key!r}] = {value}")
            namespace[f"check{i}"] = (
                functools.partial(kind.check, key=key) if kind.named else kind.check
            )
            fetch.append(f"        v{i} = get({(key.encode() if raw else key)!r})")
            args[attr] = re.sub(r"\bv\b", f"v{i}", kind.fast.replace("check(", f"check{i}("))
        construct = [
            "    if type(d) is not dict:",
            f"        raise DecodeError('{name}: expected a map, got ' + type(d).__name__)",
            "    get = d.get",
            "    try:",
            *fetch,
            f"        return cls({', '.join(f'({args[name]})' for name in order)})",
            "    except UnicodeDecodeError:",
            f"        raise DecodeError('{name}: a string field is not valid UTF-8') from None",
        ]
        dec = [
            "def decode(data):",
            "    try:",
            f"        d = unpackb(data[{len(prefix)}:], raw={raw}, strict_map_key=False,",
            "                    max_array_len=limit, max_map_len=limit)",
            "    except Exception as exc:",
            f"        raise DecodeError('{name}: bad msgpack: ' + type(exc).__name__) from None",
        ]
        encode = ["def encode(m):", *enc, "    return prefix + pack(d)"]
        to_map = ["def to_map(m):", *enc, "    return d"]
        source = "\n".join([*encode, *to_map, "def build(d):", *construct, *dec, *construct])
        exec(source, namespace)
        self.encode = namespace["encode"]
        self.to_map = namespace["to_map"]
        self.build = namespace["build"]
        self.decode = namespace["decode"]


_codecs: dict[type[Any], StructCodec[Any]] = {}


def _codec(cls: type[S]) -> StructCodec[S]:
    codec = _codecs.get(cls)
    if codec is None:
        codec = _codecs[cls] = StructCodec(cls)
    return codec


def pack_struct(obj: Struct) -> bytes:
    """``obj`` as msgpack bytes in go-msgpack's struct layout."""
    return _codec(type(obj)).encode(obj)


def to_map(obj: Struct) -> dict[str, object]:
    """``obj`` as the map go-msgpack writes, for nesting in another struct."""
    return _codec(type(obj)).to_map(obj)


def from_map(cls: type[S], decoded: object) -> S:
    """Build ``cls`` from an unpacked map; absent fields take Go's zero value and extra keys are
    ignored, as Go does."""
    return _codec(cls).build(decoded)


def unpack_struct(cls: type[S], data: bytes | bytearray | memoryview) -> S:
    """Decode one ``cls`` from exactly ``data``."""
    return _codec(cls).decode(data)
