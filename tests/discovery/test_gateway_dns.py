"""The gateway's DNS answers without sockets: every name form, the rcodes for what is not ours,
truncation over UDP, and garbage that is dropped and counted."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given
from hypothesis import strategies as st

from discovery.gateway.dns import DnsResponder
from discovery.records import ServiceRecord
from swim.members import MemberState
from tests.discovery.gateway_helpers import node, view_of


def responder(ttl: int = 0, domain: str = "shoal.") -> DnsResponder:
    view = view_of(
        node("a", {"web": ServiceRecord(8080, tags=("blue",), weight=50)}),
        node("b", {"web": ServiceRecord(8081, tags=("green",))}, host="10.0.0.2"),
        node("c", {"web": ServiceRecord(8082)}, host="10.0.0.3", draining=True),
        node("d", {"web": ServiceRecord(8083)}, host="10.0.0.4", state=MemberState.DEAD),
        node("six", {"v6": ServiceRecord(80)}, host="fd00::6"),
    )
    return DnsResponder(view, domain, ttl)


def ask(
    dns_responder: DnsResponder, name: str, rdtype: str = "A", *, udp: bool = True
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    wire = dns_responder.answer(query.to_wire(), udp=udp)
    assert wire is not None
    response = dns.message.from_wire(wire)
    assert response.id == query.id
    return response


def records(response: dns.message.Message, rdtype: str = "A") -> list[str]:
    wanted = dns.rdatatype.from_text(rdtype)
    return sorted(r.to_text() for rrset in response.answer if rrset.rdtype == wanted for r in rrset)


def test_a_records_of_the_passing_instances() -> None:
    response = ask(responder(), "web.service.shoal")
    assert response.rcode() == dns.rcode.NOERROR
    assert response.flags & dns.flags.AA
    assert records(response) == ["10.0.0.1", "10.0.0.2"]  # not draining c, not failed d


def test_srv_records_name_the_node_with_its_address_alongside() -> None:
    response = ask(responder(), "web.service.shoal", "SRV")
    assert records(response, "SRV") == ["1 100 8081 b.node.shoal.", "1 50 8080 a.node.shoal."]
    extra = {rrset.name.to_text(): [r.to_text() for r in rrset] for rrset in response.additional}
    assert extra == {"a.node.shoal.": ["10.0.0.1"], "b.node.shoal.": ["10.0.0.2"]}


def test_rfc_2782_names() -> None:
    assert len(records(ask(responder(), "_web._tcp.service.shoal", "SRV"), "SRV")) == 2
    tagged = records(ask(responder(), "_web._green.service.shoal", "SRV"), "SRV")
    assert tagged == ["1 100 8081 b.node.shoal."]


def test_a_tag_filters() -> None:
    assert records(ask(responder(), "blue.web.service.shoal")) == ["10.0.0.1"]
    assert records(ask(responder(), "BLUE.Web.service.shoal")) == ["10.0.0.1"]  # any case


def test_nodes_and_ipv6() -> None:
    assert records(ask(responder(), "b.node.shoal")) == ["10.0.0.2"]
    assert records(ask(responder(), "six.node.shoal", "AAAA"), "AAAA") == ["fd00::6"]
    assert records(ask(responder(), "v6.service.shoal", "AAAA"), "AAAA") == ["fd00::6"]
    no_a = ask(responder(), "v6.service.shoal", "A")
    assert no_a.rcode() == dns.rcode.NOERROR and not no_a.answer
    assert no_a.authority[0].rdtype == dns.rdatatype.SOA


def test_ttl_and_another_domain() -> None:
    response = ask(responder(ttl=30, domain="example.internal."), "web.service.example.internal")
    assert response.answer[0].ttl == 30
    assert ask(responder(), "web.service.example.internal").rcode() == dns.rcode.REFUSED


@pytest.mark.parametrize(
    "name", ["nope.service.shoal", "x.node.shoal", "web.shoal", "shoal", "red.nope.service.shoal"]
)
def test_unknown_names_in_the_domain_are_nxdomain(name: str) -> None:
    response = ask(responder(), name)
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.authority[0].rdtype == dns.rdatatype.SOA


def test_names_outside_the_domain_are_refused() -> None:
    dns_responder = responder()
    assert ask(dns_responder, "example.com").rcode() == dns.rcode.REFUSED
    assert dns_responder.statistics.refused == 1


def test_a_large_answer_is_truncated_over_udp_and_whole_over_tcp() -> None:
    many = [
        node(f"n{i:03}", {"big": ServiceRecord(8000 + i)}, host=f"10.1.0.{i}") for i in range(1, 80)
    ]
    dns_responder = DnsResponder(view_of(*many))
    over_udp = ask(dns_responder, "big.service.shoal", "SRV")
    assert over_udp.flags & dns.flags.TC
    assert dns_responder.statistics.truncated == 1
    over_tcp = ask(dns_responder, "big.service.shoal", "SRV", udp=False)
    assert not over_tcp.flags & dns.flags.TC
    assert len(records(over_tcp, "SRV")) == 79


def test_edns_raises_the_udp_limit() -> None:
    many = [
        node(f"n{i:03}", {"big": ServiceRecord(8000 + i)}, host=f"10.1.0.{i}") for i in range(1, 60)
    ]
    dns_responder = DnsResponder(view_of(*many))
    query = dns.message.make_query("big.service.shoal", "A", use_edns=0, payload=4096)
    wire = dns_responder.answer(query.to_wire(), udp=True)
    assert wire is not None and len(wire) > 512
    assert len(records(dns.message.from_wire(wire))) == 59


def test_garbage_gets_formerr_or_nothing_and_is_counted() -> None:
    dns_responder = responder()
    assert dns_responder.answer(b"", udp=True) is None
    assert dns_responder.answer(b"\x01\x02\x03", udp=True) is None
    reply = dns_responder.answer(b"\x12\x34\x01\x00\x00\x01" + b"\xff" * 20, udp=True)
    assert reply is not None
    assert reply[:2] == b"\x12\x34"
    assert reply[3] & 0x0F == dns.rcode.FORMERR
    assert dns_responder.statistics.malformed == 3


def test_a_response_is_not_answered() -> None:
    query = dns.message.make_query("web.service.shoal", "A")
    response = dns.message.make_response(query)
    assert responder().answer(response.to_wire(), udp=True) is None


@given(st.binary(max_size=600))
def test_no_packet_raises(packet: bytes) -> None:
    reply = responder().answer(packet, udp=True)
    assert reply is None or len(reply) <= 512


def test_a_node_name_dns_cannot_carry_gets_no_srv_but_its_address_still_answers() -> None:
    long_name = "n" * 70  # a label holds 63 bytes at most
    view = view_of(
        node(long_name, {"web": ServiceRecord(8080)}),
        node("b", {"web": ServiceRecord(81)}, host="10.0.0.2"),
    )
    dns_responder = DnsResponder(view)
    assert records(ask(dns_responder, "web.service.shoal")) == ["10.0.0.1", "10.0.0.2"]
    assert records(ask(dns_responder, "web.service.shoal", "SRV"), "SRV") == [
        "1 100 81 b.node.shoal."
    ]
