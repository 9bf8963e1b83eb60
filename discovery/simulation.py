"""Clients calling a service through failover while its instances crash, restart and drain,
in the simulator's virtual time.

The decisions are discovery's own, the very objects the trio side runs: each client's
:class:`~discovery.catalog.Catalog` is fed from its simulated engine's member list, each call is
a :class:`~discovery.failover.CallPlan` (lookups, the strategy's picks, marks, the retry budget,
giving up), and each instance's drain is its :class:`~discovery.lifecycle.Lifecycle`.  This
module only carries out what those state machines ask for, in virtual time on a
:class:`~simulator.cluster.Cluster`, as :meth:`~discovery.client.Discovery.call` and
:meth:`~discovery.host.ServiceHost.drain` carry it out over trio:

- an instance is a node whose memberlist metadata is its Serf tags with the service record
  (``svc.<service>``) from the start of its process, as a Serf agent's tags are, so its join
  carries them (a restarted instance starts with them again); announcing a drain adds
  ``svc-draining=1`` with ``update_meta``;
- a client's catalog is brought up to date from its own engine's member list whenever its
  call plan asks for a lookup, which is when :class:`~discovery.client.Discovery` reads its
  catalog too (it applies membership events as they come, and nothing reads the catalog in
  between);
- cutting off a request closes it without an answer at once; a leave is over when the cluster
  has stopped the node.

How a call spends virtual time (a deliberately simple model; calls draw no randomness from the
cluster, so they do not disturb the protocol's own): an attempt reaches its instance half a
``round_trip`` after it starts.  There, a stopped process refuses the connection; a paused
instance, or one cut off from the client, does not answer and the attempt fails
``connect_timeout`` after it started; a draining or leaving instance refuses the request; a
serving one works ``service_time`` on it.  Answers and refusals take another half round trip
back; a crash resets the requests in flight, which the client learns half a round trip later.
A pause or cut that begins while a request is in flight does not affect it.  A call gives up at
its ``timeout`` whatever its attempts are doing.

With failover a failed attempt marks its instance locally unavailable and the call tries
another one within the retry budget; without, the clients' policy allows no retry and no
cool-down (``FailoverPolicy(retries=0, cooldown=0)``): a call makes one attempt and no mark
lasts, so the clients rely on gossip alone.  :func:`compare` runs both on the same seed and
schedule: membership then evolves identically, except that a drain leaves when its own requests
in flight end, which the arms change a little.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from discovery import failover, lifecycle
from discovery.balancer import LeastOutstanding, RoundRobin, Strategy, Weighted
from discovery.balancer import Random as RandomStrategy
from discovery.catalog import Catalog, ChangeKind, Health, Instance, lookup
from discovery.failover import CallFailed, CallPlan, FailoverPolicy
from discovery.lifecycle import DrainReport, Kind, Lifecycle, NotAccepting, Phase, Work
from discovery.records import ServiceRecord, check_name, write_tags
from simulator import faults as simulator_faults
from simulator.cluster import Cluster, SimulationError
from simulator.faults import Fault
from swim.wire import serf as serf_wire

STRATEGIES: dict[str, Callable[[random.Random], Strategy]] = {
    "round-robin": lambda _: RoundRobin(),
    "random": RandomStrategy,
    "weighted": Weighted,
    "least-outstanding": lambda _: LeastOutstanding(),
}
"""The balancer strategies a scenario can name, built from the client's own generator."""

SERVICE_PORT = 8080
"""The port every simulated instance advertises in its record."""

LEAVE_POLL = 0.05
"""How often, in virtual seconds, a drain checks whether its leave has gone out (the cluster
stops the node then)."""

REFUSED = "connection refused"
TIMED_OUT = "timed out"
RESET = "connection reset"
NOT_ACCEPTING = "closed without an answer: not accepting new requests"
CUT_OFF = "closed without an answer: cut off at the drain deadline"

_PROCESS_FAULTS = (
    simulator_faults.Crash,
    simulator_faults.Restart,
    simulator_faults.Leave,
    simulator_faults.Churn,
)


class ScenarioError(ValueError):
    """A scenario parameter is out of range; the message names it and the valid range."""


# ---------------------------------------------------------------------------------------------
# What to simulate.


@dataclass(frozen=True, slots=True)
class Calls:
    """How every client calls the service; times in virtual seconds."""

    rate: float = 20.0
    """Calls per second from each client (Poisson arrivals)."""
    service_time: float = 0.02
    """How long an instance works on a request."""
    round_trip: float = 0.001
    """The network round trip between a client and an instance."""
    connect_timeout: float = 1.0
    """How long an attempt waits on an instance that does not answer before failing."""
    timeout: float = 2.0
    """A call's deadline, every attempt included."""
    retries: int = 2
    """With failover: how many further instances a call may try after the first fails."""
    cooldown: float = 30.0
    """With failover: how long a failed instance is avoided unless gossip clears it sooner."""
    strategy: str = "round-robin"
    """The balancer strategy: one of :data:`STRATEGIES`."""

    def __post_init__(self) -> None:
        for name in ("rate", "connect_timeout", "timeout"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ScenarioError(f"Calls.{name}={value!r} must be a finite number > 0")
        for name in ("service_time", "round_trip", "cooldown"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ScenarioError(f"Calls.{name}={value!r} must be a finite number >= 0")
        if self.retries < 0:
            raise ScenarioError(f"Calls.retries={self.retries} must be 0 or more")
        if self.strategy not in STRATEGIES:
            raise ScenarioError(
                f"Calls.strategy={self.strategy!r} is unknown; choose one of "
                + ", ".join(STRATEGIES)
            )


@dataclass(frozen=True, slots=True)
class CrashInstance:
    """``instance`` dies without a word; with ``restart_after``, it comes back that much later
    (same name and address, a new incarnation) and registers its service again."""

    at: float
    instance: str
    restart_after: float | None = None


@dataclass(frozen=True, slots=True)
class DrainInstance:
    """``instance`` drains gracefully: it announces draining in its record, refuses new
    requests, waits up to ``timeout`` for those in flight, cuts off the rest and leaves; with
    ``restart_after``, it starts again that long after it stopped."""

    at: float
    instance: str
    timeout: float = 10.0
    restart_after: float | None = None


InstanceFault = CrashInstance | DrainInstance


def instance_names(service: str, count: int) -> list[str]:
    """The node names of a scenario's instances: ``<service>-0`` ... ``<service>-<count-1>``."""
    return [f"{service}-{index}" for index in range(count)]


def client_names(count: int) -> list[str]:
    """The node names of a scenario's clients: ``client-0`` ... ``client-<count-1>``."""
    return [f"client-{index}" for index in range(count)]


@dataclass(frozen=True, slots=True)
class Scenario:
    """Instances of one service and the clients that call it, on one seeded cluster.

    Calls run from ``start`` (by then every client must have discovered every instance) to
    ``end``; the run goes on until the last call has ended.  ``faults`` crash and drain
    instances; ``network_faults`` are the simulator's own (partitions, pauses, link changes),
    applied as they are.  Failed calls are counted in buckets of ``bucket`` seconds of their
    start time, from time 0.
    """

    instances: int = 5
    clients: int = 3
    service: str = "api"
    calls: Calls = field(default_factory=Calls)
    start: float = 10.0
    end: float = 130.0
    faults: tuple[InstanceFault, ...] = ()
    network_faults: tuple[Fault, ...] = ()
    seed: int = 0
    profile: str = "lan"
    bucket: float = 5.0

    def __post_init__(self) -> None:
        check_name(self.service)
        for name in ("instances", "clients"):
            if getattr(self, name) < 1:
                raise ScenarioError(f"Scenario.{name}={getattr(self, name)} must be 1 or more")
        if not 0 <= self.start < self.end or not math.isfinite(self.end):
            raise ScenarioError(
                f"Scenario.start={self.start} and end={self.end} must satisfy 0 <= start < end"
            )
        if not self.bucket > 0:
            raise ScenarioError(f"Scenario.bucket={self.bucket} must be > 0 seconds")
        names = instance_names(self.service, self.instances)
        for fault in self.faults:
            if fault.instance not in names:
                raise ScenarioError(
                    f"{fault} names an unknown instance; the instances are {', '.join(names)}"
                )
            if fault.at < self.start:
                raise ScenarioError(
                    f"{fault} comes before the calls start at {self.start}; every instance "
                    "must be discovered first, so move the fault or lower start"
                )
        for network_fault in self.network_faults:
            if isinstance(network_fault, _PROCESS_FAULTS):
                raise ScenarioError(
                    f"{network_fault} stops or starts processes behind the service's back; "
                    "use CrashInstance or DrainInstance, so that an instance that comes back "
                    "registers its service again"
                )

    @property
    def instance_names(self) -> list[str]:
        return instance_names(self.service, self.instances)

    @property
    def client_names(self) -> list[str]:
        return client_names(self.clients)


def churn_schedule(
    instances: Sequence[str],
    *,
    start: float,
    end: float,
    interval: float,
    down: float,
    drain_share: float = 0.0,
    drain_timeout: float = 10.0,
    seed: int = 0,
) -> tuple[InstanceFault, ...]:
    """Every ``interval`` seconds from ``start`` until ``end``, a random instance crashes or,
    with probability ``drain_share``, drains; either way it restarts ``down`` seconds after it
    stopped.  With ``interval`` longer than ``down`` plus a drain's length (its requests in
    flight and its leave, about a second), at most one instance is down at a time."""
    if not instances:
        raise ScenarioError("churn_schedule needs at least one instance")
    if not 0 <= down < interval:
        raise ScenarioError(
            f"down={down} must lie in [0, interval={interval}) so that an instance is back "
            "before the next one goes down"
        )
    if not 0.0 <= drain_share <= 1.0:
        raise ScenarioError(f"drain_share={drain_share} must be a probability in [0, 1]")
    rng = random.Random(f"{seed}:churn-schedule")
    schedule: list[InstanceFault] = []
    at = start
    while at < end:
        victim = instances[rng.randrange(len(instances))]
        if rng.random() < drain_share:
            schedule.append(DrainInstance(at, victim, drain_timeout, restart_after=down))
        else:
            schedule.append(CrashInstance(at, victim, restart_after=down))
        at += interval
    return tuple(schedule)


# ---------------------------------------------------------------------------------------------
# What it measured.


class CallRecord(NamedTuple):
    """One call: when it ran, how many attempts it made, and why it failed (None: it
    succeeded)."""

    client: str
    started: float
    finished: float
    attempts: int
    failure: str | None
    """The plan's reason (``retry budget of 2 spent``, ...) or the lookup error's type."""
    budget_spent: bool
    """It failed after trying as many instances as the retry budget allows."""


class AttemptRecord(NamedTuple):
    """One attempt of a call, on one instance."""

    client: str
    instance: str
    started: float
    finished: float
    health: str
    """The instance's health in the client's catalog when it was chosen."""
    error: str | None


class ViewChange(NamedTuple):
    """A client's catalog changed an instance (the catalog's :class:`Change`)."""

    time: float
    client: str
    instance: str
    kind: str
    health: str


class FaultRecord(NamedTuple):
    """Something happened to an instance: crash, restart, drain (it began), or stopped (its
    leave after a drain went out)."""

    time: float
    instance: str
    what: str


@dataclass(frozen=True, slots=True)
class DrainOutcome:
    """One drain, as the instance and the clients lived it."""

    instance: str
    report: DrainReport
    """The instance's own account (:class:`~discovery.lifecycle.DrainReport`)."""
    refused: int
    """New requests the instance refused while draining and leaving."""
    clients_saw_draining: int
    """Clients whose catalog showed the instance draining before it was gone."""
    chosen_while_known_draining: int
    """Attempts sent to it, until it stopped, by a client whose catalog already showed it
    draining: none while a better instance is available."""


@dataclass(frozen=True, slots=True)
class ArmResults:
    """One run: every call with or without failover, as plain data."""

    failover: bool
    seed: int
    calls: int
    failed: int
    retried: int
    """Calls that needed more than one attempt."""
    failed_after_budget: int
    """Failed calls that had tried as many instances as the retry budget allows."""
    failures: dict[str, int]
    """Failed calls by reason."""
    attempt_errors: dict[str, int]
    """Failed attempts by error."""
    most_down: int
    """The most instances not serving at once (stopped, draining or leaving)."""
    bucket: float
    calls_per_bucket: tuple[int, ...]
    failed_per_bucket: tuple[int, ...]
    """Bucket ``i`` counts the calls started in ``[i * bucket, (i + 1) * bucket)``."""
    drains: tuple[DrainOutcome, ...]
    trace_hash: str
    """The cluster's trace hash: the same seed and scenario give the same one."""
    call_log: tuple[CallRecord, ...]
    attempt_log: tuple[AttemptRecord, ...]
    view_log: tuple[ViewChange, ...]
    fault_log: tuple[FaultRecord, ...]

    @property
    def share_failed(self) -> float:
        """The share of calls that failed, 0 to 1."""
        return self.failed / self.calls if self.calls else 0.0

    @property
    def bucket_starts(self) -> list[float]:
        """The start time of each bucket, for plotting."""
        return [index * self.bucket for index in range(len(self.calls_per_bucket))]


@dataclass(frozen=True, slots=True)
class Comparison:
    """The same scenario with and without failover."""

    with_failover: ArmResults
    without_failover: ArmResults


def simulate(scenario: Scenario, *, failover: bool = True) -> ArmResults:
    """Run ``scenario`` once, with or without failover; one seed fixes everything."""
    return _Run(scenario, failover).run()


def compare(scenario: Scenario) -> Comparison:
    """Run ``scenario`` with and without failover, on the same seed and schedule."""
    return Comparison(simulate(scenario, failover=True), simulate(scenario, failover=False))


# ---------------------------------------------------------------------------------------------
# The machinery.


class _Client:
    """One calling node: its catalog, fed from its engine's member list, and its decisions."""

    __slots__ = ("catalog", "name", "policy", "rng", "strategy")

    def __init__(
        self, name: str, strategy: Strategy, policy: FailoverPolicy, rng: random.Random
    ) -> None:
        self.name = name
        self.catalog = Catalog()
        self.strategy = strategy
        self.policy = policy
        self.rng = rng
        """When the client calls next."""


class _Drain:
    """A drain in progress, and what was counted about it."""

    __slots__ = ("chosen", "fault", "refused", "saw")

    def __init__(self, fault: DrainInstance) -> None:
        self.fault = fault
        self.refused = 0
        self.chosen = 0
        self.saw: dict[str, None] = {}


class _Process:
    """One run of an instance's process: its lifecycle and the requests it works on."""

    __slots__ = ("drain", "lifecycle", "name", "requests", "wake_at")

    def __init__(self, name: str) -> None:
        self.name = name
        self.lifecycle = Lifecycle(name)
        self.requests: dict[int, _Attempt] = {}
        self.drain: _Drain | None = None
        self.wake_at: float | None = None
        """When the lifecycle is next due a tick, once scheduled."""


class _Attempt:
    """One attempt of a client's call (its plan), on one instance."""

    __slots__ = ("client", "done", "instance", "plan", "started")

    def __init__(self, client: _Client, plan: CallPlan, instance: Instance, now: float) -> None:
        self.client = client
        self.plan = plan
        self.instance = instance
        self.started = now
        self.done = False


class _Run:
    """One arm of a scenario on its own cluster."""

    def __init__(self, scenario: Scenario, with_failover: bool) -> None:
        self.scenario = scenario
        self.failover = with_failover
        self.calls = scenario.calls
        self.cluster = Cluster(seed=scenario.seed, profile=scenario.profile)
        self.processes: dict[str, _Process] = {}
        self.drains: dict[str, _Drain] = {}
        self.clients: list[_Client] = []
        self.down = self.most_down = 0
        self.call_log: list[CallRecord] = []
        self.attempt_log: list[AttemptRecord] = []
        self.view_log: list[ViewChange] = []
        self.fault_log: list[FaultRecord] = []
        self.drain_outcomes: list[DrainOutcome] = []

    # ------------------------------------------------------------------ the run

    def run(self) -> ArmResults:
        scenario, cluster = self.scenario, self.cluster
        for name in scenario.instance_names:
            cluster.add_node(name, meta=self._tags(draining=False))
            self.processes[name] = _Process(name)
        retries = self.calls.retries if self.failover else 0
        cooldown = self.calls.cooldown if self.failover else 0.0
        for name in scenario.client_names:
            cluster.add_node(name)
            strategy = STRATEGIES[self.calls.strategy](cluster.random_for(f"strategy:{name}"))
            policy = FailoverPolicy(retries=retries, cooldown=cooldown)
            rng = cluster.random_for(f"calls:{name}")
            self.clients.append(_Client(name, strategy, policy, rng))
        for fault in scenario.faults:
            cluster.at(fault.at, functools.partial(self._apply, fault))
        cluster.schedule(*scenario.network_faults)
        cluster.run_until(scenario.start)
        self._check_discovered()
        for client in self.clients:
            self._schedule_call(client)
        cluster.run_until(scenario.end + self.calls.timeout)
        return self._results()

    def _check_discovered(self) -> None:
        """Every client must know every instance alive when the calls start."""
        scenario = self.scenario
        for client in self.clients:
            self._refresh(client)
            alive = [
                i for i in client.catalog.instances(scenario.service) if i.health is Health.ALIVE
            ]
            if len(alive) < scenario.instances:
                raise SimulationError(
                    f"at start={scenario.start} s, {client.name} knows {len(alive)} of the "
                    f"{scenario.instances} instances of {scenario.service!r} alive; the "
                    "records have not spread yet, so raise start"
                )

    def _results(self) -> ArmResults:
        scenario = self.scenario
        buckets = math.ceil(scenario.end / scenario.bucket)
        calls_per_bucket, failed_per_bucket = [0] * buckets, [0] * buckets
        failures: dict[str, int] = {}
        for call in self.call_log:
            index = min(int(call.started // scenario.bucket), buckets - 1)
            calls_per_bucket[index] += 1
            if call.failure is not None:
                failed_per_bucket[index] += 1
                failures[call.failure] = failures.get(call.failure, 0) + 1
        errors: dict[str, int] = {}
        for attempt in self.attempt_log:
            if attempt.error is not None:
                errors[attempt.error] = errors.get(attempt.error, 0) + 1
        return ArmResults(
            failover=self.failover,
            seed=scenario.seed,
            calls=len(self.call_log),
            failed=sum(failed_per_bucket),
            retried=sum(1 for call in self.call_log if call.attempts > 1),
            failed_after_budget=sum(1 for call in self.call_log if call.budget_spent),
            failures=failures,
            attempt_errors=errors,
            most_down=self.most_down,
            bucket=scenario.bucket,
            calls_per_bucket=tuple(calls_per_bucket),
            failed_per_bucket=tuple(failed_per_bucket),
            drains=tuple(self.drain_outcomes),
            trace_hash=self.cluster.trace.hash,
            call_log=tuple(self.call_log),
            attempt_log=tuple(self.attempt_log),
            view_log=tuple(self.view_log),
            fault_log=tuple(self.fault_log),
        )

    # ------------------------------------------------------------------ instances

    def _tags(self, *, draining: bool) -> bytes:
        """An instance's metadata: Serf tags holding its service record, as ServiceHost
        writes them."""
        record = {self.scenario.service: ServiceRecord(SERVICE_PORT)}
        tags = write_tags({}, record, metadata_port=None, draining=draining)
        return serf_wire.encode_tags(tags, self.cluster.config.meta_max_size)

    def _went_down(self, name: str, what: str) -> None:
        self.fault_log.append(FaultRecord(self.cluster.now, name, what))
        self.down += 1
        self.most_down = max(self.most_down, self.down)

    def _serving(self, fault: InstanceFault) -> _Process:
        process = self.processes.get(fault.instance)
        if process is None or process.lifecycle.phase is not Phase.SERVING:
            state = "stopped" if process is None else process.lifecycle.phase.value
            raise SimulationError(
                f"{fault}: {fault.instance} is {state}, not serving; space the faults on one "
                "instance further apart"
            )
        return process

    def _apply(self, fault: InstanceFault) -> None:
        if isinstance(fault, CrashInstance):
            self._crash(fault)
        else:
            self._drain(fault)

    def _crash(self, fault: CrashInstance) -> None:
        name = fault.instance
        process = self._serving(fault)
        del self.processes[name]
        self.cluster.crash(name)
        self._went_down(name, "crash")
        back = self.cluster.now + self.calls.round_trip / 2
        for attempt in process.requests.values():
            self._answer_at(back, attempt, RESET)
        process.requests.clear()
        if fault.restart_after is not None:
            self._restart_at(self.cluster.now + fault.restart_after, name)

    def _restart_at(self, when: float, name: str) -> None:
        self.cluster.at(when, functools.partial(self._restart, name))

    def _restart(self, name: str) -> None:
        self.cluster.restart(name, meta=self._tags(draining=False))
        self.processes[name] = _Process(name)
        self.fault_log.append(FaultRecord(self.cluster.now, name, "restart"))
        self.down -= 1

    def _drain(self, fault: DrainInstance) -> None:
        process = self._serving(fault)
        process.drain = self.drains[fault.instance] = _Drain(fault)
        self._went_down(fault.instance, "drain")
        process.lifecycle.drain(self.cluster.now, fault.timeout)
        self._drive(process)

    def _drive(self, process: _Process) -> None:
        """Carry out what the instance's lifecycle asks for, as ServiceHost.drain does over
        trio, and wake the lifecycle at its next deadline."""
        cluster, life = self.cluster, process.lifecycle
        while actions := life.take_actions():
            for action in actions:
                match action:
                    case lifecycle.Announce():
                        self._announce(process.name)
                        life.announced(cluster.now)
                    case lifecycle.CutOff(work):
                        back = cluster.now + self.calls.round_trip / 2
                        for each in work:
                            self._answer_at(back, process.requests.pop(each.id), CUT_OFF)
                            life.end(each, cluster.now)
                    case lifecycle.Leave():
                        cluster.leave(process.name)
                        cluster.at(cluster.now, functools.partial(self._await_stop, process))
                    case lifecycle.Finished(report):
                        self._stopped(process, report)
        deadline = life.next_deadline()
        if deadline is not None and deadline != process.wake_at:
            process.wake_at = deadline
            cluster.at(deadline, functools.partial(self._wake, process))

    def _announce(self, name: str) -> None:
        """The draining tag, by gossip: a metadata update, which goes out at once."""
        meta = self._tags(draining=True)
        self.cluster.command(name, lambda engine, now: engine.update_meta(meta, now))

    def _wake(self, process: _Process) -> None:
        process.lifecycle.tick(self.cluster.now)
        self._drive(process)

    def _await_stop(self, process: _Process) -> None:
        """The leave is over once it has gone out and the cluster has stopped the node."""
        cluster = self.cluster
        if cluster.is_running(process.name):
            cluster.at(cluster.now + LEAVE_POLL, functools.partial(self._await_stop, process))
            return
        process.lifecycle.left(cluster.now, ok=True)
        self._drive(process)

    def _stopped(self, process: _Process, report: DrainReport) -> None:
        """The drain is over: record how it went, and restart the instance if it should."""
        name, drain, now = process.name, process.drain, self.cluster.now
        assert drain is not None
        del self.processes[name]
        self.drain_outcomes.append(
            DrainOutcome(name, report, drain.refused, len(drain.saw), drain.chosen)
        )
        self.fault_log.append(FaultRecord(now, name, "stopped"))
        if drain.fault.restart_after is not None:
            self._restart_at(now + drain.fault.restart_after, name)

    # ------------------------------------------------------------------ clients

    def _refresh(self, client: _Client) -> None:
        now = self.cluster.now
        members = self.cluster.engine(client.name).members()
        for change in client.catalog.sync(members, complete=True):  # Discovery's re-sync
            instance = change.instance
            self.view_log.append(
                ViewChange(
                    now, client.name, instance.node, change.kind.value, instance.health.value
                )
            )
            drain = self.drains.get(instance.node)
            if change.kind is ChangeKind.DRAINING and drain is not None:
                drain.saw[client.name] = None

    def _lookup(self, client: _Client) -> list[Instance] | LookupError:
        """What Discovery.call's lookup finds: the client's catalog brought up to date, then
        the service's instances in it, or why there are none."""
        self._refresh(client)
        try:
            return lookup([client.catalog], self.scenario.service)
        except LookupError as exc:
            return exc

    def _schedule_call(self, client: _Client) -> None:
        when = self.cluster.now + client.rng.expovariate(self.calls.rate)
        if when < self.scenario.end:
            self.cluster.at(when, functools.partial(self._start_call, client))

    def _start_call(self, client: _Client) -> None:
        now = self.cluster.now
        self._schedule_call(client)
        deadline = now + self.calls.timeout
        self._follow(
            client, client.policy.plan(self.scenario.service, client.strategy, now, deadline)
        )

    def _follow(self, client: _Client, plan: CallPlan) -> None:
        """Carry out the call's next step, as Discovery.call does over trio."""
        match plan.step:
            case failover.Lookup():
                plan.resolved(self._lookup(client), self.cluster.now)
                self._follow(client, plan)
            case failover.Try(instance):
                self._attempt(client, plan, instance)
            case failover.Done():
                self._finish(client, plan, None)
            case failover.GiveUp(error):
                self._finish(client, plan, error)

    def _attempt(self, client: _Client, plan: CallPlan, instance: Instance) -> None:
        now = self.cluster.now
        if instance.health is Health.DRAINING:
            drain = self.drains.get(instance.node)
            if drain is not None:
                drain.chosen += 1
        attempt = _Attempt(client, plan, instance, now)
        self.cluster.at(now + self.calls.round_trip / 2, functools.partial(self._reach, attempt))
        deadline = plan.next_deadline()
        assert deadline is not None  # every simulated call has one
        self.cluster.at(deadline, functools.partial(self._out_of_time, attempt))

    def _reach(self, attempt: _Attempt) -> None:
        """The attempt reaches its instance: refused, unanswered, or taken on."""
        if attempt.done:
            return
        cluster, calls = self.cluster, self.calls
        name = attempt.instance.node
        back = cluster.now + calls.round_trip / 2
        if not cluster.is_running(name):
            self._answer_at(back, attempt, REFUSED)
            return
        if not cluster.reachable(attempt.client.name, name):
            self._answer_at(attempt.started + calls.connect_timeout, attempt, TIMED_OUT)
            return
        process = self.processes[name]
        try:
            work = process.lifecycle.begin(self.scenario.service, Kind.REQUEST, cluster.now)
        except NotAccepting:
            if process.drain is not None:
                process.drain.refused += 1
            self._answer_at(back, attempt, NOT_ACCEPTING)
            return
        process.requests[work.id] = attempt
        cluster.at(cluster.now + calls.service_time, functools.partial(self._served, process, work))

    def _served(self, process: _Process, work: Work) -> None:
        """The instance finished a request, unless it crashed or cut it off meanwhile."""
        attempt = process.requests.pop(work.id, None)
        if attempt is None:
            return
        process.lifecycle.end(work, self.cluster.now)
        self._answer_at(self.cluster.now + self.calls.round_trip / 2, attempt, None)
        self._drive(process)

    def _answer_at(self, when: float, attempt: _Attempt, error: str | None) -> None:
        self.cluster.at(when, functools.partial(self._answer, attempt, error))

    def _answer(self, attempt: _Attempt, error: str | None) -> None:
        """The attempt's outcome reaches the client (unless its call's deadline came first)."""
        if self._close(attempt, error):
            if error is None:
                attempt.plan.finished(self.cluster.now)
            else:
                attempt.plan.failed(error, self.cluster.now)
            self._follow(attempt.client, attempt.plan)

    def _out_of_time(self, attempt: _Attempt) -> None:
        """The call's deadline, reached with the attempt in flight (unless it was answered)."""
        if self._close(attempt, failover.DEADLINE_PASSED):
            attempt.plan.tick(self.cluster.now)
            self._follow(attempt.client, attempt.plan)

    def _close(self, attempt: _Attempt, error: str | None) -> bool:
        """Record the attempt's outcome; False when it already had one."""
        if attempt.done:
            return False
        attempt.done = True
        client, instance, now = attempt.client.name, attempt.instance, self.cluster.now
        health = instance.health.value
        self.attempt_log.append(
            AttemptRecord(client, instance.node, attempt.started, now, health, error)
        )
        return True

    def _finish(
        self, client: _Client, plan: CallPlan, error: LookupError | CallFailed | None
    ) -> None:
        failure = None
        if error is not None:
            failure = error.reason if isinstance(error, CallFailed) else type(error).__name__
        attempts = len(plan.attempts) + (error is None)
        spent = error is not None and len(plan.attempts) > plan.policy.retries
        self.call_log.append(
            CallRecord(client.name, plan.started, self.cluster.now, attempts, failure, spent)
        )
