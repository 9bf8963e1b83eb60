"""One member's whole protocol, sans-IO: the engine, the Serf layer, and the isolation policy.

:class:`MemberStack` is what every driver drives: the trio runtime over sockets, the
simulator on its virtual network, and the tests by hand.  It has one surface: inputs carry
``now`` (datagrams, stream bytes, ticks, commands), outputs wait to be taken (datagrams,
streams to open, events), and :meth:`~MemberStack.next_deadline` says when to tick.  The
Serf layer, when the member has tags, sits on the engine as its delegate and on its timers,
so driving the stack drives both.  Streams go in and out as bytes (:class:`IncomingStream`),
so no driver decodes protocol messages itself.

The stack also owns the policy of an isolated member, which every driver used to write for
itself: while isolated it asks its driver for the seeds again (:class:`RejoinDue`, answered
with :meth:`~MemberStack.rejoin`), waiting longer between attempts, and with
``exit_when_isolated`` it reports :class:`IsolationLimitReached` once that long has passed.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from swim import wire
from swim.config import Config
from swim.engine import Engine, StreamRequest
from swim.events import Event, Isolated, JoinCompleted, Reconnected
from swim.members import Address
from swim.serf.layer import Serf, SerfEvent
from swim.timers import Timer, TimerKind
from swim.wire import serf as serf_wire

log = logging.getLogger("swim.stack")

MAX_REJOIN_WAIT = 60.0
"""The longest wait between two rejoin attempts of an isolated member."""
UNREADABLE_REPLY = "the reply could not be read (likely an encryption key or label mismatch)"
"""Why a stream to a member failed when the member answered nothing this node can decode or
closed the connection at once: what a member with another key or label does."""


@dataclass(frozen=True, slots=True)
class RejoinDue:
    """An isolated member wants to try its seeds again: resolve them and call
    :meth:`MemberStack.rejoin` (with no addresses when there are none)."""

    attempt: int


@dataclass(frozen=True, slots=True)
class IsolationLimitReached:
    """The member stayed isolated for ``exit_when_isolated`` seconds: it should stop."""

    isolated_for: float


StackEvent = Event | SerfEvent | RejoinDue | IsolationLimitReached
"""Everything a driver may take from a stack."""


class IncomingStream:
    """The one message a peer sends on a stream, as its bytes arrive.  Decoding errors are
    kept, never raised; :meth:`receive_data` touches nothing but this object, so a driver may
    run it wherever it likes (a worker thread, for a large push-pull)."""

    __slots__ = ("_reader", "error", "message")

    def __init__(self, options: wire.WireOptions) -> None:
        self._reader = wire.StreamReader(options)
        self.message: wire.StreamMessage | None = None
        self.error: str | None = None
        """Why the bytes could not be read, once they could not."""

    @property
    def done(self) -> bool:
        return self.message is not None or self.error is not None

    def receive_data(self, data: bytes) -> bool:
        """Add bytes from the peer; True once the message (or an error) is complete."""
        if not self.done:
            try:
                self.message = self._reader.receive_data(data)
            except wire.DecodeError as exc:
                self.error = exc.reason
        return self.done

    def end_of_stream(self) -> None:
        """The peer closed its side."""
        if not self.done:
            try:
                self.message = self._reader.end_of_stream()
            except wire.DecodeError as exc:
                self.error = exc.reason


class MemberStack:
    """One member: the engine, its Serf layer (with ``tags``, even empty) and the isolation
    policy, driven through one sans-IO surface.  See the module docstring."""

    def __init__(
        self,
        name: str,
        address: Address,
        config: Config,
        rng: random.Random,
        *,
        meta: bytes = b"",
        tags: Mapping[str, str] | None = None,
        keyring: wire.Keyring | None = None,
        now: float = 0.0,
        coalesce_period: float = 0.0,
        quiescent_period: float = 0.0,
        tombstone_timeout: float = 24 * 3600.0,
        event_size_limit: int = serf_wire.DEFAULT_USER_EVENT_SIZE_LIMIT,
        rejoin_interval: float = 5.0,
        exit_when_isolated: float | None = None,
        disable_coordinates: bool = False,
    ) -> None:
        if tags is not None:
            meta = serf_wire.encode_tags(tags, config.meta_max_size)
        self.engine = Engine(name, address, config, rng, meta=meta, keyring=keyring, now=now)
        self.serf: Serf | None = None
        if tags is not None:
            self.serf = Serf(
                self.engine,
                tags,
                rng,
                reconnect_timeout=config.reconnect_timeout,
                tombstone_timeout=tombstone_timeout,
                event_size_limit=event_size_limit,
                coalesce_period=coalesce_period,
                quiescent_period=quiescent_period,
                disable_coordinates=disable_coordinates,
            )
        self._timers = self.engine.timers
        self._rejoin_interval = rejoin_interval
        self._exit_when_isolated = exit_when_isolated
        self._rejoin_timer: Timer | None = None
        self._limit_timer: Timer | None = None
        self._rejoin_wait = rejoin_interval
        self._rejoin_attempts = 0
        self._rejoin_join: int | None = None
        self._joins_without_replay: set[int] = set()
        self._events: list[StackEvent] = []

    # ------------------------------------------------------------------ outputs

    def take_datagrams(self) -> list[tuple[Address, bytes]]:
        """Datagrams to send, in order; the list is handed over and cleared."""
        return self.engine.take_datagrams()

    def take_stream_requests(self) -> list[StreamRequest]:
        """Streams to open; the list is handed over and cleared."""
        return self.engine.take_stream_requests()

    def take_events(self) -> Sequence[StackEvent]:
        """Events since the last call (the engine's, then the Serf layer's, then the
        policy's requests); the list is handed over and cleared."""
        engine_events = self.engine.take_events()
        for event in engine_events:
            self._follow(event)
        serf_events = self.serf.take_events() if self.serf is not None else []
        if not (serf_events or self._events):
            return engine_events
        out = [*engine_events, *serf_events, *self._events]
        self._events = []
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`tick` must be called next, or None."""
        return self.engine.next_deadline()

    # ------------------------------------------------------------------ inputs

    def tick(self, now: float) -> None:
        """Run every timer due by ``now``."""
        self.engine.tick(now)

    def receive_datagram(self, data: bytes, source: Address, now: float) -> None:
        """Handle one datagram; bad ones are dropped and counted, never raised."""
        self.engine.receive_datagram(data, source, now)

    def incoming(self) -> IncomingStream:
        """A reader for the bytes of one stream, inbound or the reply to one of ours."""
        return IncomingStream(self.engine.wire_options)

    def answer(self, stream: IncomingStream, source: Address, now: float) -> bytes | None:
        """Handle what a peer sent on an inbound stream; the reply to write, if any."""
        if stream.message is None:
            return None  # dropped: the engine counts only streams it could read
        return self.engine.handle_stream(stream.message, source, now)

    def stream_finished(
        self,
        stream_id: int,
        reply: IncomingStream | None,
        now: float,
        error: str | None = None,
    ) -> None:
        """Report the outcome of a stream the stack asked for: the reply as it was read, or
        why there is none (``error``, for the transport: refused, reset, timed out)."""
        message = None
        if error is None and reply is not None:
            message = reply.message
            if message is None:
                error = UNREADABLE_REPLY
        self.engine.stream_finished(stream_id, message, now, error=error)

    # ------------------------------------------------------------------ commands

    def join(self, seeds: Sequence[Address], now: float, *, replay: bool = False) -> int:
        """Push-pull with every seed; :class:`JoinCompleted` with the returned id says how it
        went.  Once it succeeds the Serf layer announces us; unless ``replay``, the cluster's
        past user events are not delivered again (Serf's ``join -replay``)."""
        join_id = self.engine.join(seeds, now)
        if self.serf is not None and not replay:
            self._joins_without_replay.add(join_id)
            self.serf.ignore_old_events = True
        return join_id

    def leave(self, now: float, timeout: float | None = None) -> None:
        """Leave gracefully (with the Serf layer, Serf's leave intent goes out first);
        :class:`LeaveCompleted` follows."""
        if self.serf is not None:
            self.serf.leave(now, self.engine.config.leave_timeout if timeout is None else timeout)
        else:
            self.engine.leave(now, timeout)

    def rejoin(self, seeds: Sequence[Address], now: float) -> None:
        """Answer :class:`RejoinDue`: try ``seeds`` (none: just wait for the next attempt)."""
        if not self.engine.isolated:
            return
        if seeds:
            self._rejoin_join = self.join(seeds, now)
        else:
            self._schedule_rejoin()

    # ------------------------------------------------------------------ the policy

    def _follow(self, event: Event) -> None:
        """What the stack itself does about an engine event."""
        if isinstance(event, JoinCompleted):
            self._joined(event)
        elif isinstance(event, Isolated):
            self._isolated()
        elif isinstance(event, Reconnected):
            self._reconnected()

    def _joined(self, event: JoinCompleted) -> None:
        serf = self.serf
        if serf is not None:
            self._joins_without_replay.discard(event.join_id)
            serf.ignore_old_events = bool(self._joins_without_replay)
            if event.joined:
                serf.joined(self._timers.now)
        if event.join_id == self._rejoin_join:
            self._rejoin_join = None
            if not event.joined:
                log.info("rejoin failed: %s", event.failures)
            self._schedule_rejoin()

    def _isolated(self) -> None:
        if self._rejoin_timer is not None or self._rejoin_join is not None:
            return
        self._rejoin_wait = self._rejoin_interval
        self._request_rejoin()
        if self._exit_when_isolated is not None:
            self._limit_timer = self._timers.schedule(
                self._timers.now + self._exit_when_isolated,
                TimerKind.ISOLATION_LIMIT,
                self._limit_reached,
            )

    def _request_rejoin(self) -> None:
        self._rejoin_timer = None
        if self.engine.isolated:
            self._rejoin_attempts += 1
            self._events.append(RejoinDue(self._rejoin_attempts))

    def _schedule_rejoin(self) -> None:
        if not self.engine.isolated:
            return
        wait, self._rejoin_wait = self._rejoin_wait, min(2 * self._rejoin_wait, MAX_REJOIN_WAIT)
        self._rejoin_timer = self._timers.schedule(
            self._timers.now + wait, TimerKind.REJOIN, self._request_rejoin
        )

    def _limit_reached(self) -> None:
        self._limit_timer = None
        if self.engine.isolated:
            assert self._exit_when_isolated is not None
            self._events.append(IsolationLimitReached(self._exit_when_isolated))

    def _reconnected(self) -> None:
        for timer in (self._rejoin_timer, self._limit_timer):
            if timer is not None:
                timer.cancel()
        self._rejoin_timer = self._limit_timer = None
        self._rejoin_join = None
