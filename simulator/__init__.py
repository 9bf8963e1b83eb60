"""A deterministic network simulator for shoal: the real engines, virtual time, faults.

    from simulator import Cluster, faults

    cluster = Cluster(50, seed=1)                   # converged LAN cluster n0..n49
    cluster.schedule(faults.Crash(10.0, "n49"), faults.Split.halves(30.0, cluster.names(), 20.0))
    cluster.run_until(120.0)                        # or run_until(condition, limit=...)
    results = cluster.results()                     # plain data; results.to_dict() for JSON
    results.crashes[0].all_failed, results.convergence, results.trace_hash

One seed fixes everything (network randomness, every engine's ``random.Random``, encryption
nonces), so a run is bit-identical in any process.  See ``python -m simulator --help``.
"""

from simulator import faults
from simulator.check import Violation, check
from simulator.cluster import Cluster, SimulationError
from simulator.metrics import (
    ConvergenceReport,
    CrashReport,
    FalseAlarm,
    NodeTraffic,
    Observation,
    Results,
    SpreadCurve,
    TrafficSummary,
    detection_bound,
)
from simulator.network import PROFILE_LINKS, Link, NetworkError
from simulator.scenarios import SCENARIOS, run

__all__ = [
    "PROFILE_LINKS",
    "SCENARIOS",
    "Cluster",
    "ConvergenceReport",
    "CrashReport",
    "FalseAlarm",
    "Link",
    "NetworkError",
    "NodeTraffic",
    "Observation",
    "Results",
    "SimulationError",
    "SpreadCurve",
    "TrafficSummary",
    "Violation",
    "check",
    "detection_bound",
    "faults",
    "run",
]
