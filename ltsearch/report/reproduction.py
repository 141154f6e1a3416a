"""``ltsearch reproduction``: REPRODUCTION.md, the papers' claims judged on real runs.

For each study directory given, the claims registered for its base name
(:mod:`ltsearch.report.claims`) are evaluated on its rows: per configuration the mean over
its ok seeds and the 95% Student-t interval (:mod:`ltsearch.report.verdict`), each
comparison judged by :data:`~ltsearch.report.verdict.VERDICT_RULE`, sweeps drawn against
the paper's curve (:mod:`ltsearch.report.claim_figures`); the Markdown is
:mod:`ltsearch.report.reproduction_md`. Studies are loaded as ``ltsearch report`` loads
them (``spec.yaml`` and the parquet parts, no Ray), so a running study can be read too.
The document is deterministic: the same directories give the same text.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ltmodels.engine.atomic import write_atomic
from ltsearch.report.ablation import match_reference
from ltsearch.report.claim_figures import plot_claim
from ltsearch.report.claims import (
    CLAIMS,
    Claim,
    Selector,
    base_name,
    comparisons,
    paper_rows,
    paper_value,
    sweep_rows,
)
from ltsearch.report.reproduction_md import document
from ltsearch.report.tables import GROUP_METRICS, Summary, prepare_runs, summarize
from ltsearch.report.verdict import (
    TAU,
    VERDICT_RULE,
    Stat,
    claim_verdict,
    judge,
    point,
    seed_stat,
)
from ltsearch.rows import BASELINE
from ltsearch.spec.study import StudySpec
from ltsearch.store import ResultStore
from ltsearch.study_dir import load_study_dir

DEFAULT_OUT = "REPRODUCTION.md"
KINDS = ("bbox", "segm")


@dataclass(frozen=True)
class Study:
    """A study directory as read: its spec, its runs (AP in %, every status) and their
    summary per configuration (:func:`ltsearch.report.tables.summarize`)."""

    path: Path
    spec: StudySpec
    runs: pd.DataFrame
    summary: Summary

    def values(self, config_hash: str, metric: str) -> list[float]:
        """A configuration's ok seeds' values of ``metric`` (undefined ones as NaN)."""
        runs = self.runs
        if runs.empty or metric not in runs:
            return []
        ok = runs[(runs["status"] == "ok") & (runs["config_hash"] == config_hash)]
        return [float(v) for v in ok.sort_values("seed")[metric]]


@dataclass(frozen=True)
class Pick:
    """The configuration a selector names in our results: its summary row (None: no
    run matches) and how many configurations matched (the one with most seeds is used,
    then the smallest hash)."""

    selector: Selector
    row: pd.Series | None
    matches: int

    def stat(self, study: Study, metric: str) -> Stat | None:
        """Our mean and interval; the stage-1 row (one model) as a point."""
        if self.row is None:
            return None
        found = seed_stat(study.values(str(self.row["config_hash"]), metric))
        if found is not None and BASELINE in self.selector and found.n == 1:
            return point(found.mean)
        return found


@dataclass(frozen=True)
class Compared:
    """One comparison A vs B: paper numbers, ours, and the verdict."""

    a: Selector
    b: Selector
    paper_a: float | None
    paper_b: float | None
    ours_a: Stat | None
    ours_b: Stat | None
    verdict: str


@dataclass(frozen=True)
class ClaimResult:
    """A claim evaluated on one study."""

    claim: Claim
    metric: str  # the paper's
    ours_metric: str  # ours: the paper's, or its box counterpart (:func:`ours_metric`)
    picks: list[Pick]  # the rows involved, in order of first appearance
    compared: list[Compared]
    verdict: str
    k: int
    n: int
    figure: Path | None


def load_study(path: Path) -> Study:
    """Read a study directory (:func:`ltsearch.study_dir.load_study_dir`,
    :class:`ltsearch.store.ResultStore`); AP values in % (:func:`prepare_runs`).

    Raises:
        SpecError: not a study directory.
    """
    spec = load_study_dir(path)
    runs = ResultStore(path).load_trials()
    if runs.empty:
        return Study(Path(path), spec, runs, Summary(pd.DataFrame(), [], []))
    runs, _ = prepare_runs(runs)
    metrics = [f"{k}/{m}" for k in KINDS for m in GROUP_METRICS]
    metrics += [c.metric for c in CLAIMS.get(base_name(spec.name), ()) if c.metric]
    return Study(Path(path), spec, runs, summarize(runs, [], metrics))


def pick(study: Study, selector: Selector) -> Pick:
    """Our configuration for ``selector``: the stage-1 row for ``{baseline: stage1}``,
    else :func:`~ltsearch.report.ablation.match_reference` with the paper's row the
    selector names (every parameter the row sets, defaults honoured); none when the
    selector names no single row (the comparison then has no paper number either)."""
    summary = study.summary
    rows = paper_rows(study.spec, selector)
    if BASELINE in selector:
        hit = summary.baseline
    elif len(rows) == 1:
        hit = match_reference(study.spec, summary.configs, rows[0])
    else:
        return Pick(selector, None, 0)
    if hit.empty:
        return Pick(selector, None, 0)
    best = hit.sort_values(["n", "config_hash"], ascending=[False, True], kind="stable")
    return Pick(selector, best.iloc[0], len(hit))


def ours_metric(study: Study, metric: str) -> str:
    """The metric ours are read in: the claim's, or for a segm metric that no ok run of
    the study has (a box-only study: feature-cache trials without ``full_eval``, or a
    model without masks) its bbox counterpart, which the document then names."""
    runs = study.runs
    if not metric.startswith("segm/") or runs.empty:
        return metric
    ok = runs[runs["status"] == "ok"]
    if metric in ok and ok[metric].notna().any():
        return metric
    return "bbox/" + metric.split("/", 1)[1]


def evaluate(claim: Claim, study: Study, figure: Path | None) -> ClaimResult:
    """Judge ``claim`` on ``study``; for a sweep, draw its figure at ``figure``. The
    paper's direction is read in the claim's metric, ours in :func:`ours_metric`."""
    spec, metric = study.spec, claim.metric_of(study.spec)
    mine = ours_metric(study, metric)
    pairs = comparisons(claim, spec)
    selectors: list[Selector] = list(sweep_rows(spec, claim.sweep)) if claim.sweep else []
    for a, b in pairs:
        selectors += [s for s in (a, b) if s not in selectors]
    picks = [pick(study, s) for s in selectors]
    compared = []
    for a, b in pairs:
        pa, pb = paper_value(spec, a, metric), paper_value(spec, b, metric)
        oa = picks[selectors.index(a)].stat(study, mine)
        ob = picks[selectors.index(b)].stat(study, mine)
        compared.append(Compared(a, b, pa, pb, oa, ob, judge(pa, pb, oa, ob)))
    verdict, k, n = claim_verdict([c.verdict for c in compared])
    drawn = None
    if claim.sweep and figure is not None:
        points = [(p.selector, paper_value(spec, p.selector, metric), p.stat(study, mine))
                  for p in picks]  # fmt: skip
        drawn = plot_claim(figure, claim, (metric, mine), points)
    return ClaimResult(claim, metric, mine, picks, compared, verdict, k, n, drawn)


def _figure_names(studies: Sequence[Study]) -> list[str]:
    """A unique file-name prefix per study: its name, ``-2``, ``-3``... for repeats."""
    seen: dict[str, int] = {}
    out = []
    for s in studies:
        seen[s.spec.name] = seen.get(s.spec.name, 0) + 1
        count = seen[s.spec.name]
        out.append(s.spec.name if count == 1 else f"{s.spec.name}-{count}")
    return out


def command_line(study_dirs: Sequence[Path | str], out: Path | str) -> str:
    """The command that writes this document, paths as given."""
    return shlex.join(["ltsearch", "reproduction", *map(str, study_dirs), "--out", str(out)])


def write_reproduction(study_dirs: Sequence[Path | str], out: Path | str) -> Path:
    """Write REPRODUCTION.md at ``out`` and its figures in ``<out stem>_figures/`` beside it.

    Args:
        study_dirs: study directories (``<storage>/<name>``), in any order (the document
            sorts them by study name, then path).
        out: the Markdown file; relative to the working directory when relative.

    Returns:
        ``out``.

    Raises:
        SpecError: a directory is not a study directory (nothing is written).
    """
    out = Path(out)
    studies = sorted((load_study(Path(d)) for d in study_dirs),
                     key=lambda s: (s.spec.name, str(s.path)))  # fmt: skip
    fig_dir = out.parent / f"{out.stem}_figures"
    results = []
    for study, prefix in zip(studies, _figure_names(studies), strict=True):
        claims = CLAIMS.get(base_name(study.spec.name), ())
        results.append(
            (study, [evaluate(c, study, fig_dir / f"{prefix}.{c.id}.png") for c in claims])
        )
    text = document(command_line(study_dirs, out), VERDICT_RULE, results, link=fig_dir.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda f: f.write(text.encode("utf-8")))
    if fig_dir.is_dir():  # a figure the document no longer links must not outlive it
        for stale in fig_dir.glob("*.png"):
            if f"]({fig_dir.name}/{stale.name})" not in text:
                stale.unlink()
    return out


__all__ = [
    "DEFAULT_OUT", "TAU", "VERDICT_RULE", "ClaimResult", "Compared", "Pick", "Study",
    "claim_verdict", "command_line", "evaluate", "judge", "load_study", "pick", "seed_stat",
    "write_reproduction",
]  # fmt: skip
