"""What the gateway serves: one node's membership view as a catalog, with an index that rises.

Plain code with no I/O and no clock.  :meth:`CatalogView.update` takes the node's member
snapshots (the same :class:`~swim.members.Member` a :class:`~discovery.Discovery` reads, parsed
by :class:`~discovery.catalog.Catalog`: one implementation of the record rules) and the Serf
view of them (statuses, tags); the index rises by one whenever what the gateway would answer
changes, which is what Consul's blocking queries wait on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from discovery.catalog import Catalog, Health, Instance
from discovery.introspection import Metadata
from discovery.records import DRAINING_TAG, METADATA_PORT_TAG, SERVICE_PREFIX
from swim.members import Address, Member
from swim.serf.layer import SerfMember

DATACENTER = "dc1"
"""What Consul calls the datacenter: shoal has one cluster per gateway, named as Consul's
default, so that clients that send ``?dc=dc1`` (or nothing) are served."""


@dataclass(frozen=True, slots=True)
class NodeEntry:
    """One member as the gateway shows it."""

    name: str
    address: Address
    status: str
    """Serf's status: alive, leaving, left or failed."""
    tags: Mapping[str, str]
    vsn: bytes

    @property
    def meta(self) -> dict[str, str]:
        """The node's tags without discovery's own (services, metadata port, draining): what
        Consul calls the node's Meta."""
        return {
            key: value
            for key, value in self.tags.items()
            if not key.startswith(SERVICE_PREFIX) and key not in (METADATA_PORT_TAG, DRAINING_TAG)
        }


def instance_id(instance: Instance) -> str:
    """The instance's Consul ID: as registered, or else its service name."""
    return instance.instance_id or instance.service


class CatalogView:
    """The cluster as one node sees it, for the HTTP API and DNS."""

    def __init__(self, local_node: str) -> None:
        self.local_node = local_node
        self.index = 1
        self.catalog = Catalog()
        self.nodes: dict[str, NodeEntry] = {}
        self._metadata: dict[tuple[str, str], tuple[int, Metadata]] = {}
        self._fingerprint: tuple[object, ...] = ()

    def update(self, members: Iterable[Member], serf_members: Iterable[SerfMember]) -> bool:
        """Take the node's whole view; True (and a higher index) when anything served changed."""
        members = list(members)
        self.catalog.sync(members, complete=True)
        nodes = {
            m.name: NodeEntry(m.name, m.address, m.status.value, dict(m.tags), m.vsn)
            for m in serf_members
        }
        fingerprint = (
            tuple((m.name, m.address, m.state, m.meta) for m in members),
            tuple(nodes.values()),
        )
        if fingerprint == self._fingerprint:
            return False
        self._fingerprint = fingerprint
        self.nodes = nodes
        live = {(i.node, i.service) for i in self.catalog.all_instances()}
        self._metadata = {key: value for key, value in self._metadata.items() if key in live}
        self.index += 1
        return True

    def metadata(self, instance: Instance) -> Metadata:
        """The instance's metadata as last fetched at its revision (empty until then)."""
        if instance.revision == 0:
            return {}
        revision, metadata = self._metadata.get((instance.node, instance.service), (0, {}))
        return metadata if revision == instance.revision else {}

    def missing_metadata(self) -> list[Instance]:
        """Instances whose metadata at their revision has not been fetched yet."""
        return [
            i
            for i in self.catalog.all_instances()
            if i.revision
            and i.health.available
            and i.metadata_address is not None
            and self._metadata.get((i.node, i.service), (0, {}))[0] != i.revision
        ]

    def set_metadata(self, instance: Instance, metadata: Metadata) -> None:
        """Keep fetched metadata; the index rises, as the answers now carry it."""
        self._metadata[(instance.node, instance.service)] = (instance.revision, dict(metadata))
        self.index += 1

    def instances(self, service: str) -> list[Instance]:
        """The service's instances in the catalog (left ones are gone, as in Consul)."""
        return [i for i in self.catalog.instances(service) if i.health is not Health.LEFT]

    def services(self) -> dict[str, list[str]]:
        """Every service with instances, and the union of their tags (Consul's shape)."""
        out: dict[str, list[str]] = {}
        for instance in sorted(self.catalog.all_instances(), key=lambda i: (i.service, i.node)):
            if instance.health is Health.LEFT:
                continue
            tags = out.setdefault(instance.service, [])
            tags.extend(tag for tag in instance.tags if tag not in tags)
        return out
