"""False alarms, detection, spread and start-up under packet loss, in the simulator.

The runs of ``benchmarks/loss.py`` (real agents under nftables loss), in virtual time and over
several seeds, so that each protocol change can be measured against the commit before it in
one run (``--before DIR``: the same figures from another checkout's simulator):

- steady runs under uniform loss (20 members on the local profile, 50 on LAN; 20% loss,
  300 s), loss at one member's ingress, and one member's ingress cut on and off every 5 s:
  false suspicions and false failures of live, reachable members, per node-hour, and failed
  probes of them ("suspect X has failed" in memberlist's log), per node-hour;
- a member crashing 10 s into a lossy run: seconds until the first and the last survivor
  declare it failed;
- a tag change in a five-member cluster at 0% and 10% loss, 100 runs each: how many runs
  took more than three probe intervals to reach every member;
- start-up: members starting 0.1 s apart, each joining the first: seconds from the last
  start until every member lists every other alive or suspect (Serf's "alive").

    python benchmarks/simulated_loss.py [--seeds 4] [--before DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Named like nothing in the tree, but run as a file its own directory comes first on sys.path,
# where benchmarks/simulator.py would shadow the simulator package: keep that directory off.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]

from simulator.cluster import Cluster  # noqa: E402
from simulator.faults import ScheduleError  # noqa: E402
from simulator.network import PROFILE_LINKS  # noqa: E402
from simulator.scenarios import run  # noqa: E402

HOUR = 3600.0
Figures = dict[str, float | None]


def steady(
    scenario: str, nodes: int, profile: str, loss: float, seconds: float, *, seeds: int
) -> Figures:
    """False alarms per node-hour over ``seeds`` runs of ``scenario``."""
    suspicions = failures = failed_probes = 0
    node_hours = 0.0
    for seed in range(1, seeds + 1):
        cluster, results = run(
            scenario, nodes=nodes, seed=seed, duration=seconds, loss=loss, profile=profile
        )
        suspicions += len(results.false_suspicions)
        failures += len(results.false_failures)
        for name in cluster.running():
            stats = cluster.engine(name).statistics()
            failed_probes += stats.probes - stats.acks
        node_hours += results.node_seconds / HOUR
    return {
        "false suspicions per node-hour": suspicions / node_hours,
        "false failures per node-hour": failures / node_hours,
        "failed probes per node-hour": failed_probes / node_hours,
        "false failures": float(failures),
    }


def crash(nodes: int, profile: str, loss: float, seeds: int) -> Figures:
    """Median and worst seconds from a crash to its first and its last "failed"."""
    first: list[float] = []
    every: list[float] = []
    for seed in range(1, seeds + 1):
        _, results = run("crash", nodes=nodes, seed=seed, duration=60.0, loss=loss, profile=profile)
        for report in results.crashes:
            if report.first_failed is not None:
                first.append(report.first_failed)
            if report.all_failed is not None:
                every.append(report.all_failed)
    return {
        "first failed, median s": statistics.median(first) if first else None,
        "first failed, max s": max(first) if first else None,
        "failed everywhere, median s": statistics.median(every) if every else None,
        "failed everywhere, max s": max(every) if every else None,
    }


def tag_spread(loss: float, runs: int = 100, within: float = 3.0) -> Figures:
    """Runs (of ``runs``) in which a tag change took over ``within`` s to reach everyone."""
    late = 0
    times: list[float] = []
    for seed in range(runs):
        link = PROFILE_LINKS["local"].replace(loss=loss)
        cluster = Cluster(5, seed=seed, profile="local", link=link, serf=True)
        cluster.run_until(10.0)
        changed = cluster.names()[seed % 5]
        cluster.set_tags(changed, {"service": "api-v2"})
        incarnation = cluster.engine(changed).local_member.incarnation
        start = cluster.now

        def reached(c: Cluster, changed: str = changed, incarnation: int = incarnation) -> bool:
            return all(
                (member := c.engine(observer).member(changed)) is not None
                and member.incarnation >= incarnation
                for observer in c.running()
            )

        done = cluster.run_until(reached, limit=start + 60.0, poll=0.05)
        took = 60.0 if done is None else done - start
        times.append(took)
        late += took > within
    return {"runs over 3 probe intervals": float(late), "worst s": max(times)}


def start_up(nodes: int, profile: str, loss: float, seeds: int) -> Figures:
    """Median and worst seconds from the last start to every view complete."""
    took: list[float] = []
    for seed in range(seeds):
        link = PROFILE_LINKS[profile].replace(loss=loss)
        cluster = Cluster(1, seed=seed, profile=profile, link=link, start="join")
        for _ in range(nodes - 1):
            cluster.run_for(0.1)
            cluster.add_node(seeds=[cluster.names()[0]])
        start = cluster.now
        done = cluster.run_until(_complete, limit=start + 120.0, poll=0.1)
        took.append(120.0 if done is None else done - start)
    return {"median s": statistics.median(took), "max s": max(took)}


def _complete(cluster: Cluster) -> bool:
    running = cluster.running()
    for observer in running:
        view = cluster.view(observer)
        if any(view.get(member) not in ("alive", "suspect") for member in running):
            return False
    return True


def measure(seeds: int) -> dict[str, Figures]:
    """Every figure of this checkout's simulator; a case it cannot run is empty."""
    cases: dict[str, Callable[[], Figures]] = {
        "uniform 20%, 20 local, 300 s": lambda: steady(
            "steady", 20, "local", 0.2, 300.0, seeds=seeds
        ),
        "uniform 20%, 50 lan, 300 s": lambda: steady("steady", 50, "lan", 0.2, 300.0, seeds=seeds),
        "ingress 20% at one, 20 local": lambda: steady(
            "lossy-member", 20, "local", 0.0, 300.0, seeds=seeds
        ),
        "one ingress flapping 5 s, 20 local": lambda: steady(
            "flapping", 20, "local", 0.0, 300.0, seeds=seeds
        ),
        "crash at 20%, 20 local": lambda: crash(20, "local", 0.2, seeds),
        "crash at 20%, 50 lan": lambda: crash(50, "lan", 0.2, seeds),
        "tag change, 5 local, 0%": lambda: tag_spread(0.0),
        "tag change, 5 local, 10%": lambda: tag_spread(0.1),
        "start-up, 20 local, 0%": lambda: start_up(20, "local", 0.0, seeds),
        "start-up, 20 local, 20%": lambda: start_up(20, "local", 0.2, seeds),
        "start-up, 50 lan, 0%": lambda: start_up(50, "lan", 0.0, seeds),
        "start-up, 50 lan, 20%": lambda: start_up(50, "lan", 0.2, seeds),
    }
    figures: dict[str, Figures] = {}
    for name, case in cases.items():
        began = time.monotonic()
        try:
            figures[name] = case()
        except ScheduleError:  # an older checkout without this scenario
            figures[name] = {}
        print(f"  {name}: {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)
    return figures


def before(checkout: Path, seeds: int) -> dict[str, Figures]:
    """The same figures from ``checkout``'s simulator: this script, run with that checkout
    first on the path (only the simulator's public API is used, which it shares)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(checkout.resolve())
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--seeds", str(seeds), "--emit"],
        capture_output=True,
        text=True,
        cwd=checkout,
        env=env,
        timeout=3 * HOUR,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"simulated_loss: the run in {checkout} failed:\n{done.stderr[-2000:]}")
    figures: dict[str, Figures] = json.loads(done.stdout)
    return figures


def show(after: dict[str, Figures], baseline: dict[str, Figures] | None) -> None:
    header = f"{'':<62}{'this':>10}"
    if baseline is not None:
        header += f"{'before':>10}{'ratio':>8}"
    print(header)
    for case, figures in after.items():
        print(case)
        for name, value in figures.items():
            line = f"  {name:<60}{_number(value):>10}"
            if baseline is not None:
                old = baseline.get(case, {}).get(name)
                ratio = f"{value / old:.2f}x" if value is not None and old else "-"
                line += f"{_number(old):>10}{ratio:>8}"
            print(line)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=4, help="runs per case")
    parser.add_argument("--before", type=Path, help="a checkout to compare with")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--emit", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # a lossy run's engine warnings are the point, not news
    if args.before is not None and not (args.before / "simulator").is_dir():
        parser.error(f"--before {args.before}: not a shoal checkout (no simulator/ in it)")
    after = measure(args.seeds)
    if args.emit:
        print(json.dumps(after))
        return
    baseline = before(args.before, args.seeds) if args.before is not None else None
    show(after, baseline)
    if args.json is not None:
        record: dict[str, Any] = {"this": after, "before": baseline}
        args.json.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
