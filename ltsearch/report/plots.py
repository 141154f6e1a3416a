"""Report figures (PNG): the AP_r/AP_f front, study comparison, sweeps, AP by group.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no global backend
change), so reports render on headless machines and inside other programs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ltmodels.engine.atomic import write_atomic
from ltsearch.report.tables import GROUP_METRICS, PARAM_PREFIX, rank_configs

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", ":", "-.")
MAX_PANELS = 24
MAX_BARS = 12
MAX_LINE_VALUES = 20
MAX_ERRORBARS = 40


def _colors(losses: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {loss: cmap(i % 10) for i, loss in enumerate(sorted(set(losses)))}


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    return path


def staircase(xs: np.ndarray, ys: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """The attainment line through 2-D front points: ``[2k - 1, 2]`` vertices, sorted by x,
    with a corner between neighbours at the worse value of each coordinate."""
    order = np.argsort(xs, kind="stable")
    pts = np.column_stack([xs[order], ys[order]])
    worse = [np.minimum if d == "max" else np.maximum for d in directions]
    out = [pts[0]]
    for a, b in zip(pts[:-1], pts[1:], strict=True):
        out.append(np.array([worse[0](a[0], b[0]), worse[1](a[1], b[1])]))
        out.append(b)
    return np.array(out)


def front_xy(
    configs: pd.DataFrame, x: str, y: str, directions: Sequence[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Configurations with both means, and those non-dominated in (x, y)."""
    cols = [f"{x}.mean", f"{y}.mean"]
    if configs.empty or any(c not in configs for c in cols):
        return configs.iloc[:0], configs.iloc[:0]
    have = configs.dropna(subset=cols)
    return have, have[rank_configs(have[cols].to_numpy(float), directions) == 1]


def _errorbars(ax: Any, pts: pd.DataFrame, x: str, y: str, color: Any) -> None:
    def err(m: str) -> np.ndarray | None:
        if f"{m}.lo" not in pts:
            return None
        mean = pts[f"{m}.mean"].to_numpy(float)
        lo = np.nan_to_num(mean - pts[f"{m}.lo"].to_numpy(float))
        hi = np.nan_to_num(pts[f"{m}.hi"].to_numpy(float) - mean)
        return np.vstack([lo, hi])

    ax.errorbar(
        pts[f"{x}.mean"],
        pts[f"{y}.mean"],
        xerr=err(x),
        yerr=err(y),
        fmt="none",
        ecolor=color,
        elinewidth=0.8,
        capsize=2,
        alpha=0.8,
    )


def plot_front(
    path: Path, configs: pd.DataFrame, x: str, y: str, directions: Sequence[str], title: str
) -> Path | None:
    """Scatter of every configuration (mean over seeds, coloured by loss), the (x, y)
    front as a step line, its points with 95% bootstrap error bars. None: nothing to draw."""
    have, front = front_xy(configs, x, y, directions)
    if have.empty:
        return None
    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.add_subplot()
    colors = _colors(have["loss"].astype(str))
    for loss, pts in have.groupby("loss", sort=True):
        ax.scatter(
            pts[f"{x}.mean"],
            pts[f"{y}.mean"],
            s=18,
            color=colors[str(loss)],
            alpha=0.55,
            label=str(loss),
        )
    for loss, pts in front.groupby("loss", sort=True):
        _errorbars(ax, pts, x, y, colors[str(loss)])
        ax.scatter(
            pts[f"{x}.mean"],
            pts[f"{y}.mean"],
            s=36,
            color=colors[str(loss)],
            edgecolors="black",
            linewidths=0.8,
            zorder=3,
        )
    line = staircase(
        front[f"{x}.mean"].to_numpy(float), front[f"{y}.mean"].to_numpy(float), directions
    )
    ax.plot(line[:, 0], line[:, 1], color="black", lw=1.0, label="front", zorder=2)
    ax.set(xlabel=f"{x} (%)", ylabel=f"{y} (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_compare(
    path: Path,
    studies: Sequence[tuple[str, pd.DataFrame]],
    x: str,
    y: str,
    directions: Sequence[str],
) -> Path | None:
    """Several studies on one plot: a marker and a front line style per study, a colour
    per loss."""
    drawn = [(name, *front_xy(c, x, y, directions)) for name, c in studies]
    drawn = [d for d in drawn if not d[1].empty]
    if not drawn:
        return None
    fig = Figure(figsize=(7.0, 5.0))
    ax = fig.add_subplot()
    colors = _colors([str(v) for _, have, _ in drawn for v in have["loss"]])
    handles = []
    for i, (name, have, front) in enumerate(drawn):
        marker, style = MARKERS[i % len(MARKERS)], LINESTYLES[i % len(LINESTYLES)]
        ax.scatter(
            have[f"{x}.mean"],
            have[f"{y}.mean"],
            s=22,
            marker=marker,
            alpha=0.6,
            c=[colors[str(v)] for v in have["loss"]],
        )
        _errorbars(ax, front, x, y, "gray")
        line = staircase(
            front[f"{x}.mean"].to_numpy(float), front[f"{y}.mean"].to_numpy(float), directions
        )
        ax.plot(line[:, 0], line[:, 1], color="black", ls=style, lw=1.0)
        handles.append(Line2D([], [], color="black", ls=style, marker=marker, label=name))
    handles += [Line2D([], [], color=c, marker="o", ls="", label=k) for k, c in colors.items()]
    ax.set(xlabel=f"{x} (%)", ylabel=f"{y} (%)", title="studies compared")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=8)
    return _save(fig, path)


def sweep_panels(configs: pd.DataFrame) -> list[tuple[str, str]]:
    """``(loss, param column)`` pairs whose value varies among the loss's configurations."""
    out = []
    for loss, sub in configs.groupby("loss", sort=True):
        for col in sorted(c for c in sub.columns if c.startswith(f"{PARAM_PREFIX}{loss}.")):
            if sub[col].dropna().astype(str).nunique() > 1:
                out.append((str(loss), col))
    return out


def _panel(
    ax: Any, sub: pd.DataFrame, col: str, metrics: list[str], *, line: bool, bars: bool
) -> None:
    sub = sub.dropna(subset=[col])
    raw = sub[col]
    numeric = pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw)
    if numeric:
        xs = raw.astype(float)
    else:
        cats = sorted(raw.astype(str).unique())
        xs = raw.astype(str).map({c: i for i, c in enumerate(cats)}).astype(float)
        ax.set_xticks(range(len(cats)), cats, fontsize=7)
    order = np.argsort(xs.to_numpy(), kind="stable")
    xv = xs.to_numpy()[order]
    for m in metrics:
        mean = sub[f"{m}.mean"].to_numpy(float)[order]
        (drawn,) = ax.plot(
            xv,
            mean,
            "o-" if line else "o",
            ms=3,
            lw=1.0,
            alpha=1.0 if line else 0.5,
            label=m.split("/")[1],
        )
        lo, hi = (sub[f"{m}.{s}"].to_numpy(float)[order] for s in ("lo", "hi"))
        has = bars & np.isfinite(lo) & np.isfinite(hi) & (hi > lo)  # bootstrapped, > 1 seed
        if has.any():
            err = np.vstack([mean[has] - lo[has], hi[has] - mean[has]])
            ax.errorbar(
                xv[has],
                mean[has],
                yerr=err,
                fmt="none",
                ecolor=drawn.get_color(),
                elinewidth=0.8,
                capsize=2,
            )


def plot_sweeps(path: Path, configs: pd.DataFrame, kind: str) -> Path | None:
    """One small panel per (loss, tuned parameter): AP, APr, APc, APf (``kind``) against
    the value, as the papers' sweep tables. A line joins the points when the parameter is
    the loss's only varied one and takes at most :data:`MAX_LINE_VALUES` values (a grid);
    seed intervals are drawn for panels of at most :data:`MAX_ERRORBARS` configurations."""
    panels = sweep_panels(configs)[:MAX_PANELS]
    metrics = [f"{kind}/{m}" for m in GROUP_METRICS if f"{kind}/{m}.mean" in configs]
    if not panels or not metrics:
        return None
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(3.6 * ncols, 2.8 * nrows))
    varied = pd.Series([loss for loss, _ in panels]).value_counts()
    for i, (loss, col) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        sub = configs[configs["loss"] == loss]
        line = varied[loss] == 1 and sub[col].nunique() <= MAX_LINE_VALUES
        _panel(ax, sub, col, metrics, line=line, bars=len(sub) <= MAX_ERRORBARS)
        ax.set_title(f"{loss}: {col.split('.', 2)[2]}", fontsize=9)
        ax.set_ylabel(f"{kind} AP (%)", fontsize=8)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_groups(path: Path, configs: pd.DataFrame, kind: str) -> Path | None:
    """Grouped bars of APr/APc/APf (``kind``) per configuration, with 95% intervals."""
    metrics = [f"{kind}/{m}" for m in GROUP_METRICS[1:] if f"{kind}/{m}.mean" in configs]
    configs = configs.iloc[:MAX_BARS]
    if configs.empty or not metrics:
        return None
    fig = Figure(figsize=(max(5.0, 0.9 * len(configs) + 2.0), 4.2))
    ax = fig.add_subplot()
    pos = np.arange(len(configs))
    width = 0.8 / len(metrics)
    for j, m in enumerate(metrics):
        mean = configs[f"{m}.mean"].to_numpy(float)
        lo = np.nan_to_num(mean - configs[f"{m}.lo"].to_numpy(float))
        hi = np.nan_to_num(configs[f"{m}.hi"].to_numpy(float) - mean)
        ax.bar(
            pos + (j - (len(metrics) - 1) / 2) * width,
            np.nan_to_num(mean),
            width,
            yerr=np.vstack([lo, hi]),
            capsize=2,
            label=m.split("/")[1],
        )
    pairs = zip(configs["config_hash"], configs["label"], strict=True)
    labels = [f"{str(h)[:8]}\n{lab}" for h, lab in pairs]
    ax.set_xticks(pos, labels, rotation=30, ha="right", fontsize=7)
    ax.set(ylabel=f"{kind} AP (%)", title="AP by frequency group")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


__all__ = ["plot_compare", "plot_front", "plot_groups", "plot_sweeps", "staircase", "sweep_panels"]
