"""Named experiments: a scenario turns a cluster size, a duration and a few parameters into a
fault schedule, and :func:`run` plays it on a fresh cluster and returns the results.

Victims are picked from the end of the name list (``n{N-1}``, ``n{N-2}``, ...), so that the
same parameters always hit the same nodes.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

from simulator.cluster import Cluster
from simulator.faults import (
    Churn,
    Crash,
    Fault,
    Flap,
    Leave,
    LinkChange,
    OneWay,
    Pause,
    Query,
    ScheduleError,
    Slow,
    Split,
    UserEvent,
)
from simulator.metrics import Results
from simulator.network import PROFILE_LINKS, Link
from swim.config import Config, ConfigError
from swim.serf.layer import AGENT_COALESCE_PERIOD, AGENT_QUIESCENT_PERIOD

Params = dict[str, float | str]
Setting = float | int | bool | str
"""The value of one :class:`~swim.config.Config` field."""


@dataclass(frozen=True, slots=True)
class Scenario:
    """A named schedule builder and its parameters' defaults."""

    name: str
    summary: str
    defaults: Mapping[str, float | str]
    build: Callable[[Sequence[str], float, Params], list[Fault]]
    serf: bool = False
    """Every node runs the Serf layer (coalescing user events as a Serf agent does)."""


def _number(params: Params, name: str) -> float:
    value = params[name]
    if isinstance(value, str):
        raise ScheduleError(f"parameter {name}={value!r} must be a number")
    return float(value)


def _victims(names: Sequence[str], count: float) -> list[str]:
    wanted = int(count)
    if not 0 <= wanted < len(names):
        raise ScheduleError(
            f"count={wanted} must leave at least one node running; use at most {len(names) - 1}"
        )
    return list(names[len(names) - wanted :])


def _steady(names: Sequence[str], duration: float, params: Params) -> list[Fault]:
    return []


def _crash(names: Sequence[str], duration: float, params: Params) -> list[Fault]:
    at, gap = _number(params, "at"), _number(params, "gap")
    return [
        Crash(at + i * gap, name)
        for i, name in enumerate(_victims(names, _number(params, "count")))
    ]


def _restart(names: Sequence[str], duration: float, params: Params) -> list[Fault]:
    at, down = _number(params, "at"), _number(params, "down")
    moved = bool(_number(params, "new_address"))
    return [
        Crash(at, name, restart_after=down, new_address=moved)
        for name in _victims(names, _number(params, "count"))
    ]


def _leave(names: Sequence[str], duration: float, params: Params) -> list[Fault]:
    at = _number(params, "at")
    return [Leave(at, name) for name in _victims(names, _number(params, "count"))]


def _churn(names: Sequence[str], duration: float, params: Params) -> list[Fault]:
    rate = _number(params, "rate")
    restart_after = _number(params, "restart_after")
    end = duration - _number(params, "settle")
    return [
        Churn(
            at=_number(params, "at"),
            end=end,
            crash_rate=rate / 2,
            leave_rate=rate / 4,
            join_rate=rate / 4,
            restart_after=restart_after if restart_after > 0 else None,
        )
    ]


def _partition(names: Sequence[str], duration: float, params: Params) -> list[Fault]:
    at, heal = _number(params, "at"), _number(params, "heal")
    shape = params["shape"]
    if shape == "halves":
        return [Split.halves(at, names, heal)]
    if shape == "isolate":
        return [Split.isolate(at, names[-1], names, heal)]
    if shape == "ring":
        return [Split.ring(at, names, 4, heal)]
    if shape == "bridge":
        return [Split.bridge(at, names, heal)]
    if shape == "one-way":
        middle = len(names) // 2
        return [OneWay(at, tuple(names[:middle]), tuple(names[middle:]), heal)]
    raise ScheduleError(
        f"shape={shape!r} is unknown; choose halves, isolate, ring, bridge or one-way"
    )


def _lossy_member(names: Sequence[str], duration: float, params: Params) -> list[Fault]:
    return [
        LinkChange(
            _number(params, "at"),
            loss=_number(params, "ingress_loss"),
            nodes=(names[-1],),
            direction="in",
        )
    ]


def _flapping(names: Sequence[str], duration: float, params: Params) -> list[Fault]:
    at, period = _number(params, "at"), _number(params, "period")
    return [Flap(at, tuple(names[:-1]), (names[-1],), period, max(0.0, duration - at))]


def _slow(names: Sequence[str], duration: float, params: Params) -> list[Fault]:
    lasting = _number(params, "for")
    return [Slow(_number(params, "at"), names[-1], _number(params, "delay"), lasting or None)]


def _pause(names: Sequence[str], duration: float, params: Params) -> list[Fault]:
    return [Pause(_number(params, "at"), names[-1], _number(params, "for"))]


def _serf(names: Sequence[str], duration: float, params: Params) -> list[Fault]:
    """User events every `every` seconds and queries every `query_every` seconds, from
    members in turn, until `settle` seconds before the end; a split of the cluster into halves
    at `split_at` for `split_for` seconds; the last member crashing at `crash_at` and coming
    back 10 s later; and a burst of five coalescable "deploy" events at `burst_at`."""
    every, query_every = _number(params, "every"), _number(params, "query_every")
    end = duration - _number(params, "settle")
    faults: list[Fault] = []
    time, index = 1.0, 0
    while every > 0 and time <= end:
        faults.append(UserEvent(time, names[index % len(names)], f"event-{index}"))
        time, index = time + every, index + 1
    time, index = 2.0, 0
    while query_every > 0 and time <= end:
        faults.append(Query(time, names[(index * 7) % len(names)], f"query-{index}"))
        time, index = time + query_every, index + 1
    burst = _number(params, "burst_at")
    if burst > 0:
        faults += [
            UserEvent(burst + i * 0.1, names[0], "deploy", f"v{i}", coalesce=True) for i in range(5)
        ]
    split_at, split_for = _number(params, "split_at"), _number(params, "split_for")
    if split_for > 0:
        faults.append(Split.halves(split_at, names, split_for))
    crash_at = _number(params, "crash_at")
    if crash_at > 0:
        faults.append(Crash(crash_at, names[-1], restart_after=10.0))
    return faults


SCENARIOS: dict[str, Scenario] = {
    scenario.name: scenario
    for scenario in (
        Scenario("steady", "no faults: the protocol's standing cost", {}, _steady),
        Scenario(
            "crash",
            "`count` members crash, from `at`, `gap` seconds apart: detection times",
            {"count": 1, "at": 10.0, "gap": 0.0},
            _crash,
        ),
        Scenario(
            "restart",
            "`count` members crash at `at` and come back `down` seconds later "
            "(at a new address when `new_address` is 1)",
            {"count": 1, "at": 10.0, "down": 5.0, "new_address": 0},
            _restart,
        ),
        Scenario(
            "leave",
            "`count` members leave gracefully at `at`",
            {"count": 1, "at": 10.0},
            _leave,
        ),
        Scenario(
            "churn",
            "from `at` until `settle` seconds before the end, `rate` membership changes per "
            "second (half crashes, a quarter leaves, a quarter joins); the departed return "
            "after `restart_after` seconds (0: never)",
            {"rate": 0.2, "at": 5.0, "settle": 60.0, "restart_after": 20.0},
            _churn,
        ),
        Scenario(
            "partition",
            "at `at` the network splits (`shape`: halves, isolate, ring, bridge, one-way) "
            "and is repaired `heal` seconds later: time to one view again",
            {"at": 10.0, "heal": 30.0, "shape": "halves"},
            _partition,
        ),
        Scenario(
            "flaky",
            "every link loses `--loss` of its packets (10% unless given): false alarms",
            {},
            _steady,
        ),
        Scenario(
            "lossy-member",
            "from `at`, the last member loses `ingress_loss` of the packets sent to it (its "
            "own still go out): false alarms about it, and from it",
            {"at": 10.0, "ingress_loss": 0.2},
            _lossy_member,
        ),
        Scenario(
            "flapping",
            "from `at`, everything sent to the last member is cut for `period` s, then flows "
            "for `period` s, and so on (its own packets still go out): a link that comes "
            "and goes",
            {"at": 10.0, "period": 5.0},
            _flapping,
        ),
        Scenario(
            "slow-node",
            "from `at`, the last member handles every message `delay` seconds late, for "
            "`for` seconds (0: to the end): Lifeguard's case",
            {"at": 10.0, "delay": 1.5, "for": 0.0},
            _slow,
        ),
        Scenario(
            "pause",
            "at `at` the last member freezes for `for` seconds (stop-the-world) and resumes",
            {"at": 10.0, "for": 10.0},
            _pause,
        ),
        Scenario(
            "coordinates",
            "Serf layers on every member and no faults: how well Serf's network coordinates "
            "estimate round trips (--profile wan gives links of different latencies)",
            {},
            _steady,
            serf=True,
        ),
        Scenario(
            "serf",
            "Serf layers on every member: a user event every `every` s and a query every "
            "`query_every` s until `settle` s before the end, a split into halves at "
            "`split_at` for `split_for` s, the last member crashing at `crash_at` (back 10 s "
            "later), five coalescable events at `burst_at`: reach of events, answers",
            {
                "every": 2.0,
                "query_every": 10.0,
                "settle": 40.0,
                "split_at": 30.0,
                "split_for": 15.0,
                "crash_at": 60.0,
                "burst_at": 20.0,
            },
            _serf,
            serf=True,
        ),
    )
}
"""Every scenario by name."""

FLAKY_LOSS = 0.1
"""The loss of the flaky scenario when ``--loss`` is not given."""


def resolve_params(scenario: Scenario, given: Mapping[str, float | str]) -> Params:
    """The scenario's defaults overridden by ``given``; unknown names are an error."""
    unknown = sorted(set(given) - set(scenario.defaults))
    if unknown:
        known = ", ".join(scenario.defaults) or "none"
        raise ScheduleError(
            f"scenario {scenario.name!r} has no parameter {', '.join(unknown)}; it takes: {known}"
        )
    params: Params = dict(scenario.defaults)
    for name, value in given.items():
        default = scenario.defaults[name]
        if isinstance(default, str):
            params[name] = str(value)
        else:
            try:
                params[name] = float(value)
            except ValueError:
                raise ScheduleError(f"parameter {name}={value!r} must be a number") from None
    return params


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_FIELDS: dict[str, Setting] = {
    spec.name: getattr(Config(), spec.name) for spec in dataclasses.fields(Config)
}
"""Every Config field and its LAN default, whose type is the field's."""


def setting(name: str, value: Setting) -> Setting:
    """The value of Config field ``name`` from ``value``, or from its text (``"0.5"``,
    ``"true"``), as ``--set`` gives it; the range is checked when the Config is built."""
    default = _FIELDS.get(name)
    if default is None:
        close = difflib.get_close_matches(name, _FIELDS, n=1)
        hint = f"did you mean {close[0]}?" if close else f"fields: {', '.join(_FIELDS)}"
        raise ConfigError(f"Config has no field {name!r}; {hint}")
    text = str(value).strip()
    if isinstance(default, bool):
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ConfigError(f"{name}={text!r} must be true or false")
    if isinstance(default, str):
        return text
    try:
        return int(text) if isinstance(default, int) else float(text)
    except ValueError:
        kind = "a whole number" if isinstance(default, int) else "a number"
        raise ConfigError(f"{name}={text!r} must be {kind}") from None


def make_config(profile: str, compress: bool, settings: Mapping[str, Setting]) -> Config:
    """The profile's Config with ``compress`` and ``settings`` (values or their text: see
    :func:`setting`) applied and validated."""
    if profile not in PROFILE_LINKS:
        raise ScheduleError(f"profile={profile!r} is unknown; choose lan, wan or local")
    changes = {name: setting(name, value) for name, value in settings.items()}
    return Config.profile(profile, **{"compression": compress, **changes})


def build_cluster(
    *,
    nodes: int,
    seed: int,
    profile: str = "lan",
    loss: float = 0.0,
    encrypt: bool = False,
    compress: bool = True,
    start: str = "converged",
    serf: bool = False,
    config: Config | None = None,
    progress: Callable[[float], None] | None = None,
) -> Cluster:
    """A cluster on the profile's default link, with ``loss`` on every path (and Serf layers
    that coalesce user events as a Serf agent does, with ``serf``); ``config`` replaces the
    profile's (``compress`` applies to the profile's only)."""
    if profile not in PROFILE_LINKS:
        raise ScheduleError(f"profile={profile!r} is unknown; choose lan, wan or local")
    link: Link = PROFILE_LINKS[profile].replace(loss=loss)
    return Cluster(
        nodes,
        seed=seed,
        profile=profile,
        config=config,
        link=link,
        encrypt=encrypt,
        compress=compress,
        start=start,
        serf=serf,
        coalesce_period=AGENT_COALESCE_PERIOD if serf else 0.0,
        quiescent_period=AGENT_QUIESCENT_PERIOD if serf else 0.0,
        progress=progress,
    )


class PlayOptions(TypedDict, total=False):
    """How a scenario is played, beside its name, size, seed and length (see :func:`run`)."""

    profile: str
    loss: float | None
    params: Mapping[str, float | str] | None
    settings: Mapping[str, Setting] | None
    schedule: Sequence[Fault] | None
    encrypt: bool
    compress: bool
    start: str
    progress: Callable[[float], None] | None


def run(
    scenario: str, *, nodes: int, seed: int, duration: float, **options: Unpack[PlayOptions]
) -> tuple[Cluster, Results]:
    """Play ``scenario`` (plus any extra ``schedule``) on a fresh cluster for ``duration``
    virtual seconds; returns the cluster (to look further) and its results."""
    play = prepare(scenario, nodes=nodes, seed=seed, duration=duration, **options)
    play.cluster.run_until(duration)
    return play.cluster, play.results()


@dataclass(frozen=True, slots=True)
class Play:
    """A scenario ready to run: the cluster with every fault scheduled, and what its results
    carry in ``extra``."""

    cluster: Cluster
    extra: dict[str, Any]

    def results(self) -> Results:
        """What the cluster measured so far (all of it once run to the end)."""
        cluster = self.cluster
        return cluster.results({**self.extra, "detection_bound": cluster.detection_bound()})


def prepare(
    scenario: str, *, nodes: int, seed: int, duration: float, **options: Unpack[PlayOptions]
) -> Play:
    """What :func:`run` plays, before it runs: so that a run stopped early can still report
    what it measured."""
    found, resolved, loss, config = _resolve(scenario, nodes, options)
    profile, encrypt = options.get("profile", "lan"), options.get("encrypt", False)
    cluster = build_cluster(
        nodes=nodes,
        seed=seed,
        profile=profile,
        loss=loss,
        encrypt=encrypt,
        start=options.get("start", "converged"),
        serf=found.serf,
        config=config,
        progress=options.get("progress"),
    )
    schedule = options.get("schedule") or []
    faults = [*found.build(cluster.names(), duration, resolved), *schedule]
    cluster.schedule(*faults)
    extra: dict[str, Any] = {
        "scenario": scenario,
        "params": resolved,
        "settings": {name: getattr(config, name) for name in options.get("settings") or {}},
        "profile": profile,
        "loss": loss,
        "encrypt": encrypt,
        "compress": config.compression,
        "schedule": [fault.to_dict() for fault in faults],
    }
    return Play(cluster, extra)


def validate(
    scenario: str, *, nodes: int, duration: float, **options: Unpack[PlayOptions]
) -> tuple[Params, float]:
    """Raise what :func:`prepare` would raise for these options, without building a cluster
    (which takes long for thousands of nodes), to check many runs before starting any; else
    return the parameters and the loss the run would use."""
    found, resolved, loss, _ = _resolve(scenario, nodes, options)
    PROFILE_LINKS[options.get("profile", "lan")].replace(loss=loss)
    found.build([f"n{i}" for i in range(nodes)], duration, resolved)  # as Cluster names them
    return resolved, loss


def _resolve(
    scenario: str, nodes: int, options: PlayOptions
) -> tuple[Scenario, Params, float, Config]:
    """The scenario, its parameters, the loss and the Config that ``options`` give."""
    found = SCENARIOS.get(scenario)
    if found is None:
        raise ScheduleError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
    if nodes < 2:
        raise ScheduleError(f"nodes={nodes}: a cluster needs at least 2 members")
    resolved = resolve_params(found, options.get("params") or {})
    loss = options.get("loss")
    if loss is None:
        loss = FLAKY_LOSS if scenario == "flaky" else 0.0
    config = make_config(
        options.get("profile", "lan"), options.get("compress", True), options.get("settings") or {}
    )
    return found, resolved, loss, config
