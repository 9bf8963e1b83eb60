"""What the engine tells its user: membership changes, user messages, finished operations."""

from __future__ import annotations

from dataclasses import dataclass, field

from swim.members import Address, Member


@dataclass(frozen=True, slots=True)
class MemberJoined:
    """A member appeared, or came back after being dead or having left."""

    member: Member


@dataclass(frozen=True, slots=True)
class MemberUpdated:
    """A member changed its metadata (and so its incarnation)."""

    member: Member
    old_meta: bytes


@dataclass(frozen=True, slots=True)
class MemberSuspect:
    """A member missed its probes and is suspected; it has a while to refute."""

    member: Member


@dataclass(frozen=True, slots=True)
class MemberAlive:
    """A suspected member refuted the suspicion and is alive again."""

    member: Member


@dataclass(frozen=True, slots=True)
class MemberFailed:
    """A member was declared dead (the suspicion ran out, or someone else declared it)."""

    member: Member


@dataclass(frozen=True, slots=True)
class MemberLeft:
    """A member left gracefully."""

    member: Member


@dataclass(frozen=True, slots=True)
class MemberConflict:
    """A node at ``other`` claims the name of ``existing``, which still holds it."""

    existing: Member
    other: Address


@dataclass(frozen=True, slots=True)
class UserMessage:
    """Bytes a member sent with ``send``, ``send_reliable`` or a user broadcast."""

    payload: bytes
    source: Address | None = None


@dataclass(frozen=True, slots=True)
class JoinCompleted:
    """The outcome of ``join``: which seeds answered, and why each of the others did not."""

    join_id: int
    joined: tuple[Address, ...]
    failures: dict[Address, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LeaveCompleted:
    """Our leave went out (or its timeout passed); the node may now shut down."""

    timed_out: bool


@dataclass(frozen=True, slots=True)
class Isolated:
    """No peer has been heard from since ``since`` (for ``isolation_timeout``): this node is cut
    off.  It keeps serving what it knows and keeps trying to rejoin."""

    since: float


@dataclass(frozen=True, slots=True)
class Reconnected:
    """A peer was heard from again after ``isolated_for`` seconds of isolation."""

    isolated_for: float


MemberEvent = (
    MemberJoined
    | MemberUpdated
    | MemberSuspect
    | MemberAlive
    | MemberFailed
    | MemberLeft
    | MemberConflict
)
Event = MemberEvent | UserMessage | JoinCompleted | LeaveCompleted | Isolated | Reconnected
