"""``swim agent``'s gateway: Consul's HTTP API and DNS for the agent's view, and the services the
agent registers (``-http-addr``, ``-dns-addr``, the config file's ``services``).

The agent's services are registered through :class:`~discovery.host.ServiceHost`, so a Python
:class:`~discovery.Discovery` sees them as it sees any other, and drained on shutdown.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from discovery.gateway import Gateway, ListenError, register
from discovery.gateway.api import BadRequest, Registration, parse_registration
from discovery.gateway.dns import DEFAULT_DOMAIN
from discovery.host import ServiceHost
from discovery.records import RegistrationError
from swim.agentconfig import AgentSettings
from swim.node import Node, parse_host_port

log = logging.getLogger("swim.agent")

HTTP_PORT = 8500
DNS_PORT = 8600
LOOPBACK = "127.0.0.1"
DRAIN_TIMEOUT = 5.0
"""Seconds the agent's services may take to drain on shutdown before it leaves anyway."""


class GatewaySettingsError(ValueError):
    """A gateway flag or config key is wrong; the message names it and the fix."""


@dataclass(frozen=True)
class GatewayOptions:
    """The gateway's flags, checked."""

    http: tuple[str, int] | None = None
    dns: tuple[str, int] | None = None
    domain: str = DEFAULT_DOMAIN
    dns_ttl: int = 0
    token: str | None = None
    services: tuple[Registration, ...] = ()

    @property
    def wanted(self) -> bool:
        return self.http is not None or self.dns is not None or bool(self.services)


def add_gateway_arguments(parser: argparse.ArgumentParser) -> None:
    flag = parser.add_argument
    flag(
        "-http-addr",
        "--http-addr",
        default=None,
        metavar="[HOST:]PORT",
        help=f"serve Consul's HTTP API here (off unless given; Consul uses {HTTP_PORT}; "
        "a port alone listens on 127.0.0.1)",
    )
    flag(
        "-dns-addr",
        "--dns-addr",
        default=None,
        metavar="[HOST:]PORT",
        help=f"serve DNS (UDP and TCP) here (off unless given; Consul uses {DNS_PORT})",
    )
    flag("-domain", "--domain", default=None, help=f"DNS domain (default: {DEFAULT_DOMAIN})")
    flag("-dns-ttl", "--dns-ttl", default=None, metavar="DURATION", help="DNS TTL (default: 0)")
    flag(
        "-http-token",
        "--http-token",
        default=None,
        help="token HTTP clients must send as X-Consul-Token (better: http_token in a config file)",
    )


def gateway_options(settings: AgentSettings) -> GatewayOptions:
    """The gateway's settings checked; :class:`GatewaySettingsError` names a bad one."""
    origin = settings.origin
    domain = settings.domain or DEFAULT_DOMAIN
    labels = domain.rstrip(".").split(".")
    if not domain.rstrip(".") or not all(0 < len(label) < 64 for label in labels):
        raise GatewaySettingsError(f"{origin('domain')} {domain!r}: give a DNS name, like shoal.")
    ttl = settings.dns_ttl or 0.0
    if not 0 <= ttl < 2**31 or ttl != int(ttl):
        raise GatewaySettingsError(f"{origin('dns_ttl')}: give whole seconds, such as 30s")
    services = tuple(
        _service(f"{origin('services')}[{n}]", raw) for n, raw in enumerate(settings.services)
    )
    ids = [s.instance_id for s in services]
    names = [s.name for s in services]
    for index, service in enumerate(services):
        if ids.index(service.instance_id) != index or names.index(service.name) != index:
            raise GatewaySettingsError(
                f"{origin('services')}[{index}]: service {service.name!r} (ID "
                f"{service.instance_id!r}) is defined twice; an agent advertises one instance "
                "per service name and ID"
            )
    return GatewayOptions(
        http=_listen_address(origin("http_addr"), settings.http_addr, HTTP_PORT),
        dns=_listen_address(origin("dns_addr"), settings.dns_addr, DNS_PORT),
        domain=domain if domain.endswith(".") else domain + ".",
        dns_ttl=int(ttl),
        token=settings.http_token or None,
        services=services,
    )


def _service(where: str, raw: Mapping[str, Any]) -> Registration:
    try:
        return parse_registration(json.dumps(raw).encode())
    except BadRequest as exc:
        raise GatewaySettingsError(f"{where}: {exc}") from None


def _listen_address(flag: str, text: str | None, default_port: int) -> tuple[str, int] | None:
    """``HOST:PORT``, ``HOST``, ``:PORT`` or ``PORT`` (the last two on loopback)."""
    if not text:
        return None
    if text.isascii() and text.isdigit():
        text = f"{LOOPBACK}:{text}"
    elif text.startswith(":"):
        text = LOOPBACK + text
    try:
        return parse_host_port(text, default_port, any_port=True)
    except ValueError as exc:
        raise GatewaySettingsError(
            f"{flag} {text!r}: {exc}; give HOST:PORT or a port alone, such as "
            f"{LOOPBACK}:{default_port} (0 picks a free port)"
        ) from None


async def start_gateway(
    stack: AsyncExitStack, node: Node, options: GatewayOptions
) -> tuple[Gateway | None, ServiceHost]:
    """The agent's service host (with the configured services) and gateway (when it is to
    listen somewhere), running until ``stack`` closes.  :class:`ListenError` when a listener
    fails."""
    host = await stack.enter_async_context(ServiceHost(node))
    for service in options.services:
        try:
            await register(host, service)
        except (RegistrationError, ValueError) as exc:
            raise GatewaySettingsError(f"services: {service.name!r}: {exc}") from None
    if options.http is None and options.dns is None:
        return None, host
    gateway = Gateway(
        node,
        http=options.http,
        dns=options.dns,
        domain=options.domain,
        dns_ttl=options.dns_ttl,
        token=options.token,
        host=host,
    )
    return await stack.enter_async_context(gateway), host


async def drain(host: ServiceHost) -> None:
    """Drain the agent's services (announce, wait, leave) when it has any."""
    if host.registered() and host.accepting():
        log.info("draining the agent's services: %s", ", ".join(host.registered()))
        await host.drain(DRAIN_TIMEOUT)


def listen_flag(error: ListenError) -> str:
    return "-http-addr" if error.which == "http" else "-dns-addr"
