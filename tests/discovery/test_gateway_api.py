"""The gateway's HTTP API without sockets: Consul's routes and JSON shapes, blocking queries,
registrations, tokens and bad requests."""

from __future__ import annotations

import json
from typing import Any

import pytest

from discovery.gateway import api
from discovery.gateway.api import Block, Deregister, Register, Reply, Request, handle
from discovery.records import ServiceRecord
from swim.members import MemberState
from tests.discovery.gateway_helpers import node, update, view_of

WEB = ServiceRecord(8080, tags=("blue", "v1"), weight=50)
WEB_B = ServiceRecord(8081, host="10.0.0.9", tags=("green",), instance_id="web-b")


def cluster() -> Any:
    return view_of(
        node("a", {"web": WEB}, extra={"role": "front"}),
        node("b", {"web": WEB_B, "db": ServiceRecord(5432)}, host="10.0.0.2"),
    )


def get(view: Any, target: str, **options: Any) -> Reply:
    reply = handle(Request("GET", target), view, **options)
    assert isinstance(reply, Reply), reply
    return reply


def body(reply: Reply) -> Any:
    assert reply.status == 200, reply.body
    return json.loads(reply.body)


def test_catalog_services_lists_each_service_with_the_union_of_its_tags() -> None:
    assert body(get(cluster(), "/v1/catalog/services")) == {
        "db": [],
        "web": ["blue", "v1", "green"],
    }


def test_catalog_service_has_consuls_fields() -> None:
    entries = body(get(cluster(), "/v1/catalog/service/web"))
    assert [(e["Node"], e["ServiceID"], e["ServicePort"]) for e in entries] == [
        ("a", "web", 8080),
        ("b", "web-b", 8081),
    ]
    first, second = entries
    assert first["Address"] == "10.0.0.1"
    assert first["ServiceAddress"] == ""  # the node's own address, as Consul leaves it
    assert second["ServiceAddress"] == "10.0.0.9"
    assert first["ServiceTags"] == ["blue", "v1"]
    assert first["NodeMeta"] == {"role": "front"}
    assert first["ServiceWeights"] == {"Passing": 50, "Warning": 1}
    assert first["Datacenter"] == "dc1"


def test_tag_filters_instances() -> None:
    entries = body(get(cluster(), "/v1/catalog/service/web?tag=green"))
    assert [e["Node"] for e in entries] == ["b"]
    assert body(get(cluster(), "/v1/health/service/web?tag=blue"))[0]["Node"]["Node"] == "a"


def test_an_unknown_service_is_an_empty_list() -> None:
    assert body(get(cluster(), "/v1/catalog/service/nope")) == []
    assert body(get(cluster(), "/v1/health/service/nope")) == []


def test_health_marks_draining_and_failed_instances_critical_and_passing_leaves_them_out() -> None:
    view = view_of(
        node("a", {"web": WEB}),
        node("b", {"web": WEB}, draining=True),
        node("c", {"web": WEB}, state=MemberState.DEAD),
        node("d", {"web": WEB}, state=MemberState.SUSPECT),
        node("e", {"web": WEB}, state=MemberState.LEFT),
    )
    entries = body(get(view, "/v1/health/service/web"))
    statuses = {e["Node"]["Node"]: [c["Status"] for c in e["Checks"]] for e in entries}
    assert statuses == {
        "a": ["passing"],
        "b": ["passing", "critical"],  # the maintenance check says draining
        "c": ["critical"],
        "d": ["passing"],  # Serf still calls a suspect alive
    }
    passing = body(get(view, "/v1/health/service/web?passing"))
    assert [e["Node"]["Node"] for e in passing] == ["a", "d"]
    assert len(body(get(view, "/v1/health/service/web?passing=false"))) == 4


def test_nodes_and_members() -> None:
    view = view_of(node("a", {"web": WEB}), node("z", {}, state=MemberState.LEFT))
    assert [n["Node"] for n in body(get(view, "/v1/catalog/nodes"))] == ["a"]
    members = body(get(view, "/v1/agent/members"))
    assert [(m["Name"], m["Status"]) for m in members] == [("a", 1), ("z", 3)]
    assert members[0]["Tags"]["svc.web"] == WEB.encode()
    me = body(get(view, "/v1/agent/self"))
    assert me["Config"]["NodeName"] == "a"
    assert me["Member"]["Addr"] == "10.0.0.1"


def test_agent_services_are_the_local_nodes() -> None:
    assert list(body(get(cluster(), "/v1/agent/services"))) == ["web"]


def test_prometheus_sd_has_one_group_per_instance_with_labels() -> None:
    groups = body(get(cluster(), "/v1/prometheus/sd"))
    assert [g["targets"] for g in groups] == [
        ["10.0.0.2:5432"],
        ["10.0.0.1:8080"],
        ["10.0.0.9:8081"],
    ]
    labels = groups[1]["labels"]
    assert labels["__meta_shoal_service"] == "web"
    assert labels["__meta_shoal_node"] == "a"
    assert labels["__meta_shoal_tags"] == ",blue,v1,"
    assert labels["__meta_shoal_health"] == "passing"
    assert labels["__meta_shoal_metadata_role"] == "front"
    only_db = body(get(cluster(), "/v1/prometheus/sd?service=db"))
    assert [g["labels"]["__meta_shoal_service"] for g in only_db] == ["db"]


def test_metadata_shows_as_meta_once_fetched() -> None:
    view = view_of(node("a", {"web": ServiceRecord(8080, revision=7)}))
    assert body(get(view, "/v1/catalog/service/web"))[0]["ServiceMeta"] == {}
    instance = view.instances("web")[0]
    index = view.index
    view.set_metadata(instance, {"zone": "z1"})
    assert view.index > index  # what is served changed
    assert body(get(view, "/v1/catalog/service/web"))[0]["ServiceMeta"] == {"zone": "z1"}
    labels = body(get(view, "/v1/prometheus/sd"))[0]["labels"]
    assert labels["__meta_shoal_service_metadata_zone"] == "z1"


# ---------------------------------------------------------------------------------- blocking


def test_the_index_rises_only_when_what_is_served_changes() -> None:
    view = cluster()
    index = view.index
    assert get(view, "/v1/catalog/services").headers[0] == ("X-Consul-Index", str(index))
    assert not update(
        view,
        node("a", {"web": WEB}, extra={"role": "front"}),
        node("b", {"web": WEB_B, "db": ServiceRecord(5432)}, host="10.0.0.2"),
    )
    assert view.index == index
    assert update(view, node("a", {"web": WEB}, extra={"role": "front"}))
    assert view.index == index + 1


def test_a_blocking_query_at_the_current_index_waits() -> None:
    view = cluster()
    index = view.index
    action = handle(Request("GET", f"/v1/catalog/services?index={index}&wait=5s"), view)
    assert action == Block(index, 5.0)
    default = handle(Request("GET", f"/v1/health/service/web?index={index}"), view)
    assert default == Block(index, api.DEFAULT_WAIT)
    capped = handle(Request("GET", f"/v1/catalog/nodes?index={index}&wait=2h"), view)
    assert capped == Block(index, api.MAX_WAIT)
    again = handle(Request("GET", f"/v1/catalog/services?index={index}"), view, blocking=False)
    assert isinstance(again, Reply) and again.status == 200


@pytest.mark.parametrize("index", ["0", "1", "999"])
def test_an_older_or_newer_index_answers_at_once(index: str) -> None:
    view = cluster()
    view.index = 5
    reply = handle(Request("GET", f"/v1/catalog/services?index={index}"), view)
    assert isinstance(reply, Reply) and reply.status == 200


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ("index=x", "Invalid index"),
        ("index=1&wait=soon", "Invalid wait"),
        ("index=-1", "Invalid index"),
    ],
)
def test_bad_blocking_parameters_are_400(query: str, said: str) -> None:
    reply = get(cluster(), f"/v1/catalog/services?{query}")
    assert reply.status == 400
    assert said in reply.body.decode()


def test_wait_takes_go_durations() -> None:
    assert api.parse_wait("1m30s") == 90.0
    assert api.parse_wait("250ms") == 0.25


# ---------------------------------------------------------------------------------- errors


def test_unknown_paths_and_wrong_methods() -> None:
    assert get(cluster(), "/v1/kv/x").status == 404
    reply = handle(Request("POST", "/v1/catalog/services"), cluster())
    assert isinstance(reply, Reply) and reply.status == 405
    assert ("Allow", "GET") in reply.headers
    reply = handle(Request("GET", "/v1/agent/service/register"), cluster())
    assert isinstance(reply, Reply) and reply.status == 405


def test_a_token_is_required_when_set() -> None:
    view = cluster()
    assert get(view, "/v1/catalog/services", token="s3cret").status == 403
    assert get(view, "/v1/catalog/services?token=wrong", token="s3cret").status == 403
    assert get(view, "/v1/catalog/services?token=s3cret", token="s3cret").status == 200
    with_header = Request("GET", "/v1/catalog/services", {"x-consul-token": "s3cret"})
    assert isinstance(reply := handle(with_header, view, token="s3cret"), Reply)
    assert reply.status == 200
    bearer = Request("GET", "/v1/agent/self", {"authorization": "Bearer s3cret"})
    assert isinstance(reply := handle(bearer, view, token="s3cret"), Reply)
    assert reply.status == 200


# ---------------------------------------------------------------------------------- registration


def put(target: str, payload: object) -> api.Action:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return handle(Request("PUT", target, body=data), cluster())


def test_register_takes_consuls_service_definition() -> None:
    action = put(
        "/v1/agent/service/register",
        {
            "Name": "api",
            "ID": "api-1",
            "Port": 9000,
            "Address": "10.1.1.1",
            "Tags": ["x"],
            "Meta": {"k": "v"},
        },
    )
    assert action == Register(
        api.Registration("api", "api-1", 9000, "10.1.1.1", ("x",), {"k": "v"})
    )
    lower = put("/v1/agent/service/register", {"name": "api", "port": 9000})
    assert isinstance(lower, Register)
    assert lower.registration.instance_id == "api"
    assert put("/v1/agent/service/deregister/api-1", b"") == Deregister("api-1")


@pytest.mark.parametrize(
    ("payload", "said"),
    [
        (b"{nope", "not JSON"),
        ([1], "expected an object"),
        ({"Port": 80}, "Missing service name"),
        ({"Name": "web", "Port": 0}, "port 0 is outside"),
        ({"Name": "web", "Port": "80"}, "Port must be a whole number"),
        ({"Name": "web no", "Port": 80}, "service name 'web no' is invalid"),
        ({"Name": "web", "Port": 80, "Tags": "a"}, "Tags must be a list"),
        ({"Name": "web", "Port": 80, "Tags": ["a,b"]}, "tag 'a,b' is invalid"),
        ({"Name": "web", "Port": 80, "Meta": {"k": 1}}, "Meta must be an object of strings"),
    ],
)
def test_a_bad_registration_is_400_saying_why(payload: object, said: str) -> None:
    reply = put("/v1/agent/service/register", payload)
    assert isinstance(reply, Reply) and reply.status == 400
    assert said in reply.body.decode()
