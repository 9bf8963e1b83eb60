"""A tiny virtual network for driving member stacks by hand in tests: no sockets, no real time.

Each member is a :class:`~swim.stack.MemberStack` (with a Serf layer when it has tags), driven
through the same surface as the runtime and the simulator drive it: datagrams and stream
bytes in, datagrams, stream requests and events out.
"""

from __future__ import annotations

import functools
import heapq
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from swim.config import Config
from swim.engine import Engine, StreamRequest
from swim.members import Address
from swim.stack import MemberStack, StackEvent


@dataclass
class Cluster:
    """Members on a lossless network with a fixed one-way latency; cut links drop traffic."""

    config: Config = field(default_factory=Config.lan)
    latency: float = 0.001
    seed: int = 1
    now: float = 0.0
    stacks: dict[Address, MemberStack] = field(default_factory=dict)
    down: set[Address] = field(default_factory=set)
    cut: set[tuple[Address, Address]] = field(default_factory=set)
    events: dict[str, list[StackEvent]] = field(default_factory=dict)
    drop: Callable[[Address, Address, bytes], bool] = lambda src, dst, data: False
    _queue: list[tuple[float, int, Callable[[], None]]] = field(default_factory=list)
    _serial: int = 0

    def add(
        self,
        name: str,
        config: Config | None = None,
        *,
        meta: bytes = b"",
        tags: Mapping[str, str] | None = None,
    ) -> Engine:
        """A new member (with a Serf layer when ``tags`` is given); its engine."""
        address = (f"10.0.0.{len(self.stacks) + 1}", 7946)
        rng = random.Random(f"{self.seed}-{name}")
        stack = MemberStack(
            name, address, config or self.config, rng, meta=meta, tags=tags, now=self.now
        )
        self.stacks[address] = stack
        self.events[name] = []
        self._flush(stack)
        return stack.engine

    def stack(self, name: str) -> MemberStack:
        return next(s for s in self.stacks.values() if s.engine.name == name)

    def by_name(self, name: str) -> Engine:
        return self.stack(name).engine

    def reachable(self, src: Address, dst: Address) -> bool:
        return (
            dst in self.stacks
            and src not in self.down
            and dst not in self.down
            and (src, dst) not in self.cut
        )

    def partition(self, side_a: Iterable[str], side_b: Iterable[str]) -> None:
        a = [self.by_name(n).local_member.address for n in side_a]
        b = [self.by_name(n).local_member.address for n in side_b]
        for x in a:
            for y in b:
                self.cut.add((x, y))
                self.cut.add((y, x))

    def heal(self) -> None:
        self.cut.clear()

    def flush(self, name: str) -> None:
        """Carry out what ``name`` was just asked to do."""
        self._flush(self.stack(name))

    def _at(self, when: float, action: Callable[[], None]) -> None:
        self._serial += 1
        heapq.heappush(self._queue, (when, self._serial, action))

    def _flush(self, stack: MemberStack) -> None:
        src = stack.engine.local_member.address
        self.events[stack.engine.name].extend(stack.take_events())
        for dst, data in stack.take_datagrams():
            if self.reachable(src, dst) and not self.drop(src, dst, data):
                self._at(self.now + self.latency, functools.partial(self._deliver, dst, data, src))
        for request in stack.take_stream_requests():
            self._at(self.now + self.latency, functools.partial(self._stream, stack, request))

    def _deliver(self, dst: Address, data: bytes, src: Address) -> None:
        if dst in self.down:
            return
        stack = self.stacks[dst]
        stack.receive_datagram(data, src, self.now)
        self._flush(stack)

    def _stream(self, client: MemberStack, request: StreamRequest) -> None:
        src = client.engine.local_member.address
        if src in self.down:
            return
        if not self.reachable(src, request.address):
            client.stream_finished(request.stream_id, None, self.now, error="connection refused")
            self._flush(client)
            return
        server = self.stacks[request.address]
        incoming = server.incoming()
        assert incoming.receive_data(request.data), "a stream the harness sends arrives whole"
        reply = server.answer(incoming, src, self.now)
        self._flush(server)
        if not request.expects_reply:
            client.stream_finished(request.stream_id, None, self.now)
        elif reply is None:
            client.stream_finished(request.stream_id, None, self.now, error="no reply")
        else:
            answer = client.incoming()
            answer.receive_data(reply)

            def finish() -> None:
                if src in self.down:
                    return
                client.stream_finished(request.stream_id, answer, self.now)
                self._flush(client)

            self._at(self.now + self.latency, finish)
            return
        self._flush(client)

    def run_until(self, end: float) -> None:
        while True:
            next_time = end
            if self._queue:
                next_time = min(next_time, self._queue[0][0])
            for stack in self._live():
                deadline = stack.next_deadline()
                if deadline is not None:
                    next_time = min(next_time, deadline)
            if next_time >= end and not (self._queue and self._queue[0][0] <= end):
                self.now = end
                break
            self.now = next_time
            while self._queue and self._queue[0][0] <= self.now:
                _, _, action = heapq.heappop(self._queue)
                action()
            for stack in self._live():
                deadline = stack.next_deadline()
                if deadline is not None and deadline <= self.now:
                    stack.tick(self.now)
                    self._flush(stack)
        for stack in self._live():
            stack.tick(self.now)
            self._flush(stack)

    def _live(self) -> list[MemberStack]:
        return [stack for address, stack in self.stacks.items() if address not in self.down]

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def view(self, name: str) -> dict[str, str]:
        return {m.name: m.state.value for m in self.by_name(name).members()}
