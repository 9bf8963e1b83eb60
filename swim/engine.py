"""The SWIM + Lifeguard protocol engine, with memberlist's semantics and no I/O.

An :class:`Engine` is a plain object.  Every input is a method call that carries ``now``
(seconds on a monotonic clock); every output waits in a list for the driver to take: datagrams
to send, streams to open, events.  ``next_deadline()`` says when to call ``tick`` next.
Randomness comes from the ``random.Random`` it is given, so a seed fixes everything it does.
The trio runtime and the simulator drive the same object; neither makes a protocol decision.

The rules follow memberlist 0.2.2 (``state.go``, ``net.go``); where memberlist is known to be
wrong this engine does better:

- partitions heal through reconnect attempts to departed members and seeds, and short ones
  within seconds: a member that pings us while we suspect it or hold it dead hears our verdict
  in the ack, and an accuser (or relayer) of an accusation older than our incarnation is sent
  our current alive;
- a join is followed by a second push-pull with a seed, so members joining at once learn of
  each other;
- helpers nack within the requester's wait (Lifeguard's 80%; memberlist's nacks arrive after
  the probe ended and cost a healthy prober health);
- left members are reaped and a node may rejoin after leaving, a restarted node may reclaim its
  name at a new address, and metadata over the limit is an error;
- user broadcasts get a fair share of every packet.
"""

from __future__ import annotations

import collections
import functools
import heapq
import logging
import math
import random
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from swim import wire
from swim.broadcasts import BroadcastQueue, retransmit_limit
from swim.config import Config
from swim.events import (
    Event,
    Isolated,
    JoinCompleted,
    LeaveCompleted,
    MemberAlive,
    MemberConflict,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberSuspect,
    MemberUpdated,
    Reconnected,
    UserMessage,
)
from swim.logs import Throttle, held_back, printable
from swim.members import Address, Member, MemberState, RandomSet, ip_bytes, name_problem
from swim.suspicion import Suspicion, suspicion_bounds
from swim.wire import DecodeError, NodeState
from swim.wire.limits import DEFAULT_META_MAX_BYTES
from swim.wire.messages import make_compounds

log = logging.getLogger("swim.engine")

COMPOUND_HEADER_OVERHEAD = 2
"""Bytes a compound spends on its type byte and part count."""
COMPOUND_PART_OVERHEAD = 2
"""Bytes a compound spends on each part's length."""
PUSH_PULL_SCALE_THRESHOLD = 32
"""Clusters larger than this push-pull less often (memberlist's ``pushPullScaleThreshold``)."""
NACK_SHARE = 0.8
"""A helper nacks after this share of the requester's remaining wait (Lifeguard's 80%)."""
FOLLOW_UP_PROBES = 2
"""Probe intervals after a join at which the joiner push-pulls with one of its seeds again."""
MERGE_SLICE = 256
"""Member states merged at once; a larger push-pull is merged a slice per :meth:`Engine.tick`,
so that probes, acks and timers are served between slices instead of after all of them."""

_WIRE_STATE = {
    MemberState.ALIVE: NodeState.ALIVE,
    MemberState.SUSPECT: NodeState.SUSPECT,
    MemberState.DEAD: NodeState.DEAD,
    MemberState.LEFT: NodeState.LEFT,
}


_REACHABLE = (MemberState.ALIVE, MemberState.SUSPECT)
_ACCUSED = (MemberState.SUSPECT, MemberState.DEAD)


class MetadataTooLarge(ValueError):
    """Metadata longer than the configured ``meta_max_size``."""


class NotRunning(RuntimeError):
    """The operation needs a node that has not left."""


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """Open a TCP stream to ``address``, write ``data``, and (if ``expects_reply``) read one
    message back with :class:`swim.wire.StreamReader`; report the outcome with
    :meth:`Engine.stream_finished` before ``deadline``."""

    stream_id: int
    address: Address
    data: bytes
    deadline: float
    expects_reply: bool = True


@dataclass(slots=True)
class Stats:
    """Counters since the engine started."""

    probes: int = 0
    acks: int = 0
    nacks: int = 0
    indirect_probes: int = 0
    tcp_fallback_pings: int = 0
    suspicions_raised: int = 0
    suspicions_refuted: int = 0
    push_pulls: int = 0
    reconnect_attempts: int = 0
    packets_in: int = 0
    packets_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    decode_errors: int = 0
    dropped_packets: int = 0
    replays_refused: int = 0
    members_refused: int = 0
    health_score: int = 0


@dataclass(slots=True, eq=False)
class _Node:
    name: str
    addr: bytes
    port: int
    address: Address
    meta: bytes
    vsn: bytes
    incarnation: int
    state: MemberState
    state_change: float

    def snapshot(self) -> Member:
        return Member(self.name, self.address, self.meta, self.incarnation, self.state, self.vsn)


@dataclass(slots=True, eq=False)
class _Timer:
    deadline: float
    action: Callable[[], None]
    active: bool = True


@dataclass(slots=True, eq=False)
class _Probe:
    seq_no: int
    target: str
    incarnation: int  # the target's when the probe began: a failure accuses only that one
    start: float
    end: float
    expected_nacks: int = 0
    nacks: int = 0
    done: bool = False
    timeout: _Timer | None = None  # when to ask for indirect probes; cancelled by an ack


@dataclass(slots=True, eq=False)
class _Join:
    join_id: int
    pending: int
    joined: list[Address] = field(default_factory=list)
    failures: dict[Address, str] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class _PendingStream:
    purpose: str  # "join", "push-pull", "reconnect", "ping", "user"
    address: Address
    timer: _Timer
    join: _Join | None = None
    probe: _Probe | None = None


@dataclass(slots=True, eq=False)
class _Merge:
    """A peer's push-pull state being merged, a slice at a time."""

    remote: wire.PushPull
    admissions: int  # how many members it may still introduce
    position: int = 0


@functools.lru_cache(maxsize=1 << 16)
def _address(raw: bytes, port: int) -> Address:
    """The socket address for a wire address (4 or 16 bytes), one shared tuple per address
    for every engine in the process: a simulated cluster holds n² member entries."""
    return (socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw), port)


class Engine:
    """One member's protocol state machine.  See the module docstring for the contract."""

    def __init__(
        self,
        name: str,
        address: Address,
        config: Config,
        rng: random.Random,
        *,
        meta: bytes = b"",
        keyring: wire.Keyring | None = None,
        now: float = 0.0,
        local_state: Callable[[bool], bytes] | None = None,
        merge_remote_state: Callable[[bytes, bool], None] | None = None,
    ) -> None:
        problem = name_problem(name)
        if problem is not None:
            raise ValueError(f"cannot use {printable(name)!r:.80} as a node name: {problem}")
        self.check_meta(meta, config)
        self.name = name
        self.config = config
        self.wire_options = wire.WireOptions(
            keyring=keyring,
            label=config.label.encode(),
            compress=config.compression,
            verify_incoming=config.verify_incoming,
            verify_outgoing=config.verify_outgoing,
            max_push_states=config.max_members,
        )
        self._replays = (
            wire.ReplayFilter(config.replay_window)
            if keyring is not None and config.replay_window
            else None
        )
        self._peer_meta_max_size = config.meta_max_size + DEFAULT_META_MAX_BYTES
        self._admissions = 0  # new members the input being handled may still introduce
        self._introducer: Address | None = None  # when set: the one address it may introduce
        self._merges: collections.deque[_Merge] = collections.deque()
        self._throttle = Throttle()
        self.stats = Stats()
        self._rng = rng
        self._now = now
        self._local_state = local_state
        self._merge_remote_state = merge_remote_state

        self._nodes: dict[str, _Node] = {}
        self._probe_ring: list[str] = []
        self._probe_index = 0
        self._alive = RandomSet[str]()  # alive members but us: indirect helpers, push-pull
        self._gossip_pool = RandomSet[str]()  # alive, suspect and recently dead members but us
        self._departed = RandomSet[str]()  # dead and left members we may reconnect to
        self._departed_addresses: dict[str, tuple[Address, float]] = {}
        self._names_by_address: dict[Address, str] = {}
        self._peer_states: dict[str, MemberState] = {}  # peers' last states, reaped dead too
        self._peers_not_left = 0  # peers we should hear from: alive, suspect or dead
        self._state_counts = dict.fromkeys(MemberState, 0)
        self._last_contact = now
        self._isolated_since: float | None = None
        self._seeds: list[Address] = []
        self._suspicions: dict[str, Suspicion] = {}
        self._suspicion_timers: dict[str, _Timer] = {}
        self._conflicts_reported: dict[str, Address] = {}

        self._broadcasts = BroadcastQueue()
        self._user_broadcasts = BroadcastQueue()

        self._timers: list[tuple[float, int, _Timer]] = []
        self._timer_serial = 0
        self._probe_timer: _Timer | None = None
        self._gossip_timer: _Timer | None = None
        self._gossip_phase = now
        self._push_pull_timer: _Timer | None = None
        self._reconnect_timer: _Timer | None = None
        self._seq_no = 0
        self._ack_handlers: dict[int, tuple[Callable[[bytes], None], _Timer]] = {}
        self._nack_handlers: dict[int, _Probe] = {}
        self._probe: _Probe | None = None
        self._streams: dict[int, _PendingStream] = {}
        self._stream_serial = 0
        self._join_serial = 0

        self._leaving = False
        self._left = False
        self._assuming_converged = False
        self._view_changes = 0  # counts every change a push-pull would carry
        self._push_pull_cache: tuple[tuple[int, bool, bytes], bytes] | None = None
        self._versions_cache: tuple[int, set[bytes], set[bytes]] | None = None
        self._leave_timer: _Timer | None = None

        self._datagrams: list[tuple[Address, bytes]] = []
        self._stream_requests: list[StreamRequest] = []
        self._events: list[Event] = []

        host, port = address
        me = _Node(
            name=name,
            addr=ip_bytes(host),
            port=port,
            address=(host, port),
            meta=meta,
            vsn=config.vsn,
            incarnation=1,
            state=MemberState.ALIVE,
            state_change=now,
        )
        self._me = me
        self._nodes[name] = me
        self._probe_ring.append(name)
        self._broadcast_alive()  # as memberlist's setAlive: members we learn of hear it first-hand
        self._start_loops()

    # ------------------------------------------------------------------ outputs

    def take_datagrams(self) -> list[tuple[Address, bytes]]:
        """Datagrams to send, in order; the list is handed over and cleared."""
        out, self._datagrams = self._datagrams, []
        return out

    def take_stream_requests(self) -> list[StreamRequest]:
        """Streams to open; the list is handed over and cleared."""
        out, self._stream_requests = self._stream_requests, []
        return out

    def take_events(self) -> list[Event]:
        """Events since the last call; the list is handed over and cleared."""
        out, self._events = self._events, []
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`tick` must be called next, or None when nothing is scheduled."""
        if self._merges:
            return self._now
        timers = self._timers
        while timers and not timers[0][2].active:
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    # ------------------------------------------------------------------ queries

    @property
    def local_member(self) -> Member:
        """This node as the cluster sees it."""
        return self._me.snapshot()

    @property
    def health_score(self) -> int:
        """Lifeguard's local health: 0 is healthy; each point stretches failed probes."""
        return self.stats.health_score

    def members(self) -> list[Member]:
        """Every member in the view, this node included, dead and left ones until reaped."""
        return [node.snapshot() for node in self._nodes.values()]

    def member(self, name: str) -> Member | None:
        """The named member, if it is in the view."""
        node = self._nodes.get(name)
        return node.snapshot() if node is not None else None

    @property
    def isolated(self) -> bool:
        """Whether no peer has been heard from for ``isolation_timeout`` (see :class:`Isolated`)."""
        return self._isolated_since is not None

    @property
    def queued_broadcasts(self) -> int:
        """Broadcasts waiting to be sent (membership news and user messages)."""
        return len(self._broadcasts) + len(self._user_broadcasts)

    def alive_count(self) -> int:
        """Members alive in our view, this node included."""
        return len(self._alive) + (self._me.state is MemberState.ALIVE)

    def live_count(self) -> int:
        """Members neither dead nor left, this node included (memberlist's ``NumMembers``)."""
        counts = self._state_counts
        mine = self._me.state in (MemberState.ALIVE, MemberState.SUSPECT)
        return counts[MemberState.ALIVE] + counts[MemberState.SUSPECT] + mine

    # ------------------------------------------------------------------ commands

    def join(self, seeds: Sequence[Address], now: float) -> int:
        """Push-pull with every seed (``Join`` set); a :class:`JoinCompleted` event with this
        call's id reports the outcome.  Seeds stay reconnect candidates."""
        self._advance(now)
        if self._left:
            self._rejoin()
        self._join_serial += 1
        join = _Join(self._join_serial, pending=0)
        for seed in seeds:
            if seed == self._me.address:
                join.failures[seed] = "this is our own address"
                continue
            if seed not in self._seeds:
                self._seeds.append(seed)
            join.pending += 1
            self._open_push_pull(seed, join=True, purpose="join", join_op=join)
        if join.pending == 0:
            self._finish_join(join)
        return join.join_id

    def leave(self, now: float, timeout: float | None = None) -> None:
        """Announce that we leave; :class:`LeaveCompleted` follows once the announcement has
        been sent its full count, or after ``timeout`` (default: ``leave_timeout``)."""
        self._advance(now)
        if self._leaving or self._left:
            return
        self._leaving = True
        me = self._me
        self._on_dead(wire.Dead(incarnation=me.incarnation, node=me.name, from_node=me.name))
        if not len(self._alive):
            self._finish_leave(timed_out=False)
        else:
            wait = self.config.leave_timeout if timeout is None else timeout
            self._leave_timer = self._schedule(
                now + wait, lambda: self._finish_leave(timed_out=True)
            )

    def assume_converged(self, members: Sequence[wire.PushNodeState], now: float) -> None:
        """Take ``members`` as a view the whole cluster already shares: they are merged as a
        join merges a peer's state, but no news is gossiped and no events are reported, since
        everyone knows already.  What was queued for gossip before is dropped too.  For
        starting simulations and benchmarks converged, without an O(n²) gossip storm.

        Raises ValueError when the members' protocol versions are incompatible.
        """
        self._advance(now)
        reported = len(self._events)
        self._assuming_converged = True
        try:
            merged = self._merge(
                wire.PushPull(list(members), b"", False),
                self._me.address,
                admissions=self.config.max_members,
                sliced=False,
            )
        finally:
            self._assuming_converged = False
        del self._events[reported:]
        self._broadcasts = BroadcastQueue()
        if not merged:
            raise ValueError(
                "these members' protocol versions are incompatible with each other or with "
                "this node's; give every member versions within what all of them support"
            )

    def update_meta(self, meta: bytes, now: float) -> None:
        """Advertise new metadata; the incarnation goes up so that it wins everywhere."""
        self._advance(now)
        self.check_meta(meta, self.config)
        if self._left or self._leaving:
            raise NotRunning("cannot update metadata after leaving; join again first")
        me = self._me
        old = me.meta
        me.meta = meta
        me.incarnation += 1
        self._broadcast_alive()
        if old != meta:
            self._events.append(MemberUpdated(me.snapshot(), old))

    def send(self, name: str, payload: bytes, now: float) -> None:
        """Send ``payload`` to a member in one datagram (best effort)."""
        self._advance(now)
        node = self._require(name)
        self._send_packet(node.address, [b"\x08" + payload], node)

    def send_reliable(self, name: str, payload: bytes, now: float) -> int:
        """Send ``payload`` to a member over a stream; returns the stream id."""
        self._advance(now)
        node = self._require(name)
        body = wire.stream_body(wire.User(payload), self.wire_options)
        return self._open_stream(node.address, body, purpose="user", expects_reply=False)

    def broadcast(
        self,
        payload: bytes,
        now: float,
        key: str | None = None,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        """Piggyback ``payload`` on gossip: it is sent ``retransmit_mult * ceil(log10(n + 1))``
        times to random members, who do not pass it on (memberlist's user broadcast; the Serf
        layer's events, which receivers re-gossip, reach everyone).  A later broadcast with the
        same ``key`` replaces a queued one.  ``on_done`` runs once it has been sent its full
        count (or replaced)."""
        self._advance(now)
        self._user_broadcasts.queue(b"\x08" + payload, key, on_done)
        self._arm_gossip()

    def send_to(self, address: Address, payload: bytes, now: float) -> None:
        """Send ``payload`` as a user message in one datagram to any address (Serf answers
        queries this way, to the asker's address)."""
        self._advance(now)
        name = self._names_by_address.get(address)
        self._send_packet(address, [b"\x08" + payload], self._nodes.get(name) if name else None)

    # ------------------------------------------------------------------ inputs

    def tick(self, now: float) -> None:
        """Run every timer due by ``now``, and merge the next slice of a large push-pull."""
        self._now = max(self._now, now)  # _advance, inline on the hottest paths
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, timer = heapq.heappop(timers)
            if timer.active:
                timer.active = False
                timer.action()
        if self._merges:
            self._merge_slice()

    def receive_datagram(self, data: bytes, source: Address, now: float) -> None:
        """Handle one datagram; bad ones are dropped and counted, never raised."""
        self._now = max(self._now, now)
        self.stats.packets_in += 1
        self.stats.bytes_in += len(data)
        try:
            messages = wire.decode_packet(data, self.wire_options, self._replays)
        except wire.ReplayedPacket:
            self.stats.replays_refused += 1
            self.stats.dropped_packets += 1
            return
        except DecodeError as exc:
            self.stats.decode_errors += 1
            self.stats.dropped_packets += 1
            log.debug("dropped a packet from %s: %s", source, exc.reason)
            return
        self._last_contact = self._now
        if self._isolated_since is not None:
            self._contact()
        self._admissions = self.config.max_new_members_per_message
        trusted = self.config.trust_strangers or source in self._names_by_address
        self._introducer = None if trusted else source
        for message in messages:
            self._dispatch(message, source)
        self._introducer = None

    def handle_stream(
        self, message: wire.StreamMessage, source: Address, now: float
    ) -> bytes | None:
        """Handle the message a peer sent on an inbound stream; returns the reply to write
        (None for none)."""
        self._advance(now)
        self._contact()
        if isinstance(message, wire.PushPull):
            reply = wire.seal_stream(self._push_pull_body(message.join), self.wire_options)
            self._merge(message, source, admissions=self.config.max_new_members_per_message)
            return reply
        if isinstance(message, wire.Ping):
            if message.node and message.node != self.name:
                return wire.encode_stream(
                    wire.Err(f"ping for {message.node!r} reached {self.name!r}"),
                    self.wire_options,
                )
            return wire.encode_stream(wire.Ack(seq_no=message.seq_no), self.wire_options)
        if isinstance(message, wire.User):
            self._events.append(UserMessage(message.payload, source))
        elif isinstance(message, wire.Err):
            log.debug("stream error from %s: %s", source, message.error)
        return None

    def stream_finished(
        self,
        stream_id: int,
        reply: wire.StreamMessage | None,
        now: float,
        error: str | None = None,
    ) -> None:
        """Report the outcome of a stream this engine asked for: the peer's reply, or why
        there is none (``error``)."""
        self._advance(now)
        pending = self._streams.pop(stream_id, None)
        if pending is None:
            return  # already timed out
        pending.timer.active = False
        if error is None and reply is None and pending.purpose != "user":
            error = "no reply"
        if error is None:
            self._contact()
        self._complete_stream(pending, reply, error)

    # ------------------------------------------------------------------ timers

    def _advance(self, now: float) -> None:
        self._now = max(self._now, now)

    def _schedule(self, deadline: float, action: Callable[[], None]) -> _Timer:
        timer = _Timer(deadline, action)
        self._timer_serial += 1
        heapq.heappush(self._timers, (deadline, self._timer_serial, timer))
        return timer

    def _start_loops(self) -> None:
        """Start the periodic loops at random phases (again after a rejoin, replacing the
        old ones)."""
        for timer in (
            self._probe_timer,
            self._gossip_timer,
            self._push_pull_timer,
            self._reconnect_timer,
        ):
            if timer is not None:
                timer.active = False
        self._gossip_timer = self._push_pull_timer = self._reconnect_timer = None
        config, now, rng = self.config, self._now, self._rng
        self._probe_timer = self._schedule(
            now + rng.random() * config.probe_interval, self._probe_tick
        )
        self._gossip_phase = now + rng.random() * config.gossip_interval
        if self.queued_broadcasts:
            self._arm_gossip()
        if config.push_pull_interval > 0:
            self._push_pull_timer = self._schedule(
                now + rng.random() * config.push_pull_interval + self._push_pull_period(),
                self._push_pull_tick,
            )
        if config.reconnect_interval > 0:
            self._reconnect_timer = self._schedule(
                now + (1 + rng.random()) * config.reconnect_interval, self._reconnect_tick
            )

    def _active(self) -> bool:
        return not self._left

    def _probe_tick(self) -> None:
        # memberlist's ticker skips ticks while a probe runs, so a failing probe (which waits
        # for its whole, health-scaled interval) delays the next one.
        self._probe_timer = self._schedule(self._now + self.config.probe_interval, self._probe_tick)
        if self._active() and (self._probe is None or self._probe.done):
            self._probe_next()
        self._check_isolation()

    def _check_isolation(self) -> None:
        silence = self._now - self._last_contact
        if (
            self._isolated_since is None
            and self._peers_not_left > 0
            and not self._left
            and silence >= self.config.isolation_timeout
        ):
            self._isolated_since = self._last_contact
            log.warning(
                "isolated: no peer heard from for %.1f s; still serving and trying to rejoin",
                silence,
            )
            self._events.append(Isolated(since=self._last_contact))

    def _contact(self) -> None:
        """A peer was heard from."""
        self._last_contact = self._now
        if self._isolated_since is not None:
            log.warning("reconnected after %.1f s", self._now - self._isolated_since)
            self._events.append(Reconnected(isolated_for=self._now - self._isolated_since))
            self._isolated_since = None

    def _arm_gossip(self) -> None:
        """Schedule a gossip round at the gossip ticker's next beat, unless one is due.

        memberlist's ticker beats every ``gossip_interval`` and a round with nothing queued
        sends nothing, so rounds are scheduled only while broadcasts wait: an idle node wakes
        for its probes alone.
        """
        if self._gossip_timer is not None:
            return
        now, interval = self._now, self.config.gossip_interval
        beats = max(0, math.floor((now - self._gossip_phase) / interval) + 1)
        deadline = self._gossip_phase + beats * interval
        if deadline <= now and beats:
            deadline += interval
        self._gossip_timer = self._schedule(deadline, self._gossip_tick)

    def _gossip_tick(self) -> None:
        self._gossip_timer = None
        self._gossip()
        if self.queued_broadcasts:
            self._arm_gossip()

    def _queue_broadcast(
        self, message: wire.Message, key: str, on_done: Callable[[], None] | None = None
    ) -> None:
        """Queue membership news for gossip (not while assuming a converged view).  Every
        change to a member's wire state comes with news, so it counts the view's changes."""
        self._view_changes += 1
        if self._assuming_converged:
            return
        self._broadcasts.queue(wire.encode(message), key, on_done)
        self._arm_gossip()

    def _push_pull_tick(self) -> None:
        self._push_pull_timer = self._schedule(
            self._now + self._push_pull_period(), self._push_pull_tick
        )
        if not self._active() or self._leaving:
            return
        partner = self._alive.choice(self._rng)
        if partner is not None:
            self._open_push_pull(self._nodes[partner].address, join=False, purpose="push-pull")

    def _push_pull_period(self) -> float:
        n = len(self._nodes)
        interval = self.config.push_pull_interval
        if n <= PUSH_PULL_SCALE_THRESHOLD:
            return interval
        return (math.ceil(math.log2(n) - math.log2(PUSH_PULL_SCALE_THRESHOLD)) + 1) * interval

    # ------------------------------------------------------------------ probing

    def _probe_next(self) -> None:
        ring = self._probe_ring
        checked = 0
        while checked <= len(ring):
            if self._probe_index >= len(ring):
                self._reset_probe_ring()
                ring = self._probe_ring
                checked += 1
                continue
            name = ring[self._probe_index]
            self._probe_index += 1
            node = self._nodes.get(name)
            if (
                node is None
                or node is self._me
                or node.state
                in (
                    MemberState.DEAD,
                    MemberState.LEFT,
                )
            ):
                checked += 1
                continue
            self._probe_node(node)
            return

    def _reset_probe_ring(self) -> None:
        """At each wrap-around: reap members dead (or left) for long enough, reshuffle."""
        now, config = self._now, self.config
        for name in list(self._nodes):
            node = self._nodes[name]
            if (
                node.state is MemberState.DEAD
                and now - node.state_change > config.gossip_to_the_dead_time
            ) or (
                node.state is MemberState.LEFT
                and now - node.state_change > config.left_member_retention
            ):
                self._reap(node)
        self._probe_ring = list(self._nodes)
        self._rng.shuffle(self._probe_ring)
        self._probe_index = 0

    def _reap(self, node: _Node) -> None:
        self._view_changes += 1
        del self._nodes[node.name]
        if node.state is MemberState.LEFT:
            self._track_peer(node.name, None)  # a reaped dead member still counts until expiry
        if self._names_by_address.get(node.address) == node.name:
            del self._names_by_address[node.address]
        self._gossip_pool.discard(node.name)
        self._conflicts_reported.pop(node.name, None)

    def _probe_node(self, node: _Node) -> None:
        config, now = self.config, self._now
        self.stats.probes += 1
        interval = config.probe_interval * (self.stats.health_score + 1)
        self._seq_no += 1
        probe = _Probe(self._seq_no, node.name, node.incarnation, start=now, end=now + interval)
        self._probe = probe
        ping = wire.encode(self._ping(probe.seq_no, node.name))
        if node.state is MemberState.ALIVE or not config.lifeguard:
            self._send_with_piggyback(node.address, ping, node)
        else:  # buddy system: tell a suspect what we think, so that it can refute at once
            suspect = wire.Suspect(
                incarnation=node.incarnation, node=node.name, from_node=self.name
            )
            self._send_packet(node.address, [ping, wire.encode(suspect)], node)
        # the probe's end is scheduled only once the timeout passes unanswered: most probes
        # are acked before it, and a timer less is a wake-up less
        timeout = self._schedule(
            now + config.probe_timeout, lambda: self._probe_timed_out(probe, node)
        )
        probe.timeout = timeout
        self._ack_handlers[probe.seq_no] = (lambda payload: self._probe_succeeded(probe), timeout)
        self._nack_handlers[probe.seq_no] = probe

    def _ping(self, seq_no: int, target: str) -> wire.Ping:
        """A ping for ``target`` that tells it where to answer."""
        me = self._me
        return wire.Ping(
            seq_no=seq_no,
            node=target,
            source_addr=me.addr,
            source_port=me.port,
            source_node=me.name,
        )

    def _probe_timed_out(self, probe: _Probe, node: _Node) -> None:
        """No direct ack in time: ask others to probe, and try TCP, until the probe ends."""
        if probe.done:
            return
        end = self._schedule(probe.end, lambda: self._probe_failed(probe))
        handler = self._ack_handlers.get(probe.seq_no)
        if handler is not None:
            self._ack_handlers[probe.seq_no] = (handler[0], end)
        helpers = self._alive.sample(
            self._rng, self.config.indirect_checks, lambda name: name != probe.target
        )
        me = self._me
        for helper_name in helpers:
            helper = self._nodes[helper_name]
            nack = helper.vsn[1] >= 4
            probe.expected_nacks += nack
            request = wire.IndirectPing(
                seq_no=probe.seq_no,
                target=node.addr,
                port=node.port,
                node=node.name,
                nack=nack,
                source_addr=me.addr,
                source_port=me.port,
                source_node=me.name,
            )
            self.stats.indirect_probes += 1
            self._send_with_piggyback(helper.address, wire.encode(request), helper)
        if not self.config.disable_tcp_pings and node.vsn[1] >= 3:
            self.stats.tcp_fallback_pings += 1
            ping = wire.stream_body(self._ping(probe.seq_no, node.name), self.wire_options)
            self._open_stream(node.address, ping, purpose="ping", deadline=probe.end, probe=probe)

    def _probe_succeeded(self, probe: _Probe) -> None:
        if probe.done:
            return
        probe.done = True
        if probe.timeout is not None:
            probe.timeout.active = False
        self._nack_handlers.pop(probe.seq_no, None)
        self.stats.acks += 1
        self._adjust_health(-1)

    def _probe_failed(self, probe: _Probe) -> None:
        """The probe's interval ran out with no ack from anyone."""
        self._ack_handlers.pop(probe.seq_no, None)
        self._nack_handlers.pop(probe.seq_no, None)
        if probe.done:
            return
        probe.done = True
        if probe.expected_nacks > 0:
            self._adjust_health(max(0, probe.expected_nacks - probe.nacks))
        else:
            self._adjust_health(1)
        node = self._nodes.get(probe.target)
        if node is not None:
            log.info("suspect %s has failed, no acks received", node.name)
            # at the incarnation probed, as memberlist does: if the member refuted or came
            # back at a new address meanwhile, the accusation is stale and changes nothing
            self._on_suspect(
                wire.Suspect(incarnation=probe.incarnation, node=node.name, from_node=self.name)
            )

    def _adjust_health(self, delta: int) -> None:
        if not self.config.lifeguard:
            return
        top = self.config.awareness_max_multiplier - 1
        self.stats.health_score = min(top, max(0, self.stats.health_score + delta))

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, message: wire.Message, source: Address) -> None:
        if isinstance(message, wire.Ping):
            self._on_ping(message, source)
        elif isinstance(message, wire.Ack):
            handler = self._ack_handlers.pop(message.seq_no, None)
            if handler is not None:
                handler[1].active = False
                handler[0](message.payload)
        elif isinstance(message, wire.Nack):
            probe = self._nack_handlers.get(message.seq_no)
            if probe is not None:
                probe.nacks += 1
                self.stats.nacks += 1
        elif isinstance(message, wire.IndirectPing):
            self._on_indirect_ping(message, source)
        elif isinstance(message, wire.Alive):
            self._on_alive(message)
        elif isinstance(message, wire.Suspect):
            self._on_suspect(message, source)
        elif isinstance(message, wire.Dead):
            self._on_dead(message, source)
        elif isinstance(message, wire.User):
            self._events.append(UserMessage(message.payload, source))
        else:
            self.stats.dropped_packets += 1

    def _reply_address(self, addr: bytes, port: int, source: Address) -> Address:
        if len(addr) in (4, 16) and port:
            return _address(addr, port)
        return source

    def _on_ping(self, ping: wire.Ping, source: Address) -> None:
        if ping.node and ping.node != self.name:
            self.stats.dropped_packets += 1
            return
        destination = self._reply_address(ping.source_addr, ping.source_port, source)
        ack = wire.encode(wire.Ack(seq_no=ping.seq_no))
        pinger = self._nodes.get(ping.source_node)
        if pinger is not None and pinger.state in _ACCUSED:
            # A member we suspect or hold dead is up and reaches us, and has not refuted our
            # verdict (its refutation was lost, or it never heard of the verdict): tell it, as
            # the buddy system tells a suspect, so that its refutation, or its current alive,
            # reaches us.  Otherwise only our own probe of it (once per round of the probe
            # ring) or a push-pull would, which after a short partition takes tens of seconds.
            verdict = wire.Suspect(
                incarnation=pinger.incarnation, node=pinger.name, from_node=self.name
            )
            self._send_packet(destination, [ack, wire.encode(verdict)], pinger)
            return
        self._send_with_piggyback(destination, ack, pinger)

    def _on_indirect_ping(self, request: wire.IndirectPing, source: Address) -> None:
        if len(request.target) not in (4, 16) or not request.port:
            self.stats.dropped_packets += 1
            return
        requester = self._reply_address(request.source_addr, request.source_port, source)
        requester_node = self._nodes.get(request.source_node)
        self._seq_no += 1
        seq_no = self._seq_no
        answered = [False]

        def relay_ack(_: bytes) -> None:
            answered[0] = True
            ack = wire.encode(wire.Ack(seq_no=request.seq_no))
            self._send_with_piggyback(requester, ack, requester_node)

        def send_nack() -> None:
            if not answered[0]:
                nack = wire.encode(wire.Nack(seq_no=request.seq_no))
                self._send_with_piggyback(requester, nack, requester_node)

        def expire() -> None:
            self._ack_handlers.pop(seq_no, None)

        if request.nack:
            self._schedule(self._now + self._nack_delay(), send_nack)
        timer = self._schedule(self._now + self.config.probe_timeout, expire)
        self._ack_handlers[seq_no] = (relay_ack, timer)
        target = _address(request.target, request.port)
        self._send_with_piggyback(
            target, wire.encode(self._ping(seq_no, request.node)), self._nodes.get(request.node)
        )

    def _nack_delay(self) -> float:
        """How long a helper waits for the target before it nacks.

        The requester asked for help after ``probe_timeout`` and gives up ``probe_interval``
        after its probe began, so a nack must land within the difference.  memberlist nacks
        after a whole ``probe_timeout`` (0.5 s of a 0.5 s window on LAN): every nack came
        too late, and a healthy member that probed a dead one lost a point of health per
        helper.  Lifeguard's paper nacks at 80% of the timeout; this also keeps within the
        window where the timeout is longer than what is left of it (WAN: 3 s of 2 s).
        """
        config = self.config
        window = config.probe_interval - config.probe_timeout
        if window <= 0:
            return config.probe_timeout
        return NACK_SHARE * min(config.probe_timeout, window)

    # ------------------------------------------------------------------ state rules

    def _set_state(self, node: _Node, state: MemberState) -> None:
        """Move ``node`` to ``state`` and keep the sampling sets in step."""
        if node.state is not state:
            self._view_changes += 1
            node.state = state
            node.state_change = self._now
        if node is self._me:
            return
        name = node.name
        self._track_peer(name, state)
        if state is MemberState.ALIVE:
            self._alive.add(name)
        else:
            self._alive.discard(name)
        if state is MemberState.LEFT:
            self._gossip_pool.discard(name)
        else:
            self._gossip_pool.add(name)
        if state in (MemberState.DEAD, MemberState.LEFT):
            self._departed.add(name)
            self._departed_addresses[name] = (node.address, self._now)
        else:
            self._departed.discard(name)
            self._departed_addresses.pop(name, None)

    def _track_peer(self, name: str, state: MemberState | None) -> None:
        """Keep count of the peers in each state: while some did not leave, silence from all
        of them means we are cut off; alive and suspect ones are the live members."""
        previous = self._peer_states.pop(name, None)
        if previous is not None:
            self._state_counts[previous] -= 1
            if previous is not MemberState.LEFT:
                self._peers_not_left -= 1
        if state is not None:
            self._peer_states[name] = state
            self._state_counts[state] += 1
            if state is not MemberState.LEFT:
                self._peers_not_left += 1

    def _on_alive(self, alive: wire.Alive) -> None:
        me = self._me
        about_me = alive.node == self.name
        if about_me and self._left:
            return
        vsn = alive.vsn
        if vsn[0] == 0 or vsn[1] == 0 or vsn[0] > vsn[1] or len(alive.addr) not in (4, 16):
            self.stats.dropped_packets += 1
            return
        if len(alive.meta) > self._peer_meta_max_size:
            self._refuse_member(
                "metadata",
                alive.node,
                f"its metadata is {len(alive.meta)} bytes, over the "
                f"{self._peer_meta_max_size} accepted from peers",
            )
            return
        node = self._nodes.get(alive.node)
        takes_over = False
        if node is None:
            if not self._admit(alive):
                return
            node = _Node(
                name=alive.node,
                addr=alive.addr,
                port=alive.port,
                address=_address(alive.addr, alive.port),
                meta=alive.meta,
                vsn=vsn,
                incarnation=0,
                state=MemberState.DEAD,
                state_change=self._now,
            )
            self._nodes[alive.node] = node
            self._view_changes += 1  # a name at incarnation 0 can stay, dead, with no news
            self._names_by_address[node.address] = node.name
            self._insert_into_probe_ring(alive.node)
        elif node.addr != alive.addr or node.port != alive.port:
            reclaimable = node.state is MemberState.LEFT or (
                node.state is MemberState.DEAD
                and self._now - node.state_change >= self.config.dead_node_reclaim_time
            )
            if not reclaimable:
                other = _address(alive.addr, alive.port)
                if self._conflicts_reported.get(node.name) != other:
                    self._conflicts_reported[node.name] = other
                    log.warning(
                        "conflicting address for %s: %s holds it, %s claims it",
                        node.name,
                        node.address,
                        other,
                    )
                    self._events.append(MemberConflict(node.snapshot(), other))
                return
            takes_over = True

        if about_me:
            if alive.incarnation < node.incarnation:
                return
        elif alive.incarnation <= node.incarnation and not takes_over:
            return
        self._cancel_suspicion(alive.node)
        old_state, old_meta = node.state, node.meta
        if about_me:
            if alive.incarnation == me.incarnation and alive.meta == me.meta and vsn == me.vsn:
                return
            self._refute(alive.incarnation)
            return
        self._queue_broadcast(alive, key=alive.node)
        node.vsn = vsn
        node.incarnation = alive.incarnation
        node.meta = alive.meta
        if takes_over:
            self._names_by_address.pop(node.address, None)
            node.addr, node.port = alive.addr, alive.port
            node.address = _address(alive.addr, alive.port)
            self._names_by_address[node.address] = node.name
            self._conflicts_reported.pop(node.name, None)
        self._set_state(node, MemberState.ALIVE)
        if old_state in (MemberState.DEAD, MemberState.LEFT):
            self._events.append(MemberJoined(node.snapshot()))
        elif old_state is MemberState.SUSPECT:
            self._events.append(MemberAlive(node.snapshot()))
            if old_meta != node.meta:
                self._events.append(MemberUpdated(node.snapshot(), old_meta))
        elif old_meta != node.meta:
            self._events.append(MemberUpdated(node.snapshot(), old_meta))

    def _admit(self, alive: wire.Alive) -> bool:
        """Whether news of a member we do not know may add it to the view: its name must be
        valid, the view not full, and the input that brings it within its share of newcomers
        (a stranger's datagram may introduce only its sender)."""
        if self._introducer is not None and _address(alive.addr, alive.port) != self._introducer:
            self._refuse_member(
                "stranger",
                alive.node,
                f"{self._introducer[0]}:{self._introducer[1]}, which is not a member, may "
                "introduce only itself (set Config.trust_strangers behind NAT)",
            )
            return False
        if self._admissions <= 0:
            self.stats.members_refused += 1  # it comes again, by gossip or push-pull
            return False
        problem = name_problem(alive.node)
        if problem is not None:
            self._refuse_member("name", alive.node, problem)
            return False
        if len(self._nodes) >= self.config.max_members and not self._evict_departed():
            self._refuse_member(
                "full",
                alive.node,
                f"this node holds {len(self._nodes)} members, its max_members; raise "
                "max_members on every node if the cluster really is that large",
            )
            return False
        self._admissions -= 1
        return True

    def _evict_departed(self) -> bool:
        """Make room at ``max_members`` by reaping a dead or left member early (a live one is
        worth more); False when a few random picks find none."""
        for _ in range(4):
            name = self._departed.choice(self._rng)
            node = self._nodes.get(name) if name is not None else None
            if node is not None and node.state in (MemberState.DEAD, MemberState.LEFT):
                self._reap(node)
                return True
        return False

    def _refuse_member(self, kind: str, name: str, why: str) -> None:
        """Count a refused member and say why, at most once per report interval per kind."""
        self.stats.members_refused += 1
        held = self._throttle.allow(kind, self._now)
        if held is not None:
            log.warning("refused member %r: %s%s", printable(name)[:80], why, held_back(held))

    def _insert_into_probe_ring(self, name: str) -> None:
        # at a random position, so that a new member is not always probed last
        ring = self._probe_ring
        ring.append(name)
        offset = self._rng.randrange(len(ring))
        ring[offset], ring[-1] = ring[-1], ring[offset]

    def _on_suspect(self, suspect: wire.Suspect, relayer: Address | None = None) -> None:
        node = self._nodes.get(suspect.node)
        if node is None:
            return
        if suspect.incarnation < node.incarnation:
            if node is self._me:
                self._correct_accuser(suspect.from_node, relayer)
            return
        suspicion = self._suspicions.get(suspect.node)
        if suspicion is not None:
            if suspicion.confirm(suspect.from_node):
                self._queue_broadcast(suspect, key=suspect.node)
                self._reschedule_suspicion(node, suspicion)
            return
        if node.state is not MemberState.ALIVE:
            return
        if node is self._me:
            self._refute(suspect.incarnation)
            return
        self._queue_broadcast(suspect, key=suspect.node)
        node.incarnation = suspect.incarnation
        self._set_state(node, MemberState.SUSPECT)
        self.stats.suspicions_raised += 1
        config = self.config
        n = len(self._nodes)
        k = config.suspicion_mult - 2 if config.lifeguard else 0
        if n - 2 < k:
            k = 0
        shortest, longest = suspicion_bounds(
            config.suspicion_mult, config.suspicion_max_timeout_mult, n, config.probe_interval
        )
        suspicion = Suspicion(
            self._now,
            suspect.incarnation,
            suspector=suspect.from_node,
            k=k,
            shortest=shortest,
            longest=longest,
        )
        self._suspicions[suspect.node] = suspicion
        self._reschedule_suspicion(node, suspicion)
        self._events.append(MemberSuspect(node.snapshot()))

    def _reschedule_suspicion(self, node: _Node, suspicion: Suspicion) -> None:
        old = self._suspicion_timers.get(node.name)
        if old is not None:
            old.active = False
        change = node.state_change

        def expire() -> None:
            self._suspicion_timers.pop(node.name, None)
            self._suspicions.pop(node.name, None)
            current = self._nodes.get(node.name)
            if (
                current is node
                and node.state is MemberState.SUSPECT
                and node.state_change == change
            ):
                log.info(
                    "marking %s as failed, suspect timeout reached (%d confirmations)",
                    node.name,
                    suspicion.confirmations,
                )
                self._on_dead(
                    wire.Dead(incarnation=node.incarnation, node=node.name, from_node=self.name)
                )

        self._suspicion_timers[node.name] = self._schedule(
            max(suspicion.deadline, self._now), expire
        )

    def _cancel_suspicion(self, name: str) -> None:
        self._suspicions.pop(name, None)
        timer = self._suspicion_timers.pop(name, None)
        if timer is not None:
            timer.active = False

    def _on_dead(self, dead: wire.Dead, relayer: Address | None = None) -> None:
        node = self._nodes.get(dead.node)
        if node is None:
            return
        if dead.incarnation < node.incarnation:
            if node is self._me:
                self._correct_accuser(dead.from_node, relayer)
            return
        self._cancel_suspicion(dead.node)
        if node.state in (MemberState.DEAD, MemberState.LEFT):
            return
        if node is self._me:
            if not self._leaving:
                self._refute(dead.incarnation)
                return
            self._queue_broadcast(
                dead, key=dead.node, on_done=lambda: self._finish_leave(timed_out=False)
            )
        else:
            self._queue_broadcast(dead, key=dead.node)
        node.incarnation = dead.incarnation
        left = dead.node == dead.from_node
        self._set_state(node, MemberState.LEFT if left else MemberState.DEAD)
        self._events.append((MemberLeft if left else MemberFailed)(node.snapshot()))

    def _refute(self, accused_incarnation: int) -> None:
        me = self._me
        me.incarnation = max(me.incarnation + 1, accused_incarnation + 1)
        self.stats.suspicions_refuted += 1
        self._adjust_health(1)
        self._broadcast_alive()

    def _alive_message(self) -> wire.Alive:
        me = self._me
        return wire.Alive(
            incarnation=me.incarnation,
            node=me.name,
            addr=me.addr,
            port=me.port,
            vsn=me.vsn,
            meta=me.meta,
        )

    def _broadcast_alive(self) -> None:
        self._queue_broadcast(self._alive_message(), key=self.name)

    def _correct_accuser(self, accuser: str, relayer: Address | None) -> None:
        """An accusation against us older than our incarnation: its author (and the member
        that passed it on to us, if another) missed our refutation (lost, or gossiped while a
        partition cut them off), and memberlist does not refute an old accusation again, so
        their suspicion would run out into a false failure.  Send them our current alive."""
        if self._leaving or self._left:
            return
        told: set[Address] = set()
        for name in (accuser, self._names_by_address.get(relayer) if relayer else None):
            node = self._nodes.get(name) if name is not None else None
            if node is None or node is self._me or node.state not in _REACHABLE:
                continue
            if node.address not in told:
                told.add(node.address)
                self._send_packet(node.address, [wire.encode(self._alive_message())], node)

    def _rejoin(self) -> None:
        """Come back after a leave: alive again, at a higher incarnation than the leave."""
        self._left = self._leaving = False
        me = self._me
        me.incarnation += 1
        me.state = MemberState.ALIVE
        me.state_change = self._now
        self._broadcast_alive()
        self._start_loops()

    def _finish_leave(self, timed_out: bool) -> None:
        if self._left or not self._leaving:
            return
        self._left = True
        if self._leave_timer is not None:
            self._leave_timer.active = False
            self._leave_timer = None
        self._events.append(LeaveCompleted(timed_out=timed_out))

    # ------------------------------------------------------------------ push-pull

    def _push_pull_body(self, join: bool) -> bytes:
        """Our side of a push-pull, encoded (and compressed): kept until the view changes,
        since a steady cluster sends the same state exchange after exchange."""
        user_state = self._local_state(join) if self._local_state is not None else b""
        key = (self._view_changes, join, user_state)
        cached = self._push_pull_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        body = wire.stream_body(self._local_push_pull(join, user_state), self.wire_options)
        self._push_pull_cache = (key, body)
        return body

    def _local_push_pull(self, join: bool, user_state: bytes) -> wire.PushPull:
        states = [
            wire.PushNodeState(
                name=node.name,
                addr=node.addr,
                port=node.port,
                incarnation=node.incarnation,
                state=_WIRE_STATE[node.state],
                vsn=node.vsn,
                meta=node.meta,
            )
            for node in self._nodes.values()
        ]
        return wire.PushPull(states, user_state, join)

    def _merge(
        self, remote: wire.PushPull, source: Address, *, admissions: int, sliced: bool = True
    ) -> bool:
        """Merge a peer's full state, which may introduce ``admissions`` new members; False
        (and nothing merged) when versions disagree.  A large state is merged a slice at a
        time unless not ``sliced``."""
        self.stats.push_pulls += 1
        problem = self._incompatible(remote.states)
        if problem is not None:
            log.warning("refused push-pull from %s: %s", source, problem)
            return False
        merge = _Merge(remote, admissions)
        if sliced:
            self._merges.append(merge)
            if len(self._merges) == 1:
                self._merge_slice()
        else:
            self._merge_states(merge, len(remote.states))
        return True

    def _merge_slice(self) -> None:
        """Merge the next slice of the oldest pending push-pull."""
        merge = self._merges[0]
        if self._merge_states(merge, MERGE_SLICE):
            self._merges.popleft()

    def _merge_states(self, merge: _Merge, count: int) -> bool:
        """Merge up to ``count`` more of ``merge``'s states, then, once all are in, the
        delegate's state; True when it is done."""
        remote = merge.remote
        start = merge.position
        merge.position = end = min(len(remote.states), start + count)
        self._admissions, self._introducer = merge.admissions, None
        nodes, me = self._nodes, self._me
        for state in remote.states[start:end]:
            if state.state is NodeState.ALIVE:
                node = nodes.get(state.name)
                if (
                    node is not None
                    and node is not me
                    and state.incarnation <= node.incarnation
                    and state.port == node.port
                    and state.addr == node.addr
                    and state.vsn == node.vsn
                ):
                    continue  # old news: what _on_alive concludes, without building an Alive
                self._on_alive(
                    wire.Alive(
                        incarnation=state.incarnation,
                        node=state.name,
                        addr=state.addr,
                        port=state.port,
                        vsn=state.vsn,
                        meta=state.meta,
                    )
                )
            elif state.state is NodeState.LEFT:
                self._on_dead(
                    wire.Dead(incarnation=state.incarnation, node=state.name, from_node=state.name)
                )
            else:  # a peer's dead or suspect opinion only raises a suspicion here
                self._on_suspect(
                    wire.Suspect(
                        incarnation=state.incarnation, node=state.name, from_node=self.name
                    )
                )
        merge.admissions = self._admissions
        if end < len(remote.states):
            return False
        if remote.user_state and self._merge_remote_state is not None:
            self._merge_remote_state(remote.user_state, remote.join)
        return True

    def _incompatible(self, remote: list[wire.PushNodeState]) -> str | None:
        """memberlist's ``verifyProtocol``: every member's current protocol and delegate
        versions must lie within what every alive member supports.

        Checked over the distinct version sets (a cluster has a handful), ours kept until the
        view changes; the member-by-member walk runs only to name the culprit.
        """
        if self._versions_cache is None or self._versions_cache[0] != self._view_changes:
            nodes = self._nodes.values()
            alive = {n.vsn for n in nodes if n.state is MemberState.ALIVE}
            self._versions_cache = (self._view_changes, alive, {n.vsn for n in nodes})
        _, local_alive, local_all = self._versions_cache
        alive_vsns = local_alive.union(s.vsn for s in remote if s.state is NodeState.ALIVE)
        pmin = max((v[0] for v in alive_vsns), default=0)
        pmax = min((v[1] for v in alive_vsns), default=255)
        dmin = max((v[3] for v in alive_vsns), default=0)
        dmax = min((v[4] for v in alive_vsns), default=255)
        if all(
            pmin <= v[2] <= pmax and dmin <= v[5] <= dmax
            for v in local_all.union(s.vsn for s in remote)
        ):
            return None
        # the first member out of bounds, in memberlist's order: theirs, then ours
        named = [(s.name, s.vsn) for s in remote] + [(n.name, n.vsn) for n in self._nodes.values()]
        for name, vsn in named:
            if not pmin <= vsn[2] <= pmax:
                return (
                    f"node {name!r} protocol version ({vsn[2]}) is incompatible: [{pmin}, {pmax}]"
                )
            if not dmin <= vsn[5] <= dmax:
                return (
                    f"node {name!r} delegate protocol version ({vsn[5]}) is incompatible: "
                    f"[{dmin}, {dmax}]"
                )
        raise AssertionError("a version out of bounds belongs to some member")

    def _open_push_pull(
        self, address: Address, *, join: bool, purpose: str, join_op: _Join | None = None
    ) -> None:
        self._open_stream(address, self._push_pull_body(join), purpose=purpose, join=join_op)

    def _reconnect_tick(self) -> None:
        """Try to merge with one departed member or seed, so that a healed partition (which
        memberlist never notices: it forgets the dead and probes only the living) comes back.

        Like Serf's reconnects, an attempt is made with probability ``candidates / alive``,
        so a healthy cluster spends nothing and a split one retries every interval.
        """
        self._reconnect_timer = self._schedule(
            self._now + self.config.reconnect_interval, self._reconnect_tick
        )
        if not self._active() or self._leaving:
            return
        seeds = [seed for seed in self._seeds if not self._is_live_address(seed)]
        candidates = len(self._departed) + len(seeds)
        if not candidates or self._rng.random() >= candidates / max(1, len(self._alive)):
            return
        target = self._departed_candidate()
        if target is None and seeds:
            target = self._rng.choice(seeds)
        if target is not None:
            self.stats.reconnect_attempts += 1
            self._open_push_pull(target, join=False, purpose="reconnect")

    def _departed_candidate(self) -> Address | None:
        for _ in range(4):
            name = self._departed.choice(self._rng)
            if name is None:
                return None
            address, since = self._departed_addresses[name]
            if self._now - since <= self.config.reconnect_timeout:
                return address
            self._departed.discard(name)
            del self._departed_addresses[name]
            if name not in self._nodes:
                self._track_peer(name, None)
        return None

    def _is_live_address(self, address: Address) -> bool:
        name = self._names_by_address.get(address)
        node = self._nodes.get(name) if name is not None else None
        return node is not None and node.state is MemberState.ALIVE

    # ------------------------------------------------------------------ streams

    def _open_stream(
        self,
        address: Address,
        body: bytes,
        *,
        purpose: str,
        expects_reply: bool = True,
        deadline: float | None = None,
        join: _Join | None = None,
        probe: _Probe | None = None,
    ) -> int:
        self._stream_serial += 1
        stream_id = self._stream_serial
        if deadline is None:
            deadline = self._now + self.config.tcp_timeout
        timer = self._schedule(deadline, lambda: self._stream_timed_out(stream_id))
        self._streams[stream_id] = _PendingStream(purpose, address, timer, join, probe)
        data = wire.seal_stream(body, self.wire_options)
        self._stream_requests.append(
            StreamRequest(stream_id, address, data, deadline, expects_reply)
        )
        return stream_id

    def _stream_timed_out(self, stream_id: int) -> None:
        pending = self._streams.pop(stream_id, None)
        if pending is not None:
            self._complete_stream(pending, None, "timed out")

    def _complete_stream(
        self, pending: _PendingStream, reply: wire.StreamMessage | None, error: str | None
    ) -> None:
        if pending.purpose == "ping":
            probe = pending.probe
            assert probe is not None
            if error is None and isinstance(reply, wire.Ack) and reply.seq_no == probe.seq_no:
                if not probe.done:
                    log.warning(
                        "was able to connect to %s over TCP but other probes failed; "
                        "the network may be misconfigured",
                        probe.target,
                    )
                handler = self._ack_handlers.pop(probe.seq_no, None)
                if handler is not None:
                    handler[1].active = False
                self._probe_succeeded(probe)
            return
        if pending.purpose == "user":
            if error is not None:
                log.debug("reliable message to %s failed: %s", pending.address, error)
            return
        merged = False
        if error is None:
            if isinstance(reply, wire.PushPull):
                # the peer we chose answers: it may tell us of every member (a join needs that)
                merged = self._merge(reply, pending.address, admissions=self.config.max_members)
                if not merged:
                    error = "the peer's protocol versions are incompatible with the cluster's"
            elif isinstance(reply, wire.Err):
                error = f"the peer answered with an error: {reply.error}"
            else:
                error = f"unexpected reply {type(reply).__name__}"
        if error is not None:
            log.debug("%s with %s failed: %s", pending.purpose, pending.address, error)
        join = pending.join
        if join is not None:
            if merged:
                join.joined.append(pending.address)
            else:
                join.failures[pending.address] = error or "failed"
            join.pending -= 1
            if join.pending == 0:
                self._finish_join(join)

    def _finish_join(self, join: _Join) -> None:
        self._events.append(JoinCompleted(join.join_id, tuple(join.joined), dict(join.failures)))
        if join.joined:
            seed = self._rng.choice(join.joined)
            self._schedule(
                self._now + FOLLOW_UP_PROBES * self.config.probe_interval,
                lambda: self._follow_up_join(seed),
            )

    def _follow_up_join(self, seed: Address) -> None:
        """A second push-pull with a seed shortly after joining.  When many members join at
        once, each learns from a seed only those that joined before it, and the rest reach it
        by gossip alone, which with few retransmits (the local profile's 2) often misses
        someone until the next periodic push-pull, tens of seconds later.  By now the seed
        has merged every simultaneous join."""
        if self._active() and not self._leaving:
            self._open_push_pull(seed, join=False, purpose="push-pull")

    # ------------------------------------------------------------------ sending

    def _require(self, name: str) -> _Node:
        node = self._nodes.get(name)
        if node is None or node.state in (MemberState.DEAD, MemberState.LEFT):
            raise KeyError(f"no live member named {name!r}")
        return node

    @staticmethod
    def check_meta(meta: bytes, config: Config) -> None:
        """Raise :class:`MetadataTooLarge` when ``meta`` exceeds ``config.meta_max_size``."""
        if len(meta) > config.meta_max_size:
            raise MetadataTooLarge(
                f"metadata is {len(meta)} bytes, over the limit of {config.meta_max_size}; "
                "send less, or raise Config.meta_max_size on every node"
            )

    def _packet_room(self) -> int:
        return self.config.udp_buffer_size - COMPOUND_HEADER_OVERHEAD - self.wire_options.overhead()

    def _take_broadcasts(self, room: int) -> list[bytes]:
        """Queued broadcasts for ``room`` bytes: membership news and user messages each get
        their share while both wait, and either takes what the other leaves."""
        limit = retransmit_limit(self.config.retransmit_mult, len(self._nodes))
        overhead = COMPOUND_PART_OVERHEAD
        members, users = self._broadcasts, self._user_broadcasts
        if not len(users):
            return members.take(overhead, room, limit)
        if not len(members):
            return users.take(overhead, room, limit)
        user_room = int(room * self.config.user_broadcast_share)
        taken = members.take(overhead, room - user_room, limit)
        room -= sum(len(m) + overhead for m in taken)
        user_taken = users.take(overhead, room, limit)
        room -= sum(len(m) + overhead for m in user_taken)
        return taken + user_taken + members.take(overhead, room, limit)

    def _send_with_piggyback(self, address: Address, message: bytes, node: _Node | None) -> None:
        if not self._broadcasts and not self._user_broadcasts:
            self._send_packet(address, [message], node)
            return
        room = self._packet_room() - len(message) - COMPOUND_PART_OVERHEAD
        extra = self._take_broadcasts(room) if room > 0 else []
        self._send_packet(address, [message, *extra], node)

    def _send_packet(self, address: Address, messages: list[bytes], node: _Node | None) -> None:
        crc = node is not None and node.vsn[1] >= 5
        groups = [messages] if len(messages) <= 255 else [[c] for c in make_compounds(messages)]
        for group in groups:
            data = wire.encode_packet(group, self.wire_options, crc=crc)
            self.stats.packets_out += 1
            self.stats.bytes_out += len(data)
            self._datagrams.append((address, data))

    def _gossip(self) -> None:
        if not len(self._broadcasts) and not len(self._user_broadcasts):
            return
        now, dead_time = self._now, self.config.gossip_to_the_dead_time
        expired: list[str] = []

        def eligible(name: str) -> bool:
            node = self._nodes.get(name)
            if node is None or node.state is MemberState.LEFT:
                expired.append(name)
                return False
            if node.state is MemberState.DEAD and now - node.state_change > dead_time:
                expired.append(name)
                return False
            return True

        targets = self._gossip_pool.sample(self._rng, self.config.gossip_nodes, eligible)
        for name in expired:
            self._gossip_pool.discard(name)
        room = self._packet_room()
        for name in targets:
            messages = self._take_broadcasts(room)
            if not messages:
                return
            node = self._nodes[name]
            self._send_packet(node.address, messages, node)
