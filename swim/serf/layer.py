"""The Serf layer: what makes a shoal node a first-class member of a Serf cluster.

Like the engine it sits on, :class:`Serf` does no I/O and reads no clock: it turns the engine's
events into Serf's (member status with intents, user events, queries), answers Serf's internal
queries, and sends through the engine.  It follows Serf 0.9.4 (``serf.go``, ``delegate.go``,
``query.go``, ``internal_query.go``): Lamport clocks for members, events and queries; join and
leave intents so that a graceful leave reads ``left`` and a stray leave intent is refuted;
events and queries de-duplicated in 512-slot rings and re-gossiped by every node that sees
them first; the push-pull state that carries clocks, left members and recent events.
"""

from __future__ import annotations

import base64
import enum
import logging
import math
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Generic, TypedDict, TypeVar, Unpack

from swim import wire
from swim.engine import Engine, MetadataTooLarge
from swim.events import (
    Event,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberUpdated,
    UserMessage,
)
from swim.logs import bump
from swim.members import Address, Member, MemberState, ip_bytes, ip_text, name_problem
from swim.serf.coordinate import CoordinateClient, CoordinateRejected
from swim.timers import TimerKind
from swim.wire import serf as msg
from swim.wire.crypto import KeyringError
from swim.wire.serf import Coordinate

log = logging.getLogger("swim.serf")

RING_SIZE = 512
"""Recent user events and queries remembered for de-duplication (Serf's buffer sizes)."""
MAX_SAME_LTIME = 64
"""Distinct events (or queries) remembered at one Lamport time; Serf keeps any number, but
concurrent senders give a handful, and more only make de-duplication quadratic."""
RECENT_EVENTS_BUDGET = 1 << 20
"""Bytes of user events (names and payloads) remembered at once for de-duplication and the
push-pull state; past it new events are refused until older ones age out of the ring."""
MAX_INTENTS = 4096
"""Intents about members not yet in the view that are remembered at once."""
MAX_RECEIVED_QUERIES = RING_SIZE
"""Queries received that are remembered until their deadline, so that each is answered once at
most; past it the oldest is forgotten (queries time out within seconds)."""
RELAY_SIZE_LIMIT = msg.QUERY_RESPONSE_SIZE_LIMIT + 512
"""A relayed response: the response and where it goes."""
RECENT_INTENT_TIMEOUT = 300.0
"""How long an intent about an unknown member is kept for when it shows up."""
REAP_INTERVAL = 15.0
BROADCAST_TIMEOUT = 5.0
LEAVE_PROPAGATE_DELAY = 1.0
QUERY_TIMEOUT_MULT = 16
AGENT_COALESCE_PERIOD = 3.0
AGENT_QUIESCENT_PERIOD = 1.0
"""A Serf agent coalesces user events that allow it: the newest of a burst, 3 s at most, once
1 s passes without another (the Serf library's default is not to coalesce)."""
INTERNAL_PREFIX = "_serf_"


class Status(enum.Enum):
    """A member's status in Serf's eyes (``serf members`` prints these)."""

    ALIVE = "alive"
    LEAVING = "leaving"
    LEFT = "left"
    FAILED = "failed"


@dataclass(slots=True)
class SerfMember:
    """One member with its tags and Serf status."""

    name: str
    address: Address
    tags: dict[str, str]
    status: Status
    vsn: bytes
    status_ltime: int = 0
    leave_time: float = 0.0


@dataclass(frozen=True, slots=True)
class SerfUserEvent:
    """A Serf user event, delivered once per node however many copies arrive."""

    ltime: int
    name: str
    payload: bytes
    coalesce: bool


@dataclass(frozen=True, slots=True)
class SerfQuery:
    """A query this node should answer with :meth:`Serf.respond`, once, before ``deadline``."""

    ltime: int
    id: int
    name: str
    payload: bytes
    source_node: str
    address: Address
    relay_factor: int
    deadline: float
    serial: int
    """This node's number for the query, unique while it runs: an agent's RPC clients answer
    the query by it (see :meth:`Serf.received_query`)."""


@dataclass(frozen=True, slots=True)
class QueryAck:
    """``node`` received our query ``query_id``."""

    query_id: int
    node: str


@dataclass(frozen=True, slots=True)
class QueryAnswer:
    """``node`` answered our query ``query_id``."""

    query_id: int
    node: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class QueryDone:
    """Our query ``query_id`` timed out: no more acks or answers will be delivered."""

    query_id: int


@dataclass(frozen=True, slots=True)
class MemberReaped:
    """A failed or left member was forgotten after its retention time."""

    name: str
    member: SerfMember | None = field(default=None, compare=False)
    """The member as it was last known (Serf's reap event carries it); not compared."""


@dataclass(frozen=True, slots=True)
class KeyringChanged:
    """A key query changed the keyring: the runtime should write the keyring file."""

    keys: tuple[bytes, ...]


SerfEvent = (
    SerfUserEvent | SerfQuery | QueryAck | QueryAnswer | QueryDone | MemberReaped | KeyringChanged
)


class _Clock:
    """A Lamport clock (``lamport.go``)."""

    __slots__ = ("time",)

    def __init__(self) -> None:
        self.time = 1

    def witness(self, value: int) -> None:
        self.time = max(self.time, value + 1)


T = TypeVar("T")


class Sighting(enum.Enum):
    """What the ring made of an event or query."""

    NEW = "new"
    SEEN = "seen"
    """Seen already, or too old to tell."""
    REFUSED = "refused"
    """New, but the ring has no room for it: dropped, as it could not be de-duplicated."""


class _Recent(Generic[T]):
    """What was seen at each recent Lamport time, in Serf's 512-slot ring: so that each user
    event and query is delivered (and re-gossiped) once, however many copies arrive.  Bounded:
    :data:`MAX_SAME_LTIME` items a slot, and ``budget`` in all as ``weight`` counts them."""

    def __init__(self, weight: Callable[[T], int] = lambda item: 1, budget: int = 1 << 62):
        self.slots: list[tuple[int, list[T]] | None] = [None] * RING_SIZE
        self._weight = weight
        self._budget = budget
        self._held = 0

    def record(self, ltime: int, item: T, clock: int) -> Sighting:
        """Record ``item`` at ``ltime``, unless it was seen already or is too old to tell
        (more than the ring's length behind ``clock``), or there is no room for it."""
        if clock > RING_SIZE and ltime < clock - RING_SIZE:
            return Sighting.SEEN
        index = ltime % RING_SIZE
        slot = self.slots[index]
        if slot is not None and slot[0] == ltime:
            if item in slot[1]:
                return Sighting.SEEN
            items = slot[1]
        else:
            items = []
        weight = self._weight(item)
        freed = self._weigh(slot) if slot is not None and slot[1] is not items else 0
        if self._held - freed + weight > self._budget:
            self._forget_older_than(clock - RING_SIZE)
            slot = self.slots[index]
            freed = self._weigh(slot) if slot is not None and slot[1] is not items else 0
        if len(items) >= MAX_SAME_LTIME or self._held - freed + weight > self._budget:
            return Sighting.REFUSED
        if slot is None or slot[1] is not items:
            self.slots[index] = (ltime, items)
            self._held -= freed
        items.append(item)
        self._held += weight
        return Sighting.NEW

    def _weigh(self, slot: tuple[int, list[T]]) -> int:
        return sum(map(self._weight, slot[1]))

    def _forget_older_than(self, ltime: int) -> None:
        """Free the slots too old to be told apart any more (their room counts otherwise)."""
        for index, slot in enumerate(self.slots):
            if slot is not None and slot[0] < ltime:
                self._held -= self._weigh(slot)
                self.slots[index] = None


@dataclass(frozen=True, slots=True)
class SerfStatistics:
    """What the Serf layer refused, since it started (see :meth:`Serf.statistics`)."""

    messages_dropped: int = 0
    """Serf messages that were malformed or over Serf's size limits."""
    events_refused: int = 0
    """New user events or queries the de-duplication ring had no room for."""
    intents_refused: int = 0
    """Intents about unknown members past :data:`MAX_INTENTS`, or with impossible names."""
    coordinates_rejected: int = 0
    """Ack payloads whose coordinate could not be read or used (wrong version, malformed,
    NaN or infinite, wrong dimensions, implausibly large), or with an impossible RTT."""
    coordinate_resets: int = 0
    """Times our own coordinate became invalid and started over (Serf's stat of that name)."""


@dataclass(slots=True)
class _OpenQuery:
    id: int
    ltime: int
    deadline: float
    acks: set[str] = field(default_factory=set)
    answers: set[str] = field(default_factory=set)


class SerfError(Exception):
    """A Serf operation was refused; the message says why."""


class QueryOptions(TypedDict, total=False):
    """Which members a query asks, and how (the keywords of every ``query`` call)."""

    nodes: Sequence[str]
    """Only these members answer (none: every member)."""
    tags: Mapping[str, str]
    """Only members whose tag matches each regular expression answer."""
    request_ack: bool
    """Ask each member that receives the query to acknowledge it."""
    relay_factor: int
    """Members that also relay each answer back (0 to 255)."""
    timeout: float | None
    """How long answers are collected (Serf's default, by cluster size, when None)."""


class Serf:
    """Serf on top of one engine: it attaches itself as the engine's delegate (hearing its
    events as they happen and adding its state to push-pulls) and schedules on the engine's
    timers, so driving the engine drives it too.  Take what it produced with
    :meth:`take_events`."""

    def __init__(
        self,
        engine: Engine,
        tags: Mapping[str, str],
        rng: random.Random,
        *,
        reconnect_timeout: float = 24 * 3600.0,
        tombstone_timeout: float = 24 * 3600.0,
        event_size_limit: int = msg.DEFAULT_USER_EVENT_SIZE_LIMIT,
        coalesce_period: float = 0.0,
        quiescent_period: float = 0.0,
        disable_coordinates: bool = False,
    ) -> None:
        self.engine = engine
        self._coalesce_period = coalesce_period
        self._quiescent_period = quiescent_period
        self._coalesced: dict[str, SerfUserEvent] = {}
        self.ignore_old_events = False
        """Set while joining without replay (``serf join`` without ``-replay``), so that the
        cluster's past user events are not delivered again to a joining node."""
        self._coalesce_until = self._quiet_until = 0.0
        self._rng = rng
        self._timers = engine.timers
        self.tags = dict(tags)
        self._reconnect_timeout = reconnect_timeout
        self._tombstone_timeout = tombstone_timeout
        self._event_size_limit = event_size_limit
        self.clock, self.event_clock, self.query_clock = _Clock(), _Clock(), _Clock()
        self._event_min_time = 0
        self._query_min_time = 0
        self._members: dict[str, SerfMember] = {}
        self._departed: dict[str, None] = {}  # failed and left members, first departed first
        self._intents: dict[str, tuple[str, int, float]] = {}  # name -> (kind, ltime, when)
        self._events_seen = _Recent[tuple[str, bytes]](
            lambda event: len(event[0]) + len(event[1]), RECENT_EVENTS_BUDGET
        )
        self._queries_seen = _Recent[int]()
        self._statistics = SerfStatistics()
        self._inbound_limits: dict[int, int] = {
            msg.SerfMessageType.USER_EVENT: msg.USER_EVENT_SIZE_LIMIT,
            msg.SerfMessageType.QUERY: msg.QUERY_SIZE_LIMIT,
            msg.SerfMessageType.QUERY_RESPONSE: msg.QUERY_RESPONSE_SIZE_LIMIT,
            msg.SerfMessageType.RELAY: RELAY_SIZE_LIMIT,
        }
        self._open_queries: dict[int, _OpenQuery] = {}
        self._received: dict[int, tuple[SerfQuery, bool]] = {}
        """Queries received, by serial, the oldest first, until their deadline; and whether
        each was answered."""
        self._serial = 1
        """The next query's serial (none is 0, an absent ID's value on the RPC wire)."""
        self._leaving = False
        self._out: list[SerfEvent] = []
        self._vivaldi: CoordinateClient | None = None
        self._coordinates: dict[str, Coordinate] = {}
        """The last coordinate each member's ack carried, and ours (Serf's cache)."""
        self._ack_payload = b""
        if not disable_coordinates:
            # a stream of its own (seeded by the name): the engine's draws stay as they were
            self._vivaldi = CoordinateClient(random.Random(f"vivaldi {engine.name}"))
            self._coordinates[engine.name] = self._vivaldi.coordinate
            self._ack_payload = msg.encode_coordinate(self._vivaldi.coordinate)
        self._schedule(self._now + REAP_INTERVAL, TimerKind.SERF_REAP, self._reap)
        self._on_node_join(engine.local_member)
        engine.attach(self)

    # ------------------------------------------------------------------ the engine's delegate

    @property
    def _now(self) -> float:
        return self._timers.now

    def _advance(self, now: float) -> None:
        self._timers.now = max(self._timers.now, now)

    def statistics(self) -> SerfStatistics:
        """The layer's counters as they stand now."""
        return self._statistics

    def take_events(self) -> list[SerfEvent]:
        """Serf's own events since the last call; the list is handed over and cleared."""
        out, self._out = self._out, []
        return out

    def notify(self, event: Event) -> None:
        """Hear one engine event as it happens: membership changes and user messages."""
        if isinstance(event, MemberJoined):
            self._on_node_join(event.member)
        elif isinstance(event, MemberUpdated):
            known = self._members.get(event.member.name)
            if known is not None:
                known.address, known.vsn = event.member.address, event.member.vsn
                known.tags = _tags(event.member.meta)
        elif isinstance(event, MemberLeft | MemberFailed):
            self._on_node_leave(event.member)
        elif isinstance(event, UserMessage):
            self._on_message(event.payload)

    def local_state(self, join: bool) -> bytes:
        """Serf's push-pull state: clocks, status times, left members, recent events."""
        events = tuple(
            None
            if slot is None
            else msg.RecentEvents(slot[0], tuple(msg.RecentEvent(n, p) for n, p in slot[1]))
            for slot in self._events_seen.slots
        )
        state = msg.SerfPushPull(
            ltime=self.clock.time,
            status_ltimes={name: m.status_ltime for name, m in self._members.items()},
            left_members=tuple(n for n, m in self._members.items() if m.status is Status.LEFT),
            event_ltime=self.event_clock.time,
            events=events,
            query_ltime=self.query_clock.time,
        )
        return msg.encode_serf(state)

    def merge_remote_state(self, data: bytes, join: bool) -> None:
        """Merge a peer's push-pull state (``delegate.go MergeRemoteState``)."""
        try:
            state = msg.decode_serf(data)
        except wire.DecodeError as exc:
            log.debug("bad Serf push-pull state: %s", exc.reason)
            return
        if not isinstance(state, msg.SerfPushPull):
            return
        for clock, value in (
            (self.clock, state.ltime),
            (self.event_clock, state.event_ltime),
            (self.query_clock, state.query_ltime),
        ):
            if value > 0:
                clock.witness(value - 1)
        left = set(state.left_members)
        for name in state.left_members:
            self._on_leave_intent(msg.LeaveIntent(state.status_ltimes.get(name, 0) + 1, name))
        for name, ltime in state.status_ltimes.items():
            if name not in left:
                self._on_join_intent(msg.JoinIntent(ltime, name))
        if join and self.ignore_old_events:
            # a joiner that does not replay: events older than the cluster's are not news
            self._event_min_time = max(self._event_min_time, state.event_ltime)
        for slot in state.events:
            if slot is not None:
                for event in slot.events:
                    if len(event.name) + len(event.payload) > msg.USER_EVENT_SIZE_LIMIT:
                        self._drop("a user event in a push-pull state is over Serf's limit")
                        continue
                    self._on_user_event(msg.UserEvent(slot.ltime, event.name, event.payload))

    def ack_payload(self) -> bytes:
        """Our coordinate after Serf's version byte, for acks (none when disabled)."""
        return self._ack_payload

    def ping_completed(self, name: str, rtt: float, payload: bytes) -> None:
        """Update our coordinate from a direct ping's RTT and the coordinate its ack carried
        (``ping_delegate.go NotifyPingComplete``); bad payloads are dropped and counted."""
        vivaldi = self._vivaldi
        if vivaldi is None or not payload or name not in self._members:
            return  # a member that sends no coordinate (not Serf) simply gets none
        try:
            theirs = msg.decode_coordinate(payload)
            resets = vivaldi.resets
            mine = vivaldi.update(name, theirs, rtt)
        except (wire.DecodeError, CoordinateRejected) as exc:
            self._statistics = bump(self._statistics, "coordinates_rejected")
            log.debug("rejected the coordinate in %s's ack: %s", name, exc)
            return
        if vivaldi.resets != resets:
            self._statistics = bump(self._statistics, "coordinate_resets")
        self._coordinates[name] = theirs
        self._coordinates[self.engine.name] = mine
        self._ack_payload = msg.encode_coordinate(mine)

    # ------------------------------------------------------------------ commands

    def coordinate(self, name: str) -> Coordinate | None:
        """The last coordinate member ``name`` sent us (ours for our name), or None: none
        came yet, or coordinates are disabled (Serf's ``GetCachedCoordinate``)."""
        return self._coordinates.get(name)

    def coordinates(self) -> Mapping[str, Coordinate]:
        """Every coordinate held, ours included, by member name (a read-only view)."""
        return MappingProxyType(self._coordinates)

    def members(self) -> list[SerfMember]:
        return list(self._members.values())

    def joined(self, now: float) -> None:
        """Announce ourselves after a successful join (Serf's ``broadcastJoin``)."""
        self._advance(now)
        if self._leaving:  # joining again after a leave, as the engine allows
            self._leaving = False
            me = self._members[self.engine.name]
            me.status, me.leave_time = Status.ALIVE, 0.0
        intent = msg.JoinIntent(self.clock.time, self.engine.name)
        self.clock.witness(intent.ltime)
        self._on_join_intent(intent)
        self._broadcast(msg.encode_serf(intent))

    def leave(self, now: float, timeout: float = BROADCAST_TIMEOUT) -> None:
        """Leave as Serf does: a leave intent first, so that others record ``left`` rather
        than ``failed``; then the engine's leave once the intent is out (or ``timeout``)."""
        self._advance(now)
        if self._leaving:
            return
        self._leaving = True
        intent = msg.LeaveIntent(self.clock.time, self.engine.name)
        self.clock.time += 1
        self._on_leave_intent(intent)
        started = [False]

        def leave_engine() -> None:
            if not started[0]:
                started[0] = True
                self.engine.leave(self._now, timeout)

        if self.engine.alive_count() > 1:
            self._broadcast(msg.encode_serf(intent), on_done=leave_engine)
            self._schedule(now + timeout, TimerKind.SERF_LEAVE, leave_engine)
        else:
            leave_engine()

    def user_event(self, name: str, payload: bytes, coalesce: bool, now: float) -> None:
        """Send a user event to every member; raises :class:`SerfError` past the size limit."""
        self._advance(now)
        size = len(name.encode()) + len(payload)
        limit = min(self._event_size_limit, msg.USER_EVENT_SIZE_LIMIT)
        if size > limit:
            raise SerfError(f"user event is {size} bytes, over the limit of {limit} bytes")
        event = msg.UserEvent(self.event_clock.time, name, payload, coalesce)
        raw = msg.encode_serf(event)
        if len(raw) > limit:
            raise SerfError(f"encoded user event is {len(raw)} bytes, over the limit of {limit}")
        self.event_clock.time += 1
        self._on_user_event(event)
        self._broadcast(raw)

    def set_tags(self, tags: Mapping[str, str], now: float) -> None:
        """Advertise new tags (they travel in the node's metadata); raises
        :class:`~swim.engine.MetadataTooLarge` when they do not fit."""
        try:
            meta = msg.encode_tags(tags, self.engine.config.meta_max_size)
        except wire.EncodeError as exc:
            raise MetadataTooLarge(
                f"{exc}; send fewer tags or raise Config.meta_max_size"
            ) from None
        self.engine.update_meta(meta, now)
        self.tags = dict(tags)

    def force_leave(self, name: str, prune: bool, now: float) -> None:
        """Tell the cluster a failed member has left for good (``serf force-leave``)."""
        self._advance(now)
        member = self._members.get(name)
        if member is None:
            raise SerfError(f"no member named {name!r}")
        intent = msg.LeaveIntent(self.clock.time, name, prune)
        self.clock.time += 1
        self._on_leave_intent(intent)
        self._broadcast(msg.encode_serf(intent))

    def default_query_timeout(self) -> float:
        """``GossipInterval * 16 * ceil(log10(n + 1))`` over the live members, as Serf
        computes it."""
        scale = math.ceil(math.log10(self.engine.live_count() + 1))
        return self.engine.config.gossip_interval * QUERY_TIMEOUT_MULT * scale

    def query(self, name: str, payload: bytes, now: float, **options: Unpack[QueryOptions]) -> int:
        """Ask every member (or those the filters pick); acks and answers arrive as
        :class:`QueryAck` and :class:`QueryAnswer` events until :class:`QueryDone`."""
        self._advance(now)
        timeout = options.get("timeout")
        timeout = self.default_query_timeout() if timeout is None else timeout
        relay_factor = options.get("relay_factor", 0)
        if not 0 <= relay_factor <= 255:
            raise SerfError(f"relay_factor={relay_factor} must be between 0 and 255")
        filters = []
        nodes = options.get("nodes", ())
        if nodes:
            filters.append(msg.encode_node_filter(nodes))
        for tag, expr in options.get("tags", {}).items():
            filters.append(msg.encode_tag_filter(tag, expr))
        me = self.engine.local_member
        query = msg.Query(
            ltime=self.query_clock.time,
            id=self._rng.getrandbits(31),
            addr=ip_bytes(me.address[0]),
            port=me.address[1],
            source_node=me.name,
            name=name,
            payload=payload,
            filters=tuple(filters),
            flags=msg.QUERY_FLAG_ACK if options.get("request_ack", False) else 0,
            relay_factor=relay_factor,
            timeout_ns=int(timeout * 1e9),
        )
        raw = msg.encode_serf(query)
        if len(raw) > msg.QUERY_SIZE_LIMIT:
            raise SerfError(f"query is {len(raw)} bytes, over the limit of {msg.QUERY_SIZE_LIMIT}")
        self.query_clock.time += 1
        open_query = _OpenQuery(query.id, query.ltime, now + timeout)
        self._open_queries[query.ltime] = open_query
        self._schedule(
            now + timeout, TimerKind.SERF_QUERY, lambda: self._finish_query(query.ltime), name
        )
        self._on_query(query)
        self._broadcast(raw)
        return query.id

    def respond(self, query: SerfQuery, payload: bytes, now: float) -> None:
        """Answer ``query``, once: raises :class:`SerfError` when the answer is too large, the
        query timed out, or it was answered already."""
        self._advance(now)
        answer = msg.QueryResponse(query.ltime, query.id, self.engine.name, 0, payload)
        raw = msg.encode_serf(answer)
        if len(raw) > msg.QUERY_RESPONSE_SIZE_LIMIT:
            raise SerfError(
                f"the response is {len(payload)} bytes, {len(raw)} with its header, over "
                f"Serf's limit of {msg.QUERY_RESPONSE_SIZE_LIMIT} bytes for a response"
            )
        if now > query.deadline:
            raise SerfError(f"the query {query.name!r} timed out; it can no longer be answered")
        received = self._received.get(query.serial)
        if received is None:
            raise SerfError(
                f"the query {query.name!r} was forgotten unanswered: over "
                f"{MAX_RECEIVED_QUERIES} newer ones came before its deadline"
            )
        if received[1]:
            raise SerfError(f"the query {query.name!r} was answered already; Serf takes one answer")
        self._received[query.serial] = (query, True)
        self._send_response(query.address, query.source_node, query.relay_factor, raw)

    def received_query(self, serial: int) -> SerfQuery | None:
        """The query numbered ``serial`` (:attr:`SerfQuery.serial`), answered or not, until its
        deadline passes (or :data:`MAX_RECEIVED_QUERIES` newer ones come)."""
        received = self._received.get(serial)
        return None if received is None or received[0].deadline < self._now else received[0]

    def _remember(self, query: SerfQuery) -> None:
        """Remember ``query`` until its deadline, to answer it once; forget those past their
        deadline from the oldest on, and the oldest beyond :data:`MAX_RECEIVED_QUERIES`."""
        received = self._received
        while received:
            serial, (oldest, _) = next(iter(received.items()))
            if oldest.deadline >= self._now and len(received) < MAX_RECEIVED_QUERIES:
                break
            del received[serial]
        received[query.serial] = (query, False)

    # ------------------------------------------------------------------ members and intents

    def _on_node_join(self, member: Member) -> None:
        """``handleNodeJoin``: a new member may already have an intent waiting for it."""
        known = self._members.get(member.name)
        self._departed.pop(member.name, None)
        if known is None:
            if len(self._members) >= self.engine.config.max_members:
                self._reap_longest_departed()
            known = SerfMember(member.name, member.address, {}, Status.ALIVE, member.vsn)
            intent = self._intents.pop(member.name, None)
            if intent is not None:
                kind, ltime, _ = intent
                known.status_ltime = ltime
                if kind == "leave":
                    known.status = Status.LEAVING
            self._members[member.name] = known
        else:
            known.status = Status.ALIVE
            known.leave_time = 0.0
        known.address, known.vsn, known.tags = member.address, member.vsn, _tags(member.meta)

    def _on_node_leave(self, member: Member) -> None:
        """``handleNodeLeave``; a member the engine saw leave gracefully reads ``left`` even
        without a Serf leave intent (Serf would say ``failed``)."""
        known = self._members.get(member.name)
        if known is None:
            return
        if known.status is Status.LEAVING or member.state is MemberState.LEFT:
            known.status = Status.LEFT
        elif known.status is Status.ALIVE:
            known.status = Status.FAILED
        known.leave_time = self._now
        if member.name != self.engine.name:  # we never forget ourselves: we may join again
            self._departed.pop(member.name, None)
            self._departed[member.name] = None

    def _on_join_intent(self, intent: msg.JoinIntent) -> bool:
        self.clock.witness(intent.ltime)
        member = self._members.get(intent.node)
        if member is None:
            return self._remember_intent(intent.node, "join", intent.ltime)
        if intent.ltime <= member.status_ltime:
            return False
        member.status_ltime = intent.ltime
        if member.status is Status.LEAVING:
            member.status = Status.ALIVE
        return True

    def _on_leave_intent(self, intent: msg.LeaveIntent) -> bool:
        self.clock.witness(intent.ltime)
        member = self._members.get(intent.node)
        if member is None:
            return self._remember_intent(intent.node, "leave", intent.ltime)
        if intent.ltime <= member.status_ltime:
            return False
        if intent.node == self.engine.name and not self._leaving:
            # a stray leave intent about us: refute it with a newer join intent
            self.joined(self._now)
            return False
        member.status_ltime = intent.ltime
        if member.status is Status.ALIVE:
            member.status = Status.LEAVING
        elif member.status is Status.FAILED:
            member.status = Status.LEFT
        if intent.prune and member.status in (Status.LEFT, Status.LEAVING):
            self._forget(member.name)
        return True

    def _remember_intent(self, name: str, kind: str, ltime: int) -> bool:
        known = self._intents.get(name)
        if known is not None and known[1] >= ltime:
            return False
        if known is None and (len(self._intents) >= MAX_INTENTS or name_problem(name)):
            self._statistics = bump(self._statistics, "intents_refused")
            return False
        self._intents[name] = (kind, ltime, self._now)
        self._schedule(
            self._now + RECENT_INTENT_TIMEOUT,
            TimerKind.SERF_INTENT,
            lambda: self._expire_intent(name),
            name,
        )
        return True

    def _expire_intent(self, name: str) -> None:
        known = self._intents.get(name)
        if known is not None and self._now - known[2] >= RECENT_INTENT_TIMEOUT:
            del self._intents[name]

    def _reap_longest_departed(self) -> None:
        """Make room for a member at ``max_members``: forget the one that failed or left
        first (Serf would keep it for its reconnect or tombstone timeout)."""
        name = next(iter(self._departed), None)
        if name is not None:
            self._forget(name)

    def _forget(self, name: str) -> None:
        member = self._members.pop(name)
        self._departed.pop(name, None)
        self._coordinates.pop(name, None)
        if self._vivaldi is not None:
            self._vivaldi.forget(name)
        self._out.append(MemberReaped(name, member))

    def _reap(self) -> None:
        self._schedule(self._now + REAP_INTERVAL, TimerKind.SERF_REAP, self._reap)
        for name in list(self._members):
            if name == self.engine.name:
                continue  # we never forget ourselves: we may join again
            member = self._members[name]
            limit = {Status.FAILED: self._reconnect_timeout, Status.LEFT: self._tombstone_timeout}
            timeout = limit.get(member.status)
            if timeout is not None and self._now - member.leave_time > timeout:
                self._forget(name)

    # ------------------------------------------------------------------ messages

    def _on_message(self, payload: bytes) -> None:
        """A Serf message arrived (``delegate.go NotifyMsg``); new news is re-gossiped.
        Messages over the sizes Serf sends are dropped unread."""
        if not payload:
            return
        limit = self._inbound_limits.get(payload[0], msg.QUERY_SIZE_LIMIT)
        if len(payload) > limit:
            self._drop(f"a Serf message of type {payload[0]} is {len(payload)} bytes, over {limit}")
            return
        if payload[0] == msg.SerfMessageType.RELAY:
            try:
                relay = msg.decode_relay(payload)
            except wire.DecodeError as exc:
                self._drop(exc.reason)
                return
            if relay.inner[:1] != bytes((msg.SerfMessageType.QUERY_RESPONSE,)):
                self._drop("a relay that does not carry a query response")  # no reflector
                return
            self.engine.send_to((ip_text(relay.dest_addr), relay.dest_port), relay.inner, self._now)
            return
        try:
            message = msg.decode_serf(payload)
        except wire.DecodeError as exc:
            self._drop(exc.reason)
            return
        regossip = False
        if isinstance(message, msg.LeaveIntent):
            regossip = self._on_leave_intent(message)
        elif isinstance(message, msg.JoinIntent):
            regossip = self._on_join_intent(message)
        elif isinstance(message, msg.UserEvent):
            regossip = self._on_user_event(message)
        elif isinstance(message, msg.Query):
            regossip = self._on_query(message)
        elif isinstance(message, msg.QueryResponse):
            self._on_query_response(message)
        if regossip:
            self._broadcast(payload)

    def _drop(self, why: str) -> None:
        self._statistics = bump(self._statistics, "messages_dropped")
        log.debug("dropped a Serf message: %s", why)

    def _on_user_event(self, event: msg.UserEvent) -> bool:
        self.event_clock.witness(event.ltime)
        if event.ltime < self._event_min_time:
            return False
        sighting = self._events_seen.record(
            event.ltime, (event.name, event.payload), self.event_clock.time
        )
        if sighting is Sighting.REFUSED:
            self._statistics = bump(self._statistics, "events_refused")
        if sighting is not Sighting.NEW:
            return False
        delivered = SerfUserEvent(event.ltime, event.name, event.payload, event.coalesce)
        if event.coalesce and self._coalesce_period > 0:
            self._coalesce(delivered)
        else:
            self._out.append(delivered)
        return True

    def _coalesce(self, event: SerfUserEvent) -> None:
        """Serf's user-event coalescing: of the coalescable events with one name that arrive
        together, only the newest is delivered, once ``coalesce_period`` has passed since the
        first or ``quiescent_period`` since the last."""
        if not self._coalesced:
            self._coalesce_until = self._now + self._coalesce_period
        known = self._coalesced.get(event.name)
        if known is None or event.ltime > known.ltime:
            self._coalesced[event.name] = event
        self._quiet_until = self._now + self._quiescent_period
        self._schedule(
            min(self._coalesce_until, self._quiet_until),
            TimerKind.SERF_COALESCE,
            self._flush_coalesced,
            event.name,
        )

    def _flush_coalesced(self) -> None:
        if self._coalesced and self._now >= min(self._coalesce_until, self._quiet_until):
            self._out.extend(self._coalesced.values())
            self._coalesced.clear()

    def _on_query(self, query: msg.Query) -> bool:
        self.query_clock.witness(query.ltime)
        if query.ltime < self._query_min_time:
            return False
        sighting = self._queries_seen.record(query.ltime, query.id, self.query_clock.time)
        if sighting is Sighting.REFUSED:
            self._statistics = bump(self._statistics, "events_refused")
        if sighting is not Sighting.NEW:
            return False
        regossip = not query.flags & msg.QUERY_FLAG_NO_BROADCAST
        if not self._selected(query.filters):
            return regossip
        if len(query.addr) not in (4, 16):
            return regossip
        address = (ip_text(query.addr), query.port)
        if query.flags & msg.QUERY_FLAG_ACK:
            ack = msg.QueryResponse(query.ltime, query.id, self.engine.name, msg.QUERY_FLAG_ACK)
            raw = msg.encode_serf(ack)
            self._send_response(address, query.source_node, query.relay_factor, raw)
        incoming = SerfQuery(
            query.ltime,
            query.id,
            query.name,
            query.payload,
            query.source_node,
            address,
            query.relay_factor,
            self._now + query.timeout_ns / 1e9,
            self._serial,
        )
        self._serial += 1
        self._remember(incoming)
        if query.name.startswith(INTERNAL_PREFIX):
            self._internal_query(incoming)
        else:
            self._out.append(incoming)
        return regossip

    def _selected(self, filters: Sequence[bytes]) -> bool:
        for raw in filters:
            try:
                selector = msg.decode_filter(raw)
            except wire.DecodeError:
                return False
            if isinstance(selector, msg.NodeFilter):
                if self.engine.name not in selector.names:
                    return False
            else:
                try:
                    if re.search(selector.expr, self.tags.get(selector.tag, "")) is None:
                        return False
                except re.error:
                    return False
        return True

    def _on_query_response(self, answer: msg.QueryResponse) -> None:
        query = self._open_queries.get(answer.ltime)
        if query is None or query.id != answer.id or self._now > query.deadline:
            return
        if answer.flags & msg.QUERY_FLAG_ACK:
            if answer.from_node not in query.acks:
                query.acks.add(answer.from_node)
                self._out.append(QueryAck(query.id, answer.from_node))
        elif answer.from_node not in query.answers:
            query.answers.add(answer.from_node)
            self._out.append(QueryAnswer(query.id, answer.from_node, answer.payload))

    def _finish_query(self, ltime: int) -> None:
        query = self._open_queries.pop(ltime, None)
        if query is not None:
            self._out.append(QueryDone(query.id))

    def _send_response(
        self, address: Address, source_node: str, relay_factor: int, raw: bytes
    ) -> None:
        self.engine.send_to(address, raw, self._now)
        if relay_factor:
            alive = [
                m
                for m in self._members.values()
                if m.status is Status.ALIVE and m.name != self.engine.name and m.vsn[1] >= 5
            ]
            if len(self._members) >= relay_factor + 1:
                relayed = msg.encode_relay(ip_bytes(address[0]), address[1], source_node, raw)
                for member in self._rng.sample(alive, min(relay_factor, len(alive))):
                    self.engine.send_to(member.address, relayed, self._now)

    def _internal_query(self, query: SerfQuery) -> None:
        """Serf's own queries: ping (the ack is the answer), name conflicts, keys."""
        kind = query.name[len(INTERNAL_PREFIX) :]
        if kind == "conflict":
            name = query.payload.decode(errors="replace")
            if name == self.engine.name:
                return
            member = self._members.get(name)
            body = None
            if member is not None:
                body = msg.Member(
                    name=member.name,
                    addr=ip_bytes(member.address[0]),
                    port=member.address[1],
                    tags=member.tags,
                    status=msg.MemberStatus[member.status.name],
                    protocol_min=member.vsn[0],
                    protocol_max=member.vsn[1],
                    protocol_cur=member.vsn[2],
                    delegate_min=member.vsn[3],
                    delegate_max=member.vsn[4],
                    delegate_cur=member.vsn[5],
                )
            self._respond_quietly(query, msg.encode_serf(msg.ConflictResponse(body)))
        elif kind in ("install-key", "use-key", "remove-key", "list-keys"):
            self._respond_quietly(query, msg.encode_serf(self._key_query(kind, query.payload)))

    def _key_query(self, kind: str, payload: bytes) -> msg.KeyResponse:
        keyring = self.engine.wire_options.keyring
        if keyring is None:
            empty = "Keyring is empty" if kind == "list-keys" else "No keyring to modify"
            return msg.KeyResponse(False, f"{empty} (encryption not enabled)")
        if kind == "list-keys":
            keys = tuple(base64.b64encode(k).decode() for k in keyring.keys)
            primary = base64.b64encode(keyring.primary_key).decode()
            return msg.KeyResponse(True, "", keys, primary)
        try:
            request = msg.decode_serf(payload)
            if not isinstance(request, msg.KeyRequest):
                raise wire.DecodeError("not a key request")
            # refusals in memberlist's words, which the serf CLI shows from any member
            if kind == "install-key":
                keyring.add_key(request.key)
            elif kind == "use-key":
                if request.key not in keyring.keys:
                    return msg.KeyResponse(False, "Requested key is not in the keyring")
                keyring.use_key(request.key)
            elif request.key == keyring.primary_key:
                return msg.KeyResponse(False, "Removing the primary key is not allowed")
            elif request.key not in keyring.keys:  # removing an absent key is a no-op, as in Go
                return msg.KeyResponse(True)
            else:
                keyring.remove_key(request.key)
        except (wire.DecodeError, KeyringError) as exc:
            return msg.KeyResponse(False, str(exc))
        self._out.append(KeyringChanged(keyring.keys))
        return msg.KeyResponse(True)

    def _respond_quietly(self, query: SerfQuery, payload: bytes) -> None:
        try:
            self.respond(query, payload, self._now)
        except SerfError as exc:
            log.debug("cannot answer %s: %s", query.name, exc)

    # ------------------------------------------------------------------ plumbing

    def _broadcast(self, raw: bytes, on_done: Callable[[], None] | None = None) -> None:
        self.engine.broadcast(raw, self._now, on_done=on_done)

    def _schedule(
        self, deadline: float, kind: TimerKind, action: Callable[[], None], subject: str = ""
    ) -> None:
        self._timers.schedule(deadline, kind, action, subject)


def _tags(meta: bytes) -> dict[str, str]:
    """A member's tags; metadata that is not Serf's reads as Serf reads it (a role)."""
    try:
        return msg.decode_tags(meta)
    except wire.DecodeError:
        return {}
