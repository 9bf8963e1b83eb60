"""The drain state machine on its own: no sockets, no trio, every time passed by hand."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from discovery.lifecycle import (
    Action,
    Announce,
    CutOff,
    DrainReport,
    Finished,
    Kind,
    Leave,
    Lifecycle,
    NotAccepting,
    Phase,
    Work,
)


def report_of(actions: list[Action]) -> DrainReport:
    (finished,) = actions
    assert isinstance(finished, Finished)
    return finished.report


def test_an_idle_drain_announces_then_leaves() -> None:
    life = Lifecycle("api-1")
    life.drain(now=10.0, timeout=5.0)
    assert life.take_actions() == [Announce(by=15.0)]
    assert (life.phase, life.accepting(), life.next_deadline()) == (Phase.DRAINING, False, 15.0)
    life.announced(10.2)
    assert life.take_actions() == [Leave()]
    assert (life.phase, life.next_deadline()) == (Phase.LEAVING, None)
    life.left(10.5, ok=True)
    report = report_of(life.take_actions())
    assert report.clean and str(report) == "drained in 0.5 s"
    assert life.phase is Phase.STOPPED


def test_the_drain_waits_for_every_request_and_task_and_refuses_new_ones() -> None:
    life = Lifecycle("api-1")
    request = life.begin("GET /a", Kind.REQUEST, now=1.0)
    job = life.begin("nightly", Kind.TASK, now=2.0)
    assert life.accepting() and life.in_flight == [request, job]
    life.drain(now=10.0, timeout=5.0)
    life.take_actions()
    with pytest.raises(NotAccepting) as refused:
        life.begin("GET /b", Kind.REQUEST, now=11.5)
    assert str(refused.value) == (
        "node 'api-1' is draining (the drain began 1.5 s ago) and accepts no new requests; "
        "send 'GET /b' to another instance"
    )
    life.end(request, 11.0)
    life.announced(11.2)
    life.tick(11.5)  # an early tick changes nothing
    assert life.take_actions() == [] and life.in_flight == [job]
    life.end(job, 12.0)
    assert life.take_actions() == [Leave()]
    life.left(12.5, ok=True)
    assert str(report_of(life.take_actions())) == "drained in 2.5 s"


def test_what_remains_at_the_deadline_is_cut_off_and_reported() -> None:
    life = Lifecycle("api-1", cancel_grace=1.0)
    clock = 81234.567  # trio's clock starts anywhere: the report never shows its values
    slow = life.begin("GET /slow", Kind.REQUEST, now=clock)
    quick = life.begin("GET /quick", Kind.REQUEST, now=clock + 0.5)
    life.drain(now=clock + 1.0, timeout=5.0)
    life.announced(clock + 1.1)
    life.end(quick, clock + 2.0)
    assert life.take_actions() == [Announce(by=clock + 6.0)]
    life.tick(clock + 6.0)
    assert life.take_actions() == [CutOff((slow,))]
    assert (life.phase, life.next_deadline()) == (Phase.DRAINING, clock + 7.0)
    life.end(slow, clock + 6.2)  # it obeyed the cancellation
    assert life.take_actions() == [Leave()]
    life.left(clock + 6.5, ok=False)
    report = report_of(life.take_actions())
    assert not report.clean and report.cut_off == (slow,)
    assert str(report) == (
        "drained in 5.5 s; cut off: request 'GET /slow' (running 1.0 s when the drain began); "
        "the leave did not complete"
    )


@pytest.mark.parametrize("grace", [0.0, 1.0])
def test_work_that_ignores_its_cancellation_holds_the_leave_for_the_grace_only(
    grace: float,
) -> None:
    life = Lifecycle("api-1", cancel_grace=grace)
    stuck = life.begin("GET /stuck", Kind.REQUEST, now=0.0)
    life.drain(now=0.0, timeout=2.0)
    life.announced(0.0)
    life.tick(2.0)
    actions = life.take_actions()
    assert actions[:2] == [Announce(by=2.0), CutOff((stuck,))]
    if grace:
        assert actions[2:] == [] and life.next_deadline() == 2.0 + grace
        life.tick(2.0 + grace)
        actions = life.take_actions()
    assert actions[-1:] == [Leave()]
    life.left(3.1, ok=True)
    assert report_of(life.take_actions()).cut_off == (stuck,)


def test_work_ending_at_the_deadline_counts_as_finished_in_time() -> None:
    life = Lifecycle("api-1")
    request = life.begin("GET /a", Kind.REQUEST, now=0.0)
    life.drain(now=1.0, timeout=4.0)
    life.announced(1.0)
    life.end(request, 5.0)  # the driver had not ticked yet
    assert life.take_actions()[-1] == Leave()
    life.left(5.0, ok=True)
    assert report_of(life.take_actions()).clean


def test_an_announcement_that_does_not_go_out_does_not_hold_the_drain() -> None:
    life = Lifecycle("api-1")
    life.drain(now=0.0, timeout=2.0)
    life.tick(2.0)
    assert life.take_actions() == [Announce(by=2.0), Leave()]
    life.announced(2.1)  # the driver gave up on it
    assert life.take_actions() == []


def test_steps_out_of_order_are_refused() -> None:
    life = Lifecycle("api-1")
    with pytest.raises(RuntimeError, match="is serving, not announcing"):
        life.announced(0.0)
    with pytest.raises(RuntimeError, match="is serving, not leaving"):
        life.left(0.0, ok=True)
    with pytest.raises(ValueError, match="timeout=-1 must be 0 or more"):
        life.drain(0.0, -1)
    life.drain(0.0, 1.0)
    with pytest.raises(RuntimeError, match="already draining; drain once"):
        life.drain(0.0, 1.0)
    with pytest.raises(RuntimeError, match="is draining, not leaving"):
        life.left(1.0, ok=True)
    with pytest.raises(ValueError, match="cancel_grace=-1 must be 0 or more"):
        Lifecycle("api-1", cancel_grace=-1)


times = st.integers(0, 40).map(lambda half_seconds: half_seconds / 2)


def at(time: float | None) -> float:
    return math.inf if time is None else time


@given(
    ends=st.lists(st.none() | times, max_size=5),
    announced_at=st.none() | times,
    timeout=times,
    grace=times,
)
def test_a_drain_leaves_once_idle_and_announced_or_cuts_off_at_its_deadline(
    ends: list[float | None], announced_at: float | None, timeout: float, grace: float
) -> None:
    """A driver delivers each input at its time (None: never) and ticks at each deadline.
    The drain leaves exactly once: as soon as the announcement is out and nothing runs, or
    else at its deadline, after cutting off what still runs and waiting up to ``grace`` for
    it to stop; the report names exactly what was cut off."""
    life = Lifecycle("api-1", cancel_grace=grace)
    work = [life.begin(f"GET /{index}", Kind.REQUEST, 0.0) for index in range(len(ends))]
    life.drain(0.0, timeout)
    inputs: list[tuple[float, Work | None]] = [(at(announced_at), None)]
    inputs += [(at(end), each) for end, each in zip(ends, work, strict=True)]
    inputs.sort(key=lambda event: event[0])

    def deliver(which: Work | None, now: float) -> None:
        if which is None:
            life.announced(now)
        else:
            life.end(which, now)

    now, cut_off, left_at = 0.0, tuple[Work, ...](), None
    while left_at is None:
        for action in life.take_actions():
            if isinstance(action, CutOff):
                cut_off = action.work
            elif isinstance(action, Leave):
                left_at = now
        deadline = life.next_deadline()
        if deadline is not None and deadline < inputs[0][0]:  # inputs at a deadline go first
            now = deadline
            life.tick(now)
        elif left_at is None:
            now, which = inputs.pop(0)
            deliver(which, now)
    for when, which in inputs:  # what comes after the leave changes nothing
        deliver(which, when)
    assert life.take_actions() == []

    settled = max([at(announced_at), *map(at, ends)])
    still_running = tuple(w for e, w in zip(ends, work, strict=True) if at(e) > timeout)
    if settled <= timeout:
        assert (left_at, cut_off) == (settled, ())
    else:
        assert cut_off == still_running
        stopped = max([timeout, *(at(e) for e in ends if at(e) > timeout)])
        assert left_at == min(timeout + grace, stopped)
    life.left(left_at + 1.0, ok=True)
    report = report_of(life.take_actions())
    assert report.cut_off == (() if settled <= timeout else still_running)
    assert report.finished - report.started == left_at + 1.0
