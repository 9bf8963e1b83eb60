"""One seed fixes everything: the same run twice, in any process, gives the same trace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from simulator.cluster import Cluster
from simulator.scenarios import run

ROOT = Path(__file__).resolve().parents[2]


def test_the_same_seed_gives_the_same_trace_and_results() -> None:
    first = run("churn", nodes=10, seed=7, duration=70.0, params={"settle": 20})[1]
    second = run("churn", nodes=10, seed=7, duration=70.0, params={"settle": 20})[1]
    assert first.trace_hash == second.trace_hash
    assert first.to_dict() == second.to_dict()
    other = run("churn", nodes=10, seed=8, duration=70.0, params={"settle": 20})[1]
    assert other.trace_hash != first.trace_hash


def test_the_trace_covers_deliveries_events_and_faults() -> None:
    cluster = Cluster(4, seed=1, keep_trace=True)
    cluster.at(1.0, lambda: cluster.crash("n3"))
    cluster.at(2.0, lambda: cluster.command("n0", lambda e, now: e.send_reliable("n1", b"", now)))
    cluster.run_until(30.0)
    kinds = {record[1] for record in cluster.trace.records}
    assert {"datagram", "event", "fault", "stream", "stream-done", "start"} <= kinds
    times = [record[0] for record in cluster.trace.records]
    assert times == sorted(times)


def cli_json(hash_seed: str) -> dict[str, object]:
    """A run with encryption, churn and loss, in a fresh interpreter."""
    command = [
        sys.executable, "-m", "simulator", "run", "--scenario", "churn", "--nodes", "10",
        "--seed", "3", "--duration", "60", "--param", "settle=20", "--loss", "0.05",
        "--encrypt", "--json",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_the_trace_does_not_depend_on_pythonhashseed() -> None:
    first, second = cli_json("0"), cli_json("4242")
    assert first["trace_hash"] == second["trace_hash"]
    assert first == second
