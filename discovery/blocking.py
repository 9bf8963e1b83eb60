"""Service discovery for code that is not async, on a :class:`~swim.blocking.BlockingNode`.

:class:`BlockingDiscovery` runs a :class:`~discovery.client.Discovery` on the blocking node's
own loop and thread, and gives plain methods that wait for their answer::

    with BlockingNode(name="web-1", bind=("0.0.0.0", 0), tags={}) as node:
        node.join(["10.0.0.5:7946"])
        with BlockingDiscovery(node) as discovery:
            discovery.require(["users"])                       # fail fast at start-up
            reply = discovery.call("users", lambda i: fetch(i.address, "/me"))

``call`` runs the request, a plain function, in a worker thread, and fails over as
:meth:`Discovery.call` does when it raises a connection error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, TypeVar

import anyio

from discovery.catalog import Change, Instance
from discovery.client import RETRY_ON, ChangesLost, Discovery, Watch
from discovery.introspection import Metadata
from swim.blocking import BlockingNode, Waiting

T = TypeVar("T")


class BlockingDiscovery:
    """A :class:`~discovery.client.Discovery` over one blocking node, driven from ordinary
    code; it takes :class:`Discovery`'s options.  Close it (or leave the ``with`` block)
    before the node."""

    def __init__(self, node: BlockingNode, **options: Any) -> None:
        self._portal = node.portal
        self.discovery: Discovery
        """The client itself; use it only through the node's portal (another thread)."""
        self.discovery, self._manager = self._portal.enter(Discovery(node.node, **options))

    def __enter__(self) -> BlockingDiscovery:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop following the cluster (and save the cache file, if there is one)."""
        if not self._portal.closed:
            self._manager.__exit__(None, None, None)

    def instances(self, service: str, **filters: Any) -> list[Instance]:
        """The available instances now, best first, as :meth:`Discovery.instances`."""
        return self._portal.read(lambda: self.discovery.instances(service, **filters))

    def resolve(self, service: str, **options: Any) -> list[Instance]:
        """As :meth:`Discovery.resolve` (filters, ``metadata``, ``wait``)."""
        return self._portal.call(lambda: self.discovery.resolve(service, **options))

    def require(self, services: Iterable[str], *, timeout: float = 5.0) -> None:
        """Raise :class:`~discovery.client.MissingServices` unless every one of ``services``
        has an instance within ``timeout``."""
        self._portal.call(lambda: self.discovery.require(list(services), timeout=timeout))

    def metadata(self, instance: Instance) -> Metadata:
        return self._portal.call(self.discovery.metadata, instance)

    def call(
        self,
        service: str,
        request: Callable[[Instance], T],
        *,
        retry_on: tuple[type[BaseException], ...] = RETRY_ON,
        **options: Any,
    ) -> T:
        """``request(instance)`` on an instance of ``service``, in a worker thread, failing
        over to another on a connection error, as :meth:`Discovery.call` (filters,
        ``timeout``).  A request cut short by the timeout keeps running in its thread."""

        async def attempt(instance: Instance) -> T:
            return await anyio.to_thread.run_sync(request, instance, abandon_on_cancel=True)

        return self._portal.call(
            lambda: self.discovery.call(service, attempt, retry_on=retry_on, **options)
        )

    def watch(self, service: str, timeout: float | None = None) -> Iterator[Change | ChangesLost]:
        """Changes to ``service`` from now (the call, not the first ``next``), each waited for
        in turn; with ``timeout``, the iteration ends once that long passes without one, and
        it ends when the node closes."""
        watch: Watch = self._portal.read(self.discovery.watch, service)
        return Waiting(self._portal, watch, timeout)
