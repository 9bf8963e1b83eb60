"""The layers hold: imports run one way, and the sans-IO layers touch no I/O framework.

DESIGN.md: bytes -> wire -> member stack -> (runtime | simulator) -> discovery -> agent (the
agent runs discovery's gateway and service host).  Every module
of the packages is placed in a layer here (a new module must be placed too), and each may
import only from its own layer or those below.  Nothing in the wire, the member stack or the
simulator imports trio, anyio or asyncio.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("swim", "discovery", "simulator")

WIRE, STACK, RUNTIME, DISCOVERY, AGENT = range(5)
"""Layers, lowest first.  The simulator sits beside the runtime: at the runtime's rank, but it
may not import the runtime (see SIDE_BY_SIDE)."""

LAYERS: dict[str, int] = {
    "swim.wire": WIRE,
    "swim": STACK,  # the package's __init__ (version) only
    "swim.config": STACK,
    "swim.members": STACK,
    "swim.events": STACK,
    "swim.logs": STACK,
    "swim.toplevel": STACK,  # how any command ends on an error: pure, used by the simulator's
    "swim.timers": STACK,
    "swim.awareness": STACK,
    "swim.suspicion": STACK,
    "swim.broadcasts": STACK,
    "swim.table": STACK,
    "swim.context": STACK,
    "swim.gossip": STACK,
    "swim.probe": STACK,
    "swim.pushpull": STACK,
    "swim.state": STACK,
    "swim.engine": STACK,
    "swim.serf": STACK,
    "swim.stack": STACK,
    "swim.background": RUNTIME,
    "swim.queues": RUNTIME,
    "swim.sockets": RUNTIME,
    "swim.node": RUNTIME,
    "swim.keys": RUNTIME,
    "swim.blocking": RUNTIME,
    "swim.rpc": AGENT,
    "swim.snapshot": AGENT,
    "swim.handlers": AGENT,
    "swim.metrics": AGENT,
    "swim.monitor": AGENT,
    "swim.agent": AGENT,
    "swim.demo": AGENT,
    "swim.cli": AGENT,
    "swim.agentconfig": AGENT,
    "swim.agentgateway": AGENT,  # the agent's gateway: above discovery, which it runs
    "simulator": RUNTIME,
    "discovery": DISCOVERY,
}
SANS_IO = ("swim.wire", "swim.stack", "simulator")
"""Layers (by the name of a module in them) that must not import an I/O framework."""
FRAMEWORKS = frozenset({"trio", "anyio", "asyncio", "sniffio"})
SIDE_BY_SIDE = {("simulator", "swim.node"), ("simulator", "swim.background")}


def layer_of(module: str) -> int:
    """The layer of ``module``: its longest prefix in :data:`LAYERS`."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        layer = LAYERS.get(".".join(parts[:end]))
        if layer is not None:
            return layer
    raise KeyError(module)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at run time or for type checking alike."""
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def ours(module: str) -> bool:
    return module.split(".", maxsplit=1)[0] in PACKAGES


def test_every_module_has_a_layer() -> None:
    unplaced = []
    for name in modules():
        try:
            layer_of(name)
        except KeyError:
            unplaced.append(name)
    assert not unplaced, f"place these modules in LAYERS: {unplaced}"


@pytest.mark.parametrize("name", sorted(modules()))
def test_imports_go_down_only(name: str) -> None:
    mine = layer_of(name)
    above = sorted(
        imported
        for imported in imports(modules()[name])
        if ours(imported) and _known(imported) and layer_of(imported) > mine
    )
    assert not above, f"{name} (layer {mine}) imports from layers above it: {above}"


@pytest.mark.parametrize("name", sorted(modules()))
def test_sans_io_layers_touch_no_io_framework(name: str) -> None:
    if not any(name == top or name.startswith(top + ".") for top in SANS_IO) and (
        layer_of(name) > STACK
    ):
        return
    imported = imports(modules()[name])
    frameworks = sorted(i for i in imported if i.split(".")[0] in FRAMEWORKS)
    assert not frameworks, f"{name} is sans-IO but imports {frameworks}"
    runtime = sorted(
        i
        for i in imported
        if ours(i) and _known(i) and layer_of(i) >= RUNTIME and not i.startswith("simulator")
    )
    assert not runtime, f"{name} is sans-IO but imports the runtime: {runtime}"


def test_the_simulator_does_not_import_the_runtime() -> None:
    for name, path in modules().items():
        if name.startswith("simulator"):
            for imported in imports(path):
                assert not any(imported.startswith(r) for _, r in SIDE_BY_SIDE), (name, imported)


def _known(module: str) -> bool:
    """Whether ``module`` names one of our modules (``from swim.x import name`` also yields
    ``swim.x.name``, which may be a function, not a module)."""
    try:
        layer_of(module)
    except KeyError:
        return False
    return True
