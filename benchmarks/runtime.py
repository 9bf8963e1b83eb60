"""CPU, memory and traffic of steady clusters of real agents: ``swim agent`` on trio and on
asyncio, and ``serf agent``, side by side; with ``--before DIR``, also the ``swim agent`` of an
older checkout.

One run starts a cluster of ``--nodes`` agents (5 by default) of each kind, each agent its own
process on 127.0.0.1, all with the same flags (``-profile``, one ``-encrypt`` key for all):

- ``shoal-trio``: this checkout's ``python -m swim.cli agent -event-loop trio``;
- ``shoal-asyncio``: the same with ``-event-loop asyncio``;
- ``shoal-metrics`` (with ``--metrics``): ``shoal-trio`` serving Prometheus metrics
  (``-metrics-addr``), what ``prometheus_client`` and the endpoint cost an agent;
- ``shoal-before`` (with ``--before DIR``): ``python -m swim.cli agent`` from checkout DIR, run
  with DIR as its working directory and first on its ``PYTHONPATH``, and without
  ``-event-loop`` (older commits have no such flag; they run on trio);
- ``serf``: ``serf agent``.

The clusters start together, their agents interleaved.  Once every agent's RPC
(``serf members -format=json``) shows all its members alive, and after a warm-up, the script
samples each process's CPU time from ``/proc/<pid>/stat`` (utime + stime) and the traffic to the
clusters' gossip ports over a window (30 s by default), and resident memory (``VmRSS``) at its
end.  Nothing talks to the agents during the window.

Traffic is counted by nftables (``nft``, Debian package ``nftables``) in a table this script
creates and deletes, hooked on input at loopback: per gossip port, UDP to it, TCP to it (streams
it accepted) and TCP from it (replies on those streams).  Every packet on loopback is received
by exactly one agent, so a cluster's total divided by its size is what a node receives per
second, on average.  The counters see IP packets: bytes include the IP and UDP/TCP headers.
Without ``nft`` (or the right to use it) the script says why and reports CPU and memory only.

Figures are per node, one column per kind, with ratios measured in the same run: each shoal kind
/ serf, and with ``--before``, shoal-trio / shoal-before.  The load average is printed at both
ends of the window.

    python benchmarks/runtime.py [--nodes 5] [--window 30] [--warmup 20] [--profile lan]
                                 [--before DIR] [--metrics]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

# Run as a file, this script's own directory comes first on sys.path; the agent code it
# shares with its sibling is imported from the repository root, as ``benchmarks.agents``.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.agents import (
    CLK_TCK,
    REPO,
    Agent,
    BenchError,
    Program,
    check_running,
    cpu_ticks,
    free_ports,
    rss_mib,
    serf_program,
    serf_version,
    shoal_program,
    start_agent,
    stop_all,
)
from benchmarks.baseline import checkout_commit

PER = 30.0
"""CPU is reported per this many seconds."""
UDP_HEADERS = 28
"""IPv4 header (no options) + UDP header, in bytes."""


def members(agent: Agent, serf: str, timeout: float = 5.0) -> list[dict[str, object]] | None:
    """The agent's members as ``serf members -format=json`` shows them; None when it does not
    answer (not up yet, or too slow)."""
    try:
        done = subprocess.run(
            [serf, "members", f"-rpc-addr={agent.rpc_addr}", "-format=json"],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        return None
    listed = json.loads(done.stdout).get("members") or []
    return list(listed)


def wait_until(
    what: str, pending: Callable[[], str | None], agents: list[Agent], seconds: float
) -> float:
    """Poll ``pending`` (about once a second) until it returns None, printing what it still
    waits for every 10 s; the time it took."""
    start = last_report = time.monotonic()
    reason: str | None = "never checked"
    while time.monotonic() - start < seconds:
        check_running(agents)
        reason = pending()
        if reason is None:
            return time.monotonic() - start
        if time.monotonic() - last_report >= 10.0:
            print(f"  still waiting for {what} after {time.monotonic() - start:.0f} s: {reason}")
            last_report = time.monotonic()
        time.sleep(1.0)
    raise BenchError(f"{what}: not within {seconds:g} s ({reason})")


def not_converged(cluster: Sequence[Agent], serf: str) -> str | None:
    """None when every agent of ``cluster`` lists exactly its members, all alive; else what
    one of them shows instead."""
    names = {agent.name for agent in cluster}
    for agent in cluster:
        listed = members(agent, serf)
        if listed is None:
            return f"{agent.name}'s RPC does not answer"
        statuses = {str(m["name"]): str(m.get("status")) for m in listed}
        if set(statuses) != names or any(status != "alive" for status in statuses.values()):
            shown = ", ".join(f"{name} {status}" for name, status in sorted(statuses.items()))
            return f"{agent.name} shows {shown or 'nobody'}"
    return None


class LoopbackCounters:
    """nftables counters on the loopback input path, three per gossip port: UDP to the port,
    TCP to it, TCP from it.  The table is this script's own and is deleted on close."""

    RULES = (("udp", "dport"), ("tcp", "dport"), ("tcp", "sport"))

    def __init__(self, ports: Sequence[int]) -> None:
        self.table = f"shoal_bench_{os.getpid()}"
        self.ports = list(ports)
        self.created = False

    def create(self) -> None:
        rules = "\n".join(
            f'    iif "lo" {proto} {field} {port} counter comment "{proto} {field} {port}"'
            for port in self.ports
            for proto, field in self.RULES
        )
        script = (
            f"table inet {self.table} {{\n  chain input {{\n"
            f"    type filter hook input priority -300; policy accept;\n{rules}\n  }}\n}}\n"
        )
        self._nft(["-f", "-"], script)
        self.created = True

    def read(self) -> dict[tuple[str, str, int], tuple[int, int]]:
        """(protocol, field, port) -> (packets, bytes)."""
        listing = json.loads(self._nft(["-j", "list", "table", "inet", self.table]))
        counts: dict[tuple[str, str, int], tuple[int, int]] = {}
        for item in listing["nftables"]:
            rule = item.get("rule")
            if not rule or "comment" not in rule:
                continue
            proto, field, port = rule["comment"].split()
            counter = next(e["counter"] for e in rule["expr"] if "counter" in e)
            counts[proto, field, int(port)] = (int(counter["packets"]), int(counter["bytes"]))
        return counts

    def close(self) -> None:
        if self.created:
            self._nft(["delete", "table", "inet", self.table])
            self.created = False

    @staticmethod
    def _nft(arguments: list[str], stdin: str | None = None) -> str:
        done = subprocess.run(
            ["nft", *arguments],
            check=False,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=10.0,
        )
        if done.returncode != 0:
            raise BenchError(f"nft {' '.join(arguments)}: {done.stderr.strip()}")
        return done.stdout


@dataclass
class Traffic:
    """What one cluster received over the window, per node per second."""

    udp_bytes: float
    udp_packets: float
    tcp_bytes: float
    tcp_packets: float
    udp_per_node: list[float]
    """UDP bytes per second each node received, for the spread."""

    @property
    def total_bytes(self) -> float:
        return self.udp_bytes + self.tcp_bytes

    @property
    def udp_payload(self) -> float:
        return self.udp_bytes - UDP_HEADERS * self.udp_packets


def traffic(
    cluster: Sequence[Agent],
    before: dict[tuple[str, str, int], tuple[int, int]],
    after: dict[tuple[str, str, int], tuple[int, int]],
    seconds: float,
) -> Traffic:
    def delta(key: tuple[str, str, int]) -> tuple[int, int]:
        return after[key][0] - before[key][0], after[key][1] - before[key][1]

    n = len(cluster)
    scale = 1.0 / (n * seconds)
    udp = [delta(("udp", "dport", a.port)) for a in cluster]
    tcp = [delta(("tcp", f, a.port)) for a in cluster for f in ("dport", "sport")]
    return Traffic(
        udp_bytes=sum(b for _, b in udp) * scale,
        udp_packets=sum(p for p, _ in udp) * scale,
        tcp_bytes=sum(b for _, b in tcp) * scale,
        tcp_packets=sum(p for p, _ in tcp) * scale,
        udp_per_node=[b / seconds for _, b in udp],
    )


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x" if theirs > 0 else "-"


def programs(args: argparse.Namespace) -> dict[str, Program]:
    """Each kind of agent this run starts, in the order of the table's columns."""
    kinds = {
        "shoal-trio": shoal_program(REPO, "-event-loop=trio"),
        "shoal-asyncio": shoal_program(REPO, "-event-loop=asyncio"),
    }
    if args.metrics:
        kinds["shoal-metrics"] = shoal_program(
            REPO, "-event-loop=trio", "-metrics-addr=127.0.0.1:0"
        )
    if args.before is not None:
        kinds["shoal-before"] = shoal_program(args.before)
    kinds["serf"] = serf_program(args.serf)
    return kinds


def ratios(kinds: Sequence[str]) -> list[tuple[str, str]]:
    """The (numerator, denominator) kinds of the ratio columns."""
    pairs = [(kind, "serf") for kind in kinds if kind != "serf"]
    if "shoal-before" in kinds:
        pairs.append(("shoal-trio", "shoal-before"))
    if "shoal-metrics" in kinds:
        pairs.append(("shoal-metrics", "shoal-trio"))
    return pairs


def short(kind: str) -> str:
    return kind.removeprefix("shoal-")


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def load_average() -> str:
    return " ".join(f"{load:.2f}" for load in os.getloadavg())


def run(args: argparse.Namespace, agents: list[Agent], counters: list[LoopbackCounters]) -> None:
    n = args.nodes
    program = programs(args)
    kinds = list(program)
    ports = free_ports(2 * n * len(kinds))
    plan = {
        kind: [(ports[2 * (k * n + i)], ports[2 * (k * n + i) + 1]) for i in range(n)]
        for k, kind in enumerate(kinds)
    }
    bytes_off = None
    if shutil.which("nft") is None:
        bytes_off = "`nft` is not installed (apt-get install -y nftables)"
    else:
        gossip_ports = [port for kind in kinds for port, _ in plan[kind]]
        counter = LoopbackCounters(gossip_ports)
        try:
            counter.create()
            counters.append(counter)
        except BenchError as exc:
            bytes_off = f"cannot create an nftables table: {exc}"

    clusters: dict[str, list[Agent]] = {kind: [] for kind in kinds}

    def start(kind: str, i: int, join: str) -> None:
        agent = start_agent(
            agents, args, kind, i, ports=plan[kind][i], join=join, program=program[kind]
        )
        clusters[kind].append(agent)

    for kind in kinds:
        start(kind, 0, "")
    seeds = [clusters[kind][0] for kind in kinds]
    wait_until(
        "the first agents' RPC",
        lambda: next((f"{s.name}'s RPC" for s in seeds if members(s, args.serf) is None), None),
        agents,
        30.0,
    )
    for i in range(1, n):  # interleaved, so that no kind starts while the machine is quieter
        for kind in kinds:
            start(kind, i, f"127.0.0.1:{clusters[kind][0].port}")
    started = time.monotonic()
    took: dict[str, float] = {}

    def pending() -> str | None:
        reasons = []
        for kind in kinds:
            if kind not in took:
                reason = not_converged(clusters[kind], args.serf)
                if reason is None:
                    took[kind] = time.monotonic() - started
                else:
                    reasons.append(reason)
        return "; ".join(reasons) or None

    wait_until("convergence", pending, agents, args.converge_timeout)
    print(
        "converged after the last start (polled once a second): "
        + ", ".join(f"{kind} {took[kind]:.1f} s" for kind in kinds)
        + f"; warming up {args.warmup:g} s"
    )
    time.sleep(args.warmup)
    check_running(agents)

    load_before = load_average()
    before_counts = counters[0].read() if counters else {}
    ticks_before = {a.name: cpu_ticks(a.process.pid) for a in agents}
    started = time.monotonic()
    time.sleep(args.window)
    ticks_after = {a.name: cpu_ticks(a.process.pid) for a in agents}
    after_counts = counters[0].read() if counters else {}
    seconds = time.monotonic() - started
    load_after = load_average()
    rss = {a.name: rss_mib(a.process.pid) for a in agents}
    check_running(agents)
    still = {kind: not_converged(clusters[kind], args.serf) for kind in kinds}

    cpu = {
        kind: [
            (ticks_after[a.name] - ticks_before[a.name]) / CLK_TCK * PER / seconds
            for a in clusters[kind]
        ]
        for kind in kinds
    }
    mean_cpu = {kind: statistics.fmean(cpu[kind]) for kind in kinds}
    mem = {kind: statistics.fmean(rss[a.name] for a in clusters[kind]) for kind in kinds}
    pairs = ratios(kinds)

    print(
        f"\n{n} agents per cluster, -profile={args.profile}, encrypted (one key for all), "
        f"window {seconds:.1f} s, all {len(kinds)} clusters running at once"
    )
    print(
        f"load average (1, 5, 15 min): {load_before} at the window's start, "
        f"{load_after} at its end; {os.cpu_count()} CPUs"
    )
    print(
        f"Python {sys.version.split()[0]}, trio {package_version('trio')}, "
        f"anyio {package_version('anyio')}; serf: {serf_version(args.serf)}"
    )
    for kind in kinds:
        checkout = program[kind].checkout
        if checkout is not None:
            print(f"{kind}: {checkout} at {checkout_commit(checkout)}")
    print()

    width, label_width = 14, 34

    def row(label: str, values: dict[str, float], spec: str, with_ratios: bool = True) -> None:
        cells = "".join(f"{values[kind]:>{width}{spec}}" for kind in kinds)
        if with_ratios:
            cells += "".join(f"{ratio(values[a], values[b]):>{width}}" for a, b in pairs)
        print(f"{label:<{label_width}}{cells}")

    def text_row(label: str, values: dict[str, str]) -> None:
        print(f"{label:<{label_width}}" + "".join(f"{values[kind]:>{width}}" for kind in kinds))

    header = [*kinds, *(f"{short(a)}/{short(b)}" for a, b in pairs)]
    print(f"{'per node':<{label_width}}" + "".join(f"{h:>{width}}" for h in header))
    row("CPU seconds per 30 s", mean_cpu, ".3f")
    text_row(
        "  min..max over nodes",
        {kind: f"{min(cpu[kind]):.3f}..{max(cpu[kind]):.3f}" for kind in kinds},
    )
    text_row("  share of one core", {kind: f"{mean_cpu[kind] / PER:.2%}" for kind in kinds})
    row("resident memory, MiB", mem, ".1f")

    if bytes_off is not None:
        print(f"\nbytes: not measured: {bytes_off}")
    else:
        got = {
            kind: traffic(clusters[kind], before_counts, after_counts, seconds) for kind in kinds
        }
        if all(got[kind].total_bytes == 0 for kind in kinds):
            print("\nbytes: not measured: the nftables counters stayed at zero")
        else:
            print("\nreceived per node per second (nftables, loopback input; IP packet bytes)")
            rows: list[tuple[str, Callable[[Traffic], float], str]] = [
                ("UDP bytes/s (IP packets)", lambda t: t.udp_bytes, ",.0f"),
                ("  UDP payload bytes/s", lambda t: t.udp_payload, ",.0f"),
                ("  UDP packets/s", lambda t: t.udp_packets, ",.1f"),
                ("TCP bytes/s (IP packets)", lambda t: t.tcp_bytes, ",.0f"),
                ("  TCP packets/s", lambda t: t.tcp_packets, ",.1f"),
                ("total bytes/s (UDP + TCP)", lambda t: t.total_bytes, ",.0f"),
            ]
            for label, pick, spec in rows:
                row(label, {kind: pick(got[kind]) for kind in kinds}, spec)
            text_row(
                "  UDP bytes/s min..max over nodes",
                {
                    kind: f"{min(got[kind].udp_per_node):,.0f}..{max(got[kind].udp_per_node):,.0f}"
                    for kind in kinds
                },
            )
    for kind in kinds:
        if still[kind] is not None:
            print(f"\nwarning: after the window, in the {kind} cluster, {still[kind]}")


def interrupted(signum: int, _: object) -> None:
    """SIGTERM: stop as Ctrl-C does, through the ``finally`` that stops the agents."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=5, help="agents per cluster")
    parser.add_argument("--window", type=float, default=30.0, help="measurement window, s")
    parser.add_argument("--warmup", type=float, default=20.0, help="wait after convergence, s")
    parser.add_argument("--profile", default="lan", choices=("lan", "wan", "local"))
    parser.add_argument("--serf", default=shutil.which("serf") or "/usr/bin/serf")
    parser.add_argument("--converge-timeout", type=float, default=120.0)
    parser.add_argument("--logs", default=None, help="keep the agents' logs in this directory")
    parser.add_argument(
        "--before",
        type=Path,
        default=None,
        metavar="DIR",
        help="also run a cluster of the swim agent of the shoal checkout DIR (shoal-before)",
    )
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="also run a cluster of swim agents serving metrics (shoal-metrics)",
    )
    args = parser.parse_args()
    if args.nodes < 2:
        parser.error("--nodes must be at least 2")
    if args.before is not None and not (args.before / "swim" / "cli.py").is_file():
        parser.error(f"--before {args.before}: no swim/cli.py there; pass a shoal checkout")
    if not os.access(args.serf, os.X_OK):
        parser.error(f"no serf binary at {args.serf}; pass --serf PATH")
    args.key = base64.b64encode(os.urandom(32)).decode()
    signal.signal(signal.SIGTERM, interrupted)
    agents: list[Agent] = []
    counters: list[LoopbackCounters] = []
    with tempfile.TemporaryDirectory(prefix="shoal-runtime-") as scratch:
        args.log_dir = args.logs or scratch
        Path(args.log_dir).mkdir(parents=True, exist_ok=True)
        try:
            run(args, agents, counters)
        except BenchError as exc:
            sys.exit(f"runtime: {exc}")
        finally:
            try:
                stop_all(agents)
            finally:
                for counter in counters:
                    counter.close()


if __name__ == "__main__":
    main()
