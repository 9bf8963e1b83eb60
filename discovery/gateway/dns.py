"""DNS answers for the catalog, as Consul gives them: pure, bytes in and bytes out.

Names under the domain (``shoal.`` unless told otherwise):

- ``NAME.service.DOMAIN`` and ``TAG.NAME.service.DOMAIN``: A/AAAA of the passing instances,
  SRV with each instance's port and weight, its target ``NODE.node.DOMAIN`` (with the address
  in the additional section);
- ``_NAME._tcp.service.DOMAIN`` (RFC 2782; ``_NAME._TAG...`` filters on a tag);
- ``NODE.node.DOMAIN``: the node's address.

Unknown names in the domain get NXDOMAIN, names outside it REFUSED, garbage FORMERR (or
nothing when not even the header can be read).  dnspython does the message format.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from discovery.catalog import Health, Instance
from discovery.gateway.view import CatalogView
from swim.logs import bump

DEFAULT_DOMAIN = "shoal."
UDP_LIMIT = 512
"""Bytes of a UDP answer without EDNS; larger ones are truncated (TC) for the client to retry
over TCP."""
MAX_UDP_PAYLOAD = 4096
"""The largest EDNS payload size honoured."""


@dataclass(frozen=True, slots=True)
class DnsStatistics:
    answered: int = 0
    malformed: int = 0
    """Packets dropped or answered FORMERR."""
    truncated: int = 0
    refused: int = 0
    nxdomain: int = 0


class DnsResponder:
    """Answers queries about ``view`` under ``domain``, with ``ttl`` seconds on every record."""

    def __init__(self, view: CatalogView, domain: str = DEFAULT_DOMAIN, ttl: int = 0) -> None:
        self.view = view
        self.domain = dns.name.from_text(domain)
        self.ttl = ttl
        self.statistics = DnsStatistics()

    def answer(self, packet: bytes, *, udp: bool) -> bytes | None:
        """The response to ``packet``; None for a packet not worth an answer (no header)."""
        try:
            query = dns.message.from_wire(packet)
        except dns.exception.DNSException:
            return self._formerr(packet)
        except Exception:  # dnspython raises a few non-DNSException types on garbage
            return self._formerr(packet)
        if query.flags & dns.flags.QR:
            self._count("malformed")
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        response.flags &= ~dns.flags.RA
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
        elif len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            self._count("malformed")
        else:
            self._fill(response, query.question[0])
        limit = 65_535
        if udp:
            limit = UDP_LIMIT
            if query.edns >= 0:
                limit = max(UDP_LIMIT, min(query.payload, MAX_UDP_PAYLOAD))
        try:
            wire = response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            response.answer.clear()
            response.additional.clear()
            response.authority.clear()
            response.flags |= dns.flags.TC
            self._count("truncated")
            wire = response.to_wire(max_size=limit)
        self._count("answered")
        return wire

    def _count(self, name: str) -> None:
        self.statistics = bump(self.statistics, name)

    def _formerr(self, packet: bytes) -> bytes | None:
        """FORMERR echoing the query's ID, when there are at least the 12 header bytes."""
        self._count("malformed")
        if len(packet) < 12 or packet[2] & 0x80:  # too short, or a response: drop
            return None
        header = bytearray(packet[:12])
        header[2] = 0x80 | (packet[2] & 0x79)  # QR, the opcode and RD as asked
        header[3] = dns.rcode.FORMERR
        header[4:12] = bytes(8)
        return bytes(header)

    def _fill(self, response: dns.message.Message, question: dns.rrset.RRset) -> None:
        name = question.name
        if question.rdclass not in (dns.rdataclass.IN, dns.rdataclass.ANY):
            response.set_rcode(dns.rcode.REFUSED)
            self._count("refused")
            return
        if not name.is_subdomain(self.domain):
            response.set_rcode(dns.rcode.REFUSED)
            self._count("refused")
            return
        labels = [
            label.decode("ascii", "replace").lower()
            for label in name.relativize(self.domain).labels
        ]
        found = self._records(response, name, question.rdtype, labels)
        if found is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
            self._count("nxdomain")
        if not response.answer:
            response.authority.append(self._soa())

    def _records(
        self,
        response: dns.message.Message,
        name: dns.name.Name,
        rdtype: dns.rdatatype.RdataType,
        labels: list[str],
    ) -> bool | None:
        """Add the answers for ``labels`` (relative to the domain); None when no such name."""
        if len(labels) >= 2 and labels[-1] == "node":
            node = self.view.nodes.get(".".join(labels[:-1]))
            if node is None or node.status == "left":
                node = next(
                    (
                        n
                        for n in self.view.nodes.values()
                        if n.name.lower() == ".".join(labels[:-1])
                    ),
                    None,
                )
            if node is None or node.status == "left":
                return None
            self._address(response.answer, name, rdtype, node.address[0])
            return True
        if len(labels) >= 2 and labels[-1] == "service":
            found = self._instances(labels[:-1])
            if found is None:
                return None
            for instance in found:
                target = self._node_name(instance.node)
                if target is not None and rdtype in (dns.rdatatype.SRV, dns.rdatatype.ANY):
                    srv = f"1 {instance.weight} {instance.address[1]} {target}"
                    self._add(response.answer, name, dns.rdatatype.SRV, srv)
                    self._address(
                        response.additional, target, dns.rdatatype.ANY, instance.address[0]
                    )
                if rdtype != dns.rdatatype.SRV:
                    self._address(response.answer, name, rdtype, instance.address[0])
            return True
        return None

    def _node_name(self, node: str) -> dns.name.Name | None:
        """``NODE.node.DOMAIN``; None for a node name DNS cannot carry (a label over 63
        bytes), whose instances get no SRV record."""
        try:
            return dns.name.from_text(f"{node}.node", self.domain)
        except dns.exception.DNSException:
            return None

    def _instances(self, labels: list[str]) -> list[Instance] | None:
        """The passing instances ``labels`` name (``[TAG.]NAME`` or ``_NAME._PROTO``); None
        for a service never seen."""
        tag: str | None = None
        if len(labels) == 2 and labels[0].startswith("_") and labels[1].startswith("_"):
            service, protocol = labels[0][1:], labels[1][1:]
            tag = None if protocol in ("tcp", "udp") else protocol
        else:
            service = ".".join(labels)
            if self._service(service) is None and len(labels) > 1:
                tag, service = labels[0], ".".join(labels[1:])
        known = self._service(service)
        if known is None:
            return None
        return [
            i
            for i in self.view.instances(known)
            if i.health in (Health.ALIVE, Health.SUSPECT)
            and (tag is None or tag in (t.lower() for t in i.tags))
        ]

    def _service(self, lowered: str) -> str | None:
        return next((s for s in self.view.catalog.services() if s.lower() == lowered), None)

    def _address(
        self,
        section: list[dns.rrset.RRset],
        name: dns.name.Name,
        rdtype: dns.rdatatype.RdataType,
        host: str,
    ) -> None:
        try:
            version = ipaddress.ip_address(host).version
        except ValueError:
            return  # a host name, not an address: SRV still names the port
        wanted = dns.rdatatype.A if version == 4 else dns.rdatatype.AAAA
        if rdtype in (wanted, dns.rdatatype.ANY):
            self._add(section, name, wanted, host)

    def _add(
        self,
        section: list[dns.rrset.RRset],
        name: dns.name.Name,
        rdtype: dns.rdatatype.RdataType,
        text: str,
    ) -> None:
        for rrset in section:
            if rrset.name == name and rrset.rdtype == rdtype:
                rrset.add(dns.rdata.from_text(dns.rdataclass.IN, rdtype, text), self.ttl)
                return
        section.append(dns.rrset.from_text(name, self.ttl, dns.rdataclass.IN, rdtype, text))

    def _soa(self) -> dns.rrset.RRset:
        soa = f"ns.{self.domain} hostmaster.{self.domain} 1 3600 600 86400 {self.ttl}"
        return dns.rrset.from_text(self.domain, self.ttl, dns.rdataclass.IN, dns.rdatatype.SOA, soa)
