"""``swim agent -event-handler`` and RPC ``respond`` in a cluster with a real `serf agent`, driven
by the real `serf` CLI: queries answered by a handler's stdout and by an RPC client, an answer
over Serf's size limit, user and member-join events reaching handlers with what serf's own
handlers get, and a hung handler killed while gossip goes on.

Agents are processes, so these tests use real time and poll within deadlines."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

from swim.rpc import RpcClient, RpcError, RpcQueryEvent
from tests.interop.conftest import Agent, Agents, eventually
from tests.interop.test_serf_cluster import acked_by, serf_query, until_complete

SEE_EACH_OTHER = 10.0
"""Seconds two agents on loopback may take to see each other alive."""
HANDLED = 15.0
"""Seconds an event may take to reach a handler and be written down (Serf agents coalesce
user events for up to 3 s)."""


def handler(spec: str, script: str) -> str:
    return f"-event-handler={spec}={script}"


async def pair(
    agents: Agents, shoal_flags: Sequence[str], serf_flags: Sequence[str] = ()
) -> tuple[Agent, Agent]:
    """A serf agent and a swim agent that joined it, each seeing the other alive."""
    serf = await agents.start("serf-a", tags={"role": "db"}, extra=list(serf_flags))
    shoal = await agents.start(
        "shoal-a", shoal=True, tags={"role": "web"}, join=[serf], extra=list(shoal_flags)
    )

    async def alive_both_ways() -> None:
        for agent in (serf, shoal):
            assert await agent.statuses() == {"serf-a": "alive", "shoal-a": "alive"}, agent.name

    await eventually(alive_both_ways, SEE_EACH_OTHER, "serf and shoal see each other")
    return serf, shoal


async def written(path: Path, what: str) -> str:
    """The file a handler writes, once it holds a whole line."""

    async def there() -> None:
        assert path.exists() and path.read_text().endswith("\n"), what

    await eventually(there, HANDLED, what)
    return path.read_text()


async def test_serf_query_is_answered_by_a_swim_handlers_stdout(agents: Agents) -> None:
    answer = 'read q; echo "$SERF_SELF_NAME:$SERF_QUERY_NAME:$q"; echo "not in the answer" >&2'
    serf, shoal = await pair(
        agents, [handler("query:uptime", answer), handler("query:big", "head -c 2000 /dev/zero")]
    )
    # from the serf CLI through the serf agent, and through the swim agent's own RPC
    for via in (serf, shoal):
        result = await until_complete(
            lambda via=via: serf_query(via, "-timeout=2s", "uptime", "now"),  # type: ignore[misc]
            acked_by("serf-a", "shoal-a"),
            f"uptime through {via.name}",
        )
        assert result["Responses"] == {"shoal-a": "shoal-a:uptime:now\n"}, via.name

    # 2000 bytes do not fit Serf's 1 KiB response: no answer, only the ack, and a log line
    result = await until_complete(
        lambda: serf_query(serf, "-timeout=2s", "big"), acked_by("serf-a", "shoal-a"), "big"
    )
    assert result["Responses"] == {}
    assert (
        "for query:big printed 2000 bytes; they were not sent as the answer: the response is "
        "2000 bytes"
    ) in shoal.log()
    assert "over Serf's limit of 1024 bytes for a response" in shoal.log()


async def test_a_user_event_reaches_a_swim_handler_as_it_reaches_serfs(agents: Agents) -> None:
    def record(who: str) -> str:
        out = agents.directory / who
        return handler("user:deploy", f"env | grep ^SERF_ | sort > {out}.env; cat > {out}.stdin")

    serf, _ = await pair(agents, [record("shoal")], [record("serf")])
    await serf.cli("event", "deploy", "v1")
    environments = {}
    for who in ("serf", "shoal"):
        environments[who] = (await written(agents.directory / f"{who}.env", who)).splitlines()
        # the handler writes .stdin after .env: wait for it too, or a loaded machine races
        assert await written(agents.directory / f"{who}.stdin", who) == "v1\n", who
    shoal_env = dict(line.split("=", 1) for line in environments["shoal"])
    assert shoal_env == {
        "SERF_EVENT": "user",
        "SERF_SELF_NAME": "shoal-a",
        "SERF_SELF_ROLE": "web",
        "SERF_TAG_ROLE": "web",
        "SERF_USER_EVENT": "deploy",
        "SERF_USER_LTIME": shoal_env["SERF_USER_LTIME"],
    }
    serf_env = dict(line.split("=", 1) for line in environments["serf"])
    assert serf_env == shoal_env | {"SERF_SELF_NAME": "serf-a", "SERF_SELF_ROLE": "db"} | {
        "SERF_TAG_ROLE": "db"
    }
    assert int(shoal_env["SERF_USER_LTIME"]) >= 1


async def test_member_join_handlers_get_the_joiner_as_one_line(agents: Agents) -> None:
    def joins(who: str) -> str:
        return handler("member-join", f"cat >> {agents.directory / who}.joins")

    serf = await agents.start("serf-a", tags={"role": "db", "zone": "b"}, extra=[joins("serf")])
    await agents.start(
        "shoal-a", shoal=True, tags={"role": "web"}, join=[serf], extra=[joins("shoal")]
    )

    def fields(line: str) -> tuple[str, str, str, set[str]]:
        name, address, role, tags = line.split("\t")
        return name, address, role, set(tags.split(","))

    async def saw(who: str, joiner: str) -> tuple[str, str, str, set[str]]:
        async def there() -> None:
            path = agents.directory / f"{who}.joins"
            assert path.exists() and f"{joiner}\t" in path.read_text()

        await eventually(there, HANDLED, f"{who} ran its handler for {joiner}")
        lines = (agents.directory / f"{who}.joins").read_text().splitlines()
        return fields(next(line for line in lines if line.startswith(f"{joiner}\t")))

    assert await saw("shoal", "serf-a") == ("serf-a", "127.0.0.1", "db", {"role=db", "zone=b"})
    assert await saw("serf", "shoal-a") == ("shoal-a", "127.0.0.1", "web", {"role=web"})


async def test_a_hung_handler_is_killed_at_the_timeout_and_gossip_goes_on(agents: Agents) -> None:
    pid_file = agents.directory / "hang.pid"
    after = agents.directory / "after"
    serf, shoal = await pair(
        agents,
        [
            "-event-handler-timeout=1s",
            handler("user:hang", f"echo $$ > {pid_file}; exec sleep 600"),
            handler("user:after", f"cat >> {after}"),
        ],
    )
    await serf.cli("event", "hang")
    pid = int(await written(pid_file, "the hung handler started"))

    async def killed() -> None:
        assert "for user:hang ran past the 1 s timeout (-event-handler-timeout): killed" in (
            shoal.log()
        )
        assert not running(pid)

    await eventually(killed, HANDLED, "the hung handler killed")
    await serf.cli("event", "after", "still here")
    assert await written(after, "the next handler ran") == "still here\n"
    assert await serf.statuses() == {"serf-a": "alive", "shoal-a": "alive"}


def running(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not: it is dead, only not reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def answer_on_rpc(
    agent: Agent,
    prefix: bytes,
    answered_twice: list[tuple[str, str]],
    *,
    task_status: TaskStatus[None],
) -> None:
    """Answer every query ``agent`` streams with ``prefix + payload`` through ``respond``, then
    try again, and note what the agent said to that."""
    async with (
        RpcClient.connect(agent.rpc_address) as client,
        client.stream("query") as events,
    ):
        task_status.started()
        async for event in events:
            assert isinstance(event, RpcQueryEvent)
            await client.respond(event.id, prefix + event.payload)
            try:
                await client.respond(event.id, b"twice")
            except RpcError as exc:
                answered_twice.append((agent.name, str(exc)))


async def test_rpc_clients_answer_queries_with_respond_on_serf_and_swim(agents: Agents) -> None:
    serf, shoal = await pair(agents, [])
    answered_twice: list[tuple[str, str]] = []
    async with anyio.create_task_group() as nursery:
        for agent in (serf, shoal):
            prefix = f"{agent.name} says ".encode()
            await nursery.start(answer_on_rpc, agent, prefix, answered_twice)
        for via in (serf, shoal):
            result = await until_complete(
                lambda via=via: serf_query(via, "-timeout=2s", "ping", "hi"),  # type: ignore[misc]
                lambda r: len(r["Responses"]) == 2,
                f"ping through {via.name}",
            )
            assert result["Responses"] == {
                "serf-a": "serf-a says hi",
                "shoal-a": "shoal-a says hi",
            }, via.name
        nursery.cancel_scope.cancel()
    # one answer per query, on either: Serf's words, and shoal's
    assert ("serf-a", "failed to respond to key query: response already sent") in answered_twice
    assert any(
        name == "shoal-a" and "'ping' was answered already" in why for name, why in answered_twice
    )
