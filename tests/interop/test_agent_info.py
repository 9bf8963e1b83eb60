"""``serf info`` and ``swim info`` against a swim agent in a cluster with a real `serf agent`:
serf's sections (agent, runtime, serf, tags, event_handlers) and shoal's (memberlist, rpc),
the same text and JSON from both commands, and figures that match the cluster."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from tests.interop.conftest import Agent, Agents
from tests.interop.test_agent_handlers import pair


def swim_info(agent: Agent, *flags: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "swim.cli", "info", agent.rpc, *flags],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout


def parsed_text(text: str) -> dict[str, dict[str, str]]:
    """``serf info``'s text output read back: sections, then tab-indented ``k = v`` lines."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("\t"):
            key, _, value = line[1:].partition(" = ")
            current[key] = value
        else:
            assert line.endswith(":"), line
            current = sections[line[:-1]] = {}
    return sections


def steady(sections: dict[str, Any]) -> dict[str, Any]:
    """What two calls in a row report alike: not the RPC figures, which count the calls, nor
    the number of tasks, nor the traffic and probes that go on between them."""
    kept = {name: dict(values) for name, values in sections.items() if name != "rpc"}
    kept["runtime"].pop("tasks")
    kept["memberlist"] = {
        k: v for k, v in kept["memberlist"].items() if k.startswith(("members", "health"))
    }
    return kept


async def test_serf_info_and_swim_info_report_a_swim_agent_alike(agents: Agents) -> None:
    handler = "-event-handler=member-join,user:deploy=/bin/true"
    _, shoal = await pair(agents, [handler])
    _, serf_text = await shoal.cli("info")
    swim_text = swim_info(shoal)
    assert serf_text.endswith("\n") and not serf_text.endswith("\n\n")
    text = parsed_text(serf_text)
    assert steady(parsed_text(swim_text)) == steady(text)
    assert list(text) == sorted(text)  # sections sorted, as serf prints them
    assert {"agent", "event_handlers", "runtime", "serf", "tags", "memberlist", "rpc"} <= set(text)
    assert text["agent"] == {"name": "shoal-a"}
    assert text["tags"] == {"role": "web"}
    assert text["event_handlers"] == {"member-join:": "/bin/true", "user:deploy": "/bin/true"}
    assert text["serf"]["members"] == "2"
    assert (text["serf"]["failed"], text["serf"]["left"], text["serf"]["health_score"]) == (
        "0",
        "0",
        "0",
    )
    assert text["serf"]["encrypted"] == "false"
    assert text["runtime"]["os"] == "linux"
    assert text["runtime"]["version"].startswith("python3.")
    assert int(text["runtime"]["tasks"]) > 0
    assert text["memberlist"]["members_alive"] == "2"
    assert int(text["rpc"]["requests.stats"]) >= 1

    _, serf_json = await shoal.cli("info", "-format=json")
    swim_json = swim_info(shoal, "-format=json")
    assert steady(json.loads(swim_json)) == steady(json.loads(serf_json))
    assert steady(json.loads(serf_json)) == steady(text)
    assert swim_json.startswith('{\n  "agent": {\n    "name": "shoal-a"\n  },\n')
