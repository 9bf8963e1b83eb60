"""Serf's Vivaldi network coordinates: the math, and how they ride in ping acks.

Expected figures are derived from Serf's documented update rule (``serf/coordinate``): the
distance is the Euclidean norm plus both heights plus both adjustments (unless those make it
negative); one observation moves a coordinate by ``CC * weight * (rtt - distance)`` along the
line between the two, and the error blends in how wrong the estimate was.
"""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swim import wire
from swim.config import Config
from swim.serf.coordinate import (
    DEFAULT_CONFIG,
    MAX_PLAUSIBLE_SECONDS,
    CoordinateClient,
    CoordinateRejected,
    distance,
    new_coordinate,
)
from swim.wire import serf as msg
from swim.wire.serf import Coordinate
from tests.serf.harness import Layer
from tests.swim.conftest import address_of


def at(*vec: float, height: float = 0.0, adjustment: float = 0.0) -> Coordinate:
    """A coordinate at ``vec`` (padded to 8 dimensions)."""
    padded = vec + (0.0,) * (8 - len(vec))
    return Coordinate(padded, error=1.5, adjustment=adjustment, height=height)


def client(seed: int = 1) -> CoordinateClient:
    return CoordinateClient(random.Random(seed))


# ---------------------------------------------------------------------------------------------
# The math


def test_distance_is_the_norm_plus_heights_plus_positive_adjustments() -> None:
    a, b = at(-0.5, 1.3, 2.4), at(1.2, -2.3, 3.4)
    norm = math.sqrt(1.7**2 + 3.6**2 + 1.0**2)
    assert distance(a, a) == 0.0
    assert distance(a, b) == pytest.approx(norm) == pytest.approx(distance(b, a))
    # an adjustment that would make the estimate negative is ignored
    assert distance(at(-0.5, 1.3, 2.4, adjustment=-1e6), b) == pytest.approx(norm)
    a, b = at(-0.5, 1.3, 2.4, adjustment=0.1, height=0.7), at(1.2, -2.3, 3.4, adjustment=0.2)
    b = Coordinate(b.vec, b.error, b.adjustment, height=0.1)
    assert distance(a, b) == pytest.approx(norm + 0.3 + 0.8)
    with pytest.raises(ValueError, match="dimensions"):
        distance(a, Coordinate((0.0,) * 7, 1.5, 0.0, 0.0))


def test_a_new_coordinate_is_serfs() -> None:
    assert new_coordinate() == Coordinate((0.0,) * 8, error=1.5, adjustment=0.0, height=1e-5)


def test_one_observation_moves_away_from_a_peer_too_close_for_its_rtt() -> None:
    # a peer 1 ms "above" us (both at the minimum height) answers in 2 ms: the estimate
    # (1.02 ms) is 49% short, our weight is 1.5 / (1.5 + 1.5) = 0.5
    peer = Coordinate((0.0,) * 7 + (0.001,), error=1.5, adjustment=0.0, height=1e-5)
    mine = client().update("peer", peer, 0.002)
    wrongness = (0.002 - 0.00102) / 0.002
    assert mine.error == pytest.approx(0.25 * 0.5 * wrongness + 1.5 * (1 - 0.25 * 0.5))
    force = 0.25 * 0.5 * (0.002 - 0.00102)
    assert mine.vec[:7] == (0.0,) * 7
    assert mine.vec[7] == pytest.approx(-force)  # pushed away, along the line between us
    assert mine.height == pytest.approx(1e-5 + 2e-5 * force / 0.001)
    raw_after = 0.001 + force + mine.height + 1e-5
    assert mine.adjustment == pytest.approx((0.002 - raw_after) / 40)


def test_two_members_converge_on_their_rtt() -> None:
    a, b = client(1), client(2)
    for _ in range(60):
        a.update("b", b.coordinate, 0.010)
        b.update("a", a.coordinate, 0.010)
    assert distance(a.coordinate, b.coordinate) == pytest.approx(0.010, rel=0.01)
    assert a.coordinate.error < 0.01  # and they know they are right


def test_a_triangle_of_members_finds_each_rtt() -> None:
    rtts = {("a", "b"): 0.010, ("a", "c"): 0.020, ("b", "c"): 0.015}
    clients = {name: client(seed) for seed, name in enumerate("abc")}
    for _ in range(300):
        for (x, y), rtt in rtts.items():
            clients[x].update(y, clients[y].coordinate, rtt)
            clients[y].update(x, clients[x].coordinate, rtt)
    for (x, y), rtt in rtts.items():
        estimate = distance(clients[x].coordinate, clients[y].coordinate)
        assert estimate == pytest.approx(rtt, rel=0.1)


def test_the_latency_filter_takes_the_median_of_the_last_three() -> None:
    a, b = client(1), client(2)
    for _ in range(60):
        a.update("b", b.coordinate, 0.010)
        b.update("a", a.coordinate, 0.010)
    before = a.coordinate
    a.update("b", b.coordinate, 5.0)  # one outlier: the median is still 10 ms
    assert distance(a.coordinate, b.coordinate) == pytest.approx(0.010, rel=0.02)
    moved = math.dist(before.vec, a.coordinate.vec)
    assert moved < 1e-6  # unfiltered, a 5 s sample would throw it far off


@pytest.mark.parametrize(
    ("coordinate", "why"),
    [
        (Coordinate((0.0,) * 7, 1.5, 0.0, 1e-5), "7 dimensions, not 8"),
        (Coordinate((math.nan,) + (0.0,) * 7, 1.5, 0.0, 1e-5), "NaN or infinite"),
        (Coordinate((0.0,) * 8, math.inf, 0.0, 1e-5), "NaN or infinite"),
        (Coordinate((1e9,) + (0.0,) * 7, 1.5, 0.0, 1e-5), "over 1000 s"),
        (Coordinate((0.0,) * 8, 1.5, -1e9, 1e-5), "over 1000 s"),
        (Coordinate((0.0,) * 8, -1.0, 0.0, 1e-5), "error or height"),
        (Coordinate((0.0,) * 8, 1.5, 0.0, -1.0), "error or height"),
    ],
)
def test_unusable_coordinates_are_refused_and_change_nothing(
    coordinate: Coordinate, why: str
) -> None:
    mine = client()
    with pytest.raises(CoordinateRejected, match=why):
        mine.update("hostile", coordinate, 0.01)
    assert mine.coordinate == new_coordinate()


@pytest.mark.parametrize("rtt", [-0.001, 10.5, math.nan, math.inf])
def test_impossible_rtts_are_refused(rtt: float) -> None:
    mine = client()
    with pytest.raises(CoordinateRejected, match="RTT"):
        mine.update("peer", new_coordinate(), rtt)
    assert mine.coordinate == new_coordinate()


def test_the_largest_plausible_peer_cannot_break_our_coordinate() -> None:
    mine = client()
    far = MAX_PLAUSIBLE_SECONDS
    for _ in range(100):
        peer = Coordinate((far,) * 8, error=0.0, adjustment=-far, height=far)
        mine.update("far", peer, 10.0)
        assert all(math.isfinite(x) for x in mine.coordinate.vec)
    assert DEFAULT_CONFIG.dimensionality == len(mine.coordinate.vec)


# ---------------------------------------------------------------------------------------------
# In the member stack: acks carry our coordinate, direct pings update it

PROBING = Config.lan(
    compression=False, push_pull_interval=0.0, reconnect_interval=0.0, isolation_timeout=1e9
)
FRESH_ACK_PAYLOAD = bytes.fromhex(
    "0184aa41646a7573746d656e74cb0000000000000000a54572726f72cb3ff8000000000000a6486569676874"
    "cb3ee4f8b588e368f1a356656398" + "cb0000000000000000" * 8
)
"""What Go's Serf puts in an ack before its first update (reference/vectors.md)."""


def acks_to(layer: Layer, ping: wire.Ping) -> list[wire.Ack]:
    layer.feed(ping, source=address_of(0))
    return [m for _, m in layer.sent_memberlist() if isinstance(m, wire.Ack)]


def probe_of_p0(layer: Layer) -> wire.Ping:
    """Run until the layer pings p0; that ping."""
    for _ in range(100):
        for _, message in layer.run(0.1):
            if isinstance(message, wire.Ping) and message.node == "p0":
                return message
    raise AssertionError("p0 was never probed")


def test_an_ack_carries_serfs_version_byte_and_coordinate_as_go_encodes_it() -> None:
    layer = Layer(peers=1)
    (ack,) = acks_to(layer, wire.Ping(seq_no=5, node="me"))
    assert ack == wire.Ack(seq_no=5, payload=FRESH_ACK_PAYLOAD)
    assert msg.decode_coordinate(ack.payload) == new_coordinate()


def test_with_coordinates_disabled_acks_carry_nothing_and_none_is_known() -> None:
    layer = Layer(peers=1, config=PROBING, disable_coordinates=True)
    (ack,) = acks_to(layer, wire.Ping(seq_no=5, node="me"))
    assert ack.payload == b""
    ping = probe_of_p0(layer)
    layer.now += 0.002
    layer.feed(wire.Ack(seq_no=ping.seq_no, payload=FRESH_ACK_PAYLOAD))
    assert layer.serf.coordinate("p0") is None and layer.serf.coordinate("me") is None


def test_a_direct_ack_updates_our_coordinate_and_caches_the_peers() -> None:
    layer = Layer(peers=1, config=PROBING)
    assert layer.serf.coordinate("me") == new_coordinate()
    ping = probe_of_p0(layer)
    layer.now += 0.002
    theirs = Coordinate((0.0,) * 7 + (0.001,), error=1.5, adjustment=0.0, height=1e-5)
    layer.feed(wire.Ack(seq_no=ping.seq_no, payload=msg.encode_coordinate(theirs)))
    assert layer.serf.coordinate("p0") == theirs
    mine = layer.serf.coordinate("me")
    assert mine is not None and mine.vec[7] < 0.0  # moved away: 2 ms is longer than 1 ms
    # and our next ack says so
    (ack,) = acks_to(layer, wire.Ping(seq_no=6, node="me"))
    assert msg.decode_coordinate(ack.payload) == mine


def test_an_ack_after_the_probe_timeout_measures_no_rtt() -> None:
    layer = Layer(peers=1, config=PROBING)
    ping = probe_of_p0(layer)
    layer.run(PROBING.probe_timeout + 0.01)
    layer.feed(wire.Ack(seq_no=ping.seq_no, payload=FRESH_ACK_PAYLOAD))
    assert layer.serf.coordinate("p0") is None
    assert layer.serf.coordinate("me") == new_coordinate()


@pytest.mark.parametrize(
    "payload",
    [
        b"\x02" + FRESH_ACK_PAYLOAD[1:],  # a ping version Serf does not know
        b"\x01\xc1",  # not msgpack
        b"\x01" + FRESH_ACK_PAYLOAD[1:40],  # cut short
        msg.encode_coordinate(Coordinate((math.nan,) * 8, 1.5, 0.0, 1e-5)),
        msg.encode_coordinate(Coordinate((0.0,) * 3, 1.5, 0.0, 1e-5)),
        msg.encode_coordinate(Coordinate((1e300,) * 8, 1.5, 0.0, 1e-5)),
    ],
)
def test_bad_payloads_are_dropped_and_counted(payload: bytes) -> None:
    layer = Layer(peers=1, config=PROBING)
    ping = probe_of_p0(layer)
    layer.now += 0.002
    layer.feed(wire.Ack(seq_no=ping.seq_no, payload=payload))
    assert layer.serf.statistics().coordinates_rejected == 1
    assert layer.serf.coordinate("p0") is None
    assert layer.serf.coordinate("me") == new_coordinate()
    assert layer.engine.statistics().acks == 1  # the probe itself succeeded


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=200).map(lambda tail: b"\x01\x84" + tail),  # a version, a map
    ),
    st.floats(allow_nan=True, allow_infinity=True),
)
def test_any_payload_and_rtt_is_taken_or_refused_never_raised(payload: bytes, rtt: float) -> None:
    serf = FUZZED.serf
    serf.ping_completed("p0", rtt, payload)
    mine = serf.coordinate("me")
    assert mine is not None and all(math.isfinite(x) for x in mine.vec)


FUZZED = Layer(peers=1, config=PROBING)
"""One layer for every fuzzed payload: they pile up on one coordinate, as a hostile peer's would."""


def test_an_empty_payload_is_no_coordinate_and_no_error() -> None:
    layer = Layer(peers=1, config=PROBING)
    ping = probe_of_p0(layer)
    layer.now += 0.002
    layer.feed(wire.Ack(seq_no=ping.seq_no))
    assert layer.serf.coordinate("p0") is None
    assert layer.serf.statistics().coordinates_rejected == 0


def test_a_reaped_member_takes_its_coordinate_with_it() -> None:
    layer = Layer(peers=1, config=PROBING, reconnect_timeout=60.0)
    ping = probe_of_p0(layer)
    layer.now += 0.002
    layer.feed(wire.Ack(seq_no=ping.seq_no, payload=FRESH_ACK_PAYLOAD))
    assert layer.serf.coordinate("p0") is not None
    layer.fail("p0")
    layer.at(layer.now + 120.0)
    assert "p0" not in {m.name for m in layer.serf.members()}
    assert layer.serf.coordinate("p0") is None
