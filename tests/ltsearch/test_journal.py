"""ltsearch.journal reads trial states as the installed Optuna replays them.

The journal is written by Optuna itself: two studies interleaved (trial ids count over
both), a third one deleted, a name created twice, every trial state (complete, fail,
pruned, running, waiting; a waiting trial asked), and a last write cut short.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.exceptions import DuplicatedStudyError
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._storage import JournalOperation
from optuna.trial import TrialState

from ltsearch import journal

DIST = {"x": FloatDistribution(0.0, 1.0)}


def test_codes_match_the_installed_optuna() -> None:
    assert journal.CREATE_STUDY == JournalOperation.CREATE_STUDY
    assert journal.DELETE_STUDY == JournalOperation.DELETE_STUDY
    assert journal.CREATE_TRIAL == JournalOperation.CREATE_TRIAL
    assert journal.SET_TRIAL_STATE_VALUES == JournalOperation.SET_TRIAL_STATE_VALUES
    states = {s.name: s.value for s in TrialState}
    assert states == {
        "RUNNING": journal.RUNNING, "COMPLETE": journal.COMPLETE, "PRUNED": journal.PRUNED,
        "FAIL": journal.FAIL, "WAITING": journal.WAITING,
    }  # fmt: skip
    assert journal.FINISHED == {s.value for s in TrialState if s.is_finished()}


def write_journal(path: Path) -> JournalStorage:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(path)))
    gone = optuna.create_study(study_name="gone", storage=storage)
    gone.tell(gone.ask(DIST), 1.0)
    main = optuna.create_study(study_name="main", storage=storage, directions=["maximize"] * 2)
    other = optuna.create_study(study_name="other", storage=storage)
    optuna.delete_study(study_name="gone", storage=storage)
    with pytest.raises(DuplicatedStudyError):
        optuna.create_study(study_name="main", storage=storage)
    main.enqueue_trial({"x": 0.5})
    main.tell(main.ask(DIST), [0.1, 0.2])  # the enqueued one: waiting -> running -> complete
    other.tell(other.ask(DIST), 0.3)
    main.tell(main.ask(DIST), state=TrialState.FAIL)
    main.tell(main.ask(DIST), state=TrialState.PRUNED)
    other.ask(DIST)  # left running
    main.ask(DIST)  # left running
    main.enqueue_trial({"x": 0.25})  # left waiting
    return storage


def replayed(path: Path, name: str) -> list[int]:
    storage = JournalStorage(JournalFileBackend(str(path)))
    study = optuna.load_study(study_name=name, storage=storage)
    return [t.state.value for t in study.get_trials(deepcopy=False)]


def test_states_agree_with_optunas_replay(tmp_path: Path) -> None:
    path = tmp_path / "optuna.journal"
    write_journal(path)
    with open(path, "ab") as f:
        f.write(b'{"op_code": 6, "worker_id": "w", "trial_id": 6, "sta')  # cut short
    want = [journal.COMPLETE, journal.FAIL, journal.PRUNED, journal.RUNNING, journal.WAITING]
    assert replayed(path, "main") == want
    assert journal.trial_states(path, "main") == want
    assert journal.trial_states(path, "other") == replayed(path, "other")
    assert journal.trial_states(path, "other") == [journal.COMPLETE, journal.RUNNING]


def test_missing_file_or_study_has_no_trials(tmp_path: Path) -> None:
    assert journal.trial_states(tmp_path / "optuna.journal", "main") == []
    write_journal(tmp_path / "optuna.journal")
    assert journal.trial_states(tmp_path / "optuna.journal", "gone") == []
    assert journal.trial_states(tmp_path / "optuna.journal", "nope") == []
