"""The tag scheme: readable by Serf users, compact, strict on write and lenient on read."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from discovery.records import (
    DRAINING_TAG,
    METADATA_PORT_TAG,
    RegistrationError,
    RegistrationTooLarge,
    ServiceRecord,
    check_name,
    check_size,
    read_tags,
    write_tags,
)

labels = st.text(alphabet="abcXYZ019_.:+/@~-", max_size=64)
records = st.builds(
    ServiceRecord,
    port=st.integers(1, 65_535),
    group=labels,
    version=labels,
    weight=st.integers(0, 65_535),
    revision=st.integers(0, 2**32 - 1),
    host=st.none() | st.sampled_from(["10.0.0.2", "::1", "db.internal"]),
)


@given(records)
def test_a_record_survives_its_tag(record: ServiceRecord) -> None:
    assert ServiceRecord.decode(record.encode()) == record


def test_defaults_are_left_out_and_the_value_is_readable() -> None:
    assert ServiceRecord(8080).encode() == "p=8080"
    full = ServiceRecord(8080, "blue", "1.4.2", 50, 0x9F3A06C1, "10.0.0.2")
    assert full.encode() == "p=8080,g=blue,v=1.4.2,w=50,r=9f3a06c1,h=10.0.0.2"


def test_unknown_fields_are_ignored_for_later_versions() -> None:
    assert ServiceRecord.decode("p=80,zone=eu-1") == ServiceRecord(80)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("g=blue", "no port"),
        ("p=0", "outside 1..65535"),
        ("p=80,w=x", "bad field"),
        ("p", "no '='"),
    ],
)
def test_bad_values_say_what_is_wrong(text: str, why: str) -> None:
    with pytest.raises(RegistrationError, match=why):
        ServiceRecord.decode(text)


def test_invalid_fields_are_refused_on_write() -> None:
    with pytest.raises(RegistrationError, match="group 'a,b' is invalid"):
        ServiceRecord(80, group="a,b")
    with pytest.raises(RegistrationError, match="weight 70000"):
        ServiceRecord(80, weight=70_000)
    with pytest.raises(RegistrationError, match="service name 'no spaces' is invalid"):
        check_name("no spaces")


def test_other_tags_stay_and_ours_are_replaced() -> None:
    base = {"role": "web", "svc.old": "p=1", DRAINING_TAG: "1"}
    tags = write_tags(base, {"api": ServiceRecord(80)}, metadata_port=9000, draining=False)
    assert tags == {"role": "web", "svc.api": "p=80", METADATA_PORT_TAG: "9000"}


def test_reading_skips_and_counts_malformed_records() -> None:
    tags = {
        "svc.api": "p=80",
        "svc.bad": "port=80",
        "svc.bad name": "p=80",
        "role": "x",
        METADATA_PORT_TAG: "99999",
        DRAINING_TAG: "1",
    }
    record = read_tags(tags)
    assert record.services == {"api": ServiceRecord(80)}
    assert record.invalid == 2
    assert record.metadata_port is None
    assert record.draining


def test_a_huge_metadata_port_tag_is_ignored_not_raised() -> None:
    assert read_tags({METADATA_PORT_TAG: "9" * 5000}).metadata_port is None


def test_too_many_registrations_name_the_size_and_the_limit() -> None:
    services = {f"service-{i:02}": ServiceRecord(8000 + i, revision=2**32 - 1) for i in range(40)}
    tags = write_tags({}, services, metadata_port=9000, draining=True)
    with pytest.raises(
        RegistrationTooLarge, match=r"take \d+ bytes of metadata, over the limit of 512"
    ):
        check_size(tags, 512)


def test_fourteen_services_with_metadata_fit_the_default_limit() -> None:
    services = {f"service-{i:02}": ServiceRecord(8000 + i, revision=2**32 - 1) for i in range(14)}
    assert check_size(write_tags({}, services, metadata_port=9000, draining=True), 512) <= 512


def test_tags_and_an_instance_id_travel_in_the_record() -> None:
    record = ServiceRecord(8080, tags=("blue", "v1.2"), instance_id="web-2")
    assert record.encode() == "p=8080,t=blue;v1.2,i=web-2"
    assert ServiceRecord.decode(record.encode()) == record
    assert ServiceRecord.decode("p=8080").tags == ()  # records without them still read


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"tags": ("a;b",)}, "tag 'a;b' is invalid"),
        ({"tags": ("",)}, "tag '' is invalid"),
        ({"tags": tuple(f"t{n}" for n in range(17))}, "17 tags, over the limit of 16"),
        ({"instance_id": "-x"}, "instance ID '-x' is invalid"),
    ],
)
def test_bad_tags_and_ids_are_refused_saying_why(fields: dict[str, Any], said: str) -> None:
    with pytest.raises(RegistrationError, match=re.escape(said)):
        ServiceRecord(80, **fields)
