"""A synchronous client (a script, a Flask view, a worker) that calls "greeter" with failover.

    python examples/sync_client.py --join 127.0.0.1:7946 --count 5

No async code: the blocking facade runs the shoal node on a thread of its own, and each call
is a plain ``urllib`` request run in a worker thread, failing over as the async client does.
"""

from __future__ import annotations

import argparse
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

from discovery import CallFailed, Instance, MissingServices, NoInstances
from discovery.blocking import BlockingDiscovery
from swim.blocking import BlockingNode
from swim.config import Config
from swim.node import JoinError
from swim.toplevel import run_command

SERVICE = "greeter"


class Rejected(Exception):
    """The instance refused the request itself (a 4xx): another instance would refuse it
    too, so this is not a connection error and the call does not fail over."""


def get(instance: Instance, path: str = "/hello") -> str:
    """``GET path`` with urllib; a refused connection or a 5xx is the instance's failure (the
    call moves on to another), a 4xx is :class:`Rejected`."""
    host, port = instance.address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as reply:
            body: bytes = reply.read()
            return body.decode()
    except urllib.error.HTTPError as exc:  # an OSError: it must not reach the failover as one
        if exc.code >= 500:
            raise ConnectionError(f"{instance} answered {exc.code}") from exc
        raise Rejected(f"{instance} answered {exc.code} to GET {path}") from exc
    except urllib.error.URLError as exc:
        raise ConnectionError(f"{instance}: {exc.reason}") from exc


def run(seeds: Sequence[str], count: int, interval: float, config: Config | None = None) -> int:
    """Call "greeter" ``count`` times; returns how many calls failed."""
    name = f"sync-client-{os.getpid()}"
    with BlockingNode(config or Config.local(), name=name, bind=("127.0.0.1", 0), tags={}) as node:
        node.join(seeds)
        with BlockingDiscovery(node) as discovery:
            discovery.require([SERVICE], timeout=10.0)  # fail fast at start-up
            failed = 0
            for i in range(count):
                try:
                    print(f"{i}: {discovery.call(SERVICE, get, timeout=5.0).strip()}")
                except (CallFailed, NoInstances, Rejected) as exc:
                    failed += 1
                    print(f"{i}: failed: {exc}")
                time.sleep(interval)  # a client's own pace, not a wait for the protocol
            return failed


def main(argv: Sequence[str] | None = None) -> None:
    """Exit 0 when every call succeeded, 1 otherwise; failing fast at start-up is one line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--join", action="append", required=True, help="host:port of a member")
    parser.add_argument("--count", type=int, default=5)
    parser.add_argument("--interval", type=float, default=0.5)
    args = parser.parse_args(argv)

    def calls() -> int:
        return 1 if run(args.join, args.count, args.interval) else 0

    raise SystemExit(
        run_command("sync_client", calls, expected=(JoinError, MissingServices, NoInstances))
    )


if __name__ == "__main__":
    main()
