"""A gateway view fed with member snapshots, as a node would report them."""

from __future__ import annotations

from collections.abc import Mapping

from discovery.gateway.view import CatalogView
from discovery.records import ServiceRecord, read_tags, write_tags
from swim.members import Member, MemberState
from swim.serf.layer import SerfMember, Status
from swim.wire import serf as serf_wire
from tests.discovery.helpers import VSN

_STATUS = {
    MemberState.ALIVE: Status.ALIVE,
    MemberState.SUSPECT: Status.ALIVE,
    MemberState.DEAD: Status.FAILED,
    MemberState.LEFT: Status.LEFT,
}


def node(
    name: str,
    services: Mapping[str, ServiceRecord],
    *,
    host: str = "10.0.0.1",
    state: MemberState = MemberState.ALIVE,
    draining: bool = False,
    extra: Mapping[str, str] | None = None,
) -> tuple[Member, SerfMember]:
    """One member as memberlist and Serf report it."""
    tags = write_tags(extra or {}, services, metadata_port=None, draining=draining)
    member = Member(name, (host, 7946), serf_wire.encode_tags(tags), 1, state, VSN)
    assert not read_tags(tags).invalid
    return member, SerfMember(name, (host, 7946), dict(tags), _STATUS[state], VSN)


def view_of(*nodes: tuple[Member, SerfMember], local: str = "a") -> CatalogView:
    view = CatalogView(local)
    update(view, *nodes)
    return view


def update(view: CatalogView, *nodes: tuple[Member, SerfMember]) -> bool:
    return view.update([m for m, _ in nodes], [s for _, s in nodes])
