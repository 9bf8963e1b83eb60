"""Protocol configuration: memberlist's defaults as profiles, validated on construction."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

from swim.wire.limits import DEFAULT_META_MAX_BYTES, UDP_BUFFER_BYTES

HOUR = 3600.0


class ConfigError(ValueError):
    """A configuration value is out of range; the message names the field and the range."""


@dataclass(frozen=True, slots=True)
class Config:
    """How a node probes, gossips and heals; times are in seconds.

    Build one from a profile and vary it: ``Config.lan().replace(probe_interval=0.5)``.  The
    profiles hold memberlist's ``DefaultLANConfig``, ``DefaultWANConfig`` and
    ``DefaultLocalConfig``; the fields below them are shoal's additions.
    """

    probe_interval: float = 1.0
    """How often one member is probed (scaled by the local health score)."""
    probe_timeout: float = 0.5
    """How long to wait for a direct ack before asking others to probe."""
    indirect_checks: int = 3
    """How many members are asked to probe a member that missed its ack."""
    retransmit_mult: int = 4
    """Each broadcast is sent ``retransmit_mult * ceil(log10(n + 1))`` times."""
    suspicion_mult: int = 4
    """The suspicion timeout is ``suspicion_mult * log10(n) * probe_interval`` at least."""
    suspicion_max_timeout_mult: int = 6
    """An unconfirmed suspicion lasts this many times the minimum timeout."""
    push_pull_interval: float = 30.0
    """How often the full state is exchanged with one random member (0 disables)."""
    gossip_interval: float = 0.2
    """How often queued broadcasts are sent to ``gossip_nodes`` random members."""
    gossip_nodes: int = 3
    """How many members each gossip round goes to."""
    gossip_to_the_dead_time: float = 30.0
    """How long dead members still receive gossip (a chance to refute) before being reaped."""
    tcp_timeout: float = 10.0
    """Deadline of a stream: push-pull, fallback ping, reliable message."""
    disable_tcp_pings: bool = False
    """Skip the TCP fallback ping that runs beside indirect probes."""
    awareness_max_multiplier: int = 8
    """The local health score ranges over ``0 .. awareness_max_multiplier - 1``."""
    udp_buffer_size: int = UDP_BUFFER_BYTES
    """The largest packet this node builds."""
    compression: bool = True
    """Compress packets when that makes them smaller, and always compress streams."""
    protocol_version: int = 2
    """The memberlist protocol version this node speaks (it understands 1 to 5)."""
    delegate_protocol_min: int = 2
    delegate_protocol_max: int = 5
    delegate_protocol_version: int = 5
    """The delegate (Serf) protocol range and version advertised in ``Vsn``, as a Serf agent's."""
    label: str = ""
    """Prefix every packet and stream with this label and refuse traffic without it."""
    verify_incoming: bool = True
    """With a keyring, refuse plaintext traffic (turn off while a cluster migrates)."""
    verify_outgoing: bool = True
    """With a keyring, encrypt what we send (turn off while a cluster migrates)."""

    # shoal's additions
    lifeguard: bool = True
    """Local health, dynamic suspicion and the buddy system; off gives plain SWIM timing."""
    meta_max_size: int = DEFAULT_META_MAX_BYTES
    """The largest metadata a node may advertise (memberlist panics past 512; we refuse)."""
    dead_node_reclaim_time: float = 0.0
    """How long a dead member's name stays bound to its address before a node at a new
    address may take it (a left member's name is free at once)."""
    reconnect_interval: float = 30.0
    """How often to try a push-pull with a dead or left member or a seed, so that healed
    partitions merge (0 disables)."""
    reconnect_timeout: float = 24 * HOUR
    """How long dead and left members stay reconnect candidates."""
    left_member_retention: float = 30.0
    """How long left members stay in the member list (memberlist 0.2.2 never reaps them)."""
    user_broadcast_share: float = 0.5
    """The share of each packet's broadcast space kept for user messages while they wait."""
    leave_timeout: float = 5.0
    """How long a leave waits for its broadcast to go out."""
    isolation_timeout: float = 10.0
    """Silence from every peer for this long makes a node report itself isolated."""
    max_members: int = 50_000
    """The most members this node holds, itself included; news of more is refused and
    logged, so that a flood of fake members cannot take its memory.  A push-pull announcing
    more is refused whole.  Raise it on every node of a larger cluster."""
    max_new_members_per_message: int = 32
    """How many members one datagram, or one push-pull that a peer opens, may introduce (a
    full gossip packet holds fewer); the rest arrive later by gossip or push-pull.  The reply
    to a push-pull this node opens, a join's among them, is not limited."""
    trust_strangers: bool = False
    """Take news of new members from any address.  By default a datagram from an address that
    is no member's may introduce only its sender, so that a host outside the cluster cannot
    fill it with fake members; turn this on behind NAT, where members' datagrams come from
    addresses other than those they advertise."""
    replay_window: int = 16_384
    """How many recent encrypted datagrams are remembered so that an exact replay of one is
    refused (memberlist accepts replays); 0 turns the check off."""

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            _check(spec.name, getattr(self, spec.name))
        if self.probe_timeout > self.probe_interval:
            raise ConfigError(
                f"probe_timeout={self.probe_timeout} must not exceed "
                f"probe_interval={self.probe_interval}; lower the timeout or raise the interval"
            )
        if not (
            self.delegate_protocol_min
            <= self.delegate_protocol_version
            <= self.delegate_protocol_max
        ):
            raise ConfigError(
                f"delegate_protocol_version={self.delegate_protocol_version} must lie in "
                f"[delegate_protocol_min={self.delegate_protocol_min}, "
                f"delegate_protocol_max={self.delegate_protocol_max}]"
            )
        if self.meta_max_size > self.udp_buffer_size - 100:
            raise ConfigError(
                f"meta_max_size={self.meta_max_size} leaves no room in a "
                f"{self.udp_buffer_size}-byte packet; keep it at most udp_buffer_size - 100"
            )

    @classmethod
    def lan(cls, **changes: Any) -> Config:
        """memberlist's LAN defaults: 1 s probes, 500 ms timeout, 200 ms gossip."""
        return cls(**changes)

    @classmethod
    def wan(cls, **changes: Any) -> Config:
        """memberlist's WAN defaults: slower probes and gossip, longer suspicion."""
        return cls(
            **{
                "tcp_timeout": 30.0,
                "suspicion_mult": 6,
                "push_pull_interval": 60.0,
                "probe_timeout": 3.0,
                "probe_interval": 5.0,
                "gossip_nodes": 4,
                "gossip_interval": 0.5,
                "gossip_to_the_dead_time": 60.0,
                **changes,
            }
        )

    @classmethod
    def local(cls, **changes: Any) -> Config:
        """memberlist's loopback defaults: short timeouts, fewer indirect checks."""
        return cls(
            **{
                "tcp_timeout": 1.0,
                "indirect_checks": 1,
                "retransmit_mult": 2,
                "suspicion_mult": 3,
                "push_pull_interval": 15.0,
                "probe_timeout": 0.2,
                "gossip_interval": 0.1,
                "gossip_to_the_dead_time": 15.0,
                **changes,
            }
        )

    @classmethod
    def profile(cls, name: str, **changes: Any) -> Config:
        """The profile called ``name`` (lan, wan or local)."""
        factory = {"lan": cls.lan, "wan": cls.wan, "local": cls.local}.get(name)
        if factory is None:
            raise ConfigError(f"unknown profile {name!r}; choose lan, wan or local")
        return factory(**changes)

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied and validated."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    @property
    def vsn(self) -> bytes:
        """The six protocol version bytes every alive message carries."""
        return bytes(
            (
                1,
                5,
                self.protocol_version,
                self.delegate_protocol_min,
                self.delegate_protocol_max,
                self.delegate_protocol_version,
            )
        )


# field -> (kind, low, high); a closed range, with high None meaning unbounded
_RANGES: dict[str, tuple[type, float, float | None]] = {
    "probe_interval": (float, 0.001, HOUR),
    "probe_timeout": (float, 0.001, HOUR),
    "indirect_checks": (int, 0, 32),
    "retransmit_mult": (int, 1, 64),
    "suspicion_mult": (int, 1, 64),
    "suspicion_max_timeout_mult": (int, 1, 1000),
    "push_pull_interval": (float, 0.0, None),
    "gossip_interval": (float, 0.001, HOUR),
    "gossip_nodes": (int, 0, 64),
    "gossip_to_the_dead_time": (float, 0.0, None),
    "tcp_timeout": (float, 0.001, HOUR),
    "disable_tcp_pings": (bool, 0, 1),
    "awareness_max_multiplier": (int, 1, 64),
    "udp_buffer_size": (int, 576, 65_000),
    "compression": (bool, 0, 1),
    "protocol_version": (int, 1, 5),
    "delegate_protocol_min": (int, 0, 255),
    "delegate_protocol_max": (int, 0, 255),
    "delegate_protocol_version": (int, 0, 255),
    "label": (str, 0, 255),
    "verify_incoming": (bool, 0, 1),
    "verify_outgoing": (bool, 0, 1),
    "lifeguard": (bool, 0, 1),
    "meta_max_size": (int, 0, 64_000),
    "dead_node_reclaim_time": (float, 0.0, None),
    "reconnect_interval": (float, 0.0, None),
    "reconnect_timeout": (float, 0.0, None),
    "left_member_retention": (float, 0.0, None),
    "user_broadcast_share": (float, 0.0, 1.0),
    "leave_timeout": (float, 0.0, HOUR),
    "isolation_timeout": (float, 0.001, None),
    "max_members": (int, 1, None),
    "max_new_members_per_message": (int, 1, None),
    "trust_strangers": (bool, 0, 1),
    "replay_window": (int, 0, 1 << 24),
}


def _check(name: str, value: object) -> None:
    kind, low, high = _RANGES[name]
    span = f"[{low}, {high}]" if high is not None else f">= {low}"
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}={value!r} must be True or False")
        return
    if kind is str:
        if not isinstance(value, str) or len(value.encode()) > 255:
            raise ConfigError(f"{name}={value!r} must be a string of at most 255 bytes")
        return
    numeric = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, numeric):
        raise ConfigError(f"{name}={value!r} must be {'an integer' if kind is int else 'a number'}")
    if not math.isfinite(value) or value < low or (high is not None and value > high):
        unit = " seconds" if kind is float and name not in ("user_broadcast_share",) else ""
        raise ConfigError(f"{name}={value!r} is out of range; valid{unit}: {span}")


_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """A Go duration (``500ms``, ``1m30s``, ``0``), as Serf's flags take them, in seconds;
    ValueError for anything else."""
    if text == "0":
        return 0.0
    parts = list(_DURATION_PART.finditer(text))
    if not parts or "".join(p.group() for p in parts) != text:
        raise ValueError(f"{text!r} is not a duration such as 5s, 500ms or 1m30s")
    return sum(float(p.group(1)) * _DURATION_UNITS[p.group(2)] for p in parts)
