"""Shared test set-up: quiet Ray, one torch thread (the CI machine has 2 cores), and the
work units of a parallel run (``make test``: pytest-xdist, ``-n 2 --dist loadfile``).

Most of the suite's slow tests wait more than they compute (Ray starting its processes one
after another, CLI commands starting, studies polled), so two workers share the 2 cores
well. With ``--dist loadfile`` a unit of work, run by one worker, is

- one test file, so that its module-scoped fixtures run once;
- or several files that share an expensive session fixture (:data:`SHARED`), so that it
  runs once: the fault suite's uninterrupted ``reference`` studies, the acceptance tests'
  ``smoke_run``.

The units known to be long (:data:`LONG`) are handed out first, so that the last unit
left to run is a short one (xdist's own reordering of units by their number of tests is
turned off for that). (xdist's own ``--dist loadgroup`` would do the grouping from
``xdist_group`` marks, but pytest 9.2 ignores the node id suffix it sets: every test would
be a unit of its own.)

Nothing changes in a run without xdist (collection order kept). Tests that run at the same
time on two workers share nothing on disk: each worker has its own ``tmp_path`` root, and
every Ray started has its own ``--temp-dir`` or session directory.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402

torch.set_num_threads(1)

# modules (paths from the repository root) that share a session fixture: one unit each
SHARED = {
    **dict.fromkeys(
        (
            "tests/faults/test_concurrency.py",
            "tests/faults/test_disk_full.py",
            "tests/faults/test_driver_kill.py",
            "tests/faults/test_interrupts.py",
            "tests/faults/test_pack_leader_kill.py",
            "tests/faults/test_worker_kill.py",
        ),
        "faults-reference",  # tests/faults/conftest.py: reference
    ),
    **dict.fromkeys(
        (
            "tests/acceptance/test_quickstart_smoke.py",
            "tests/acceptance/test_readme.py",
            "tests/acceptance/test_validate.py",
        ),
        "acceptance-smoke",  # tests/acceptance/conftest.py: fresh_copy, smoke_run
    ),
}
# the longest units, longest first (test-seconds in stop 37's green `make test`, two
# workers, on the 2-core CI host): handed out in this order, before every other unit
LONG = {
    "faults-reference": 1595,
    "tests/faults/test_node_loss.py": 315,
    "tests/faults/test_bad_trials.py": 180,
    "tests/faults/test_corruption.py": 180,
    "tests/faults/test_early_stopping.py": 160,
    "tests/acceptance/test_packed_study.py": 145,
    "tests/test_studies.py": 145,
    "tests/acceptance/test_stop_and_resume.py": 140,
    "tests/ltsearch/test_cluster.py": 135,
    "tests/ltmodels/test_trial.py": 115,
    "tests/faults/test_bad_input.py": 115,
    "tests/ltsearch/test_runner.py": 100,
    "tests/ltsearch/test_tracking.py": 100,
    "tests/faults/test_bad_data_runs.py": 90,
    "tests/ltsearch/test_overrides_cli.py": 85,
    "tests/bench/test_gpu_check.py": 80,
    "tests/acceptance/test_stage1_row.py": 80,
    "acceptance-smoke": 70,
    "tests/ltsearch/test_distributed_trial.py": 70,
    "tests/acceptance/test_live_progress.py": 60,
    "tests/faults/test_security.py": 55,
    "tests/acceptance/test_relative_paths.py": 55,
    "tests/acceptance/test_segm_front.py": 50,
    "tests/acceptance/test_reproduction_claim.py": 45,
    "tests/bench/test_bench_mask_inference.py": 40,
    "tests/ltsearch/test_early_stopping_study.py": 35,
}


def _unit(nodeid: str) -> str:
    """The unit of work of the test ``nodeid``: its file, or its :data:`SHARED` group."""
    module = nodeid.split("::", 1)[0]
    return SHARED.get(module, module)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, on the controller
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile``, with the files of a :data:`SHARED` group in one unit."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    # xdist (3.6+) sorts the units by their number of tests unless told not to, which put
    # the long units (few tests each) last: the fault suite's reference unit ended a run
    config.option.loadscopereorder = False

    class UnitScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    return UnitScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On an xdist worker: the :data:`LONG` units first, longest first, then the others in
    collection order; a unit's tests keep their order. Every worker collects the same
    list, in the same order (xdist checks), and the controller hands units out in it."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    first: dict[str, int] = {}
    for i, item in enumerate(items):
        first.setdefault(_unit(item.nodeid), i)
    items.sort(key=lambda it: (-LONG.get(_unit(it.nodeid), 0), first[_unit(it.nodeid)]))
