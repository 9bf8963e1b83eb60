"""The scenarios and the command line: run, list, explore, progress."""

from __future__ import annotations

import io
import json
import signal
from pathlib import Path

import pytest

from simulator import explore, progress
from simulator.__main__ import main
from simulator.check import Violation
from simulator.faults import ScheduleError, from_dict
from simulator.scenarios import SCENARIOS, run

DURATIONS = {"churn": 80.0, "partition": 80.0}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_scenario_runs_and_reports(name: str) -> None:
    cluster, results = run(name, nodes=8, seed=1, duration=DURATIONS.get(name, 30.0))
    assert results.extra["scenario"] == name
    assert results.node_seconds > 0 and len(results.trace_hash) == 64
    assert results.duration == cluster.now


def test_scenarios_measure_what_they_are_about() -> None:
    _, crash = run("crash", nodes=8, seed=1, duration=40.0, params={"count": 2, "gap": 5})
    assert [c.node for c in crash.crashes] == ["n6", "n7"]
    assert all(c.all_failed is not None for c in crash.crashes)
    _, split = run("partition", nodes=8, seed=1, duration=120.0, params={"shape": "ring"})
    assert split.convergence[0].agreed_after is not None
    _, flaky = run("flaky", nodes=8, seed=1, duration=30.0)
    assert flaky.extra["loss"] == 0.1 and flaky.network["lost"] > 0


def test_scenario_parameters_are_checked() -> None:
    with pytest.raises(ScheduleError, match="has no parameter speed; it takes: count, at, gap"):
        run("crash", nodes=8, seed=1, duration=10.0, params={"speed": 1})
    with pytest.raises(ScheduleError, match="shape='star' is unknown"):
        run("partition", nodes=8, seed=1, duration=10.0, params={"shape": "star"})
    with pytest.raises(ScheduleError, match="count=8 must leave at least one node"):
        run("crash", nodes=8, seed=1, duration=10.0, params={"count": 8})
    with pytest.raises(ScheduleError, match="unknown scenario 'meteor'"):
        run("meteor", nodes=8, seed=1, duration=10.0)


def test_run_prints_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--scenario", "crash", "--nodes", "8", "--duration", "30"])
    out = capsys.readouterr().out
    assert code == 0
    assert "scenario crash: 8 nodes, seed 1" in out
    assert "n7 at 10.0 s: first suspicion +" in out and "trace " in out


def test_run_prints_json_with_the_trace_hash(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["run", "--scenario", "pause", "--nodes", "6", "--seed", "3", "--duration", "20"]
    code = main([*args, "--param", "for=5", "--loss", "0.01", "--profile", "local", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert len(data["trace_hash"]) == 64 and data["seed"] == 3
    assert data["extra"]["params"] == {"at": 10.0, "for": 5.0}
    assert data["extra"]["profile"] == "local" and data["extra"]["loss"] == 0.01


def test_run_replays_a_schedule_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    schedule = tmp_path / "faults.json"
    schedule.write_text(json.dumps([{"fault": "crash", "at": 3.0, "node": "n2"}]))
    assert (
        main(["run", "--nodes", "5", "--duration", "30", "--schedule", str(schedule), "--json"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["crashes"][0]["node"] == "n2"


def test_bad_input_is_one_line_and_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--scenario", "crash", "--param", "count=x"]) == 2
    assert capsys.readouterr().err == "error: parameter count='x' must be a number\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--duration", "-5"], "argument --duration: must be more than 0 seconds, not -5"),
        (["run", "--duration", "0"], "argument --duration: must be more than 0 seconds, not 0"),
        (["run", "--duration", "nan"], "argument --duration: must be more than 0 seconds"),
        (["run", "--nodes", "-3"], "argument --nodes: must be at least 2, not -3"),
        (["run", "--nodes", "1"], "argument --nodes: must be at least 2, not 1"),
        (["run", "--loss", "1.5"], "argument --loss: must be a probability from 0 to 1, not 1.5"),
        (["explore", "--seeds", "0"], "argument --seeds: must be at least 1, not 0"),
        (["explore", "--nodes", "3"], "argument --nodes: must be at least 4, not 3"),
        (["explore", "--window", "5"], "argument --window: must be at least 8 seconds, not 5"),
    ],
)
def test_impossible_arguments_are_refused_before_anything_runs(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_ctrl_c_prints_the_results_so_far_and_exits_130(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    update = progress.Progress.__call__

    def ctrl_c_at_the_first_update(self: progress.Progress, now: float) -> None:
        monkeypatch.setattr(progress.Progress, "__call__", update)
        signal.raise_signal(signal.SIGINT)  # what Ctrl-C sends, to the handler main installed
        update(self, now)

    monkeypatch.setattr(progress.Progress, "__call__", ctrl_c_at_the_first_update)
    code = main(["run", "--scenario", "crash", "--nodes", "30", "--duration", "100000"])
    captured = capsys.readouterr()
    assert code == 130
    first, second = captured.out.splitlines()[:2]
    reached = float(first.removeprefix("interrupted at virtual time ").split(" s:")[0])
    assert first == f"interrupted at virtual time {reached:.1f} s: the results so far"
    assert 0 < reached < 100000
    assert second.startswith(
        f"scenario crash: 30 nodes, seed 1, lan profile, loss 0; {reached:.1f} s"
    )
    assert "Traceback" not in captured.err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_list_names_every_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in SCENARIOS:
        assert f"{name}: " in out
    assert "at=10.0, heal=30.0, shape=halves" in out


def test_explore_passes_on_sound_seeds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explore", "--seeds", "2", "--nodes", "5", "--window", "30"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count(": ok (") == 2
    assert captured.out == "2 seeds from 1: every invariant held\n"


def test_explore_reports_a_violation_with_its_replay_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(explore, "check", lambda cluster, schedule: [Violation("test", "forced")])
    code = main(["explore", "--seeds", "3", "--first-seed", "7", "--nodes", "5", "--window", "20"])
    out = capsys.readouterr().out
    assert code == 1
    assert "seed 7: 1 invariant(s) broken" in out and "test: forced" in out
    assert "seed 8" not in out  # stops at the first failure
    schedule = json.loads(out.split("schedule: ")[1].splitlines()[0])
    replayed = explore.explore_seed(7, nodes=5, window=20.0).schedule
    assert [from_dict(fault) for fault in schedule] == list(replayed)
    assert (
        "replay: python -m simulator explore --seeds 1 --first-seed 7 --nodes 5 --window 20.0 "
        "--profile lan" in out
    )


def test_progress_appears_only_for_long_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    shown = progress.Progress(total=100.0, nodes=10, stream=stream)
    shown(10.0)
    assert stream.getvalue() == ""
    monkeypatch.setattr(progress, "SHOW_AFTER", 0.0)
    shown(50.0)
    assert stream.getvalue().startswith("simulated 50.0 of 100.0 s (50%)")
