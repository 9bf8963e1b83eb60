"""Simulated node-seconds per wall second for the steady scenario, and peak memory.

Each cluster size runs in its own process (so that its peak RSS is its own), on the LAN
profile, started converged.  The figures per size:

- quiet: the first 25 virtual seconds, in which every node probes but no push-pull is due
  yet (each engine's first one comes 30 to 60 s after it starts);
- push-pull: the wall time of one anti-entropy exchange (both sides send their full member
  list, decompress and merge the other's: O(n)), measured over joins, which do the same.
  "first" encodes and compresses both sides; "kept" is the same pairs again, whose encoded
  sides are kept because their views have not changed, as in a steady cluster;
- steady: the long-run rate that quiet and a kept exchange imply, each node starting one
  exchange per ``push_pull_interval * (ceil(log2(n / 32)) + 1)`` seconds, as the engine
  schedules it.

With ``--full`` sizes, the same cluster then runs on to 60 s (every node has made its first
push-pull) and one whole push-pull period after that is timed as it runs: the steady rate
measured rather than derived.  ``--engine-share`` times the engine's public methods over four
more quiet seconds.  Peak memory is taken before the measured period.  Ratios are to the
first size, measured in the same run.

Last, unless ``--no-sweep``, ``benchmarks/sweep.py`` prints the throughput of a sweep on 1 and 2
workers, local processes and a local Dask cluster, as ratios against 1 worker.

With ``--before DIR``, every size is also measured by checkout DIR's own copy of this script
(its ``--one`` child, with DIR first on ``PYTHONPATH``), ``--rounds`` times (2 by default); this
copy's child runs the same way, with this checkout first, and the two alternate which goes first
from one size and round to the next.  Each figure is printed after / before: on each side the
best of the rounds (the lowest time, the highest rate; for the engine share the mean, for the
peak the highest), and the ratio of those; then the ratio in each round, which shows the noise.

    python benchmarks/simulator.py [--sizes 100,1000,5000] [--full 100,1000] [--engine-share]
                                   [--no-sweep] [--before DIR [--rounds 2]]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# This script is named like the package it measures: run as a file, its own directory comes
# first on sys.path and ``import simulator`` would find the script.  Keep that directory off.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]

from simulator.cluster import Cluster  # noqa: E402
from swim.engine import Engine  # noqa: E402
from swim.members import Address  # noqa: E402
from swim.pushpull import push_pull_period  # noqa: E402

# Its siblings come from the repository root, put last, once the code it measures is imported.
sys.path.append(str(_HERE.parent))

from benchmarks.baseline import (  # noqa: E402
    HERE,
    BaselineError,
    check_checkout,
    print_sides,
    run_copy,
)

SCRIPT = "benchmarks/simulator.py"

QUIET = 25.0
"""Virtual seconds before any engine's first push-pull (they come 30 to 60 s in)."""
STEADY_FROM = 60.0
"""Every engine has made its first push-pull by then; the next comes one period later."""
EXCHANGES = 10
"""Push-pull exchanges timed per size."""
ENGINE_METHODS = (
    "tick",
    "receive_datagram",
    "handle_stream",
    "stream_finished",
    "take_datagrams",
    "take_stream_requests",
    "take_events",
    "next_deadline",
)


def time_engine_calls() -> Callable[[], float]:
    """Wrap the engine's public methods with timers; returns a reader of the total."""
    spent = [0.0]
    clock = time.perf_counter

    def timed(method: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = clock()
            try:
                return method(*args, **kwargs)
            finally:
                spent[0] += clock() - start

        return wrapper

    for name in ENGINE_METHODS:
        setattr(Engine, name, timed(getattr(Engine, name)))
    return lambda: spent[0]


def join_through(peer: Address) -> Callable[[Engine, float], object]:
    """A command that makes an engine join (one push-pull exchange) through ``peer``."""
    return lambda engine, now: engine.join([peer], now)


def time_exchanges(cluster: Cluster, quiet_rate: float) -> float:
    """Wall milliseconds per push-pull exchange, over ``EXCHANGES`` joins between distinct
    pairs (the quiet second they run in is subtracted)."""
    names = cluster.names()
    started = time.perf_counter()
    for i in range(EXCHANGES):
        cluster.command(names[i], join_through(cluster.nodes[names[-1 - i]].address))
    cluster.run_for(1.0)  # the exchanges finish in milliseconds; the rest is 1 s of quiet
    spent = time.perf_counter() - started - len(names) * 1.0 / quiet_rate
    return 1000.0 * spent / EXCHANGES


def measure(n: int, full: bool, engine_share: bool) -> dict[str, float]:
    """All figures for one size (run in a child process)."""
    started = time.perf_counter()
    cluster = Cluster(n, seed=1)
    figures: dict[str, float] = {"n": n, "warm_start": time.perf_counter() - started}

    started = time.perf_counter()
    cluster.run_until(QUIET)
    figures["quiet_rate"] = n * QUIET / (time.perf_counter() - started)

    # The first exchange encodes both sides; the same pairs again find them kept, as every
    # exchange in a cluster whose view has not changed since a node's last one does.
    figures["first_exchange_ms"] = time_exchanges(cluster, figures["quiet_rate"])
    figures["exchange_ms"] = time_exchanges(cluster, figures["quiet_rate"])
    period = push_pull_period(n, cluster.config.push_pull_interval)
    per_node_second = 1.0 / figures["quiet_rate"] + figures["exchange_ms"] / 1000.0 / period
    figures["steady_rate"] = 1.0 / per_node_second

    if engine_share:  # still quiet: the first push-pulls are due from 30 s on
        spent_in_engine = time_engine_calls()
        started = time.perf_counter()
        cluster.run_until(cluster.now + 4.0)
        figures["engine_share"] = spent_in_engine() / (time.perf_counter() - started)
    figures["peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if full:  # one whole push-pull period after every node's first exchange, as it runs
        cluster.run_until(STEADY_FROM)
        started = time.perf_counter()
        cluster.run_until(STEADY_FROM + period)
        figures["measured_rate"] = n * period / (time.perf_counter() - started)
    return figures


COMPARED = (
    # figure, heading, format, how its rounds combine, and whether the per-round table shows it
    ("warm_start", "warm start, s", ".1f", min, False),
    ("quiet_rate", "quiet, node-s/s", ",.0f", max, True),
    ("first_exchange_ms", "push-pull first, ms", ".1f", min, True),
    ("exchange_ms", "push-pull kept, ms", ".1f", min, True),
    ("steady_rate", "steady, node-s/s", ",.0f", max, True),
    ("measured_rate", "steady measured, node-s/s", ",.0f", max, True),
    ("engine_share", "engine share", ".0%", statistics.fmean, False),
    ("peak_gib", "peak, GiB", ".2f", max, False),
)


def child_arguments(size: int, args: argparse.Namespace) -> list[str]:
    return ["--one", str(size), "--full", args.full, *(["--engine-share"] * args.engine_share)]


def compare(args: argparse.Namespace, sizes: list[int]) -> None:
    """Every size measured by this checkout's copy and by ``args.before``'s, alternately."""
    checkouts = {"after": HERE, "before": args.before.resolve()}
    load_before = os.getloadavg()
    got: dict[str, dict[int, list[dict[str, float]]]] = {
        side: {size: [] for size in sizes} for side in checkouts
    }
    for round_ in range(args.rounds):
        for j, size in enumerate(sizes):
            sides = ("before", "after") if (round_ + j) % 2 == 0 else ("after", "before")
            for side in sides:
                printed = run_copy(checkouts[side], SCRIPT, child_arguments(size, args))
                got[side][size].append(json.loads(printed))
            print(f"round {round_ + 1} of {args.rounds}: n={size} done", file=sys.stderr)
    load_after = os.getloadavg()
    print_sides(checkouts, load_before, load_after)
    print(
        f"after / before (ratio); each side the best of {args.rounds} rounds (lowest time, "
        "highest rate; engine share: the mean; peak: the highest), run alternately; a rate"
        " below 1.00x or a time above it is slower"
    )
    print("| n | " + " | ".join(heading for _, heading, _, _, _ in COMPARED) + " |")
    print("|---" * (len(COMPARED) + 1) + "|")
    for size in sizes:
        cells = []
        for key, _, spec, best, _ in COMPARED:
            values = {
                side: [row[key] for row in got[side][size] if key in row] for side in checkouts
            }
            if not values["after"] or not values["before"]:
                cells.append("-")
                continue
            after, before = best(values["after"]), best(values["before"])
            cells.append(f"{after:{spec}} / {before:{spec}} ({after / before:.2f}x)")
        print(f"| {size:,} | " + " | ".join(cells) + " |")
    per_round = [(key, heading) for key, heading, _, _, shown in COMPARED if shown]
    print("\nafter / before in each round")
    print("| n | " + " | ".join(heading for _, heading in per_round) + " |")
    print("|---" * (len(per_round) + 1) + "|")
    for size in sizes:
        pairs = list(zip(got["after"][size], got["before"][size], strict=True))
        cells = [
            ", ".join(f"{a[key] / b[key]:.2f}x" for a, b in pairs if key in a and key in b) or "-"
            for key, _ in per_round
        ]
        print(f"| {size:,} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--full", default="100,1000", help="sizes to run a whole push-pull period")
    parser.add_argument("--engine-share", action="store_true")
    parser.add_argument(
        "--before",
        type=Path,
        default=None,
        metavar="DIR",
        help="compare with the copy of this script in the shoal checkout DIR",
    )
    parser.add_argument("--rounds", type=int, default=2, help="with --before: runs of each copy")
    parser.add_argument("--no-sweep", action="store_true", help="skip benchmarks/sweep.py")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    full = {int(size) for size in args.full.split(",") if size}
    if args.one is not None:
        print(json.dumps(measure(args.one, args.one in full, args.engine_share)))
        return
    if args.before is not None:
        problem = check_checkout(args.before, SCRIPT)
        if problem is not None:
            parser.error(f"--before: {problem}")
        if args.rounds < 1:
            parser.error("--rounds must be at least 1")
        try:
            compare(args, [int(size) for size in args.sizes.split(",")])
        except BaselineError as exc:
            sys.exit(f"simulator: {exc}")
        return
    rows = []
    for size in (int(size) for size in args.sizes.split(",")):
        command = [sys.executable, __file__, "--one", str(size), "--full", args.full]
        if args.engine_share:
            command.append("--engine-share")
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout))
        print(f"n={size} done", file=sys.stderr)
    base = rows[0]
    print(
        "| n | warm start, s | quiet, node-s/s | push-pull first / kept, ms "
        "| steady, node-s/s | vs first | steady measured, node-s/s | engine share | peak, GiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        measured = row.get("measured_rate")
        share = row.get("engine_share")
        print(
            f"| {row['n']:,} | {row['warm_start']:.1f} | {row['quiet_rate']:,.0f} "
            f"| {row['first_exchange_ms']:.1f} / {row['exchange_ms']:.1f} "
            f"| {row['steady_rate']:,.0f} "
            f"| {row['steady_rate'] / base['steady_rate']:.2f}x "
            f"| {'-' if measured is None else f'{measured:,.0f}'} "
            f"| {'-' if share is None else f'{share:.0%}'} | {row['peak_gib']:.2f} |"
        )
    if not args.no_sweep:
        print(flush=True)
        subprocess.run([sys.executable, str(_HERE / "sweep.py")], check=True)


if __name__ == "__main__":
    main()
