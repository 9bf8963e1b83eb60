"""Helpers to drive the Serf layer by hand: one layer over one engine (no sockets, no real
time), and a simulated cluster of Serf layers on the engine harness's virtual network."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from swim import wire
from swim.config import Config
from swim.engine import Engine
from swim.events import Event, UserMessage
from swim.members import Address
from swim.serf.layer import Serf, SerfEvent, SerfMember, Status
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
    """A Serf layer named ``me`` at :data:`ME` over its own engine, driven by hand.

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
    ) -> None:
        self.now = now
        self.engine = Engine(
            name,
            address,
            config,
            random.Random(seed),
            meta=msg.encode_tags(tags or {}),
            keyring=keyring,
            now=now,
            local_state=self._local_state,
            merge_remote_state=self._merge_remote_state,
        )
        self.serf = Serf(
            self.engine,
            tags or {},
            random.Random(seed + 1),
            now,
            reconnect_timeout=reconnect_timeout,
            tombstone_timeout=tombstone_timeout,
            event_size_limit=event_size_limit,
        )
        self.events: list[SerfEvent] = []
        self.engine_events: list[Event] = []
        for index in range(peers):
            self.add_peer(f"p{index}", index)
        self.engine.take_datagrams()

    def _local_state(self, join: bool) -> bytes:
        return self.serf.local_state(join)

    def _merge_remote_state(self, data: bytes, join: bool) -> None:
        self.serf.merge_remote_state(data, join)

    # ------------------------------------------------------------------ inputs

    def pump(self) -> list[SerfEvent]:
        """Hand the engine's events to the layer; the Serf events that came out."""
        while True:
            events = self.engine.take_events()
            if not events:
                break
            for event in events:
                self.serf.handle(event, self.now)
            self.engine_events.extend(events)
        out = self.serf.take_events()
        self.events.extend(out)
        return out

    def feed(self, *messages: wire.Message, source: Address = RELAY) -> list[SerfEvent]:
        """Deliver memberlist messages to the engine, as one packet from ``source``."""
        packet = wire.encode_packet([wire.encode(m) for m in messages], self.engine.wire_options)
        self.engine.receive_datagram(packet, source, self.now)
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
        self.serf.handle(UserMessage(payload, ("10.9.9.9", 1)), self.now)
        return self.pump()

    def at(self, now: float) -> list[SerfEvent]:
        """Move to ``now`` and run the layer's timers (not the engine's)."""
        self.now = now
        self.serf.tick(now)
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
            deadline = min(
                (
                    d
                    for d in (self.engine.next_deadline(), self.serf.next_deadline())
                    if d is not None
                ),
                default=math.inf,
            )
            if deadline > end:
                break
            self.now = deadline
            self.engine.tick(deadline)
            self.serf.tick(deadline)
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
    """The engine harness's virtual network, with a Serf layer over every engine."""

    serfs: dict[str, Serf] = field(default_factory=dict)
    serf_events: dict[str, list[SerfEvent]] = field(default_factory=dict)

    def add_serf(self, name: str, tags: Mapping[str, str] | None = None) -> Serf:
        holder: list[Serf] = []

        def local_state(join: bool) -> bytes:
            return holder[0].local_state(join)

        def merge_remote_state(data: bytes, join: bool) -> None:
            holder[0].merge_remote_state(data, join)

        engine = self.add(
            name,
            meta=msg.encode_tags(tags or {}),
            local_state=local_state,
            merge_remote_state=merge_remote_state,
        )
        serf = Serf(engine, tags or {}, random.Random(f"{self.seed}-serf-{name}"), self.now)
        holder.append(serf)
        self.serfs[name] = serf
        self.serf_events[name] = []
        return serf

    def join(self, name: str, seed: str) -> None:
        """``name`` joins through ``seed``, and announces itself once the join is done."""
        engine = self.by_name(name)
        engine.join([self.by_name(seed).local_member.address], self.now)
        self._flush(engine)
        self.run_for(0.1)
        self.serfs[name].joined(self.now)
        self._flush(engine)

    def flush(self, name: str) -> None:
        """Carry out what ``name``'s engine and layer were just asked to do."""
        self._flush(self.by_name(name))

    def crash(self, name: str) -> None:
        self.down.add(self.by_name(name).local_member.address)

    def _flush(self, engine: Engine) -> None:
        serf = self.serfs.get(engine.name)
        if serf is not None:
            while events := engine.take_events():
                for event in events:
                    serf.handle(event, self.now)
                self.events[engine.name].extend(events)
            self.serf_events[engine.name].extend(serf.take_events())
        super()._flush(engine)

    def run_until(self, end: float) -> None:
        """Run engines and Serf layers alike until ``end``."""
        while True:
            live = [
                (name, serf)
                for name, serf in self.serfs.items()
                if self.by_name(name).local_member.address not in self.down
            ]
            upcoming = [d for _, serf in live if (d := serf.next_deadline()) is not None]
            stop = max(self.now, min([end, *upcoming]))
            super().run_until(stop)
            for name, serf in live:
                deadline = serf.next_deadline()
                if deadline is not None and deadline <= self.now:
                    serf.tick(self.now)
                    self._flush(self.by_name(name))
            if stop >= end:
                return

    def statuses(self, name: str) -> dict[str, str]:
        return {m.name: m.status.value for m in self.serfs[name].members()}

    def taken(self, name: str) -> list[SerfEvent]:
        out, self.serf_events[name] = self.serf_events[name], []
        return out
