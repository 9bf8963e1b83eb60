"""What ``-metrics-addr`` costs a ``swim agent``: start-up imports, resident memory, and a scrape.

- import time: ``swim.metrics`` (and with it ``prometheus_client``) imported after what every
  agent imports (``swim.cli``, ``swim.agent``), in ``--imports`` fresh interpreters (the
  median, and the same for the agent's own imports, for scale);
- memory: two lone agents side by side on 127.0.0.1, one with ``-metrics-addr`` and one
  without; their resident memory (``VmRSS``) once both answer RPC and ``--settle`` seconds
  have passed, and again after ``--scrapes`` scrapes of ``/metrics`` on the one that serves it;
- a scrape: the median time of one ``GET /metrics`` over a new connection, and its size.

    python benchmarks/metrics.py [--imports 7] [--scrapes 200] [--settle 5]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run as a file, this script's own directory comes first on sys.path; the agent code it
# shares with its siblings is imported from the repository root, as ``benchmarks.agents``.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.agents import REPO, free_ports, rss_mib

_IMPORTS = """
import time
t0 = time.perf_counter()
import swim.cli, swim.agent
t1 = time.perf_counter()
import swim.metrics
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def import_times(runs: int) -> tuple[float, float]:
    """Median seconds to import the agent, and then swim.metrics, in fresh interpreters."""
    agent, metrics = [], []
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-c", _IMPORTS], check=True, capture_output=True, text=True, cwd=REPO
        )
        first, second = done.stdout.split()
        agent.append(float(first))
        metrics.append(float(second))
    return statistics.median(agent), statistics.median(metrics)


def start(name: str, ports: list[int], log: Path, *flags: str) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "swim.cli",
        "agent",
        f"-node={name}",
        f"-bind=127.0.0.1:{ports[0]}",
        f"-rpc-addr=127.0.0.1:{ports[1]}",
        *flags,
    ]
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)


def wait_for_port(port: int, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on port {port} after {limit:g} s")


def scrape(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as connection:
        connection.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        response = b""
        while chunk := connection.recv(65536):
            response += chunk
    if not response.startswith(b"HTTP/1.1 200 OK"):
        raise SystemExit(f"the scrape failed: {response[:200]!r}")
    return response.partition(b"\r\n\r\n")[2]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--imports", type=int, default=7, help="fresh interpreters to time")
    parser.add_argument("--scrapes", type=int, default=200, help="scrapes before the 2nd look")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after start-up")
    args = parser.parse_args()

    agent_import, metrics_import = import_times(args.imports)
    ports = free_ports(5)
    with tempfile.TemporaryDirectory(prefix="shoal-metrics-") as scratch:
        plain = start("plain", ports[0:2], Path(scratch, "plain.log"))
        served = start(
            "metrics",
            ports[2:4],
            Path(scratch, "metrics.log"),
            f"-metrics-addr=127.0.0.1:{ports[4]}",
        )
        try:
            for port in (ports[1], ports[3], ports[4]):
                wait_for_port(port)
            time.sleep(args.settle)
            settled = rss_mib(plain.pid), rss_mib(served.pid)
            durations, size = [], 0
            for _ in range(args.scrapes):
                began = time.perf_counter()
                size = len(scrape(ports[4]))
                durations.append(time.perf_counter() - began)
            time.sleep(1.0)
            scraped = rss_mib(plain.pid), rss_mib(served.pid)
        finally:
            for process in (plain, served):
                process.terminate()
            for process in (plain, served):
                process.wait(15.0)

    print(f"Python {sys.version.split()[0]}; medians of {args.imports} fresh interpreters")
    print(f"import swim.cli + swim.agent      {agent_import * 1000:7.1f} ms")
    print(f"then import swim.metrics          {metrics_import * 1000:7.1f} ms")
    print()
    print("resident memory, MiB               plain  -metrics-addr  difference")
    for label, (without, with_) in (
        (f"settled ({args.settle:g} s)", settled),
        (f"after {args.scrapes} scrapes", scraped),
    ):
        print(f"{label:<32} {without:7.1f} {with_:14.1f} {with_ - without:11.1f}")
    print()
    median = statistics.median(durations) * 1000
    print(f"one scrape: median {median:.2f} ms over a new connection, {size} bytes")


if __name__ == "__main__":
    main()
