"""Serf's event filters (``stream``, ``-event-handler``) and member filters (``members-filtered``),
as Serf defines them: what an agent decides for itself about a request."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Final

from swim.rpc.schema import (
    INVALID_FILTER,
    MEMBER_EVENTS,
    REGEX_ERROR_PREFIX,
    RpcError,
    RpcEvent,
    RpcMember,
    RpcMemberEvent,
    RpcUserEvent,
)

_FILTER_EVENTS: Final = MEMBER_EVENTS | {"user", "query", "*"}


def parse_event_filter(text: str) -> list[tuple[str, str]]:
    """Serf's ``-event-handler``/``stream`` filter, such as ``"member-join,user:deploy"``, as
    (event, name) pairs; empty means ``"*"``.  Raises RpcError(INVALID_FILTER)."""
    filters = []
    for part in (text or "*").split(","):
        event, name = part, ""
        if part.startswith(("user:", "query:")):
            event, _, name = part.partition(":")
        if event not in _FILTER_EVENTS:
            raise RpcError(INVALID_FILTER)
        filters.append((event, name))
    return filters


def event_matches(filters: Sequence[tuple[str, str]], event: RpcEvent) -> bool:
    """Whether any filter lets ``event`` through (Serf's ``EventFilter.Invoke``)."""
    if isinstance(event, RpcMemberEvent):
        kind, name = event.event, ""
    else:
        kind, name = ("user" if isinstance(event, RpcUserEvent) else "query"), event.name
    return any(
        wanted == "*" or (wanted == kind and (not wanted_name or wanted_name == name))
        for wanted, wanted_name in filters
    )


_LEADING_FLAGS = re.compile(r"\(\?[aiLmsux]+\)")


def _anchored(expr: str) -> re.Pattern[str]:
    # Serf compiles "^expr$" with Go's regexp, whose $ is the very end (Python's \Z).  Go also
    # allows flags such as (?i) after the ^, which Python 3.11 refuses: move them in front.
    flags = _LEADING_FLAGS.match(expr)
    prefix = flags.group() if flags else ""
    return re.compile(prefix + "^" + expr[len(prefix) :] + r"\Z")


def filter_members(
    members: Sequence[RpcMember], tags: Mapping[str, str], status: str, name: str
) -> list[RpcMember]:
    """The members whose tags, status and name fully match these regexes, as Serf's
    ``members-filtered`` selects them: an empty status or name matches anything, and a tag
    filter on a tag a member lacks matches its empty value.  Raises RpcError for a bad regex."""
    try:
        tag_res = {key: _anchored(expr) for key, expr in tags.items()}
        status_re = _anchored(status)
        name_re = _anchored(name)
    except re.error as exc:
        raise RpcError(f"{REGEX_ERROR_PREFIX}{exc}") from None
    return [
        member
        for member in members
        if all(regex.search(member.tags.get(key, "")) for key, regex in tag_res.items())
        and (not status or status_re.search(member.status))
        and (not name or name_re.search(member.name))
    ]
