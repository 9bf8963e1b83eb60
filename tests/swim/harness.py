"""A tiny virtual network for driving engines by hand in tests: no sockets, no real time."""

from __future__ import annotations

import functools
import heapq
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from swim import wire
from swim.config import Config
from swim.engine import Engine, StreamRequest
from swim.events import Event
from swim.members import Address


@dataclass
class Cluster:
    """Engines on a lossless network with a fixed one-way latency; cut links drop traffic."""

    config: Config = field(default_factory=Config.lan)
    latency: float = 0.001
    seed: int = 1
    now: float = 0.0
    engines: dict[Address, Engine] = field(default_factory=dict)
    down: set[Address] = field(default_factory=set)
    cut: set[tuple[Address, Address]] = field(default_factory=set)
    events: dict[str, list[Event]] = field(default_factory=dict)
    drop: Callable[[Address, Address, bytes], bool] = lambda src, dst, data: False
    _queue: list[tuple[float, int, Callable[[], None]]] = field(default_factory=list)
    _serial: int = 0

    def add(self, name: str, config: Config | None = None, **kwargs: object) -> Engine:
        address = (f"10.0.0.{len(self.engines) + 1}", 7946)
        rng = random.Random(f"{self.seed}-{name}")
        engine = Engine(name, address, config or self.config, rng, now=self.now, **kwargs)  # type: ignore[arg-type]
        self.engines[address] = engine
        self.events[name] = []
        self._flush(engine)
        return engine

    def by_name(self, name: str) -> Engine:
        return next(e for e in self.engines.values() if e.name == name)

    def reachable(self, src: Address, dst: Address) -> bool:
        return (
            dst in self.engines
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

    def _at(self, when: float, action: Callable[[], None]) -> None:
        self._serial += 1
        heapq.heappush(self._queue, (when, self._serial, action))

    def _flush(self, engine: Engine) -> None:
        src = engine.local_member.address
        self.events[engine.name].extend(engine.take_events())
        for dst, data in engine.take_datagrams():
            if self.reachable(src, dst) and not self.drop(src, dst, data):
                self._at(self.now + self.latency, functools.partial(self._deliver, dst, data, src))
        for request in engine.take_stream_requests():
            self._at(self.now + self.latency, functools.partial(self._stream, engine, request))

    def _deliver(self, dst: Address, data: bytes, src: Address) -> None:
        if dst in self.down:
            return
        engine = self.engines[dst]
        engine.receive_datagram(data, src, self.now)
        self._flush(engine)

    def _stream(self, client: Engine, request: StreamRequest) -> None:
        src = client.local_member.address
        if src in self.down:
            return
        if not self.reachable(src, request.address):
            client.stream_finished(request.stream_id, None, self.now, error="connection refused")
            self._flush(client)
            return
        server = self.engines[request.address]
        reader = wire.StreamReader(server.wire_options)
        message = reader.receive_data(request.data)
        assert message is not None
        reply = server.handle_stream(message, src, self.now)
        self._flush(server)
        if not request.expects_reply:
            client.stream_finished(request.stream_id, None, self.now)
        elif reply is None:
            client.stream_finished(request.stream_id, None, self.now, error="no reply")
        else:
            answer = wire.StreamReader(client.wire_options).receive_data(reply)

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
            for engine in self.engines.values():
                if engine.local_member.address in self.down:
                    continue
                deadline = engine.next_deadline()
                if deadline is not None:
                    next_time = min(next_time, deadline)
            if next_time >= end and not (self._queue and self._queue[0][0] <= end):
                self.now = end
                break
            self.now = next_time
            while self._queue and self._queue[0][0] <= self.now:
                _, _, action = heapq.heappop(self._queue)
                action()
            for address, engine in self.engines.items():
                if address in self.down:
                    continue
                deadline = engine.next_deadline()
                if deadline is not None and deadline <= self.now:
                    engine.tick(self.now)
                    self._flush(engine)
        for address, engine in self.engines.items():
            if address not in self.down:
                engine.tick(self.now)
                self._flush(engine)

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def view(self, name: str) -> dict[str, str]:
        return {m.name: m.state.value for m in self.by_name(name).members()}
