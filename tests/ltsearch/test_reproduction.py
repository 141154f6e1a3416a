"""``ltsearch reproduction``: the claims registry against the study files, and
REPRODUCTION.md written from study directories fabricated by hand (the verdict rule itself:
``test_verdict.py``).

The fabricated ``c2am-table4-embedded`` stores segm/APr (lvis-api fractions) per alpha, seeds
0-2 at base - 0.005, base, base + 0.005: in % each mean is the base, the standard deviation
0.5 and the 95% t half-width t(0.975, 2) * 0.5 / sqrt(3) = 4.3027 * 0.2887 = 1.24.

    alpha   paper APr   ours    vs the paper's best (alpha 0.5, 13.0), by the rule
    0.0       9.6       5.0     Dp +3.4; [8.76, 11.24] vs [3.76, 6.24]: reproduced
    0.1      11.6      13.0     Dp +1.4; ours 10 < 13, disjoint: not reproduced
    0.3      12.8       8.0     Dp +0.2 < TAU: not judged
    0.5      13.0      10.0
    0.7      13.0       9.0     Dp 0: not judged

so ``c2am-table4-alpha`` is not reproduced (1 of 2) and ``c2am-table4-margin`` (alpha 0.5
vs 0) reproduced (1 of 1). ``acsl-table2-smoke`` has the stage-1 row (APr 2.0) and xi 0.7
(APr 12.0), three seeds each, and one failed and one stopped run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ltsearch.errors import SpecError
from ltsearch.report.claim_figures import plot_claim
from ltsearch.report.claims import (
    CLAIMS,
    all_claims,
    base_name,
    comparisons,
    paper_rows,
    paper_value,
    sweep_rows,
)
from ltsearch.report.reproduction import write_reproduction
from ltsearch.report.reproduction_md import scaling_rules, unexpressed_md
from ltsearch.report.verdict import (
    NOT_JUDGED,
    NOT_REPRODUCED,
    REPRODUCED,
    VERDICT_RULE,
    seed_stat,
)
from ltsearch.spec.hashing import config_hash
from ltsearch.spec.study import StudySpec, load_spec, spec_from_dict
from ltsearch.store import ResultStore

REPO = Path(__file__).resolve().parents[2]
STUDIES = {load_spec(p).name: p for p in sorted((REPO / "studies").glob("*.yaml"))}
OFFSETS = (-0.005, 0.0, 0.005)
C2AM_APR = {0.0: 0.05, 0.1: 0.13, 0.3: 0.08, 0.5: 0.10, 0.7: 0.09}


# -- the registry against the study files ---------------------------------------------------


def test_base_names() -> None:
    assert base_name("acsl-table2-embedded") == "acsl-table2"
    assert base_name("rog-table1-rfs-smoke") == "rog-table1-rfs"
    assert base_name("rog-table1-rfs") == "rog-table1-rfs"
    ids = [c.id for c in all_claims()]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("claim", all_claims(), ids=lambda c: c.id)
def test_claim_resolves_against_its_study(claim: Any) -> None:
    """Every selector names exactly one reference row that gives the claim's metric, in the
    study file and (where the spec has it) in its ``--embedded`` variant."""
    assert claim.study in STUDIES, f"no studies/*.yaml named {claim.study}"
    spec = load_spec(STUDIES[claim.study])
    variants = [spec]
    if hasattr(spec, "embedded_variant"):
        variants.append(spec.embedded_variant())
    for s in variants:
        metric = claim.metric_of(s)
        pairs = comparisons(claim, s)
        assert pairs, f"{claim.id}: no comparison in {s.name}"
        if claim.sweep:
            assert len(sweep_rows(s, claim.sweep)) == len(pairs) + 1
        for a, b in pairs:
            for sel in (a, b):
                assert len(paper_rows(s, sel)) == 1, f"{claim.id}: {sel} in {s.name}"
                assert paper_value(s, sel, metric) is not None, f"{claim.id}: {sel} {metric}"


# -- the document on fabricated study directories -----------------------------------------


def make_study(root: Path, source: str, name: str, **changes: Any) -> tuple[Path, StudySpec]:
    """The study file ``source`` as a small synthetic study named ``name``."""
    raw = load_spec(STUDIES[source]).to_dict()
    for key in ("smoke", "embedded", "profile"):
        raw.pop(key, None)
    raw.update(name=name, dataset={"kind": "synthetic", "classes": 8}, storage=str(root))
    raw["model"] = {"backbone": "tiny", "masks": raw["model"].get("masks", True)}
    raw["resources"] = {"workers": 1}
    raw.update(changes)
    spec = spec_from_dict(raw)
    study = root / name
    study.mkdir(parents=True)
    (study / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    return study, spec


def row(spec: StudySpec, h: str, loss: str, seed: int, **values: Any) -> dict[str, Any]:
    return {
        "study": spec.name, "trial_id": h, "config_hash": h, "loss": loss, "seed": seed,
        "status": "ok", "error": None, "time_total_s": 60.0,
        "started_at": f"2025-01-01T00:0{seed}:00+00:00",
        "finished_at": f"2025-01-01T01:0{seed}:00+00:00", **values,
    }  # fmt: skip


def fill_c2am(study: Path, spec: StudySpec) -> None:
    store = ResultStore(study)
    for alpha, apr in C2AM_APR.items():
        h = config_hash({"loss": "c2am", "c2am.s": 30.0, "c2am.alpha": alpha}, spec)
        params = {"param.c2am.s": 30.0, "param.c2am.alpha": alpha}
        for seed, off in enumerate(OFFSETS):
            store.write_trial(
                row(spec, h, "c2am", seed, **params, **{"segm/APr": apr + off, "segm/AP": 0.2})
            )


def fill_acsl(study: Path, spec: StudySpec) -> None:
    store = ResultStore(study)
    h = config_hash({"loss": "acsl", "acsl.xi": 0.7}, spec)
    for seed, off in enumerate(OFFSETS):
        base = {"baseline": "stage1", "stage1_loss": "ce"}
        store.write_trial(
            row(spec, "stage1-abc", "stage1", seed, **base, **{"bbox/APr": 0.02 + off})
        )
        store.write_trial(
            row(spec, h, "acsl", seed, **{"param.acsl.xi": 0.7, "bbox/APr": 0.12 + off})
        )
    failed = {
        "param.acsl.xi": 0.7,
        "error": "RuntimeError: boom\nTraceback (most recent call last):",
    }
    store.write_trial(row(spec, h, "acsl", 3, status="failed", **failed))
    store.write_trial(row(spec, h, "acsl", 4, status="stopped", **{"bbox/APr": 0.9}))


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("runs")
    c2am, spec = make_study(root, "c2am-table4", "c2am-table4-embedded")
    fill_c2am(c2am, spec)
    acsl, spec = make_study(root, "acsl-table2", "acsl-table2-smoke")
    fill_acsl(acsl, spec)
    return c2am, acsl


def section(text: str, heading: str) -> str:
    assert heading in text, heading
    return text.split(heading, 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]


def table(text: str) -> list[list[str]]:
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln[1:-1].split("|")] for ln in lines[2:]]


def test_document(studies: tuple[Path, Path], tmp_path: Path) -> None:
    c2am, acsl = studies
    out = write_reproduction([c2am, acsl], tmp_path / "REPRO.md")
    text = out.read_text()
    assert text.startswith("# Reproduction of the papers' claims")
    assert f"`ltsearch reproduction {c2am} {acsl} --out {tmp_path / 'REPRO.md'}`" in text
    assert f"> {VERDICT_RULE}\n" in text
    assert text.index("## Study `acsl-table2-smoke`") < text.index("## Study `c2am-table4-emb")

    sweep = section(text, "### `c2am-table4-alpha`")
    assert "**Verdict: not reproduced** \u2014 1 of 2 comparisons reproduced; 2 listed" in sweep
    rows = {r[0]: r for r in table(sweep)[:5]}
    assert rows["c2am(alpha=0.5)"][2:4] == ["13.00", "10.00 \u00b1 1.24 (3)"]
    assert rows["c2am(alpha=0)"][2:4] == ["9.60", "5.00 \u00b1 1.24 (3)"]
    verdicts = {r[1]: (r[4], r[7], r[8]) for r in table(sweep)[5:]}
    assert verdicts["c2am(alpha=0)"] == ("+3.40", "+5.00", REPRODUCED)
    assert verdicts["c2am(alpha=0.1)"] == ("+1.40", "\u22123.00", NOT_REPRODUCED)
    assert verdicts["c2am(alpha=0.3)"][2] == verdicts["c2am(alpha=0.7)"][2] == NOT_JUDGED
    figure = tmp_path / "REPRO_figures" / "c2am-table4-embedded.c2am-table4-alpha.png"
    assert f"](REPRO_figures/{figure.name})" in sweep and "rescaled independently" in sweep
    assert figure.read_bytes().startswith(b"\x89PNG")

    margin = section(text, "### `c2am-table4-margin`")
    assert "**Verdict: reproduced** \u2014 1 of 1 comparisons reproduced." in margin

    header = section(text, "## Study `c2am-table4-embedded`")
    assert "8 classes (" in header and "rare" in header and "frequent" in header
    assert (
        "seed-to-seed spread of segm/APr: 0.50 AP points (mean over 5 configuration(s)" in header
    )
    assert "00:00 \u2192 2025-01-01 01:02 UTC" in header  # the rows' first start, last finish

    acsl_md = section(text, "## Study `acsl-table2-smoke`")
    assert "runs: 6 ok (3 of them stage-1 rows), 1 failed, 1 stopped" in acsl_md
    assert "  - failed: `acsl(xi=0.7)` seed 3: RuntimeError: boom\n" in acsl_md
    assert "- failed:" not in header  # c2am-table4 has none
    base = section(text, "### `acsl-table2-baseline`")
    assert "| stage 1 only | stage1 stage 1 only (ce) | 4.30 | 2.00 \u00b1 1.24 (3) |" in base
    assert "**Verdict: reproduced** \u2014 1 of 1" in base  # the stopped 90.0 left out
    xi = section(text, "### `acsl-table2-xi`")
    assert "**Verdict: inconclusive** \u2014 0 of 3 comparisons reproduced; 2 listed" in xi

    not_run = section(text, "## Not run")
    assert "| loce-table1-ebl | loce-table1 |" in not_run and "c2am-table4-margin" not in not_run
    summary = table(section(text, "## Summary"))
    assert ["c2am-table4-margin", "c2am-table4-embedded", REPRODUCED, "1/1"] in summary
    assert ["rog-table1-gap", "rog-table1", "not run", "\u2014"] in summary
    assert len(summary) == len(all_claims()) == sum(len(c) for c in CLAIMS.values())
    n = len(all_claims())
    assert (
        f"**Verdicts of the {n} claims:** 2 reproduced, 1 not reproduced, 1 inconclusive, "
        f"{n - 4} not run" in text.split("## Verdict rule", 1)[0]
    )

    again = write_reproduction([acsl, c2am], tmp_path / "REPRO.md").read_text()
    assert again.split("\n", 3)[3] == text.split("\n", 3)[3]  # the same but the command


def test_embedded_profile_prints_its_rules(tmp_path: Path) -> None:
    """An ``--embedded`` study directory, no run yet: its scaling rules and class groups are
    printed, its claims inconclusive (no side has a number)."""
    spec = load_spec(STUDIES["ahrl-table5"]).embedded_variant()
    study = tmp_path / spec.name
    study.mkdir()
    (study / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    text = write_reproduction([study], tmp_path / "R.md").read_text()
    header = section(text, "## Study `ahrl-table5-embedded`")
    assert "Scaling rules of the embedded profile" in header
    for rule in scaling_rules(spec):
        assert f"- {rule}\n" in header + "\n"
    assert "40 classes (" in header and "runs: none yet" in header
    claim = section(text, "### `ahrl-table5-ahr-vs-eql`")
    assert "| ahr | eql | 17.50 | 15.40 | +2.10 |" in claim
    assert "**Verdict: inconclusive** \u2014 0 of 1 comparisons reproduced." in claim


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run(
        [sys.executable, "-m", "ltsearch", "reproduction", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_cli_relative_out_and_bad_directory(studies: tuple[Path, Path], tmp_path: Path) -> None:
    c2am, _ = studies
    work = tmp_path / "work"
    work.mkdir()
    done = cli(str(c2am), "--out", "docs/R.md", cwd=work)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "docs/R.md"
    text = (work / "docs" / "R.md").read_text()
    assert "**Verdict: reproduced** \u2014 1 of 1 comparisons reproduced." in text
    assert "](R_figures/c2am-table4-embedded.c2am-table4-alpha.png)" in text
    assert (work / "docs" / "R_figures" / "c2am-table4-embedded.c2am-table4-alpha.png").is_file()

    bad = cli(str(c2am), str(work), cwd=work)
    assert bad.returncode == 2 and bad.stdout == ""
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ltsearch: error: ")
    assert "not a study directory" in lines[0]
    assert not (work / "REPRODUCTION.md").exists()


def test_categorical_sweep_figure(tmp_path: Path) -> None:
    """Several swept parameters: the rows in the reference's order on a categorical axis;
    rows without our numbers leave gaps, the paper's curve is whole."""
    (claim,) = CLAIMS["loce-table4"]
    spec = load_spec(STUDIES["loce-table4"])
    rows = sweep_rows(spec, claim.sweep)
    points = [
        (r, paper_value(spec, r, "segm/APr"), seed_stat([10.0 + i, 11.0 + i]) if i % 2 else None)
        for i, r in enumerate(rows)
    ]
    png = plot_claim(tmp_path / "k-m.png", claim, ("segm/APr", "segm/APr"), points)
    assert png is not None and png.read_bytes().startswith(b"\x89PNG")
    assert (
        plot_claim(
            tmp_path / "none.png", claim, ("segm/APr", "bbox/APr"), [(r, None, None) for r in rows]
        )
        is None
    )


def test_unexpressed_rows_are_listed_with_why() -> None:
    spec = load_spec(REPO / "studies" / "rog_table1.yaml")
    text = unexpressed_md(spec)
    assert "| CE + NorCal | NorCal (post-hoc logit normalisation) is not in the loss" in text
    assert (
        "| ECM + GAP | the ECM loss is not in the registry | bbox/AP 25, AP 24.7, APr 16.7,"
        in text
    )
    assert unexpressed_md(load_spec(REPO / "studies" / "c2am_table4.yaml")) == ""
    assert unexpressed_md(spec.embedded_variant()) == text  # the profile keeps them


def test_unexpressed_numbers_must_be_metrics() -> None:
    raw = load_spec(REPO / "studies" / "acsl_table2.yaml").to_dict()
    raw["reference"]["unexpressed"] = [{"row": "x", "why": "y", "numbers": {"mAP": 1.0}}]
    with pytest.raises(
        SpecError, match=r"reference\.unexpressed\.0\.numbers.*'mAP' is not a metric"
    ):
        spec_from_dict(raw)


def test_box_only_study_is_read_in_bbox_and_stage1_row_is_a_point(tmp_path: Path) -> None:
    """A decoupled study evaluated on boxes (``--embedded``'s cached stage 2) is judged on the
    paper's segm direction with our bbox numbers, and says so; its single stage-1 row is a
    point, so a claim against it can be judged."""
    loce, spec = make_study(tmp_path, "loce-table1", "loce-table1-embedded")
    store = ResultStore(loce)
    for (margin, mfs), apr in {(False, False): 0.10, (False, True): 0.24}.items():
        params = {"ebl.margin": margin, "ebl.mfs": mfs}
        h = config_hash({"loss": "ebl", **params}, spec)
        cols = {f"param.{k}": v for k, v in params.items()}
        for seed, off in enumerate(OFFSETS):
            store.write_trial(row(spec, h, "ebl", seed, **cols, **{"bbox/APr": apr + off}))
    acsl, aspec = make_study(tmp_path, "acsl-table2", "acsl-table2-embedded")
    astore = ResultStore(acsl)
    base = {"baseline": "stage1", "stage1_loss": "ce"}
    astore.write_trial(row(aspec, "stage1-abc", "stage1", 0, **base, **{"bbox/APr": 0.05}))
    h = config_hash({"loss": "acsl", "acsl.xi": 0.7}, aspec)
    for seed, off in enumerate(OFFSETS):
        astore.write_trial(
            row(aspec, h, "acsl", seed, **{"param.acsl.xi": 0.7, "bbox/APr": 0.12 + off})
        )
    text = write_reproduction([loce, acsl], tmp_path / "R.md").read_text()

    mfs = section(text, "### `loce-table1-mfs`")
    assert "Metric: the paper's `segm/APr`, ours `bbox/APr` (this study evaluated boxes" in mfs
    verdicts = {r[0]: (r[5], r[6], r[8]) for r in table(mfs)[2:]}
    assert verdicts["margin=False, mfs=True"] == (
        "24.00 \u00b1 1.24 (3)", "10.00 \u00b1 1.24 (3)", REPRODUCED,
    )  # fmt: skip
    assert "seed-to-seed spread of bbox/APr: 0.50 AP points" in section(
        text, "## Study `loce-table1-embedded`"
    )
    baseline = section(text, "### `acsl-table2-baseline`")
    assert "| stage 1 only | stage1 stage 1 only (ce) | 4.30 | 5.00 (point) |" in baseline
    assert "**Verdict: reproduced** \u2014 1 of 1" in baseline
