"""A Consul-compatible gateway: the catalog a node holds, served over HTTP and DNS, so that
callers that are not Python (nginx, Envoy, Prometheus, shell scripts) find services too.

``async with Gateway(node, http=("127.0.0.1", 8500), dns=("127.0.0.1", 8600)):`` serves the
node's view; :mod:`discovery.gateway.api` and :mod:`discovery.gateway.dns` decide every
answer without I/O.
"""

from discovery.gateway.server import Gateway, HttpStatistics, Limits, ListenError, register

__all__ = ["Gateway", "HttpStatistics", "Limits", "ListenError", "register"]
