"""``report.html``: the study report as one self-contained, interactive page.

Written by ``ltsearch report`` beside ``report.md``, from the same summary (the same seed
means, 95% intervals and front), so the two never disagree. Works offline: plotly.js (from
the plotly wheel), the style sheet and the table-sorting script (``assets/``) are inlined
once per page; nothing is fetched.

The page holds the (x, y) front plot (a legend entry per loss hides or shows it), one
sweep plot per tuned hyperparameter, the AP-by-frequency-group table (sorted by a click on
a column header) and, with ``--compare``, the studies on one plot and in one table. A
``<script type="application/json" id="ltsearch-data">`` element lists what is plotted
(configurations, front members), for tests and scripts that read the page.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from ltmodels.engine.atomic import write_atomic
from ltsearch.report.figures import compare_figure, front_figure, sweep_figures
from ltsearch.report.plots import MAX_ERRORBARS, front_xy
from ltsearch.report.sections import compare_note, compare_rows
from ltsearch.report.tables import (
    DETAIL_LIMIT,
    GROUP_METRICS,
    fmt_ci,
    short_id,
    with_baseline,
)
from ltsearch.rows import BASELINE, STAGE1

HTML_FILE = "report.html"
DATA_ID = "ltsearch-data"
TABLE_ROWS = 500  # configurations in the group table (best ranked first; all in configs.csv)
PLOT_CONFIG = {"displaylogo": False, "responsive": True}


@dataclass(frozen=True)
class Page:
    """What ``report.html`` shows.

    Attributes:
        name: the study's name.
        source: where the results were read (the study's ``trials/`` folder).
        configs: :attr:`.tables.Summary.configs` (empty: no ok run yet).
        x, y: the front plot's metrics; ``directions`` their ``"max"``/``"min"``.
        kinds: ``bbox``/``segm``, those with group metrics, for the group table.
        sweep_kind: the kind whose AP, APr, APc and APf the sweeps show.
        metrics: metrics shown on hover.
        studies: ``(name, configs)`` of the compared studies, this one first (empty: none).
        baseline: :attr:`.tables.Summary.baseline`, the stage-1 row (empty: none), shown
            first in the group table and as a cross on the front plot, never ranked.
    """

    name: str
    source: str
    configs: pd.DataFrame
    x: str
    y: str
    directions: Sequence[str]
    kinds: Sequence[str]
    sweep_kind: str
    metrics: Sequence[str]
    studies: Sequence[tuple[str, pd.DataFrame]] = field(default_factory=list)
    baseline: pd.DataFrame = field(default_factory=pd.DataFrame)


def _asset(name: str) -> str:
    return resources.files("ltsearch.report").joinpath("assets", name).read_text("utf-8")


def _number(value: Any) -> float | None:
    """A JSON-safe number: None for NaN/None."""
    if value is None or pd.isna(value):
        return None
    v = float(value)
    return None if math.isinf(v) else v


def _plot(fig: go.Figure, div_id: str) -> str:
    return str(
        fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=PLOT_CONFIG)
    )


def _cell(text: str, sort: Any, cls: str = "") -> str:
    key = "" if sort is None or (isinstance(sort, float) and math.isnan(sort)) else sort
    attr = f' class="{cls}"' if cls else ""
    return f'<td{attr} data-sort="{escape(str(key))}">{escape(text)}</td>'


def group_table(
    configs: pd.DataFrame, kinds: Sequence[str], baseline: pd.DataFrame | None = None
) -> str:
    """The sortable AP-by-group table: the stage-1 ``baseline`` row first (rank
    "baseline"), then the :data:`TABLE_ROWS` best configurations, each metric as
    ``mean [95% CI]`` (sorted by the mean)."""
    cols = [f"{k}/{m}" for k in kinds for m in GROUP_METRICS if f"{k}/{m}.mean" in configs]
    base = baseline if baseline is not None else configs.iloc[:0]
    head = ["rank", "config", "configuration", "loss", "seeds", *cols]
    text = {"config", "configuration", "loss"}
    ths = "".join(f'<th class="{"text" if h in text else ""}">{escape(h)}</th>' for h in head)
    rows = []
    for _, r in with_baseline(base, configs.iloc[:TABLE_ROWS]).iterrows():
        is_base = r.get("loss") == STAGE1
        rank = 0 if is_base else int(r["rank"])
        cells = [
            _cell(BASELINE if is_base else str(rank) if rank else "\u2014", rank or None),
            _cell(short_id(r), str(r["config_hash"]), "text"),
            _cell(str(r["label"]), str(r["label"]), "text"),
            _cell(str(r["loss"]), str(r["loss"]), "text"),
            _cell(str(int(r["n"])), int(r["n"])),
            *[_cell(fmt_ci(r, c), _number(r[f"{c}.mean"])) for c in cols],
        ]
        cls = ' class="front"' if rank == 1 else ' class="baseline"' if is_base else ""
        rows.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return (
        f'<div class="table-wrap"><table class="sortable" id="groups-table"><thead><tr>{ths}'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _simple_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    ths = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    trs = "".join(
        "<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f'<table class="plain"><thead><tr>{ths}</tr></thead><tbody>{trs}</tbody></table>'


def page_data(page: Page) -> dict[str, Any]:
    """The ``ltsearch-data`` JSON: what the front plot draws, and each compared study's."""
    have, front = front_xy(page.configs, page.x, page.y, page.directions)
    plotted = [
        {
            "config_hash": str(r["config_hash"]),
            "loss": str(r["loss"]),
            "label": str(r["label"]),
            "seeds": int(r["n"]),
            "x": _number(r[f"{page.x}.mean"]),
            "y": _number(r[f"{page.y}.mean"]),
        }
        for _, r in have.iterrows()
    ]
    compared = []
    for name, configs in page.studies:
        h, f = front_xy(configs, page.x, page.y, page.directions)
        compared.append({"study": name, "plotted": len(h), "front": list(f["config_hash"])})
    return {
        "study": page.name,
        "x": page.x,
        "y": page.y,
        "directions": list(page.directions),
        "configurations": len(page.configs),
        "plotted": plotted,
        "front": [str(h) for h in front.get("config_hash", [])],
        "table_rows": min(len(page.configs), TABLE_ROWS),
        "compare": compared,
    }


def _front_section(page: Page) -> str:
    fig = front_figure(
        page.configs, page.x, page.y, page.directions, page.metrics, baseline=page.baseline
    )
    if fig is None:
        return f"<p>No configuration has both {escape(page.x)} and {escape(page.y)} yet.</p>"
    note = (
        "One point per configuration at its mean over ok seeds; outlined points and the "
        "black line are the front. Error bars: the 95% percentile-bootstrap interval over "
        f"seeds (on every point up to {MAX_ERRORBARS} configurations, else on the front's; "
        f"none with one seed, nor beyond the {DETAIL_LIMIT} best ranked). "
        "Click a loss in the legend to hide or show it (double-click: it alone)."
    )
    return f'<p class="note">{note}</p>{_plot(fig, "front-plot")}'


def _sweeps_section(page: Page) -> str:
    figs = sweep_figures(page.configs, page.sweep_kind)
    if not figs:
        return ""
    plots = "".join(_plot(f, f"sweep-{i}") for i, f in enumerate(figs))
    return (
        f"<h2>Hyperparameter sweeps ({escape(page.sweep_kind)})</h2><p class=note>Mean over "
        "seeds; band or bars: 95% interval over seeds.</p>"
        f'<div class="sweeps">{plots}</div>'
    )


def _compare_section(page: Page) -> str:
    if not page.studies:
        return ""
    fig = compare_figure(page.studies, page.x, page.y, page.directions)
    header, rows = compare_rows(page.studies, page.x, page.y, page.directions)
    plot = "" if fig is None else _plot(fig, "compare-plot")
    note = escape(compare_note(page.x, page.y, page.directions))
    return (
        f'<h2>Studies compared</h2><p class="note">{note} A marker and a line style per '
        f"study, a colour per loss.</p>{_simple_table(header, rows)}{plot}"
    )


def _body(page: Page) -> str:
    c = page.configs
    if c.empty:
        return (
            "<p>No configuration has an ok run yet: nothing to rank or plot. Run "
            "<code>ltsearch report</code> again once runs have finished.</p>"
        )
    front = int(c["front"].sum())
    more = f" The first {TABLE_ROWS} of {len(c)} by rank." if len(c) > TABLE_ROWS else ""
    parts = [
        f"<p>{len(c)} configurations with an ok run, {front} on the front of the study's "
        "objectives. The numbers are those of <code>report.md</code> (every configuration "
        "in <code>report/configs.csv</code>).</p>",
        f"<h2>Pareto front: {escape(page.y)} against {escape(page.x)}</h2>",
        _front_section(page),
        _sweeps_section(page),
        "<h2>AP by frequency group</h2><p class=note>Mean [95% interval] over seeds; bold: "
        f"on the front.{more} Click a column header to sort (again: the other way).</p>",
        group_table(c, page.kinds, page.baseline),
        _compare_section(page),
    ]
    return "\n".join(p for p in parts if p)


def render(page: Page) -> str:
    """The whole page as text."""
    data = json.dumps(page_data(page), allow_nan=False).replace("</", "<\\/")
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = f"Study report: {escape(page.name)}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{_asset("report.css")}</style>
<script>{get_plotlyjs()}</script>
</head>
<body>
<h1>{title}</h1>
<p class="note">Generated {now} from the parquet parts in <code>{escape(page.source)}</code>
(a running study shows the runs finished so far).</p>
{_body(page)}
<script type="application/json" id="{DATA_ID}">{data}</script>
<script>{_asset("report.js")}</script>
</body>
</html>
"""


def write_html(path: Path, page: Page) -> Path:
    """Write ``page`` to ``path`` atomically (a kill leaves the old file whole)."""
    text = render(page)
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))


__all__ = ["DATA_ID", "HTML_FILE", "Page", "group_table", "page_data", "render", "write_html"]
