"""The state rules: what news of a member does to the view, who may join it, and our own life
(refuting accusations, leaving, coming back).

memberlist keeps these in ``state.go`` (aliveNode, suspectNode, deadNode, refute); here every
rule about a member's state lives in :class:`StateRules`, and the engine only routes messages
to it.  Where memberlist is wrong, the rule says so: stale accusations are answered with our
current alive, a restarted member may reclaim its name, peers' metadata and names are bounded
and checked, and the view is guarded against floods of newcomers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from swim import wire
from swim.awareness import Awareness
from swim.context import Context
from swim.events import (
    LeaveCompleted,
    MemberAlive,
    MemberConflict,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberSuspect,
    MemberUpdated,
)
from swim.gossip import Gossip
from swim.logs import Throttle, held_back, printable
from swim.members import Address, MemberState, address_of, name_problem
from swim.suspicion import Suspicion, suspicion_bounds
from swim.table import Entry
from swim.timers import Timer, TimerKind
from swim.wire import NodeState
from swim.wire.limits import DEFAULT_META_MAX_BYTES

log = logging.getLogger("swim.engine")

_REACHABLE = (MemberState.ALIVE, MemberState.SUSPECT)

SUSPICION_CHECKS = 3
"""How many times, a probe interval apart, a suspicion is checked before it runs out."""
ANNOUNCE_PASSES = 2
"""How many times our new metadata is sent to each alive member, besides its gossip."""


class _Pending:
    """A suspicion this member holds, with its timers."""

    __slots__ = ("change", "check", "entry", "last_check", "suspicion", "timer")

    def __init__(self, entry: Entry, suspicion: Suspicion, last_check: float | None) -> None:
        self.entry = entry
        self.change = entry.state_change
        """The suspect's state change when it was suspected (a later one ends this)."""
        self.suspicion = suspicion
        self.timer: Timer | None = None
        """When the member is declared dead."""
        self.check: Timer | None = None
        self.last_check = last_check

    def cancel(self) -> None:
        for timer in (self.timer, self.check):
            if timer is not None:
                timer.cancel()


class StateRules:
    """Every rule about members' states, applied to the shared view."""

    def __init__(
        self,
        ctx: Context,
        gossip: Gossip,
        awareness: Awareness,
        restart_loops: Callable[[], None],
    ) -> None:
        self._ctx = ctx
        self._config = ctx.config
        self._table = ctx.table
        self._timers = ctx.timers
        self._name = ctx.table.me.name
        self._gossip = gossip
        self._awareness = awareness
        self._restart_loops = restart_loops
        self._peer_meta_max_size = ctx.config.meta_max_size + DEFAULT_META_MAX_BYTES
        self._admissions = 0  # new members the input being handled may still introduce
        self._introducer: Address | None = None  # when set: whom it may introduce (port 0: any)
        self._throttle = Throttle()
        self._suspicions: dict[str, _Pending] = {}
        self._leaving = False
        self._left = False
        self._leave_timer: Timer | None = None
        self._sweep: Timer | None = None
        self._sweep_queue: list[str] = []  # who our latest alive goes to next

    @property
    def leaving(self) -> bool:
        """A leave was asked for (and may have completed)."""
        return self._leaving or self._left

    @property
    def left(self) -> bool:
        """The leave went out: the member is out of the cluster until it joins again."""
        return self._left

    def admit_from(self, source: Address | None, admissions: int) -> None:
        """The input handled next may introduce ``admissions`` new members, and only at
        ``source`` when given (port 0: at its host)."""
        self._admissions, self._introducer = admissions, source

    def admitted(self) -> None:
        """The input is handled: no one else may introduce members through it."""
        self._introducer = None

    def leave(self, timeout: float) -> None:
        """Announce that we leave; :class:`LeaveCompleted` follows once the announcement has
        been sent its full count, or after ``timeout``."""
        if self._leaving or self._left:
            return
        self._leaving = True
        me = self._table.me
        self.on_dead(wire.Dead(incarnation=me.incarnation, node=me.name, from_node=me.name))
        if not self._table.alive_peers:
            self.finish_leave(timed_out=False)
        else:
            self._leave_timer = self._timers.schedule(
                self._timers.now + timeout,
                TimerKind.LEAVE,
                lambda: self.finish_leave(timed_out=True),
            )

    def apply_states(
        self,
        states: Sequence[wire.PushNodeState],
        admissions: int,
        introducer: Address | None,
    ) -> int:
        """Apply a slice of a peer's push-pull state, which may introduce ``admissions`` new
        members (only at ``introducer``, when given); returns how many it still may."""
        self._admissions, self._introducer = admissions, introducer
        table, me = self._table, self._table.me
        for state in states:
            if state.state is NodeState.ALIVE:
                entry = table.get(state.name)
                if (
                    entry is not None
                    and entry is not me
                    and state.incarnation <= entry.incarnation
                    and state.port == entry.port
                    and state.addr == entry.addr
                    and state.vsn == entry.vsn
                ):
                    continue  # old news: what on_alive concludes, without building an Alive
                self.on_alive(
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
                self.on_dead(
                    wire.Dead(incarnation=state.incarnation, node=state.name, from_node=state.name)
                )
            else:  # a peer's dead or suspect opinion only raises a suspicion here
                self.on_suspect(
                    wire.Suspect(
                        incarnation=state.incarnation, node=state.name, from_node=self._name
                    )
                )
        self._introducer = None
        return self._admissions

    def on_alive(self, alive: wire.Alive) -> None:
        table, me = self._table, self._table.me
        about_me = alive.node == self._name
        if about_me and self._left:
            return
        vsn = alive.vsn
        if vsn[0] == 0 or vsn[1] == 0 or vsn[0] > vsn[1] or len(alive.addr) not in (4, 16):
            self._ctx.counters.dropped_packets += 1
            self._ctx.counters.malformed_messages += 1
            return
        if len(alive.meta) > self._peer_meta_max_size:
            self._refuse_member(
                "metadata",
                alive.node,
                f"its metadata is {len(alive.meta)} bytes, over the "
                f"{self._peer_meta_max_size} accepted from peers",
            )
            return
        entry = table.get(alive.node)
        takes_over = False
        if entry is None:
            if alive.incarnation == 0 or not self._admit(alive):
                return  # at incarnation 0 it could not win over anything: nothing to record
            entry = table.add(
                alive.node, alive.addr, alive.port, meta=alive.meta, vsn=vsn, now=self._timers.now
            )
        elif entry.addr != alive.addr or entry.port != alive.port:
            reclaimable = entry.state is MemberState.LEFT or (
                entry.state is MemberState.DEAD
                and self._timers.now - entry.state_change >= self._config.dead_node_reclaim_time
            )
            if not reclaimable:
                other = address_of(alive.addr, alive.port)
                if entry.conflict != other:
                    entry.conflict = other
                    log.warning(
                        "conflicting address for %s: %s holds it, %s claims it",
                        entry.name,
                        entry.address,
                        other,
                    )
                    self._ctx.emit(MemberConflict(entry.snapshot(), other))
                return
            takes_over = True

        if about_me:
            if alive.incarnation < entry.incarnation:
                return
        elif alive.incarnation <= entry.incarnation and not takes_over:
            return
        self._cancel_suspicion(alive.node)
        old_state, old_meta = entry.state, entry.meta
        if about_me:
            if alive.incarnation == me.incarnation and alive.meta == me.meta and vsn == me.vsn:
                return
            self._refute(alive.incarnation)
            return
        self._gossip.tell(alive, key=alive.node)
        table.update(entry, alive.incarnation, meta=alive.meta, vsn=vsn)
        if takes_over:
            table.move(entry, alive.addr, alive.port)
        table.set_state(entry, MemberState.ALIVE, self._timers.now)
        emit = self._ctx.emit
        if old_state in (MemberState.DEAD, MemberState.LEFT):
            emit(MemberJoined(entry.snapshot()))
        elif old_state is MemberState.SUSPECT:
            emit(MemberAlive(entry.snapshot()))
            if old_meta != entry.meta:
                emit(MemberUpdated(entry.snapshot(), old_meta))
        elif old_meta != entry.meta:
            emit(MemberUpdated(entry.snapshot(), old_meta))

    def _admit(self, alive: wire.Alive) -> bool:
        """Whether news of a member we do not know may add it to the view: its name must be
        valid, the view not full, and the input that brings it within its share of newcomers
        (a stranger's datagram may introduce only its sender, a stranger's push-pull only
        members on its host)."""
        introducer = self._introducer
        if introducer is not None:
            host, port = address_of(alive.addr, alive.port)
            if host != introducer[0] or (introducer[1] and port != introducer[1]):
                if introducer[1]:
                    why = f"{introducer[0]}:{introducer[1]}, which is not a member, may introduce "
                    why += "only itself"
                else:
                    why = f"a push-pull from {introducer[0]} may introduce only members there"
                self._refuse_member(
                    "stranger", alive.node, why + " (set Config.trust_strangers behind NAT)"
                )
                return False
        if self._admissions <= 0:
            self._ctx.counters.members_refused += 1  # it comes again, by gossip or push-pull
            return False
        problem = name_problem(alive.node)
        if problem is not None:
            self._refuse_member("name", alive.node, problem)
            return False
        table = self._table
        if len(table) >= self._config.max_members and not self._evict_departed():
            self._refuse_member(
                "full",
                alive.node,
                f"this node holds {len(table)} members, its max_members; raise "
                "max_members on every node if the cluster really is that large",
            )
            return False
        self._admissions -= 1
        return True

    def _evict_departed(self) -> bool:
        """Make room at ``max_members`` by reaping a dead or left member early (a live one is
        worth more); False when a few random picks find none."""
        entry = self._table.departed_entry()
        if entry is None:
            return False
        self._table.reap(entry)
        return True

    def _refuse_member(self, kind: str, name: str, why: str) -> None:
        """Count a refused member and say why, at most once per report interval per kind."""
        self._ctx.counters.members_refused += 1
        held = self._throttle.allow(kind, self._timers.now)
        if held is not None:
            log.warning("refused member %r: %s%s", printable(name)[:80], why, held_back(held))

    def on_suspect(self, suspect: wire.Suspect, relayer: Address | None = None) -> None:
        table = self._table
        entry = table.get(suspect.node)
        if entry is None:
            return
        if suspect.incarnation < entry.incarnation:
            if entry is table.me:
                self._correct_accuser(suspect.from_node, relayer)
            else:
                self._correct_relayer(entry, relayer)
            return
        pending = self._suspicions.get(suspect.node)
        if pending is not None:
            if pending.suspicion.confirm(suspect.from_node):
                self._gossip.tell(suspect, key=suspect.node)
                self._schedule_suspicion(entry, pending.suspicion)
            return
        if entry.state is not MemberState.ALIVE:
            return
        if entry is table.me:
            log.info("refuting a suspect message (from: %s)", suspect.from_node)
            self._refute(suspect.incarnation)
            self._correct_accuser(suspect.from_node, relayer)
            return
        self._gossip.tell(suspect, key=suspect.node)
        table.update(entry, suspect.incarnation)
        table.set_state(entry, MemberState.SUSPECT, self._timers.now)
        self._ctx.counters.suspicions_raised += 1
        config = self._config
        n = len(table)
        k = config.suspicion_mult - 2 if config.lifeguard else 0
        if n - 2 < k:
            k = 0
        shortest, longest = suspicion_bounds(
            config.suspicion_mult, config.suspicion_max_timeout_mult, n, config.probe_interval
        )
        suspicion = Suspicion(
            self._timers.now,
            suspect.incarnation,
            suspector=suspect.from_node,
            k=k,
            shortest=shortest,
            longest=longest,
        )
        self._schedule_suspicion(entry, suspicion)
        self._ctx.emit(MemberSuspect(entry.snapshot()))

    def _schedule_suspicion(self, entry: Entry, suspicion: Suspicion) -> None:
        """(Re)arm the timer after which ``entry`` is declared dead unless it refutes, and
        the checks before it."""
        old = self._suspicions.get(entry.name)
        if old is not None:
            old.cancel()
        pending = _Pending(entry, suspicion, old.last_check if old is not None else None)
        deadline = max(suspicion.deadline, self._timers.now)
        pending.timer = self._timers.schedule(
            deadline, TimerKind.SUSPICION, lambda: self._expire(pending), entry.name
        )
        self._suspicions[entry.name] = pending
        self._arm_check(pending)

    def _expire(self, pending: _Pending) -> None:
        entry, suspicion = pending.entry, pending.suspicion
        if not self._still_suspected(pending):
            self._cancel_suspicion(entry.name)
            return
        now = self._timers.now
        window = SUSPICION_CHECKS * self._config.probe_interval
        if pending.last_check is None or pending.last_check < now - window:
            # a late confirmation cut the timeout short of every check: one check first,
            # and the verdict once its answers had time to come
            self._check(pending)
            pending.timer = self._timers.schedule(
                now + self._config.probe_timeout,
                TimerKind.SUSPICION,
                lambda: self._expire(pending),
                entry.name,
            )
            return
        self._cancel_suspicion(entry.name)
        self._ctx.counters.failures_declared += 1
        log.info(
            "marking %s as failed, suspect timeout reached (%d confirmations)",
            entry.name,
            suspicion.confirmations,
        )
        self.on_dead(
            wire.Dead(incarnation=entry.incarnation, node=entry.name, from_node=self._name)
        )

    def _still_suspected(self, pending: _Pending) -> bool:
        entry = pending.entry
        return (
            self._suspicions.get(entry.name) is pending
            and self._table.get(entry.name) is entry
            and entry.state is MemberState.SUSPECT
            and entry.state_change == pending.change
        )

    def _check(self, pending: _Pending) -> None:
        pending.check = None
        if not self._still_suspected(pending) or self._leaving or self._left:
            return
        pending.last_check = self._timers.now
        self._check_suspicion(pending.entry, pending.suspicion)
        self._arm_check(pending)

    def _arm_check(self, pending: _Pending) -> None:
        """Schedule the next check: one probe interval after the suspicion began or after
        the last check, and no sooner than :data:`SUSPICION_CHECKS` intervals before the
        deadline; none when that is not before the deadline."""
        interval = self._config.probe_interval
        suspicion = pending.suspicion
        at = max(
            self._timers.now,
            suspicion.start + interval,
            suspicion.deadline - SUSPICION_CHECKS * interval,
        )
        if pending.last_check is not None:
            at = max(at, pending.last_check + interval)
        if at < suspicion.deadline:
            pending.check = self._timers.schedule(
                at, TimerKind.SUSPICION_CHECK, lambda: self._check(pending), pending.entry.name
            )

    def _check_suspicion(self, entry: Entry, suspicion: Suspicion) -> None:
        """Pass the suspicion to the suspect and to a few alive members, before it runs out.

        A refutation gossiped under loss misses a member now and then, and memberlist's
        members then declare a live member dead.  The suspect answers an accusation it has
        refuted with its current alive, and so does a member that holds the suspect alive
        at a newer incarnation (:meth:`_correct_relayer`): either reply ends our suspicion.
        A member that crashed answers nothing, so a real failure is declared as soon as
        before.  The suspicion passed on is the first accuser's, which confirms nothing."""
        self._ctx.counters.suspicion_checks += 1
        message = wire.encode(
            wire.Suspect(
                incarnation=suspicion.incarnation,
                node=entry.name,
                from_node=suspicion.suspector,
            )
        )
        askers = self._table.alive_sample(self._config.gossip_nodes, lambda name: True)
        for target in (entry, *askers):
            self._gossip.send_packet(target.address, [message], target)

    def _cancel_suspicion(self, name: str) -> None:
        pending = self._suspicions.pop(name, None)
        if pending is not None:
            pending.cancel()

    def on_dead(self, dead: wire.Dead, relayer: Address | None = None) -> None:
        table = self._table
        entry = table.get(dead.node)
        if entry is None:
            return
        if dead.incarnation < entry.incarnation:
            if entry is table.me:
                self._correct_accuser(dead.from_node, relayer)
            else:
                self._correct_relayer(entry, relayer)
            return
        self._cancel_suspicion(dead.node)
        if entry.state in (MemberState.DEAD, MemberState.LEFT):
            return
        if entry is table.me:
            if not self._leaving:
                log.info("refuting a dead message (from: %s)", dead.from_node)
                self._refute(dead.incarnation)
                self._correct_accuser(dead.from_node, relayer)
                return
            self._gossip.tell(
                dead, key=dead.node, on_done=lambda: self.finish_leave(timed_out=False)
            )
        else:
            self._gossip.tell(dead, key=dead.node)
        table.update(entry, dead.incarnation)
        left = dead.node == dead.from_node
        table.set_state(entry, MemberState.LEFT if left else MemberState.DEAD, self._timers.now)
        self._ctx.emit((MemberLeft if left else MemberFailed)(entry.snapshot()))
        if not left and entry is not table.me:
            self._arm_dead_check(entry, entry.state_change, self._config.probe_interval)

    def _arm_dead_check(self, entry: Entry, change: float, wait: float) -> None:
        """Tell a member we hold dead our verdict, ``wait`` from now, then at doubling waits
        while dead members still hear gossip (``gossip_to_the_dead_time``).

        If it lives (the verdict was false, or a partition cut us off), it answers with its
        refutation, which a member that missed it would otherwise hear of only when the
        member happens to probe it, or at a push-pull: tens of seconds after a partition
        heals.  One datagram per check, to the dead member alone."""
        at = self._timers.now + wait
        if at - change > self._config.gossip_to_the_dead_time:
            return

        def check() -> None:
            if (
                self._table.get(entry.name) is not entry
                or entry.state is not MemberState.DEAD
                or entry.state_change != change
                or self._leaving
                or self._left
            ):
                return
            self._ctx.counters.verdicts_told += 1
            verdict = wire.Dead(
                incarnation=entry.incarnation, node=entry.name, from_node=self._name
            )
            self._gossip.send_packet(entry.address, [wire.encode(verdict)], entry)
            self._arm_dead_check(entry, change, 2 * wait)

        self._timers.schedule(at, TimerKind.SUSPICION_CHECK, check, entry.name)

    def _refute(self, accused_incarnation: int) -> None:
        me = self._table.me
        self._table.update(me, max(me.incarnation + 1, accused_incarnation + 1))
        self._ctx.counters.suspicions_refuted += 1
        self._awareness.apply(1)
        self.broadcast_alive()

    def alive_message(self) -> wire.Alive:
        me = self._table.me
        return wire.Alive(
            incarnation=me.incarnation,
            node=me.name,
            addr=me.addr,
            port=me.port,
            vsn=me.vsn,
            meta=me.meta,
        )

    def broadcast_alive(self) -> None:
        self._gossip.tell(self.alive_message(), key=self._name)

    def announce_alive(self) -> None:
        """Gossip our alive, and also send it to every alive member in turn, twice over: after
        a join, and when our metadata changes.

        With memberlist's few retransmissions (two below ten members on the local profile)
        an epidemic sometimes dies out before it reaches everyone, and a member then holds
        our old metadata until the next push-pull: 29 of 100 five-member runs took 15 to
        25 s for a tag change, even without loss.  The sweep costs two datagrams per member
        per change (:data:`ANNOUNCE_PASSES`), ``gossip_nodes`` of them each
        ``gossip_interval``; the second pass covers a datagram the first lost.  Refutations
        do not sweep: they are frequent under loss, and suspicion checks already fetch a
        missed one."""
        self.broadcast_alive()
        if self._sweep is not None:
            self._sweep.cancel()
        table = self._table
        self._sweep_queue = [
            entry.name
            for _ in range(ANNOUNCE_PASSES)
            for entry in table.alive_sample(table.alive_peers, lambda name: True)
        ]
        self._sweep_next()

    def _sweep_next(self) -> None:
        self._sweep = None
        if self._leaving or self._left:
            self._sweep_queue = []
            return
        batch = self._sweep_queue[: self._config.gossip_nodes]
        del self._sweep_queue[: len(batch)]
        message = wire.encode(self.alive_message())
        for name in batch:
            entry = self._table.get(name)
            if entry is not None and entry.state in _REACHABLE:
                self._gossip.send(entry.address, message, entry)
        if self._sweep_queue:
            self._sweep = self._timers.schedule(
                self._timers.now + self._config.gossip_interval,
                TimerKind.ANNOUNCE,
                self._sweep_next,
            )

    def _correct_accuser(self, accuser: str, relayer: Address | None) -> None:
        """An accusation against us older than our incarnation: its author (and the member
        that passed it on to us, if another) missed our refutation (lost, or gossiped while a
        partition cut them off), and memberlist does not refute an old accusation again, so
        their suspicion would run out into a false failure.  Send them our current alive."""
        if self._leaving or self._left:
            return
        table = self._table
        told: set[Address] = set()
        for entry in (table.get(accuser), table.at(relayer) if relayer else None):
            if entry is None or entry is table.me or entry.state not in _REACHABLE:
                continue
            if entry.address not in told:
                told.add(entry.address)
                alive = [wire.encode(self.alive_message())]
                self._gossip.send_packet(entry.address, alive, entry)

    def _correct_relayer(self, entry: Entry, relayer: Address | None) -> None:
        """An accusation against ``entry`` older than the alive we hold: the member that
        passed it to us missed the refutation; send it the alive, as the accused would (a
        member checking its suspicion asks us so, see :meth:`_check_suspicion`)."""
        if relayer is None or entry.state is not MemberState.ALIVE:
            return
        peer = self._table.at(relayer)
        if peer is None or peer is entry or peer.state not in _REACHABLE:
            return
        self._ctx.counters.stale_news_corrected += 1
        alive = wire.Alive(
            incarnation=entry.incarnation,
            node=entry.name,
            addr=entry.addr,
            port=entry.port,
            vsn=entry.vsn,
            meta=entry.meta,
        )
        self._gossip.send_packet(peer.address, [wire.encode(alive)], peer)

    def rejoin(self) -> None:
        """Come back after a leave: alive again, at a higher incarnation than the leave."""
        self._left = self._leaving = False
        table = self._table
        table.update(table.me, table.me.incarnation + 1)
        table.set_state(table.me, MemberState.ALIVE, self._timers.now)
        self.announce_alive()
        self._restart_loops()

    def finish_leave(self, timed_out: bool) -> None:
        if self._left or not self._leaving:
            return
        self._left = True
        if self._leave_timer is not None:
            self._leave_timer.cancel()
            self._leave_timer = None
        self._ctx.emit(LeaveCompleted(timed_out=timed_out))
