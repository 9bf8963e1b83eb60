"""Helpers to drive one engine by hand: feed it messages, read what it sends."""

from __future__ import annotations

import random
from typing import TypeVar

import pytest

from swim import wire
from swim.config import Config
from swim.engine import Engine
from swim.members import Address

PLAIN = wire.WireOptions()
VSN = bytes((1, 5, 2, 2, 5, 5))
ME: Address = ("10.0.0.1", 7946)


def address_of(index: int) -> Address:
    return (f"10.0.{index // 250}.{index % 250 + 2}", 7946)


def alive(name: str, index: int, incarnation: int = 1, meta: bytes = b"") -> wire.Alive:
    host, port = address_of(index)
    return wire.Alive(
        incarnation=incarnation,
        node=name,
        addr=bytes(int(part) for part in host.split(".")),
        port=port,
        vsn=VSN,
        meta=meta,
    )


RELAY = address_of(0)
"""Where fed packets come from unless a test says: member p0 passing news on.  A packet from
an address that is no member's may introduce only its sender."""
STRANGER: Address = ("10.9.9.9", 1)
"""An address that is no member's."""


def feed(engine: Engine, now: float, *messages: wire.Message, source: Address = RELAY) -> None:
    """Deliver ``messages`` to ``engine`` as one plaintext packet."""
    engine.receive_datagram(
        wire.encode_packet([wire.encode(m) for m in messages], PLAIN), source, now
    )


def sent(engine: Engine) -> list[tuple[Address, list[wire.Message]]]:
    """Every datagram ``engine`` wants to send, decoded."""
    return [(dst, wire.decode_packet(data, PLAIN)) for dst, data in engine.take_datagrams()]


M = TypeVar("M")


def sent_messages(engine: Engine, kind: type[M]) -> list[tuple[Address, M]]:
    """The datagrams' messages of one kind, with their destinations."""
    return [(dst, m) for dst, msgs in sent(engine) for m in msgs if isinstance(m, kind)]


def make_engine(
    config: Config | None = None, *, peers: int = 0, seed: int = 7, now: float = 0.0
) -> Engine:
    """An engine named ``me`` that already knows ``peers`` alive members p0, p1, ..."""
    engine = Engine("me", ME, config or Config.lan(compression=False), random.Random(seed), now=now)
    for i in range(peers):
        feed(engine, now, alive(f"p{i}", i), source=address_of(i))  # each introduces itself
    engine.take_events()
    engine.take_datagrams()
    return engine


@pytest.fixture
def lan() -> Config:
    return Config.lan(compression=False)
