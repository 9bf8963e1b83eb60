"""`swim agent -config-file/-config-dir`: serf's JSON keys, merged as serf merges them (later
files over earlier ones, flags over files), and every mistake told as one line that names the
file, the key and the fix."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pytest

from swim import cli
from swim.agent import (
    AgentError,
    AgentOptions,
    add_agent_arguments,
    load_keyring,
    options_from_args,
)
from swim.config import parse_duration
from swim.wire import Keyring
from swim.wire.crypto import encode_key

KEY = encode_key(bytes(range(32)))


def write(path: Path, settings: object, mode: int = 0o600) -> Path:
    path.write_text(json.dumps(settings) if not isinstance(settings, str) else settings)
    path.chmod(mode)
    return path


def agent_options(*argv: str) -> AgentOptions:
    parser = argparse.ArgumentParser()
    add_agent_arguments(parser)
    return options_from_args(parser.parse_args(argv))


def refusal(*argv: str) -> str:
    with pytest.raises(AgentError) as caught:
        agent_options(*argv)
    return str(caught.value)


def test_later_files_override_earlier_ones_and_flags_override_files(tmp_path: Path) -> None:
    first = write(
        tmp_path / "first.json",
        {
            "node_name": "from-file",
            "bind": "127.0.0.1:7000",
            "profile": "wan",
            "tags": {"role": "web", "dc": "a"},
            "start_join": ["10.0.0.1"],
            "retry_join": ["10.0.0.9"],
            "retry_interval": "1m30s",
            "retry_max_attempts": 4,
            "rejoin_after_leave": True,
            "disable_coordinates": True,
        },
    )
    second = write(
        tmp_path / "second.json", {"profile": "local", "tags": {"dc": "b"}, "start_join": ["x"]}
    )
    opts = agent_options(
        f"-config-file={first}",
        f"-config-file={second}",
        "-node=from-flag",
        "-tag",
        "owner=me",
        "-join=y",
        "-retry-max=0",
    )
    assert opts.node == "from-flag"  # a flag over both files
    assert opts.bind == ("127.0.0.1", 7000)  # the one file that says it
    assert opts.profile == "local"  # the later file over the earlier
    assert opts.tags == {"role": "web", "dc": "b", "owner": "me"}  # merged key by key
    assert opts.join == ["10.0.0.1", "x", "y"]  # the join lists add up, as serf's
    assert opts.retry_join == ["10.0.0.9"]
    assert (opts.retry_interval, opts.retry_max) == (90.0, 0)  # -retry-max=0 over the file's 4
    assert opts.rejoin_after_leave
    assert opts.disable_coordinates


def test_disable_coordinates_is_serfs_flag() -> None:
    assert agent_options("-node=x", "-disable-coordinates").disable_coordinates
    assert not agent_options("-node=x").disable_coordinates


def test_boolean_flags_take_gos_values_and_override_the_files(tmp_path: Path) -> None:
    file = write(tmp_path / "on.json", {"rejoin_after_leave": True, "disable_coordinates": True})
    parser = argparse.ArgumentParser()
    add_agent_arguments(parser)
    argv = [f"-config-file={file}", "-rejoin=false", "-disable-coordinates=false"]
    opts = options_from_args(parser.parse_args(cli._go_booleans(parser, argv)))
    assert not opts.rejoin_after_leave
    assert not opts.disable_coordinates
    assert agent_options("-node=x", "-rejoin").rejoin_after_leave


def test_without_files_or_flags_the_defaults_are_serfs() -> None:
    opts = agent_options("-node=x")
    assert (opts.bind, opts.rpc_addr, opts.profile, opts.log_level) == (
        ("0.0.0.0", 7946),
        "127.0.0.1:7373",
        "lan",
        "INFO",
    )
    assert (opts.retry_join, opts.retry_interval, opts.retry_max) == ([], 30.0, 0)
    assert opts.warnings == ()


def test_a_config_dir_reads_its_json_files_in_lexical_order(tmp_path: Path) -> None:
    folder = tmp_path / "serf.d"
    folder.mkdir()
    write(folder / "20-late.json", {"node_name": "late", "tags": {"n": "20"}})
    write(folder / "10-early.json", {"node_name": "early", "tags": {"n": "10", "a": "1"}})
    write(folder / "README.txt", "not JSON, and not read")
    (folder / "nested.json").mkdir()  # a directory, even one named so, is not read
    opts = agent_options(f"-config-dir={folder}")
    assert (opts.node, opts.tags) == ("late", {"n": "20", "a": "1"})


def test_secrets_come_from_the_file_and_null_means_not_set(tmp_path: Path) -> None:
    config = write(
        tmp_path / "secrets.json",
        {"encrypt_key": KEY, "rpc_auth": "token", "advertise": None, "log_level": "debug"},
    )
    opts = agent_options(f"-config-file={config}", "-node=x")
    assert (opts.encrypt, opts.rpc_auth, opts.advertise, opts.log_level) == (
        KEY,
        "token",
        None,
        "debug",
    )
    assert opts.warnings == ()  # mode 0600: nobody else reads it


@pytest.mark.parametrize(
    ("mode", "who"), [(0o644, "its group and others"), (0o640, "its group"), (0o604, "others")]
)
def test_a_config_file_holding_keys_readable_by_others_is_warned_of(
    tmp_path: Path, mode: int, who: str
) -> None:
    config = write(tmp_path / "agent.json", {"encrypt_key": KEY, "rpc_auth": "t"}, mode)
    (warning,) = agent_options(f"-config-file={config}", "-node=x").warnings
    assert warning == (
        f"{config} is a config file holding encrypt_key and rpc_auth, readable by {who} "
        f"(mode {mode:04o}); chmod 600 {config}"
    )


def test_a_readable_config_file_without_keys_is_no_concern(tmp_path: Path) -> None:
    config = write(tmp_path / "agent.json", {"node_name": "x", "tags": {"a": "b"}}, 0o644)
    assert agent_options(f"-config-file={config}").warnings == ()


def test_a_keyring_file_readable_by_others_is_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keyring = tmp_path / "keyring"
    Keyring([bytes(32)]).save(keyring)
    opts = AgentOptions(node="x", keyring_file=str(keyring))
    with caplog.at_level(logging.WARNING, "swim.agent"):
        load_keyring(opts)  # saved 0600, as the agent writes it
        assert caplog.messages == []
        keyring.chmod(0o644)
        load_keyring(opts)
    assert caplog.messages == [
        f"{keyring} is a keyring file, readable by its group and others (mode 0644); "
        f"chmod 600 {keyring}"
    ]


def test_a_serf_setting_swim_lacks_is_ignored_with_a_warning(tmp_path: Path) -> None:
    config = write(tmp_path / "serf.json", {"node_name": "x", "leave_on_terminate": True})
    assert agent_options(f"-config-file={config}").warnings == (
        f"config file {config}: leave_on_terminate is a serf agent setting swim agent lacks; "
        "ignored",
    )


@pytest.mark.parametrize(
    ("content", "said"),
    [
        ('{"node_name": "x",}', "not valid JSON at line 1 column 19: Expecting property name"),
        ("[1, 2]", 'expected a JSON object of settings, such as {"node_name": "web-1"}'),
        ('{"bindd": "x"}', 'unknown key "bindd"; did you mean "bind"?'),
        ('{"colour": 1}', 'unknown key "colour"; swim agent reads node_name, bind, advertise'),
        ('{"node_name": 7}', 'node_name: expected a string, got 7; put it in quotes: "7"'),
        ('{"retry_max_attempts": "3"}', 'expected a whole number, got "3"; write it without'),
        ('{"retry_max_attempts": 2.5}', "retry_max_attempts: expected a whole number, got 2.5"),
        ('{"rejoin_after_leave": "yes"}', 'expected true or false, got "yes"; write it without'),
        ('{"start_join": "10.0.0.1"}', 'start_join: expected a list, got "10.0.0.1"; write it'),
        ('{"retry_join": [1]}', 'expected a list of strings, such as ["10.0.0.5:7946"]'),
        ('{"tags": ["a"]}', 'tags: expected an object of strings, such as {"role": "web"}'),
        ('{"tags": {"n": 1}}', 'tags.n: expected a string, got 1; put it in quotes: "1"'),
        ('{"retry_interval": 30}', "retry_interval: expected a duration, got 30; give it a unit"),
        ('{"retry_interval": "30 s"}', "retry_interval: '30 s' is not a duration such as 5s"),
        ('{"start_join": {"a": 1}}', 'start_join: expected a list of strings, such as ["10.0'),
        ('{"services": [1]}', "services: expected a list of service objects"),
        ('{"http_token": 5}', "http_token: expected a string, got 5"),
    ],
)
def test_a_bad_config_file_is_one_line_naming_the_file_the_key_and_the_fix(
    tmp_path: Path, content: str, said: str
) -> None:
    config = write(tmp_path / "agent.json", content)
    line = refusal(f"-config-file={config}")
    assert line.startswith(f"config file {config}: ") and said in line
    assert "\n" not in line


def test_a_value_a_file_got_wrong_names_the_file_and_key_not_a_flag(tmp_path: Path) -> None:
    config = write(tmp_path / "agent.json", {"bind": "127.0.0.1:99999", "log_level": "loud"})
    assert refusal(f"-config-file={config}", "-log-level=info") == (
        f"config file {config}: bind '127.0.0.1:99999': port 99999 is outside 0..65535; give "
        "HOST[:PORT] (0 picks a free one)"
    )
    assert refusal(f"-config-file={config}", "-bind=127.0.0.1:0").startswith(
        f"config file {config}: log_level 'loud' is not a level"
    )
    config = write(tmp_path / "agent.json", {"retry_max_attempts": -1, "profile": "fast"})
    assert refusal(f"-config-file={config}") == (
        f"config file {config}: profile: unknown profile 'fast'; choose lan, wan or local"
    )


def test_a_device_or_a_binary_file_is_refused_not_read_whole(tmp_path: Path) -> None:
    assert refusal("-config-file=/dev/zero") == (
        "config file /dev/zero: over 1 MiB; is it a config file?"
    )
    binary = write(tmp_path / "agent.json", "")
    binary.write_bytes(b'{"node_name": "\xff"}')
    assert refusal(f"-config-file={binary}") == (
        f"config file {binary}: not UTF-8 text; save it as UTF-8 JSON"
    )


def test_a_missing_config_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    assert refusal(f"-config-file={missing}") == (
        f"cannot read the config file {missing} (No such file or directory); give "
        "-config-file a JSON file, or -config-dir a directory of them"
    )


def test_the_retry_flags_are_checked_and_a_short_interval_is_raised_as_serf_does() -> None:
    for many in ("many", "-1", "²"):
        assert refusal(f"-retry-max={many}") == (
            f"-retry-max {many!r}: expected how many attempts, such as 5 (0: no limit)"
        )
    assert refusal("-retry-interval=5") == (
        "-retry-interval: '5' is not a duration such as 5s, 500ms or 1m30s"
    )
    opts = agent_options("-node=x", "-retry-join=a", "-retry-join=b", "-retry-interval=200ms")
    assert (opts.retry_join, opts.retry_interval) == (["a", "b"], 1.0)
    assert opts.warnings == ("-retry-interval is below 1s; retrying every 1s",)


@pytest.mark.parametrize(
    ("text", "seconds"), [("0", 0.0), ("500ms", 0.5), ("1m30s", 90.0), ("1.5h", 5400.0)]
)
def test_durations_are_gos(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_the_gateway_settings_come_from_files_and_flags(tmp_path: Path) -> None:
    config = write(
        tmp_path / "agent.json",
        {
            "http_addr": "8500",
            "dns_addr": ":8600",
            "http_token": "s3cret",
            "services": [{"Name": "web", "Port": 80, "Tags": ["a"]}],
        },
    )
    gateway = agent_options(f"-config-file={config}", "-domain=consul", "-dns-ttl=30s").gateway
    assert gateway.http == ("127.0.0.1", 8500)  # a port alone listens on loopback
    assert gateway.dns == ("127.0.0.1", 8600)
    assert (gateway.domain, gateway.dns_ttl, gateway.token) == ("consul.", 30, "s3cret")
    assert [(s.name, s.port, s.tags) for s in gateway.services] == [("web", 80, ("a",))]
    assert agent_options().gateway.http is None  # off unless given


def test_a_service_defined_twice_is_refused(tmp_path: Path) -> None:
    web = {"Name": "web", "Port": 80}
    config = write(tmp_path / "agent.json", {"services": [web, {**web, "Port": 81}]})
    assert "is defined twice" in refusal(f"-config-file={config}")
