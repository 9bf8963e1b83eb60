"""Serf-compatible snapshots: the format Serf writes and replays, compaction, damaged files,
and disks that fail under a running agent."""

from __future__ import annotations

import errno
import io
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swim import snapshot as snapshot_module
from swim.node import parse_seed
from swim.snapshot import (
    ERROR_LOG_INTERVAL,
    TEMP_SUFFIX,
    Snapshot,
    SnapshotError,
    SnapshotState,
    format_address,
    load_snapshot,
    parse_address,
)

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer


def test_round_trip_in_serfs_format(tmp_path: Path) -> None:
    path = tmp_path / "serf.snapshot"
    with Snapshot(path) as snapshot:
        assert snapshot.previous == SnapshotState()
        snapshot.alive("web-1", ("10.0.0.1", 7946))
        snapshot.alive("db 1", ("fe80::1", 8000))  # a name may hold spaces
        snapshot.clocks(member=12, event=3, query=0)
        snapshot.alive("cache", ("10.0.0.3", 7946))
        snapshot.not_alive("cache")
        snapshot.clocks(member=12, event=4, query=1)  # only what moved is written
    assert path.read_text() == (
        "alive: web-1 10.0.0.1:7946\n"
        "alive: db 1 [fe80::1]:8000\n"
        "clock: 12\n"
        "event-clock: 3\n"
        "alive: cache 10.0.0.3:7946\n"
        "not-alive: cache\n"
        "event-clock: 4\n"
        "query-clock: 1\n"
    )
    assert load_snapshot(path) == SnapshotState(
        alive={"web-1": ("10.0.0.1", 7946), "db 1": ("fe80::1", 8000)},
        member_clock=12,
        event_clock=4,
        query_clock=1,
    )


def test_a_restart_carries_on_from_the_file_and_rejoins_its_members(tmp_path: Path) -> None:
    path = tmp_path / "snapshot"
    with Snapshot(path) as first:
        first.alive("me", ("10.0.0.1", 7946))
        first.alive("a", ("10.0.0.2", 7946))
        first.alive("b", ("::1", 7000))
    with Snapshot(path) as second:
        assert list(second.previous.alive) == ["me", "a", "b"]
        seeds = second.previous.seeds(exclude="me")
        assert seeds == ["a/10.0.0.2:7946", "b/[::1]:7000"]
        assert [parse_seed(seed, 7946) for seed in seeds] == [
            ("a", "10.0.0.2", 7946),
            ("b", "::1", 7000),
        ]
        second.not_alive("a")
    assert list(load_snapshot(path).alive) == ["me", "b"]


def test_the_latest_record_wins_and_orders_the_members(tmp_path: Path) -> None:
    path = tmp_path / "snapshot"
    with Snapshot(path) as snapshot:
        snapshot.alive("a", ("10.0.0.1", 1))
        snapshot.alive("b", ("10.0.0.2", 2))
        snapshot.alive("c", ("10.0.0.3", 3))
        snapshot.not_alive("a")
        snapshot.alive("a", ("10.0.0.9", 9))  # back, at a new address
        snapshot.alive("b", ("10.0.0.8", 8))  # moved
        snapshot.not_alive("nobody")
    state = load_snapshot(path)
    assert list(state.alive.items()) == [
        ("c", ("10.0.0.3", 3)),
        ("a", ("10.0.0.9", 9)),
        ("b", ("10.0.0.8", 8)),
    ]


def test_a_leave_suppresses_the_rejoin_unless_rejoin_after_leave(tmp_path: Path) -> None:
    path = tmp_path / "snapshot"
    with Snapshot(path) as snapshot:
        snapshot.alive("a", ("10.0.0.1", 7946))
        snapshot.clocks(member=5, event=2, query=1)
        snapshot.leave()
        snapshot.alive("b", ("10.0.0.2", 7946))  # ignored once leaving, as Serf does
        snapshot.clocks(member=7, event=9, query=9)  # only the member clock is still kept
    assert path.read_text().splitlines()[-2:] == ["leave", "clock: 7"]
    assert load_snapshot(path) == SnapshotState(member_clock=7, left=True)
    assert load_snapshot(path, rejoin_after_leave=True) == SnapshotState(
        alive={"a": ("10.0.0.1", 7946)}, member_clock=7, event_clock=2, query_clock=1, left=True
    )
    with Snapshot(path) as restarted:  # started again by hand: it joins and records again
        assert restarted.previous.left and not restarted.previous.alive
        restarted.alive("c", ("10.0.0.3", 7946))
    assert load_snapshot(path) == SnapshotState(alive={"c": ("10.0.0.3", 7946)}, member_clock=7)


def test_compaction_shrinks_the_file_and_keeps_the_state(tmp_path: Path) -> None:
    path = tmp_path / "snapshot"
    with Snapshot(path, min_compact_size=4096) as snapshot:
        for round_ in range(200):
            for i in range(10):
                snapshot.alive(f"node-{i}", (f"10.0.{round_ % 3}.{i}", 7946))
            snapshot.not_alive(f"node-{round_ % 10}")
            snapshot.clocks(member=round_, event=round_ // 2, query=round_ // 3)
            assert path.stat().st_size <= 4096 + 100
        expected = snapshot.state
    assert not Path(f"{path}{TEMP_SUFFIX}").exists()
    assert load_snapshot(path) == expected
    assert len(expected.alive) == 9 and expected.member_clock == 199


@pytest.mark.parametrize("rejoin_after_leave", [False, True])
def test_compaction_after_a_leave_keeps_the_leave(tmp_path: Path, rejoin_after_leave: bool) -> None:
    path = tmp_path / "snapshot"
    with Snapshot(path, rejoin_after_leave=rejoin_after_leave, min_compact_size=300) as snapshot:
        snapshot.alive("a", ("10.0.0.1", 7946))
        snapshot.clocks(member=3, event=2, query=1)
        snapshot.leave()
        for tick in range(4, 40):
            snapshot.clocks(member=tick, event=0, query=0)
        expected = snapshot.state
    assert path.stat().st_size < 300
    assert "leave\n" in path.read_text()
    state = load_snapshot(path, rejoin_after_leave=rejoin_after_leave)
    assert state == expected
    assert state.left and state.member_clock == 39
    assert bool(state.alive) is rejoin_after_leave


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(
            st.just("alive"),
            st.sampled_from(["a", "b", "c d", ""]),
            st.sampled_from([("10.0.0.1", 7946), ("::1", 8000), ("::ffff:10.0.0.2", 1)]),
        ),
        st.tuples(st.just("not_alive"), st.sampled_from(["a", "b", "c d", "zz"])),
        st.tuples(st.just("clocks"), st.integers(0, 50), st.integers(0, 50), st.integers(0, 50)),
        st.tuples(st.just("leave")),
        st.tuples(st.just("restart")),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(OPERATIONS, st.booleans())
def test_compacting_often_replays_like_never_compacting(
    operations: list[tuple[object, ...]], rejoin_after_leave: bool
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        paths = [Path(folder, "never"), Path(folder, "often")]
        sizes = [1 << 30, 0]

        def open_both() -> list[Snapshot]:
            return [
                Snapshot(path, rejoin_after_leave=rejoin_after_leave, min_compact_size=size)
                for path, size in zip(paths, sizes, strict=True)
            ]

        snapshots = open_both()
        for operation in operations:
            name, *args = operation
            if name == "restart":
                for snapshot in snapshots:
                    snapshot.close()
                snapshots = open_both()
                assert snapshots[0].previous == snapshots[1].previous
                continue
            for snapshot in snapshots:
                getattr(snapshot, str(name))(*args)
            assert snapshots[0].state == snapshots[1].state
        for snapshot in snapshots:
            snapshot.close()
        never, often = (load_snapshot(p, rejoin_after_leave=rejoin_after_leave) for p in paths)
        assert never == often == snapshots[0].state


def test_damaged_lines_are_skipped_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "snapshot"
    path.write_bytes(
        b"alive: good 10.0.0.1:7946\n"
        b"alive: nospace\n"  # no address
        b"alive: a 10.0.0.2\n"  # no port
        b"alive: a 10.0.0.2:99999\n"  # port out of range
        b"alive: a ::1:7946\n"  # IPv6 without brackets: ambiguous
        b"alive: a :7946\n"  # no host
        b"clock: -1\n"
        b"clock: 18446744073709551616\n"  # 2**64 does not fit Go's uint64
        b"clock: 0x10\n"
        b"event-clock: 7\n"
        b"bogus line\n"
        b"\n"
        b"\xff\xfe\x00garbage\n"
        b"# a comment\n"
        b"coordinate: {not parsed}\n"
        b"leave\r\n"  # not a leave
        b"not-alive: good"  # torn last line: a write cut short
    )
    with caplog.at_level(logging.WARNING, logger="swim.snapshot"):
        state = load_snapshot(path)
    assert state == SnapshotState(
        alive={"good": ("10.0.0.1", 7946)}, event_clock=7, skipped_lines=13
    )
    assert f"skipped 13 unreadable line(s) in the snapshot {path} (the first is line 2)" in (
        caplog.text
    )
    with Snapshot(path) as snapshot:  # an agent still starts on it, and appends after it
        assert snapshot.previous.alive == {"good": ("10.0.0.1", 7946)}
        snapshot.alive("new", ("10.0.0.5", 7946))
    assert load_snapshot(path) == SnapshotState(  # without the torn line, dropped on open
        alive={"good": ("10.0.0.1", 7946), "new": ("10.0.0.5", 7946)},
        event_clock=7,
        skipped_lines=12,
    )


def test_a_snapshot_written_by_serf_replays(tmp_path: Path) -> None:
    path = tmp_path / "serf.snapshot"
    path.write_text(
        "alive: consul-server-1 10.0.1.10:8301\n"
        "alive: consul-server-2 10.0.1.11:8301\n"
        "alive: web 01 10.0.1.20:8301\n"
        "clock: 41\n"
        "alive: v6-node [2001:db8::7]:8301\n"
        'coordinate: {"Vec":[0.1,0.2],"Error":1.5,"Adjustment":0,"Height":1e-05}\n'
        "event-clock: 12\n"
        "query-clock: 3\n"
        "not-alive: consul-server-2\n"
        "clock: 44\n"
        "leave\n"
        "alive: consul-server-1 10.0.1.10:8301\n"  # the next run joined again
        "alive: v6-node [2001:db8::7]:8301\n"
        "clock: 50\n"
        "event-clock: 13\n"
    )
    assert load_snapshot(path) == SnapshotState(
        alive={"consul-server-1": ("10.0.1.10", 8301), "v6-node": ("2001:db8::7", 8301)},
        member_clock=50,
        event_clock=13,
        query_clock=0,  # reset by the leave, not recorded since
        left=False,
    )


def test_addresses_as_go_prints_and_parses_them() -> None:
    assert format_address(("10.0.0.1", 7946)) == "10.0.0.1:7946"
    assert format_address(("2001:DB8::1", 80)) == "[2001:db8::1]:80"
    assert format_address(("::ffff:10.0.0.1", 80)) == "10.0.0.1:80"  # Go's IP.String()
    assert format_address(("fe80::1%eth0", 80)) == "[fe80::1%eth0]:80"
    assert parse_address("[fe80::1%eth0]:80") == ("fe80::1%eth0", 80)
    assert parse_address("[::1]:0") == ("::1", 0)
    for bad in ("::1:80", "10.0.0.1", "[::1]", "[::1]:", ":80", "a:b", "[a]b]:1", "x:+80"):
        assert parse_address(bad) is None, bad


def test_names_and_addresses_that_cannot_be_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "snapshot"
    with Snapshot(path) as snapshot:
        with caplog.at_level(logging.WARNING, logger="swim.snapshot"):
            snapshot.alive("evil\nleave", ("10.0.0.1", 7946))
            snapshot.not_alive("evil\nleave")
        assert "its name has a line break" in caplog.text
        with pytest.raises(ValueError, match="not a host and a port"):
            snapshot.alive("a", ("", 7946))
    assert path.read_bytes() == b""


def test_unreadable_and_unwritable_paths_name_the_file(tmp_path: Path) -> None:
    assert load_snapshot(tmp_path / "first-start") == SnapshotState()
    with pytest.raises(SnapshotError, match=re.escape(f"cannot read the snapshot '{tmp_path}': ")):
        load_snapshot(tmp_path)  # a directory
    missing = tmp_path / "no" / "such" / "dir" / "snapshot"
    with pytest.raises(
        SnapshotError, match=re.escape(f"cannot open the snapshot '{missing}': No such")
    ):
        Snapshot(missing)
    snapshot = Snapshot(tmp_path / "closed")
    snapshot.close()
    snapshot.close()  # closing twice is fine
    with pytest.raises(SnapshotError, match=r"cannot write the snapshot .*closed"):
        snapshot.alive("a", ("10.0.0.1", 1))


def test_a_failed_compaction_keeps_recording_and_is_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "snapshot"
    blocker = Path(f"{path}{TEMP_SUFFIX}")
    blocker.mkdir()  # the temporary file cannot be created
    with Snapshot(path, min_compact_size=200) as snapshot:
        with caplog.at_level(logging.WARNING, logger="swim.snapshot"):
            for _ in range(5):  # 220 bytes: one failed attempt past 200, the next one due at 420
                snapshot.alive("churn", ("10.0.0.1", 7946))
                snapshot.not_alive("churn")
        assert caplog.text.count("cannot compact the snapshot") == 1
        snapshot.flush()
        assert os.path.getsize(path) == 220
        blocker.rmdir()
        for _ in range(5):
            snapshot.alive("churn", ("10.0.0.2", 7946))
            snapshot.not_alive("churn")
        snapshot.alive("stays", ("10.0.0.3", 7946))
        expected = snapshot.state
    assert os.path.getsize(path) < 256
    assert load_snapshot(path) == expected == SnapshotState(alive={"stays": ("10.0.0.3", 7946)})


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Disk:
    """The file system under a snapshot: while ``error`` is set every write fails with it;
    with ``room``, the next write takes only that many bytes and the disk is full after it."""

    def __init__(self) -> None:
        self.error: int | None = None
        self.room: int | None = None

    def open(self, path: str) -> io.RawIOBase:
        return _DiskFile(self, path)


class _DiskFile(io.FileIO):
    def __init__(self, disk: Disk, path: str) -> None:
        super().__init__(path, "ab")
        self.disk = disk

    def write(self, data: ReadableBuffer, /) -> int:
        disk = self.disk
        if disk.room is not None:
            written = super().write(bytes(data)[: disk.room])
            disk.room, disk.error = None, errno.ENOSPC
            return written
        if disk.error is not None:
            raise OSError(disk.error, os.strerror(disk.error))
        return super().write(data)


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Disk:
    failing = Disk()
    monkeypatch.setattr(snapshot_module, "_open_append", failing.open)
    return failing


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EACCES])
def test_a_failing_disk_is_logged_at_a_measured_pace_and_nothing_is_lost(
    tmp_path: Path, disk: Disk, caplog: pytest.LogCaptureFixture, code: int
) -> None:
    path = tmp_path / "snapshot"
    clock = Clock()
    with Snapshot(path, clock=clock) as snapshot, caplog.at_level(logging.WARNING):
        snapshot.alive("a", ("10.0.0.1", 7946))
        snapshot.flush()
        disk.error = code
        snapshot.alive("b", ("10.0.0.2", 7946))
        snapshot.not_alive("a")
        started = clock.now
        for _ in range(100):  # 50 s of flushes: one error is logged
            snapshot.flush()
            clock.now += 0.5
        assert snapshot.failing and path.read_text() == "alive: a 10.0.0.1:7946\n"
        assert errors(caplog) == [
            f"cannot write the snapshot {path}: {os.strerror(code)}; its records are kept in "
            "memory and written as soon as the disk takes them"
        ]
        clock.now = started + ERROR_LOG_INTERVAL  # one more line
        snapshot.flush()
        assert errors(caplog)[1:] == [
            f"still cannot write the snapshot {path}: {os.strerror(code)} "
            "(101 failed attempts in 60 s)"
        ]
        disk.error = None
        clock.now += 1.5
        snapshot.flush()
        assert not snapshot.failing
        assert errors(caplog)[2:] == [
            f"the snapshot {path} is written again, after 61.5 s of errors; no record was lost"
        ]
        expected = snapshot.state
    assert path.read_text().splitlines() == [
        "alive: a 10.0.0.1:7946",
        "alive: b 10.0.0.2:7946",
        "not-alive: a",
    ]
    assert load_snapshot(path) == expected == SnapshotState(alive={"b": ("10.0.0.2", 7946)})


def test_a_record_cut_short_by_a_full_disk_is_completed_later(tmp_path: Path, disk: Disk) -> None:
    path = tmp_path / "snapshot"
    with Snapshot(path) as snapshot:
        disk.room = 9  # "alive: we" reaches the disk, then it is full
        snapshot.alive("web-1", ("10.0.0.1", 7946))
        snapshot.flush()
        assert path.read_bytes() == b"alive: we"
        disk.error = None
        snapshot.alive("web-2", ("10.0.0.2", 7946))
    assert path.read_text() == "alive: web-1 10.0.0.1:7946\nalive: web-2 10.0.0.2:7946\n"


def test_closing_on_a_disk_that_still_fails_says_what_is_lost(
    tmp_path: Path, disk: Disk, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "snapshot"
    snapshot = Snapshot(path)
    disk.error = errno.ENOSPC
    with caplog.at_level(logging.WARNING):
        snapshot.alive("a", ("10.0.0.1", 7946))
        snapshot.leave()  # an agent leaving on a full disk still leaves
        snapshot.close()
    assert errors(caplog)[-1] == (
        f"closing the snapshot {path} without its latest records (No space left on device): "
        "a restart rejoins from an older state"
    )
    assert path.read_bytes() == b""


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_a_device_without_end_replays_as_empty() -> None:
    assert load_snapshot("/dev/zero") == SnapshotState()  # read up to its size, 0: not forever


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_on_dev_full_records_wait_until_a_rewrite_has_somewhere_to_go(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """/dev/full fails every write with ENOSPC.  The snapshot is a symbolic link to it, so the
    rewrite, which writes a temporary file beside the link and moves it over the link, lands
    on the real disk: the link is replaced, never /dev/full."""
    path = tmp_path / "snapshot"
    path.symlink_to("/dev/full")
    with Snapshot(path, min_compact_size=300) as snapshot, caplog.at_level(logging.WARNING):
        snapshot.alive("a", ("10.0.0.1", 7946))
        snapshot.flush()
        assert "No space left on device" in errors(caplog)[0] and snapshot.failing
        for _ in range(10):  # past 300 bytes the file is rewritten from memory
            snapshot.alive("churn", ("10.0.0.2", 7946))
            snapshot.not_alive("churn")
        assert not snapshot.failing and not path.is_symlink()
        snapshot.alive("b", ("10.0.0.3", 7946))
        expected = snapshot.state
    assert "is written again" in errors(caplog)[-1]
    assert load_snapshot(path) == expected
    assert expected.alive == {"a": ("10.0.0.1", 7946), "b": ("10.0.0.3", 7946)}


def test_a_removed_directory_is_noticed_and_the_file_written_again_when_it_is_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / "snapshot"
    with Snapshot(path) as snapshot, caplog.at_level(logging.WARNING):
        snapshot.alive("a", ("10.0.0.1", 7946))
        snapshot.flush()
        shutil.rmtree(folder)  # writes to the open file would now go nowhere
        snapshot.alive("b", ("10.0.0.2", 7946))
        snapshot.flush()
        snapshot.flush()
        assert snapshot.failing
        assert errors(caplog) == [
            f"cannot write the snapshot {path}: the file was removed; its records are kept in "
            "memory and written as soon as the disk takes them"
        ]
        folder.mkdir()
        snapshot.flush()
        assert not snapshot.failing
        expected = snapshot.state
    assert (
        load_snapshot(path)
        == expected
        == SnapshotState(alive={"a": ("10.0.0.1", 7946), "b": ("10.0.0.2", 7946)})
    )


def test_compaction_syncs_the_new_file_before_the_move_and_the_directory_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "snapshot"
    calls: list[tuple[str, ...]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(source: str, target: str) -> None:
        calls.append(("replace", source, target))
        real_replace(source, target)

    with Snapshot(path, min_compact_size=100) as snapshot:
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)
        for _ in range(3):
            snapshot.alive("churn", ("10.0.0.1", 7946))
            snapshot.not_alive("churn")
        monkeypatch.undo()
    temp = f"{path}{TEMP_SUFFIX}"
    assert calls == [("fsync", temp), ("replace", temp, str(path)), ("fsync", str(tmp_path))]
