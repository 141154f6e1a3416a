"""The live progress pieces on hand-made inputs: phase reports and their files, the front
and ETA a display shows, its lines, and the redrawn block (the whole display under a real
terminal is tests/acceptance/test_live_progress.py)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from ltmodels.engine import phases
from ltsearch.live import state as live
from ltsearch.live import view as live_view
from ltsearch.live.terminal import LiveBlock
from ltsearch.spec.sections import Objective
from ltsearch.status import StudyProgress

MAX2 = [Objective("bbox/APr", "max"), Objective("bbox/APf", "max")]


def _row(h: str, apr: float, apf: float, seed: int = 0, t: float = 10.0) -> dict:
    return {
        "config_hash": h, "loss": "acsl", "param.acsl.xi": float(int(h, 16)) / 10,
        "bbox/APr": apr, "bbox/APf": apf, "seed": seed, "status": "ok", "time_total_s": t,
    }  # fmt: skip


def test_phase_reports_reach_listeners_and_a_failing_one_is_dropped() -> None:
    seen: list[phases.Phase] = []

    def broken(_: phases.Phase) -> None:
        raise RuntimeError("display gone")

    remove = phases.add_listener(seen.append)
    remove_broken = phases.add_listener(broken)
    try:
        phases.report("stage1", 0, 3)
        phases.epoch_done(1, 3)
        phases.report("cache")
        assert [(p.name, p.step, p.of) for p in seen] == [
            ("stage1", 0, 3), ("stage1", 1, 3), ("cache", None, None),
        ]  # fmt: skip
        assert broken not in phases._listeners  # dropped after its first error, training went on
    finally:
        remove()
        remove_broken()
    phases.report("eval")
    assert len(seen) == 3


def test_phase_file_round_trip_and_close(tmp_path: Path) -> None:
    pf = live.PhaseFile(tmp_path, "t1", "acsl(xi=0.3)", seeds=2)
    pf.seed(1, 7)
    pf(phases.Phase("stage1", 2, 3))
    [running] = live.read_phases(tmp_path)
    assert running.describe() == "acsl(xi=0.3) seed 7 (2/2): stage 1, epoch 2/3"
    again = live.PhaseFile.from_dict(pf.to_dict())  # a DDP trial's rank 0 goes on writing it
    again(phases.Phase("cache"))
    assert live.read_phases(tmp_path)[0].describe().endswith(": building the feature cache")
    again(phases.Phase("cooldown"))  # a rung's cooldown (search.early_stopping.cooldown)
    assert live.read_phases(tmp_path)[0].describe().endswith(": annealing a copy for the rung")
    pf.close()
    assert live.read_phases(tmp_path) == []
    assert not list((tmp_path / live.LIVE_DIR).iterdir())  # no temporary left


def test_front_so_far_keeps_the_non_dominated_seed_means_in_percent() -> None:
    rows = [
        _row("1", 0.10, 0.50), _row("1", 0.20, 0.50, seed=1),  # mean (15, 50)
        _row("2", 0.30, 0.40),  # (30, 40): on the front
        _row("3", 0.10, 0.40),  # dominated by 1 and 2
        _row("4", 0.05, 0.55),  # best APf: on the front
        {**_row("5", -1.0, 0.30)},  # APr undefined (-1): no point
    ]  # fmt: skip
    front = live.front_so_far(rows, MAX2)
    assert [(lab, [round(v, 6) for v in vs]) for lab, vs in front] == [
        ("acsl(xi=0.2)", [30.0, 40.0]),
        ("acsl(xi=0.1)", [15.0, 50.0]),
        ("acsl(xi=0.4)", [5.0, 55.0]),
    ]
    minimise = [Objective("bbox/APr", "min"), Objective("bbox/APf", "max")]
    assert [lab for lab, _ in live.front_so_far(rows[3:5], minimise)] == ["acsl(xi=0.4)"]


def test_eta_is_trials_left_times_the_median_trial_over_concurrency() -> None:
    progress = StudyProgress(study_dir=Path("x"), trials_total=10, trials_finished=4)
    rows = [_row("1", 0, 0, 0, 100.0), _row("1", 0, 0, 1, 100.0)]  # stage 1 in the first
    rows += [_row(h, 0, 0, s, 5.0) for h in "23" for s in (0, 1)]
    rows += [_row("4", 0, 0, 0, 5.0)]  # one seed of two: not a finished trial
    assert live.eta_seconds(rows, progress, seeds=2, concurrency=2) == pytest.approx(6 * 10 / 2)
    assert live.eta_seconds(rows[-1:], progress, seeds=2, concurrency=1) is None


def _snap(front: int = 0, running: int = 1) -> live.Snapshot:
    progress = StudyProgress(
        study_dir=Path("x"), trials_total=8, trials_finished=2, trials_complete=2,
        trials_running=1,
    )  # fmt: skip
    runs = [live.Running("acsl(xi=0.3)", 0, 0, 2, "train", 1, 2)] * running
    pts = [(f"cfg{i}", [float(i), 50.0 - i]) for i in range(front)]
    return live.Snapshot("q", progress, MAX2, runs, pts, eta_s=130.0, elapsed_s=65.0, driver=True)


def test_render_cuts_lines_to_the_width_and_lists_at_most_five_front_members() -> None:
    lines = live_view.render(_snap(front=7), width=60)
    assert lines[0].startswith("study q [#####...............] 2/8 trials, 1 running")
    assert all(len(line) <= 60 for line in lines)
    assert lines[1] == "  now: acsl(xi=0.3) seed 0 (1/2): training, epoch 1/2"
    assert sum(line.startswith("    ") and "cfg" in line for line in lines) == 5
    assert lines[-1] == "    ... and 2 more"
    assert live_view.summary(_snap()) == (
        "2/8 trials, 1 running, 0 failed; 1 min 05 s in, ETA ~2 min 10 s"
    )
    assert live_view.plain_line(_snap(front=1))[11:] == (
        "q: 2/8 trials, 1 running, 0 failed; 1 min 05 s in, ETA ~2 min 10 s; best bbox/APr "
        "0.0 cfg0; now: acsl(xi=0.3) seed 0 (1/2): training, epoch 1/2"
    )


def test_live_block_prints_other_lines_above_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = io.StringIO()
    monkeypatch.setattr(sys, "stdout", screen)
    state = ["one"]
    with LiveBlock(lambda: [f"block {state[0]}", "second line"], interval=3600):
        print("a trial line")
        state[0] = "two"
        print("half", end="")  # a partial line waits for its end
        print(" and whole")
    text = screen.getvalue()
    assert text == (
        "block one\nsecond line\n"
        "\x1b[2F\x1b[Ja trial line\nblock one\nsecond line\n"
        "\x1b[2F\x1b[Jhalf and whole\nblock one\nsecond line\n"
        "\x1b[2F\x1b[Jblock two\nsecond line\n"
    )
    assert sys.stdout is screen
