"""Sweeps: the grid, its checks, the table on disk, replay commands, the same trace hash on
every kind of worker, failed runs and Ctrl-C."""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from simulator import progress, scenarios, sweep
from simulator.__main__ import main
from simulator.sweep import RunSpec, Sweep, SweepError, Table

ROOT = Path(__file__).resolve().parents[2]


def tiny(**fields: Any) -> Sweep:
    """Runs of a few hundredths of a second that still have something to report."""
    return Sweep(scenarios="crash", nodes=5, durations=20.0, **fields)


def test_the_grid_is_every_combination_with_seeds_innermost() -> None:
    grid = Sweep(
        scenarios="crash",
        nodes="6,8",
        durations=20,
        params={"count": [1, 2]},
        settings={"probe_interval": "0.5,1", "lifeguard": ["off"]},
        seeds=3,
        first_seed=7,
    )
    runs = grid.runs()
    assert len(runs) == 2 * 2 * 2 * 3
    assert [run.seed for run in runs[:4]] == [7, 8, 9, 7]
    first = runs[0]
    assert (first.nodes, first.params, first.settings) == (
        6,
        (("count", "1"),),
        (("probe_interval", 0.5), ("lifeguard", False)),
    )
    assert first.columns()["param.at"] == 10.0 and first.columns()["set.lifeguard"] is False
    assert {(run.nodes, dict(run.params)["count"]) for run in runs} == {
        (6, "1"),
        (6, "2"),
        (8, "1"),
        (8, "2"),
    }
    assert first.command() == (
        "python -m simulator run --scenario crash --nodes 6 --seed 7 --duration 20 "
        "--profile lan --param count=1 --set probe_interval=0.5 --set lifeguard=false"
    )


def test_a_grid_file_gives_the_same_runs_and_flags_override_it(tmp_path: Path) -> None:
    toml = tmp_path / "grid.toml"
    toml.write_text(
        'scenario = "crash"\nnodes = [6, 8]\nduration = 20\nseeds = 2\n'
        "[param]\ncount = [1, 2]\n[set]\nprobe_interval = [0.5, 1.0]\n"
    )
    from_file = Sweep(**sweep.read_grid(toml)).runs()
    from_flags = Sweep(
        scenarios="crash",
        nodes="6,8",
        durations="20",
        params={"count": "1,2"},
        settings={"probe_interval": "0.5,1.0"},
        seeds=2,
    ).runs()
    assert [run.command() for run in from_file] == [run.command() for run in from_flags]
    as_json = tmp_path / "grid.json"
    as_json.write_text(json.dumps({"scenario": "crash", "nodes": [6, 8], "duration": 20}))
    assert len(Sweep(**sweep.read_grid(as_json), seeds=1).runs()) == 2

    out = tmp_path / "rows.jsonl"
    argv = ["sweep", "--grid", str(as_json), "--nodes", "5", "--duration", "10", "--seeds", "1"]
    assert main([*argv, "--workers", "0", "--quiet", "--out", str(out)]) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert (row["scenario"], row["nodes"], row["duration"]) == ("crash", 5, 10.0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nodes", "20,x"], "--nodes: 'x' is not a whole number"),
        (["--nodes", "1"], "--nodes: 1 is below 2; give values of at least 2"),
        (["--nodes", "20,"], "--nodes: '20,' has an empty value; give a comma list like 1,2"),
        (["--scenario", "crsh"], "--scenario: 'crsh' is unknown; choose from steady, crash,"),
        (["--profile", "lan,lam"], "--profile: 'lam' is unknown; choose from lan, wan, local"),
        (["--loss", "0,2"], "Link.loss=2.0 must be a probability in [0, 1]"),
        (
            ["--scenario", "crash", "--param", "loss=0.1"],
            "--param loss: scenario 'crash' has no parameter loss (it takes: count, at, gap); "
            "the loss on every link is --loss",
        ),
        (
            ["--scenario", "crash,steady", "--param", "count=1"],
            "--param count: scenario 'steady' has no parameter count (it takes: none)",
        ),
        (["--set", "count=2"], "--set count: count is a scenario parameter; give it as --param"),
        (["--set", "probe_intervl=1"], "no field 'probe_intervl'; did you mean probe_interval?"),
        (["--set", "lifeguard=maybe"], "--set lifeguard: lifeguard='maybe' must be true or false"),
        (
            ["--set", "probe_interval=1,0.1"],
            "in the runs with scenario=steady, nodes=20, profile=lan, probe_interval=0.1: "
            "probe_timeout=0.5 must not exceed probe_interval=0.1",
        ),
        (
            ["--scenario", "crash", "--nodes", "4", "--param", "count=1,4"],
            "count=4 must leave at least one node running; use at most 3",
        ),
        (["--out", "table.txt"], "cannot tell the format of 'table.txt'; name it .csv or .jsonl"),
        (["--out", "missing/t.csv"], "--out: the folder 'missing' does not exist; create it"),
        (["--grid", "grid.yaml"], "--grid: 'grid.yaml' is neither .toml nor .json"),
    ],
)
def test_bad_values_are_named_with_the_fix_before_anything_runs(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "grid.yaml").write_text("nodes: 5\n")
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and message in captured.err
    assert captured.err.count("\n") == 1 and captured.out == ""


def test_bad_grid_files_are_named(tmp_path: Path) -> None:
    broken = tmp_path / "grid.toml"
    broken.write_text("nodes = [5,\n")
    with pytest.raises(SweepError, match=r"--grid: .*grid.toml: "):
        sweep.read_grid(broken)
    broken.write_text("node = 5\n")
    with pytest.raises(SweepError, match=r"unknown key\(s\) node; it takes: scenario, nodes,"):
        sweep.read_grid(broken)
    broken.write_text("param = 5\n")
    with pytest.raises(SweepError, match="param must be a table"):
        sweep.read_grid(broken)


def test_the_table_is_written_as_csv_and_as_json_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["sweep", "--scenario", "crash", "--nodes", "5,6", "--duration", "20", "--seeds", "2"]
    argv += ["--workers", "0", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "t.csv")]) == 0
    assert main([*argv, "--out", str(tmp_path / "t.jsonl")]) == 0
    assert main(argv) == 0  # CSV on standard output
    captured = capsys.readouterr()
    assert captured.err.count("4 of 4 runs finished\n") == 3
    rows = list(csv.DictReader(io.StringIO(captured.out)))
    on_disk = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert [row.pop("wall_seconds") and row for row in on_disk] == [
        row.pop("wall_seconds") and row for row in rows
    ]
    lines = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert [(row["nodes"], row["seed"]) for row in lines] == [(5, 1), (5, 2), (6, 1), (6, 2)]
    assert [row["trace_hash"] for row in rows] == [row["trace_hash"] for row in lines]
    first = lines[0]
    assert first["crashes.count"] == 1 and first["crashes.detected"] == 1
    assert first["crashes.all_failed.max"] > 0 and first["convergence.agreed_after.max"] is None
    assert rows[0]["convergence.agreed_after.max"] == ""
    assert first["events.failed"] == 4 and first["traffic.bytes_per_node_second"] > 0
    assert first["error"] == "" and first["command"].startswith("python -m simulator run ")
    assert list(first)[-2:] == ["error", "command"]


def test_each_command_replays_its_trace_hash(capsys: pytest.CaptureFixture[str]) -> None:
    table = Sweep(
        scenarios="flaky,partition",
        nodes=6,
        durations=12.5,
        profiles="local",
        settings={"suspicion_mult": 2},
        seeds=2,
        first_seed=3,
    ).run(workers=0, show_progress=False)
    assert len(table) == 4 and not table.failed
    for row in table:
        assert main([*shlex.split(row["command"])[3:], "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["trace_hash"] == row["trace_hash"]
    # and as a user runs it, in a process of its own
    python, *argv = shlex.split(table.rows[-1]["command"])
    assert python == "python"
    done = subprocess.run(
        [sys.executable, *argv],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"trace {table.rows[-1]['trace_hash']}" in done.stdout


def test_a_run_has_the_same_hash_in_process_in_a_worker_process_and_on_dask() -> None:
    grid = tiny(settings={"gossip_nodes": "2,4"}, seeds=1, encrypt=True)
    here = grid.run(workers=0, show_progress=False)
    elsewhere = grid.run(workers=2, show_progress=False)
    on_dask = grid.run(workers=1, dask="local", show_progress=False)
    hashes = [row["trace_hash"] for row in here]
    assert len(set(hashes)) == 2
    assert [row["trace_hash"] for row in elsewhere] == hashes
    assert [row["trace_hash"] for row in on_dask] == hashes
    assert not multiprocessing.active_children()


def test_a_run_that_raises_is_a_row_with_its_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    prepare = scenarios.prepare

    def broken_for_seed_2(scenario: str, *, seed: int, **options: object) -> object:
        if seed == 2:
            raise RuntimeError("the engine broke")
        return prepare(scenario, seed=seed, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(sweep, "prepare", broken_for_seed_2)
    argv = ["sweep", "--scenario", "crash", "--nodes", "5", "--duration", "10", "--seeds", "3"]
    assert main([*argv, "--workers", "0", "--format", "jsonl"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [bool(row["error"]) for row in rows] == [False, True, False]
    assert rows[1]["error"].startswith("RuntimeError: the engine broke (test_sweep.py:")
    assert rows[1]["trace_hash"] is None and rows[1]["seed"] == 2
    assert "3 of 3 runs finished, 1 failed (see their error column)" in captured.err


def test_a_worker_that_dies_fails_its_run_only() -> None:
    runs = [
        RunSpec("steady", 30, 1, 100_000.0),  # hours of wall time: killed long before
        RunSpec("steady", 5, 1, 5.0),
    ]
    source = sweep._in_processes(runs, 1)
    assert next(source) is None  # the first run is still running
    (worker,) = multiprocessing.active_children()
    worker.kill()
    finished = [item for item in source if item is not None]
    assert [index for index, _ in finished] == [0, 1]
    assert finished[0][1]["error"] == "the worker process died (exit code -9)"
    assert finished[1][1]["error"] == "" and len(finished[1][1]["trace_hash"]) == 64
    assert not multiprocessing.active_children()


def test_ctrl_c_keeps_the_finished_rows_and_exits_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    play_row = sweep.play_row
    played: list[int] = []

    def ctrl_c_at_the_third(spec: RunSpec) -> sweep.Row:
        played.append(spec.seed)
        if len(played) == 3:
            raise KeyboardInterrupt
        return play_row(spec)

    monkeypatch.setattr(sweep, "play_row", ctrl_c_at_the_third)
    out = tmp_path / "partial.csv"
    argv = ["sweep", "--scenario", "crash", "--nodes", "5", "--duration", "10", "--seeds", "5"]
    assert main([*argv, "--workers", "0", "--out", str(out)]) == 130
    rows = list(csv.DictReader(out.open()))
    assert [row["seed"] for row in rows] == ["1", "2"]
    err = capsys.readouterr().err
    assert err.endswith("interrupted: 2 of 5 runs finished\n") and "Traceback" not in err


def test_ctrl_c_ends_the_worker_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    update = progress.SweepProgress.__call__

    def ctrl_c_after_the_first_row(self: progress.SweepProgress, done: int, failed: int) -> None:
        if done:
            monkeypatch.setattr(progress.SweepProgress, "__call__", update)
            signal.raise_signal(signal.SIGINT)  # what Ctrl-C sends
        update(self, done, failed)

    monkeypatch.setattr(progress.SweepProgress, "__call__", ctrl_c_after_the_first_row)
    grid = Sweep(scenarios="steady", nodes=30, durations="5,100000", seeds=1)
    table = grid.run(workers=2, progress=io.StringIO())
    assert table.interrupted and table.total == 2
    assert [row["duration"] for row in table] == [5.0]
    assert not multiprocessing.active_children()


def test_the_table_as_a_dataframe_and_without_the_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    table = tiny(params={"count": "1,2"}, seeds=2).run(workers=0, show_progress=False)
    frame = table.to_pandas()
    assert frame.shape == (4, len(table.columns))
    assert list(frame["param.count"]) == [1.0, 1.0, 2.0, 2.0]
    assert frame.groupby("param.count")["crashes.detected"].sum().to_dict() == {1.0: 2, 2.0: 4}
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(SweepError, match=r"a DataFrame needs pandas: pip install 'shoal\[sweep\]'"):
        table.to_pandas()
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(SweepError, match=r"--dask needs the distributed package: pip install"):
        tiny(seeds=1).run(dask="local", show_progress=False)


def test_progress_shows_runs_rate_and_time_left(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    shown = progress.SweepProgress(total=40, stream=stream)
    shown(3, 0)
    assert stream.getvalue() == ""  # nothing in the first seconds
    monkeypatch.setattr(progress, "SHOW_AFTER", 0.0)
    shown(10, 1)
    line = stream.getvalue()
    assert line.startswith("10 of 40 runs (25%), 1 failed, ") and " runs per minute, about " in line
    assert line.endswith(" so far\n")


def test_an_empty_table_still_has_its_totals() -> None:
    table = Table([], total=3, interrupted=True)
    assert table.columns == [] and table.records() == [] and len(table) == 0
    out = io.StringIO()
    sweep.report(table, out)
    assert out.getvalue() == "interrupted: 0 of 3 runs finished\n"
