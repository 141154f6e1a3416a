"""Trial states from an Optuna journal file (``optuna.journal``), read without Optuna.

``ltsearch status`` needs only how many trials are finished, failed or running; importing
Optuna (and replaying the journal into frozen trials) costs more than the rest of the
command. The format, as Optuna 5.1 writes and replays it
(``optuna/storages/journal/_file.py`` and ``_storage.py``; ``tests/ltsearch/test_journal.py``
checks the codes against the installed Optuna and the states against its own replay):

- one JSON object per line, ``{"op_code": int, "worker_id": str, ...}``, each line ending
  in ``\\n``; a line without its ``\\n`` is a write cut short;
- op codes (``JournalOperation``): 0 ``CREATE_STUDY`` (``study_name``; the study's id is
  the number of studies created before it, and a name already taken creates nothing),
  1 ``DELETE_STUDY`` (``study_id``), 4 ``CREATE_TRIAL`` (``study_id``, optional ``state``,
  default RUNNING; the trial's id is the number of trials created before it, over all
  studies; a trial of a study that does not exist is not created), 6
  ``SET_TRIAL_STATE_VALUES`` (``trial_id``, ``state``; ignored once the trial is
  finished); the others (2, 3 study attributes, 5 parameter, 7 intermediate value, 8, 9
  trial attributes, 10 Rustuna's discard) do not change a state;
- states (``optuna.trial.TrialState``): 0 RUNNING, 1 COMPLETE, 2 PRUNED, 3 FAIL,
  4 WAITING (enqueued, not yet asked); finished means COMPLETE, PRUNED or FAIL.

A file backend keeps no snapshot, so the lines are the whole study. Unlike Optuna, which
raises on a damaged line followed by others, this reader skips a line that is cut short or
not JSON: status reads a journal that a running driver may be appending to.
"""

from __future__ import annotations

import json
from pathlib import Path

CREATE_STUDY, DELETE_STUDY, CREATE_TRIAL, SET_TRIAL_STATE_VALUES = 0, 1, 4, 6
RUNNING, COMPLETE, PRUNED, FAIL, WAITING = 0, 1, 2, 3, 4
FINISHED = frozenset({COMPLETE, PRUNED, FAIL})


def trial_states(path: str | Path, study_name: str) -> list[int]:
    """The state of each trial of study ``study_name``, in trial-number order.

    Returns:
        Empty when the file or the study does not exist.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    studies: dict[int, str] = {}  # live studies: id -> name
    next_study = 0
    trials: list[list[int]] = []  # trial id -> [study id, state]
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            continue
        try:
            log = json.loads(line)
            op = log["op_code"]
            if op == CREATE_STUDY and log["study_name"] not in studies.values():
                studies[next_study] = log["study_name"]
                next_study += 1
            elif op == DELETE_STUDY:
                studies.pop(log["study_id"], None)
            elif op == CREATE_TRIAL and log["study_id"] in studies:
                trials.append([log["study_id"], int(log.get("state", RUNNING))])
            elif op == SET_TRIAL_STATE_VALUES and 0 <= log["trial_id"] < len(trials):
                trial = trials[log["trial_id"]]
                if trial[1] not in FINISHED:
                    trial[1] = int(log["state"])
        except (ValueError, KeyError, TypeError):  # not JSON, or not an operation we know
            continue
    ids = [i for i, name in studies.items() if name == study_name]
    return [state for sid, state in trials if ids and sid == ids[0]]


__all__ = [
    "COMPLETE", "CREATE_STUDY", "CREATE_TRIAL", "DELETE_STUDY", "FAIL", "FINISHED", "PRUNED",
    "RUNNING", "SET_TRIAL_STATE_VALUES", "WAITING", "trial_states",
]  # fmt: skip
