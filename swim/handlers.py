"""``swim agent -event-handler``: scripts run on member events, user events and queries, as
``serf agent`` runs them, without ever holding the agent up.

A handler is ``[FILTER=]SCRIPT`` with Serf's filters (``member-join``, ``user:deploy``,
``query:uptime``, comma-separated, none or ``*`` for every event).  Each matching event runs
``/bin/sh -c SCRIPT`` with Serf's environment variables and stdin (:func:`invocation`); a query
handler that exits 0 answers the query with what it printed on stdout.

Where Serf runs one handler at a time, in the agent's event loop, with no time limit (a hung
script stops every later event), here they run as subprocesses beside the agent: at most
:data:`MAX_RUNNING` at once, started in the order their events happened, each killed with its
process group past a timeout (``-event-handler-timeout``).  Events that find
:data:`MAX_WAITING` runs already waiting are dropped, and counted.  A run keeps the first
:data:`MAX_OUTPUT` bytes of stdout and of stderr (Serf keeps 8 KiB of both mixed); stderr goes
to the log, never into a query's answer.  Whether an answer fits Serf's limit is the Serf
layer's decision: a refused one is logged.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Final

import anyio
from anyio.abc import ByteReceiveStream, Process, TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream

from swim.logs import bump
from swim.rpc.filters import event_matches, parse_event_filter
from swim.rpc.schema import (
    RpcError,
    RpcEvent,
    RpcMemberEvent,
    RpcQueryEvent,
    RpcUserEvent,
    ip_text,
)

log = logging.getLogger("swim.handlers")

SHELL: Final = "/bin/sh"
"""What runs a handler's script, with ``-c``, as in Serf."""
MAX_RUNNING: Final = 4
"""Handler processes running at once; further runs wait their turn."""
MAX_WAITING: Final = 512
"""Runs waiting for a turn; an event that finds this many is dropped for the handlers (and
counted): a cluster in turmoil must not pile up processes without end."""
MAX_OUTPUT: Final = 8 * 1024
"""Bytes of a run's stdout, and of its stderr, that are kept; the rest is read and counted."""
_LOGGED_OUTPUT = 200
"""Characters of a run's output that go into its log line."""


@dataclass(frozen=True, slots=True)
class EventHandler:
    """One ``-event-handler``: the events it takes and the script it runs."""

    filters: tuple[tuple[str, str], ...]
    """(event, name) pairs, as :func:`~swim.rpc.filters.parse_event_filter` gives them."""
    script: str


def parse_event_handler(text: str) -> EventHandler:
    """``[FILTER=]SCRIPT`` as Serf splits it (at the first ``=``); ValueError names what is
    wrong and how to write it."""
    spec, sep, script = text.partition("=")
    if not sep:
        spec, script = "", text
    try:
        filters = parse_event_filter(spec)
    except RpcError:
        raise ValueError(
            f"{spec!r} is not an event filter; use member-join, member-leave, member-failed, "
            "member-update, member-reap, user, user:NAME, query, query:NAME or *, comma-"
            "separated, before the first '=' (write *=SCRIPT when the script holds an '=')"
        ) from None
    if not script.strip():
        raise ValueError("no script to run; give [FILTER=]SCRIPT, such as member-join=./join.sh")
    return EventHandler(tuple(filters), script)


# ---------------------------------------------------------------------------------------------
# What a run gets: Serf's environment variables and stdin.


@dataclass(frozen=True, slots=True)
class Invocation:
    """One run of a handler for one event."""

    script: str
    event: str
    """The event for the log: ``member-join``, ``user:deploy``, ``query:uptime``."""
    environment: dict[str, str]
    """The ``SERF_*`` variables, set on top of the agent's own environment."""
    stdin: bytes
    query_id: int | None
    """For a query, its number to answer it by with the run's stdout."""


def invocation(
    handler: EventHandler, event: RpcEvent, self_name: str, self_tags: Mapping[str, str]
) -> Invocation | None:
    """The run of ``handler`` for ``event`` on the member ``self_name`` with ``self_tags``, as
    Serf's ``invokeEventScript`` prepares it; None when the handler does not take the event."""
    if not event_matches(handler.filters, event):
        return None
    environment = {
        "SERF_EVENT": event.event if isinstance(event, RpcMemberEvent) else _kind(event),
        "SERF_SELF_NAME": self_name,
        "SERF_SELF_ROLE": self_tags.get("role", ""),
    }
    for name, value in self_tags.items():
        environment[f"SERF_TAG_{_variable_name(name)}"] = value
    query_id = None
    if isinstance(event, RpcMemberEvent):
        described = event.event
        stdin = "".join(_member_line(m.name, ip_text(m.addr), m.tags) for m in event.members)
        data = stdin.encode()
    elif isinstance(event, RpcUserEvent):
        described = f"user:{event.name}"
        environment["SERF_USER_EVENT"] = event.name
        environment["SERF_USER_LTIME"] = str(event.ltime)
        data = _payload(event.payload)
    else:
        described = f"query:{event.name}"
        environment["SERF_QUERY_NAME"] = event.name
        environment["SERF_QUERY_LTIME"] = str(event.ltime)
        data = _payload(event.payload)
        query_id = event.id
    # A NUL cannot be in an environment variable: names and tags come from the network.
    safe = {name: value.replace("\0", "\\0") for name, value in environment.items()}
    return Invocation(handler.script, described, safe, data, query_id)


def _kind(event: RpcUserEvent | RpcQueryEvent) -> str:
    return "user" if isinstance(event, RpcUserEvent) else "query"


def _variable_name(tag: str) -> str:
    """``SERF_TAG_``'s suffix for ``tag``: upper case, anything but ``[A-Z0-9_]`` as ``_``, one
    per character (Go's ``strings.ToUpper`` leaves alone what has no one-letter upper case)."""
    return "".join(
        upper if len(upper := char.upper()) == 1 and (upper.isascii() and upper.isalnum()) else "_"
        for char in tag
    )


def _clean(text: str) -> str:
    """Tabs and newlines as ``\\t`` and ``\\n``, so that a member is one line of four fields."""
    return text.replace("\t", "\\t").replace("\n", "\\n")


def _member_line(name: str, address: str, tags: Mapping[str, str]) -> str:
    """``NAME\\tADDRESS\\tROLE\\tTAGS\\n``, tags as ``k=v,k=v`` (Serf's ``memberEventStdin``)."""
    pairs = ",".join(f"{key}={value}" for key, value in tags.items())
    return f"{_clean(name)}\t{address}\t{_clean(tags.get('role', ''))}\t{_clean(pairs)}\n"


def _payload(payload: bytes) -> bytes:
    """The payload, ending in a newline as most shells' ``read`` needs (Serf adds one)."""
    return payload if not payload or payload.endswith(b"\n") else payload + b"\n"


# ---------------------------------------------------------------------------------------------
# Running them.


@dataclass(frozen=True, slots=True)
class HandlerStatistics:
    """What the handlers did since the agent started (:meth:`Handlers.statistics`)."""

    runs: int = 0
    """Runs started."""
    succeeded: int = 0
    """Runs that exited with status 0."""
    failures: int = 0
    """Runs that could not start or exited with a status other than 0."""
    timeouts: int = 0
    """Runs killed at the timeout."""
    dropped: int = 0
    """Runs not started because :data:`MAX_WAITING` were already waiting."""
    answers: int = 0
    """Queries answered with a run's output."""
    answers_refused: int = 0
    """Answers the Serf layer refused: too large, too late, or the query answered already."""


class Handlers:
    """The agent's ``-event-handler`` scripts: :meth:`publish` each event (it never blocks),
    while :meth:`run` runs what matches."""

    def __init__(
        self,
        handlers: Sequence[EventHandler],
        *,
        self_member: Callable[[], tuple[str, Mapping[str, str]]],
        answer: Callable[[int, bytes], Awaitable[None]],
        timeout: float,
        max_running: int = MAX_RUNNING,
        max_waiting: int = MAX_WAITING,
    ) -> None:
        """``self_member`` tells this member's name and tags, which every run gets;
        ``answer(query_id, payload)`` answers a query (raising what it refuses); a run is
        killed after ``timeout`` seconds."""
        self._handlers = tuple(handlers)
        self._self_member = self_member
        self._answer = answer
        self._timeout = timeout
        self._max_running = max_running
        self._send, self._receive = anyio.create_memory_object_stream[Invocation](max_waiting)
        self._statistics = HandlerStatistics()
        self._dropping = False

    @property
    def scripts(self) -> tuple[EventHandler, ...]:
        """The ``-event-handler`` scripts, in the order given."""
        return self._handlers

    def statistics(self) -> HandlerStatistics:
        return self._statistics

    def publish(self, event: RpcEvent) -> None:
        """Queue a run of every handler that takes ``event``."""
        if not self._handlers:
            return
        name, tags = self._self_member()
        for handler in self._handlers:
            run = invocation(handler, event, name, tags)
            if run is None:
                continue
            try:
                self._send.send_nowait(run)
            except anyio.WouldBlock:
                if not self._dropping:
                    log.warning(
                        "%d event handler runs are waiting for a turn: dropping %s and the "
                        "events after it until some finish",
                        self._receive.statistics().current_buffer_used,
                        run.event,
                    )
                self._dropping = True
                self._count("dropped")
                continue
            self._dropping = False

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run what :meth:`publish` queues, until cancelled (which kills what runs)."""
        turns = anyio.Semaphore(self._max_running)
        async with anyio.create_task_group() as nursery:
            task_status.started()
            await self._dispatch(self._receive, turns, nursery)

    async def _dispatch(
        self,
        runs: MemoryObjectReceiveStream[Invocation],
        turns: anyio.Semaphore,
        nursery: TaskGroup,
    ) -> None:
        async with runs:
            async for run in runs:
                await turns.acquire()
                nursery.start_soon(self._take_turn, run, turns)

    async def _take_turn(self, run: Invocation, turns: anyio.Semaphore) -> None:
        try:
            await self._run(run)
        except Exception:  # a bug must cost this run only, never the agent
            log.exception("event handler %r for %s: unexpected failure", run.script, run.event)
        finally:
            turns.release()

    def _count(self, counter: str) -> None:
        self._statistics = bump(self._statistics, counter)

    async def _run(self, run: Invocation) -> None:
        self._count("runs")
        log.debug("running event handler %r for %s", run.script, run.event)
        try:
            process = await anyio.open_process(
                [SHELL, "-c", run.script],
                env={**os.environ, **run.environment},
                start_new_session=True,  # its own process group, to kill it whole
            )
        except OSError as exc:
            self._count("failures")
            log.error("event handler %r for %s could not start: %s", run.script, run.event, exc)
            return
        stdout, stderr = _Output(), _Output()
        status: int | None = None
        try:
            with anyio.move_on_after(self._timeout):
                async with anyio.create_task_group() as pipes:
                    pipes.start_soon(_feed, process, run.stdin)
                    assert process.stdout is not None and process.stderr is not None
                    pipes.start_soon(stdout.read, process.stdout)
                    pipes.start_soon(stderr.read, process.stderr)
                status = await process.wait()
        finally:
            await _end(process, kill=status is None)
        if status is None:
            self._count("timeouts")
            log.warning(
                "event handler %r for %s ran past the %g s timeout (-event-handler-timeout): "
                "killed it%s",
                run.script,
                run.event,
                self._timeout,
                stderr.said(),
            )
            return
        if status != 0:
            self._count("failures")
            log.warning(
                "event handler %r for %s exited with status %d%s",
                run.script,
                run.event,
                status,
                stderr.said(),
            )
            return
        self._count("succeeded")
        log.debug(
            "event handler %r for %s finished%s%s",
            run.script,
            run.event,
            stdout.said("; it printed: "),
            stderr.said("; on stderr: "),
        )
        if run.query_id is not None and stdout.total:
            await self._answer_query(run, stdout)

    async def _answer_query(self, run: Invocation, stdout: _Output) -> None:
        assert run.query_id is not None
        try:
            await self._answer(run.query_id, stdout.data)
        except Exception as exc:  # the Serf layer's refusal says why
            self._count("answers_refused")
            log.warning(
                "event handler %r for %s printed %d bytes; they were not sent as the answer: %s",
                run.script,
                run.event,
                stdout.total,
                exc,
            )
        else:
            self._count("answers")


class _Output:
    """The first :data:`MAX_OUTPUT` bytes of a pipe, and how many it carried in all."""

    __slots__ = ("data", "total")

    def __init__(self) -> None:
        self.data = b""
        self.total = 0

    async def read(self, stream: ByteReceiveStream) -> None:
        async for chunk in stream:
            self.total += len(chunk)
            room = MAX_OUTPUT - len(self.data)
            if room > 0:
                self.data += chunk[:room]

    def said(self, intro: str = "; it said: ") -> str:
        """What it printed, shortened, after ``intro``, for a log line (empty when nothing)."""
        text = self.data.decode(errors="replace").strip()
        if not text:
            return ""
        if len(text) > _LOGGED_OUTPUT or self.total > len(self.data):
            text = f"{text[:_LOGGED_OUTPUT]}... ({self.total} bytes)"
        return intro + text


async def _feed(process: Process, data: bytes) -> None:
    """Write the run's stdin and close it; a script that does not read it is fine."""
    assert process.stdin is not None
    with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        if data:
            await process.stdin.send(data)
        await process.stdin.aclose()


async def _end(process: Process, *, kill: bool) -> None:
    """Reap the run's process; first, with ``kill`` (it timed out, or the agent is stopping),
    kill its whole process group, which holds what the script started (a group outlives its
    leader while any member is left, so its number cannot have gone to another)."""
    with anyio.CancelScope(shield=True):
        if kill:
            with suppress(ProcessLookupError):  # all of it exited meanwhile
                os.killpg(process.pid, signal.SIGKILL)
        await process.aclose()
