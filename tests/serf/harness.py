"""Helpers to drive the Serf layer by hand: one layer over one engine (no sockets, no real
time), and a simulated cluster of Serf layers on the engine harness's virtual network."""

from __future__ import annotations

import random
import typing
from collections.abc import Mapping
from dataclasses import dataclass

from swim import wire
from swim.config import Config
from swim.events import Event, UserMessage
from swim.members import Address
from swim.serf.layer import (
    KeyringChanged,
    MemberReaped,
    QueryAck,
    QueryAnswer,
    QueryDone,
    Serf,
    SerfEvent,
    SerfMember,
    SerfQuery,
    SerfUserEvent,
    Status,
)
from swim.stack import MemberStack
from swim.wire import serf as msg
from tests.swim.conftest import ME, RELAY, VSN, address_of
from tests.swim.harness import Cluster

QUIET = Config.lan(
    compression=False,
    probe_interval=3600.0,
    push_pull_interval=0.0,
    reconnect_interval=0.0,
    isolation_timeout=1e9,
)
"""LAN timing, except that the engine never probes, pushes or reconnects on its own within a
test's time span: only gossip runs (membership news and the Serf layer's broadcasts), and no
peer is ever suspected for failing to answer a probe that the test does not answer."""


SERF_EVENTS = (
    SerfUserEvent,
    SerfQuery,
    QueryAck,
    QueryAnswer,
    QueryDone,
    MemberReaped,
    KeyringChanged,
)
ENGINE_EVENTS = typing.get_args(Event)


def ip4(host: str) -> bytes:
    return bytes(int(part) for part in host.split("."))


def peer_alive(
    name: str,
    index: int,
    tags: Mapping[str, str] | None = None,
    vsn: bytes = VSN,
    incarnation: int = 1,
) -> wire.Alive:
    """An alive message for a peer at ``address_of(index)`` (with Serf tags if given)."""
    host, port = address_of(index)
    meta = msg.encode_tags(tags) if tags is not None else b""
    return wire.Alive(
        incarnation=incarnation, node=name, addr=ip4(host), port=port, vsn=vsn, meta=meta
    )


class Layer:
    """A Serf layer named ``me`` at :data:`ME`, in its own member stack, driven by hand.

    ``peers`` alive members ``p0, p1, ...`` (at ``address_of(i)``) are known from the start.
    Serf events are collected in :attr:`events`; :meth:`sent` decodes what went out.
    """

    def __init__(
        self,
        *,
        peers: int = 0,
        tags: Mapping[str, str] | None = None,
        keyring: wire.Keyring | None = None,
        config: Config = QUIET,
        name: str = "me",
        address: Address = ME,
        seed: int = 7,
        now: float = 0.0,
        reconnect_timeout: float = 24 * 3600.0,
        tombstone_timeout: float = 24 * 3600.0,
        event_size_limit: int = msg.DEFAULT_USER_EVENT_SIZE_LIMIT,
        disable_coordinates: bool = False,
    ) -> None:
        self.now = now
        self.stack = MemberStack(
            name,
            address,
            config.replace(reconnect_timeout=reconnect_timeout),
            random.Random(seed),
            tags=tags or {},
            keyring=keyring,
            now=now,
            tombstone_timeout=tombstone_timeout,
            event_size_limit=event_size_limit,
            disable_coordinates=disable_coordinates,
        )
        self.engine = self.stack.engine
        assert self.stack.serf is not None
        self.serf = self.stack.serf
        self.events: list[SerfEvent] = []
        self.engine_events: list[Event] = []
        for index in range(peers):
            self.add_peer(f"p{index}", index)
        self.engine.take_datagrams()

    # ------------------------------------------------------------------ inputs

    def pump(self) -> list[SerfEvent]:
        """Take the stack's events; the Serf events among them."""
        out: list[SerfEvent] = []
        for event in self.stack.take_events():
            if isinstance(event, SERF_EVENTS):
                out.append(event)
            elif isinstance(event, ENGINE_EVENTS):
                self.engine_events.append(event)
        self.events.extend(out)
        return out

    def feed(self, *messages: wire.Message, source: Address = RELAY) -> list[SerfEvent]:
        """Deliver memberlist messages to the engine, as one packet from ``source``."""
        packet = wire.encode_packet([wire.encode(m) for m in messages], self.engine.wire_options)
        self.stack.receive_datagram(packet, source, self.now)
        return self.pump()

    def add_peer(
        self, name: str, index: int, tags: Mapping[str, str] | None = None, vsn: bytes = VSN
    ) -> None:
        """``name`` introduces itself."""
        self.feed(peer_alive(name, index, tags, vsn), source=address_of(index))

    def fail(self, name: str) -> None:
        """Another member declares ``name`` dead (what a crash ends in)."""
        member = self.engine.member(name)
        assert member is not None
        self.feed(wire.Dead(incarnation=member.incarnation, node=name, from_node="someone"))

    def depart(self, name: str) -> None:
        """``name`` announces its own (memberlist) leave."""
        member = self.engine.member(name)
        assert member is not None
        self.feed(wire.Dead(incarnation=member.incarnation, node=name, from_node=name))

    def receive(self, message: msg.SerfMessage) -> list[SerfEvent]:
        """A Serf message arrives as a memberlist user message."""
        return self.receive_raw(msg.encode_serf(message))

    def receive_raw(self, payload: bytes) -> list[SerfEvent]:
        """A Serf message arrives, as the engine hands one over."""
        self.stack.engine.timers.now = max(self.stack.engine.timers.now, self.now)
        self.serf.notify(UserMessage(payload, ("10.9.9.9", 1)))
        return self.pump()

    def at(self, now: float) -> list[SerfEvent]:
        """Move to ``now`` and run every timer due by then."""
        self.now = now
        self.stack.tick(now)
        return self.pump()

    # ------------------------------------------------------------------ outputs

    def member(self, name: str) -> SerfMember:
        found = [m for m in self.serf.members() if m.name == name]
        assert found, f"{name} is not a member: {[m.name for m in self.serf.members()]}"
        return found[0]

    def status(self, name: str) -> Status:
        return self.member(name).status

    def sent_memberlist(self) -> list[tuple[Address, wire.Message]]:
        """Every memberlist message in the datagrams the engine was asked to send, taken."""
        return [
            (address, message)
            for address, data in self.engine.take_datagrams()
            for message in wire.decode_packet(data, self.engine.wire_options)
        ]

    def sent(self) -> list[tuple[Address, msg.SerfMessage]]:
        """The Serf messages in the datagrams the engine was asked to send, taken."""
        return serf_messages(self.sent_memberlist())

    def run(self, seconds: float) -> list[tuple[Address, wire.Message]]:
        """Run the engine's timers (gossip) and the layer's for ``seconds``; every memberlist
        message sent meanwhile, in order."""
        out = self.sent_memberlist()
        end = self.now + seconds
        while True:
            deadline = self.stack.next_deadline()
            if deadline is None or deadline > end:
                break
            self.now = deadline
            self.stack.tick(deadline)
            self.pump()
            out += self.sent_memberlist()
        self.now = end
        return out

    def gossip(self, seconds: float = 3.0) -> list[tuple[Address, msg.SerfMessage]]:
        """The Serf messages sent while running for ``seconds``."""
        return serf_messages(self.run(seconds))

    def broadcast_copies(self, seconds: float = 3.0) -> list[msg.SerfMessage]:
        """Every copy of every Serf broadcast gossiped over ``seconds``."""
        return [message for _, message in self.gossip(seconds)]


def serf_messages(
    messages: list[tuple[Address, wire.Message]],
) -> list[tuple[Address, msg.SerfMessage]]:
    """The Serf messages among memberlist messages (the payloads of user messages)."""
    return [
        (address, msg.decode_serf(message.payload))
        for address, message in messages
        if isinstance(message, wire.User)
    ]


# ---------------------------------------------------------------------------------------------
# A simulated cluster of Serf layers.


@dataclass
class SerfCluster(Cluster):
    """The engine harness's virtual network, with a Serf layer in every member."""

    def add_serf(self, name: str, tags: Mapping[str, str] | None = None) -> Serf:
        self.add(name, tags=tags or {})
        return self.serf(name)

    def serf(self, name: str) -> Serf:
        serf = self.stack(name).serf
        assert serf is not None
        return serf

    def join(self, name: str, seed: str) -> None:
        """``name`` joins through ``seed`` (and announces itself once the join is done)."""
        stack = self.stack(name)
        stack.join([self.by_name(seed).local_member.address], self.now)
        self._flush(stack)

    def crash(self, name: str) -> None:
        self.down.add(self.by_name(name).local_member.address)

    def statuses(self, name: str) -> dict[str, str]:
        return {m.name: m.status.value for m in self.serf(name).members()}

    def taken(self, name: str) -> list[SerfEvent]:
        """The Serf events ``name`` saw since the last call."""
        events = self.events[name]
        self.events[name] = [e for e in events if not isinstance(e, SERF_EVENTS)]
        return [e for e in events if isinstance(e, SERF_EVENTS)]
