"""Encode + decode throughput of a ping/ack exchange, as a ratio to the floor measured in the
same run: msgpack ``packb`` + ``unpackb`` of the same content (+ AES-GCM for the encrypted case).
A last row does the same for a full gossip packet (a compound of alive messages) with LZW, whose
floor is still msgpack alone: it shows what pure-Python compression costs.

    python benchmarks/wire.py [--seconds 1.5]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import msgpack
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from swim import wire

ADDR = bytes((10, 0, 0, 1))
PING = wire.Ping(seq_no=7, node="node-b", source_addr=ADDR, source_port=7946, source_node="node-a")
# Serf's acks carry a network coordinate: 1 version byte + about 130 bytes of msgpack.
ACK = wire.Ack(seq_no=7, payload=bytes(131))
PING_MAP = {
    "Node": "node-b",
    "SeqNo": 7,
    "SourceAddr": ADDR,
    "SourceNode": "node-a",
    "SourcePort": 7946,
}
ACK_MAP = {"Payload": bytes(131), "SeqNo": 7}
VSN = bytes((1, 5, 2, 2, 5, 5))
ALIVES = [
    wire.Alive(incarnation=i, node=f"node-{i:04d}", addr=ADDR, port=7946, vsn=VSN, meta=b"\xff\x80")
    for i in range(14)
]
ALIVE_MAPS = [
    {
        "Addr": ADDR,
        "Incarnation": i,
        "Meta": b"\xff\x80",
        "Node": f"node-{i:04d}",
        "Port": 7946,
        "Vsn": VSN,
    }
    for i in range(14)
]


def rate(work: Callable[[], object], seconds: float) -> float:
    """Calls of ``work`` per second, best of three runs."""
    best = 0.0
    for _ in range(3):
        calls, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / 3:
            for _ in range(100):
                work()
            calls += 100
        best = max(best, calls / elapsed)
    return best


def exchange(options: wire.WireOptions) -> Callable[[], object]:
    """One ping/ack exchange through shoal's packet layer: encode and decode both packets."""
    ping, ack = wire.encode, wire.encode

    def run() -> object:
        wire.decode_packet(wire.encode_packet([ping(PING)], options), options)
        return wire.decode_packet(wire.encode_packet([ack(ACK)], options), options)

    return run


def gossip(options: wire.WireOptions) -> Callable[[], object]:
    """One gossip packet of 14 alive messages (about 1.2 KB) encoded and decoded."""
    parts = [wire.encode(alive) for alive in ALIVES]

    def run() -> object:
        return wire.decode_packet(wire.encode_packet(parts, options), options)

    return run


def gossip_floor() -> object:
    """The same alive messages through msgpack alone."""
    return [msgpack.unpackb(msgpack.packb(m, use_bin_type=False), raw=True) for m in ALIVE_MAPS]


def floor(aead: AESGCM | None) -> Callable[[], object]:
    """The same content through msgpack alone (and AES-GCM with a fresh nonce when ``aead``
    is given)."""

    def run() -> object:
        for content in (PING_MAP, ACK_MAP):
            packed = b"\x00" + msgpack.packb(content, use_bin_type=False)
            if aead is not None:
                nonce = os.urandom(12)
                packed = aead.decrypt(nonce, aead.encrypt(nonce, packed, None), None)
            result = msgpack.unpackb(packed[1:], raw=True)
        return result

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.5, help="time per measurement")
    args = parser.parse_args()
    key = os.urandom(32)
    cases = [
        ("plaintext", wire.WireOptions(), None),
        ("compressed", wire.WireOptions(compress=True), None),
        ("encrypted", wire.WireOptions(keyring=wire.Keyring([key])), AESGCM(key)),
    ]
    print(f"{'ping/ack':<12}{'shoal exch/s':>14}{'floor exch/s':>14}{'ratio':>8}")
    for name, options, aead in cases:
        ours = rate(exchange(options), args.seconds)
        base = rate(floor(aead), args.seconds)
        print(f"{name:<12}{ours:>14,.0f}{base:>14,.0f}{base / ours:>7.2f}x")
    print(f"\n{'gossip packet':<16}{'shoal pkt/s':>12}{'floor pkt/s':>12}{'ratio':>8}")
    for name, options in (("plaintext", cases[0][1]), ("compressed", cases[1][1])):
        ours = rate(gossip(options), args.seconds)
        base = rate(gossip_floor, args.seconds)
        print(f"{name:<16}{ours:>12,.0f}{base:>12,.0f}{base / ours:>7.2f}x")


if __name__ == "__main__":
    main()
