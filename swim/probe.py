"""Failure detection: one probe at a time, indirect probes, nacks, the TCP fallback.

A probe pings its target directly; if no ack comes within ``probe_timeout`` it asks
``indirect_checks`` alive members to ping the target too (they nack when the target stays
silent, Lifeguard's way of telling a slow prober from a dead target) and tries a TCP ping;
if nothing has answered by the end of the probe's interval (stretched by the local health
score) the target is suspected, at the incarnation it had when the probe began.  The other
side lives here too: answering pings, and pinging on behalf of a member that asked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from swim import wire
from swim.awareness import Awareness
from swim.context import Context
from swim.gossip import Gossip
from swim.members import Address, MemberState, address_of
from swim.table import Entry
from swim.timers import Timer, TimerKind

log = logging.getLogger("swim.engine")

NACK_SHARE = 0.8
"""A helper nacks after this share of the requester's remaining wait (Lifeguard's 80%)."""

_ACCUSED = (MemberState.SUSPECT, MemberState.DEAD)


@dataclass(slots=True, eq=False)
class Probe:
    """One probe of ``target``, from its ping to its outcome."""

    seq_no: int
    target: str
    incarnation: int
    """The target's when the probe began: a failure accuses only that one."""
    start: float
    end: float
    timer: Timer | None = None
    """The timeout (cancelled by an ack), then the end of the probe."""
    expected_nacks: int = 0
    nacks: int = 0
    done: bool = False
    direct: bool = True
    """Still within the probe timeout: an ack now measures the RTT (memberlist hands only
    these to its ping delegate)."""

    def penalty(self) -> int:
        """Health points a failed probe costs: the nacks that did not come (the helpers could
        not reach us either, so we are the slow one), or one when none was asked for."""
        if self.expected_nacks > 0:
            return max(0, self.expected_nacks - self.nacks)
        return 1


@dataclass(slots=True, eq=False)
class Relay:
    """A ping we send on behalf of a member whose own probe went unanswered."""

    seq_no: int
    """The requester's sequence number, which our ack or nack carries."""
    requester: Address
    requester_entry: Entry | None
    timer: Timer | None = None
    """When we stop waiting for the target; cancelled by its ack."""
    answered: bool = False


class Prober:
    """Probes members one at a time and answers others' probes."""

    def __init__(
        self,
        ctx: Context,
        gossip: Gossip,
        awareness: Awareness,
        open_ping: Callable[[Address, bytes, float, Probe], None],
        accuse: Callable[[wire.Suspect], None],
    ) -> None:
        self._ctx = ctx
        self._gossip = gossip
        self._awareness = awareness
        self._open_ping = open_ping
        self._accuse = accuse
        self._seq_no = 0
        self._waiting: dict[int, Probe | Relay] = {}  # by the seq_no of our ping
        self.current: Probe | None = None

    @property
    def idle(self) -> bool:
        """No probe is running (memberlist skips its ticks while one does)."""
        return self.current is None or self.current.done

    def probe(self, entry: Entry) -> None:
        """Start probing ``entry``."""
        ctx = self._ctx
        config, now = ctx.config, ctx.now
        ctx.counters.probes += 1
        self._seq_no += 1
        end = now + self._awareness.scale(config.probe_interval)
        probe = Probe(self._seq_no, entry.name, entry.incarnation, start=now, end=end)
        self.current = probe
        ping = wire.encode(self._ping(probe.seq_no, entry.name))
        if entry.state is MemberState.ALIVE or not config.lifeguard:
            self._gossip.send(entry.address, ping, entry)
        else:  # buddy system: tell a suspect what we think, so that it can refute at once
            suspect = wire.Suspect(
                incarnation=entry.incarnation, node=entry.name, from_node=ctx.table.me.name
            )
            self._gossip.send_packet(entry.address, [ping, wire.encode(suspect)], entry)
        # the probe's end is scheduled only once the timeout passes unanswered: most probes
        # are acked before it, and a timer less is a wake-up less
        probe.timer = ctx.timers.schedule(
            now + config.probe_timeout,
            TimerKind.PROBE_TIMEOUT,
            lambda: self._timed_out(probe, entry),
            entry.name,
        )
        self._waiting[probe.seq_no] = probe

    def on_ack(self, ack: wire.Ack) -> None:
        waiter = self._waiting.pop(ack.seq_no, None)
        if waiter is None:
            return
        if waiter.timer is not None:
            waiter.timer.cancel()
        if isinstance(waiter, Probe):
            delegate = self._ctx.delegate
            if waiter.direct and delegate is not None:
                delegate.ping_completed(waiter.target, self._ctx.now - waiter.start, ack.payload)
            self._succeeded(waiter)
        else:
            waiter.answered = True
            reply = wire.encode(wire.Ack(seq_no=waiter.seq_no))
            self._gossip.send(waiter.requester, reply, waiter.requester_entry)

    def on_nack(self, nack: wire.Nack) -> None:
        waiter = self._waiting.get(nack.seq_no)
        if isinstance(waiter, Probe):
            waiter.nacks += 1
            self._ctx.counters.nacks += 1

    def on_tcp_ack(self, probe: Probe, reply: wire.StreamMessage | None) -> None:
        """The TCP fallback ping's outcome (``reply`` None when it failed)."""
        if not (isinstance(reply, wire.Ack) and reply.seq_no == probe.seq_no):
            return
        if not probe.done:
            log.warning(
                "was able to connect to %s over TCP but other probes failed; "
                "the network may be misconfigured",
                probe.target,
            )
        if self._waiting.get(probe.seq_no) is probe:
            del self._waiting[probe.seq_no]
            if probe.timer is not None:
                probe.timer.cancel()
        self._succeeded(probe)

    def _ping(self, seq_no: int, target: str) -> wire.Ping:
        """A ping for ``target`` that tells it where to answer."""
        me = self._ctx.table.me
        return wire.Ping(
            seq_no=seq_no,
            node=target,
            source_addr=me.addr,
            source_port=me.port,
            source_node=me.name,
        )

    def _timed_out(self, probe: Probe, entry: Entry) -> None:
        """No direct ack in time: ask others to probe, and try TCP, until the probe ends."""
        if probe.done:
            return
        probe.direct = False
        ctx = self._ctx
        config = ctx.config
        end = ctx.timers.schedule(
            probe.end, TimerKind.PROBE_END, lambda: self._failed(probe), probe.target
        )
        if self._waiting.get(probe.seq_no) is probe:
            probe.timer = end
        helpers = ctx.table.alive_sample(config.indirect_checks, lambda n: n != probe.target)
        me = ctx.table.me
        for helper in helpers:
            nack = helper.vsn[1] >= 4
            probe.expected_nacks += nack
            request = wire.IndirectPing(
                seq_no=probe.seq_no,
                target=entry.addr,
                port=entry.port,
                node=entry.name,
                nack=nack,
                source_addr=me.addr,
                source_port=me.port,
                source_node=me.name,
            )
            ctx.counters.indirect_probes += 1
            self._gossip.send(helper.address, wire.encode(request), helper)
        if not config.disable_tcp_pings and entry.vsn[1] >= 3:
            ctx.counters.tcp_fallback_pings += 1
            ping = wire.stream_body(self._ping(probe.seq_no, entry.name), ctx.wire_options)
            self._open_ping(entry.address, ping, probe.end, probe)

    def _succeeded(self, probe: Probe) -> None:
        if probe.done:
            return
        probe.done = True
        self._ctx.counters.acks += 1
        self._awareness.apply(-1)

    def _failed(self, probe: Probe) -> None:
        """The probe's interval ran out with no ack from anyone."""
        if self._waiting.get(probe.seq_no) is probe:
            del self._waiting[probe.seq_no]
        if probe.done:
            return
        probe.done = True
        self._awareness.apply(probe.penalty())
        entry = self._ctx.table.get(probe.target)
        if entry is not None:
            log.info("suspect %s has failed, no acks received", entry.name)
            # at the incarnation probed, as memberlist does: if the member refuted or came
            # back at a new address meanwhile, the accusation is stale and changes nothing
            self._accuse(
                wire.Suspect(
                    incarnation=probe.incarnation,
                    node=entry.name,
                    from_node=self._ctx.table.me.name,
                )
            )

    # ------------------------------------------------------------------ others' probes

    def on_ping(self, ping: wire.Ping, source: Address) -> None:
        ctx = self._ctx
        table = ctx.table
        if ping.node and ping.node != table.me.name:
            ctx.counters.dropped_packets += 1
            return
        destination = _reply_address(ping.source_addr, ping.source_port, source)
        payload = ctx.delegate.ack_payload() if ctx.delegate is not None else b""
        ack = wire.encode(wire.Ack(seq_no=ping.seq_no, payload=payload))
        pinger = table.get(ping.source_node)
        if pinger is not None and pinger.state in _ACCUSED:
            # A member we suspect or hold dead is up and reaches us, and has not refuted our
            # verdict (its refutation was lost, or it never heard of the verdict): tell it, as
            # the buddy system tells a suspect, so that its refutation, or its current alive,
            # reaches us.  Otherwise only our own probe of it (once per round of the probe
            # ring) or a push-pull would, which after a short partition takes tens of seconds.
            verdict = wire.Suspect(
                incarnation=pinger.incarnation, node=pinger.name, from_node=table.me.name
            )
            self._gossip.send_packet(destination, [ack, wire.encode(verdict)], pinger)
            return
        self._gossip.send(destination, ack, pinger)

    def on_indirect_ping(self, request: wire.IndirectPing, source: Address) -> None:
        ctx = self._ctx
        if len(request.target) not in (4, 16) or not request.port:
            ctx.counters.dropped_packets += 1
            return
        self._seq_no += 1
        seq_no = self._seq_no
        requester = _reply_address(request.source_addr, request.source_port, source)
        relay = Relay(request.seq_no, requester, ctx.table.get(request.source_node))
        timers = ctx.timers
        if request.nack:
            timers.schedule(
                ctx.now + self._nack_delay(), TimerKind.RELAY_NACK, lambda: self._nack(relay)
            )
        relay.timer = timers.schedule(
            ctx.now + ctx.config.probe_timeout,
            TimerKind.RELAY_END,
            lambda: self._stop_waiting(seq_no),
            request.node,
        )
        self._waiting[seq_no] = relay
        target = address_of(request.target, request.port)
        ping = wire.encode(self._ping(seq_no, request.node))
        self._gossip.send(target, ping, ctx.table.get(request.node))

    def _stop_waiting(self, seq_no: int) -> None:
        self._waiting.pop(seq_no, None)

    def _nack(self, relay: Relay) -> None:
        if not relay.answered:
            nack = wire.encode(wire.Nack(seq_no=relay.seq_no))
            self._gossip.send(relay.requester, nack, relay.requester_entry)

    def _nack_delay(self) -> float:
        """How long a helper waits for the target before it nacks.

        The requester asked for help after ``probe_timeout`` and gives up ``probe_interval``
        after its probe began, so a nack must land within the difference.  memberlist nacks
        after a whole ``probe_timeout`` (0.5 s of a 0.5 s window on LAN): every nack came
        too late, and a healthy member that probed a dead one lost a point of health per
        helper.  Lifeguard's paper nacks at 80% of the timeout; this also keeps within the
        window where the timeout is longer than what is left of it (WAN: 3 s of 2 s).
        """
        config = self._ctx.config
        window = config.probe_interval - config.probe_timeout
        if window <= 0:
            return config.probe_timeout
        return NACK_SHARE * min(config.probe_timeout, window)


def _reply_address(addr: bytes, port: int, source: Address) -> Address:
    if len(addr) in (4, 16) and port:
        return address_of(addr, port)
    return source
