"""The command line: ``python -m simulator run | list | explore | sweep``.

python -m simulator run --scenario crash --nodes 50 --seed 1 --duration 60 [--json]
python -m simulator list
python -m simulator explore --seeds 100 --nodes 8
python -m simulator sweep --scenario crash --nodes 20,50 --set probe_interval=0.5,1 --seeds 10
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from simulator.explore import FIRST_FAULT, explore_seed, replay_command
from simulator.faults import Fault, ScheduleError, from_dict
from simulator.network import NetworkError
from simulator.progress import Interrupted, Progress
from simulator.report import summary
from simulator.scenarios import SCENARIOS, prepare
from simulator.sweep import (
    EXTRA,
    Sweep,
    SweepError,
    check_output,
    output_format,
    read_grid,
    report,
)
from swim.config import ConfigError
from swim.toplevel import EXIT_INTERRUPTED, run_command

LARGE = 1000
"""From this many nodes, a converged start takes long enough to say so."""
MIN_WINDOW = FIRST_FAULT + 3.0
"""explore's shortest window: faults begin at FIRST_FAULT and each lasts a second or more."""


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value

    return parse


def _seconds(minimum: float) -> Callable[[str], float]:
    """An argparse type: a finite number of seconds, more than 0 and at least ``minimum``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not (math.isfinite(value) and value > 0 and value >= minimum):
            bound = f"at least {minimum:g}" if minimum > 0 else "more than 0"
            raise argparse.ArgumentTypeError(f"must be {bound} seconds, not {text}")
        return value

    return parse


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a probability from 0 to 1, not {text}")
    return value


def _pair(example: str) -> Callable[[str], tuple[str, str]]:
    """An argparse type: ``NAME=VALUE``, split; ``example`` shows the form in errors."""

    def parse(text: str) -> tuple[str, str]:
        name, sep, value = text.partition("=")
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE (e.g. {example})")
        return name, value

    return parse


def _schedule(source: str) -> list[Fault]:
    """Faults from a JSON file (or ``-`` for standard input): a list of fault dicts."""
    text = sys.stdin.read() if source == "-" else Path(source).read_text()
    data = json.loads(text)
    if not isinstance(data, list):
        raise ScheduleError(f"{source}: a schedule is a JSON list of faults")
    return [from_dict(item) for item in data]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulator",
        description="Deterministic simulation of a shoal cluster under faults.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show engine warnings")
    commands = parser.add_subparsers(dest="command", required=True)

    play = commands.add_parser("run", help="run one scenario and report what it measured")
    play.add_argument("--scenario", default="steady", choices=sorted(SCENARIOS))
    play.add_argument("--nodes", type=_at_least(2), default=20)
    play.add_argument("--seed", type=int, default=1)
    play.add_argument("--duration", type=_seconds(0.0), default=60.0, help="virtual seconds")
    play.add_argument("--loss", type=_probability, default=None, help="loss on every link, 0-1")
    play.add_argument("--profile", default="lan", choices=("lan", "wan", "local"))
    play.add_argument(
        "--param", type=_pair("--param at=10"), action="append", default=[], metavar="NAME=VALUE",
        help="a scenario parameter (see `list`)",
    )  # fmt: skip
    play.add_argument(
        "--set", type=_pair("--set probe_interval=0.5"), action="append", default=[],
        metavar="FIELD=VALUE", help="a protocol setting: a field of swim.config.Config",
    )  # fmt: skip
    play.add_argument("--schedule", help="extra faults: a JSON file as explore prints, or -")
    play.add_argument("--encrypt", action="store_true", help="AES-GCM on every packet")
    play.add_argument("--no-compress", action="store_true", help="turn LZW compression off")
    play.add_argument(
        "--start", default="converged", choices=("converged", "join"),
        help="begin converged, or with every node joining through n0",
    )  # fmt: skip
    play.add_argument("--json", action="store_true", help="print the results as JSON")

    commands.add_parser("list", help="list the scenarios and their parameters")

    explore = commands.add_parser("explore", help="random fault schedules vs. the invariants")
    explore.add_argument("--seeds", type=_at_least(1), default=20, help="how many seeds to try")
    explore.add_argument("--first-seed", type=int, default=1)
    explore.add_argument("--nodes", type=_at_least(4), default=8)
    explore.add_argument(
        "--window", type=_seconds(MIN_WINDOW), default=60.0, help="faults happen before"
    )
    explore.add_argument("--profile", default="lan", choices=("lan", "wan", "local"))
    explore.add_argument("--keep-going", action="store_true", help="do not stop at a failure")
    _sweep_arguments(commands)
    return parser


def _sweep_arguments(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``sweep`` command's flags: the grid's axes (comma lists), where to run, the table."""
    sweep = commands.add_parser(
        "sweep",
        help="every combination of the values given, over many seeds, in parallel: one table",
        description="Every combination of the comma lists given, each with --seeds seeds, "
        "played in parallel; one row per run (parameters, seed, figures, trace hash, and the "
        "`run` command that replays it) as CSV or JSON lines.",
    )
    sweep.add_argument(
        "--grid",
        type=Path,
        help="the grid from a TOML or JSON file, keyed as these flags are (scenario, nodes, "
        "..., and tables param and set); flags given as well override it",
    )
    sweep.add_argument("--scenario", help="scenarios, e.g. crash,partition (default steady)")
    sweep.add_argument("--nodes", help="cluster sizes, e.g. 20,50 (default 20)")
    sweep.add_argument("--duration", help="virtual seconds, e.g. 60,120 (default 60)")
    sweep.add_argument("--profile", help="lan, wan, local, e.g. lan,wan (default lan)")
    sweep.add_argument(
        "--loss", help="loss on every link, e.g. 0,0.1,0.2 (default: the scenario's)"
    )
    sweep.add_argument(
        "--param", type=_pair("--param count=1,2"), action="append", default=[],
        metavar="NAME=V1,V2", help="a scenario parameter's values (see `list`)",
    )  # fmt: skip
    sweep.add_argument(
        "--set", type=_pair("--set probe_interval=0.5,1"), action="append", default=[],
        metavar="FIELD=V1,V2", help="a protocol setting's values: a field of swim.config.Config",
    )  # fmt: skip
    sweep.add_argument("--seeds", type=_at_least(1), help="seeds per combination (default 10)")
    sweep.add_argument("--first-seed", type=_at_least(0), help="the first seed (default 1)")
    sweep.add_argument("--encrypt", action="store_true", default=None, help="AES-GCM everywhere")
    sweep.add_argument("--no-compress", action="store_true", help="turn LZW compression off")
    sweep.add_argument("--start", choices=("converged", "join"), help="as for run")
    sweep.add_argument(
        "--workers", type=_at_least(0), default=None,
        help="processes (default: one per core; 0: in this process, one run after another)",
    )  # fmt: skip
    sweep.add_argument(
        "--dask", metavar="ADDRESS",
        help="run on the Dask scheduler at ADDRESS, or `local` for a LocalCluster of --workers "
        f"processes (needs {EXTRA})",
    )  # fmt: skip
    sweep.add_argument(
        "--out", type=Path, help="write the table here, .csv or .jsonl (default: CSV on stdout)"
    )
    sweep.add_argument("--format", choices=("csv", "jsonl"), help="instead of the --out suffix")
    sweep.add_argument("--quiet", action="store_true", help="no progress line")


def _run(args: argparse.Namespace) -> int:
    extra = _schedule(args.schedule) if args.schedule else []
    if args.start == "converged" and args.nodes >= LARGE:
        print(
            f"starting {args.nodes:,} nodes that each know every other "
            f"({args.nodes**2:,} member entries): this takes a while",
            file=sys.stderr,
        )
    progress = Progress(args.duration, args.nodes)
    started = time.monotonic()
    play = prepare(
        args.scenario,
        nodes=args.nodes,
        seed=args.seed,
        duration=args.duration,
        profile=args.profile,
        loss=args.loss,
        params=dict(args.param),
        settings=dict(args.set),
        schedule=extra,
        encrypt=args.encrypt,
        compress=not args.no_compress,
        start=args.start,
        progress=progress,
    )
    try:
        with progress.stop_on_ctrl_c():
            play.cluster.run_until(args.duration)
    except Interrupted as stop:
        play.extra["interrupted_at"] = stop.now
    progress.done()
    results = play.results()
    if args.json:
        print(json.dumps(results.to_dict(), indent=2))
    else:
        print(summary(results, time.monotonic() - started))
    return 0 if "interrupted_at" not in play.extra else EXIT_INTERRUPTED


def _list() -> int:
    for scenario in SCENARIOS.values():
        print(f"{scenario.name}: {scenario.summary}")
        if scenario.defaults:
            print("    " + ", ".join(f"{k}={v}" for k, v in scenario.defaults.items()))
    return 0


def _explore(args: argparse.Namespace) -> int:
    failed = 0
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        outcome = explore_seed(seed, nodes=args.nodes, window=args.window, profile=args.profile)
        if not outcome.violations:
            print(f"seed {seed}: ok ({len(outcome.schedule)} faults)", file=sys.stderr)
            continue
        failed += 1
        print(f"seed {seed}: {len(outcome.violations)} invariant(s) broken")
        for violation in outcome.violations:
            print(f"  {violation}")
        schedule: list[dict[str, Any]] = [fault.to_dict() for fault in outcome.schedule]
        print("schedule: " + json.dumps(schedule))
        command = replay_command(seed, nodes=args.nodes, window=args.window, profile=args.profile)
        print(f"replay: {command}")
        if not args.keep_going:
            break
    if not failed:
        print(f"{args.seeds} seeds from {args.first_seed}: every invariant held")
    return 1 if failed else 0


def _sweep(args: argparse.Namespace) -> int:
    if args.dask is not None and not args.verbose:
        # Dask logs each worker's start and stop; importing it sets its loggers' levels
        with contextlib.suppress(ImportError):
            import distributed  # noqa: F401, PLC0415
        logging.getLogger("distributed").setLevel(logging.ERROR)
    fields = read_grid(args.grid) if args.grid else {}
    given = {
        "scenarios": args.scenario,
        "nodes": args.nodes,
        "durations": args.duration,
        "profiles": args.profile,
        "losses": args.loss,
        "seeds": args.seeds,
        "first_seed": args.first_seed,
        "encrypt": args.encrypt,
        "compress": False if args.no_compress else None,
        "start": args.start,
    }
    fields.update({key: value for key, value in given.items() if value is not None})
    fields["params"] = {**fields.get("params", {}), **dict(args.param)}
    fields["settings"] = {**fields.get("settings", {}), **dict(args.set)}
    chosen = output_format(args.out, args.format)
    if args.out is not None:
        check_output(args.out)
    table = Sweep(**fields).run(workers=args.workers, dask=args.dask, show_progress=not args.quiet)
    if args.out is None:
        table.write(sys.stdout, chosen)
    else:
        table.save(args.out, chosen)
    report(table)
    return EXIT_INTERRUPTED if table.interrupted else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the command; errors in the input are reported in one line (status
    2), Ctrl-C in one line (status 130, after the results so far for ``run``), and anything
    else as a bug to report (see :func:`swim.toplevel.run_command`)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.verbose else logging.ERROR)
    return run_command("python -m simulator", lambda: _command(args))


def _command(args: argparse.Namespace) -> int:
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "list":
            return _list()
        if args.command == "sweep":
            return _sweep(args)
        return _explore(args)
    except (
        ScheduleError,
        NetworkError,
        ConfigError,
        SweepError,
        OSError,
        json.JSONDecodeError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
