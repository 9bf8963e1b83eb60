"""Anti-entropy: push-pull exchanges of the whole view, joins, and reconnects after partitions.

Every ``push_pull_interval`` (longer in large clusters) a member swaps its whole state with a
random alive member, which repairs whatever gossip missed; a join is the same exchange with
every seed, followed by a second one with a seed shortly after.  memberlist never notices a
healed partition (it forgets the dead and exchanges only with the living), so members here also
retry departed members and seeds, as Serf's reconnects do.  Merging a peer's state applies the
engine's state rules to each member in it, a slice at a time.
"""

from __future__ import annotations

import collections
import enum
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from swim import wire
from swim.context import Context
from swim.events import JoinCompleted
from swim.members import Address, MemberState
from swim.timers import Timer, TimerKind
from swim.wire import NodeState

log = logging.getLogger("swim.engine")

PUSH_PULL_SCALE_THRESHOLD = 32
"""Clusters larger than this push-pull less often (memberlist's ``pushPullScaleThreshold``)."""
FOLLOW_UP_PROBES = 2
"""Probe intervals after a join at which the joiner push-pulls with one of its seeds again."""
JOIN_RETRY_BUDGET = 3.0
"""Seconds within which a join tries a seed again after a failed connection, while another
``tcp_timeout`` still fits: a lost SYN is sent again only after 1 s, which the local
profile's 1 s timeout never waits for (one join in five failed at 20% loss); LAN's 10 s
timeout already covers three retransmissions, so it tries once."""
JOIN_ATTEMPTS = 3
"""The most connections a join opens to one seed (a refusal comes back at once)."""
MERGE_SLICE = 256
"""Member states merged at once; a larger push-pull is merged a slice per tick, so that probes,
acks and timers are served between slices instead of after all of them."""

_WIRE_STATE = {
    MemberState.ALIVE: NodeState.ALIVE,
    MemberState.SUSPECT: NodeState.SUSPECT,
    MemberState.DEAD: NodeState.DEAD,
    MemberState.LEFT: NodeState.LEFT,
}


class Exchange(enum.Enum):
    """Why a push-pull was opened."""

    JOIN = "join"
    PERIODIC = "push-pull"
    RECONNECT = "reconnect"


@dataclass(slots=True, eq=False)
class JoinOperation:
    """One ``join`` call: its seeds' outcomes as they come."""

    join_id: int
    started: float
    pending: int = 0
    joined: list[Address] = field(default_factory=list)
    failures: dict[Address, str] = field(default_factory=dict)
    attempts: dict[Address, int] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class _Merge:
    """A peer's state being merged, a slice at a time."""

    remote: wire.PushPull
    admissions: int  # how many members it may still introduce
    introducer: Address | None  # whom it may introduce, when limited (port 0: any port)
    position: int = 0


ApplyStates = Callable[[Sequence[wire.PushNodeState], int, Address | None], int]
"""Apply member states under the state rules, with so many newcomers allowed (and only at
that address, when given); returns how many are still allowed."""
OpenExchange = Callable[[Address, bytes, Exchange, "JoinOperation | None"], None]


class AntiEntropy:
    """Push-pull exchanges: our side kept encoded, theirs merged a slice at a time."""

    def __init__(
        self,
        ctx: Context,
        apply: ApplyStates,
        open_exchange: OpenExchange,
        running: Callable[[], bool],
        announce: Callable[[], None],
    ) -> None:
        self._ctx = ctx
        self._apply = apply
        self._open_exchange = open_exchange
        self._running = running
        self._announce = announce
        self.seeds: list[Address] = []
        self._merges: collections.deque[_Merge] = collections.deque()
        self._body_cache: tuple[tuple[int, bool, bytes], bytes] | None = None
        self._versions_cache: tuple[int, set[bytes], set[bytes]] | None = None
        self._join_serial = 0
        self._push_pull_timer: Timer | None = None
        self._reconnect_timer: Timer | None = None

    # ------------------------------------------------------------------ loops

    def start(self) -> None:
        """Start the periodic exchanges and reconnects at random phases."""
        self.stop()
        ctx = self._ctx
        config, now, rng = ctx.config, ctx.now, ctx.rng
        if config.push_pull_interval > 0:
            self._push_pull_timer = ctx.timers.schedule(
                now + rng.random() * config.push_pull_interval + self.period(),
                TimerKind.PUSH_PULL,
                self._push_pull_tick,
            )
        if config.reconnect_interval > 0:
            self._reconnect_timer = ctx.timers.schedule(
                now + (1 + rng.random()) * config.reconnect_interval,
                TimerKind.RECONNECT,
                self._reconnect_tick,
            )

    def stop(self) -> None:
        for timer in (self._push_pull_timer, self._reconnect_timer):
            if timer is not None:
                timer.cancel()
        self._push_pull_timer = self._reconnect_timer = None

    def period(self) -> float:
        return push_pull_period(len(self._ctx.table), self._ctx.config.push_pull_interval)

    def _push_pull_tick(self) -> None:
        ctx = self._ctx
        self._push_pull_timer = ctx.timers.schedule(
            ctx.now + self.period(), TimerKind.PUSH_PULL, self._push_pull_tick
        )
        if not self._running():
            return
        partner = ctx.table.alive_choice()
        if partner is not None:
            self._exchange(partner.address, Exchange.PERIODIC)

    def _reconnect_tick(self) -> None:
        """Try to merge with one departed member or seed, so that a healed partition comes
        back.  Like Serf's reconnects, an attempt is made with probability
        ``candidates / alive``, so a healthy cluster spends nothing and a split one retries
        every interval."""
        ctx = self._ctx
        table, config = ctx.table, ctx.config
        self._reconnect_timer = ctx.timers.schedule(
            ctx.now + config.reconnect_interval, TimerKind.RECONNECT, self._reconnect_tick
        )
        if not self._running():
            return
        seeds = [seed for seed in self.seeds if not _is_alive_at(ctx, seed)]
        candidates = table.departed_count + len(seeds)
        if not candidates or ctx.rng.random() >= candidates / max(1, table.alive_peers):
            return
        target = table.departed_candidate(ctx.now, config.reconnect_timeout)
        if target is None and seeds:
            target = ctx.rng.choice(seeds)
        if target is not None:
            ctx.counters.reconnect_attempts += 1
            self._exchange(target, Exchange.RECONNECT)

    # ------------------------------------------------------------------ joins

    def join(self, seeds: Sequence[Address]) -> int:
        """Push-pull with every seed (``Join`` set); :class:`JoinCompleted` with the returned
        id reports the outcome.  Seeds stay reconnect candidates."""
        self._join_serial += 1
        operation = JoinOperation(self._join_serial, started=self._ctx.now)
        me = self._ctx.table.me
        for seed in seeds:
            if seed == me.address:
                operation.failures[seed] = "this is our own address"
                continue
            if seed not in self.seeds:
                self.seeds.append(seed)
            operation.pending += 1
            self._exchange(seed, Exchange.JOIN, operation)
        if operation.pending == 0:
            self._finish_join(operation)
        return operation.join_id

    def _finish_join(self, operation: JoinOperation) -> None:
        ctx = self._ctx
        ctx.emit(
            JoinCompleted(operation.join_id, tuple(operation.joined), dict(operation.failures))
        )
        if operation.joined:
            # every member the seeds told us of hears of us first-hand, not only by gossip,
            # which now and then misses one (a Serf agent among them) until a push-pull
            self._announce()
        # after a failed join too: its reply may be all that was lost (the seed knows us now,
        # and its members probe us), and the next reconnect with a seed is 30 s away
        tried = operation.joined or [a for a in operation.failures if a in self.seeds]
        if tried:
            seed = ctx.rng.choice(tried)
            ctx.timers.schedule(
                ctx.now + FOLLOW_UP_PROBES * ctx.config.probe_interval,
                TimerKind.FOLLOW_UP_JOIN,
                lambda: self._follow_up(seed),
            )

    def _follow_up(self, seed: Address) -> None:
        """A second push-pull with a seed shortly after joining.  When many members join at
        once, each learns from a seed only those that joined before it, and the rest reach it
        by gossip alone, which with few retransmits (the local profile's 2) often misses
        someone until the next periodic push-pull, tens of seconds later.  By now the seed
        has merged every simultaneous join.  After a failed join, the same push-pull is one
        more try (memberlist would wait for a reconnect)."""
        if self._running():
            self._exchange(seed, Exchange.PERIODIC)

    def _exchange(
        self, address: Address, kind: Exchange, operation: JoinOperation | None = None
    ) -> None:
        self._open_exchange(address, self.body(kind is Exchange.JOIN), kind, operation)

    def finished(
        self,
        address: Address,
        operation: JoinOperation | None,
        kind: Exchange,
        reply: wire.StreamMessage | None,
        error: str | None,
    ) -> None:
        """An exchange we opened is over: merge the peer's state (it may tell us of every
        member, since we chose it: a join needs that), and count the join's seed."""
        merged = False
        if error is None:
            if isinstance(reply, wire.PushPull):
                merged = self.merge(reply, address, admissions=self._ctx.config.max_members)
                if not merged:
                    error = "the peer's protocol versions are incompatible with the cluster's"
            elif isinstance(reply, wire.Err):
                error = f"the peer answered with an error: {reply.error}"
            else:
                error = f"unexpected reply {type(reply).__name__}"
        if error is not None:
            log.debug("%s with %s failed: %s", kind.value, address, error)
        if operation is not None and reply is None and self._retry_join(address, operation):
            return
        if operation is not None:
            if merged:
                operation.joined.append(address)
            else:
                operation.failures[address] = error or "failed"
            operation.pending -= 1
            if operation.pending == 0:
                self._finish_join(operation)

    def _retry_join(self, address: Address, operation: JoinOperation) -> bool:
        """Try a seed whose connection failed again, if another attempt still ends within
        :data:`JOIN_RETRY_BUDGET` of the join's start (at most :data:`JOIN_ATTEMPTS` in all);
        whether it did."""
        ctx = self._ctx
        if ctx.now + ctx.config.tcp_timeout > operation.started + JOIN_RETRY_BUDGET:
            return False
        attempts = operation.attempts.get(address, 1)
        if attempts >= JOIN_ATTEMPTS or not self._running():
            return False
        operation.attempts[address] = attempts + 1
        self._exchange(address, Exchange.JOIN, operation)
        return True

    # ------------------------------------------------------------------ our side

    def body(self, join: bool) -> bytes:
        """Our side of a push-pull, encoded (and compressed): kept until the view changes,
        since a steady cluster sends the same state exchange after exchange."""
        ctx = self._ctx
        delegate = ctx.delegate
        user_state = delegate.local_state(join) if delegate is not None else b""
        key = (ctx.table.version, join, user_state)
        cached = self._body_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        states = [
            wire.PushNodeState(
                name=entry.name,
                addr=entry.addr,
                port=entry.port,
                incarnation=entry.incarnation,
                state=_WIRE_STATE[entry.state],
                vsn=entry.vsn,
                meta=entry.meta,
            )
            for entry in ctx.table
        ]
        body = wire.stream_body(wire.PushPull(states, user_state, join), ctx.wire_options)
        self._body_cache = (key, body)
        return body

    # ------------------------------------------------------------------ their side

    @property
    def merging(self) -> bool:
        """A merge has slices left."""
        return bool(self._merges)

    def merge(
        self,
        remote: wire.PushPull,
        source: Address,
        *,
        admissions: int,
        introducer: Address | None = None,
        sliced: bool = True,
    ) -> bool:
        """Merge a peer's full state, which may introduce ``admissions`` new members (only at
        ``introducer``, when given); False (and nothing merged) when versions disagree.  A
        large state is merged a slice at a time unless not ``sliced``."""
        self._ctx.counters.push_pulls += 1
        problem = self._incompatible(remote.states)
        if problem is not None:
            log.warning("refused push-pull from %s: %s", source, problem)
            return False
        merge = _Merge(remote, admissions, introducer)
        if sliced:
            self._merges.append(merge)
            if len(self._merges) == 1:
                self.merge_slice()
        else:
            self._merge_states(merge, len(remote.states))
        return True

    def merge_slice(self) -> None:
        """Merge the next slice of the oldest pending state."""
        merge = self._merges[0]
        if self._merge_states(merge, MERGE_SLICE):
            self._merges.popleft()

    def _merge_states(self, merge: _Merge, count: int) -> bool:
        """Merge up to ``count`` more of ``merge``'s states, then, once all are in, the
        delegate's state; True when it is done."""
        remote = merge.remote
        start = merge.position
        merge.position = end = min(len(remote.states), start + count)
        merge.admissions = self._apply(remote.states[start:end], merge.admissions, merge.introducer)
        if end < len(remote.states):
            return False
        delegate = self._ctx.delegate
        if remote.user_state and delegate is not None:
            delegate.merge_remote_state(remote.user_state, remote.join)
        return True

    def _incompatible(self, remote: list[wire.PushNodeState]) -> str | None:
        """memberlist's ``verifyProtocol``: every member's current protocol and delegate
        versions must lie within what every alive member supports.

        Checked over the distinct version sets (a cluster has a handful), ours kept until the
        view changes; the member-by-member walk runs only to name the culprit.
        """
        table = self._ctx.table
        if self._versions_cache is None or self._versions_cache[0] != table.version:
            alive = {e.vsn for e in table if e.state is MemberState.ALIVE}
            self._versions_cache = (table.version, alive, {e.vsn for e in table})
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
        named = [(s.name, s.vsn) for s in remote] + [(e.name, e.vsn) for e in table]
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


def push_pull_period(members: int, interval: float) -> float:
    """memberlist's ``pushPullScale``: the push-pull interval, longer in clusters past 32."""
    if members <= PUSH_PULL_SCALE_THRESHOLD:
        return interval
    scale = math.ceil(math.log2(members) - math.log2(PUSH_PULL_SCALE_THRESHOLD)) + 1
    return scale * interval


def _is_alive_at(ctx: Context, address: Address) -> bool:
    entry = ctx.table.at(address)
    return entry is not None and entry.state is MemberState.ALIVE
