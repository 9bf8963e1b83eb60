"""CPU time the engine spends per node per protocol period, as the cluster grows.

A few observed engines each hold a full view of ``n`` members; the other members are stand-ins
that answer at once (their own work is not counted).  Every protocol period each observed engine
probes (and is acked), answers one ping, and runs its five gossip rounds: that is the quiet
steady state, which must stay flat in ``n``.  A second figure adds one membership update per
period, which the engine re-gossips ``retransmit_mult * ceil(log10(n + 1))`` times, so it grows
with log n by design.  Push-pull is O(n) by nature and is reported per member entry merged.
Ratios are to n = 100, measured in the same run.

With ``--before DIR``, the script instead measures this checkout's code and checkout DIR's code
in child processes, each with its checkout first on ``PYTHONPATH``, ``--rounds`` times (2 by
default) in alternating order (before, after, then after, before), and prints each figure
after / before: the lowest of the rounds on each side, the ratio of those, and the ratio in each
round, which shows the noise.  Both children run this copy of the script: DIR's own copy cannot
run at any commit from 0e8f9a8 (the engine's admission rules) to the fix of its setup, and the
script uses only the engine's public methods and the wire codec, which DIR must have as well.

    python benchmarks/engine_scaling.py [--periods 60] [--sizes 10,100,1000,5000]
                                        [--before DIR [--rounds 2]]
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import sys
import time
from pathlib import Path

from swim import wire
from swim.config import Config
from swim.engine import Engine

# Run as a file, this script's own directory comes first on sys.path; its sibling modules are
# imported as ``benchmarks.*`` from the repository root, put last so ``swim`` is found as before.
sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks.baseline import (
    HERE,
    BaselineError,
    check_checkout,
    print_sides,
    run_copy,
)

SCRIPT = "benchmarks/engine_scaling.py"
FIGURES = ("quiet, us/node/period", "1 update, us/node/period", "push-pull, us/entry")
DIGITS = (1, 1, 2)
"""Decimals the table prints for each figure."""

CONFIG = Config.lan(
    compression=False, push_pull_interval=0.0, reconnect_interval=0.0, disable_tcp_pings=True
)
PLAIN = wire.WireOptions()
VSN = CONFIG.vsn


def peer_addr(i: int) -> bytes:
    return bytes((10, (i >> 16) & 255, (i >> 8) & 255, i & 255))


def alive(i: int, incarnation: int = 1) -> bytes:
    message = wire.Alive(incarnation, f"node-{i}", peer_addr(i), 7946, VSN, b"\xff\x80")
    return wire.encode_packet([wire.encode(message)], PLAIN)


SETTLED = 2_000.0
"""Virtual time by which every observed engine has sent its join news and settled."""


def observed_engine(n: int, seed: int) -> Engine:
    engine = Engine("observer", ("10.255.0.1", 7946), CONFIG, random.Random(seed))
    for i in range(n - 1):  # each member introduces itself, as a stranger may
        engine.receive_datagram(alive(i), (socket.inet_ntoa(peer_addr(i)), 7946), 0.0)
    engine.take_datagrams()
    engine.take_events()
    drain(engine, SETTLED)  # the join news goes out before we start measuring
    if engine.queued_broadcasts:
        raise RuntimeError(f"n={n}: join news still queued at t={SETTLED}")
    return engine


def drain(engine: Engine, until: float) -> None:
    """Run ``engine`` to ``until`` with every peer acking at once."""
    while (deadline := engine.next_deadline()) is not None and deadline <= until:
        engine.tick(deadline)
        answer_pings(engine, deadline)


def answer_pings(engine: Engine, now: float) -> None:
    for source, data in engine.take_datagrams():
        for message in wire.decode_packet(data, PLAIN):
            if isinstance(message, wire.Ping):
                ack = wire.encode_packet([wire.encode(wire.Ack(seq_no=message.seq_no))], PLAIN)
                engine.receive_datagram(ack, source, now)
    engine.take_stream_requests()
    engine.take_events()


def steady_state_cost(n: int, engines: int, periods: int, updates: bool) -> float:
    """Seconds of CPU per node per protocol period for probing and gossip."""
    observed = [observed_engine(n, seed) for seed in range(engines)]
    rng = random.Random(n)
    ping = wire.encode_packet([wire.encode(wire.Ping(seq_no=1, node="observer"))], PLAIN)
    incarnation = 2
    cpu = 0.0
    for period in range(periods):
        now = SETTLED + period * CONFIG.probe_interval
        incarnation += 1
        update = alive(rng.randrange(n - 1), incarnation)
        started = time.process_time()
        for engine in observed:
            engine.receive_datagram(ping, ("10.254.0.2", 7946), now)
            if updates:
                engine.receive_datagram(update, ("10.254.0.3", 7946), now)
            drain(engine, now + CONFIG.probe_interval)
        cpu += time.process_time() - started
    return cpu / (engines * periods)


def push_pull_cost(n: int, rounds: int) -> tuple[float, float]:
    """Seconds per member entry to answer and merge a peer's full state, and the total."""
    engine = observed_engine(n, 99)
    states = [
        wire.PushNodeState(
            f"node-{i}", peer_addr(i), 7946, 1, wire.NodeState.ALIVE, VSN, b"\xff\x80"
        )
        for i in range(n - 1)
    ]
    remote = wire.PushPull(states, join=False)
    started = time.process_time()
    for _ in range(rounds):
        engine.handle_stream(remote, ("10.254.0.4", 7946), SETTLED)
        drain(engine, SETTLED)  # a large state is merged a slice per tick
    total = time.process_time() - started
    engine.take_datagrams()
    return total / (rounds * n), total


def parse_table(printed: str) -> dict[int, tuple[float, float, float]]:
    """The table this script prints, as n -> (quiet, 1 update, push-pull per entry), in us."""
    rows: dict[int, tuple[float, float, float]] = {}
    for line in printed.splitlines():
        fields = line.split()
        if len(fields) == 6 and fields[0].isdigit():
            n, quiet, _, busy, _, merge = fields
            rows[int(n)] = (float(quiet), float(busy), float(merge))
    return rows


def compare(args: argparse.Namespace, sizes: list[int]) -> None:
    """This checkout's code against ``args.before``'s, both run by this copy of the script as
    child processes, in alternating order."""
    arguments = ["--periods", str(args.periods), "--engines", str(args.engines)]
    arguments += ["--sizes", args.sizes]
    checkouts = {"after": HERE, "before": args.before.resolve()}
    load_before = os.getloadavg()
    got: dict[str, list[dict[int, tuple[float, float, float]]]] = {"after": [], "before": []}
    for round_ in range(args.rounds):
        for side in ("before", "after") if round_ % 2 == 0 else ("after", "before"):
            printed = run_copy(checkouts[side], SCRIPT, arguments, script_from=HERE)
            rows = parse_table(printed)
            if not set(sizes) <= rows.keys():
                raise BaselineError(f"{side}: no figures for every size in:\n{printed}")
            got[side].append(rows)
        print(f"round {round_ + 1} of {args.rounds} done", file=sys.stderr)
    load_after = os.getloadavg()
    print_sides(checkouts, load_before, load_after)
    print(f"both measured by {HERE / SCRIPT}")
    print(
        f"CPU microseconds, after / before (ratio); each side the lowest of {args.rounds} "
        "rounds, run alternately"
    )
    print("| n | " + " | ".join(FIGURES) + " |")
    print("|---" * (len(FIGURES) + 1) + "|")
    for n in sizes:
        cells = []
        for k in range(len(FIGURES)):
            after = min(rows[n][k] for rows in got["after"])
            before = min(rows[n][k] for rows in got["before"])
            digits = DIGITS[k]
            cells.append(f"{after:.{digits}f} / {before:.{digits}f} ({after / before:.2f}x)")
        print(f"| {n:,} | " + " | ".join(cells) + " |")
    print("\nafter / before in each round")
    print("| n | " + " | ".join(FIGURES) + " |")
    print("|---" * (len(FIGURES) + 1) + "|")
    for n in sizes:
        cells = [
            ", ".join(
                f"{after[n][k] / before[n][k]:.2f}x"
                for after, before in zip(got["after"], got["before"], strict=True)
            )
            for k in range(len(FIGURES))
        ]
        print(f"| {n:,} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--periods", type=int, default=60)
    parser.add_argument("--engines", type=int, default=5)
    parser.add_argument("--sizes", default="10,100,1000,5000")
    parser.add_argument(
        "--before",
        type=Path,
        default=None,
        metavar="DIR",
        help="compare with the code of the shoal checkout DIR, measured the same way",
    )
    parser.add_argument("--rounds", type=int, default=2, help="with --before: runs of each copy")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    if args.before is not None:
        problem = check_checkout(args.before, "swim/engine.py")
        if problem is not None:
            parser.error(f"--before: {problem}")
        if args.rounds < 1:
            parser.error("--rounds must be at least 1")
        try:
            compare(args, sizes)
        except BaselineError as exc:
            sys.exit(f"engine_scaling: {exc}")
        return
    # untimed first: whichever size is measured first otherwise pays for a cold interpreter
    steady_state_cost(sizes[0], args.engines, args.periods, False)
    quiet = {n: steady_state_cost(n, args.engines, args.periods, False) for n in sizes}
    busy = {n: steady_state_cost(n, args.engines, args.periods, True) for n in sizes}
    merge = {n: push_pull_cost(n, rounds=5) for n in sizes}
    print("CPU microseconds per node per protocol period (probing + gossip)")
    print(f"{'n':>6}{'quiet':>10}{'vs 100':>8}{'1 update':>10}{'vs 100':>8}{'push-pull/entry':>17}")
    for n in sizes:
        q, b = quiet[n], busy[n]
        q_ratio, b_ratio = q / quiet.get(100, q), b / busy.get(100, b)
        print(
            f"{n:>6}{q * 1e6:>10.1f}{q_ratio:>7.2f}x{b * 1e6:>10.1f}{b_ratio:>7.2f}x"
            f"{merge[n][0] * 1e6:>17.2f}"
        )


if __name__ == "__main__":
    main()
