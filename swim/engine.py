"""The SWIM + Lifeguard protocol engine, with memberlist's semantics and no I/O.

An :class:`Engine` is a plain object.  Every input is a method call that carries ``now``
(seconds on a monotonic clock); every output waits in a list for the driver to take: datagrams
to send, streams to open, events.  ``next_deadline()`` says when to call ``tick`` next.
Randomness comes from the ``random.Random`` it is given, so a seed fixes everything it does.
The trio runtime and the simulator drive the same object; neither makes a protocol decision.

This module takes the inputs and routes them to the engine's parts, which share one
:class:`~swim.context.Context`: the state rules (:mod:`swim.state`: what alive, suspect and
dead news does to the view, who may join it, refutation, leaving), the member table
(:mod:`swim.table`), probing (:mod:`swim.probe`), dissemination (:mod:`swim.gossip`),
anti-entropy (:mod:`swim.pushpull`), local health (:mod:`swim.awareness`) and timers
(:mod:`swim.timers`).

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
- user broadcasts get a fair share of every packet;
- the view is bounded and guarded: news of new members is limited per input, strangers may
  introduce only themselves, names must be printable, and replayed datagrams are refused.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from swim import wire
from swim.awareness import Awareness
from swim.config import Config
from swim.context import Context, Delegate
from swim.events import (
    Event,
    Isolated,
    MemberUpdated,
    Reconnected,
    UserMessage,
)
from swim.gossip import Gossip
from swim.logs import printable
from swim.members import Address, Member, MemberState, ip_bytes, name_problem
from swim.probe import Probe, Prober
from swim.pushpull import AntiEntropy, Exchange, JoinOperation
from swim.state import StateRules
from swim.table import Entry, MemberTable
from swim.timers import Timer, TimerKind, Timers
from swim.wire import DecodeError

log = logging.getLogger("swim.engine")

_REACHABLE = (MemberState.ALIVE, MemberState.SUSPECT)


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


@dataclass(frozen=True, slots=True)
class Statistics:
    """A snapshot of the engine's counters since it started (see :meth:`Engine.statistics`)."""

    probes: int
    acks: int
    nacks: int
    indirect_probes: int
    tcp_fallback_pings: int
    suspicions_raised: int
    suspicions_refuted: int
    failures_declared: int
    suspicion_checks: int
    verdicts_told: int
    stale_news_corrected: int
    push_pulls: int
    reconnect_attempts: int
    packets_in: int
    packets_out: int
    bytes_in: int
    bytes_out: int
    decode_errors: int
    dropped_packets: int
    misaddressed_pings: int
    malformed_messages: int
    unexpected_messages: int
    replays_refused: int
    members_refused: int
    health_score: int
    members: int
    members_alive: int
    members_suspect: int
    members_dead: int
    members_left: int
    queued_broadcasts: int


class _Purpose(enum.Enum):
    """What a stream we opened is for."""

    EXCHANGE = "push-pull"
    PING = "ping"
    USER = "user"


@dataclass(slots=True, eq=False)
class _Stream:
    purpose: _Purpose
    address: Address
    timer: Timer
    exchange: Exchange | None = None
    join: JoinOperation | None = None
    probe: Probe | None = None


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
    ) -> None:
        problem = name_problem(name)
        if problem is not None:
            raise ValueError(f"cannot use '{printable(name)[:80]}' as a node name: {problem}")
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
        host, port = address
        me = Entry(
            name, ip_bytes(host), port, (host, port), meta, config.vsn, 1, MemberState.ALIVE, now
        )
        self._timers = timers = Timers(now)
        self._table = MemberTable(me, rng)
        self._ctx = ctx = Context(config, rng, timers, self._table, self.wire_options)
        self._awareness = Awareness(config.awareness_max_multiplier, enabled=config.lifeguard)
        self._gossip = Gossip(ctx)
        self._rules = rules = StateRules(ctx, self._gossip, self._awareness, self._start_loops)
        self._prober = Prober(ctx, self._gossip, self._awareness, self._open_ping, rules.on_suspect)
        self._anti_entropy = AntiEntropy(
            ctx, rules.apply_states, self._open_exchange, self._running, rules.announce_alive
        )
        self._replays = (
            wire.ReplayFilter(config.replay_window)
            if keyring is not None and config.replay_window
            else None
        )
        self._last_contact = now
        self._isolated_since: float | None = None
        self._probe_timer: Timer | None = None
        self._streams: dict[int, _Stream] = {}
        self._stream_serial = 0
        self._stream_requests: list[StreamRequest] = []
        rules.broadcast_alive()  # as memberlist's setAlive: members we learn of hear it first-hand
        self._start_loops()

    # ------------------------------------------------------------------ outputs

    def take_datagrams(self) -> list[tuple[Address, bytes]]:
        """Datagrams to send, in order; the list is handed over and cleared."""
        out, self._gossip.datagrams = self._gossip.datagrams, []
        return out

    def take_stream_requests(self) -> list[StreamRequest]:
        """Streams to open; the list is handed over and cleared."""
        out, self._stream_requests = self._stream_requests, []
        return out

    def take_events(self) -> list[Event]:
        """Events since the last call; the list is handed over and cleared."""
        out, self._ctx.events = self._ctx.events, []
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`tick` must be called next, or None when nothing is scheduled."""
        if self._anti_entropy.merging:
            return self._timers.now
        return self._timers.next_deadline()

    # ------------------------------------------------------------------ queries

    @property
    def timers(self) -> Timers:
        """Every pending timer; a layer above schedules its own here, so that one
        :meth:`tick` and one :meth:`next_deadline` serve both."""
        return self._timers

    def attach(self, delegate: Delegate) -> None:
        """Let ``delegate`` hear every event as it happens and add its state to push-pulls
        (the Serf layer attaches itself)."""
        if self._ctx.delegate is not None:
            raise RuntimeError("this engine has a delegate already")
        self._ctx.delegate = delegate

    @property
    def local_member(self) -> Member:
        """This node as the cluster sees it."""
        return self._table.me.snapshot()

    @property
    def health_score(self) -> int:
        """Lifeguard's local health: 0 is healthy; each point stretches failed probes."""
        return self._awareness.score

    def statistics(self) -> Statistics:
        """The counters as they stand now."""
        counters = self._ctx.counters
        return Statistics(
            **{spec.name: getattr(counters, spec.name) for spec in dataclasses.fields(counters)},
            health_score=self._awareness.score,
            members=len(self._table),
            **{f"members_{state.value}": n for state, n in self._table.state_counts().items()},
            queued_broadcasts=len(self._gossip),
        )

    def members(self) -> list[Member]:
        """Every member in the view, this node included, dead and left ones until reaped."""
        return [entry.snapshot() for entry in self._table]

    def member(self, name: str) -> Member | None:
        """The named member, if it is in the view."""
        entry = self._table.get(name)
        return entry.snapshot() if entry is not None else None

    @property
    def isolated(self) -> bool:
        """Whether no peer has been heard from for ``isolation_timeout`` (see :class:`Isolated`)."""
        return self._isolated_since is not None

    @property
    def queued_broadcasts(self) -> int:
        """Broadcasts waiting to be sent (membership news and user messages)."""
        return len(self._gossip)

    def alive_count(self) -> int:
        """Members alive in our view, this node included."""
        return self._table.alive_count()

    def live_count(self) -> int:
        """Members neither dead nor left, this node included (memberlist's ``NumMembers``)."""
        return self._table.live_count()

    def check(self) -> list[str]:
        """Every inconsistency in the member table's indexes (none, unless there is a bug)."""
        return self._table.check()

    # ------------------------------------------------------------------ commands

    def join(self, seeds: Sequence[Address], now: float) -> int:
        """Push-pull with every seed (``Join`` set); a :class:`JoinCompleted` event with this
        call's id reports the outcome.  Seeds stay reconnect candidates."""
        self._advance(now)
        if self._rules.left:
            self._rules.rejoin()
        return self._anti_entropy.join(seeds)

    def leave(self, now: float, timeout: float | None = None) -> None:
        """Announce that we leave; :class:`LeaveCompleted` follows once the announcement has
        been sent its full count, or after ``timeout`` (default: ``leave_timeout``)."""
        self._advance(now)
        self._rules.leave(self.config.leave_timeout if timeout is None else timeout)

    def assume_converged(self, members: Sequence[wire.PushNodeState], now: float) -> None:
        """Take ``members`` as a view the whole cluster already shares: they are merged as a
        join merges a peer's state, but no news is gossiped and no events are reported, since
        everyone knows already.  What was queued for gossip before is dropped too.  For
        starting simulations and benchmarks converged, without an O(n²) gossip storm.

        Raises ValueError when the members' protocol versions are incompatible.
        """
        self._advance(now)
        self._ctx.quiet = True
        try:
            merged = self._anti_entropy.merge(
                wire.PushPull(list(members), b"", False),
                self._table.me.address,
                admissions=self.config.max_members,
                sliced=False,
            )
        finally:
            self._ctx.quiet = False
        self._gossip.forget_news()
        if not merged:
            raise ValueError(
                "these members' protocol versions are incompatible with each other or with "
                "this node's; give every member versions within what all of them support"
            )

    def update_meta(self, meta: bytes, now: float) -> None:
        """Advertise new metadata; the incarnation goes up so that it wins everywhere."""
        self._advance(now)
        self.check_meta(meta, self.config)
        if self._rules.leaving:
            raise NotRunning("cannot update metadata after leaving; join again first")
        me = self._table.me
        old = me.meta
        self._table.update(me, me.incarnation + 1, meta=meta)
        self._rules.announce_alive()
        if old != meta:
            self._ctx.emit(MemberUpdated(me.snapshot(), old))

    def send(self, name: str, payload: bytes, now: float) -> None:
        """Send ``payload`` to a member in one datagram (best effort)."""
        self._advance(now)
        entry = self._require(name)
        self._gossip.send_packet(entry.address, [b"\x08" + payload], entry)

    def send_reliable(self, name: str, payload: bytes, now: float) -> int:
        """Send ``payload`` to a member over a stream; returns the stream id."""
        self._advance(now)
        entry = self._require(name)
        body = wire.stream_body(wire.User(payload), self.wire_options)
        return self._open_stream(entry.address, body, _Purpose.USER, expects_reply=False)

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
        self._gossip.broadcast(payload, key, on_done)

    def send_to(self, address: Address, payload: bytes, now: float) -> None:
        """Send ``payload`` as a user message in one datagram to any address (Serf answers
        queries this way, to the asker's address)."""
        self._advance(now)
        self._gossip.send_packet(address, [b"\x08" + payload], self._table.at(address))

    # ------------------------------------------------------------------ inputs

    def tick(self, now: float) -> None:
        """Run every timer due by ``now``, and merge the next slice of a large push-pull."""
        self._timers.run_due(now)
        if self._anti_entropy.merging:
            self._anti_entropy.merge_slice()

    def receive_datagram(self, data: bytes, source: Address, now: float) -> None:
        """Handle one datagram; bad ones are dropped and counted, never raised."""
        timers = self._timers
        timers.now = max(timers.now, now)  # _advance, inline on the hottest path
        counters = self._ctx.counters
        counters.packets_in += 1
        counters.bytes_in += len(data)
        try:
            messages = wire.decode_packet(data, self.wire_options, self._replays)
        except wire.ReplayedPacket:
            counters.replays_refused += 1
            counters.dropped_packets += 1
            return
        except DecodeError as exc:
            counters.decode_errors += 1
            counters.dropped_packets += 1
            log.debug("dropped a packet from %s: %s", source, exc.reason)
            return
        self._last_contact = timers.now
        if self._isolated_since is not None:
            self._contact()
        trusted = self.config.trust_strangers or self._table.is_member_address(source)
        self._rules.admit_from(None if trusted else source, self.config.max_new_members_per_message)
        for message in messages:
            self._dispatch(message, source)
        self._rules.admitted()

    def handle_stream(
        self, message: wire.StreamMessage, source: Address, now: float
    ) -> bytes | None:
        """Handle the message a peer sent on an inbound stream; returns the reply to write
        (None for none)."""
        self._advance(now)
        self._contact()
        if isinstance(message, wire.PushPull):
            reply = wire.seal_stream(self._anti_entropy.body(message.join), self.wire_options)
            # from a host where no member lives, a push-pull may introduce members there only
            # (a joiner's own state is at the host it joins from), as a stranger's datagram may
            # introduce only its sender; members' push-pulls are trusted, as their gossip is
            trusted = self.config.trust_strangers or self._table.knows_host(source[0])
            introducer = None if trusted else (source[0], 0)
            self._anti_entropy.merge(
                message,
                source,
                admissions=self.config.max_new_members_per_message,
                introducer=introducer,
            )
            return reply
        if isinstance(message, wire.Ping):
            if message.node and message.node != self.name:
                return wire.encode_stream(
                    wire.Err(f"ping for {message.node!r} reached {self.name!r}"),
                    self.wire_options,
                )
            return wire.encode_stream(wire.Ack(seq_no=message.seq_no), self.wire_options)
        if isinstance(message, wire.User):
            self._ctx.emit(UserMessage(message.payload, source))
        elif isinstance(message, wire.Err):
            log.debug("stream error from %s: %s", source, printable(message.error))
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
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return  # already timed out
        stream.timer.cancel()
        if error is None and reply is None and stream.purpose is not _Purpose.USER:
            error = "no reply"
        if error is None:
            self._contact()
        self._complete_stream(stream, reply, error)

    # ------------------------------------------------------------------ loops

    def _advance(self, now: float) -> None:
        self._timers.now = max(self._timers.now, now)

    def _running(self) -> bool:
        """Neither left nor leaving."""
        return not self._rules.leaving

    def _start_loops(self) -> None:
        """Start the periodic loops at random phases (again after a rejoin, replacing the
        old ones)."""
        if self._probe_timer is not None:
            self._probe_timer.cancel()
        timers, config = self._timers, self.config
        self._probe_timer = timers.schedule(
            timers.now + self._ctx.rng.random() * config.probe_interval,
            TimerKind.PROBE,
            self._probe_tick,
        )
        self._gossip.start()
        self._anti_entropy.start()

    def _probe_tick(self) -> None:
        # memberlist's ticker skips ticks while a probe runs, so a failing probe (which waits
        # for its whole, health-scaled interval) delays the next one.
        timers, config = self._timers, self.config
        self._probe_timer = timers.schedule(
            timers.now + config.probe_interval, TimerKind.PROBE, self._probe_tick
        )
        if not self._rules.left and self._prober.idle:
            target = self._table.next_to_probe(
                timers.now, config.gossip_to_the_dead_time, config.left_member_retention
            )
            if target is not None:
                self._prober.probe(target)
        self._check_isolation()

    def _check_isolation(self) -> None:
        now = self._timers.now
        silence = now - self._last_contact
        if (
            self._isolated_since is None
            and self._table.peers_not_left > 0
            and not self._rules.left
            and silence >= self.config.isolation_timeout
        ):
            self._isolated_since = self._last_contact
            log.warning(
                "isolated: no peer heard from for %.1f s; still serving and trying to rejoin",
                silence,
            )
            self._ctx.emit(Isolated(since=self._last_contact))

    def _contact(self) -> None:
        """A peer was heard from."""
        now = self._timers.now
        self._last_contact = now
        if self._isolated_since is not None:
            log.warning("reconnected after %.1f s", now - self._isolated_since)
            self._ctx.emit(Reconnected(isolated_for=now - self._isolated_since))
            self._isolated_since = None

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, message: wire.Message, source: Address) -> None:
        if isinstance(message, wire.Ping):
            self._prober.on_ping(message, source)
        elif isinstance(message, wire.Ack):
            self._prober.on_ack(message)
        elif isinstance(message, wire.Nack):
            self._prober.on_nack(message)
        elif isinstance(message, wire.IndirectPing):
            self._prober.on_indirect_ping(message, source)
        elif isinstance(message, wire.Alive):
            self._rules.on_alive(message)
        elif isinstance(message, wire.Suspect):
            self._rules.on_suspect(message, source)
        elif isinstance(message, wire.Dead):
            self._rules.on_dead(message, source)
        elif isinstance(message, wire.User):
            self._ctx.emit(UserMessage(message.payload, source))
        else:
            self._ctx.counters.dropped_packets += 1
            self._ctx.counters.unexpected_messages += 1

    # ------------------------------------------------------------------ streams

    def _open_exchange(
        self, address: Address, body: bytes, kind: Exchange, join: JoinOperation | None
    ) -> None:
        self._open_stream(address, body, _Purpose.EXCHANGE, exchange=kind, join=join)

    def _open_ping(self, address: Address, body: bytes, deadline: float, probe: Probe) -> None:
        self._open_stream(address, body, _Purpose.PING, deadline=deadline, probe=probe)

    def _open_stream(
        self,
        address: Address,
        body: bytes,
        purpose: _Purpose,
        *,
        expects_reply: bool = True,
        deadline: float | None = None,
        exchange: Exchange | None = None,
        join: JoinOperation | None = None,
        probe: Probe | None = None,
    ) -> int:
        self._stream_serial += 1
        stream_id = self._stream_serial
        if deadline is None:
            deadline = self._timers.now + self.config.tcp_timeout
        timer = self._timers.schedule(
            deadline, TimerKind.STREAM, lambda: self._stream_timed_out(stream_id), purpose.value
        )
        self._streams[stream_id] = _Stream(purpose, address, timer, exchange, join, probe)
        data = wire.seal_stream(body, self.wire_options)
        self._stream_requests.append(
            StreamRequest(stream_id, address, data, deadline, expects_reply)
        )
        return stream_id

    def _stream_timed_out(self, stream_id: int) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            self._complete_stream(stream, None, "timed out")

    def _complete_stream(
        self, stream: _Stream, reply: wire.StreamMessage | None, error: str | None
    ) -> None:
        if stream.purpose is _Purpose.PING:
            assert stream.probe is not None
            self._prober.on_tcp_ack(stream.probe, reply if error is None else None)
        elif stream.purpose is _Purpose.USER:
            if error is not None:
                log.debug("reliable message to %s failed: %s", stream.address, error)
        else:
            assert stream.exchange is not None
            self._anti_entropy.finished(stream.address, stream.join, stream.exchange, reply, error)

    # ------------------------------------------------------------------ sending

    def _require(self, name: str) -> Entry:
        entry = self._table.get(name)
        if entry is None or entry.state in (MemberState.DEAD, MemberState.LEFT):
            raise KeyError(f"no live member named {name!r}")
        return entry

    @staticmethod
    def check_meta(meta: bytes, config: Config) -> None:
        """Raise :class:`MetadataTooLarge` when ``meta`` exceeds ``config.meta_max_size``."""
        if len(meta) > config.meta_max_size:
            raise MetadataTooLarge(
                f"metadata is {len(meta)} bytes, over the limit of {config.meta_max_size}; "
                "send less, or raise Config.meta_max_size on every node"
            )
