"""The report's ablation section: each published reference row next to the configuration
with the same loss and parameter values, ``paper | ours (ours - paper)`` per metric the row
gives. A row may give numbers of its reference's ``metric_kind`` (``AP``) and of either kind
by full name (``bbox/AP``, ``segm/AP``): a table printing box and mask AP shows both.
A ``{baseline: stage1, ...}`` row is the study's stage-1 model as is (the papers' "before
re-balancing" row); a study that evaluates its stage 1 shows that row first even when the
reference gives no numbers for it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from ltmodels.losses.domains import DOMAINS
from ltsearch.report.tables import (
    PARAM_PREFIX,
    Summary,
    config_label,
    fmt,
    md_table,
    short_id,
    signed,
)
from ltsearch.rows import BASELINE, STAGE1, baseline_label
from ltsearch.spec.points import is_metric_key, point_loss, reference_metrics
from ltsearch.spec.sections import METRIC_NAMES
from ltsearch.spec.study import StudySpec


def _same(a: Any, b: Any) -> bool:
    numeric = (int, float, np.integer, np.floating)
    if isinstance(a, numeric) and isinstance(b, numeric) and not isinstance(a, (bool, np.bool_)):
        return not isinstance(b, (bool, np.bool_)) and math.isclose(
            float(a), float(b), rel_tol=1e-6, abs_tol=1e-9
        )
    return bool(a == b)


def match_reference(spec: StudySpec, configs: pd.DataFrame, row: dict[str, Any]) -> pd.DataFrame:
    """The configurations a reference row names: its loss, and its parameter values
    (floats within 1e-6; a parameter the run did not record counts as its default)."""
    loss = point_loss(row, spec.loss, ["reference"])
    hit = configs[configs["loss"] == loss] if not configs.empty else configs
    domains = DOMAINS[loss]
    for key, want in row.items():
        if key == "loss" or is_metric_key(key) or hit.empty:
            continue
        col = f"{PARAM_PREFIX}{loss}.{key}"
        default = domains[key].default if key in domains else None
        have = hit[col] if col in hit else pd.Series(default, index=hit.index, dtype=object)
        have = have.where(have.notna(), default) if default is not None else have
        hit = hit[[_same(v, want) for v in have]]
    return hit


def reference_columns(spec: StudySpec) -> list[str]:
    """The full metric names the reference rows give, ``metric_kind``'s first, each kind in
    ``METRIC_NAMES`` order."""
    ref = spec.reference
    if ref is None:
        return []
    given = {m for row in ref.rows for m in reference_metrics(row, ref.metric_kind)}
    other = "segm" if ref.metric_kind == "bbox" else "bbox"
    return [
        f"{k}/{m}" for k in (ref.metric_kind, other) for m in METRIC_NAMES if f"{k}/{m}" in given
    ]


def _reference_rows(spec: StudySpec) -> list[dict[str, Any]]:
    """The reference's rows; a study that evaluates its stage 1 without a reference row for
    it gets one without published numbers first, so the table still shows it."""
    assert spec.reference is not None
    rows = list(spec.reference.rows)
    stage1 = spec.training.stage1
    if stage1 is not None and stage1.evaluate and not any(BASELINE in r for r in rows):
        rows.insert(0, {BASELINE: STAGE1})
    return rows


def _matched(spec: StudySpec, summary: Summary, row: dict[str, Any]) -> tuple[str, pd.DataFrame]:
    """A reference row's name and the configurations it matches (the stage-1 row for
    ``baseline: stage1``)."""
    if BASELINE in row:
        stage1 = spec.training.stage1
        return baseline_label(None if stage1 is None else stage1.loss), summary.baseline
    params = {k: v for k, v in row.items() if k != "loss" and not is_metric_key(k)}
    name = config_label(point_loss(row, spec.loss, ["reference"]), params)
    return name, match_reference(spec, summary.configs, row)


def ablation_md(spec: StudySpec, summary: Summary) -> str:
    """Each reference row next to the matching configuration: ``paper | ours (Δ)`` per
    metric the row gives. Several matches: the one with most seeds, then best ranked.
    Columns are named as in the rows (``AP``) when all are of ``metric_kind``, by full
    name (``bbox/AP``, ``segm/AP``) when the rows give both kinds."""
    ref = spec.reference
    if ref is None:
        return ""
    columns = reference_columns(spec)
    one_kind = all(c.startswith(f"{ref.metric_kind}/") for c in columns)
    header = ["reference", "matched config", "seeds"]
    header += [f"{c.split('/')[1] if one_kind else c} paper | ours (\u0394)" for c in columns]
    rows = []
    for row in _reference_rows(spec):
        name, hit = _matched(spec, summary, row)
        published = reference_metrics(row, ref.metric_kind)
        best = hit.sort_values("n", ascending=False, kind="stable").iloc[0] if len(hit) else None
        cells = []
        for c in columns:
            paper = published.get(c)
            ours = np.nan if best is None else best.get(f"{c}.mean", np.nan)
            if paper is None:
                cells.append(f"\u2014 | {fmt(ours)}")
            elif pd.isna(ours):
                cells.append(f"{fmt(paper)} | \u2014")
            else:
                cells.append(f"{fmt(paper)} | {fmt(ours)} ({signed(float(ours) - paper)})")
        match = "none yet" if best is None else f"{short_id(best)} {best['label']}"
        if len(hit) > 1:
            match += f" (1 of {len(hit)} matches)"
        rows.append([name, match, 0 if best is None else int(best["n"]), *cells])
    return md_table(header, rows)


def ablation_section(spec: StudySpec, summary: Summary) -> str:
    """The reference comparison with a note on what agreement to expect."""
    ref = spec.reference
    assert ref is not None
    if spec.dataset.kind == "synthetic":
        note = (
            "This study runs on the embedded synthetic dataset: its numbers are not expected "
            "to match the paper's LVIS numbers in absolute terms; compare the trends across "
            "rows."
        )
    else:
        note = (
            "Differences also come from schedule, seeds and implementation details; papers "
            "usually report one run."
        )
    kinds = sorted({c.split("/")[0] for c in reference_columns(spec)}) or [ref.metric_kind]
    return (
        f"## Ablation: {ref.source} ({' and '.join(kinds)})\n\nEach reference row next to the "
        "configuration with the same loss and parameter values (floats within 1e-6): "
        f"paper | ours (ours \u2212 paper). {note}\n\n" + ablation_md(spec, summary)
    )


__all__ = ["ablation_md", "ablation_section", "match_reference", "reference_columns"]
