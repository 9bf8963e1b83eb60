"""``swim agent``'s settings: Serf's JSON config files and the command line, merged as serf merges.

``serf agent -config-file FILE -config-dir DIR`` reads each file (a directory: its ``*.json``
files, in lexical order) with serf's key names (``node_name``, ``encrypt_key``, ...).  Later
files override earlier ones and flags override files; tags merge key by key, and the join lists
add up.  So secrets (``encrypt_key``, ``rpc_auth``) can live in a file readable only by the
agent's user rather than on a command line every local user reads in /proc.

What each source says is an :class:`AgentSettings`; :func:`load_settings` merges them.  It only
checks the JSON (types, key names): the values are checked where the agent uses them, with
:meth:`AgentSettings.origin` naming the flag or the file and key a bad one came from.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swim.config import parse_duration
from swim.toplevel import describe

DEFAULT_RETRY_INTERVAL = 30.0
"""Seconds between two ``-retry-join`` attempts, as serf's default."""
MIN_RETRY_INTERVAL = 1.0
"""serf raises a shorter ``-retry-interval`` to this, with a warning."""


class SettingsError(Exception):
    """A config file or flag is wrong; the message names the file and key (or the flag) and
    the fix."""


@dataclass(frozen=True)
class AgentSettings:
    """What one source (a config file, the command line) says, or what several say merged:
    ``None`` and empty are "not said".  Fields are named after serf's config keys."""

    node_name: str | None = None
    bind: str | None = None
    advertise: str | None = None
    encrypt_key: str | None = None
    keyring_file: str | None = None
    rpc_addr: str | None = None
    rpc_auth: str | None = None
    profile: str | None = None
    snapshot_path: str | None = None
    log_level: str | None = None
    retry_interval: float | None = None
    retry_max_attempts: int | None = None
    rejoin_after_leave: bool | None = None
    disable_coordinates: bool | None = None
    http_addr: str | None = None
    dns_addr: str | None = None
    domain: str | None = None
    dns_ttl: float | None = None
    http_token: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    start_join: tuple[str, ...] = ()
    retry_join: tuple[str, ...] = ()
    services: tuple[Mapping[str, Any], ...] = ()
    """Service definitions (Consul's JSON: Name, ID, Port, Address, Tags, Meta) to register."""
    origins: Mapping[str, str] = field(default_factory=dict)
    """Where each value said came from: ``-bind``, or ``config file PATH: bind``."""
    warnings: tuple[str, ...] = ()
    """What the agent should log once it runs (files readable by others, ignored keys)."""

    def origin(self, key: str) -> str:
        """The flag or file and key the value of ``key`` came from, for an error message."""
        return self.origins.get(key, FLAGS[key])


FLAGS = {
    "node_name": "-node",
    "bind": "-bind",
    "advertise": "-advertise",
    "encrypt_key": "-encrypt",
    "keyring_file": "-keyring-file",
    "rpc_addr": "-rpc-addr",
    "rpc_auth": "-rpc-auth",
    "profile": "-profile",
    "snapshot_path": "-snapshot",
    "log_level": "-log-level",
    "retry_interval": "-retry-interval",
    "retry_max_attempts": "-retry-max",
    "rejoin_after_leave": "-rejoin",
    "disable_coordinates": "-disable-coordinates",
    "tags": "-tag",
    "start_join": "-join",
    "retry_join": "-retry-join",
    "http_addr": "-http-addr",
    "dns_addr": "-dns-addr",
    "domain": "-domain",
    "dns_ttl": "-dns-ttl",
    "http_token": "-http-token",
    "services": "services",
}
"""serf's config keys that ``swim agent`` reads (and the gateway's, named as Consul's), and the
flag each one stands for (``services`` has none: only a config file says it)."""

_KINDS = {
    "tags": "tags",
    "start_join": "strings",
    "retry_join": "strings",
    "retry_interval": "duration",
    "retry_max_attempts": "integer",
    "rejoin_after_leave": "boolean",
    "disable_coordinates": "boolean",
    "dns_ttl": "duration",
    "services": "services",
}
"""The JSON type of each key that is not a plain string."""

SERF_ONLY_KEYS = frozenset(
    {
        "role",
        "tags_file",
        "protocol",
        "replay_on_join",
        "query_response_size_limit",
        "query_size_limit",
        "user_event_size_limit",
        # event_handlers: once the agent runs handlers, add a field to AgentSettings, the key
        # to FLAGS (kind "strings" in _KINDS, added up in merge) and drop it from here.
        "event_handlers",
        "leave_on_terminate",
        "skip_leave_on_interrupt",
        "discover",
        "interface",
        "reconnect_interval",
        "reconnect_timeout",
        "tombstone_timeout",
        "disable_name_resolution",
        "enable_syslog",
        "syslog_facility",
        "enable_compression",
        "statsite_addr",
        "statsd_addr",
        "broadcast_timeout",
    }
)
"""Keys serf agent reads and ``swim agent`` has no setting for: a warning, and ignored.  Any
other key is an error, as in serf (which decodes with ``ErrorUnused``)."""

MAX_CONFIG_FILE = 1 << 20
"""Bytes a config file may hold: far more than any has, and a device given by mistake (such as
/dev/zero) is refused rather than read without end."""

SECRET_KEYS = ("encrypt_key", "rpc_auth", "http_token")
"""Keys whose values let whoever reads them into the cluster or the RPC endpoint."""

_LISTS = ("start_join", "retry_join")
CONFIG_ONLY = ("services",)
"""Keys with no flag: only a config file says them."""
MAX_SERVICES = 64


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags for config files and retried joins (serf's names, single or double dash).

    The agent's flags that a file may set too default to None here, so that :func:`merge`
    sees which ones the command line gave; their defaults apply after the merge."""
    parser.set_defaults(
        bind=None,
        profile=None,
        rpc_addr=None,
        rejoin=None,
        disable_coordinates=None,
        log_level=None,
    )
    flag = parser.add_argument
    for name, metavar, what in (
        ("config-file", "FILE", "a JSON file of serf's settings; repeatable"),
        ("config-dir", "DIR", "its *.json files, in lexical order; repeatable"),
    ):
        flag(
            f"-{name}",
            f"--{name}",
            dest="config_paths",
            action="append",
            default=[],
            metavar=metavar,
            help=what,
        )
    flag(
        "-retry-join",
        "--retry-join",
        action="append",
        default=[],
        metavar="ADDR",
        help="seed to keep trying (repeatable)",
    )
    flag("-retry-interval", "--retry-interval", metavar="DURATION", help="between tries (30s)")
    flag("-retry-max", "--retry-max", metavar="N", help="failed tries before exiting (0: never)")


def flag_settings(args: argparse.Namespace) -> AgentSettings:
    """What the command line says: the flags given (each flag's default is None, so that a
    config file's value stands unless a flag overrides it)."""
    said: dict[str, Any] = {}
    for key, flag in FLAGS.items():
        if key in CONFIG_ONLY:
            continue
        value = getattr(args, flag[1:].replace("-", "_"), None)
        if value is not None and value != []:
            said[key] = value
    tags: dict[str, str] = {}
    for item in said.pop("tags", []):
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SettingsError(f"-tag {item!r}: expected key=value, for example -tag role=web")
        tags[name] = value
    for name in _LISTS:
        said[name] = tuple(said.get(name, ()))
    if "retry_interval" in said:
        try:
            said["retry_interval"] = parse_duration(said["retry_interval"])
        except ValueError as exc:
            raise SettingsError(f"-retry-interval: {exc}") from None
    if "retry_max_attempts" in said:
        text = said["retry_max_attempts"]
        if not (text.isascii() and text.isdigit()):
            raise SettingsError(
                f"-retry-max {text!r}: expected how many attempts, such as 5 (0: no limit)"
            )
        said["retry_max_attempts"] = int(text)
    if "dns_ttl" in said:
        text = said["dns_ttl"]
        try:
            said["dns_ttl"] = (
                float(text) if text.isascii() and text.isdigit() else parse_duration(text)
            )
        except ValueError as exc:
            raise SettingsError(f"-dns-ttl: {exc}") from None
    origins = {key: FLAGS[key] for key in [*said, *(["tags"] if tags else [])] if key not in _LISTS}
    return AgentSettings(**said, tags=tags, origins=origins)


def load_settings(paths: Sequence[str], flags: AgentSettings) -> AgentSettings:
    """The config files and directories at ``paths``, read in order and merged, with the
    command line's ``flags`` over them."""
    merged = AgentSettings()
    for path in paths:
        for file in _config_files(path):
            merged = merge(merged, read_config_file(file))
    return merge(merged, flags)


def merge(base: AgentSettings, over: AgentSettings) -> AgentSettings:
    """``over`` on top of ``base``, as serf's ``MergeConfig``: what ``over`` says wins, tags
    merge key by key, join lists add up."""
    changes: dict[str, Any] = {
        spec.name: value
        for spec in dataclasses.fields(AgentSettings)
        if spec.name in FLAGS and (value := getattr(over, spec.name)) is not None
    }
    changes["tags"] = {**base.tags, **over.tags}
    for name in _LISTS:
        changes[name] = getattr(base, name) + getattr(over, name)
    changes["services"] = base.services + over.services
    changes["origins"] = {**base.origins, **over.origins}
    changes["warnings"] = base.warnings + over.warnings
    return dataclasses.replace(base, **changes)


def _config_files(path: str) -> list[Path]:
    """``path`` itself, or the ``*.json`` files of the directory ``path`` in lexical order."""
    try:
        if not os.path.isdir(path):
            os.stat(path)
            return [Path(path)]
        entries = sorted(os.scandir(path), key=lambda entry: entry.name)
    except OSError as exc:
        raise SettingsError(
            f"cannot read the config file {path} ({exc.strerror or describe(exc)}); give "
            "-config-file a JSON file, or -config-dir a directory of them"
        ) from None
    return [Path(e.path) for e in entries if e.name.endswith(".json") and e.is_file()]


def read_config_file(path: Path) -> AgentSettings:
    """One config file in serf's JSON format; :class:`SettingsError` names the file, the key
    and the fix for anything wrong."""
    where = f"config file {path}"
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CONFIG_FILE + 1)
    except OSError as exc:
        raise SettingsError(f"cannot read the {where} ({describe(exc)})") from None
    if len(data) > MAX_CONFIG_FILE:
        raise SettingsError(f"{where}: over {MAX_CONFIG_FILE >> 20} MiB; is it a config file?")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SettingsError(f"{where}: not UTF-8 text; save it as UTF-8 JSON") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SettingsError(
            f"{where}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}; fix "
            "it there (JSON takes no comments and no trailing commas)"
        ) from None
    if not isinstance(raw, dict):
        raise SettingsError(
            f'{where}: expected a JSON object of settings, such as {{"node_name": "web-1"}}'
        )
    values: dict[str, Any] = {}
    warnings: list[str] = []
    for key, value in raw.items():
        if key in SERF_ONLY_KEYS:
            warnings.append(f"{where}: {key} is a serf agent setting swim agent lacks; ignored")
        elif key not in FLAGS:
            raise SettingsError(f"{where}: unknown key {json.dumps(key)}; {_known_keys(key)}")
        elif value is not None:  # null: not said, as Go decodes it
            values[key] = _typed(where, key, value)
    secrets = [key for key in SECRET_KEYS if key in values]
    exposed = readable_by_others(path, f"a config file holding {' and '.join(secrets)}")
    if secrets and exposed:
        warnings.append(exposed)
    for name in _LISTS:
        values[name] = tuple(values.get(name, ()))
    origins = {key: f"{where}: {key}" for key in values if key not in _LISTS}
    return AgentSettings(**values, origins=origins, warnings=tuple(warnings))


def _known_keys(key: str) -> str:
    close = difflib.get_close_matches(key, [*FLAGS, *SERF_ONLY_KEYS], n=1)
    if close:
        return f"did you mean {json.dumps(close[0])}?"
    return f"swim agent reads {', '.join(FLAGS)} (serf agent's names)"


def _typed(where: str, key: str, value: object) -> object:
    """``value`` checked against the type of ``key``; a duration comes back in seconds."""
    kind = _KINDS.get(key, "string")
    got = json.dumps(value)

    def wrong(expected: str) -> str:  # not str.format: the value may hold braces
        return f"{where}: {key}: expected {expected}, got {got}"

    if kind == "string" and not isinstance(value, str):
        raise SettingsError(wrong("a string") + f"; put it in quotes: {_quoted(value)}")
    if kind == "boolean" and not isinstance(value, bool):
        raise SettingsError(wrong("true or false") + "; write it without quotes")
    if kind == "integer" and (isinstance(value, bool) or not isinstance(value, int)):
        fix = f"; write it without quotes: {value}" if _whole(value) else ", such as 3"
        raise SettingsError(wrong("a whole number") + fix)
    if kind == "strings":
        if isinstance(value, str):
            raise SettingsError(wrong("a list") + f"; write it as [{json.dumps(value)}]")
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise SettingsError(wrong('a list of strings, such as ["10.0.0.5:7946"]'))
    if kind == "tags":
        if not isinstance(value, dict):
            raise SettingsError(wrong('an object of strings, such as {"role": "web"}'))
        for tag, text in value.items():
            if not isinstance(text, str):
                raise SettingsError(
                    f"{where}: {key}.{tag}: expected a string, got {json.dumps(text)}; put it "
                    f"in quotes: {_quoted(text)}"
                )
    if kind == "services":
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise SettingsError(
                wrong('a list of service objects, such as [{"Name": "web", "Port": 80}]')
            )
        if len(value) > MAX_SERVICES:
            raise SettingsError(f"{where}: {key}: {len(value)} services, over {MAX_SERVICES}")
        return tuple(value)
    if kind == "duration":
        if not isinstance(value, str):
            raise SettingsError(wrong("a duration") + f'; give it a unit: "{value}s"')
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise SettingsError(f"{where}: {key}: {exc}") from None
    return value


def _quoted(value: object) -> str:
    return json.dumps(value if isinstance(value, str) else json.dumps(value))


def _whole(value: object) -> bool:
    return isinstance(value, str) and value.strip().lstrip("-").isdigit()


def readable_by_others(path: str | os.PathLike[str], what: str) -> str | None:
    """A warning when the file at ``path`` (``what`` it is, for the message) can be read by
    its group or by others; None when it cannot, or does not exist."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None
    if not mode & (stat.S_IRGRP | stat.S_IROTH):
        return None
    who = " and ".join(
        name for bit, name in ((stat.S_IRGRP, "its group"), (stat.S_IROTH, "others")) if mode & bit
    )
    return f"{path} is {what}, readable by {who} (mode {mode:04o}); chmod 600 {path}"
