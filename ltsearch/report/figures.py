"""Interactive (plotly) figures of ``report.html``: the front, the sweeps, the comparison.

They draw the same data as the PNGs of :mod:`.plots`, from the same helpers: points are
the per-configuration seed means of :func:`.tables.summarize`, error bars and bands its
95% bootstrap intervals (``.lo``/``.hi``), the front :func:`.plots.front_xy`, its line
:func:`.plots.staircase`, the sweep panels :func:`.plots.sweep_panels`. One trace per loss
(and per study when compared), so a click on a legend entry hides or shows it.

Shape shorthand: C configurations of a study, F of them on the (x, y) front.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from ltsearch.report.plots import (
    MAX_ERRORBARS,
    MAX_LINE_VALUES,
    MAX_PANELS,
    front_xy,
    staircase,
    sweep_panels,
)
from ltsearch.report.tables import GROUP_METRICS, fmt_ci

PALETTE = qualitative.D3  # matplotlib's tab10, as the PNGs
SYMBOLS = ("circle", "square", "triangle-up", "diamond", "triangle-down", "cross", "x", "star")
DASHES = ("solid", "dash", "dot", "dashdot")
DASH = "\u2014"  # an undefined value, as in report.md
CONFIGS_META = "configs"  # marks the traces holding one point per configuration
FRONT_META = "front"  # the trace of the front's points (customdata: config hashes)
BASELINE_META = "baseline"  # the stage-1 row, drawn apart (not a configuration)


def loss_colors(losses: Sequence[str]) -> dict[str, str]:
    """A colour per loss, by sorted name (the PNGs' order)."""
    return {loss: PALETTE[i % len(PALETTE)] for i, loss in enumerate(sorted(set(losses)))}


def _errors(pts: pd.DataFrame, metric: str) -> dict[str, Any]:
    """Plotly asymmetric error bars from ``.lo``/``.hi`` (none where no interval)."""
    if f"{metric}.lo" not in pts:
        return {"visible": False}
    mean = pts[f"{metric}.mean"].to_numpy(float)
    lo = np.nan_to_num(mean - pts[f"{metric}.lo"].to_numpy(float))
    hi = np.nan_to_num(pts[f"{metric}.hi"].to_numpy(float) - mean)
    return {"type": "data", "symmetric": False, "array": hi, "arrayminus": lo, "thickness": 1}


def hover_text(row: pd.Series, metrics: Sequence[str]) -> str:
    """A configuration's hover box: label, loss, hash, seeds, ``mean [95% CI]`` per metric."""
    seeds = f"{int(row['n'])}" + (f" (+{int(row['n_failed'])} failed)" if row["n_failed"] else "")
    lines = [
        f"<b>{escape(str(row['label']))}</b>",
        f"loss {escape(str(row['loss']))} \u00b7 config {str(row['config_hash'])[:8]}",
        f"seeds {seeds} \u00b7 Pareto rank {int(row['rank']) or DASH}",
        *[f"{m}: {fmt_ci(row, m)}" for m in metrics if f"{m}.mean" in row],
    ]
    return "<br>".join(lines)


def _layout(fig: go.Figure, title: str, x: str, y: str, height: int) -> go.Figure:
    fig.update_layout(
        title=title,
        xaxis_title=x,
        yaxis_title=y,
        height=height,
        template="plotly_white",
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
        hoverlabel={"align": "left"},
    )
    return fig


def front_figure(
    configs: pd.DataFrame,
    x: str,
    y: str,
    directions: Sequence[str],
    metrics: Sequence[str],
    *,
    baseline: pd.DataFrame | None = None,
) -> go.Figure | None:
    """Every configuration at its seed mean, one legend entry per loss (its front points go
    with it); the front's points outlined and joined by its step line. 95% error bars on
    every point up to :data:`MAX_ERRORBARS` configurations, beyond on the front's only (as
    the PNG). The stage-1 ``baseline`` row, when given, is a black cross (never ranked).
    None: no point has both means."""
    have, front = front_xy(configs, x, y, directions)
    if have.empty:
        return None
    colors = loss_colors(have["loss"].astype(str))
    bars = len(have) <= MAX_ERRORBARS
    fig = go.Figure()
    for loss, pts in have.groupby("loss", sort=True):
        color, on = colors[str(loss)], front[front["loss"] == loss]
        error_x, error_y = (_errors(pts, x), _errors(pts, y)) if bars else ({}, {})
        fig.add_scatter(
            x=pts[f"{x}.mean"], y=pts[f"{y}.mean"], mode="markers", name=str(loss),
            legendgroup=str(loss), meta=CONFIGS_META, customdata=pts["config_hash"],
            marker={"color": color, "size": 8, "opacity": 0.75},
            error_x=error_x, error_y=error_y,
            text=[hover_text(r, metrics) for _, r in pts.iterrows()],
            hovertemplate="%{text}<extra></extra>",
        )  # fmt: skip
        fig.add_scatter(
            x=on[f"{x}.mean"], y=on[f"{y}.mean"], mode="markers", name=f"{loss} on the front",
            legendgroup=str(loss), showlegend=False, meta=FRONT_META,
            customdata=on["config_hash"],
            marker={"color": color, "size": 12, "line": {"color": "black", "width": 2}},
            error_x=_errors(on, x), error_y=_errors(on, y),
            text=[hover_text(r, metrics) for _, r in on.iterrows()],
            hovertemplate="%{text}<extra>front</extra>",
        )  # fmt: skip
    line = staircase(
        front[f"{x}.mean"].to_numpy(float), front[f"{y}.mean"].to_numpy(float), directions
    )
    fig.add_scatter(
        x=line[:, 0], y=line[:, 1], mode="lines", name="front", hoverinfo="skip",
        line={"color": "black", "width": 1.5},
    )  # fmt: skip
    cols = [f"{x}.mean", f"{y}.mean"]
    if baseline is not None and not baseline.empty and all(c in baseline for c in cols):
        base = baseline.dropna(subset=cols)
        fig.add_scatter(
            x=base[cols[0]], y=base[cols[1]], mode="markers", name="stage 1 only",
            meta=BASELINE_META, marker={"color": "black", "size": 12, "symbol": "x"},
            text=[hover_text(r, metrics) for _, r in base.iterrows()],
            hovertemplate="%{text}<extra>stage 1 only</extra>",
        )  # fmt: skip
    title = f"{y} against {x}: seed means, 95% intervals"
    return _layout(fig, title, f"{x} (%)", f"{y} (%)", 520)


def _sweep_x(sub: pd.DataFrame, col: str) -> tuple[np.ndarray, bool]:
    """The panel's x values, sorted numerically (or as text for categorical values)."""
    raw = sub[col]
    if pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
        return raw.to_numpy(float), True
    return raw.astype(str).to_numpy(), False


def _sweep_traces(
    fig: go.Figure, sub: pd.DataFrame, col: str, metric: str, *, line: bool, bars: bool
) -> None:
    xs, numeric = _sweep_x(sub, col)
    order = np.argsort(xs, kind="stable")
    xv, name = xs[order], metric.split("/")[1]
    mean = sub[f"{metric}.mean"].to_numpy(float)[order]
    lo, hi = (sub[f"{metric}.{s}"].to_numpy(float)[order] for s in ("lo", "hi"))
    has = bars & np.isfinite(lo) & np.isfinite(hi) & (hi > lo)  # bootstrapped, > 1 seed
    color = PALETTE[GROUP_METRICS.index(name) % len(PALETTE)]
    if line and has.any():  # a band between the intervals' ends, as wide as the mean where none
        band_lo, band_hi = np.where(has, lo, mean), np.where(has, hi, mean)
        fig.add_scatter(
            x=np.concatenate([xv, xv[::-1]]), y=np.concatenate([band_hi, band_lo[::-1]]),
            fill="toself", fillcolor=color, opacity=0.18, line={"width": 0},
            legendgroup=name, showlegend=False, hoverinfo="skip",
        )  # fmt: skip
    errors: dict[str, Any] = {"visible": False}
    if not line and has.any():
        errors = {
            "type": "data", "symmetric": False, "thickness": 1,
            "array": np.where(has, hi - mean, 0.0), "arrayminus": np.where(has, mean - lo, 0.0),
        }  # fmt: skip
    text = [fmt_ci(r, metric) for _, r in sub.iloc[order].iterrows()]
    fig.add_scatter(
        x=xv, y=mean, mode="lines+markers" if line else "markers", name=name, legendgroup=name,
        marker={"color": color, "size": 6}, line={"color": color, "width": 1.5},
        error_y=errors, text=text,
        hovertemplate=f"{col.split('.', 2)[2]}=%{{x}}<br>{metric}: %{{text}}<extra></extra>",
    )  # fmt: skip
    if not numeric:
        fig.update_xaxes(type="category")


def sweep_figures(configs: pd.DataFrame, kind: str) -> list[go.Figure]:
    """One figure per (loss, varied parameter), as :func:`.plots.plot_sweeps`: AP, APr, APc,
    APf (``kind``) against the value; a line and a 95% band when the parameter is the loss's
    only varied one on a grid, points with error bars otherwise."""
    panels = sweep_panels(configs)[:MAX_PANELS]
    metrics = [f"{kind}/{m}" for m in GROUP_METRICS if f"{kind}/{m}.mean" in configs]
    if not metrics:
        return []
    varied = pd.Series([loss for loss, _ in panels], dtype=object).value_counts()
    figs = []
    for loss, col in panels:
        sub = configs[configs["loss"] == loss].dropna(subset=[col])
        line = bool(varied[loss] == 1 and sub[col].nunique() <= MAX_LINE_VALUES)
        fig = go.Figure()
        for m in metrics:
            _sweep_traces(fig, sub, col, m, line=line, bars=len(sub) <= MAX_ERRORBARS)
        param = col.split(".", 2)[2]
        fig = _layout(fig, f"{loss}: {param}", param, f"{kind} AP (%)", 360)
        figs.append(fig.update_layout(legend={"orientation": "h", "y": -0.25}))
    return figs


def compare_figure(
    studies: Sequence[tuple[str, pd.DataFrame]], x: str, y: str, directions: Sequence[str]
) -> go.Figure | None:
    """Several studies on one plot, as :func:`.plots.plot_compare`: a marker and a front
    line style per study, a colour per loss; a click on a study's legend entries hides or
    shows the whole study."""
    drawn = [(name, *front_xy(c, x, y, directions)) for name, c in studies]
    drawn = [d for d in drawn if not d[1].empty]
    if not drawn:
        return None
    colors = loss_colors([str(v) for _, have, _ in drawn for v in have["loss"]])
    fig = go.Figure()
    for i, (name, have, front) in enumerate(drawn):
        symbol = SYMBOLS[i % len(SYMBOLS)]
        for loss, pts in have.groupby("loss", sort=True):
            fig.add_scatter(
                x=pts[f"{x}.mean"], y=pts[f"{y}.mean"], mode="markers", name=str(loss),
                legendgroup=name, legendgrouptitle_text=name, meta=CONFIGS_META,
                customdata=pts["config_hash"],
                marker={"symbol": symbol, "size": 9, "opacity": 0.8, "color": colors[str(loss)]},
                text=[f"{escape(name)}<br>{hover_text(r, (x, y))}" for _, r in pts.iterrows()],
                hovertemplate="%{text}<extra></extra>",
            )  # fmt: skip
        line = staircase(
            front[f"{x}.mean"].to_numpy(float), front[f"{y}.mean"].to_numpy(float), directions
        )
        fig.add_scatter(
            x=line[:, 0], y=line[:, 1], mode="lines", name="front", legendgroup=name,
            hoverinfo="skip",
            line={"color": "black", "width": 1.2, "dash": DASHES[i % len(DASHES)]},
        )  # fmt: skip
    return _layout(fig, "studies compared", f"{x} (%)", f"{y} (%)", 520)


__all__ = [
    "CONFIGS_META", "FRONT_META", "compare_figure", "front_figure", "hover_text", "loss_colors",
    "sweep_figures",
]  # fmt: skip
