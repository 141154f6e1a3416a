"""``report.html`` without a browser: written beside ``report.md``, self-contained, and
plotting what ``report.md`` lists.

The studies are those of ``test_report`` (4 configurations; ce, acsl xi=0.3 and xi=0.7
on the front; ``rep-b`` the same shifted by +2 points). The page is parsed with the
standard library's HTML parser; ``test_report_browser`` loads it in Chromium.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from plotly.offline import get_plotlyjs

sys.path.insert(0, str(Path(__file__).parent))  # test_report: the hand-written studies
from test_report import fill, make_study, table_rows  # noqa: E402

from ltsearch.report.document import write_report  # noqa: E402
from ltsearch.report.html import DATA_ID, HTML_FILE, Page, render  # noqa: E402


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text of ``<script>`` elements by id."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, Any]]] = []
        self.scripts: dict[str, str] = {}
        self._script: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._script = dict(attrs).get("id") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._script = None

    def handle_data(self, data: str) -> None:
        if self._script:
            self.scripts[self._script] = self.scripts.get(self._script, "") + data


def parse(text: str) -> Tags:
    tags = Tags()
    tags.feed(text)
    return tags


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """The study's directory, its report.md and report.html (compared with rep-b)."""
    root = tmp_path_factory.mktemp("html")
    path, spec = make_study(root)
    fill(path, spec)
    other, ospec = make_study(root, "rep-b")
    fill(other, ospec, shift=0.02)
    md = write_report(path, compare=[other])
    html = path / HTML_FILE
    return path, md.read_text(), html.read_text(encoding="utf-8")


def test_written_beside_report_md_and_offline(pages: tuple[Path, str, str]) -> None:
    path, _, text = pages
    assert (path / "report.md").is_file() and (path / HTML_FILE).is_file()
    assert not list(path.glob(".report.html.*"))  # the atomic write left no temporary file
    tags = parse(text)
    linked = [(t, a) for t, a in tags.tags if "src" in a or (t == "link" and "href" in a)]
    assert linked == [], "the page must load nothing: no src=, no <link href=>"
    assert text.count(get_plotlyjs()) == 1  # plotly.js inlined once, whatever the plots
    assert text.count("Plotly.newPlot(") == 3  # the front, one sweep (acsl xi), the comparison
    for div in ("front-plot", "sweep-0", "compare-plot", "groups-table"):
        assert any(a.get("id") == div for _, a in tags.tags), div


def test_data_matches_report_md(pages: tuple[Path, str, str]) -> None:
    path, md, text = pages
    data = json.loads(parse(text).scripts[DATA_ID])
    assert (data["x"], data["y"], data["directions"]) == ("bbox/APr", "bbox/APf", ["max"] * 2)
    assert data["configurations"] == 4 and len(data["plotted"]) == 4
    listed = {r[1]: r[0] for r in table_rows(md, "## Pareto front")}  # hash prefix -> rank
    assert sorted(h[:8] for h in data["front"]) == sorted(h for h, r in listed.items() if r == "1")
    means = pd.read_csv(path / "report" / "configs.csv").set_index("config_hash")
    for p in data["plotted"]:
        assert p["x"] == pytest.approx(means.loc[p["config_hash"], "bbox/APr.mean"])
        assert p["y"] == pytest.approx(means.loc[p["config_hash"], "bbox/APf.mean"])
    assert [(s["study"], s["plotted"], len(s["front"])) for s in data["compare"]] == [
        ("rep", 4, 3),
        ("rep-b", 4, 3),
    ]


def test_group_table_sort_keys(pages: tuple[Path, str, str]) -> None:
    _, _, text = pages
    tags = parse(text)
    start = next(i for i, (t, a) in enumerate(tags.tags) if a.get("id") == "groups-table")
    end = next(i for i, (t, _) in enumerate(tags.tags) if t == "table" and i > start)
    rows = [t for t, _ in tags.tags[start:end] if t == "tr"]
    cells = [a for t, a in tags.tags[start:end] if t == "td"]
    assert len(rows) == 5  # header and the 4 configurations
    # rank, config, configuration, loss, seeds, then bbox AP/APr/APc/APf: 9 cells a row
    assert len(cells) == 4 * 9
    apr = [c["data-sort"] for c in cells[6::9]]
    assert [float(v) for v in apr] == pytest.approx([15.0, 10.0, 5.0, 11.5])
    assert '"15.0">15.0 [14.' in text  # mean [95% interval], as report.md
    assert '"11.5">11.5</td>' in text  # one defined seed: no interval


def test_empty_study_page(tmp_path: Path) -> None:
    path, _ = make_study(tmp_path)
    write_report(path)
    text = (path / HTML_FILE).read_text(encoding="utf-8")
    assert "No configuration has an ok run yet" in text
    data = json.loads(parse(text).scripts[DATA_ID])
    assert (data["plotted"], data["front"], data["configurations"]) == ([], [], 0)


def test_labels_escaped_and_json_closed(pages: tuple[Path, str, str]) -> None:
    path, _, _ = pages
    configs = pd.read_csv(path / "report" / "configs.csv")
    configs["label"] = "</script><img src=x>"
    page = Page(
        name="a&b", source="trials/", configs=configs, x="bbox/APr", y="bbox/APf",
        directions=["max", "max"], kinds=["bbox"], sweep_kind="bbox", metrics=["bbox/APr"],
    )  # fmt: skip
    text = render(page)
    assert "</script><img" not in text and "<title>Study report: a&amp;b</title>" in text
    data = json.loads(parse(text).scripts[DATA_ID])
    assert {p["label"] for p in data["plotted"]} == {"</script><img src=x>"}


def test_stage1_baseline_row_and_point(pages: tuple[Path, str, str]) -> None:
    """A study's stage-1 row (``training.stage1.evaluate``) leads the group table with rank
    "baseline" and is a cross on the front plot, as report.md shows it first."""
    path, _, _ = pages
    configs = pd.read_csv(path / "report" / "configs.csv")
    baseline = configs.iloc[:1].copy()
    baseline[["loss", "label", "config_hash", "rank"]] = [
        "stage1",
        "stage 1 only (ce)",
        "stage1-0123456789abcdef",
        0,
    ]
    page = Page(
        name="s", source="trials/", configs=configs, x="bbox/APr", y="bbox/APf",
        directions=["max", "max"], kinds=["bbox"], sweep_kind="bbox", metrics=["bbox/APr"],
        baseline=baseline,
    )  # fmt: skip
    text = render(page)
    tags = parse(text)
    start = next(i for i, (t, a) in enumerate(tags.tags) if a.get("id") == "groups-table")
    first = next(a for t, a in tags.tags[start:] if t == "tr" and a.get("class") == "baseline")
    assert first is not None
    row = text.split('<tr class="baseline">', 1)[1].split("</tr>", 1)[0]
    assert ">baseline</td>" in row and ">stage1</td>" in row and "stage 1 only (ce)" in row
    assert text.index('<tr class="baseline">') < text.index('<tr class="front">')
    assert '"name":"stage 1 only"' in text and '"symbol":"x"' in text
    assert '"name":"stage 1 only"' not in render(replace(page, baseline=pd.DataFrame()))
