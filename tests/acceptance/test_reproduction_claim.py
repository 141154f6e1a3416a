"""One claim end to end in its smoke form, through the user's door: ACSL Table 2 run with
``--smoke`` (two seeds) from a working directory of its own with relative paths, then
``ltsearch reproduction`` of its directory. The document's numbers and verdict must be the
verdict rule applied to what landed in parquet, and the claims not run must be listed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from workspace import REPO, run_cli

from ltsearch.report.verdict import INCONCLUSIVE, SEEDS_CAP, judge, seed_stat, seeds_to_decide
from ltsearch.store import ResultStore

pytestmark = [pytest.mark.acceptance, pytest.mark.slow]

STUDY = REPO / "studies" / "acsl_table2.yaml"
PAPER_APR = {0.1: 16.04, 0.7: 18.64}  # ACSL Table 2, AP_r at xi 0.1 and 0.7


def test_acsl_xi_claim_smoke_end_to_end(tmp_path: Path) -> None:
    ran = run_cli(
        "run", str(STUDY), "--smoke", "--set", "smoke.search.seeds=[0, 1]",
        "--storage", "results", "--quiet", "--no-report", cwd=tmp_path, timeout=900,
    )  # fmt: skip
    assert ran.rc == 0, ran.describe()
    study_dir = tmp_path / "results" / "acsl-table2-smoke"
    df = ResultStore(study_dir).load_trials()
    trials = df[df["loss"] == "acsl"]
    assert sorted(trials["seed"]) == [0, 0, 1, 1] and set(trials["status"]) == {"ok"}
    apr = {
        xi: seed_stat(list(100 * g["bbox/APr"]))
        for xi, g in trials.groupby("param.acsl.xi")
    }  # fmt: skip
    assert set(apr) == set(PAPER_APR)

    (tmp_path / "doc").mkdir()
    made = run_cli(
        "reproduction", "../results/acsl-table2-smoke", "--out", "REPRODUCTION.md",
        cwd=tmp_path / "doc", timeout=300,
    )  # fmt: skip
    assert made.rc == 0, made.describe()
    text = (tmp_path / "doc" / "REPRODUCTION.md").read_text(encoding="utf-8")
    section = text.split("### `acsl-table2-xi`", 1)[1].split("\n### ", 1)[0]
    for xi, stat in apr.items():
        assert stat is not None and stat.n == 2
        ours = f"{stat.mean:.2f} ± {stat.half:.2f} (2)"
        assert re.search(
            rf"\| acsl\(xi={xi}\) \|.*\| {PAPER_APR[xi]:.2f} \| {re.escape(ours)} \|", section
        )
    expected = judge(PAPER_APR[0.7], PAPER_APR[0.1], apr[0.7], apr[0.1])
    row = next(
        line for line in section.splitlines() if line.startswith("| acsl(xi=0.7) | acsl(xi=0.1) |")
    )
    cells = [c.strip() for c in row.strip().strip("|").split("|")]
    assert cells[8] == expected, row
    decide = seeds_to_decide(apr[0.7], apr[0.1])
    if expected == INCONCLUSIVE:  # the planning figure, from the same two stats
        assert cells[9] == ("-" if decide is None else f"> {SEEDS_CAP}" if decide > SEEDS_CAP
                            else str(decide)), row  # fmt: skip
    else:
        assert cells[9] == "", row
    assert "**Verdict: " in section  # the smoke run has 2 of the 6 rows: the rest are missing
    assert re.search(r"\| acsl\(xi=0\.7\) \| acsl\(xi=0\.01\) \|.*\| inconclusive \|", section)
    figure = tmp_path / "doc" / "REPRODUCTION_figures" / "acsl-table2-smoke.acsl-table2-xi.png"
    assert figure.stat().st_size > 1000
    not_run = text.split("## Not run", 1)[1]
    assert "| loce-table1-ebl | loce-table1 |" in not_run
