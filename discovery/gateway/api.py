"""The HTTP API's routing and JSON, as Consul shapes it: pure, so tests need no socket.

:func:`handle` turns one request into what to do: a :class:`Reply`, a :class:`Block` (a
blocking query whose index is current: wait for a change, then ask again with
``blocking=False``), or a :class:`Register` / :class:`Deregister` for the agent's services.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from discovery.catalog import Health, Instance
from discovery.gateway.view import DATACENTER, CatalogView, NodeEntry, instance_id
from discovery.records import RegistrationError, ServiceRecord, check_name
from swim import __version__
from swim.config import parse_duration

DEFAULT_WAIT = 300.0
"""Seconds a blocking query waits without ``?wait=``, as Consul (5 minutes)."""
MAX_WAIT = 600.0
"""The longest ``?wait=`` honoured, as Consul (10 minutes); longer waits are cut to this."""
MAX_META_ENTRIES = 64

_STATUS_CODES = {"alive": 1, "leaving": 2, "left": 3, "failed": 4}
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    """The path and query, as sent (``/v1/health/service/web?passing``)."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Lower-cased names."""
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Block:
    """Wait until the view's index differs from ``index``, at most ``wait`` seconds."""

    index: int
    wait: float


@dataclass(frozen=True, slots=True)
class Registration:
    """A service as ``PUT /v1/agent/service/register`` gives it."""

    name: str
    instance_id: str
    port: int
    address: str | None
    tags: tuple[str, ...]
    meta: dict[str, str]


@dataclass(frozen=True, slots=True)
class Register:
    registration: Registration


@dataclass(frozen=True, slots=True)
class Deregister:
    instance_id: str


Action = Reply | Block | Register | Deregister


def text(status: int, message: str, *headers: tuple[str, str]) -> Reply:
    """A short plain-text reply (what Consul sends for errors)."""
    return Reply(status, (message + "\n").encode(), "text/plain; charset=utf-8", headers)


def _json(value: object, index: int | None = None) -> Reply:
    headers: tuple[tuple[str, str], ...] = ()
    if index is not None:
        headers = (
            ("X-Consul-Index", str(index)),
            ("X-Consul-KnownLeader", "true"),
            ("X-Consul-LastContact", "0"),
        )
    return Reply(200, json.dumps(value).encode(), headers=headers)


class BadRequest(ValueError):
    """The request is wrong; the message says how (sent as a 400)."""


def parse_wait(value: str) -> float:
    """Consul's ``?wait=`` (a Go duration: ``10s``, ``1m30s``, ``500ms``) in seconds, capped
    at :data:`MAX_WAIT`."""
    try:
        return min(parse_duration(value), MAX_WAIT)
    except ValueError:
        raise BadRequest(f"Invalid wait time {value!r}: use a duration such as 10s or 5m") from None


def handle(
    request: Request, view: CatalogView, *, token: str | None = None, blocking: bool = True
) -> Action:
    """What to do with ``request``: the answer, or the wait or registration it needs first."""
    parts = urlsplit(request.target)
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    if token is not None and not _authorized(request, query, token):
        return text(403, "Permission denied: give the gateway's token as X-Consul-Token")
    path = unquote(parts.path)
    try:
        for pattern, method, route in _ROUTES:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if request.method != method and not (method == "GET" and request.method == "HEAD"):
                return text(405, f"Method {request.method} not allowed", ("Allow", method))
            return route(request, view, query, blocking, *match.groups())
    except BadRequest as exc:
        return text(400, str(exc))
    return text(404, f"Not found: {path} is not part of the API this gateway serves")


def _authorized(request: Request, query: Mapping[str, str], token: str) -> bool:
    given = request.headers.get("x-consul-token") or query.get("token", "")
    bearer = request.headers.get("authorization", "")
    if not given and bearer.lower().startswith("bearer "):
        given = bearer[7:].strip()
    return hmac.compare_digest(given.encode(), token.encode())


def _blocking(
    view: CatalogView, query: Mapping[str, str], blocking: bool, answer: Callable[[], object]
) -> Action:
    """The answer with its index, or a :class:`Block` while ``?index=`` is the current one.
    An index above the current one (the gateway restarted) returns at once, so that the
    client sees the lower index and starts over."""
    if blocking and "index" in query:
        text_index = query["index"]
        if not (text_index.isascii() and text_index.isdigit() and len(text_index) <= 20):
            raise BadRequest(f"Invalid index {text_index!r}: give the X-Consul-Index last seen")
        wait = parse_wait(query["wait"]) if query.get("wait") else DEFAULT_WAIT
        if int(text_index) == view.index and wait > 0:
            return Block(view.index, wait)
    return _json(answer(), view.index)


def _node_json(view: CatalogView, node: NodeEntry | None, name: str) -> dict[str, Any]:
    address = node.address[0] if node else ""
    return {
        "ID": "",
        "Node": name,
        "Address": address,
        "Datacenter": DATACENTER,
        "TaggedAddresses": {"lan": address, "wan": address},
        "Meta": node.meta if node else {},
        "CreateIndex": view.index,
        "ModifyIndex": view.index,
    }


def _service_address(instance: Instance, view: CatalogView) -> str:
    """Consul's ServiceAddress: empty when the service listens on its node's address."""
    node = view.nodes.get(instance.node)
    return "" if node and node.address[0] == instance.address[0] else instance.address[0]


def _passing(instance: Instance) -> bool:
    """Whether Consul would call it passing: alive or suspect (Serf still says alive), not
    draining and not failed."""
    return instance.health in (Health.ALIVE, Health.SUSPECT)


def _filtered(view: CatalogView, name: str, query: Mapping[str, str]) -> list[Instance]:
    found = view.instances(name)
    if "tag" in query:
        found = [i for i in found if query["tag"] in i.tags]
    return found


def _catalog_services(view: CatalogView, q: Mapping[str, str], blocking: bool) -> Action:
    return _blocking(view, q, blocking, view.services)


def _catalog_service(view: CatalogView, q: Mapping[str, str], blocking: bool, name: str) -> Action:
    def answer() -> object:
        out = []
        for instance in _filtered(view, name, q):
            node = _node_json(view, view.nodes.get(instance.node), instance.node)
            out.append(
                {
                    "ID": "",
                    "Node": instance.node,
                    "Address": node["Address"],
                    "Datacenter": DATACENTER,
                    "TaggedAddresses": node["TaggedAddresses"],
                    "NodeMeta": node["Meta"],
                    "ServiceKind": "",
                    "ServiceID": instance_id(instance),
                    "ServiceName": instance.service,
                    "ServiceTags": list(instance.tags),
                    "ServiceAddress": _service_address(instance, view),
                    "ServiceWeights": {"Passing": instance.weight, "Warning": 1},
                    "ServiceMeta": view.metadata(instance),
                    "ServicePort": instance.address[1],
                    "ServiceEnableTagOverride": False,
                    "CreateIndex": view.index,
                    "ModifyIndex": view.index,
                }
            )
        return out

    return _blocking(view, q, blocking, answer)


def _service_json(instance: Instance, view: CatalogView) -> dict[str, Any]:
    return {
        "ID": instance_id(instance),
        "Service": instance.service,
        "Tags": list(instance.tags),
        "Address": _service_address(instance, view),
        "Meta": view.metadata(instance),
        "Port": instance.address[1],
        "Weights": {"Passing": instance.weight, "Warning": 1},
        "EnableTagOverride": False,
        "CreateIndex": view.index,
        "ModifyIndex": view.index,
    }


def _checks(instance: Instance, view: CatalogView) -> list[dict[str, Any]]:
    failed = instance.health is Health.FAILED
    checks: list[dict[str, Any]] = [
        {
            "Node": instance.node,
            "CheckID": "serfHealth",
            "Name": "Serf Health Status",
            "Status": "critical" if failed else "passing",
            "Notes": "",
            "Output": "Agent not live or unreachable" if failed else "Agent alive and reachable",
            "ServiceID": "",
            "ServiceName": "",
            "ServiceTags": [],
            "Type": "",
            "CreateIndex": view.index,
            "ModifyIndex": view.index,
        }
    ]
    if instance.health is Health.DRAINING:
        checks.append(
            {
                "Node": instance.node,
                "CheckID": f"_service_maintenance:{instance_id(instance)}",
                "Name": "Service Maintenance Mode",
                "Status": "critical",
                "Notes": "draining: the instance finishes its work and takes no new requests",
                "Output": "",
                "ServiceID": instance_id(instance),
                "ServiceName": instance.service,
                "ServiceTags": list(instance.tags),
                "Type": "",
                "CreateIndex": view.index,
                "ModifyIndex": view.index,
            }
        )
    return checks


def _health_service(view: CatalogView, q: Mapping[str, str], blocking: bool, name: str) -> Action:
    def answer() -> object:
        found = _filtered(view, name, q)
        if "passing" in q and q["passing"].lower() not in ("0", "false"):
            found = [i for i in found if _passing(i)]
        return [
            {
                "Node": _node_json(view, view.nodes.get(i.node), i.node),
                "Service": _service_json(i, view),
                "Checks": _checks(i, view),
            }
            for i in found
        ]

    return _blocking(view, q, blocking, answer)


def _catalog_nodes(view: CatalogView, q: Mapping[str, str], blocking: bool) -> Action:
    def answer() -> object:
        return [
            _node_json(view, node, node.name)
            for node in sorted(view.nodes.values(), key=lambda n: n.name)
            if node.status != "left"
        ]

    return _blocking(view, q, blocking, answer)


def _member_json(node: NodeEntry) -> dict[str, Any]:
    vsn = tuple(node.vsn) + (0,) * (6 - len(node.vsn))
    return {
        "Name": node.name,
        "Addr": node.address[0],
        "Port": node.address[1],
        "Tags": dict(node.tags),
        "Status": _STATUS_CODES.get(node.status, 0),
        "ProtocolMin": vsn[0],
        "ProtocolMax": vsn[1],
        "ProtocolCur": vsn[2],
        "DelegateMin": vsn[3],
        "DelegateMax": vsn[4],
        "DelegateCur": vsn[5],
    }


def _agent_members(view: CatalogView, q: Mapping[str, str], blocking: bool) -> Action:
    nodes = sorted(view.nodes.values(), key=lambda n: n.name)
    return _json([_member_json(node) for node in nodes])


def _agent_self(view: CatalogView, q: Mapping[str, str], blocking: bool) -> Action:
    local = view.nodes.get(view.local_node)
    return _json(
        {
            "Config": {
                "Datacenter": DATACENTER,
                "NodeName": view.local_node,
                "NodeID": "",
                "Server": False,
                "Revision": "",
                "Version": f"shoal-{__version__}",
            },
            "Member": _member_json(local) if local else {},
            "Meta": local.meta if local else {},
        }
    )


def _agent_services(view: CatalogView, q: Mapping[str, str], blocking: bool) -> Action:
    local = [i for i in view.catalog.all_instances() if i.node == view.local_node]
    return _json({instance_id(i): _service_json(i, view) for i in local})


def _prometheus_sd(view: CatalogView, q: Mapping[str, str], blocking: bool) -> Action:
    """Prometheus HTTP SD: one target group per instance, labelled ``__meta_shoal_*``."""
    groups = []
    for name in view.services():
        if q.get("service") not in (None, name):
            continue
        for instance in view.instances(name):
            groups.append(
                {
                    "targets": [_host_port(*instance.address)],
                    "labels": _sd_labels(instance, view),
                }
            )
    return _json(groups)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _sd_labels(instance: Instance, view: CatalogView) -> dict[str, str]:
    node = view.nodes.get(instance.node)
    tags = list(instance.tags)
    labels = {
        "__meta_shoal_service": instance.service,
        "__meta_shoal_service_id": instance_id(instance),
        "__meta_shoal_node": instance.node,
        "__meta_shoal_address": node.address[0] if node else "",
        "__meta_shoal_service_address": instance.address[0],
        "__meta_shoal_service_port": str(instance.address[1]),
        "__meta_shoal_health": "passing" if _passing(instance) else "critical",
        "__meta_shoal_state": instance.health.value,
        "__meta_shoal_group": instance.group,
        "__meta_shoal_version": instance.version,
        "__meta_shoal_tags": f",{','.join(tags)}," if tags else "",
        "__meta_shoal_datacenter": DATACENTER,
    }
    for key, value in view.metadata(instance).items():
        labels[f"__meta_shoal_service_metadata_{_LABEL_UNSAFE.sub('_', key)}"] = str(value)
    for key, value in (node.meta if node else {}).items():
        labels[f"__meta_shoal_metadata_{_LABEL_UNSAFE.sub('_', key)}"] = value
    return labels


def _register(view: CatalogView, q: Mapping[str, str], blocking: bool, body: bytes) -> Action:
    return Register(parse_registration(body))


def _deregister(view: CatalogView, q: Mapping[str, str], blocking: bool, service: str) -> Action:
    return Deregister(service)


def parse_registration(body: bytes) -> Registration:
    """Consul's service definition (``Name``, ``ID``, ``Port``, ``Address``, ``Tags``,
    ``Meta``; keys in any case, as Consul reads them); :class:`BadRequest` says what is wrong."""
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
        raise BadRequest("Request decode failed: the body is not JSON") from None
    if not isinstance(raw, dict):
        raise BadRequest('Request decode failed: expected an object such as {"Name": "web"}')
    fields = {str(key).lower(): value for key, value in raw.items()}
    name = fields.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest("Missing service name: give Name")
    given_id = fields.get("id") or name
    port = fields.get("port", 0)
    address = fields.get("address") or None
    tags = fields.get("tags") or []
    meta = fields.get("meta") or {}
    if not isinstance(given_id, str):
        raise BadRequest("ID must be a string")
    if isinstance(port, bool) or not isinstance(port, int):
        raise BadRequest("Port must be a whole number")
    if address is not None and not isinstance(address, str):
        raise BadRequest("Address must be a string")
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise BadRequest("Tags must be a list of strings")
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise BadRequest("Meta must be an object of strings")
    if len(meta) > MAX_META_ENTRIES:
        raise BadRequest(f"Meta has {len(meta)} keys, over the limit of {MAX_META_ENTRIES}")
    try:
        check_name(name)
        ServiceRecord(
            port, host=address, tags=tuple(tags), instance_id="" if given_id == name else given_id
        )
    except RegistrationError as exc:
        raise BadRequest(f"Invalid service: {exc}") from None
    return Registration(name, given_id, port, address, tuple(tags), dict(meta))


def _with_body(
    route: Callable[[CatalogView, Mapping[str, str], bool, bytes], Action],
) -> Callable[..., Action]:
    def wrapped(
        request: Request, view: CatalogView, q: Mapping[str, str], blocking: bool
    ) -> Action:
        return route(view, q, blocking, request.body)

    return wrapped


def _without_request(route: Callable[..., Action]) -> Callable[..., Action]:
    def wrapped(
        request: Request, view: CatalogView, q: Mapping[str, str], blocking: bool, *args: str
    ) -> Action:
        return route(view, q, blocking, *args)

    return wrapped


_ROUTES: list[tuple[re.Pattern[str], str, Callable[..., Action]]] = [
    (re.compile(r"/v1/catalog/services"), "GET", _without_request(_catalog_services)),
    (re.compile(r"/v1/catalog/service/([^/]+)"), "GET", _without_request(_catalog_service)),
    (re.compile(r"/v1/health/service/([^/]+)"), "GET", _without_request(_health_service)),
    (re.compile(r"/v1/catalog/nodes"), "GET", _without_request(_catalog_nodes)),
    (re.compile(r"/v1/agent/members"), "GET", _without_request(_agent_members)),
    (re.compile(r"/v1/agent/self"), "GET", _without_request(_agent_self)),
    (re.compile(r"/v1/agent/services"), "GET", _without_request(_agent_services)),
    (re.compile(r"/v1/prometheus/sd"), "GET", _without_request(_prometheus_sd)),
    (re.compile(r"/v1/agent/service/register"), "PUT", _with_body(_register)),
    (re.compile(r"/v1/agent/service/deregister/([^/]+)"), "PUT", _without_request(_deregister)),
]
