"""``ltsearch validate studies/<file>`` in a fresh checkout: every shipped study is valid and
the command says so in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from workspace import REPO, run_cli

pytestmark = pytest.mark.acceptance

STUDIES = sorted(p.name for p in (REPO / "studies").glob("*.yaml"))


def test_studies_found() -> None:
    assert "quickstart.yaml" in STUDIES


@pytest.mark.parametrize("name", STUDIES)
def test_validate_prints_one_line(fresh_copy: Path, name: str) -> None:
    study = f"studies/{name}"
    ran = run_cli("validate", study, cwd=fresh_copy, timeout=300)
    assert ran.rc == 0, ran.describe()
    lines = ran.out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{study}: ok"), ran.describe()
