"""``report.html`` in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

``ltsearch report rep --compare rep-b`` runs as a user runs it (a subprocess, relative
paths, from the studies' parent folder) on the hand-written studies of ``test_report``;
the page is then opened from disk in a browser context without network. The test checks
what the browser shows against the parquet and ``report.md``: no console error and no
request beyond the file itself; one drawn point per configuration with both means; the
outlined front points are the rank-1 rows of report.md; hover names the configuration;
a legend click hides a loss; a header click sorts the table. The screenshot is kept as
``test-artifacts/report.png`` (and in the test's tmp dir).

When ``chromium`` is not on PATH, the session installs it with apt-get (root, as on the
project's machines and CI); a failed install fails the test with the command's output.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from playwright.sync_api import Page, sync_playwright

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(HERE), str(REPO / "tests" / "acceptance")]
from test_report import fill, make_study, table_rows  # noqa: E402
from workspace import run_cli  # noqa: E402

from ltsearch.store import ResultStore  # noqa: E402

ARTIFACT = REPO / "test-artifacts" / "report.png"
X, Y = "bbox/APr", "bbox/APf"
INSTALL = (
    ["apt-get", "install", "-y", "-q", "chromium"],
    ["apt-get", "update", "-q"],  # a fresh machine may have no package lists yet
    ["apt-get", "install", "-y", "-q", "chromium"],
)
# per plot div: drawn points of the configuration traces, and of the front's traces
POINTS_JS = """div => {
  const gd = document.getElementById(div);
  const count = meta => Array.from(gd.querySelectorAll('.scatterlayer .trace'))
    .filter(t => t.__data__ && t.__data__[0].trace.meta === meta)
    .reduce((n, t) => n + t.querySelectorAll('.points path.point').length, 0);
  const hashes = meta => gd.data.filter(t => t.meta === meta && t.visible !== 'legendonly')
    .flatMap(t => Array.from(t.customdata));
  return {configs: count('configs'), front: count('front'),
          configHashes: hashes('configs'), frontHashes: hashes('front')};
}"""


@pytest.fixture(scope="session")
def chromium() -> str:
    """The system Chromium's path; installed with apt-get when missing."""
    exe = shutil.which("chromium")
    log = []
    for cmd in INSTALL if exe is None else ():
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        log.append(f"$ {' '.join(cmd)} -> exit {p.returncode}\n{(p.stdout + p.stderr)[-2000:]}")
        exe = shutil.which("chromium")
        if exe is not None:
            break
    if exe is None:
        pytest.fail("this test needs Debian's chromium; installing it failed:\n" + "\n".join(log))
    return exe


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``rep`` and ``rep-b`` under one folder, reported by the CLI with --compare."""
    root = tmp_path_factory.mktemp("browser")
    for name, shift in (("rep", 0.0), ("rep-b", 0.02)):
        path, spec = make_study(root, name)
        fill(path, spec, shift=shift)
    ran = run_cli("report", "rep", "--compare", "rep-b", cwd=root, timeout=300)
    assert ran.rc == 0 and ran.out.strip() == "rep/report.md", ran.describe()
    return root / "rep"


@pytest.fixture
def page(chromium: str) -> Iterator[tuple[Page, list[str], list[str]]]:
    """A page in an offline context; the console errors and the URLs it requested."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium)
        context = browser.new_context(offline=True, viewport={"width": 1280, "height": 900})
        pg = context.new_page()
        errors: list[str] = []
        requests: list[str] = []
        pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        pg.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        pg.on("request", lambda r: requests.append(r.url))
        try:
            yield pg, errors, requests
        finally:
            browser.close()


def parquet_configs(study: Path) -> set[str]:
    """Configurations with an ok run and both (x, y) means defined, from the parquet
    (lvis-api's -1 = undefined), computed here without ltsearch.report."""
    runs = ResultStore(study).load_trials()
    ok = runs[runs["status"] == "ok"].copy()
    for m in (X, Y):
        ok[m] = pd.to_numeric(ok[m]).mask(lambda v: v < 0)
    means = ok.groupby("config_hash")[[X, Y]].mean().dropna()
    return set(means.index)


def _column(pg: Page, name: str) -> list[Any]:
    return pg.evaluate(
        """name => {
          const t = document.getElementById('groups-table');
          const col = Array.from(t.tHead.rows[0].cells).findIndex(c => c.textContent === name);
          return Array.from(t.tBodies[0].rows).map(r => r.cells[col].dataset.sort);
        }""",
        name,
    )


def test_report_html_in_chromium(
    studies: Path, page: tuple[Page, list[str], list[str]], tmp_path: Path
) -> None:
    pg, errors, requests = page
    url = (studies / "report.html").as_uri()
    pg.goto(url)
    pg.wait_for_function("document.querySelectorAll('.js-plotly-plot').length === 3")
    data = json.loads(pg.text_content("#ltsearch-data") or "")

    drawn = pg.evaluate(POINTS_JS, "front-plot")
    expected = parquet_configs(studies)
    assert drawn["configs"] == len(expected) == 4
    assert set(drawn["configHashes"]) == expected == {p["config_hash"] for p in data["plotted"]}
    md = (studies / "report.md").read_text(encoding="utf-8")
    md_front = {r[1] for r in table_rows(md, "## Pareto front") if r[0] == "1"}
    assert drawn["front"] == len(md_front) == 3
    assert {h[:8] for h in drawn["frontHashes"]} == md_front == {h[:8] for h in data["front"]}
    compared = pg.evaluate(POINTS_JS, "compare-plot")
    assert compared["configs"] == 8 and len(set(compared["configHashes"])) == 4  # same configs

    box = pg.locator("#front-plot .points path.point").first.bounding_box()
    assert box is not None
    pg.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    pg.wait_for_selector("#front-plot .hoverlayer .hovertext")
    hover = pg.text_content("#front-plot .hoverlayer") or ""
    assert "loss acsl" in hover and "seeds " in hover and f"{X}: " in hover, hover
    pg.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    ARTIFACT.parent.mkdir(exist_ok=True)
    shutil.copyfile(tmp_path / "report.png", ARTIFACT)

    pg.click("#groups-table th:text-is('bbox/APr')")
    assert [float(v) for v in _column(pg, X)] == [5.0, 10.0, 11.5, 15.0]
    pg.click("#groups-table th:text-is('bbox/APr')")
    assert [float(v) for v in _column(pg, X)] == [15.0, 11.5, 10.0, 5.0]
    pg.click("#groups-table th:text-is('configuration')")
    assert _column(pg, "configuration")[0] == "acsl(xi=0.3)"

    pg.click("#front-plot .legend .traces:has-text('ce')")
    pg.wait_for_function("document.getElementById('front-plot').data[2].visible === 'legendonly'")
    hidden = pg.evaluate(POINTS_JS, "front-plot")
    assert (hidden["configs"], hidden["front"]) == (3, 2)  # ce's point and its front mark gone

    assert errors == [], f"console errors: {errors}"
    assert set(requests) == {url}, f"the page fetched more than itself: {requests}"
