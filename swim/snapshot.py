"""Serf-compatible snapshots: the members an agent knew, so that a restart can rejoin them.

The file is Serf's (``serf/snapshot.go``), so a snapshot means the same to Serf and to shoal:
append-only text, one record a line, replayed in order when the agent starts::

    alive: <name> <ip:port>   a member joined (IPv6 in brackets, as Go's net.TCPAddr prints it)
    not-alive: <name>         a member failed or left
    clock: <n>                the last member Lamport time seen
    event-clock: <n>          the Lamport time of the last user event
    query-clock: <n>          the Lamport time of the last query
    leave                     this agent left the cluster
    coordinate: ...           network coordinates of old Serf versions: ignored
    # ...                     a comment

Replaying gives the members to rejoin (latest record wins) and the clocks.  A ``leave`` clears
both, so that an agent that left does not come back on its own, unless it runs with
``rejoin_after_leave``.  A name is everything between ``alive: `` and the last space, so names
may hold spaces; a name with a line break cannot be written and is refused.

The agent opens a :class:`Snapshot` when it starts, rejoins :attr:`Snapshot.previous`, records
every membership change, calls :meth:`Snapshot.flush` every :data:`FLUSH_INTERVAL` seconds (as
Serf does) and :meth:`Snapshot.close` when it stops.  Writes are plain, small, buffered file
appends.  When the file grows past ``max(128 KiB, 2 * 128 bytes * alive members)`` it is
rewritten to the lines that give the same state: a temporary file, synced, moved over the
snapshot with ``os.replace``, and the directory synced so that the move survives a crash.
A last line without its newline (the agent died mid-write) is skipped, as by Serf, and cut off
when the file is opened for recording, so that it cannot swallow the next record.

A disk that fails after the snapshot is open (full, failing, the file or its directory removed)
never stops the agent, as in Serf: the error is logged (again at most every
:data:`ERROR_LOG_INTERVAL` seconds), the records that could not be written are kept and tried
again at the next flush, and the recovery is logged.  Records that would outgrow what a rewrite
costs are not kept one by one: the file is rewritten from the state in memory instead, so
nothing recorded is lost while the agent runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import ipaddress
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

from swim.members import Address

log = logging.getLogger("swim.snapshot")

FLUSH_INTERVAL = 0.5
"""How often the agent should call :meth:`Snapshot.flush` (Serf's ``flushInterval``)."""
MIN_COMPACT_SIZE = 128 * 1024
"""A snapshot is never compacted below this size (Serf's ``snapshotSizeLimit``)."""
BYTES_PER_MEMBER = 128
"""Serf's estimate of a member's share of a compacted snapshot; past twice the estimate for
the members alive, the file is compacted."""
TEMP_SUFFIX = ".compact"
"""Compaction writes ``<path>.compact`` and moves it over the snapshot (Serf's name for it)."""
ERROR_LOG_INTERVAL = 60.0
"""While the snapshot cannot be written, the error is logged again at most this often."""
WRITE_SIZE = io.DEFAULT_BUFFER_SIZE
"""Records are handed to the operating system at each flush, or once this many bytes wait."""

_CLOCKS = {"clock": "member_clock", "event-clock": "event_clock", "query-clock": "query_clock"}
_LAMPORT = re.compile(r"[0-9]{1,20}")  # Go's strconv.ParseUint(s, 10, 64): ASCII digits only
_PORT = re.compile(r"[0-9]{1,5}")
_ENCODING = ("utf-8", "surrogateescape")  # Go strings are bytes: any name survives a rewrite


class SnapshotError(Exception):
    """The snapshot file cannot be read or written; the message names the file and why."""


@dataclass(slots=True)
class SnapshotState:
    """What replaying a snapshot gives."""

    alive: dict[str, Address] = field(default_factory=dict)
    """The members to rejoin, name to address, ordered by their latest ``alive`` record."""
    member_clock: int = 0
    event_clock: int = 0
    query_clock: int = 0
    left: bool = False
    """The agent's last recorded act was a leave (no member was recorded since)."""
    skipped_lines: int = 0
    """Lines that made no sense and were skipped (a torn last line among them)."""

    def seeds(self, exclude: str = "") -> list[str]:
        """The members to rejoin as ``name/host:port`` seeds for ``Node.join``, leaving out
        ``exclude`` (the agent's own name, which Serf's rejoin skips too)."""
        return [
            f"{name}/{format_address(address)}" if name else format_address(address)
            for name, address in self.alive.items()
            if name != exclude
        ]


def format_address(address: Address) -> str:
    """``host:port`` as Go's ``net.TCPAddr.String()`` prints it: IPv6 in brackets, an
    IPv4-mapped IPv6 address as plain IPv4."""
    host, port = address
    with contextlib.suppress(ValueError):
        ip = ipaddress.ip_address(host)
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        host = str(mapped or ip)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(text: str) -> Address | None:
    """The ``(host, port)`` in ``host:port`` or ``[ipv6]:port``; None when it is neither
    (an IPv6 address without brackets is ambiguous, and Go never writes one)."""
    host, colon, port = text.rpartition(":")
    if not colon or not _PORT.fullmatch(port) or int(port) > 65535:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return None
    if not host or any(c in host for c in "[] \t"):
        return None
    return host, int(port)


def load_snapshot(
    path: str | os.PathLike[str], *, rejoin_after_leave: bool = False
) -> SnapshotState:
    """Replay the snapshot at ``path``.

    A file that does not exist yet is an empty snapshot (the agent's first start).  Lines that
    make no sense are skipped, counted and logged, never fatal: a damaged snapshot must not keep
    an agent from starting.  A file that cannot be read raises :class:`SnapshotError`.  With
    ``rejoin_after_leave``, a ``leave`` keeps the members and clocks (and still sets ``left``).
    """
    return _load(os.fspath(path), rejoin_after_leave)[0]


def _load(path: str, rejoin_after_leave: bool) -> tuple[SnapshotState, int]:
    """The replayed state, and how many bytes of the file are whole lines (a last line without
    its newline is a write cut short: skipped, as Serf does).  Only the bytes the file holds
    when opened are read, so that a device (``/dev/zero``, ``/dev/full``: endless bytes, no
    size) replays as empty instead of being read forever."""
    state = SnapshotState()
    whole = first_bad = 0
    try:
        with open(path, "rb") as file:
            remaining = os.fstat(file.fileno()).st_size
            number = 0
            while remaining > 0:
                raw = file.readline(remaining)
                if not raw:
                    break
                remaining -= len(raw)
                number += 1
                if raw.endswith(b"\n"):
                    whole += len(raw)
                    if _replay(state, raw[:-1].decode(*_ENCODING), rejoin_after_leave):
                        continue
                state.skipped_lines += 1
                first_bad = first_bad or number
    except FileNotFoundError:
        return state, 0
    except OSError as exc:
        raise SnapshotError(f"cannot read the snapshot {path!r}: {_why(exc)}") from exc
    if state.skipped_lines:
        log.warning(
            "skipped %d unreadable line(s) in the snapshot %s (the first is line %d)",
            state.skipped_lines,
            path,
            first_bad,
        )
    return state, whole


def _replay(state: SnapshotState, line: str, rejoin_after_leave: bool) -> bool:
    """Apply one line (without its newline) to ``state``, as Serf's replay does; False if the
    line makes no sense."""
    if line.startswith("alive: "):
        name, space, text = line.removeprefix("alive: ").rpartition(" ")
        address = parse_address(text)
        if not space or address is None:
            return False
        state.alive.pop(name, None)
        state.alive[name] = address
        state.left = False
    elif line.startswith("not-alive: "):
        state.alive.pop(line.removeprefix("not-alive: "), None)
        state.left = False
    elif line == "leave":
        state.left = True
        if not rejoin_after_leave:
            state.alive.clear()
            state.member_clock = state.event_clock = state.query_clock = 0
    elif line.startswith(("coordinate: ", "#")):
        pass
    else:
        key, separator, value = line.partition(": ")
        if not separator or key not in _CLOCKS or not _LAMPORT.fullmatch(value):
            return False
        if int(value) >= 2**64:
            return False
        setattr(state, _CLOCKS[key], int(value))
    return True


@dataclass(slots=True)
class _Trouble:
    """Since when the snapshot cannot be written, and what was logged about it."""

    since: float
    logged: float
    failures: int
    why: str


class Snapshot:
    """A snapshot file open for recording; :attr:`previous` is what it held when opened (the
    members to rejoin, the clocks to restore).

    Every record is also applied to an in-memory copy of the state with the rules of the replay,
    so that compaction writes exactly what a replay of the whole file would give, and so that a
    file that could not be written can be rewritten whole.  After :meth:`leave`, membership,
    event and query records are ignored and only the member clock is still recorded, as in
    Serf.  Opening raises :class:`SnapshotError` when the file cannot be opened or read; after
    that, disk errors are logged and retried, never raised (see the module's docstring).
    ``clock`` (seconds) paces the error log; the agent passes trio's.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        rejoin_after_leave: bool = False,
        min_compact_size: int = MIN_COMPACT_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = os.fspath(path)
        self.rejoin_after_leave = rejoin_after_leave
        self.min_compact_size = min_compact_size
        self._clock = clock
        try:
            file = _open_append(self.path)
        except OSError as exc:
            raise SnapshotError(f"cannot open the snapshot {self.path!r}: {_why(exc)}") from exc
        try:
            self.previous, whole = _load(self.path, rejoin_after_leave)
            if os.fstat(file.fileno()).st_size > whole:
                file.truncate(whole)  # a torn last line would swallow the next record
        except OSError as exc:
            file.close()
            raise SnapshotError(f"cannot read the snapshot {self.path!r}: {_why(exc)}") from exc
        except SnapshotError:
            file.close()
            raise
        self._file: io.RawIOBase | None = file
        """Open for appending; None once it must be reopened (after a rewrite that failed)."""
        self._size = whole
        """The size of the file once the pending records are written."""
        self._pending = bytearray()
        """Records not written yet, in order."""
        self._rewrite = False
        """The file must be rewritten from memory before anything is appended to it again."""
        self._trouble: _Trouble | None = None
        self._closed = False
        self._state = dataclasses.replace(
            self.previous, alive=dict(self.previous.alive), skipped_lines=0
        )
        self._leaving = False
        self._compact_at = 0  # after a failed compaction: the size to try again at

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def state(self) -> SnapshotState:
        """What a replay of the file gives once everything recorded is written (a copy)."""
        return dataclasses.replace(self._state, alive=dict(self._state.alive))

    @property
    def failing(self) -> bool:
        """Whether the last attempt to write the file failed (records wait in memory)."""
        return self._trouble is not None

    # ------------------------------------------------------------------ records

    def alive(self, name: str, address: Address) -> None:
        """Record that ``name`` joined (or came back) at ``address``, an IP and a port."""
        text = format_address(address)
        if parse_address(text) is None:
            raise ValueError(f"cannot record {name!r} at {address!r}: not a host and a port")
        if not self._leaving and self._writable(name):
            self._append(f"alive: {name} {text}\n")

    def not_alive(self, name: str) -> None:
        """Record that ``name`` failed or left: a restart will not try to rejoin it."""
        if not self._leaving and self._writable(name):
            self._append(f"not-alive: {name}\n")

    def clocks(self, member: int, event: int, query: int) -> None:
        """Record the Lamport clocks that moved past the recorded ones: the last member time
        seen (Serf records its clock's time minus one every 500 ms and after each member
        event), and the times of the last user event and query received."""
        state = self._state
        if member > state.member_clock:
            self._append(f"clock: {member}\n")
        if self._leaving:
            return
        if event > state.event_clock:
            self._append(f"event-clock: {event}\n")
        if query > state.query_clock:
            self._append(f"query-clock: {query}\n")

    def leave(self) -> None:
        """Record that this agent left the cluster; written through to the disk at once."""
        if self._leaving:
            return
        self._leaving = True
        self._append("leave\n")
        self.flush()
        self._sync()

    def flush(self) -> None:
        """Hand the records to the operating system (call every :data:`FLUSH_INTERVAL`
        seconds: a crash of the agent then loses at most that much).  After a failure this is
        the retry: the records kept are written, or the file is rewritten from memory."""
        self._check_open()
        if not (self._rewrite or self._file is None):
            if not self._write_pending():
                return
            if self._still_there():
                self._recovered()
                return
        self._compact()

    def close(self) -> None:
        """Flush, sync to the disk and close; closing again does nothing.  Records that still
        cannot be written are logged as lost to the next start."""
        if self._closed:
            return
        self.flush()
        self._sync()
        self._closed = True
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
        if self._trouble is not None:
            log.error(
                "closing the snapshot %s without its latest records (%s): a restart "
                "rejoins from an older state",
                self.path,
                self._trouble.why,
            )

    # ------------------------------------------------------------------ plumbing

    def _check_open(self) -> None:
        if self._closed:
            raise SnapshotError(f"cannot write the snapshot {self.path!r}: it is closed")

    def _writable(self, name: str) -> bool:
        if "\n" not in name:
            return True
        log.warning("not recording member %r in the snapshot: its name has a line break", name)
        return False

    def _append(self, line: str) -> None:
        self._check_open()
        data = line.encode(*_ENCODING)
        _replay(self._state, line[:-1], self.rejoin_after_leave)
        self._size += len(data)
        if not self._rewrite:
            self._pending += data
            if len(self._pending) > max(self._threshold(), WRITE_SIZE):
                self._pending.clear()  # a rewrite from memory is smaller than keeping these
                self._rewrite = True
            elif len(self._pending) >= WRITE_SIZE and self._trouble is None:
                self._write_pending()
        if self._size > max(self._threshold(), self._compact_at):
            self._compact()

    def _threshold(self) -> int:
        return max(self.min_compact_size, 2 * BYTES_PER_MEMBER * len(self._state.alive))

    def _write_pending(self) -> bool:
        """Append the pending records; False (logged) when the file refuses them.  A short
        write keeps the rest pending, so a record cut in two is completed by the next try."""
        assert self._file is not None
        try:
            while self._pending:
                written = self._file.write(self._pending)
                if not written:
                    raise OSError("the file took no bytes")
                del self._pending[:written]
        except OSError as exc:
            self._failed(_why(exc))
            return False
        return True

    def _still_there(self) -> bool:
        """Whether the open file is still the snapshot: records written to a file that was
        removed (or whose directory was) would be lost when it is closed."""
        assert self._file is not None
        try:
            removed = os.fstat(self._file.fileno()).st_nlink == 0
        except OSError as exc:
            self._failed(_why(exc))
            return False
        if removed:
            self._rewrite = True
            self._failed("the file was removed")
        return not removed

    def _sync(self) -> None:
        """Sync the file to the disk; after a failure the kernel may have dropped what it held
        (it does not keep failed pages), so the next flush rewrites the file from memory."""
        if self._file is None or self._rewrite:
            return
        try:
            os.fsync(self._file.fileno())
        except OSError as exc:
            self._rewrite = True
            self._failed(f"cannot sync: {_why(exc)}")

    def _compact(self) -> None:
        """Rewrite the file as the few lines that replay to the same state: a temporary file,
        synced, moved over the snapshot, and the directory synced, so that a crash leaves the
        old file or the new one, whole."""
        state = self._state
        lines = [f"alive: {name} {format_address(a)}\n" for name, a in state.alive.items()]
        if state.left:  # before the clocks, which a replayed leave would reset
            lines.append("leave\n")
        lines += [
            f"clock: {state.member_clock}\n",
            f"event-clock: {state.event_clock}\n",
            f"query-clock: {state.query_clock}\n",
        ]
        data = "".join(lines).encode(*_ENCODING)
        temp = self.path + TEMP_SUFFIX
        recovering = self._rewrite or self._file is None or self._trouble is not None
        try:
            with open(temp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.remove(temp)
            self._compact_at = self._size + self._threshold()
            if recovering:
                self._failed(_why(exc))
            else:  # appending still works: only the file stays big a while longer
                log.warning(
                    "cannot compact the snapshot %s (%s); trying again at %d bytes",
                    self.path,
                    _why(exc),
                    self._compact_at,
                )
            return
        # the file now holds the whole state: what was pending is in it
        self._pending.clear()
        self._rewrite = False
        self._size = len(data)
        self._compact_at = 0
        if self._file is not None:
            with contextlib.suppress(OSError):  # it refers to the file just replaced
                self._file.close()
            self._file = None
        try:
            _sync_directory(os.path.dirname(self.path) or ".")
            self._file = _open_append(self.path)
        except OSError as exc:
            self._rewrite = True
            self._failed(_why(exc))
            return
        self._recovered()

    def _failed(self, why: str) -> None:
        """Log that the file cannot be written: the first failure at once, then at most every
        :data:`ERROR_LOG_INTERVAL` seconds while it lasts."""
        now = self._clock()
        trouble = self._trouble
        if trouble is None:
            self._trouble = _Trouble(since=now, logged=now, failures=1, why=why)
            log.error(
                "cannot write the snapshot %s: %s; its records are kept in memory and "
                "written as soon as the disk takes them",
                self.path,
                why,
            )
            return
        trouble.failures += 1
        trouble.why = why
        if now - trouble.logged >= ERROR_LOG_INTERVAL:
            trouble.logged = now
            log.error(
                "still cannot write the snapshot %s: %s (%d failed attempts in %.0f s)",
                self.path,
                why,
                trouble.failures,
                now - trouble.since,
            )

    def _recovered(self) -> None:
        trouble, self._trouble = self._trouble, None
        if trouble is not None:
            log.warning(
                "the snapshot %s is written again, after %.1f s of errors; no record was lost",
                self.path,
                self._clock() - trouble.since,
            )


def _open_append(path: str) -> io.RawIOBase:
    """The snapshot, opened for appending without a buffer: :class:`Snapshot` buffers itself,
    so that it knows exactly which bytes reached the file."""
    return open(path, "ab", buffering=0)


def _sync_directory(path: str) -> None:
    """Sync a directory, so that a file just moved into it is found there after a crash."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _why(exc: Exception) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
