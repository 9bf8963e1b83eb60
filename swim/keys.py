"""Cluster-wide keyring changes, as Serf's ``KeyManager`` (``keymanager.go``) makes them.

Each operation sends one of Serf's internal key queries to every member, with Serf's default
query parameters, and tallies the answers until every live member has answered or the query
times out.  Like Serf, it fails unless every live member answered and none reported an error,
so an operator knows when a rotation step has not reached the whole cluster yet.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from swim import wire
from swim.serf.layer import INTERNAL_PREFIX, QueryAnswer
from swim.wire import serf as msg

if TYPE_CHECKING:
    from swim.node import Node


@dataclass(slots=True)
class KeyResult:
    """What the members answered (Serf's ``KeyResponse``)."""

    num_nodes: int = 0
    """Live members when the query went out: how many answers a full success needs."""
    num_resp: int = 0
    num_err: int = 0
    messages: dict[str, str] = field(default_factory=dict)
    """Per node, its error (or warning) message."""
    keys: dict[str, int] = field(default_factory=dict)
    """For a listing, each base64 key and how many members hold it."""
    primary_keys: dict[str, int] = field(default_factory=dict)
    """For a listing, each base64 primary key and how many members encrypt with it."""


class KeyOperationError(Exception):
    """A key operation did not succeed everywhere; ``result`` says who answered what."""

    def __init__(self, message: str, result: KeyResult) -> None:
        super().__init__(message)
        self.result = result


async def install_key(node: Node, key: str, relay_factor: int = 0) -> KeyResult:
    """Add the base64 ``key`` to every member's keyring (for decryption only, until used)."""
    return await _key_query(node, "install-key", key, relay_factor)


async def use_key(node: Node, key: str, relay_factor: int = 0) -> KeyResult:
    """Make the base64 ``key``, already installed everywhere, every member's primary key."""
    return await _key_query(node, "use-key", key, relay_factor)


async def remove_key(node: Node, key: str, relay_factor: int = 0) -> KeyResult:
    """Remove the base64 ``key`` (not the primary one) from every member's keyring."""
    return await _key_query(node, "remove-key", key, relay_factor)


async def list_keys(node: Node, relay_factor: int = 0) -> KeyResult:
    """Ask every member for its keys; ``keys`` counts the members holding each."""
    return await _key_query(node, "list-keys", "", relay_factor)


async def _key_query(node: Node, kind: str, key: str, relay_factor: int) -> KeyResult:
    result = KeyResult()
    try:
        raw_key = base64.b64decode(key, validate=True)
    except binascii.Error as exc:
        raise KeyOperationError(
            f"the key is not valid base64 ({exc}); use a key from `swim keygen`", result
        ) from None
    # Serf sends the request even for a listing, where members ignore it.
    request = msg.encode_serf(msg.KeyRequest(raw_key))
    answers = await node.start_query(INTERNAL_PREFIX + kind, request, relay_factor=relay_factor)
    result.num_nodes = node.engine.live_count()
    async for arrival in answers.arrivals():
        if isinstance(arrival, QueryAnswer):
            _tally(result, arrival)
            if result.num_resp == result.num_nodes:
                break  # everyone answered: no need to wait out the timeout
    if result.num_err:
        raise KeyOperationError(
            f"{result.num_err}/{result.num_nodes} nodes reported failure", result
        )
    if result.num_resp != result.num_nodes:
        raise KeyOperationError(
            f"{result.num_resp}/{result.num_nodes} nodes reported success", result
        )
    return result


def _tally(result: KeyResult, answer: QueryAnswer) -> None:
    """Count one member's answer in (``streamKeyResp``)."""
    result.num_resp += 1
    try:
        response = msg.decode_serf(answer.payload)
    except wire.DecodeError:
        response = None
    if not isinstance(response, msg.KeyResponse):
        result.messages[answer.node] = f"Invalid key query response type: {answer.payload!r}"
        result.num_err += 1
        return
    if not response.result:
        result.num_err += 1
    if response.message:
        result.messages[answer.node] = response.message
    for key in response.keys:
        result.keys[key] = result.keys.get(key, 0) + 1
    if response.primary_key:
        primary = response.primary_key
        result.primary_keys[primary] = result.primary_keys.get(primary, 0) + 1
