"""`swim agent -http-addr -dns-addr` against real clients: curl, py-consul (catalog, health, a
blocking query that returns on a registration), dig (A, SRV, a truncated answer retried over
TCP), a real Prometheus finding targets through HTTP SD, a mixed cluster with a serf agent, and
a Python Discovery that sees what the agent registered."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import anyio
import consul
import pytest

from discovery.catalog import Change, ChangeKind
from discovery.client import Discovery
from discovery.records import ServiceRecord, write_tags
from tests.interop.conftest import (
    LOCAL,
    LOOPBACK,
    Agent,
    Agents,
    eventually,
    free_port,
    seed_of,
    shoal,
)
from tests.test_agent_process import refused, taken

CONVERGE = 3 * LOCAL.push_pull_interval + 4.0
TOOL_LIMIT = 20.0


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"these tests need `{name}`: apt-get install {package}", pytrace=False)
    return path


async def run(*command: str) -> str:
    with anyio.fail_after(TOOL_LIMIT):
        done = await anyio.run_process(list(command), check=False)
    assert done.returncode == 0, (command, done.stdout, done.stderr)
    return str(done.stdout.decode())


async def curl(url: str, *options: str) -> Any:
    out = await run(
        tool("curl", "curl"), "-sS", "--fail-with-body", "--max-time", "15", *options, url
    )
    return json.loads(out) if out.strip() else None


async def dig(port: int, *query: str) -> str:
    return await run(
        tool("dig", "dnsutils"), f"@{LOOPBACK}", "-p", str(port), "+time=3", "+tries=1", *query
    )


async def gateway_agent(
    agents: Agents,
    name: str,
    tmp_path: Path,
    *,
    services: list[dict[str, Any]] | None = None,
    extra: tuple[str, ...] = (),
    join: tuple[Agent, ...] = (),
) -> tuple[Agent, int, int]:
    """A shoal agent serving HTTP and DNS on free ports; its ports."""
    http, dns_port = free_port(), free_port()
    config = tmp_path / f"{name}.json"
    config.write_text(json.dumps({"http_addr": f"{LOOPBACK}:{http}", "services": services or []}))
    config.chmod(0o600)
    agent = await agents.start(
        name,
        shoal=True,
        join=join,
        extra=[f"-config-file={config}", f"-dns-addr={dns_port}", *extra],
    )
    return agent, http, dns_port


async def test_curl_and_py_consul_read_the_catalog_and_follow_a_blocking_query(
    agents: Agents, tmp_path: Path
) -> None:
    web = {"Name": "web", "Port": 8080, "Tags": ["blue", "v1"], "Meta": {"zone": "z1"}}
    agent, http, _ = await gateway_agent(agents, "gw", tmp_path, services=[web])
    base = f"http://{LOOPBACK}:{http}"
    assert await curl(f"{base}/v1/catalog/services") == {"web": ["blue", "v1"]}
    client = consul.Consul(host=LOOPBACK, port=http)

    async def meta_arrived() -> None:
        _, entries = await anyio.to_thread.run_sync(lambda: client.catalog.service("web"))
        assert entries[0]["ServiceMeta"] == {"zone": "z1"}

    await eventually(meta_arrived, CONVERGE, "the metadata is served")
    index, healthy = await anyio.to_thread.run_sync(
        lambda: client.health.service("web", passing=True)
    )
    assert [(e["Node"]["Node"], e["Service"]["Port"], e["Service"]["Tags"]) for e in healthy] == [
        ("gw", 8080, ["blue", "v1"])
    ]
    answered: list[Any] = []

    def blocking() -> None:
        answered.append(client.health.service("api", index=index, wait="20s"))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(anyio.to_thread.run_sync, blocking)
        await anyio.sleep(0.5)
        assert not answered, "the blocking query returned before anything changed"
        registered = await anyio.to_thread.run_sync(
            lambda: client.agent.service.register("api", service_id="api-1", port=9000, tags=["x"])
        )
        assert registered is True
        with anyio.fail_after(TOOL_LIMIT):
            while not answered:
                await anyio.sleep(0.05)
    new_index, entries = answered[0]
    assert int(new_index) > int(index)
    assert [(e["Service"]["ID"], e["Service"]["Port"]) for e in entries] == [("api-1", 9000)]
    nodes = await curl(f"{base}/v1/catalog/nodes")
    assert [n["Node"] for n in nodes] == ["gw"]
    assert (await curl(f"{base}/v1/agent/self"))["Config"]["NodeName"] == "gw"
    await curl(f"{base}/v1/agent/service/deregister/api-1", "-X", "PUT")
    assert await curl(f"{base}/v1/health/service/api") == []
    _, info = await agent.cli("info", "-format=json")  # the real serf command
    counters = json.loads(info)["gateway"]
    assert int(counters["http.requests"]) >= 8
    assert counters["dns.malformed"] == "0"


async def test_a_token_is_asked_of_every_request(agents: Agents, tmp_path: Path) -> None:
    _, http, _ = await gateway_agent(agents, "gw", tmp_path, extra=("-http-token=s3cret",))
    url = f"http://{LOOPBACK}:{http}/v1/agent/self"
    with anyio.fail_after(TOOL_LIMIT):
        done = await anyio.run_process(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url], check=False
        )
    assert done.stdout == b"403"
    assert (await curl(url, "-H", "X-Consul-Token: s3cret"))["Config"]["NodeName"] == "gw"


async def test_dig_finds_a_and_srv_and_retries_a_truncated_answer_over_tcp(
    agents: Agents, tmp_path: Path
) -> None:
    web = {"Name": "web", "Port": 8080, "Tags": ["blue"]}
    gw, _, dns_port = await gateway_agent(agents, "gw", tmp_path, services=[web])
    assert (await dig(dns_port, "+short", "web.service.shoal", "A")).split() == [LOOPBACK]
    assert (await dig(dns_port, "+short", "blue.web.service.shoal", "A")).split() == [LOOPBACK]
    assert (await dig(dns_port, "+short", "_web._tcp.service.shoal", "SRV")).split() == [
        "1",
        "100",
        "8080",
        "gw.node.shoal.",
    ]
    assert (await dig(dns_port, "+short", "gw.node.shoal")).split() == [LOOPBACK]
    assert "status: NXDOMAIN" in await dig(dns_port, "nope.service.shoal")
    assert "status: REFUSED" in await dig(dns_port, "example.com")
    count = 14
    async with shoal() as nodes:
        for n in range(count):
            tags = write_tags(
                {}, {"big": ServiceRecord(9000 + n)}, metadata_port=None, draining=False
            )
            node = await nodes.start(f"big-{n:02}", tags)
            await node.join([seed_of(gw)])

        async def all_there() -> None:
            out = await dig(dns_port, "+short", "+tcp", "big.service.shoal", "SRV")
            assert len(out.splitlines()) == count

        await eventually(all_there, CONVERGE, "every big instance is in the catalog")
        out = await dig(dns_port, "+noedns", "big.service.shoal", "SRV")
        assert "Truncated, retrying in TCP mode" in out
        answers = [line for line in out.splitlines() if "\tSRV\t" in line]
        assert len(answers) == count


async def test_prometheus_finds_the_services_and_drops_one_that_deregisters(
    agents: Agents, tmp_path: Path
) -> None:
    prometheus = tool("prometheus", "prometheus")
    services = [
        {"Name": "web", "Port": 8080, "Tags": ["blue"], "Meta": {"team": "payments"}},
        {"Name": "db", "Port": 5432},
    ]
    _, http, _ = await gateway_agent(agents, "gw", tmp_path, services=services)
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1h\n"
        "scrape_configs:\n  - job_name: shoal\n    http_sd_configs:\n"
        f"      - url: http://{LOOPBACK}:{http}/v1/prometheus/sd\n        refresh_interval: 1s\n"
        "    relabel_configs:\n      - source_labels: [__meta_shoal_service]\n"
        "        target_label: service\n"
    )
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address={LOOPBACK}:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:

        async def targets() -> dict[str, dict[str, str]]:
            found = await curl(f"http://{LOOPBACK}:{port}/api/v1/targets")
            return {
                t["labels"]["service"]: t["discoveredLabels"]
                for t in found["data"]["activeTargets"]
            }

        async def both() -> None:
            assert set(await targets()) == {"web", "db"}

        await eventually(both, 60.0, "prometheus finds both services", every=0.5)
        web = (await targets())["web"]
        assert web["__address__"] == f"{LOOPBACK}:8080"
        assert web["__meta_shoal_tags"] == ",blue,"

        async def with_meta() -> None:
            assert (await targets())["web"].get("__meta_shoal_service_metadata_team") == "payments"

        await eventually(with_meta, 30.0, "prometheus sees the metadata", every=0.5)
        await curl(f"http://{LOOPBACK}:{http}/v1/agent/service/deregister/db", "-X", "PUT")

        async def only_web() -> None:
            assert set(await targets()) == {"web"}

        await eventually(only_web, 30.0, "prometheus drops the deregistered service", every=0.5)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


async def test_a_mixed_cluster_with_serf_converges_and_serfs_tags_are_services(
    agents: Agents, tmp_path: Path
) -> None:
    serf = await agents.start("serf-1", tags={"svc.cache": "p=6379,t=lru"})
    _, http, _ = await gateway_agent(
        agents, "gw", tmp_path, join=(serf,), services=[{"Name": "web", "Port": 80}]
    )
    base = f"http://{LOOPBACK}:{http}"

    async def converged() -> None:
        statuses = await serf.statuses()
        assert statuses == {"serf-1": "alive", "gw": "alive"}
        members = await curl(f"{base}/v1/agent/members")
        assert {m["Name"]: m["Status"] for m in members} == {"serf-1": 1, "gw": 1}
        assert await curl(f"{base}/v1/catalog/services") == {"cache": ["lru"], "web": []}

    await eventually(converged, CONVERGE, "serf and the gateway agree")
    serf.interrupt()

    async def gone() -> None:
        assert await curl(f"{base}/v1/catalog/services") == {"web": []}

    await eventually(gone, CONVERGE, "a serf agent that left is gone from the catalog")


async def test_python_discovery_sees_what_the_agent_registered_and_a_drain_on_sigterm(
    agents: Agents, tmp_path: Path
) -> None:
    web = {"Name": "web", "ID": "web-1", "Port": 8080, "Tags": ["blue"], "Meta": {"zone": "z1"}}
    gw, http, _ = await gateway_agent(agents, "gw", tmp_path, services=[web])
    async with shoal() as nodes:
        node = await nodes.start("py", {})
        await node.join([seed_of(gw)])
        async with Discovery(node) as discovery:
            (instance,) = await discovery.resolve("web", wait=CONVERGE)
            assert (instance.node, instance.address[1], instance.tags) == ("gw", 8080, ("blue",))
            assert instance.instance_id == "web-1"
            assert await discovery.metadata(instance) == {"zone": "z1"}
            served = await curl(f"http://{LOOPBACK}:{http}/v1/health/service/web?passing")
            assert [(e["Node"]["Node"], e["Service"]["Port"]) for e in served] == [("gw", 8080)]
            changes = discovery.watch("web")
            gw.process.terminate()
            kinds = []
            with anyio.fail_after(CONVERGE):
                async for change in changes:
                    assert isinstance(change, Change)
                    kinds.append(change.kind)
                    if change.kind is ChangeKind.REMOVED:
                        break
            assert kinds == [ChangeKind.ADDED, ChangeKind.DRAINING, ChangeKind.REMOVED]
            with anyio.fail_after(TOOL_LIMIT):
                while gw.process.poll() is None:
                    await anyio.sleep(0.05)
            assert gw.process.returncode == 0
            assert "draining the agent's services: web" in gw.log()


def test_an_http_port_in_use_names_the_flag_and_the_fix() -> None:
    with taken(socket.SOCK_STREAM) as port:
        line = refused(f"-http-addr={LOOPBACK}:{port}")
    assert f"-http-addr {LOOPBACK}:{port}: port {port} is in use" in line
    assert "choose another port with -http-addr=" in line


def test_a_dns_port_in_use_names_the_flag() -> None:
    with taken(socket.SOCK_DGRAM) as port:
        line = refused(f"-dns-addr={port}")
    assert f"-dns-addr {LOOPBACK}:{port}: port {port} is in use" in line


@pytest.mark.parametrize(
    ("config", "said"),
    [
        ({"services": [{"Port": 80}]}, "services[0]: Missing service name: give Name"),
        ({"services": {"Name": "web"}}, "services: expected a list of service objects"),
        ({"http_addr": "localhost:x"}, "http_addr 'localhost:x': bad port"),
        ({"dns_ttl": "soon"}, "dns_ttl: 'soon' is not a duration"),
    ],
)
def test_a_bad_gateway_setting_is_one_line_naming_the_key(
    tmp_path: Path, config: dict[str, Any], said: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    assert said in refused(f"-config-file={path}")
