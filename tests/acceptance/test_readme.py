"""The README's ```sh and ```python blocks run as written, in README order, in a fresh
checkout (see :mod:`readme_blocks` for the marker comments that skip a block or defer it
until after ``make quickstart``).

A new skip is a visible change: the number of skipped blocks is a constant here. The
after-quickstart blocks run for real in ``.ci/run`` after ``make quickstart``; here they
run on a stand-in ``runs/quickstart`` copied from the ``--smoke`` study's results, which
checks the code they call, not the quickstart's numbers.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from readme_blocks import AFTER, RUN, SKIP, Block, parse, run_blocks
from workspace import SmokeRun

pytestmark = pytest.mark.acceptance

EXPECTED_SKIPS = 6  # make commands, synopsis, duckdb/dashboard, reproduction, Ray cluster, loss
EXPECTED_AFTER_QUICKSTART = 1  # ResultStore("runs/quickstart")


def _blocks(root: Path) -> list[Block]:
    return parse((root / "README.md").read_text(encoding="utf-8"))


def _listing(blocks: list[Block]) -> str:
    return "\n".join(f"  {b.where()}: {b.kind} {b.reason}" for b in blocks)


def test_skipped_blocks_are_the_expected_ones(fresh_copy: Path) -> None:
    blocks = _blocks(fresh_copy)
    print(f"README blocks:\n{_listing(blocks)}")
    skipped = [b for b in blocks if b.kind == SKIP]
    assert len(skipped) == EXPECTED_SKIPS, (
        f"{len(skipped)} README blocks are skipped, expected {EXPECTED_SKIPS}; a new skip "
        f"needs its reason reviewed and EXPECTED_SKIPS updated:\n{_listing(skipped)}"
    )
    after = [b for b in blocks if b.kind == AFTER]
    assert len(after) == EXPECTED_AFTER_QUICKSTART, _listing(after)


def test_blocks_run_in_readme_order(fresh_copy: Path) -> None:
    blocks = [b for b in _blocks(fresh_copy) if b.kind == RUN]
    failed = run_blocks(blocks, fresh_copy)
    assert not failed, "\n\n".join(
        f"{b.where()} has no readme-test marker and failed:\n{b.code}{r.describe()}"
        for b, r in failed
    )


@pytest.mark.slow
def test_after_quickstart_blocks_on_the_smoke_results(smoke_run: SmokeRun, tmp_path: Path) -> None:
    assert smoke_run.ran.rc == 0, smoke_run.ran.describe()
    shutil.copytree(smoke_run.study_dir, tmp_path / "runs" / "quickstart")
    shutil.copy2(smoke_run.root / "README.md", tmp_path / "README.md")
    blocks = [b for b in _blocks(tmp_path) if b.kind == AFTER]
    failed = run_blocks(blocks, tmp_path)
    assert not failed, "\n\n".join(f"{b.where()}:\n{b.code}{r.describe()}" for b, r in failed)
