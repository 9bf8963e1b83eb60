"""Dissemination: the broadcast queues, piggybacking, gossip rounds, and every datagram out.

Membership news and user broadcasts wait in two retransmit-limited queues
(:class:`~swim.broadcasts.BroadcastQueue`); each datagram the engine sends carries as many of
them as fit, each queue getting its share, and while anything waits a gossip round sends them
to a few random members every ``gossip_interval`` (memberlist's ticker, which sends nothing
when nothing waits, so an idle node is not woken for it).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from swim import wire
from swim.broadcasts import BroadcastQueue, retransmit_limit
from swim.context import Context
from swim.members import Address
from swim.table import Entry
from swim.timers import Timer, TimerKind
from swim.wire.messages import make_compounds

COMPOUND_HEADER_OVERHEAD = 2
"""Bytes a compound spends on its type byte and part count."""
COMPOUND_PART_OVERHEAD = 2
"""Bytes a compound spends on each part's length."""


class Gossip:
    """What the engine has to tell, and the datagrams that tell it."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self.news = BroadcastQueue()
        """Membership news: alive, suspect and dead messages."""
        self.user = BroadcastQueue()
        """User broadcasts (the Serf layer's intents, events and queries among them)."""
        self.datagrams: list[tuple[Address, bytes]] = []
        self._timer: Timer | None = None
        self._phase = ctx.now

    def __len__(self) -> int:
        return len(self.news) + len(self.user)

    def start(self) -> None:
        """Beat at a random phase (again after a rejoin)."""
        self.stop()
        ctx = self._ctx
        self._phase = ctx.now + ctx.rng.random() * ctx.config.gossip_interval
        if len(self):
            self._arm()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def tell(
        self, message: wire.Message, key: str, on_done: Callable[[], None] | None = None
    ) -> None:
        """Queue membership news about ``key`` (replacing older news about it)."""
        if self._ctx.quiet:
            return
        self.news.queue(wire.encode(message), key, on_done)
        self._arm()

    def broadcast(
        self, payload: bytes, key: str | None, on_done: Callable[[], None] | None = None
    ) -> None:
        """Queue a user broadcast."""
        self.user.queue(b"\x08" + payload, key, on_done)
        self._arm()

    def forget_news(self) -> None:
        """Drop the queued membership news (a view everyone shares needs none)."""
        self.news = BroadcastQueue()

    # ------------------------------------------------------------------ sending

    def send(self, address: Address, message: bytes, entry: Entry | None) -> None:
        """Send ``message`` with as much queued news piggybacked as fits."""
        if not self.news and not self.user:
            self.send_packet(address, [message], entry)
            return
        room = self._room() - len(message) - COMPOUND_PART_OVERHEAD
        extra = self._take(room) if room > 0 else []
        self.send_packet(address, [message, *extra], entry)

    def send_packet(self, address: Address, messages: list[bytes], entry: Entry | None) -> None:
        """Send ``messages`` alone, in as many datagrams as they need (255 parts at most)."""
        ctx = self._ctx
        crc = entry is not None and entry.vsn[1] >= 5
        groups = [messages] if len(messages) <= 255 else [[c] for c in make_compounds(messages)]
        counters = ctx.counters
        for group in groups:
            data = wire.encode_packet(group, ctx.wire_options, crc=crc)
            counters.packets_out += 1
            counters.bytes_out += len(data)
            self.datagrams.append((address, data))

    def _room(self) -> int:
        ctx = self._ctx
        return ctx.config.udp_buffer_size - COMPOUND_HEADER_OVERHEAD - ctx.wire_options.overhead()

    def _take(self, room: int) -> list[bytes]:
        """Queued broadcasts for ``room`` bytes: membership news and user messages each get
        their share while both wait, and either takes what the other leaves."""
        ctx = self._ctx
        limit = retransmit_limit(ctx.config.retransmit_mult, len(ctx.table))
        overhead = COMPOUND_PART_OVERHEAD
        news, users = self.news, self.user
        if not len(users):
            return news.take(overhead, room, limit)
        if not len(news):
            return users.take(overhead, room, limit)
        user_room = int(room * ctx.config.user_broadcast_share)
        taken = news.take(overhead, room - user_room, limit)
        room -= sum(len(m) + overhead for m in taken)
        user_taken = users.take(overhead, room, limit)
        room -= sum(len(m) + overhead for m in user_taken)
        return taken + user_taken + news.take(overhead, room, limit)

    # ------------------------------------------------------------------ rounds

    def _arm(self) -> None:
        """Schedule a round at the ticker's next beat, unless one is due."""
        if self._timer is not None:
            return
        ctx = self._ctx
        now, interval = ctx.now, ctx.config.gossip_interval
        beats = max(0, math.floor((now - self._phase) / interval) + 1)
        deadline = self._phase + beats * interval
        if deadline <= now and beats:
            deadline += interval
        self._timer = ctx.timers.schedule(deadline, TimerKind.GOSSIP, self._round)

    def _round(self) -> None:
        self._timer = None
        if len(self):
            self._gossip()
        if len(self):
            self._arm()

    def _gossip(self) -> None:
        ctx = self._ctx
        config = ctx.config
        targets = ctx.table.gossip_targets(
            config.gossip_nodes, ctx.now, config.gossip_to_the_dead_time
        )
        room = self._room()
        for entry in targets:
            messages = self._take(room)
            if not messages:
                return
            self.send_packet(entry.address, messages, entry)
