"""Fault schedules as Hypothesis strategies, so that a schedule breaking an invariant shrinks
to a small one (fewer faults, earlier, shorter, milder).  Needs ``hypothesis`` (a dev extra).

    @given(schedules(names, window=60.0))
    def test_invariants(schedule): ...
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

from simulator.explore import FAULT_KINDS, FIRST_FAULT, make_fault
from simulator.faults import Fault


@st.composite
def faults(draw: st.DrawFn, names: Sequence[str], window: float) -> Fault:
    """One fault that is over by ``window``, on the members ``names``."""
    kind = draw(st.sampled_from(FAULT_KINDS))
    at = round(draw(st.floats(FIRST_FAULT, window - 2.0)), 3)
    lasting = round(draw(st.floats(1.0, window - at)), 3)
    node = draw(st.sampled_from(list(names)))
    order = draw(st.permutations(list(names)))
    level = draw(st.floats(0.0, 1.0, exclude_max=True))
    return make_fault(kind, at=at, lasting=lasting, node=node, order=order, level=level)


def schedules(
    names: Sequence[str], window: float, max_faults: int = 4
) -> st.SearchStrategy[list[Fault]]:
    """Up to ``max_faults`` faults, in time order, all over by ``window``."""
    return st.lists(faults(names, window), max_size=max_faults).map(
        lambda drawn: sorted(drawn, key=lambda fault: fault.at)
    )
