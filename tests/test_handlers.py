"""``-event-handler``: what a handler gets for each event (Serf's variables and stdin), and how
its runs go, as real processes: answers, failures, timeouts, the bounds on running and waiting
runs.  Against real agents and the `serf` CLI: tests/interop/test_agent_handlers.py."""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from swim.handlers import (
    MAX_OUTPUT,
    EventHandler,
    Handlers,
    Invocation,
    invocation,
    parse_event_handler,
)
from swim.rpc import RpcMember, RpcMemberEvent, RpcQueryEvent, RpcUserEvent

LIMIT = 20.0
"""Seconds any wait on real processes may take before the test fails."""
SELF_TAGS = {"role": "web", "dc-1.zone": "a", "ß": "x"}


def member(name: str, ip: str, **tags: str) -> RpcMember:
    return RpcMember(name, socket.inet_aton(ip), 7946, tags, "alive", 1, 5, 2, 2, 5, 4)


def run_for(handler: str, event: object) -> Invocation:
    run = invocation(parse_event_handler(handler), event, "web-1", SELF_TAGS)  # type: ignore[arg-type]
    assert run is not None
    return run


# ---------------------------------------------------------------------------------------------
# Parsing, as serf agent splits -event-handler.


def test_a_handler_is_filter_equals_script_or_just_a_script() -> None:
    assert parse_event_handler("./all.sh") == EventHandler((("*", ""),), "./all.sh")
    assert parse_event_handler("member-join,user:deploy=./x.sh a=b") == EventHandler(
        (("member-join", ""), ("user", "deploy")), "./x.sh a=b"
    )
    assert parse_event_handler("query:uptime=uptime").filters == (("query", "uptime"),)
    assert parse_event_handler("*=A=1 ./run").script == "A=1 ./run"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("A=1 ./run", "'A' is not an event filter; use member-join, "),
        ("member-joined=./x", "(write *=SCRIPT when the script holds an '=')"),
        ("user=", "no script to run; give [FILTER=]SCRIPT"),
        ("", "no script to run"),
    ],
)
def test_a_bad_handler_says_what_to_write(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        parse_event_handler(text)


# ---------------------------------------------------------------------------------------------
# What a run gets: Serf's invokeEventScript.


def test_a_member_event_gives_one_tab_separated_line_per_member() -> None:
    event = RpcMemberEvent(
        "member-join",
        (member("db-1", "10.0.0.3", role="db", zone="b"), member("odd\tname\n", "10.0.0.4")),
    )
    run = run_for("member-join=./on-join", event)
    assert run.stdin == b"db-1\t10.0.0.3\tdb\trole=db,zone=b\nodd\\tname\\n\t10.0.0.4\t\t\n"
    assert run.environment == {
        "SERF_EVENT": "member-join",
        "SERF_SELF_NAME": "web-1",
        "SERF_SELF_ROLE": "web",
        "SERF_TAG_ROLE": "web",
        "SERF_TAG_DC_1_ZONE": "a",
        "SERF_TAG__": "x",  # Go upper-cases ß to itself, then it is not [A-Z0-9_]
    }
    assert (run.event, run.query_id) == ("member-join", None)


def test_a_user_event_gives_its_name_time_and_payload_with_a_newline() -> None:
    run = run_for("user:deploy=./deploy", RpcUserEvent("deploy", b"v2", False, 41))
    assert run.stdin == b"v2\n"
    assert run.environment["SERF_EVENT"] == "user"
    assert (run.environment["SERF_USER_EVENT"], run.environment["SERF_USER_LTIME"]) == (
        "deploy",
        "41",
    )
    assert run_for("user=./x", RpcUserEvent("e", b"", False, 1)).stdin == b""
    assert run_for("user=./x", RpcUserEvent("e", b"a\n", False, 1)).stdin == b"a\n"


def test_a_query_gives_its_name_and_time_and_is_answered_by_its_id() -> None:
    run = run_for("query=./answer", RpcQueryEvent(9, 17, "uptime", b"?"))
    assert (run.stdin, run.query_id, run.event) == (b"?\n", 9, "query:uptime")
    assert run.environment["SERF_EVENT"] == "query"
    assert (run.environment["SERF_QUERY_NAME"], run.environment["SERF_QUERY_LTIME"]) == (
        "uptime",
        "17",
    )


def test_filters_pick_the_events_and_a_nul_from_the_network_is_escaped() -> None:
    handler = parse_event_handler("user:deploy,member-leave=./x")
    deploy = RpcUserEvent("deploy", b"", False, 1)
    assert invocation(handler, RpcUserEvent("other", b"", False, 1), "me", {}) is None
    assert invocation(handler, RpcMemberEvent("member-join", ()), "me", {}) is None
    assert invocation(handler, RpcQueryEvent(1, 1, "deploy", b""), "me", {}) is None
    assert invocation(handler, deploy, "me", {}) is not None
    run = invocation(parse_event_handler("./x"), RpcUserEvent("a\0b", b"", False, 1), "me", {})
    assert run is not None and run.environment["SERF_USER_EVENT"] == "a\\0b"


# ---------------------------------------------------------------------------------------------
# Runs, as real processes (real time; every wait bounded).


class Answers:
    """What the handlers answered, as the agent's Serf layer would take it (or refuse it)."""

    def __init__(self, refuse: str = "") -> None:
        self.refuse = refuse
        self.given: list[tuple[int, bytes]] = []

    async def __call__(self, query_id: int, payload: bytes) -> None:
        if self.refuse:
            raise ValueError(self.refuse)
        self.given.append((query_id, payload))


@asynccontextmanager
async def running(
    *specs: str, answers: Answers | None = None, timeout: float = LIMIT, **limits: int
) -> AsyncIterator[Handlers]:
    handlers = Handlers(
        [parse_event_handler(spec) for spec in specs],
        self_member=lambda: ("web-1", {"role": "web"}),
        answer=answers or Answers(),
        timeout=timeout,
        **limits,
    )
    async with anyio.create_task_group() as nursery:
        await nursery.start(handlers.run)
        yield handlers
        nursery.cancel_scope.cancel()


async def until(condition: Callable[[], bool], what: str) -> None:
    with anyio.move_on_after(LIMIT):
        while not condition():
            await anyio.sleep(0.02)
        return
    raise AssertionError(f"not within {LIMIT} s: {what}")


@pytest.mark.both_backends
async def test_a_query_handler_answers_with_its_stdout_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    answers = Answers()
    script = 'read q; echo "$SERF_SELF_NAME up for $q"; echo "to the log" >&2'
    async with running(f"query:uptime={script}", answers=answers) as handlers:
        caplog.set_level(logging.DEBUG, "swim.handlers")
        handlers.publish(RpcQueryEvent(5, 1, "uptime", b"3d"))
        handlers.publish(RpcQueryEvent(6, 2, "load", b""))  # not this handler's
        await until(lambda: bool(answers.given), "the answer")
    assert answers.given == [(5, b"web-1 up for 3d\n")]
    assert handlers.statistics().runs == 1


async def test_no_output_or_a_failure_sends_no_answer(caplog: pytest.LogCaptureFixture) -> None:
    answers = Answers()
    async with running(
        "query:quiet=true", "query:fails=echo partial; echo broken >&2; exit 3", answers=answers
    ) as handlers:
        handlers.publish(RpcQueryEvent(1, 1, "quiet", b""))
        handlers.publish(RpcQueryEvent(2, 2, "fails", b""))
        await until(lambda: handlers.statistics().failures == 1, "the failure")
        await until(lambda: handlers.statistics().succeeded == 1, "the quiet run")
    assert answers.given == []
    assert "for query:fails exited with status 3; it said: broken" in caplog.text


async def test_a_refused_answer_is_logged_with_the_reason(caplog: pytest.LogCaptureFixture) -> None:
    answers = Answers(refuse="the response is 2000 bytes, over Serf's limit")
    async with running("query=head -c 2000 /dev/zero", answers=answers) as handlers:
        handlers.publish(RpcQueryEvent(1, 1, "big", b""))
        await until(lambda: handlers.statistics().answers_refused == 1, "the refusal")
    assert (
        "for query:big printed 2000 bytes; they were not sent as the answer: the response is "
        "2000 bytes, over Serf's limit"
    ) in caplog.text


async def test_output_is_kept_up_to_its_bound_and_read_to_the_end() -> None:
    answers = Answers()
    async with running("query=head -c 1000000 /dev/zero", answers=answers) as handlers:
        handlers.publish(RpcQueryEvent(1, 1, "flood", b""))
        await until(lambda: bool(answers.given), "the answer")
    assert answers.given == [(1, bytes(MAX_OUTPUT))]


async def test_a_hung_handler_is_killed_with_what_it_started_and_others_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pids = tmp_path / "pids"
    hang = f"sleep 600 & echo $! > {pids}; sleep 600"
    answers = Answers()
    async with running(
        f"user:hang={hang}", "query=echo fine", answers=answers, timeout=0.5
    ) as handlers:
        handlers.publish(RpcUserEvent("hang", b"", False, 1))
        await until(lambda: handlers.statistics().timeouts == 1, "the kill")
        handlers.publish(RpcQueryEvent(2, 2, "after", b""))
        await until(lambda: bool(answers.given), "the next run")
    assert answers.given == [(2, b"fine\n")]
    assert "for user:hang ran past the 0.5 s timeout (-event-handler-timeout): killed" in (
        caplog.text
    )
    background = int(pids.read_text())
    await until(lambda: not alive(background), "the background job killed too")


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, only not reaped yet


async def test_runs_start_in_order_at_most_so_many_at_once(tmp_path: Path) -> None:
    log = tmp_path / "runs"
    script = f'echo "start $SERF_USER_EVENT" >> {log}; sleep 0.2; echo "end" >> {log}'
    async with running(f"user={script}", max_running=2) as handlers:
        for n in range(6):
            handlers.publish(RpcUserEvent(f"e{n}", b"", False, n))
        await until(lambda: handlers.statistics().succeeded == 6, "every run")
    lines = log.read_text().split("\n")[:-1]
    starts = [line for line in lines if line.startswith("start")]
    assert starts[:2] in (["start e0", "start e1"], ["start e1", "start e0"])
    assert sorted(starts) == [f"start e{n}" for n in range(6)]
    running_at_once = 0
    for line in lines:
        running_at_once += 1 if line.startswith("start") else -1
        assert running_at_once <= 2, lines


async def test_runs_past_the_waiting_bound_are_dropped_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running("user=sleep 600", max_running=1, max_waiting=2) as handlers:
        handlers.publish(RpcUserEvent("e", b"", False, 0))
        await until(lambda: handlers.statistics().runs == 1, "the first run")
        for n in range(1, 6):  # the next waits for its turn, two more for room: two dropped
            handlers.publish(RpcUserEvent("e", b"", False, n))
        assert handlers.statistics().dropped == 2
    assert caplog.text.count("runs are waiting for a turn: dropping user:e") == 1


async def test_a_script_that_cannot_start_is_a_failure_not_a_crash(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("swim.handlers.SHELL", "/nonexistent/sh")
    async with running("user=true") as handlers:
        handlers.publish(RpcUserEvent("e", b"", False, 1))
        await until(lambda: handlers.statistics().failures == 1, "the failure")
    assert "event handler 'true' for user:e could not start: " in caplog.text
