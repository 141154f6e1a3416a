"""Acceptance tests: the commands a user types, in a fresh copy of the working tree.

``fresh_copy`` is the copy (see :mod:`workspace`), made once per session; ``smoke_run`` is
``ltsearch run studies/quickstart.yaml --smoke`` run once in its root, with the study's
own relative ``storage: runs``, as a user on a fresh clone would run it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # workspace, study_checks, readme_blocks
from workspace import REPO, SmokeRun, copy_working_tree, run_cli  # noqa: E402

SMOKE_STUDY = "studies/quickstart.yaml"


@pytest.fixture(scope="session")
def fresh_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clone-like checkout of the working tree (uncommitted edits included)."""
    return copy_working_tree(REPO, tmp_path_factory.mktemp("acceptance") / "ltsearch")


@pytest.fixture(scope="session")
def smoke_run(fresh_copy: Path) -> SmokeRun:
    from ltsearch.spec.study import load_spec

    spec = load_spec(fresh_copy / SMOKE_STUDY).smoked()
    ran = run_cli("run", SMOKE_STUDY, "--smoke", cwd=fresh_copy)
    return SmokeRun(
        root=fresh_copy,
        # `storage: runs` is relative to where the command ran: the copy's root
        study_dir=fresh_copy / "runs" / spec.name,
        ran=ran,
        name=spec.name,
        trials=spec.n_trials,
        seeds=list(spec.search.seeds),
        objectives=list(spec.search.objectives),
    )
