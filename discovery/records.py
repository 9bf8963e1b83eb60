"""The registration record: how a node's service instances travel in its Serf tags.

One tag per instance, readable by any Serf user (``serf members -tag svc.orders=.``)::

    svc.orders = p=8080,g=blue,v=1.4.2,w=50,r=9f3a06c1

``p`` port (required), ``g`` group, ``v`` version, ``w`` weight (default 100), ``r`` metadata
revision in hex (absent: no metadata; see :mod:`discovery.introspection`), ``h`` host when the
service listens elsewhere than the node's address, ``t`` tags joined by ``;`` (Consul's service
tags: the gateway and DNS filter on them), ``i`` an instance ID when it differs from the
service name (Consul's ``ID``).  A node advertises one instance per service name (the tag key
is the name).  Defaults are left out, so a record takes
some 30 bytes and the default 512-byte metadata limit holds about fifteen services.  Two
node-level tags sit beside them: ``svc-meta=<port>``, where the node's metadata service
listens, and ``svc-draining=1`` while the node drains; they use ``-`` rather than ``.`` so that
no service name can collide with them.  Unknown fields are ignored, so later versions can add
some.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from swim.wire import serf as serf_wire

SERVICE_PREFIX = "svc."
METADATA_PORT_TAG = "svc-meta"
DRAINING_TAG = "svc-draining"
DEFAULT_WEIGHT = 100
MAX_WEIGHT = 65_535

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
_LABEL = re.compile(r"[A-Za-z0-9_.:+/@~-]{0,64}\Z")
_HOST = re.compile(r"[A-Za-z0-9_.:-]{1,253}\Z")
TAG_SEPARATOR = ";"
MAX_TAGS = 16


class RegistrationError(ValueError):
    """A registration cannot be advertised as given; the message names the field and the rule."""


class RegistrationTooLarge(RegistrationError):
    """The registrations do not fit in the node's metadata limit."""


def check_name(name: str) -> str:
    """``name`` if it is a valid service name, else :class:`RegistrationError`."""
    if not _NAME.match(name):
        raise RegistrationError(
            f"service name {name!r} is invalid; use 1-63 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    """What the tag says about one service instance."""

    port: int
    group: str = ""
    version: str = ""
    weight: int = DEFAULT_WEIGHT
    revision: int = 0
    host: str | None = None
    tags: tuple[str, ...] = ()
    instance_id: str = ""
    """Empty: the service name is the instance's ID."""

    def __post_init__(self) -> None:
        if not 0 < self.port < 65_536:
            raise RegistrationError(f"port {self.port} is outside 1..65535")
        if not 0 <= self.weight <= MAX_WEIGHT:
            raise RegistrationError(f"weight {self.weight} is outside 0..{MAX_WEIGHT}")
        if self.revision < 0:
            raise RegistrationError(f"revision {self.revision} is negative")
        for field, value in (("group", self.group), ("version", self.version)):
            if not _LABEL.match(value):
                raise RegistrationError(
                    f"{field} {value!r} is invalid; use at most 64 letters, digits or _.:+/@~-"
                )
        if self.host is not None and not _HOST.match(self.host):
            raise RegistrationError(f"host {self.host!r} is not an IP address or host name")
        if len(self.tags) > MAX_TAGS:
            raise RegistrationError(f"{len(self.tags)} tags, over the limit of {MAX_TAGS}")
        for tag in self.tags:
            if not tag or not _LABEL.match(tag):
                raise RegistrationError(
                    f"tag {tag!r} is invalid; use 1-64 letters, digits or _.:+/@~- per tag"
                )
        if self.instance_id and not _NAME.match(self.instance_id):
            raise RegistrationError(
                f"instance ID {self.instance_id!r} is invalid; use 1-63 letters, digits, '_', "
                "'.' or '-', starting with a letter or digit"
            )

    def encode(self) -> str:
        """The tag value: ``p=8080`` and every field that differs from its default."""
        fields = [f"p={self.port}"]
        if self.group:
            fields.append(f"g={self.group}")
        if self.version:
            fields.append(f"v={self.version}")
        if self.weight != DEFAULT_WEIGHT:
            fields.append(f"w={self.weight}")
        if self.revision:
            fields.append(f"r={self.revision:x}")
        if self.host is not None:
            fields.append(f"h={self.host}")
        if self.tags:
            fields.append(f"t={TAG_SEPARATOR.join(self.tags)}")
        if self.instance_id:
            fields.append(f"i={self.instance_id}")
        return ",".join(fields)

    @classmethod
    def decode(cls, text: str) -> ServiceRecord:
        """Parse a tag value; raises :class:`RegistrationError` saying what is wrong."""
        fields: dict[str, str] = {}
        for part in text.split(","):
            key, sep, value = part.partition("=")
            if not sep:
                raise RegistrationError(f"field {part!r} has no '='")
            fields[key] = value
        if "p" not in fields:
            raise RegistrationError("no port (p=)")
        try:
            return cls(
                port=int(fields["p"]),
                group=fields.get("g", ""),
                version=fields.get("v", ""),
                weight=int(fields.get("w", DEFAULT_WEIGHT)),
                revision=int(fields.get("r", "0"), 16),
                host=fields.get("h"),
                tags=tuple(fields["t"].split(TAG_SEPARATOR)) if fields.get("t") else (),
                instance_id=fields.get("i", ""),
            )
        except ValueError as exc:
            raise RegistrationError(f"bad field in {text!r}: {exc}") from None


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """Everything discovery reads from one node's tags."""

    services: Mapping[str, ServiceRecord]
    metadata_port: int | None
    draining: bool
    invalid: int
    """How many ``svc.`` tags could not be read (they are skipped)."""


def read_tags(tags: Mapping[str, str]) -> NodeRecord:
    """The services a node advertises; malformed records are skipped and counted, never raised."""
    services: dict[str, ServiceRecord] = {}
    invalid = 0
    for key, value in tags.items():
        if not key.startswith(SERVICE_PREFIX):
            continue
        name = key[len(SERVICE_PREFIX) :]
        try:
            services[check_name(name)] = ServiceRecord.decode(value)
        except RegistrationError:
            invalid += 1
    port_text = tags.get(METADATA_PORT_TAG, "")
    valid = len(port_text) <= 5 and port_text.isascii() and port_text.isdigit()
    valid = valid and 0 < int(port_text) < 65_536
    metadata_port = int(port_text) if valid else None
    return NodeRecord(services, metadata_port, tags.get(DRAINING_TAG) == "1", invalid)


def write_tags(
    base: Mapping[str, str],
    services: Mapping[str, ServiceRecord],
    *,
    metadata_port: int | None,
    draining: bool,
) -> dict[str, str]:
    """``base`` with discovery's tags replaced by these: other tags (a role, a datacenter) stay."""
    tags = {
        key: value
        for key, value in base.items()
        if not key.startswith(SERVICE_PREFIX) and key not in (METADATA_PORT_TAG, DRAINING_TAG)
    }
    for name, record in services.items():
        tags[SERVICE_PREFIX + check_name(name)] = record.encode()
    if metadata_port is not None:
        tags[METADATA_PORT_TAG] = str(metadata_port)
    if draining:
        tags[DRAINING_TAG] = "1"
    return tags


def check_size(tags: Mapping[str, str], limit: int) -> int:
    """The encoded size of ``tags``; :class:`RegistrationTooLarge` when it exceeds ``limit``."""
    size = len(serf_wire.encode_tags(tags, sys.maxsize))
    if size > limit:
        raise RegistrationTooLarge(
            f"the node's tags would take {size} bytes of metadata, over the limit of {limit} "
            "(Config.meta_max_size); register fewer services, shorten names, groups and "
            "versions, or move details into the service metadata, which is fetched on demand"
        )
    return size
