"""What every part of one member's engine shares: its configuration, clock, randomness, view,
counters and the queue of what it has to say."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol

from swim import wire
from swim.config import Config
from swim.events import Event
from swim.table import MemberTable
from swim.timers import Timers


@dataclass(slots=True)
class Counters:
    """The engine's running counts; :meth:`swim.engine.Engine.statistics` snapshots them."""

    probes: int = 0
    acks: int = 0
    nacks: int = 0
    indirect_probes: int = 0
    tcp_fallback_pings: int = 0
    suspicions_raised: int = 0
    suspicions_refuted: int = 0
    suspicion_checks: int = 0
    verdicts_told: int = 0
    stale_news_corrected: int = 0
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


class Delegate(Protocol):
    """What a layer above the engine (the Serf layer) hears and adds, as memberlist's
    ``Delegate``, ``EventDelegate`` and ``PingDelegate`` do together."""

    def notify(self, event: Event) -> None:
        """An engine event, as it happens (membership changes, user messages, ...)."""

    def local_state(self, join: bool) -> bytes:
        """The layer's part of our push-pull state."""

    def merge_remote_state(self, data: bytes, join: bool) -> None:
        """A peer's part of its push-pull state."""

    def ack_payload(self) -> bytes:
        """What our acks to direct pings carry (memberlist's ``PingDelegate.AckPayload``:
        Serf's network coordinate)."""

    def ping_completed(self, name: str, rtt: float, payload: bytes) -> None:
        """Our direct ping of member ``name`` was acked within the probe timeout, ``rtt``
        seconds after we sent it, with ``payload`` (``NotifyPingComplete``)."""


@dataclass(slots=True, eq=False)
class Context:
    """The engine's shared state; each part takes what it needs from here."""

    config: Config
    rng: random.Random
    timers: Timers
    table: MemberTable
    wire_options: wire.WireOptions
    counters: Counters = field(default_factory=Counters)
    events: list[Event] = field(default_factory=list)
    quiet: bool = False
    """While taking a view everyone already shares (``assume_converged``): no news, and no
    events for the driver (the delegate still hears of every member)."""
    delegate: Delegate | None = None

    @property
    def now(self) -> float:
        return self.timers.now

    def emit(self, event: Event) -> None:
        """Tell the delegate of ``event`` at once, and report it to the driver."""
        if self.delegate is not None:
            self.delegate.notify(event)
        if not self.quiet:
            self.events.append(event)
