"""The persisted catalog: what a client last knew, to bootstrap from when no peer answers.

A small JSON file, written atomically (a temporary file in the same folder, flushed to disk,
then renamed over the old one), so a crash mid-write leaves the previous version whole.  A
missing file is a first start; an unreadable one is logged and ignored: the cache is a hint,
never a reason not to start.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from discovery.catalog import Catalog, Instance

log = logging.getLogger("discovery.cachefile")

FORMAT = "shoal-discovery-cache"
VERSION = 1
MAX_FILE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One cluster's entries: available instances and every service name known."""

    instances: tuple[Instance, ...]
    services: tuple[str, ...]


def snapshot(catalog: Catalog) -> Snapshot:
    """What is worth keeping of ``catalog``: failed and left instances are not."""
    instances = tuple(i for i in catalog.all_instances() if i.health.available)
    return Snapshot(instances, tuple(catalog.services()))


def encode(snapshots: Mapping[str, Snapshot]) -> str:
    clusters = {
        cluster: {
            "services": list(shot.services),
            "instances": [_instance_entry(i) for i in shot.instances],
        }
        for cluster, shot in snapshots.items()
    }
    return json.dumps({"format": FORMAT, "version": VERSION, "clusters": clusters}, indent=1)


def decode(text: str) -> dict[str, Snapshot]:
    """The snapshots in ``text``; :class:`ValueError` naming what is wrong."""
    document = json.loads(text)
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} file")
    if document.get("version") != VERSION:
        raise ValueError(f"version {document.get('version')!r}, expected {VERSION}")
    out: dict[str, Snapshot] = {}
    for cluster, body in dict(document["clusters"]).items():
        services = tuple(str(s) for s in body["services"])
        instances = tuple(_instance(cluster, entry) for entry in body["instances"])
        out[str(cluster)] = Snapshot(instances, services)
    return out


def save(path: str | os.PathLike[str], snapshots: Mapping[str, Snapshot]) -> None:
    """Write ``snapshots`` to ``path`` atomically."""
    target = Path(path)
    data = encode(snapshots).encode()
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load(path: str | os.PathLike[str]) -> dict[str, Snapshot]:
    """The snapshots saved at ``path``; nothing when it is missing or unreadable (logged)."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
        return decode(data.decode())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring the discovery cache %s: %s: %s", path, type(exc).__name__, exc)
        return {}


def _instance_entry(instance: Instance) -> dict[str, Any]:
    return {
        "service": instance.service,
        "node": instance.node,
        "host": instance.address[0],
        "port": instance.address[1],
        "group": instance.group,
        "version": instance.version,
        "weight": instance.weight,
        "revision": instance.revision,
        "metadata": None if instance.metadata_address is None else list(instance.metadata_address),
        "tags": list(instance.tags),
        "id": instance.instance_id,
    }


def _instance(cluster: str, entry: Mapping[str, Any]) -> Instance:
    numbers: Sequence[object] = (entry["port"], entry["weight"], entry["revision"])
    if not all(isinstance(n, int) for n in numbers):
        raise ValueError(f"an entry has a field of the wrong type: {entry!r}")
    metadata = entry["metadata"]
    metadata_address = None if metadata is None else (str(metadata[0]), int(metadata[1]))
    tags = entry.get("tags", [])  # absent from caches written before tags travelled
    if not isinstance(tags, list):
        raise ValueError(f"an entry's tags are not a list: {entry!r}")
    return Instance(
        service=str(entry["service"]),
        node=str(entry["node"]),
        address=(str(entry["host"]), entry["port"]),
        group=str(entry["group"]),
        version=str(entry["version"]),
        weight=entry["weight"],
        revision=entry["revision"],
        metadata_address=metadata_address,
        cluster=cluster,
        stale=True,
        tags=tuple(str(tag) for tag in tags),
        instance_id=str(entry.get("id", "")),
    )
