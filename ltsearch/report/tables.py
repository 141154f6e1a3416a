"""Study results as tables: per-configuration summaries, Pareto ranks, Markdown tables.

Shape shorthand: R runs (one row per (configuration, seed)), C configurations, m objectives.

Stored AP values are lvis-api's fractions (0..1, -1 where a metric is undefined, e.g. APr
when no rare category has ground truth); :func:`prepare_runs` turns -1 into NaN and shows
everything in % (as papers do). A store whose values already exceed 1 is taken to be in %.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from ltsearch.report.pareto import pareto_rank, seed_summary
from ltsearch.rows import BASELINE, PARAM_PREFIX, STAGE1, config_label, config_params, row_label
from ltsearch.spec.sections import Objective

GROUP_METRICS = ("AP", "APr", "APc", "APf")
DETAIL_LIMIT = 300  # configurations given bootstrap intervals (best ranked first)
N_BOOT = 2000
MINUS = "\u2212"


@dataclass(frozen=True)
class Summary:
    """Configurations of one study, summarised over their seeds.

    Attributes:
        configs: one row per configuration with an ok run, best first: ``config_hash``,
            ``loss``, ``label``, ``param.*``, ``n`` (ok seeds), ``n_failed``, per metric
            ``<metric>.mean`` (every row) and ``<metric>.lo``/``.hi`` (the 95% bootstrap
            interval; NaN beyond the :data:`DETAIL_LIMIT` best), ``rank`` (Pareto rank of
            the means, 1 = front, 0 = an objective is NaN) and ``front``.
        objectives: the ranked objectives: those with a value in some configuration.
        missing: objectives without any value yet (not ranked on).
        metrics: the metric columns summarised.
        baseline: the baseline rows (the stage-1 model as is, ``training.stage1.evaluate``)
            summarised as ``configs`` are, with rank 0; not part of ``configs``, so never
            ranked, on a front or in a hypervolume.
    """

    configs: pd.DataFrame
    objectives: list[Objective]
    metrics: list[str]
    missing: list[Objective] = field(default_factory=list)
    baseline: pd.DataFrame = field(default_factory=pd.DataFrame)


def baseline_mask(runs: pd.DataFrame) -> pd.Series:
    """Which runs are baseline rows (:func:`ltsearch.rows.is_baseline`)."""
    if BASELINE not in runs.columns:
        return pd.Series(False, index=runs.index)
    return runs[BASELINE].notna()


def with_baseline(baseline: pd.DataFrame, configs: pd.DataFrame) -> pd.DataFrame:
    """The baseline rows first, then ``configs`` (as tables show them)."""
    return pd.concat([baseline, configs], ignore_index=True) if len(baseline) else configs


def short_id(row: Any) -> str:
    """A configuration's short name in tables: its hash's first 8 digits, ``stage1`` for
    the stage-1 row."""
    return STAGE1 if row.get("loss") == STAGE1 else str(row["config_hash"])[:8]


def metric_columns(df: pd.DataFrame) -> list[str]:
    """The metric columns of a run table (``bbox/...``, ``segm/...``)."""
    return [c for c in df.columns if c.startswith(("bbox/", "segm/"))]


def param_columns(df: pd.DataFrame, loss: str | None = None) -> list[str]:
    """``param.<loss>.<name>`` columns (of one loss when given)."""
    prefix = PARAM_PREFIX if loss is None else f"{PARAM_PREFIX}{loss}."
    return [c for c in df.columns if c.startswith(prefix)]


def prepare_runs(df: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """Runs with numeric metrics in % and undefined (-1) values as NaN.

    Returns:
        The converted copy and the factor applied (100 for fractions, the stored form, also
        when there is no value yet; 1 when some value exceeds 1, i.e. already in %).
    """
    out = df.copy()
    cols = metric_columns(out)
    if not cols:
        return out, 100.0
    values = out[cols].apply(pd.to_numeric, errors="coerce").astype(float)
    values = values.mask(values < 0)
    scale = 1.0 if np.nanmax(np.append(values.to_numpy(), 0.0)) > 1.0 else 100.0
    out[cols] = values * scale
    return out, scale


def _identity(ok: pd.DataFrame) -> pd.DataFrame:
    first = ok.drop_duplicates("config_hash").set_index("config_hash")
    keep = ["loss", *param_columns(first)]
    ident = first[keep].copy()
    ident["label"] = [row_label(r) for _, r in first.iterrows()]
    return ident


def _order(configs: pd.DataFrame, objectives: Sequence[Objective]) -> pd.DataFrame:
    """Front first (rank 1, 2, ...; unranked last), then by the first objective, best first."""
    if not objectives:
        return configs.reset_index(drop=True)
    first = objectives[0]
    key = configs[f"{first.metric}.mean"] * (-1.0 if first.direction == "max" else 1.0)
    rank = configs["rank"].where(configs["rank"] > 0, np.iinfo(np.int64).max)
    order = np.lexsort((configs["config_hash"].to_numpy(), key.fillna(np.inf), rank))
    return configs.iloc[order].reset_index(drop=True)


def _rank_2d(x: np.ndarray) -> np.ndarray:
    """Pareto ranks of NaN-free ``x`` ``[n, 2]`` (minimisation), peeling one front per
    pass over the points sorted once: O(n log n + F n) for F fronts."""
    uniq, inverse = np.unique(x, axis=0, return_inverse=True)  # equal points share a rank
    ranks = np.zeros(len(uniq), dtype=int)
    left = np.lexsort((uniq[:, 1], uniq[:, 0]))  # x ascending, then y
    rank = 1
    while left.size:
        ys = uniq[left, 1]
        best_before = np.concatenate([[np.inf], np.minimum.accumulate(ys)[:-1]])
        front = best_before > ys  # no earlier (x no worse) point with y no worse
        ranks[left[front]] = rank
        left = left[~front]
        rank += 1
    return ranks[inverse.reshape(-1)]


def rank_configs(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """:func:`ltsearch.report.pareto.pareto_rank`, with an exact sort-based path for two
    objectives (pareto_rank compares all pairs once per front: minutes for 10,000 points
    in 100+ fronts).

    Returns:
        ``[n]`` int ranks (1 = front), 0 for rows with a NaN.
    """
    if values.shape[1] != 2:
        return pareto_rank(values, directions)
    x = values * np.array([-1.0 if d == "max" else 1.0 for d in directions])
    valid = ~np.isnan(x).any(axis=1)
    ranks = np.zeros(len(x), dtype=int)
    if valid.any():
        ranks[valid] = _rank_2d(x[valid])
    return ranks


def summarize(
    runs: pd.DataFrame, objectives: Sequence[Objective], metrics: Sequence[str]
) -> Summary:
    """Per configuration: means over ok seeds, Pareto rank, bootstrap intervals of the best.
    Baseline rows are summarised apart (``Summary.baseline``), never ranked.

    Args:
        runs: prepared runs (:func:`prepare_runs`), ok and failed.
        objectives: objectives to rank by; one without any value (absent, or NaN in every
            configuration) is left out and listed in ``missing``.
        metrics: metric columns to summarise (those absent from ``runs`` are skipped).
    """
    base = baseline_mask(runs)
    out = _summarize(runs[~base], objectives, metrics)
    if base.any():
        metrics = [*(o.metric for o in objectives), *metrics]
        out = replace(out, baseline=_summarize(runs[base], [], metrics).configs)
    return out


def _summarize(
    runs: pd.DataFrame, objectives: Sequence[Objective], metrics: Sequence[str]
) -> Summary:
    metrics = [m for m in dict.fromkeys([*[o.metric for o in objectives], *metrics])]
    metrics = [m for m in metrics if m in runs.columns]
    ok = runs[runs["status"] == "ok"]
    if ok.empty:
        return Summary(pd.DataFrame(), list(objectives), metrics)
    grouped = ok.groupby("config_hash", sort=False)
    configs = _identity(ok)
    configs["n"] = grouped.size()
    failed = runs[runs["status"] == "failed"].groupby("config_hash").size()
    configs["n_failed"] = failed.reindex(configs.index).fillna(0).astype(int)
    means = grouped[metrics].mean() if metrics else pd.DataFrame(index=configs.index)
    for m in metrics:
        configs[f"{m}.mean"] = means[m]
    configs = configs.reset_index()
    objs = [
        o for o in objectives if o.metric in metrics and configs[f"{o.metric}.mean"].notna().any()
    ]
    if objs:
        values = configs[[f"{o.metric}.mean" for o in objs]].to_numpy(float)
        configs["rank"] = rank_configs(values, [o.direction for o in objs])
    else:
        configs["rank"] = 0
    configs["front"] = configs["rank"] == 1
    configs = _order(configs, objs)
    missing = [o for o in objectives if o not in objs]
    return Summary(_with_intervals(configs, ok, metrics), objs, metrics, missing)


def _with_intervals(configs: pd.DataFrame, ok: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Add ``.lo``/``.hi`` (bootstrap over seeds) for the :data:`DETAIL_LIMIT` best."""
    top = configs["config_hash"].iloc[:DETAIL_LIMIT]
    sub = ok[ok["config_hash"].isin(set(top))]
    ci = seed_summary(sub, ["config_hash"], metrics, n_boot=N_BOOT).set_index("config_hash")
    out = configs.set_index("config_hash")
    for m in metrics:
        for s in ("lo", "hi"):
            out[f"{m}.{s}"] = ci[f"{m}.{s}"].reindex(out.index)
    return out.reset_index()


# -- Markdown ----------------------------------------------------------------------------


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table (``|`` inside cells escaped)."""

    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: Any, digits: int = 1) -> str:
    """A number for a table; ``—`` for NaN/None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "\u2014"
    return f"{float(value):.{digits}f}"


def fmt_ci(row: pd.Series, metric: str) -> str:
    """``12.3 [11.8, 12.9]`` (mean and 95% interval over seeds); the mean alone without an
    interval or with an empty one (one defined seed)."""
    mean = row.get(f"{metric}.mean")
    lo, hi = row.get(f"{metric}.lo"), row.get(f"{metric}.hi")
    if lo is None or hi is None or pd.isna(lo) or pd.isna(hi) or pd.isna(mean) or lo == hi:
        return fmt(mean)
    return f"{fmt(mean)} [{fmt(lo)}, {fmt(hi)}]"


def signed(delta: float) -> str:
    """``+1.2`` / ``−6.3`` (a true minus sign)."""
    text = f"{delta:+.1f}"
    return text.replace("-", MINUS)


def front_md(summary: Summary, limit: int = 30) -> str:
    """Configurations sorted by Pareto rank (front first), objectives as mean [95% CI]."""
    c = summary.configs
    header = ["rank", "config", "configuration", "seeds", *[o.metric for o in summary.objectives]]
    rows = []
    shown = with_baseline(summary.baseline, c.iloc[:limit])
    for _, r in shown.iterrows():
        rank = int(r["rank"]) if r["rank"] > 0 else "\u2014"
        rank = "baseline" if r["loss"] == STAGE1 else rank
        seeds = f"{int(r['n'])}" + (f" (+{int(r['n_failed'])} failed)" if r["n_failed"] else "")
        objs = [fmt_ci(r, o.metric) for o in summary.objectives]
        rows.append([rank, short_id(r), r["label"], seeds, *objs])
    return md_table(header, rows)


def groups_md(configs: pd.DataFrame, kinds: Sequence[str]) -> str:
    """AP by frequency group (AP, APr, APc, APf per kind present) for ``configs``."""
    cols = [f"{k}/{m}" for k in kinds for m in GROUP_METRICS if f"{k}/{m}.mean" in configs]
    rows = [
        [short_id(r), r["label"], *[fmt_ci(r, c) for c in cols]] for _, r in configs.iterrows()
    ]
    return md_table(["config", "configuration", *cols], rows)


__all__ = [
    "DETAIL_LIMIT", "GROUP_METRICS", "PARAM_PREFIX", "Summary", "baseline_mask", "config_label",
    "config_params", "fmt", "fmt_ci", "front_md", "groups_md", "md_table", "metric_columns",
    "param_columns", "prepare_runs", "rank_configs", "short_id", "signed", "summarize",
    "with_baseline",
]  # fmt: skip
