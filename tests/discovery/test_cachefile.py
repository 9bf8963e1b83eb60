"""The persisted catalog: atomic, readable, and never a reason not to start."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from discovery import cachefile
from discovery.catalog import Catalog, Health
from discovery.records import ServiceRecord
from swim.members import MemberState
from tests.discovery.helpers import member


def test_a_catalog_survives_the_file(tmp_path: Path) -> None:
    catalog = Catalog("core")
    record = ServiceRecord(8080, "blue", "2", 5, 9, tags=("x", "y"), instance_id="web-a")
    catalog.apply(member("a", {"web": record}))
    catalog.apply(member("b", state=MemberState.DEAD))
    path = tmp_path / "cache.json"
    cachefile.save(path, {"core": cachefile.snapshot(catalog)})
    loaded = cachefile.load(path)
    (web,) = loaded["core"].instances  # the failed instance is not kept
    assert web.stale and web.health is Health.ALIVE
    assert web.address == ("10.0.0.1", 8080) and web.metadata_address == ("10.0.0.1", 9000)
    assert (web.group, web.version, web.weight, web.revision) == ("blue", "2", 5, 9)
    assert (web.tags, web.instance_id) == (("x", "y"), "web-a")
    assert loaded["core"].services == ("web",)
    assert [p.name for p in tmp_path.iterdir()] == ["cache.json"]  # no temporary left


def test_a_failed_write_leaves_the_old_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "cache.json"
    cachefile.save(path, {})
    before = path.read_text()
    catalog = Catalog()
    catalog.apply(member("a"))

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        cachefile.save(path, {"": cachefile.snapshot(catalog)})
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["cache.json"]


def test_a_missing_file_is_a_first_start(tmp_path: Path) -> None:
    assert cachefile.load(tmp_path / "nothing.json") == {}


@pytest.mark.parametrize(
    "text",
    [
        "{",
        "[]",
        '{"format": "other"}',
        '{"format": "shoal-discovery-cache", "version": 9}',
        '{"format": "shoal-discovery-cache", "version": 1, "clusters": {"": {"services": [], '
        '"instances": [{"port": "x"}]}}}',
    ],
)
def test_an_unreadable_file_is_logged_and_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str
) -> None:
    path = tmp_path / "cache.json"
    path.write_text(text)
    with caplog.at_level(logging.WARNING):
        assert cachefile.load(path) == {}
    assert "ignoring the discovery cache" in caplog.text
