"""Sweep throughput with 1 and 2 workers: local processes and a local Dask cluster.

One grid (by default 12 runs of the steady scenario, 100 nodes, 120 virtual seconds, seeds 1
to 12) is played by ``Sweep.run`` in this process, then on 1 and 2 local worker processes,
then on a ``distributed.LocalCluster`` of 1 and 2 worker processes; each is timed whole, as a
user waits for it (the workers' start and, for Dask, the cluster's start and stop included).
Speedup is runs per wall second against 1 worker of the same kind, measured in the same run
(the best of the rounds, and each round's, which shows the noise of a shared machine); every
run's trace hash must be the same on every kind of worker.  "Cores busy" is the CPU time of
this process and its workers per wall second: 2 workers can be twice as fast only where they
get two cores, which a machine busy with other jobs may not give them (with Linux's autogroup
the CPU is shared between sessions, not between processes).

    python benchmarks/sweep.py [--runs 12] [--nodes 100] [--duration 120] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

# Run as a file, its own directory comes first on sys.path, where benchmarks/simulator.py would
# shadow the simulator package: keep that directory off.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]

from simulator.sweep import Sweep  # noqa: E402

SETUPS = (
    # label, workers, Dask address (None: local processes; workers 0: this process)
    ("this process", 0, None),
    ("local processes", 1, None),
    ("local processes", 2, None),
    ("Dask LocalCluster", 1, "local"),
    ("Dask LocalCluster", 2, "local"),
)


def cpu_seconds() -> float:
    """CPU time of this process and of every child it has waited for (the workers, once the
    sweep has ended them; Dask's through their nannies)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(grid: Sweep, workers: int, dask: str | None) -> tuple[float, float, list[str]]:
    """Wall seconds for the whole sweep, the cores it kept busy on average (CPU seconds per
    wall second), and its trace hashes in grid order."""
    started, cpu = time.perf_counter(), cpu_seconds()
    table = grid.run(workers=workers, dask=dask, show_progress=False)
    spent = time.perf_counter() - started
    if table.failed or len(table) != table.total:
        sys.exit(f"sweep: {len(table.failed)} runs failed: {table.failed[0]['error']}")
    return spent, (cpu_seconds() - cpu) / spent, [row["trace_hash"] for row in table]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=12, help="seeds of the one grid point")
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--duration", type=float, default=120.0, help="virtual seconds")
    parser.add_argument("--rounds", type=int, default=2, help="times each setup runs")
    args = parser.parse_args()
    grid = Sweep(scenarios="steady", nodes=args.nodes, durations=args.duration, seeds=args.runs)
    load_before = os.getloadavg()
    setups = [(label, workers) for label, workers, _ in SETUPS]
    times: dict[tuple[str, int], list[float]] = {setup: [] for setup in setups}
    busy: dict[tuple[str, int], list[float]] = {setup: [] for setup in setups}
    hashes: set[tuple[str, ...]] = set()
    for round_ in range(args.rounds):
        # every other round the other way round, so that a drift in the load spreads evenly
        for label, workers, dask in SETUPS if round_ % 2 == 0 else reversed(SETUPS):
            spent, cores, found = measure(grid, workers, dask)
            hashes.add(tuple(found))
            times[label, workers].append(spent)
            busy[label, workers].append(cores)
            print(
                f"round {round_ + 1}: {label}, {workers} worker(s): {spent:.1f} s, "
                f"{cores:.2f} cores busy",
                file=sys.stderr,
            )
    load_after = os.getloadavg()
    print(
        f"{args.runs} runs of steady, {args.nodes} nodes, {args.duration:g} virtual s each; "
        f"best of {args.rounds} rounds; load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after; {os.cpu_count()} cores"
    )
    print(f"trace hashes: {'the same' if len(hashes) == 1 else 'DIFFERENT'} on every worker")
    print(
        "| where | workers | wall, s | runs per minute | vs 1 worker | vs 1 worker, each round "
        "| cores busy, each round |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, workers in setups:
        spent = min(times[label, workers])
        shown = "0 (in process)" if workers == 0 else str(workers)
        ratio = each = "-"
        if workers:
            ones = times[label, 1]
            ratio = f"{min(ones) / spent:.2f}x"
            pairs = zip(ones, times[label, workers], strict=True)
            each = ", ".join(f"{one / mine:.2f}x" for one, mine in pairs)
        used = ", ".join(f"{value:.2f}" for value in busy[label, workers])
        print(
            f"| {label} | {shown} | {spent:.1f} | {60 * args.runs / spent:.1f} | {ratio} "
            f"| {each} | {used} |"
        )


if __name__ == "__main__":
    main()
