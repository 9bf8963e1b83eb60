"""The drain state machine on its own."""

from __future__ import annotations

import pytest

from discovery.lifecycle import Kind, Lifecycle, NotAccepting, Phase


def test_the_five_steps_in_order() -> None:
    life = Lifecycle("api-1")
    request = life.begin("GET /a", Kind.REQUEST, now=1.0)
    job = life.begin("nightly", Kind.TASK, now=2.0)
    assert life.accepting() and life.in_flight == [request, job]
    assert life.drain(now=10.0, timeout=5.0) == 15.0
    assert (life.phase, life.accepting()) == (Phase.DRAINING, False)
    with pytest.raises(NotAccepting) as refused:
        life.begin("GET /b", Kind.REQUEST, now=11.5)
    assert str(refused.value) == (
        "node 'api-1' is draining (the drain began 1.5 s ago) and accepts no new requests; "
        "send 'GET /b' to another instance"
    )
    life.end(request)
    life.end(job)
    assert life.idle
    assert life.leave() == ()
    report = life.stopped(12.0, left=True)
    assert report.clean and str(report) == "drained in 2.0 s"
    assert life.phase is Phase.STOPPED


def test_what_remains_at_the_deadline_is_cut_off_and_reported() -> None:
    life = Lifecycle("api-1")
    clock = 81234.567  # trio's clock starts anywhere: the report never shows its values
    slow = life.begin("GET /slow", Kind.REQUEST, now=clock)
    life.drain(now=clock + 1.0, timeout=5.0)
    assert life.leave() == (slow,)
    life.end(slow)  # cancelled
    report = life.stopped(clock + 6.5, left=False)
    assert not report.clean and report.cut_off == (slow,)
    assert str(report) == (
        "drained in 5.5 s; cut off: request 'GET /slow' (running 1.0 s when the drain began); "
        "the leave did not complete"
    )


def test_steps_out_of_order_are_refused() -> None:
    life = Lifecycle("api-1")
    with pytest.raises(RuntimeError, match="is serving, not draining"):
        life.leave()
    life.drain(0.0, 1.0)
    with pytest.raises(RuntimeError, match="already draining; drain once"):
        life.drain(0.0, 1.0)
    with pytest.raises(RuntimeError, match="is draining, not leaving"):
        life.stopped(1.0, left=True)
