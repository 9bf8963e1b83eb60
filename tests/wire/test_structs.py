"""swim.wire.structs: the codec's two msgpack handles, and kinds that name their field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import msgpack
import pytest

from swim.wire.errors import DecodeError
from swim.wire.structs import RAW, TEXT, Field, Kind, StructCodec


def _named_text(value: object, key: str) -> str:
    if value is None:
        return ""
    if type(value) is not str:
        raise DecodeError(f"{key} is a {type(value).__name__}, not a string")
    return value


NAMED_TEXT = Kind(_named_text, "", "v if type(v) is str else check(v)", named=True)


@dataclass(frozen=True, slots=True)
class Raw:
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("Name", "name", TEXT),
        Field("Payload", "payload", RAW),
    )
    name: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Str:
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("Name", "name", NAMED_TEXT),
        Field("Payload", "payload", RAW),
    )
    name: str
    payload: bytes


def test_the_raw_handle_writes_strings_and_bytes_alike() -> None:
    data = StructCodec(Raw).encode(Raw("é", b"\x00"))
    assert data == b"\x82\xa4Name\xa2\xc3\xa9\xa7Payload\xa1\x00"
    assert StructCodec(Raw).decode(data) == Raw("é", b"\x00")


def test_the_str_handle_writes_str_apart_from_bin_and_reads_str_keys() -> None:
    codec = StructCodec(Str, raw=False)
    data = codec.encode(Str("é", b"\x00"))
    assert data == b"\x82\xa4Name\xa2\xc3\xa9\xa7Payload\xc4\x01\x00"
    assert msgpack.unpackb(data) == {"Name": "é", "Payload": b"\x00"}
    assert codec.decode(data) == Str("é", b"\x00")
    assert codec.build({"Name": "x"}) == Str("x", b"")  # absent: Go's zero value
    assert codec.build({b"Name": "x"}) == Str("", b"")  # bin keys are other keys


def test_a_named_kind_says_which_field_is_wrong() -> None:
    codec = StructCodec(Str, raw=False)
    with pytest.raises(DecodeError, match=r"^Name is a int, not a string$"):
        codec.build({"Name": 5})
    with pytest.raises(DecodeError, match=r"^Name is a bytes, not a string$"):
        codec.decode(msgpack.packb({"Name": b"x"}, use_bin_type=True))
