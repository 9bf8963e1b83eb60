"""The catalog: every service instance one cluster advertises, built from membership snapshots.

Plain code with no I/O and no clock: feed it :class:`~swim.members.Member` snapshots (from
membership events, from ``members()``, or from a simulator) and it returns the
:class:`Change` each one caused.  It never decides membership itself: a member's state becomes
its instances' health, its tags become their records.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable
from dataclasses import dataclass

from discovery.records import DEFAULT_WEIGHT, NodeRecord, read_tags
from swim import wire
from swim.logs import bump
from swim.members import Address, Member, MemberState
from swim.wire import serf as serf_wire


class Health(enum.Enum):
    """An instance's health as this catalog sees it."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DRAINING = "draining"
    FAILED = "failed"
    LEFT = "left"

    @property
    def available(self) -> bool:
        """Whether the instance may still be called (failed and left ones may not)."""
        return self not in (Health.FAILED, Health.LEFT)


_HEALTH = {
    MemberState.ALIVE: Health.ALIVE,
    MemberState.SUSPECT: Health.SUSPECT,
    MemberState.DEAD: Health.FAILED,
    MemberState.LEFT: Health.LEFT,
}


@dataclass(frozen=True, slots=True)
class Instance:
    """One service instance: where to call it, what it is, and how healthy it looks."""

    service: str
    node: str
    address: Address
    group: str = ""
    version: str = ""
    weight: int = DEFAULT_WEIGHT
    revision: int = 0
    """The metadata revision; metadata cached at another revision is out of date."""
    health: Health = Health.ALIVE
    incarnation: int = 0
    """The node's incarnation when this was seen (it rises with every tag change)."""
    metadata_address: Address | None = None
    """Where the node's metadata service listens, if it runs one."""
    cluster: str = ""
    stale: bool = False
    """Loaded from the cache file and not yet confirmed by gossip."""
    tags: tuple[str, ...] = ()
    """The instance's service tags (Consul's ``Tags``)."""
    instance_id: str = ""
    """Its ID as registered (Consul's ``ID``); empty when that is the service name."""

    @property
    def key(self) -> tuple[str, str, str]:
        """What identifies the instance across updates: cluster, node, service."""
        return (self.cluster, self.node, self.service)

    def __str__(self) -> str:
        where = f"{self.service}@{self.node}"
        return f"{where} in {self.cluster}" if self.cluster else where


class ChangeKind(enum.Enum):
    ADDED = "added"
    REMOVED = "removed"
    CHANGED = "changed"
    DRAINING = "draining"


@dataclass(frozen=True, slots=True)
class Change:
    """What happened to one instance: ``instance`` is its new state (its last, when removed)."""

    kind: ChangeKind
    instance: Instance
    previous: Instance | None = None


class UnknownService(LookupError):
    """No instance of the service was ever seen, from gossip or from the cache file."""

    def __init__(self, service: str, clusters: Iterable[str]) -> None:
        self.service = service
        where = ", ".join(repr(c) for c in clusters) or "no cluster"
        super().__init__(
            f"service {service!r} is unknown in {where}: no node has advertised it and the "
            "cache has no entry; check the name, or wait for a node that registers it to join"
        )


class NoInstances(LookupError):
    """The service is known, but no instance is available now (or none matches the filters)."""

    def __init__(self, service: str, reason: str) -> None:
        self.service = service
        self.reason = reason
        super().__init__(f"service {service!r} has no instance available now: {reason}")


@dataclass(frozen=True, slots=True)
class Filter:
    """Which instances a caller wants: ``None`` accepts any value."""

    group: str | None = None
    version: str | None = None
    cluster: str | None = None

    def matches(self, instance: Instance) -> bool:
        return (
            (self.group is None or instance.group == self.group)
            and (self.version is None or instance.version == self.version)
            and (self.cluster is None or instance.cluster == self.cluster)
        )

    def __str__(self) -> str:
        parts = [f"{k}={v!r}" for k, v in dataclasses.asdict(self).items() if v is not None]
        return ", ".join(parts) or "none"


@dataclass(frozen=True, slots=True)
class CatalogStatistics:
    """A snapshot of what a catalog could not read, since it was made (see
    :meth:`Catalog.statistics`); what it skipped is counted, never raised."""

    bad_tags: int = 0
    """Member snapshots whose metadata is not Serf tags."""
    bad_records: int = 0
    """``svc.`` tags that could not be read."""


class Catalog:
    """The instances of one cluster, keyed by node then service.

    Instances of failed or left members stay (as failed or left) until the member is forgotten,
    so that "known but unavailable" can be told from "never seen"; service names stay known for
    good.
    """

    def __init__(self, cluster: str = "") -> None:
        self.cluster = cluster
        self._statistics = CatalogStatistics()
        self._nodes: dict[str, dict[str, Instance]] = {}
        self._services: dict[str, dict[str, Instance]] = {}
        self._known: dict[str, None] = {}

    # ------------------------------------------------------------------ inputs

    def apply(self, member: Member) -> list[Change]:
        """Take one member's latest snapshot."""
        record = self._read(member)
        health = _HEALTH[member.state]
        if record.draining and health.available:
            health = Health.DRAINING
        port = record.metadata_port
        metadata_address = None if port is None else (member.address[0], port)
        fresh = {
            name: Instance(
                service=name,
                node=member.name,
                address=(service.host or member.address[0], service.port),
                group=service.group,
                version=service.version,
                weight=service.weight,
                revision=service.revision,
                health=health,
                incarnation=member.incarnation,
                metadata_address=metadata_address,
                cluster=self.cluster,
                tags=service.tags,
                instance_id=service.instance_id,
            )
            for name, service in record.services.items()
        }
        return self._replace(member.name, fresh)

    def sync(self, members: Iterable[Member], *, complete: bool) -> list[Change]:
        """Take a whole view (``members()``).  Members missing from it were reaped and are
        forgotten; entries from the cache are forgotten too when ``complete`` (the view came
        from the cluster, not from a node still alone)."""
        changes: list[Change] = []
        seen: set[str] = set()
        for member in members:
            seen.add(member.name)
            changes += self.apply(member)
        for node in [n for n in self._nodes if n not in seen]:
            if complete or not any(i.stale for i in self._nodes[node].values()):
                changes += self.forget(node)
        return changes

    def forget(self, node: str) -> list[Change]:
        """Drop a node and its instances (it was reaped)."""
        return self._replace(node, {})

    def load(self, instances: Iterable[Instance], services: Iterable[str] = ()) -> list[Change]:
        """Bootstrap from the cache file: instances of nodes gossip has not told about yet, all
        marked stale until gossip confirms them; ``services`` are names known to exist."""
        for service in services:
            self._known.setdefault(service)
        by_node: dict[str, dict[str, Instance]] = {}
        for instance in instances:
            if instance.node not in self._nodes:
                stale = dataclasses.replace(instance, cluster=self.cluster, stale=True)
                by_node.setdefault(instance.node, {})[instance.service] = stale
        changes: list[Change] = []
        for node, fresh in by_node.items():
            changes += self._replace(node, fresh)
        return changes

    # ------------------------------------------------------------------ queries

    def knows(self, service: str) -> bool:
        return service in self._known

    def services(self) -> list[str]:
        """Every service name ever seen, in the order first seen."""
        return list(self._known)

    def instances(self, service: str) -> list[Instance]:
        """The service's instances, unavailable ones included, ordered by node name."""
        found = self._services.get(service, {})
        return [found[node] for node in sorted(found)]

    def all_instances(self) -> list[Instance]:
        return [i for node in self._nodes.values() for i in node.values()]

    def statistics(self) -> CatalogStatistics:
        """The counters as they stand now."""
        return self._statistics

    # ------------------------------------------------------------------ plumbing

    def _read(self, member: Member) -> NodeRecord:
        try:
            tags = serf_wire.decode_tags(member.meta)
        except wire.DecodeError:
            self._statistics = bump(self._statistics, "bad_tags")
            tags = {}
        record = read_tags(tags)
        if record.invalid:
            bad = self._statistics.bad_records + record.invalid
            self._statistics = dataclasses.replace(self._statistics, bad_records=bad)
        return record

    def _replace(self, node: str, fresh: dict[str, Instance]) -> list[Change]:
        old = self._nodes.get(node, {})
        changes: list[Change] = []
        for name, instance in fresh.items():
            change = _diff(old.get(name), instance)
            if change is not None:
                changes.append(change)
            self._known.setdefault(name)
            self._services.setdefault(name, {})[node] = instance
        for name, gone in old.items():
            if name not in fresh:
                if gone.health.available:
                    changes.append(Change(ChangeKind.REMOVED, gone, gone))
                del self._services[name][node]
        if fresh:
            self._nodes[node] = fresh
        else:
            self._nodes.pop(node, None)
        return changes


def _diff(old: Instance | None, new: Instance) -> Change | None:
    """The change from ``old`` to ``new``: a new incarnation alone is no change."""
    if old is None or not old.health.available:
        return Change(ChangeKind.ADDED, new, old) if new.health.available else None
    if not new.health.available:
        return Change(ChangeKind.REMOVED, new, old)
    if new.health is Health.DRAINING and old.health is not Health.DRAINING:
        return Change(ChangeKind.DRAINING, new, old)
    if dataclasses.replace(old, incarnation=new.incarnation) != new:
        return Change(ChangeKind.CHANGED, new, old)
    return None


def lookup(catalogs: Iterable[Catalog], service: str, wanted: Filter = Filter()) -> list[Instance]:
    """The available instances of ``service`` that ``wanted`` accepts, across ``catalogs``.

    Raises :class:`UnknownService` when no catalog has ever seen the service, and
    :class:`NoInstances` (saying why) when none is available or none passes the filter.
    """
    catalogs = list(catalogs)
    if not any(c.knows(service) for c in catalogs):
        raise UnknownService(service, [c.cluster for c in catalogs])
    every = [i for c in catalogs for i in c.instances(service)]
    available = [i for i in every if i.health.available]
    matching = [i for i in available if wanted.matches(i)]
    if matching:
        return matching
    if available:
        raise NoInstances(service, f"{len(available)} available, none matches filter {wanted}")
    counts: dict[str, int] = {}
    for instance in every:
        counts[instance.health.value] = counts.get(instance.health.value, 0) + 1
    seen = ", ".join(f"{n} {state}" for state, n in counts.items()) or "no instance left"
    raise NoInstances(service, seen)
