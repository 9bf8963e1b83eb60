"""``swim demo``: memberlist's wire format at work, over real loopback sockets.

It builds what a joining node sends (an alive message with Serf tags, a ping), shows each layer
a packet passes through (compound, LZW, CRC, AES-GCM), sends the packet over UDP and a push-pull
over TCP between two sockets on 127.0.0.1, and decodes both on the other side.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import trio

from swim import wire
from swim.wire import messages, packet, serf

VSN = bytes((1, 5, 2, 2, 5, 5))  # what a Serf 0.9.4 agent advertises
LOOPBACK = "127.0.0.1"
GO_PING = bytes.fromhex("0082a44e6f6465a66e6f64652d62a55365714e6f07")  # from Go, vectors.md


def _hex(data: bytes, limit: int = 48) -> str:
    text = data[:limit].hex(" ")
    return text + (f" ... ({len(data)} bytes)" if len(data) > limit else f" ({len(data)} bytes)")


async def run_demo(say: Callable[[str], None] = print) -> None:
    """Walk through the wire layer; raises if any step does not round-trip exactly."""
    say("1. Messages, byte-identical to memberlist's Go encoder")
    ping = wire.Ping(seq_no=7, node="node-b")
    encoded = wire.encode(ping)
    say(f"   ping{{SeqNo:7, Node:node-b}} -> {_hex(encoded)}")
    say(f"   identical to Go's bytes: {encoded == GO_PING}")
    if encoded != GO_PING:
        raise RuntimeError("the ping does not match Go's encoding")

    tags = {"role": "demo", "lang": "python"}
    alive = wire.Alive(
        incarnation=1,
        node="shoal-demo",
        addr=bytes((127, 0, 0, 1)),
        port=7946,
        vsn=VSN,
        meta=serf.encode_tags(tags),
    )
    say(f"   alive with Serf tags {tags} -> {_hex(wire.encode(alive))}")

    key = os.urandom(32)
    options = wire.WireOptions(keyring=wire.Keyring([key]), compress=True)
    say("\n2. One packet, layer by layer, under a fresh AES-256 key")
    parts = [wire.encode(ping), wire.encode(alive)] * 8
    compound = messages.encode_compound(parts)
    compressed = packet.compress_message(compound)
    say(f"   compound of {len(parts)} messages: {len(compound)} bytes")
    say(f"   LZW-compressed:                 {len(compressed)} bytes")
    say(f"   with CRC:                       {len(packet.add_crc(compressed))} bytes")
    datagram = wire.encode_packet(parts, options, crc=True)
    say(f"   AES-256-GCM encrypted:          {len(datagram)} bytes: {_hex(datagram, 16)}")

    say("\n3. Across real sockets on 127.0.0.1")
    with (
        trio.socket.socket(type=trio.socket.SOCK_DGRAM) as sender,
        trio.socket.socket(type=trio.socket.SOCK_DGRAM) as receiver,
    ):
        await receiver.bind((LOOPBACK, 0))
        await sender.sendto(datagram, receiver.getsockname())
        with trio.fail_after(5):
            data, _ = await receiver.recvfrom(65536)
    received = wire.decode_packet(data, options)
    say(f"   UDP: received {len(data)} bytes, decoded {len(received)} messages")
    if received != [ping, alive] * 8:
        raise RuntimeError("the packet did not decode to what was sent")

    request = wire.PushPull(
        states=[
            wire.PushNodeState(
                name=alive.node,
                addr=alive.addr,
                port=alive.port,
                incarnation=alive.incarnation,
                state=wire.NodeState.ALIVE,
                vsn=VSN,
                meta=alive.meta,
            )
        ],
        join=True,
    )
    got = await _tcp_round_trip(wire.encode_stream(request, options), options)
    say(f"   TCP: push-pull join request decoded with {len(got.states)} node state(s)")
    for state in got.states:
        say(f"        {state.name} {state.state.name.lower()} tags={serf.decode_tags(state.meta)}")
    if got != request:
        raise RuntimeError("the push-pull did not decode to what was sent")
    say("\nThe wire layer round-trips exactly. Membership and the agent build on it.")


async def _tcp_round_trip(data: bytes, options: wire.WireOptions) -> wire.PushPull:
    listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
    port = listeners[0].socket.getsockname()[1]
    result: list[wire.StreamMessage] = []

    async def serve_one() -> None:
        stream = await listeners[0].accept()
        reader = wire.StreamReader(options)
        async with stream:
            while not result:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    result.append(reader.end_of_stream())
                elif (message := reader.receive_data(chunk)) is not None:
                    result.append(message)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_one)
            client = await trio.open_tcp_stream(LOOPBACK, port)
            async with client:
                await client.send_all(data)
    await listeners[0].aclose()
    message = result[0]
    if not isinstance(message, wire.PushPull):
        raise RuntimeError(f"expected a push-pull, got {type(message).__name__}")
    return message
