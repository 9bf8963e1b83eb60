"""The catalog, fed by hand with member snapshots: no sockets, no clock."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from discovery.catalog import (
    Catalog,
    CatalogStatistics,
    Change,
    ChangeKind,
    Filter,
    Health,
    Instance,
    NoInstances,
    UnknownService,
    lookup,
)
from discovery.records import ServiceRecord
from swim.members import Member, MemberState
from tests.discovery.helpers import VSN, member


def kinds(changes: list[Change]) -> list[tuple[str, str]]:
    return [(c.kind.value, c.instance.node) for c in changes]


def test_a_member_with_services_adds_instances() -> None:
    catalog = Catalog("core")
    changes = catalog.apply(member("a", {"web": ServiceRecord(8080, "blue", "2", 50, 7)}))
    assert kinds(changes) == [("added", "a")]
    (web,) = catalog.instances("web")
    assert web == Instance(
        "web",
        "a",
        ("10.0.0.1", 8080),
        "blue",
        "2",
        50,
        7,
        Health.ALIVE,
        1,
        ("10.0.0.1", 9000),
        "core",
    )
    assert str(web) == "web@a in core"


def test_a_service_host_overrides_the_member_address_but_not_the_metadata_one() -> None:
    catalog = Catalog()
    catalog.apply(member("a", {"db": ServiceRecord(5432, host="10.9.9.9")}))
    (db,) = catalog.instances("db")
    assert db.address == ("10.9.9.9", 5432)
    assert db.metadata_address == ("10.0.0.1", 9000)


def test_health_follows_membership_and_draining_tag() -> None:
    catalog = Catalog()
    catalog.apply(member("a"))
    suspect = catalog.apply(member("a", state=MemberState.SUSPECT))
    assert kinds(suspect) == [("changed", "a")]
    alive = catalog.apply(member("a", incarnation=2))
    assert kinds(alive) == [("changed", "a")]
    draining = catalog.apply(member("a", incarnation=3, draining=True))
    assert kinds(draining) == [("draining", "a")]
    assert catalog.instances("web")[0].health is Health.DRAINING
    left = catalog.apply(member("a", incarnation=3, draining=True, state=MemberState.LEFT))
    assert kinds(left) == [("removed", "a")]
    assert catalog.instances("web")[0].health is Health.LEFT
    back = catalog.apply(member("a", incarnation=4))
    assert kinds(back) == [("added", "a")]


def test_a_new_incarnation_alone_is_no_change() -> None:
    catalog = Catalog()
    catalog.apply(member("a", {"web": ServiceRecord(80), "api": ServiceRecord(81)}))
    # the node bumped api's revision: web only sees a new incarnation
    changes = catalog.apply(
        member("a", {"web": ServiceRecord(80), "api": ServiceRecord(81, revision=5)}, incarnation=2)
    )
    assert [(c.kind, c.instance.service) for c in changes] == [(ChangeKind.CHANGED, "api")]
    assert catalog.instances("web")[0].incarnation == 2


def test_deregistering_removes_but_the_name_stays_known() -> None:
    catalog = Catalog()
    catalog.apply(member("a"))
    changes = catalog.apply(member("a", {}, incarnation=2))
    assert kinds(changes) == [("removed", "a")]
    assert catalog.instances("web") == []
    assert catalog.knows("web")
    with pytest.raises(NoInstances, match="no instance left"):
        lookup([catalog], "web")


def test_unknown_and_unavailable_are_told_apart() -> None:
    catalog = Catalog("core")
    with pytest.raises(UnknownService, match="'web' is unknown in 'core'"):
        lookup([catalog], "web")
    catalog.apply(member("a", state=MemberState.DEAD))
    catalog.apply(member("b", state=MemberState.LEFT))
    with pytest.raises(NoInstances, match="1 failed, 1 left"):
        lookup([catalog], "web")


def test_filters_by_group_version_and_cluster() -> None:
    core, edge = Catalog("core"), Catalog("edge")
    core.apply(member("a", {"web": ServiceRecord(80, "blue", "1")}))
    core.apply(member("b", {"web": ServiceRecord(80, "green", "2")}))
    edge.apply(member("a", {"web": ServiceRecord(80, "blue", "2")}))
    both = [core, edge]
    assert [i.key for i in lookup(both, "web", Filter(group="blue"))] == [
        ("core", "a", "web"),
        ("edge", "a", "web"),
    ]
    assert [i.node for i in lookup(both, "web", Filter(version="2", cluster="core"))] == ["b"]
    with pytest.raises(NoInstances, match="3 available, none matches filter group='red'"):
        lookup(both, "web", Filter(group="red"))


def test_sync_forgets_reaped_members() -> None:
    catalog = Catalog()
    catalog.sync([member("a"), member("b")], complete=True)
    changes = catalog.sync([member("a")], complete=True)
    assert kinds(changes) == [("removed", "b")]
    assert [i.node for i in catalog.instances("web")] == ["a"]


def test_cached_entries_are_stale_until_gossip_confirms_them() -> None:
    catalog = Catalog("core")
    cached = [
        Instance("web", "a", ("10.0.0.1", 8080), metadata_address=("10.0.0.1", 9000)),
        Instance("web", "gone", ("10.0.0.7", 8080)),
    ]
    assert kinds(catalog.load(cached, ["web", "old"])) == [("added", "a"), ("added", "gone")]
    assert all(i.stale and i.cluster == "core" for i in catalog.instances("web"))
    assert catalog.knows("old")
    # alone: nothing confirms or denies the cache
    assert catalog.sync([], complete=False) == []
    # gossip: a is confirmed, and once the view is complete, gone is forgotten
    confirmed = catalog.apply(member("a"))
    assert kinds(confirmed) == [("changed", "a")] and not confirmed[0].instance.stale
    assert kinds(catalog.sync([member("a")], complete=True)) == [("removed", "gone")]


def test_gossip_wins_over_the_cache() -> None:
    catalog = Catalog()
    catalog.apply(member("a"))
    assert catalog.load([Instance("web", "a", ("10.0.0.9", 1))]) == []
    assert catalog.instances("web")[0].address == ("10.0.0.1", 8080)


def test_metadata_that_is_not_tags_is_counted_not_raised() -> None:
    catalog = Catalog()
    broken = Member("x", ("10.0.0.3", 7946), b"\xff\xc1", 1, MemberState.ALIVE, VSN)
    assert catalog.apply(broken) == []
    before = catalog.statistics()
    assert before == CatalogStatistics(bad_tags=1, bad_records=0)
    catalog.apply(dataclasses.replace(broken, meta=b"\xff\x81\xa7svc.bad\xa3p=0"))
    assert catalog.statistics() == CatalogStatistics(bad_tags=1, bad_records=1)
    assert before.bad_records == 0  # a snapshot stays as it was taken


states = st.sampled_from(list(MemberState))
snapshots = st.builds(
    member,
    st.sampled_from(["a", "b", "c"]),
    st.dictionaries(
        st.sampled_from(["web", "api", "db"]),
        st.builds(ServiceRecord, st.integers(1, 3), revision=st.integers(0, 2)),
        max_size=3,
    ),
    state=states,
    incarnation=st.integers(1, 5),
    draining=st.booleans(),
)


@given(st.lists(snapshots, max_size=30))
def test_changes_replayed_give_the_same_view_as_the_last_snapshots(
    history: list[Member],
) -> None:
    """Whatever the order of updates, the catalog equals one built from each member's last
    snapshot, and the available set a watcher rebuilds from the changes equals the catalog's."""
    catalog = Catalog()
    watched: dict[tuple[str, str, str], Instance] = {}
    for snapshot in history:
        for change in catalog.apply(snapshot):
            if change.kind is ChangeKind.REMOVED:
                del watched[change.instance.key]
            else:
                watched[change.instance.key] = change.instance
    last = {m.name: m for m in history}
    fresh = Catalog()
    for snapshot in last.values():
        fresh.apply(snapshot)
    assert sorted(catalog.all_instances(), key=lambda i: i.key) == sorted(
        fresh.all_instances(), key=lambda i: i.key
    )
    available = {i.key: i for i in catalog.all_instances() if i.health.available}
    assert watched.keys() == available.keys()
