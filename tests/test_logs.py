"""swim.logs: what bad input may and may not do to the log."""

from __future__ import annotations

import io
import logging

from swim.logs import SafeFormatter, Throttle, held_back, printable


def test_a_name_with_a_newline_cannot_forge_a_log_line() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(SafeFormatter("[%(levelname)s] %(message)s"))
    logger = logging.getLogger("tests.logs.forge")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("member %s joined", "x\n[INFO] forged\x1b[2J\x00")
    finally:
        logger.removeHandler(handler)
    assert out.getvalue() == "[WARNING] member x\\x0a[INFO] forged\\x1b[2J\\x00 joined\n"


def test_printable_keeps_ordinary_text_and_escapes_separators() -> None:
    assert printable("web-1 ノード") == "web-1 ノード"
    assert printable("a\u2028b\tc\x7f") == "a\\x2028b\\x09c\\x7f"


def test_a_throttle_lets_one_line_through_per_interval_and_counts_the_rest() -> None:
    throttle = Throttle(interval=10.0)
    assert throttle.allow("flood", 0.0) == 0
    assert [throttle.allow("flood", t) for t in (1.0, 2.0, 9.9)] == [None, None, None]
    assert throttle.allow("other", 5.0) == 0  # each kind on its own
    assert throttle.allow("flood", 10.0) == 3
    assert held_back(3) == " (3 more like this since the last report)"
    assert held_back(0) == ""
