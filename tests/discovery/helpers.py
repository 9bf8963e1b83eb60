"""Member snapshots carrying discovery tags, as membership would report them."""

from __future__ import annotations

from collections.abc import Mapping

from discovery.records import ServiceRecord, write_tags
from swim.members import Member, MemberState
from swim.wire import serf as serf_wire

VSN = bytes((1, 5, 2, 2, 5, 5))


def member(
    name: str,
    services: Mapping[str, ServiceRecord] | None = None,
    *,
    state: MemberState = MemberState.ALIVE,
    incarnation: int = 1,
    draining: bool = False,
    metadata_port: int | None = 9000,
    host: str = "10.0.0.1",
    extra: Mapping[str, str] | None = None,
) -> Member:
    """A member at ``host:7946`` advertising ``services`` (default: ``web`` on port 8080)."""
    chosen = {"web": ServiceRecord(8080)} if services is None else services
    tags = write_tags(extra or {}, chosen, metadata_port=metadata_port, draining=draining)
    return Member(name, (host, 7946), serf_wire.encode_tags(tags), incarnation, state, VSN)
