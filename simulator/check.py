"""The invariants every run must keep, checked against its trace and its engines' final state.

- ``agreement``: once every fault is repaired and enough time has passed, every running member
  holds the same view (names and incarnations of the alive members), and it holds exactly the
  running members.
- ``detection``: a crashed member is marked failed by every running member within the profile's
  bound (:func:`~simulator.metrics.detection_bound`), unless a partition, a pause or a slow node
  overlapped that window (then nobody can promise it) or the member came back first.
- ``no-false-failure``: with no loss, no slow node, no pause and no partition, no member that
  runs and answers is ever marked failed.
- ``incarnation``: the incarnation a member shows in a view never decreases, except when the
  observer was restarted (its view starts afresh) or, once the member's process has been
  restarted, when the lower incarnation comes as a (re)join (the new process starts at 1).
- ``left-stays-left``: a member seen leaving never comes back alive with an incarnation at or
  below the one it left with, unless a new process of either was started since.
- ``table``: every engine's member table agrees with its own indexes at the end of the run.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

from simulator.cluster import Cluster
from simulator.faults import Fault, LinkChange, OneWay, Pause, Repair, Slow, Split
from simulator.metrics import ALIVE

_SHOWN = 5
"""How many offending cases a violation's detail lists."""


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken invariant and what broke it."""

    invariant: str
    detail: str

    def __str__(self) -> str:
        return f"{self.invariant}: {self.detail}"


def check(cluster: Cluster, faults: Sequence[Fault], settled: bool = True) -> list[Violation]:
    """Every invariant that applies to a run of ``faults``; ``settled`` says that every fault
    is over and the run went on long enough for views to agree."""
    violations = [*incarnations_never_decrease(cluster), *left_stays_left(cluster)]
    violations += tables_consistent(cluster)
    violations += crashes_detected(cluster, faults)
    if quiet(cluster, faults):
        violations += no_false_failures(cluster)
    if settled:
        violations += views_agree(cluster)
    return violations


def quiet(cluster: Cluster, faults: Sequence[Fault]) -> bool:
    """No loss, no slow node, no pause, no partition anywhere in the run."""
    if cluster.network.default.loss > 0:
        return False
    for fault in faults:
        if isinstance(fault, Split | OneWay | Pause | Slow):
            return False
        if isinstance(fault, LinkChange) and fault.loss:
            return False
    return True


def disturbances(faults: Sequence[Fault], end: float) -> list[tuple[float, float]]:
    """The intervals in which a partition, a pause or a slow node was in effect."""
    repairs = sorted(fault.at for fault in faults if isinstance(fault, Repair))
    spans = []
    for fault in faults:
        if isinstance(fault, Split | OneWay | Slow):
            stop = fault.at + fault.duration if fault.duration is not None else math.inf
            if not isinstance(fault, Slow):
                after = bisect.bisect_left(repairs, fault.at)
                if after < len(repairs):
                    stop = min(stop, repairs[after])
            spans.append((fault.at, min(stop, end)))
        elif isinstance(fault, Pause):
            spans.append((fault.at, fault.at + fault.duration))
    return spans


def crashes_detected(cluster: Cluster, faults: Sequence[Fault]) -> list[Violation]:
    """Every crash that had a calm window of the detection bound was detected by everyone."""
    bound = cluster.detection_bound()
    spans = disturbances(faults, cluster.now)
    late = []
    for crash in cluster.metrics.crash_reports():
        if crash.restarted_at is not None or crash.at + bound > cluster.now:
            continue
        if any(start < crash.at + bound and stop > crash.at for start, stop in spans):
            continue
        if crash.all_failed is None or crash.all_failed > bound:
            late.append(
                f"{crash.node} crashed at {crash.at:.3f}: marked failed by {crash.failed_by} of "
                f"{crash.observers} observers, all after {crash.all_failed}"
            )
    if not late:
        return []
    detail = f"bound {bound:.1f} s; " + "; ".join(late[:_SHOWN])
    return [Violation("detection", detail)]


def no_false_failures(cluster: Cluster) -> list[Violation]:
    """No running, answering member was marked failed."""
    alarms = cluster.metrics.false_failures
    if not alarms:
        return []
    shown = "; ".join(
        f"{a.observer} marked {a.member} (incarnation {a.incarnation}) failed at {a.time:.3f}"
        for a in alarms[:_SHOWN]
    )
    return [Violation("no-false-failure", f"{len(alarms)} false failures: {shown}")]


def _restarts(cluster: Cluster) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for time, name, instance in cluster.metrics.starts:
        if instance > 0:
            out.setdefault(name, []).append(time)
    return out


def _restarted_between(times: list[float], start: float, end: float) -> bool:
    index = bisect.bisect_left(times, start)
    return index < len(times) and times[index] <= end


def incarnations_never_decrease(cluster: Cluster) -> list[Violation]:
    """Per observer and member, incarnations only go up.  A lower one is accepted when the
    observer's process restarted since (its view starts afresh), or when it arrives as a
    (re)join after the member's process was ever restarted: news of the old process may still
    come in after the new one started, and the new one starts over at 1."""
    restarts = _restarts(cluster)
    last: dict[tuple[str, str], tuple[float, int]] = {}
    bad = []
    for obs in cluster.metrics.observations:
        if obs.observer == obs.member:
            continue
        key = (obs.observer, obs.member)
        previous = last.get(key)
        if previous is not None and obs.incarnation < previous[1]:
            fresh_observer = _restarted_between(
                restarts.get(obs.observer, []), previous[0], obs.time
            )
            fresh_member = _restarted_between(restarts.get(obs.member, []), 0.0, obs.time)
            if not fresh_observer and not (fresh_member and obs.kind == "joined"):
                bad.append(
                    f"{obs.observer} saw {obs.member} go from incarnation {previous[1]} "
                    f"to {obs.incarnation} ({obs.kind}) at {obs.time:.3f}"
                )
        last[key] = (obs.time, obs.incarnation)
    if not bad:
        return []
    return [Violation("incarnation", f"{len(bad)} decreases: " + "; ".join(bad[:_SHOWN]))]


def left_stays_left(cluster: Cluster) -> list[Violation]:
    """A member seen leaving is not seen alive again at the incarnation it left with."""
    restarts = _restarts(cluster)
    left: dict[tuple[str, str], tuple[float, int]] = {}
    bad = []
    for obs in cluster.metrics.observations:
        if obs.observer == obs.member:
            continue
        key = (obs.observer, obs.member)
        if obs.kind == "left":
            left[key] = (obs.time, obs.incarnation)
            continue
        gone = left.get(key)
        if gone is None or obs.state != ALIVE:
            continue
        del left[key]
        renewed = any(
            _restarted_between(restarts.get(name, []), gone[0], obs.time)
            for name in (obs.observer, obs.member)
        )
        if obs.incarnation <= gone[1] and not renewed:
            bad.append(
                f"{obs.observer} saw {obs.member} alive at incarnation {obs.incarnation} at "
                f"{obs.time:.3f} after it left at incarnation {gone[1]}"
            )
    if not bad:
        return []
    return [Violation("left-stays-left", f"{len(bad)} returns: " + "; ".join(bad[:_SHOWN]))]


def tables_consistent(cluster: Cluster) -> list[Violation]:
    """Every running engine's member indexes agree with its members."""
    bad = [
        f"{name}: {problem}"
        for name in cluster.running()
        for problem in cluster.engine(name).check()
    ]
    if not bad:
        return []
    return [Violation("table", f"{len(bad)} inconsistencies: " + "; ".join(bad[:_SHOWN]))]


def views_agree(cluster: Cluster) -> list[Violation]:
    """Every running member's engine holds exactly the running members alive, at the same
    incarnations as every other running member."""
    running = cluster.running()
    expected = sorted(running)
    views: dict[str, list[tuple[str, int]]] = {}
    for name in running:
        members = cluster.engine(name).members()
        views[name] = sorted((m.name, m.incarnation) for m in members if m.state.value == ALIVE)
    bad = []
    for name, view in views.items():
        names = [member for member, _ in view]
        if names != expected:
            missing = sorted(set(expected) - set(names))
            extra = sorted(set(names) - set(expected))
            bad.append(f"{name} lacks {missing} and holds {extra} wrongly")
    if not bad and views:
        reference_name, reference = next(iter(views.items()))
        for name, view in views.items():
            if view != reference:
                differ = sorted(set(view) ^ set(reference))
                bad.append(f"{name} and {reference_name} disagree on {differ[:4]}")
    if not bad:
        return []
    return [
        Violation(
            "agreement",
            f"{len(bad)} of {len(running)} running members disagree at "
            f"{cluster.now:.1f}: " + "; ".join(bad[:_SHOWN]),
        )
    ]
