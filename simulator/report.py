"""Results as a short human summary (the command line's default output)."""

from __future__ import annotations

from simulator.metrics import Results


def _delay(value: float | None) -> str:
    return "never" if value is None else f"+{value:.2f} s"


def summary(results: Results, wall_seconds: float) -> str:
    """A few lines: what ran, how fast, and every measurement that has something to say."""
    extra = results.extra
    rate = results.node_seconds / wall_seconds if wall_seconds > 0 else 0.0
    lines = []
    if extra.get("interrupted_at") is not None:
        lines.append(
            f"interrupted at virtual time {extra['interrupted_at']:.1f} s: the results so far"
        )
    lines += [
        f"scenario {extra.get('scenario', '?')}: {results.nodes} nodes, seed {results.seed}, "
        f"{extra.get('profile', '?')} profile, loss {extra.get('loss', 0.0):g}; "
        f"{results.duration:.1f} s simulated in {wall_seconds:.1f} s ({rate:,.0f} node-s/s)",
        f"trace {results.trace_hash}",
    ]
    if extra.get("params"):
        lines.append("parameters: " + ", ".join(f"{k}={v}" for k, v in extra["params"].items()))
    if results.crashes:
        lines.append(f"crashes (detection bound {extra.get('detection_bound', 0.0):.1f} s):")
        for crash in results.crashes:
            back = "" if crash.restarted_at is None else f", back at {crash.restarted_at:.1f} s"
            lines.append(
                f"  {crash.node} at {crash.at:.1f} s: first suspicion "
                f"{_delay(crash.first_suspicion)}, first failed {_delay(crash.first_failed)}, "
                f"failed at all {_delay(crash.all_failed)} "
                f"({crash.failed_by}/{crash.observers}){back}"
            )
    lines.append(
        f"false alarms about running, reachable members: {len(results.false_suspicions)} "
        f"suspicions, {len(results.false_failures)} failures"
    )
    for curve in results.spreads:
        lines.append(
            f"{curve.member} {curve.kind} at {curve.since:.1f} s: known to half "
            f"{_delay(curve.time_to(0.5))}, to all {_delay(curve.time_to(1.0))} "
            f"({len(curve.delays)}/{curve.observers})"
        )
    for repair in results.convergence:
        lines.append(
            f"network repaired at {repair.repaired_at:.1f} s: one view again "
            f"{_delay(repair.agreed_after)}"
        )
    lines += _serf_lines(results)
    traffic = results.traffic
    lines.append(
        f"per node: {traffic.datagrams_per_node_second:.2f} datagrams/s, "
        f"{traffic.bytes_per_node_second:,.0f} B/s (busiest "
        f"{traffic.max_datagrams_per_node_second:.2f}/s, "
        f"{traffic.max_bytes_per_node_second:,.0f} B/s); streams "
        f"{traffic.streams_per_node_second:.3f}/s, "
        f"{traffic.stream_bytes_per_node_second:,.0f} B/s"
    )
    dropped = {k: v for k, v in results.network.items() if v}
    if dropped:
        lines.append("datagrams " + ", ".join(f"{k} {v}" for k, v in dropped.items()))
    lines.append(
        f"health: worst score {results.max_health}, "
        f"{results.unhealthy_node_seconds:.1f} node-s above 0"
    )
    if results.events:
        lines.append("events: " + ", ".join(f"{k} {v}" for k, v in results.events.items()))
    verdict = "agree" if results.agreed else "do not agree"
    lines.append(f"views at the end: {verdict} ({results.running} running)")
    return "\n".join(lines)


def _serf_lines(results: Results) -> list[str]:
    """How Serf user events spread and what queries collected, when there were any."""
    lines = []
    events = [e for e in results.user_events if not e.coalesce]
    if results.user_events:
        whole = sum(e.reach >= 1.0 for e in events)
        halves = sorted(t for e in events if (t := _time_to(e.delays, e.members, 0.5)) is not None)
        duplicates = sum(e.duplicates for e in results.user_events)
        median = f", half the members within +{halves[len(halves) // 2]:.2f} s" if halves else ""
        coalescable = len(results.user_events) - len(events)
        lines.append(
            f"user events: {len(events)} sent, {whole} reached every member running when sent"
            f"{median}; {duplicates} delivered twice; {coalescable} coalescable ones"
        )
    coordinates = results.coordinates
    if coordinates is not None:
        lines.append(
            f"network coordinates: median error {coordinates.median_error * 1e3:.2f} ms "
            f"({coordinates.median_relative_error:.0%}) on a median RTT of "
            f"{coordinates.median_rtt * 1e3:.2f} ms, 90% within "
            f"{coordinates.p90_error * 1e3:.2f} ms ({coordinates.pairs} pairs)"
        )
    queries = results.queries
    if queries:
        answered = sum(q.answers for q in queries)
        asked = sum(q.members for q in queries)
        lines.append(
            f"queries: {len(queries)} asked, {answered} answers from {asked} members asked "
            f"({answered / max(1, asked):.0%})"
        )
    return lines


def _time_to(delays: tuple[float, ...], members: int, fraction: float) -> float | None:
    needed = max(1, int(fraction * members + 0.999999))
    return delays[needed - 1] if len(delays) >= needed else None
