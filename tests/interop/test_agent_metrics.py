"""``swim agent -metrics-addr``: ``/metrics`` scraped over HTTP from a swim agent in a cluster
with a real `serf agent`, parsed with prometheus_client's own parser, reports the members by
state as the cluster has them, and the probes and failures as they happen.

Agents are processes, so these tests use real time and poll within deadlines."""

from __future__ import annotations

import anyio
from prometheus_client.parser import text_string_to_metric_families

from tests.interop.conftest import LOOPBACK, Agent, Agents, eventually, free_port
from tests.interop.test_agent_handlers import pair

DETECTED = 20.0
"""Seconds a swim agent on the local profile may take to declare a killed member failed."""


async def scrape(port: int, path: str = "/metrics") -> tuple[str, str]:
    """The status line and the body of ``GET path`` on the agent's metrics endpoint."""
    async with await anyio.connect_tcp(LOOPBACK, port) as stream:
        await stream.send(f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}\r\n\r\n".encode())
        response = b""
        try:
            while True:
                response += await stream.receive()
        except anyio.EndOfStream:
            pass
    head, _, body = response.decode().partition("\r\n\r\n")
    return head.split("\r\n", 1)[0], body


async def samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample the endpoint reports, by name and labels."""
    status, body = await scrape(port)
    assert status == "HTTP/1.1 200 OK", status
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def members(scraped: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[str, float]:
    return {
        labels[0][1]: value for (name, labels), value in scraped.items() if name == "shoal_members"
    }


async def test_metrics_report_the_members_by_state_and_the_probing(agents: Agents) -> None:
    metrics_port = free_port()
    serf, shoal = await pair(agents, [f"-metrics-addr={LOOPBACK}:{metrics_port}"])

    async def probing() -> None:
        scraped = await samples(metrics_port)
        assert members(scraped) == {"alive": 2, "suspect": 0, "dead": 0, "left": 0}
        assert scraped[("shoal_probes_total", ())] >= 3
        assert scraped[("shoal_acks_total", ())] >= 3
        assert scraped[("shoal_received_bytes_total", (("transport", "udp"),))] > 0
        assert scraped[("shoal_push_pulls_total", ())] >= 1  # the join
        assert scraped[("shoal_rpc_requests_total", (("command", "members-filtered"),))] >= 1
        assert scraped[("shoal_health_score", ())] == 0
        assert scraped[("process_resident_memory_bytes", ())] > 0

    await eventually(probing, 15.0, "the swim agent's metrics show both members and probes")
    serf.kill()

    async def failed() -> None:
        scraped = await samples(metrics_port)
        assert members(scraped) == {"alive": 1, "suspect": 0, "dead": 1, "left": 0}
        assert scraped[("shoal_suspicions_raised_total", ())] >= 1
        assert scraped[("shoal_failures_declared_total", ())] >= 1

    await eventually(failed, DETECTED, "the swim agent's metrics show the killed member dead")
    assert "serving metrics at http://127.0.0.1:" in shoal.log()


async def test_the_endpoint_answers_other_paths_and_methods_plainly(agents: Agents) -> None:
    metrics_port = free_port()
    agent: Agent = await agents.start(
        "shoal-m", shoal=True, extra=[f"-metrics-addr={LOOPBACK}:{metrics_port}"]
    )
    status, body = await scrape(metrics_port, "/")
    assert status == "HTTP/1.1 404 Not Found"
    assert "/metrics" in body
    async with await anyio.connect_tcp(LOOPBACK, metrics_port) as stream:
        await stream.send(b"not http\r\n\r\n")
        assert (await stream.receive()).startswith(b"HTTP/1.1 400 Bad Request")
    assert members(await samples(metrics_port)) == {"alive": 1, "suspect": 0, "dead": 0, "left": 0}
    assert agent.process.poll() is None
