"""Markdown sections of a study report: summary, front, domination, failures, comparison
(the ablation against a paper's table is :mod:`ltsearch.report.ablation`).

Every function returns Markdown text; :mod:`ltsearch.report` puts the sections together.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from ltsearch.report.pareto import hypervolume, prob_dominates
from ltsearch.report.plots import front_xy
from ltsearch.report.tables import Summary, fmt, front_md, md_table, short_id
from ltsearch.rows import row_label
from ltsearch.spec.study import StudySpec

REPORT_DIR = "report"
TOP_DOMINATION = 6
FRONT_ROWS = 30
MAX_HV_OBJECTIVES = 4


def hv_reference(directions: Sequence[str]) -> list[float]:
    """The hypervolume reference point: the worst possible AP per objective (0 % when
    maximised, 100 % when minimised), fixed so that studies can be compared."""
    return [0.0 if d == "max" else 100.0 for d in directions]


def front_section(summary: Summary) -> str:
    """Front table, its size and hypervolume (with the reference point stated)."""
    objs, c = summary.objectives, summary.configs
    dirs = [o.direction for o in objs]
    names = ", ".join(f"{o.metric} ({o.direction})" for o in objs)
    lines = [
        f"Objectives: {names}. Means over each configuration's ok seeds, 95% percentile-"
        "bootstrap interval over seeds in brackets; rank 1 is the non-dominated front, "
        "\u2014 means an objective is undefined (NaN)."
    ]
    if summary.missing:
        gone = ", ".join(o.metric for o in summary.missing)
        lines.append(f"No run has a value of {gone} yet: ranked on the other objectives only.")
    if objs and len(objs) <= MAX_HV_OBJECTIVES:
        ref = hv_reference(dirs)
        hv = hypervolume(c[[f"{o.metric}.mean" for o in objs]].to_numpy(float), dirs, ref)
        lines.append(
            f"Front: {int(c['front'].sum())} of {len(c)} configurations. Hypervolume of the "
            f"mean points: **{hv:.2f}** (AP units^{len(objs)}), reference point "
            f"({', '.join(fmt(r) for r in ref)}): the worst possible value of each objective."
        )
    more = f" (first {FRONT_ROWS} of {len(c)}; all in `{REPORT_DIR}/configs.csv`)"
    first = ", after the stage-1 model as is (not ranked)" if len(summary.baseline) else ""
    lines.append(f"Configurations by Pareto rank{more if len(c) > FRONT_ROWS else ''}{first}:")
    return "\n\n".join([*lines, front_md(summary, FRONT_ROWS)])


def domination_md(runs: pd.DataFrame, summary: Summary, k: int = TOP_DOMINATION) -> str:
    """P(row dominates column) for the ``k`` best configurations, bootstrapped over seeds."""
    objs = summary.objectives
    top = summary.configs.iloc[:k]
    if len(top) < 2 or not objs:
        return "Fewer than two configurations with results: nothing to compare."
    cols, dirs = [o.metric for o in objs], [o.direction for o in objs]
    hashes = list(top["config_hash"])
    ok = runs[(runs["status"] == "ok") & runs["config_hash"].isin(hashes)]
    samples = {h: g[cols].to_numpy(float) for h, g in ok.groupby("config_hash")}
    rows = []
    for a, label in zip(hashes, top["label"], strict=True):
        cells = [
            "\u2014" if a == b else fmt(prob_dominates(samples[a], samples[b], dirs), 2)
            for b in hashes
        ]
        rows.append([f"{a[:8]} {label}", *cells])
    note = (
        f"Probability that the row's configuration dominates the column's on "
        f"({', '.join(cols)}): the share of 2000 bootstrap resamplings of each one's seeds "
        "whose mean vectors dominate. One seed gives 0 or 1 (no spread to resample)."
    )
    return note + "\n\n" + md_table(["row \u2192 column", *[h[:8] for h in hashes]], rows)


def compare_rows(
    studies: Sequence[tuple[str, pd.DataFrame]], x: str, y: str, dirs: Sequence[str]
) -> tuple[list[str], list[list[Any]]]:
    """Header and one row per study: configurations, (x, y) front size, hypervolume, best
    x and y (the comparison table of ``report.md`` and ``report.html``)."""
    rows = []
    for name, configs in studies:
        have, front = front_xy(configs, x, y, dirs)
        values = have[[f"{x}.mean", f"{y}.mean"]].to_numpy(float)
        hv = hypervolume(values.reshape(-1, 2), dirs, hv_reference(dirs))
        best = [
            fmt(have[f"{m}.mean"].max() if d == "max" else have[f"{m}.mean"].min())
            if len(have)
            else "\u2014"
            for m, d in zip((x, y), dirs, strict=True)
        ]
        rows.append([name, len(configs), len(front), f"{hv:.2f}", *best])
    header = ["study", "configurations", "front size", "hypervolume", f"best {x}", f"best {y}"]
    return header, rows


def compare_note(x: str, y: str, dirs: Sequence[str]) -> str:
    """What the comparison table's fronts and hypervolumes are computed on."""
    ref = ", ".join(fmt(r) for r in hv_reference(dirs))
    return (
        f"Fronts in ({x}, {y}); hypervolume with reference point ({ref}), the same for "
        "every study."
    )


def compare_md(
    studies: Sequence[tuple[str, pd.DataFrame]], x: str, y: str, dirs: Sequence[str]
) -> str:
    """One row per study: configurations, (x, y) front size, hypervolume, best x and y."""
    return compare_note(x, y, dirs) + "\n\n" + md_table(*compare_rows(studies, x, y, dirs))


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def wall_time(runs: pd.DataFrame) -> str:
    """``first start -> last finish (span); run time summed (train, eval)``, the sums over
    the runs trained here (not those copied from another study, ``reused_from``)."""
    parts = []
    if {"started_at", "finished_at"} <= set(runs.columns):
        start = pd.to_datetime(runs["started_at"], utc=True, errors="coerce", format="ISO8601")
        end = pd.to_datetime(runs["finished_at"], utc=True, errors="coerce", format="ISO8601")
        if start.notna().any() and end.notna().any():
            t0, t1 = start.min(), end.max()
            parts.append(
                f"{t0:%Y-%m-%d %H:%M} \u2192 {t1:%Y-%m-%d %H:%M} UTC "
                f"({_hms((t1 - t0).total_seconds())})"
            )
    reused = (
        runs["reused_from"].notna()
        if "reused_from" in runs
        else pd.Series(False, index=runs.index)
    )
    trained = runs[~reused]  # a run copied from another study cost nothing here
    sums = [
        (k, trained[f"time_{k}_s"].sum())
        for k in ("total", "train", "eval")
        if f"time_{k}_s" in trained
    ]
    if sums:
        detail = ", ".join(f"{k} {_hms(v)}" for k, v in sums[1:])
        parts.append(f"run time summed {_hms(sums[0][1])}" + (f" ({detail})" if detail else ""))
    if reused.any():
        parts.append(f"{int(reused.sum())} run(s) reused from other studies, not counted")
    return "; ".join(parts) or "no timings recorded"


def _count(runs: pd.DataFrame, status: str) -> int:
    return int((runs["status"] == status).sum()) if not runs.empty else 0


def summary_md(spec: StudySpec, study_dir: Path, runs: pd.DataFrame, scale: float) -> str:
    """Study summary: data, losses, budget against progress, seeds, wall time, units."""
    seeds = spec.search.seeds
    ok = runs[runs["status"] == "ok"] if not runs.empty else runs
    n_ok = ok["config_hash"].nunique() if not ok.empty else 0
    started = runs["config_hash"].nunique() if not runs.empty else 0
    ds = spec.dataset
    data = "embedded synthetic long-tail dataset" if ds.kind == "synthetic" else f"LVIS ({ds.val})"
    losses = ", ".join(o.name for o in spec.loss.options)
    units = "stored as lvis-api fractions, shown \u00d7100" if scale == 100.0 else "stored in %"
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Generated {now} from the parquet parts in `{study_dir}/trials/` (a running study "
        "shows the runs finished so far).",
        "",
        f"- data: {data}; losses: {losses}; sampler: {spec.search.sampler}",
        f"- configurations: {n_ok} with an ok run, {started} started, {spec.n_trials} planned",
        f"- runs (configuration \u00d7 seed): {len(ok)} ok, {_count(runs, 'failed')} failed, "
        + (f"{n} stopped early, " if (n := _count(runs, "stopped")) else "")
        + f"{spec.n_trials * len(seeds)} planned; seeds {seeds}",
        f"- wall time: {wall_time(runs) if not runs.empty else 'nothing run yet'}",
        f"- AP values in % ({units}); an undefined metric (lvis-api's -1) shows as \u2014",
    ]
    segm = segm_line(spec, ok)
    if segm:
        lines.append(segm)
    return "## Summary\n\n" + "\n".join(lines)


def segm_line(spec: StudySpec, ok: pd.DataFrame) -> str:
    """Which ok runs have segm numbers, for a study whose trials are box-only (feature
    cache without ``full_eval``): none, or the front's (``training.stage2.segm_front``)."""
    stage2 = spec.training.stage2
    if stage2 is None or not stage2.feature_cache or stage2.full_eval or spec.model.masks is False:
        return ""
    have = ok[ok["segm/AP"].notna()] if "segm/AP" in ok else ok.iloc[0:0]
    if not stage2.segm_front:
        return (
            "- segm: none (feature-cache trials are evaluated on boxes; "
            "`training.stage2.segm_front: true` adds segm for the front's runs)"
        )
    configs = have["config_hash"].nunique() if not have.empty else 0
    return (
        f"- segm: {len(have)} of {len(ok)} ok runs ({configs} configuration(s): the front's, "
        "run again with a whole-model evaluation after the trials; `segm_front` in their rows)"
    )


def failures_md(runs: pd.DataFrame, limit: int = 50) -> str:
    """Failed runs with the first line of their error (not plotted, not ranked)."""
    failed = runs[runs["status"] == "failed"] if not runs.empty else runs
    if failed.empty:
        return ""
    rows = []
    for _, r in failed.sort_values(["config_hash", "seed"]).iloc[:limit].iterrows():
        lines = str(r.get("error") or "no error recorded").strip().splitlines() or [""]
        rows.append([short_id(r), row_label(r), int(r["seed"]), lines[0]])
    more = f" (first {limit})" if len(failed) > limit else ""
    return (
        f"## Failed runs\n\n{len(failed)} failed run(s){more}; full tracebacks are in the "
        "`error` column.\n\n" + md_table(["config", "configuration", "seed", "error"], rows)
    )


def reading_md(study_dir: Path) -> str:
    """Where the parquet lives, and how to read it with pandas or duckdb."""
    d = str(Path(study_dir).resolve())
    return f"""## Reading the results

One row per (configuration, seed) is a parquet part in `{d}/trials/` (per-epoch history in
`epochs/`, per-category AP with frequency group in `categories/`; columns in `ltsearch.store`).
Parts may differ in columns (each loss has its own `param.<loss>.<name>`), so read them by
name. Values there are as the runs stored them (lvis-api's -1 = undefined).

```python
from ltsearch.store import ResultStore
df = ResultStore("{d}").load_trials()  # pandas, union of the parts' columns
df[df.status == "ok"].groupby("config_hash")[["bbox/APr", "bbox/APf"]].agg(["mean", "std"])
```

```python
import duckdb
parts = "{d}/trials/*.parquet"
duckdb.sql(f\"\"\"SELECT loss, avg("bbox/APr") AS apr
  FROM read_parquet('{{parts}}', union_by_name=true)
  WHERE status = 'ok' GROUP BY loss\"\"\").df()
```"""


__all__ = [
    "REPORT_DIR", "compare_md", "compare_note", "compare_rows", "domination_md", "failures_md",
    "front_section", "hv_reference", "reading_md", "summary_md", "wall_time",
]  # fmt: skip
