"""The figure of a sweep claim in REPRODUCTION.md: our mean with its 95% t band against the
swept value, the paper's curve on a second y-axis (the two axes scaled independently).

Drawn on matplotlib's Agg canvas as :mod:`ltsearch.report.plots` draws (no pyplot).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ltmodels.engine.atomic import write_atomic
from ltsearch.report.claims import Claim, Selector
from ltsearch.report.verdict import Stat

Point = tuple[Selector, float | None, Stat | None]
"""A swept reference row: its selector, the paper's number, our statistic."""
LOG_RATIO = 100.0  # positive values spanning this factor or more are drawn on a log axis


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    return path


def _x(claim: Claim, points: Sequence[Point]) -> tuple[np.ndarray, list[str] | None]:
    """x positions: the swept value when one numeric parameter is swept, else the rows'
    positions in the reference's order (with their tick labels)."""
    values = [p[0].get(claim.sweep[0]) for p in points]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if len(claim.sweep) == 1 and numeric:
        return np.array(values, dtype=float), None
    labels = [", ".join(f"{k}={p[0].get(k)}" for k in claim.sweep) for p in points]
    return np.arange(len(points), dtype=float), labels


def plot_claim(
    path: Path, claim: Claim, metrics: tuple[str, str], points: Sequence[Point]
) -> Path | None:
    """Ours (left axis: mean, 95% t band) and the paper's (right axis) against the swept
    parameter(s); ``metrics`` = (the paper's, ours). None: neither side has a number."""
    paper_metric, metric = metrics
    if not points or all(p[1] is None and p[2] is None for p in points):
        return None
    xs, labels = _x(claim, points)
    order = np.argsort(xs, kind="stable")
    xs = xs[order]
    paper = np.array([np.nan if p[1] is None else p[1] for p in points], dtype=float)[order]
    stats = [points[i][2] for i in order]
    mean = np.array([np.nan if s is None else s.mean for s in stats], dtype=float)
    half = np.array([np.nan if s is None else s.half for s in stats], dtype=float)
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    ours = ax.plot(xs, mean, "o-", color="tab:blue", lw=1.2, ms=4, label="ours (mean)")
    band = ax.fill_between(xs, mean - half, mean + half, color="tab:blue", alpha=0.2,
                           label="ours (95% t interval)")  # fmt: skip
    ax.set_ylabel(f"ours: {metric} (%), own scale", color="tab:blue")
    twin = ax.twinx()
    theirs = twin.plot(xs, paper, "s--", color="tab:orange", lw=1.2, ms=4, label="paper")
    twin.set_ylabel(f"paper: {paper_metric} (%), own scale", color="tab:orange")
    if labels is not None:
        ax.set_xticks(xs, [labels[i] for i in order], rotation=20, ha="right", fontsize=7)
        ax.set_xlabel(", ".join(claim.sweep) + " (reference order)")
    else:
        positive = xs[np.isfinite(xs)]
        if positive.size and positive.min() > 0 and positive.max() / positive.min() >= LOG_RATIO:
            ax.set_xscale("log")
        ax.set_xlabel(claim.sweep[0])
    handles = [*ours, band, *theirs]
    ax.legend(handles, [str(h.get_label()) for h in handles], fontsize=8, loc="best")
    ax.set_title(f"{claim.id}: axes rescaled independently", fontsize=9)
    ax.grid(alpha=0.3)
    return _save(fig, path)


__all__ = ["Point", "plot_claim"]
