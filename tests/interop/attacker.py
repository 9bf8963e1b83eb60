"""The attacker's side of the attack suite: hostile bytes built with shoal's own wire encoders,
sent from plain sockets on loopback, and the /proc readings that tell what they cost.

Fake members live at :func:`fake_address`: 127.x.y.z addresses (all of 127.0.0.0/8 is loopback
on Linux) at :data:`FAKE_PORT`, where nobody listens, so that an agent probing them, or pushing
state to them, never leaves this machine and gets "connection refused" at once.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterable, Sequence

import trio

from swim import wire
from swim.config import Config
from swim.wire import serf as serf_wire
from swim.wire.limits import UDP_BUFFER_BYTES
from swim.wire.messages import Alive, Compress, NodeState, PushNodeState, encode, make_compounds

LOOPBACK = "127.0.0.1"
FAKE_PORT = 1
"""The port every fake member claims: tcpmux, privileged and unused, so closed everywhere."""
FAKE_NETWORKS = {"push-pull": 100, "gossip": 110, "names": 120}
"""Where each attack's fake members live: 127.<octet>.y.z, the octet counting up from this one
past 65,536 members, so that one attack's fakes are told from another's by address too."""
VSN = Config.local().vsn
"""The versions every fake member claims: the shoal agent's own, so that none is refused for
its versions alone."""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------
# LZW streams that inflate far past their size


class _CodeWriter:
    """Packs LZW codes as Go's ``compress/lzw`` writer does (LSB first, 9 to 12 bits, a Clear
    when the next entry would be 4095), tracking only the code counter, not the strings."""

    def __init__(self) -> None:
        self.out = bytearray()
        self._acc = 0
        self._nbits = 0
        self.width = 9
        self.next = 258  # the entry the next code defines
        self._overflow = 512
        self._put(256)  # Go's writer starts with a Clear

    def _put(self, code: int) -> None:
        self._acc |= code << self._nbits
        self._nbits += self.width
        if self._nbits >= 64:
            self.out += (self._acc & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little")
            self._acc >>= 64
            self._nbits -= 64

    def code(self, code: int) -> None:
        """Emit ``code``, which defines the next entry; widen or Clear as Go's writer does."""
        self._put(code)
        if self.next == self._overflow:
            self.width += 1
            self._overflow <<= 1
        if self.next == 4095:
            self.clear()
        else:
            self.next += 1

    def clear(self) -> None:
        """Emit a Clear: the table starts over at 9 bits."""
        self._put(256)
        self.width = 9
        self._overflow = 512
        self.next = 258

    def finish(self) -> bytes:
        """Emit EOF and pad to a whole byte."""
        self._put(257)
        return bytes(self.out) + self._acc.to_bytes((self._nbits + 7) >> 3, "little")


def lzw_run(prefix: bytes, fill: int, count: int) -> bytes:
    """An LZW stream (memberlist's flavour) of ``prefix`` followed by ``count`` bytes ``fill``.

    The run costs about one code per 3800 bytes times the code number, so the stream is some
    1/1300 of what it inflates to: ~23 KB for 30 MB, ~31 KB for 41 MiB.  The prefix goes as
    literals, then a Clear, then the run as codes for ever longer strings of ``fill`` (what Go's
    writer emits for a run), built without touching the ``count`` bytes themselves.
    """
    writer = _CodeWriter()
    for byte in prefix:
        writer.code(byte)
    if prefix:
        writer.clear()
    remaining = count
    while remaining:
        longest = writer.next - 257  # entries 258.. hold runs of length 2..
        take = min(remaining, longest)
        writer.code(fill if take == 1 else 256 + take)
        remaining -= take
    return writer.finish()


def compressed(prefix: bytes, fill: int, count: int) -> bytes:
    """A memberlist compress message whose content is ``prefix`` + ``count`` x ``fill``."""
    return encode(Compress(buf=lzw_run(prefix, fill, count)))


def big_user_event_packet(name: str, ltime: int, payload_size: int) -> bytes:
    """One datagram: a compressed memberlist user message carrying a Serf user event whose
    payload is ``payload_size`` zero bytes (Serf's own limit is 9 KiB)."""
    payload = bytes(payload_size)
    event = serf_wire.encode_serf(serf_wire.UserEvent(ltime=ltime, name=name, payload=payload))
    assert event.endswith(payload)  # Payload is the struct's last field: the run comes last
    message = b"\x08" + event[: len(event) - payload_size]
    return compressed(message, 0, payload_size)


def lzw_bomb(inflated_size: int) -> bytes:
    """One datagram: a compress message that inflates to ``inflated_size`` zero bytes."""
    return compressed(b"", 0, inflated_size)


# ---------------------------------------------------------------------------------------------
# Fake members


def fake_address(network: str, index: int) -> tuple[bytes, int]:
    """The ``index``-th fake member's address in ``network`` (see :data:`FAKE_NETWORKS`)."""
    if not 0 <= index < 10 << 16:
        raise ValueError(f"fake member index {index} outside 0..{(10 << 16) - 1}")
    second = FAKE_NETWORKS[network] + (index >> 16)
    return bytes((127, second, (index >> 8) & 0xFF, index & 0xFF)), FAKE_PORT


def alive(name: str, address: tuple[bytes, int], incarnation: int = 1, meta: bytes = b"") -> bytes:
    """An encoded alive message for a member that does not exist."""
    addr, port = address
    return encode(
        Alive(incarnation=incarnation, node=name, addr=addr, port=port, vsn=VSN, meta=meta)
    )


def state(
    name: str, address: tuple[bytes, int], incarnation: int = 1, meta: bytes = b""
) -> PushNodeState:
    """A push-pull node state, alive, for a member that does not exist."""
    addr, port = address
    return PushNodeState(
        name=name,
        addr=addr,
        port=port,
        incarnation=incarnation,
        state=NodeState.ALIVE,
        vsn=VSN,
        meta=meta,
    )


def gossip_packets(messages: Sequence[bytes], limit: int = UDP_BUFFER_BYTES) -> list[bytes]:
    """``messages`` packed into as few plaintext datagrams of at most ``limit`` bytes as a
    gossiping member would send (compounds); a message over ``limit`` travels alone."""
    packets: list[bytes] = []
    group: list[bytes] = []
    size = 2
    for message in messages:
        cost = len(message) + 2
        if group and (size + cost > limit or len(group) == 255):
            packets.append(make_compounds(group)[0] if len(group) > 1 else group[0])
            group, size = [], 2
        group.append(message)
        size += cost
    if group:
        packets.append(make_compounds(group)[0] if len(group) > 1 else group[0])
    return packets


def push_pull(
    states: Sequence[PushNodeState],
    *,
    user_state: bytes = b"",
    options: wire.WireOptions | None = None,
) -> bytes:
    """Every byte of an inbound push-pull stream carrying ``states``."""
    message = wire.PushPull(list(states), user_state, join=False)
    return wire.encode_stream(message, options or wire.WireOptions())


# ---------------------------------------------------------------------------------------------
# Sockets


class Datagrams:
    """A UDP socket on loopback to send hostile datagrams from (and read what comes back)."""

    def __init__(self) -> None:
        self.socket = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)

    async def __aenter__(self) -> Datagrams:
        await self.socket.bind((LOOPBACK, 0))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.socket.close()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.socket.getsockname()
        return str(host), int(port)

    async def send(
        self, packets: Iterable[bytes], target: tuple[str, int], *, per_second: float
    ) -> int:
        """Send ``packets`` to ``target`` at about ``per_second`` (paced, so that the kernel's
        receive buffer does not drop what the agent is too slow to read); how many were sent."""
        sent = 0
        start = trio.current_time()
        for packet in packets:
            await self.socket.sendto(packet, target)
            sent += 1
            due = start + sent / per_second
            if due > trio.current_time():
                await trio.sleep_until(due)
        return sent

    async def count_replies(self, quiet: float, limit: float = 60.0) -> int:
        """Read datagrams until none has come for ``quiet`` seconds (or ``limit`` seconds have
        passed); how many came."""
        count = 0
        with trio.move_on_after(limit):
            while True:
                with trio.move_on_after(quiet) as waited:
                    await self.socket.recv(65_536)
                if waited.cancelled_caught:
                    break
                count += 1
        return count


async def send_stream(target: tuple[str, int], data: bytes, limit: float) -> bytes:
    """Open a TCP stream to ``target``, write ``data``, read until the peer closes (at most
    ``limit`` seconds); what came back (nothing when the peer refused the stream, closing or
    resetting it before all was sent)."""
    reply = bytearray()
    with trio.move_on_after(limit), contextlib.suppress(trio.BrokenResourceError):
        stream = await trio.open_tcp_stream(*target)
        async with stream:
            await stream.send_all(data)
            while chunk := await stream.receive_some(65_536):
                reply += chunk
    return bytes(reply)


async def hold_silently(stream: trio.SocketStream, stop: trio.Event) -> None:
    """Keep ``stream`` open, sending nothing, until ``stop`` or until the peer closes it."""
    async with trio.open_nursery() as nursery:

        async def until_closed() -> None:
            with contextlib.suppress(trio.BrokenResourceError):
                while await stream.receive_some(4096):
                    pass
            nursery.cancel_scope.cancel()

        nursery.start_soon(until_closed)
        await stop.wait()
        nursery.cancel_scope.cancel()


def assert_closed(address: tuple[bytes, int]) -> None:
    """Fail unless TCP to the fake ``address`` is refused: fake members must be unreachable."""
    host = socket.inet_ntoa(address[0])
    with socket.socket() as probe:
        probe.settimeout(1.0)
        try:
            probe.connect((host, address[1]))
        except ConnectionRefusedError:
            return
    raise AssertionError(f"{host}:{address[1]} accepts connections; fake members must not")


# ---------------------------------------------------------------------------------------------
# /proc


def rss_bytes(pid: int) -> int:
    """The process's resident set (VmRSS)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"/proc/{pid}/status has no VmRSS line")


def cpu_seconds(pid: int) -> float:
    """The CPU time (user + system) the process has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        text = stat.read()
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime and stime: fields 14, 15
