"""The member table: every member this node knows, and every index over them, kept in step.

Probing, gossip, push-pull, reconnects and isolation each look at the view differently (the
alive members to ask for help, the members that still get gossip, the departed ones to try
again, the members behind an address, how many peers are in each state).  Every index lives
here, and every change to a member goes through :class:`MemberTable`, which keeps them all
consistent; :meth:`MemberTable.check` says whether they are.  The table decides nothing: the
state rules live in the engine.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from swim.members import Address, Member, MemberState, RandomSet, address_of

_DEPARTED = (MemberState.DEAD, MemberState.LEFT)


@dataclass(slots=True, eq=False)
class Entry:
    """One member as this node holds it.  Change it through the table only."""

    name: str
    addr: bytes
    port: int
    address: Address
    meta: bytes
    vsn: bytes
    incarnation: int
    state: MemberState
    state_change: float
    conflict: Address | None = None
    """The other address last reported as claiming this name, so that it is reported once."""

    def snapshot(self) -> Member:
        return Member(self.name, self.address, self.meta, self.incarnation, self.state, self.vsn)


class MemberTable:
    """The view: entries by name, and the indexes that sampling and counting need, each
    O(1) to keep up per change."""

    def __init__(self, me: Entry, rng: random.Random) -> None:
        self.me = me
        self._rng = rng
        self._entries: dict[str, Entry] = {me.name: me}
        self._by_address: dict[Address, str] = {}
        self._probe_ring: list[str] = [me.name]
        self._probe_index = 0
        self._alive = RandomSet[str]()  # alive peers: indirect helpers, push-pull partners
        self._gossip_pool = RandomSet[str]()  # alive, suspect and recently dead peers
        self._departed = RandomSet[str]()  # dead and left peers we may reconnect to
        self._departed_since: dict[str, tuple[Address, float]] = {}
        self._hosts: dict[str, int] = {me.address[0]: 1}  # members (departed too) per host
        self._peer_states: dict[str, MemberState] = {}  # peers' last states, reaped dead too
        self._state_counts = dict.fromkeys(MemberState, 0)
        self._peers_not_left = 0
        self.version = 0
        """Counts every change a push-pull would carry, so that encoded state can be kept."""

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries.values())

    def get(self, name: str) -> Entry | None:
        return self._entries.get(name)

    def at(self, address: Address) -> Entry | None:
        """The member whose address this is."""
        name = self._by_address.get(address)
        return self._entries.get(name) if name is not None else None

    def is_member_address(self, address: Address) -> bool:
        return address in self._by_address

    def knows_host(self, host: str) -> bool:
        """Whether a member, or one that departed within its reconnect window, lives there."""
        return host in self._hosts

    def alive_count(self) -> int:
        """Members alive, this node included."""
        return len(self._alive) + (self.me.state is MemberState.ALIVE)

    def live_count(self) -> int:
        """Members neither dead nor left, this node included (memberlist's ``NumMembers``)."""
        counts = self._state_counts
        mine = self.me.state in (MemberState.ALIVE, MemberState.SUSPECT)
        return counts[MemberState.ALIVE] + counts[MemberState.SUSPECT] + mine

    def state_counts(self) -> dict[MemberState, int]:
        """Members in each state, this node included: O(1), for metrics."""
        counts = dict(self._state_counts)
        counts[self.me.state] += 1
        return counts

    @property
    def peers_not_left(self) -> int:
        """Peers we should hear from: alive, suspect or dead (until their reconnect window
        ends, reaped or not), so that silence from all of them means we are cut off."""
        return self._peers_not_left

    @property
    def departed_count(self) -> int:
        return len(self._departed)

    @property
    def alive_peers(self) -> int:
        return len(self._alive)

    # ------------------------------------------------------------------ sampling

    def alive_choice(self) -> Entry | None:
        """An alive peer at random."""
        name = self._alive.choice(self._rng)
        return self._entries[name] if name is not None else None

    def alive_sample(self, k: int, accept: Callable[[str], bool]) -> list[Entry]:
        """Up to ``k`` alive peers at random whose names pass ``accept``."""
        return [self._entries[name] for name in self._alive.sample(self._rng, k, accept)]

    def gossip_targets(self, k: int, now: float, dead_time: float) -> list[Entry]:
        """Up to ``k`` peers to gossip to: alive, suspect, or dead for at most ``dead_time``
        (a chance to refute); the others leave the pool as they are met."""
        entries = self._entries
        expired: list[str] = []

        def eligible(name: str) -> bool:
            entry = entries.get(name)
            if entry is None or entry.state is MemberState.LEFT:
                expired.append(name)
                return False
            if entry.state is MemberState.DEAD and now - entry.state_change > dead_time:
                expired.append(name)
                return False
            return True

        targets = self._gossip_pool.sample(self._rng, k, eligible)
        for name in expired:
            self._gossip_pool.discard(name)
        return [entries[name] for name in targets]

    def departed_candidate(self, now: float, window: float) -> Address | None:
        """The address of a peer that died or left at most ``window`` ago, to try again;
        older ones stop being candidates as they are met."""
        for _ in range(4):
            name = self._departed.choice(self._rng)
            if name is None:
                return None
            address, since = self._departed_since[name]
            if now - since <= window:
                return address
            self._departed.discard(name)
            self._forget_departure(name)
            if name not in self._entries:
                self._track_peer(name, None)
        return None

    def departed_entry(self) -> Entry | None:
        """A dead or left member still in the table, at random (a few tries)."""
        for _ in range(4):
            name = self._departed.choice(self._rng)
            entry = self._entries.get(name) if name is not None else None
            if entry is not None and entry.state in _DEPARTED:
                return entry
        return None

    def next_to_probe(
        self, now: float, reap_dead_after: float, reap_left_after: float
    ) -> Entry | None:
        """The next live peer in the shuffled probe ring.  At each wrap of the ring, members
        dead or left for long enough are reaped and the ring is shuffled again, so the O(n)
        work is paid once per n probes."""
        ring = self._probe_ring
        checked = 0
        while checked <= len(ring):
            if self._probe_index >= len(ring):
                self._reap_expired(now, reap_dead_after, reap_left_after)
                ring = self._probe_ring = list(self._entries)
                self._rng.shuffle(ring)
                self._probe_index = 0
                checked += 1
                continue
            entry = self._entries.get(ring[self._probe_index])
            self._probe_index += 1
            if entry is None or entry is self.me or entry.state in _DEPARTED:
                checked += 1
                continue
            return entry
        return None

    # ------------------------------------------------------------------ changing

    def add(
        self, name: str, addr: bytes, port: int, *, meta: bytes, vsn: bytes, now: float
    ) -> Entry:
        """A new member, dead at incarnation 0 until its first news is applied (so that it
        joins through the same state change as a member coming back), probed at a random
        place in the ring."""
        address = address_of(addr, port)
        entry = Entry(name, addr, port, address, meta, vsn, 0, MemberState.DEAD, now)
        self._entries[name] = entry
        self._by_address[address] = name
        self._count_host(address[0], 1)
        self.version += 1
        ring = self._probe_ring
        ring.append(name)
        offset = self._rng.randrange(len(ring))
        ring[offset], ring[-1] = ring[-1], ring[offset]
        return entry

    def update(
        self,
        entry: Entry,
        incarnation: int,
        meta: bytes | None = None,
        vsn: bytes | None = None,
    ) -> None:
        """Take a member's new incarnation (and metadata and versions, with an alive)."""
        if incarnation != entry.incarnation:
            entry.incarnation = incarnation
            self.version += 1
        if meta is not None and meta != entry.meta:
            entry.meta = meta
            self.version += 1
        if vsn is not None and vsn != entry.vsn:
            entry.vsn = vsn
            self.version += 1

    def move(self, entry: Entry, addr: bytes, port: int) -> None:
        """A member takes its name to a new address."""
        if self._by_address.get(entry.address) == entry.name:
            del self._by_address[entry.address]
        self._count_host(entry.address[0], -1)
        address = address_of(addr, port)
        self._count_host(address[0], 1)
        entry.addr, entry.port, entry.address = addr, port, address
        self._by_address[address] = entry.name
        entry.conflict = None
        self.version += 1

    def set_state(self, entry: Entry, state: MemberState, now: float) -> None:
        """Move ``entry`` to ``state`` and keep the sampling sets in step."""
        if entry.state is not state:
            self.version += 1
            entry.state = state
            entry.state_change = now
        if entry is self.me:
            return
        name = entry.name
        self._track_peer(name, state)
        if state is MemberState.ALIVE:
            self._alive.add(name)
        else:
            self._alive.discard(name)
        if state is MemberState.LEFT:
            self._gossip_pool.discard(name)
        else:
            self._gossip_pool.add(name)
        if state in _DEPARTED:
            self._departed.add(name)
            self._forget_departure(name)
            self._departed_since[name] = (entry.address, now)
            self._count_host(entry.address[0], 1)
        else:
            self._departed.discard(name)
            self._forget_departure(name)

    def reap(self, entry: Entry) -> None:
        """Forget a dead or left member (it stays a reconnect candidate for a while)."""
        self.version += 1
        del self._entries[entry.name]
        if entry.state is MemberState.LEFT:
            self._track_peer(entry.name, None)  # a reaped dead member still counts until expiry
        if self._by_address.get(entry.address) == entry.name:
            del self._by_address[entry.address]
        self._count_host(entry.address[0], -1)
        self._gossip_pool.discard(entry.name)

    def _reap_expired(self, now: float, dead_after: float, left_after: float) -> None:
        for entry in list(self._entries.values()):
            if (entry.state is MemberState.DEAD and now - entry.state_change > dead_after) or (
                entry.state is MemberState.LEFT and now - entry.state_change > left_after
            ):
                self.reap(entry)

    def _forget_departure(self, name: str) -> None:
        record = self._departed_since.pop(name, None)
        if record is not None:
            self._count_host(record[0][0], -1)

    def _count_host(self, host: str, delta: int) -> None:
        count = self._hosts.get(host, 0) + delta
        if count:
            self._hosts[host] = count
        else:
            del self._hosts[host]

    def _track_peer(self, name: str, state: MemberState | None) -> None:
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

    # ------------------------------------------------------------------ invariants

    def check(self) -> list[str]:
        """Every way the indexes disagree with the entries (none, unless there is a bug)."""
        problems: list[str] = []
        peers = [e for e in self._entries.values() if e is not self.me]
        if self._entries.get(self.me.name) is not self.me:
            problems.append("this node is not in its own table")
        for entry in peers:
            if self._by_address.get(entry.address) != entry.name:
                problems.append(f"{entry.name!r} is not indexed by its address {entry.address}")
            if (entry.name in self._alive) != (entry.state is MemberState.ALIVE):
                problems.append(f"{entry.name!r} ({entry.state.value}) misplaced in the alive set")
            if (entry.name in self._departed) != (entry.state in _DEPARTED):
                problems.append(f"{entry.name!r} ({entry.state.value}) misplaced in departed")
            live = entry.state in (MemberState.ALIVE, MemberState.SUSPECT)
            if live and entry.name not in self._gossip_pool:
                problems.append(f"{entry.name!r} ({entry.state.value}) gets no gossip")
            if self._peer_states.get(entry.name) is not entry.state:
                problems.append(f"{entry.name!r} is counted as {self._peer_states.get(entry.name)}")
        for name in self._alive:
            if name not in self._entries:
                problems.append(f"{name!r} is alive in the index but not in the table")
        for address, name in self._by_address.items():
            held = self._entries.get(name)
            if held is None or held.address != address:
                problems.append(f"{address} points at {name!r}, which is not there")
        hosts: dict[str, int] = {}
        for address in [e.address for e in self._entries.values()] + [
            a for a, _ in self._departed_since.values()
        ]:
            hosts[address[0]] = hosts.get(address[0], 0) + 1
        if hosts != self._hosts:
            problems.append(f"members per host {self._hosts} disagree with {hosts}")
        counts = dict.fromkeys(MemberState, 0)
        for state in self._peer_states.values():
            counts[state] += 1
        if counts != self._state_counts:
            problems.append(f"state counts {self._state_counts} disagree with {counts}")
        not_left = sum(s is not MemberState.LEFT for s in self._peer_states.values())
        if not_left != self._peers_not_left:
            problems.append(f"{self._peers_not_left} peers not left counted, {not_left} held")
        return problems
