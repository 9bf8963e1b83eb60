"""Sweeps: a grid of scenarios, cluster sizes, profiles, losses, scenario parameters and
protocol settings, each combination played with many seeds, in parallel.

    from simulator.sweep import Sweep

    sweep = Sweep(scenarios=["crash"], nodes=[20, 50], settings={"probe_interval": [0.5, 1.0]},
                  seeds=10)
    table = sweep.run(workers=2)          # or dask="local", or dask="tcp://scheduler:8786"
    table.write("results.csv")            # or .jsonl
    frame = table.to_pandas()             # with the sweep extra: pip install 'shoal[sweep]'

Every run is what ``python -m simulator run`` plays (:func:`simulator.scenarios.prepare`), in
a process of its own, so its trace hash is the one the row's ``command`` reproduces, whichever
worker played it.  A run that raises becomes a row with its ``error``; Ctrl-C stops the sweep
and keeps the rows finished so far.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import itertools
import json
import logging
import math
import multiprocessing
import os
import shlex
import signal
import sys
import threading
import time
import tomllib
import traceback
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnContext, SpawnProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from simulator.faults import ScheduleError
from simulator.metrics import Results
from simulator.network import PROFILE_LINKS, NetworkError
from simulator.progress import SweepProgress
from simulator.scenarios import (
    SCENARIOS,
    Params,
    PlayOptions,
    Setting,
    prepare,
    setting,
    validate,
)
from swim.config import Config, ConfigError

if TYPE_CHECKING:
    import pandas

Row = dict[str, Any]
"""One run: its parameters, seed, figures, trace hash, error and replay command."""

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
"""Output formats by file suffix."""
EXTRA = "pip install 'shoal[sweep]'"
"""How to install what Dask and DataFrames need."""
POLL = 0.5
"""Wall seconds between progress updates while no run finishes."""


class SweepError(ValueError):
    """A sweep that cannot run as asked; the message names the value and what to give."""


@dataclass(frozen=True, slots=True)
class RunSpec:
    """One run of a sweep: what ``python -m simulator run`` takes, as plain (picklable) data.

    ``params`` and ``settings`` hold what the sweep gives (scenario parameters; Config fields,
    typed); ``resolved`` and ``resolved_loss`` what the run uses, defaults included."""

    scenario: str
    nodes: int
    seed: int
    duration: float
    profile: str = "lan"
    loss: float | None = None
    params: tuple[tuple[str, float | str], ...] = ()
    settings: tuple[tuple[str, Setting], ...] = ()
    encrypt: bool = False
    compress: bool = True
    start: str = "converged"
    resolved: tuple[tuple[str, float | str], ...] = ()
    resolved_loss: float = 0.0

    def options(self) -> PlayOptions:
        """The keyword arguments of :func:`~simulator.scenarios.prepare` beside the size, seed
        and duration."""
        return PlayOptions(
            profile=self.profile,
            loss=self.loss,
            params=dict(self.params),
            settings=dict(self.settings),
            encrypt=self.encrypt,
            compress=self.compress,
            start=self.start,
        )

    def command(self) -> str:
        """The ``python -m simulator run`` command that plays exactly this run again."""
        args = [
            "python", "-m", "simulator", "run", "--scenario", self.scenario,
            "--nodes", str(self.nodes), "--seed", str(self.seed),
            "--duration", _text(self.duration), "--profile", self.profile,
        ]  # fmt: skip
        if self.loss is not None:
            args += ["--loss", _text(self.loss)]
        for flag, pairs in (("--param", self.params), ("--set", self.settings)):
            for name, value in pairs:
                args += [flag, f"{name}={_text(value)}"]
        args += ["--encrypt"] * self.encrypt + ["--no-compress"] * (not self.compress)
        if self.start != "converged":
            args += ["--start", self.start]
        return shlex.join(args)

    def columns(self) -> Row:
        """The row's parameter columns: what the run used, defaults included."""
        return {
            "scenario": self.scenario,
            "profile": self.profile,
            "nodes": self.nodes,
            "duration": self.duration,
            "loss": self.resolved_loss,
            **{f"param.{name}": value for name, value in self.resolved},
            **{f"set.{name}": value for name, value in self.settings},
            "encrypt": self.encrypt,
            "compress": self.compress,
            "start": self.start,
            "seed": self.seed,
        }


def _text(value: Setting) -> str:
    """A value as a command-line argument that parses back to it exactly."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value).removesuffix(".0")
    return str(value)


def _max(values: Iterable[float | None]) -> float | None:
    found = [value for value in values if value is not None]
    return max(found) if found else None


def _mean(values: Iterable[float | None]) -> float | None:
    found = [value for value in values if value is not None]
    return sum(found) / len(found) if found else None


def figures(results: Results) -> Row:
    """What ``run --json`` reports, flattened into columns: its numbers as they are, its
    dicts as ``traffic.*``, ``network.*`` and ``events.*``, and each list as a count with the
    worst (``.max``) of its delays, over the items that have one (``crashes.detected`` of
    ``crashes.count`` were failed by every observer, ``convergence.agreed`` of
    ``convergence.count`` repairs led to one view)."""
    crashes = results.crashes
    events = [e for e in results.user_events if not e.coalesce]
    return {
        "trace_hash": results.trace_hash,
        "agreed": results.agreed,
        "running": results.running,
        "node_seconds": results.node_seconds,
        "detection_bound": results.extra.get("detection_bound"),
        "crashes.count": len(crashes),
        "crashes.detected": sum(c.all_failed is not None for c in crashes),
        "crashes.first_suspicion.max": _max(c.first_suspicion for c in crashes),
        "crashes.first_failed.max": _max(c.first_failed for c in crashes),
        "crashes.all_failed.max": _max(c.all_failed for c in crashes),
        "crashes.all_failed.mean": _mean(c.all_failed for c in crashes),
        "false_suspicions.count": len(results.false_suspicions),
        "false_failures.count": len(results.false_failures),
        "convergence.count": len(results.convergence),
        "convergence.agreed": sum(r.agreed_after is not None for r in results.convergence),
        "convergence.agreed_after.max": _max(r.agreed_after for r in results.convergence),
        "spreads.count": len(results.spreads),
        "spreads.to_all.max": _max(curve.time_to(1.0) for curve in results.spreads),
        "user_events.count": len(events),
        "user_events.reached_all": sum(e.reach >= 1.0 for e in events),
        "user_events.duplicates": sum(e.duplicates for e in results.user_events),
        "queries.count": len(results.queries),
        "queries.answers": sum(q.answers for q in results.queries),
        "queries.asked": sum(q.members for q in results.queries),
        "max_health": results.max_health,
        "unhealthy_node_seconds": results.unhealthy_node_seconds,
        **{f"traffic.{k}": v for k, v in dataclasses.asdict(results.traffic).items()},
        **{f"network.{k}": v for k, v in results.network.items()},
        **{f"events.{k}": v for k, v in results.events.items()},
    }


def play_row(spec: RunSpec) -> Row:
    """Play one run and return its row; an exception it raises becomes the row's ``error``
    (with its traceback's last line), so that one bad run does not stop a sweep."""
    started = time.monotonic()
    row = spec.columns()
    try:
        play = prepare(
            spec.scenario,
            nodes=spec.nodes,
            seed=spec.seed,
            duration=spec.duration,
            **spec.options(),
        )
        play.cluster.run_until(spec.duration)
        row.update(figures(play.results()))
        row["error"] = ""
    except Exception as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        row["error"] = f"{type(exc).__name__}: {exc} ({Path(where.filename).name}:{where.lineno})"
    row["wall_seconds"] = round(time.monotonic() - started, 3)
    row["command"] = spec.command()
    return row


def _failed_row(spec: RunSpec, error: str) -> Row:
    """The row of a run that did not come back from its worker."""
    return {**spec.columns(), "error": error, "command": spec.command()}


# ---------------------------------------------------------------------- the grid


def _values(flag: str, given: object) -> list[str]:
    """The values of one axis: a comma list (``"20,50"``), a scalar, or a list of them."""
    items = given if isinstance(given, list | tuple) else [given]
    values = [part.strip() for item in items for part in str(item).split(",")]
    if not values or any(not value for value in values):
        raise SweepError(f"{flag}: {given!r} has an empty value; give a comma list like 1,2")
    return values


def _numbers(flag: str, given: object, kind: type[float] | type[int], low: float) -> list[Any]:
    """An axis of numbers of ``kind``, each at least ``low``."""
    numbers = []
    for text in _values(flag, given):
        try:
            value = kind(text)
        except ValueError:
            noun = "a whole number" if kind is int else "a number"
            raise SweepError(f"{flag}: {text!r} is not {noun}") from None
        if not (math.isfinite(value) and value >= low):
            raise SweepError(f"{flag}: {text} is below {low:g}; give values of at least {low:g}")
        numbers.append(value)
    return numbers


def _choices(flag: str, given: object, known: Iterable[str]) -> list[str]:
    names = list(known)
    values = _values(flag, given)
    for value in values:
        if value not in names:
            raise SweepError(f"{flag}: {value!r} is unknown; choose from {', '.join(names)}")
    return values


@dataclass(frozen=True)
class Sweep:
    """A grid: every combination of the axes, with seeds ``first_seed`` onwards for each.

    Each axis is a list of values, or one value, or a comma list as text (``"20,50"``).
    ``params`` maps scenario parameters (``python -m simulator list``) and ``settings`` maps
    fields of :class:`swim.config.Config` to their axes; ``losses`` None is each scenario's
    own (none, or 10% for ``flaky``).  ``encrypt``, ``compress`` and ``start`` apply to every
    run.  A comma splits values everywhere, so a text setting (``label``) cannot hold one.
    """

    scenarios: object = "steady"
    nodes: object = 20
    durations: object = 60.0
    profiles: object = "lan"
    losses: object = None
    params: Mapping[str, object] = field(default_factory=dict)
    settings: Mapping[str, object] = field(default_factory=dict)
    seeds: int = 10
    first_seed: int = 1
    encrypt: bool = False
    compress: bool = True
    start: str = "converged"

    def runs(self) -> list[RunSpec]:
        """Every run, in grid order (seeds innermost), each checked as ``run`` would check it;
        a bad value raises :class:`SweepError` before anything runs."""
        scenarios = _choices("--scenario", self.scenarios, SCENARIOS)
        sizes: list[int] = _numbers("--nodes", self.nodes, int, 2)
        durations: list[float] = _numbers("--duration", self.durations, float, 0.001)
        profiles = _choices("--profile", self.profiles, PROFILE_LINKS)
        losses: list[float | None] = (
            [None] if self.losses is None else _numbers("--loss", self.losses, float, 0.0)
        )
        for name, value, low in (("--seeds", self.seeds, 1), ("--first-seed", self.first_seed, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise SweepError(f"{name}: {value!r} must be a whole number of at least {low}")
        if self.start not in ("converged", "join"):
            raise SweepError(f"--start: {self.start!r} is unknown; choose converged or join")
        params = self._params(scenarios)
        settings = self._settings()
        runs = []
        axes: list[list[Any]] = [scenarios, profiles, sizes, durations, losses, *params.values()]
        for scenario, profile, size, duration, loss, *values in itertools.product(*axes):
            for choice in itertools.product(*settings.values()):
                spec = RunSpec(
                    scenario=scenario,
                    nodes=size,
                    seed=self.first_seed,
                    duration=duration,
                    profile=profile,
                    loss=loss,
                    params=tuple(zip(params, values, strict=True)),
                    settings=tuple(zip(settings, choice, strict=True)),
                    encrypt=self.encrypt,
                    compress=self.compress,
                    start=self.start,
                )
                resolved, resolved_loss = _checked(spec)
                runs += [
                    dataclasses.replace(
                        spec,
                        seed=seed,
                        resolved=tuple(resolved.items()),
                        resolved_loss=resolved_loss,
                    )
                    for seed in range(self.first_seed, self.first_seed + self.seeds)
                ]
        return runs

    def _params(self, scenarios: list[str]) -> dict[str, list[str]]:
        """Each scenario parameter's axis; every scenario of the sweep must take it."""
        axes = {}
        for name, given in self.params.items():
            for scenario in scenarios:
                known = SCENARIOS[scenario].defaults
                if name not in known:
                    takes = ", ".join(known) or "none"
                    hint = (
                        "; the loss on every link is --loss"
                        if name == "loss"
                        else "; protocol settings go in --set"
                        if name in _CONFIG_FIELDS
                        else ""
                    )
                    raise SweepError(
                        f"--param {name}: scenario {scenario!r} has no parameter {name} "
                        f"(it takes: {takes}){hint}"
                    )
            axes[name] = _values(f"--param {name}", given)
        return axes

    def _settings(self) -> dict[str, list[Setting]]:
        """Each Config field's axis, its values typed as the field is."""
        axes = {}
        for name, given in self.settings.items():
            if name not in _CONFIG_FIELDS and any(name in s.defaults for s in SCENARIOS.values()):
                raise SweepError(
                    f"--set {name}: {name} is a scenario parameter; give it as --param {name}=..."
                )
            try:
                axes[name] = [setting(name, value) for value in _values(f"--set {name}", given)]
            except ConfigError as exc:
                raise SweepError(f"--set {name}: {exc}") from None
        return axes

    def run(
        self,
        *,
        workers: int | None = None,
        dask: str | None = None,
        progress: TextIO | None = None,
        show_progress: bool = True,
    ) -> Table:
        """Play every run and return the table, in grid order.

        ``workers`` processes on this machine (default: one per core; 0 plays the runs in this
        process, one after another); or, with ``dask``, on a Dask cluster: a scheduler's address,
        or ``"local"`` for a ``distributed.LocalCluster`` of ``workers`` processes.  A progress
        line goes to ``progress`` (standard error by default) unless ``show_progress`` is false.
        Ctrl-C (``KeyboardInterrupt``) stops the sweep: the table then holds the runs finished so
        far and ``interrupted`` is true."""
        runs = self.runs()
        count = (os.cpu_count() or 1) if workers is None else workers
        if count < 0:
            raise SweepError(f"--workers: {count} is negative; give 0 (this process) or more")
        if dask is not None:
            source = _on_dask(runs, dask, max(1, count))
        elif count == 0:
            source = _in_process(runs)
        else:
            source = _in_processes(runs, min(count, len(runs)))
        shown = SweepProgress(len(runs), progress) if show_progress else None
        rows: dict[int, Row] = {}
        failed = 0
        interrupted = False
        try:
            with contextlib.closing(source):
                for finished in source:
                    if finished is not None:
                        index, row = finished
                        rows[index] = row
                        failed += bool(row["error"])
                    if shown is not None:
                        shown(len(rows), failed)
        except KeyboardInterrupt:
            interrupted = True
        if shown is not None:
            shown.done()
        return Table([rows[index] for index in sorted(rows)], len(runs), interrupted)


_CONFIG_FIELDS = frozenset(Config.__dataclass_fields__)


def _checked(spec: RunSpec) -> tuple[Params, float]:
    """What ``spec`` resolves to, or the reason it cannot run, naming the run."""
    try:
        return validate(spec.scenario, nodes=spec.nodes, duration=spec.duration, **spec.options())
    except (ScheduleError, ConfigError, NetworkError) as exc:
        given = [f"{k}={_text(v)}" for k, v in (*spec.params, *spec.settings)]
        where = [f"scenario={spec.scenario}", f"nodes={spec.nodes}", f"profile={spec.profile}"]
        raise SweepError(f"in the runs with {', '.join(where + given)}: {exc}") from None


GRID_KEYS = {
    "scenario": "scenarios",
    "nodes": "nodes",
    "duration": "durations",
    "profile": "profiles",
    "loss": "losses",
    "param": "params",
    "set": "settings",
    "seeds": "seeds",
    "first_seed": "first_seed",
    "encrypt": "encrypt",
    "compress": "compress",
    "start": "start",
}
"""A grid file's keys (the command line's flags) and the :class:`Sweep` fields they set."""


def read_grid(path: Path) -> dict[str, Any]:
    """The :class:`Sweep` fields a TOML or JSON grid file sets: its keys are the flags of
    ``sweep`` (``scenario``, ``nodes``, ``duration``, ``profile``, ``loss``, ``seeds``,
    ``first_seed``, ...), each a value or a list, with the tables ``param`` and ``set``."""
    text = path.read_text()
    try:
        if path.suffix.lower() == ".toml":
            data: object = tomllib.loads(text)
        elif path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            raise SweepError(f"--grid: {path.name!r} is neither .toml nor .json; rename it")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise SweepError(f"--grid: {path}: {exc}") from None
    if not isinstance(data, dict):
        raise SweepError(f"--grid: {path} holds no table of keys; see `sweep --help`")
    unknown = sorted(set(data) - set(GRID_KEYS))
    if unknown:
        raise SweepError(
            f"--grid: {path} has unknown key(s) {', '.join(unknown)}; it takes: "
            + ", ".join(GRID_KEYS)
        )
    for key in ("param", "set"):
        if not isinstance(data.get(key, {}), dict):
            raise SweepError(f"--grid: {path}: {key} must be a table of NAME = [values]")
    return {GRID_KEYS[key]: value for key, value in data.items()}


# ---------------------------------------------------------------------- where runs are played

Finished = tuple[int, Row] | None
"""A run's index in the grid and its row; None when nothing finished for a while."""
Source = Generator[Finished, None, None]
"""Where the runs are played: closing it stops them."""


def _in_process(runs: Sequence[RunSpec]) -> Source:
    """Every run in this process, one after another (to debug or profile one)."""
    for index, spec in enumerate(runs):
        yield index, play_row(spec)


def _serve(connection: Connection) -> None:
    """A worker process: play the runs it is sent until it is sent None.  Ctrl-C is the
    sweep's to handle (it ends the workers)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while (spec := connection.recv()) is not None:
        connection.send(play_row(spec))


class _Worker:
    """One worker process, its end of the pipe, and the run it plays."""

    def __init__(self, context: SpawnContext) -> None:
        self.connection, theirs = context.Pipe()
        self.process: SpawnProcess = context.Process(target=_serve, args=(theirs,), daemon=True)
        with _sigint_ignored():  # inherited through exec: Ctrl-C during its start-up too
            self.process.start()
        theirs.close()
        self.index: int | None = None

    def give(self, next_run: tuple[int, RunSpec] | None) -> None:
        """Send it a run, or None to stop it."""
        self.index = None if next_run is None else next_run[0]
        self.connection.send(None if next_run is None else next_run[1])


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT meanwhile (from the main thread, where signals can be set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _in_processes(runs: Sequence[RunSpec], count: int) -> Source:
    """The runs on ``count`` worker processes, each started fresh (``spawn``) and sent one run
    at a time; a worker that dies (killed, out of memory) fails its run and is replaced."""
    context = multiprocessing.get_context("spawn")
    queue = iter(enumerate(runs))
    workers: list[_Worker] = []

    def hand(worker: _Worker | None, following: tuple[int, RunSpec] | None) -> None:
        """Give ``following`` to ``worker`` (None: a new one), or to a new worker if that one
        has died since its last row."""
        if worker is not None:
            try:
                worker.give(following)
                return
            except OSError:
                workers.remove(worker)
                worker.process.join()
        if following is not None:
            fresh = _Worker(context)
            workers.append(fresh)
            fresh.give(following)

    try:
        for _ in range(count):
            hand(None, next(queue))
        while busy := [worker for worker in workers if worker.index is not None]:
            ready = wait([w.connection for w in busy] + [w.process.sentinel for w in busy], POLL)
            if not ready:
                yield None
            for worker in busy:
                index = worker.index
                assert index is not None
                if worker.connection not in ready and worker.process.sentinel not in ready:
                    continue
                try:
                    row = worker.connection.recv()
                except (EOFError, OSError):  # it died in the middle of the run
                    worker.process.join()
                    code = worker.process.exitcode
                    row = _failed_row(runs[index], f"the worker process died (exit code {code})")
                    workers.remove(worker)
                    hand(None, next(queue, None))
                else:
                    hand(worker, next(queue, None))
                yield index, row
    finally:
        for worker in workers:
            if worker.index is not None:
                worker.process.terminate()
            else:
                with contextlib.suppress(OSError):
                    worker.give(None)
        for worker in workers:
            worker.process.join()
            worker.connection.close()


def _on_dask(runs: Sequence[RunSpec], address: str, count: int) -> Source:
    """The runs as tasks on a Dask cluster at ``address``, or on a LocalCluster of ``count``
    processes for ``"local"``.  The workers import this module: shoal must be installed
    there, at the same version."""
    try:
        from distributed import Client, LocalCluster, as_completed  # noqa: PLC0415 (optional)
    except ImportError:
        raise SweepError(f"--dask needs the distributed package: {EXTRA}") from None
    with contextlib.ExitStack() as stack:
        if address == "local":
            with _sigint_ignored():  # Ctrl-C is the sweep's, not the workers'
                cluster = LocalCluster(  # type: ignore[no-untyped-call]
                    n_workers=count,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    silence_logs=logging.ERROR,
                )
            stack.enter_context(cluster)
            target: Any = cluster
        else:
            target = address
        try:
            client = stack.enter_context(Client(target, timeout="10s"))  # type: ignore[no-untyped-call]
        except (OSError, TimeoutError, ValueError) as exc:
            raise SweepError(
                f"--dask: no Dask scheduler answers at {address} ({exc}); start one "
                "(`dask scheduler`, and `dask worker ADDRESS` on each machine) or give "
                "--dask local"
            ) from None
        futures = client.map(play_row, list(runs), pure=False)
        stack.callback(client.cancel, futures)
        index_of = {future.key: index for index, future in enumerate(futures)}
        finished = as_completed(futures)  # type: ignore[no-untyped-call]
        while not finished.is_empty():  # type: ignore[no-untyped-call]
            batch = finished.next_batch(block=False)  # type: ignore[no-untyped-call]
            if not batch:
                time.sleep(POLL / 5)
                yield None
            for future in batch:
                index = index_of[future.key]
                if future.status == "finished":
                    yield index, future.result()
                else:
                    error = f"the Dask task failed: {future.exception()!r}"
                    yield index, _failed_row(runs[index], error)


# ---------------------------------------------------------------------- the table


@dataclass(frozen=True, slots=True)
class Table:
    """A sweep's rows in grid order (only those finished, when ``interrupted``)."""

    rows: list[Row]
    total: int
    interrupted: bool = False

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)

    @property
    def failed(self) -> list[Row]:
        """The rows of runs that raised."""
        return [row for row in self.rows if row["error"]]

    @property
    def columns(self) -> list[str]:
        """Every column of any row, in the order they first appear, ``error`` and ``command``
        last."""
        seen = dict.fromkeys(key for row in self.rows for key in row)
        last = ("wall_seconds", "error", "command")
        return [key for key in seen if key not in last] + [key for key in last if key in seen]

    def records(self) -> list[Row]:
        """Every row with every column (event counts a run did not see are 0, figures of a run
        that failed are None)."""
        columns = self.columns
        return [
            {
                key: row.get(key, 0 if key.startswith("events.") and not row["error"] else None)
                for key in columns
            }
            for row in self.rows
        ]

    def to_pandas(self) -> pandas.DataFrame:
        """The rows as a pandas DataFrame, one column per figure."""
        try:
            import pandas  # noqa: PLC0415 (an optional dependency)
        except ImportError:
            raise SweepError(f"a DataFrame needs pandas: {EXTRA}") from None
        return pandas.DataFrame(self.records(), columns=self.columns)

    def write(self, out: TextIO, format: str) -> None:
        """Write the rows to ``out`` as ``csv`` (a header, then a line per row; None is an
        empty cell) or ``jsonl`` (a JSON object per line)."""
        if format == "csv":
            writer = csv.DictWriter(out, self.columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(self.records())
        else:
            out.writelines(json.dumps(record) + "\n" for record in self.records())

    def save(self, path: str | Path, format: str | None = None) -> None:
        """Write the rows to the file ``path``, as ``format`` or as its suffix says."""
        chosen = output_format(Path(path), format)
        buffer = io.StringIO()
        self.write(buffer, chosen)
        Path(path).write_text(buffer.getvalue())


def output_format(path: Path | None, format: str | None) -> str:
    """``format`` if given, else what the suffix of ``path`` says, else CSV (to standard
    output)."""
    if format is not None:
        if format not in ("csv", "jsonl"):
            raise SweepError(f"--format: {format!r} is unknown; choose csv or jsonl")
        return format
    if path is None:
        return "csv"
    found = FORMATS.get(path.suffix.lower())
    if found is None:
        raise SweepError(
            f"--out: cannot tell the format of {path.name!r}; name it .csv or .jsonl, "
            "or give --format csv|jsonl"
        )
    return found


def check_output(path: Path) -> None:
    """Refuse, before a long sweep, a file that could not be written after it."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise SweepError(f"--out: the folder {str(parent)!r} does not exist; create it first")
    if path.is_dir():
        raise SweepError(f"--out: {str(path)!r} is a folder; name a file in it")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise SweepError(f"--out: {str(path)!r} cannot be written; choose another place")


def report(table: Table, stream: TextIO | None = None) -> None:
    """One line on how the sweep went, on ``stream`` (standard error by default)."""
    state = "interrupted: " if table.interrupted else ""
    failed = len(table.failed)
    problems = f", {failed} failed (see their error column)" if failed else ""
    print(
        f"{state}{len(table)} of {table.total} runs finished{problems}", file=stream or sys.stderr
    )
