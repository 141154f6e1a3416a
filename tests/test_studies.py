"""The study files in ``studies/``: each loads and smokes, the paper studies are written for
real LVIS on an 8-GPU cluster with the paper's backbone and schedule, their reference rows
name configurations the study actually runs, and a few of them run end to end (--smoke).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from ltsearch.cli import main as cli_main
from ltsearch.space import grid_points
from ltsearch.spec.loss import ParamSpace
from ltsearch.spec.points import check_point, is_metric_key
from ltsearch.spec.sections import METRIC_NAMES
from ltsearch.spec.study import StudySpec, load_spec, param_key
from ltsearch.store import ResultStore

STUDIES_DIR = Path(__file__).resolve().parents[1] / "studies"
ALL_FILES = sorted(STUDIES_DIR.glob("*.yaml"))

# file stem -> (LVIS version, training schedule): the setting each paper's ablations use.
PAPER_STUDIES: dict[str, tuple[str, str]] = {
    "acsl_table2": ("v0.5", "decoupled"),
    "ahrl_table3": ("v0.5", "decoupled"),
    "ahrl_table5": ("v0.5", "decoupled"),
    "c2am_table3": ("v1", "end_to_end"),
    "c2am_table4": ("v1", "end_to_end"),
    "c2am_table5": ("v1", "end_to_end"),
    "loce_table1": ("v1", "decoupled"),
    "loce_table2": ("v1", "decoupled"),
    "loce_table3": ("v1", "decoupled"),
    "loce_table4": ("v1", "decoupled"),
    "rog_table1": ("v1", "end_to_end"),
    "rog_table1_rfs": ("v1", "end_to_end"),
    "rog_table4": ("v1", "end_to_end"),
    "pareto_cross_loss": ("v1", "decoupled"),
}

# One printed row per table, copied from the paper (param values, metrics as printed: the
# reference's kind and, where the table prints it, AP^bbox), to catch an edit of the YAML's
# numbers.
PAPER_ROWS: dict[str, dict[str, Any]] = {
    "acsl_table2": {"xi": 0.7, "AP": 26.36, "APr": 18.64, "APc": 26.41, "APf": 29.37},
    "ahrl_table3": {
        "num_clusters": 200,
        "bbox/AP": 27.4,
        "AP": 27.3,
        "APr": 17.5,
        "APc": 29.0,
        "APf": 29.1,
    },
    "ahrl_table5": {
        "loss": "eql",
        "bbox/AP": 26.8,
        "AP": 27.0,
        "APr": 15.4,
        "APc": 29.0,
        "APf": 29.2,
    },
    "c2am_table3": {"s": 10.0, "bbox/AP": 14.9, "AP": 14.2, "APr": 0, "APc": 7.6, "APf": 27.7},
    "c2am_table4": {
        "alpha": 0.0,
        "bbox/AP": 24.8,
        "AP": 24.1,
        "APr": 9.6,
        "APc": 23.2,
        "APf": 31.5,
    },
    "c2am_table5": {
        "margin": "fixed",
        "bbox/AP": 25.2,
        "AP": 24.3,
        "APr": 11.5,
        "APc": 23.4,
        "APf": 30.9,
    },
    "loce_table1": {
        "margin": False,
        "mfs": True,
        "bbox/AP": 26.0,
        "AP": 25.7,
        "APr": 18.4,
        "APc": 25.0,
        "APf": 29.8,
    },
    "loce_table2": {
        "alpha": 0.8,
        "bbox/AP": 27.2,
        "AP": 26.4,
        "APr": 17.2,
        "APc": 26.3,
        "APf": 30.7,
    },
    "loce_table3": {
        "background_score": 0.1,
        "bbox/AP": 26.7,
        "AP": 26.0,
        "APr": 17.8,
        "APc": 25.5,
        "APf": 30.3,
    },
    "loce_table4": {
        "mfs_k": 8,
        "mfs_m": 4,
        "bbox/AP": 27.4,
        "AP": 26.6,
        "APr": 18.5,
        "APc": 26.2,
        "APf": 30.7,
    },
    "rog_table1": {
        "loss": "gap",
        "base": "eqlv2",
        "bbox/AP": 25.0,
        "AP": 24.4,
        "APr": 17.2,
        "APc": 23.5,
        "APf": 28.7,
    },
    "rog_table1_rfs": {
        "loss": "gap",
        "base": "bce",
        "bbox/AP": 25.9,
        "AP": 25.1,
        "APr": 18.2,
        "APc": 24.6,
        "APf": 28.7,
    },
    "rog_table4": {"gamma": 1.0, "online": True, "exclude_fg": True, "bbox/AP": 24.7, "AP": 23.9},
}


def _load(stem: str) -> StudySpec:
    return load_spec(STUDIES_DIR / f"{stem}.yaml")


def _flat_row(spec: StudySpec, row: dict[str, Any]) -> dict[str, Any]:
    """A reference row's parameters in flat form, ``{"loss": ..., "<loss>.<p>": v}``."""
    names = [o.name for o in spec.loss.options]
    loss = row.get("loss", names[0] if len(names) == 1 else None)
    out: dict[str, Any] = {"loss": loss}
    for key, value in row.items():
        if key != "loss" and not is_metric_key(key):
            out[param_key(str(loss), key)] = value
    return out


def _run_points(spec: StudySpec) -> list[dict[str, Any]]:
    """The configurations a study runs for certain (flat, fixed values included): the first
    ``n_trials`` grid points, or the initial points of another sampler."""
    if spec.search.sampler == "grid":
        return grid_points(spec)[: spec.n_trials]
    return [check_point(p, spec.loss, []) for p in spec.search.initial_points]


def _smoke_points(smoke: StudySpec) -> list[dict[str, Any]]:
    """What a smoke run may try: its enqueued points (flat, fixed values included), plus
    every loss's whole space (as ParamSpace values) when the sampler picks beyond them."""
    if smoke.search.sampler == "grid":
        return grid_points(smoke)[: smoke.n_trials]
    points = [check_point(p, smoke.loss, []) for p in smoke.search.initial_points]
    if smoke.n_trials > len(points):
        for opt in smoke.loss.options:
            points.append({param_key(opt.name, k): v for k, v in opt.params.items()})
    return points


def _matches(point: dict[str, Any], row: dict[str, Any]) -> bool:
    for key, want in row.items():
        have = point.get(key)
        if isinstance(want, float) and isinstance(have, float):
            if not math.isclose(have, want, rel_tol=0, abs_tol=1e-9):
                return False
        elif have != want:
            return False
    return True


def test_every_paper_study_is_there() -> None:
    stems = {p.stem for p in ALL_FILES}
    missing = sorted(set(PAPER_STUDIES) - stems)
    assert not missing, f"studies missing: {missing}"


@pytest.mark.parametrize("path", ALL_FILES, ids=[p.stem for p in ALL_FILES])
def test_study_loads_and_smokes(path: Path) -> None:
    spec = load_spec(path)
    assert spec.name == path.stem.replace("_", "-")
    smoke = spec.smoked()
    assert smoke.name == f"{spec.name}-smoke"
    assert smoke.dataset.kind == "synthetic"
    assert smoke.model.backbone == "tiny"
    assert smoke.resources.workers == 1 and smoke.resources.gpus_per_worker == 0
    assert 1 <= smoke.n_trials <= 2
    # what the smoke run tries fits its class count (AHR's clusters must not exceed it)
    classes = smoke.dataset.classes
    assert classes is not None
    for point in _smoke_points(smoke):
        for key, value in point.items():
            if key.endswith(".num_clusters"):
                if isinstance(value, ParamSpace):
                    values = value.choices() or list(value.bounds)
                else:
                    values = [value]
                assert max(values) <= classes, f"{key} {values} > {classes} classes"


@pytest.mark.parametrize("stem", sorted(PAPER_STUDIES))
def test_paper_study_targets_lvis_on_8_gpus(stem: str) -> None:
    spec = _load(stem)
    version, schedule = PAPER_STUDIES[stem]
    data = spec.dataset
    assert data.kind == "lvis"
    assert data.version == version
    assert f"lvis_{version}_train.json" in data.train and f"lvis_{version}_val.json" in data.val
    assert spec.model.backbone in ("resnet50_fpn", "resnet101_fpn")
    assert spec.training.schedule == schedule
    res = spec.resources
    assert (res.workers, res.gpus_per_worker) == (8, 1)
    assert spec.smoke is not None, "every study carries a smoke block"
    if spec.reference is not None:
        kind = spec.reference.metric_kind
        assert all(m.startswith(f"{kind}/") for m in spec.search.metric_names)
        if kind == "segm":
            assert spec.model.masks is True


@pytest.mark.parametrize("stem", sorted(PAPER_ROWS))
def test_reference_rows_name_configurations_the_study_runs(stem: str) -> None:
    spec = _load(stem)
    assert spec.reference is not None
    points = _run_points(spec)
    # every run point is one the study certainly runs (no sampler draws in between)
    assert spec.n_trials <= len(points)
    matched: list[int] = []
    for i, row in enumerate(spec.reference.rows):
        if "baseline" in row:  # the stage-1 row, which the study stores when it evaluates it
            assert spec.training.stage1_row, f"reference row {i}: no stage-1 row to match"
            continue
        flat = _flat_row(spec, row)
        hits = [j for j, p in enumerate(points) if _matches(p, flat)]
        assert len(hits) == 1, f"reference row {i} {flat} matches run points {hits}"
        matched.append(hits[0])
    assert len(set(matched)) == len(matched), "two reference rows name one configuration"


@pytest.mark.parametrize("stem", sorted(PAPER_ROWS))
def test_reference_carries_the_papers_numbers(stem: str) -> None:
    spec = _load(stem)
    assert spec.reference is not None
    assert PAPER_ROWS[stem] in [dict(r) for r in spec.reference.rows]
    for row in spec.reference.rows:
        metrics = [m for m in METRIC_NAMES if m in row]
        assert "AP" in metrics
        assert all(0 <= row[m] <= 100 for m in metrics)


def test_c2am_table5_runs_none_adaptive_fixed_once_each() -> None:
    points = _run_points(_load("c2am_table5"))
    got = [(p["c2am.margin"], p["c2am.alpha"]) for p in points]
    assert got == [("adaptive", 0.0), ("adaptive", 0.5), ("fixed", 0.0)]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stem", "param", "values"),
    [
        ("acsl_table2", "param.acsl.xi", {0.1, 0.7}),  # decoupled, feature cache, bbox
        ("c2am_table4", "param.c2am.alpha", {0.0, 0.5}),  # end-to-end, cosine head, segm
    ],
)
def test_smoke_run_writes_parquet(
    tmp_path: Path, stem: str, param: str, values: set[float]
) -> None:
    path = STUDIES_DIR / f"{stem}.yaml"
    rc = cli_main(["run", str(path), "--smoke", "--storage", str(tmp_path), "--no-report"])
    assert rc == 0
    spec = load_spec(path).smoked()
    every = ResultStore(tmp_path / spec.name).load_trials()
    assert set(every["status"]) == {"ok"}
    base = every["baseline"].notna() if "baseline" in every else every["loss"].isna()
    df = every[~base]
    assert len(df) == 2
    assert set(df[param]) == values
    for metric in spec.search.metric_names:
        assert df[metric].notna().all()
    # training.stage1.evaluate (ACSL's "baseline (1x)"): one stage-1 row beside the trials
    stage1 = every[base]
    assert len(stage1) == int(spec.training.stage1_row)
    for metric in spec.search.metric_names:
        assert stage1[metric].notna().all()
