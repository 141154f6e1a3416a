"""Fail-fast on a systematic error and the signals that stop a study (no Ray started)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ltsearch.run.stopping import FailFast, Interrupts, StudyStopper, error_signature


def test_signature_masks_paths_numbers_and_hashes() -> None:
    a = error_signature("FileNotFoundError: /data/a/img_0001.png missing (trial 3ab4c5d6e7)\nTb")
    b = error_signature("FileNotFoundError: /other/img_0917.png missing (trial 99aa00bb11)")
    assert a == b == "FileNotFoundError: <path> missing (trial <hash>)"
    assert error_signature("ValueError: lr=0.1") != error_signature("KeyError: 'lr'")
    assert error_signature("\n\n  RuntimeError: x 3\n") == "RuntimeError: x <n>"


def fake_trial(n: int, tmp: Path, error: str | None = None) -> Any:
    error_file = None
    if error is not None:
        error_file = tmp / f"t{n}.txt"
        error_file.write_text(f"Traceback (most recent call last):\n  ...\n{error}\n")
    return SimpleNamespace(
        trial_id=f"t{n}", error_file=str(error_file) if error_file else None,
        path=str(tmp / f"trial_{n}"), last_result={"bbox/AP": 1.0} if error is None else {},
    )  # fmt: skip


def test_the_same_error_in_the_first_trials_stops_the_study(tmp_path: Path) -> None:
    stopper = StudyStopper()
    ff = FailFast(stopper, tmp_path, max_failures=3)
    for n in range(2):
        ff.on_trial_error(0, [], fake_trial(n, tmp_path, f"OSError: cannot read /d/{n}.png"))
    assert not stopper.stop_all()
    ff.on_trial_error(0, [], fake_trial(2, tmp_path, "OSError: cannot read /d/2.png"))
    assert stopper.stop_all() and stopper.reason == "systematic"
    msg = stopper.request_.message if stopper.request_ else ""
    assert "first 3 trials failed with the same error" in msg
    assert "OSError: cannot read /d/2.png" in msg
    assert str(tmp_path / "trial_2" / "error.txt") in msg


def test_different_errors_or_an_earlier_success_do_not_stop(tmp_path: Path) -> None:
    stopper = StudyStopper()
    ff = FailFast(stopper, tmp_path, max_failures=2)
    ff.on_trial_error(0, [], fake_trial(0, tmp_path, "OSError: a"))
    ff.on_trial_error(0, [], fake_trial(1, tmp_path, "ValueError: b"))
    assert not stopper.stop_all()
    ff.on_trial_complete(0, [], fake_trial(2, tmp_path))
    for n in range(3, 6):  # the study works: failures after a success are single rows
        ff.on_trial_error(0, [], fake_trial(n, tmp_path, "OSError: a"))
    assert not stopper.stop_all()


def test_max_failures_zero_never_stops(tmp_path: Path) -> None:
    stopper = StudyStopper()
    ff = FailFast(stopper, tmp_path, max_failures=0)
    for n in range(10):
        ff.on_trial_error(0, [], fake_trial(n, tmp_path, "OSError: a"))
    assert not stopper.stop_all()


def test_the_first_reason_to_stop_wins() -> None:
    stopper = StudyStopper()
    assert stopper("t0", {}) is False and not stopper.stop_all()
    stopper.request("interrupted", "by SIGTERM")
    stopper.request("systematic", "later")
    assert stopper.reason == "interrupted" and stopper("t0", {}) is False


def test_first_signal_asks_to_stop_the_second_interrupts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stopper = StudyStopper()
    before = signal.getsignal(signal.SIGTERM)
    with Interrupts(stopper):
        os.kill(os.getpid(), signal.SIGTERM)
        assert stopper.reason == "interrupted"
        assert "SIGTERM received" in capsys.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored
