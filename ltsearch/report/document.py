"""``ltsearch report``: what a study directory holds, read from disk.

It reads only ``spec.yaml`` and the parquet parts (no Ray), so it works while the study
is still running: the report shows the runs finished so far (``ltsearch status``, a
quicker look, is :mod:`ltsearch.status`). ``write_report`` writes
``DIR/report.md`` and its figures and tables under ``DIR/report/``:

- ``pareto.png``: objective x against y (default: the first two objectives), the front;
- ``compare.png`` (with ``compare``): several studies' fronts on one plot;
- ``sweeps.png``: AP, APr, APc, APf against each tuned hyperparameter;
- ``groups.png``: APr/APc/APf of the front configurations;
- ``configs.csv``: every configuration with its means over seeds and Pareto rank.

Beside ``report.md`` it writes ``report.html`` (:mod:`.html`): the same numbers as one
self-contained interactive page.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ltmodels.engine.atomic import write_atomic
from ltmodels.errors import ConfigError
from ltsearch.report.ablation import ablation_section
from ltsearch.report.early import early_stopping_md
from ltsearch.report.html import HTML_FILE, Page, write_html
from ltsearch.report.plots import plot_compare, plot_front, plot_groups, plot_sweeps
from ltsearch.report.sections import (
    REPORT_DIR,
    compare_md,
    domination_md,
    failures_md,
    front_section,
    reading_md,
    summary_md,
)
from ltsearch.report.tables import (
    GROUP_METRICS,
    Summary,
    baseline_mask,
    groups_md,
    prepare_runs,
    summarize,
    with_baseline,
)
from ltsearch.spec.profiles import embedded_rules
from ltsearch.spec.sections import METRICS, Objective
from ltsearch.spec.study import StudySpec
from ltsearch.store import ResultStore
from ltsearch.study_dir import load_study_dir

REPORT_FILE = "report.md"
PLOTS = ("pareto.png", "compare.png", "sweeps.png", "groups.png")


def _directions(objectives: Sequence[Objective], metrics: Sequence[str]) -> list[str]:
    given = {o.metric: o.direction for o in objectives}
    return [given.get(m, "max") for m in metrics]


def _axes(spec: StudySpec, x: str | None, y: str | None) -> tuple[str, str]:
    names = spec.search.metric_names
    dx, dy = (names[0], names[1]) if len(names) >= 2 else ("bbox/APr", "bbox/APf")
    x, y = x or dx, y or dy
    for flag, metric in (("--x", x), ("--y", y)):
        if metric not in METRICS:
            raise ConfigError(
                f"{flag} {metric!r} is not a metric; use one of {', '.join(METRICS)}"
            )
    return x, y


def _load(
    study_dir: Path, objectives: Sequence[Objective], metrics: Sequence[str]
) -> tuple[pd.DataFrame, float, Summary]:
    """Runs (prepared), the factor applied to their AP values, and their summary."""
    runs = ResultStore(study_dir).load_trials()
    if runs.empty:
        return runs, 100.0, Summary(pd.DataFrame(), list(objectives), [])
    runs, scale = prepare_runs(runs)
    return runs, scale, summarize(runs, objectives, metrics)


def _metrics(spec: StudySpec, x: str, y: str) -> list[str]:
    groups = [f"{k}/{m}" for k in ("bbox", "segm") for m in GROUP_METRICS]
    return [*spec.search.metric_names, x, y, *groups]


def _kinds(summary: Summary) -> list[str]:
    return [k for k in ("bbox", "segm") if f"{k}/AP.mean" in summary.configs]


def _group_configs(summary: Summary) -> pd.DataFrame:
    c = summary.configs
    picked = c[c["front"]]
    best = c.drop_duplicates("loss")  # configs are ordered best first
    groups = pd.concat([picked, best[~best["config_hash"].isin(picked["config_hash"])]])
    return with_baseline(summary.baseline, groups)


def _compared(
    others: Sequence[Path], x: str, y: str, dirs: list[str]
) -> list[tuple[str, pd.DataFrame]]:
    """``(study name, configurations)`` of each other study, summarised on (x, y)."""
    objs = [Objective(m, d) for m, d in zip((x, y), dirs, strict=True)]
    out = []
    for other in others:
        spec = load_study_dir(other)
        out.append((spec.name, _load(Path(other), objs, [x, y])[2].configs))
    return out


def _sweep_kind(spec: StudySpec, x: str) -> str:
    """The kind (bbox/segm) of the sweeps and group plots: the reference's, else x's."""
    return spec.reference.metric_kind if spec.reference is not None else x.split("/")[0]


def profile_md(spec: StudySpec) -> str:
    """The scaling rules of an ``--embedded`` study, as :mod:`ltsearch.spec.profiles`
    applied them to the source study."""
    rules = embedded_rules(spec)
    if not rules:
        return ""
    assert spec.profile is not None
    lines = "\n".join(f"- {rule}" for rule in rules)
    return (
        f"## Embedded profile\n\n`{spec.profile.source}` run with `--embedded`: its whole "
        "design on the embedded data, budgets scaled by these rules "
        f"(`ltsearch.spec.profiles`):\n\n{lines}"
    )


def _image(title: str, path: Path | None) -> str:
    return "" if path is None else f"\n\n![{title}]({REPORT_DIR}/{path.name})"


def _result_parts(
    spec: StudySpec,
    out: Path,
    runs: pd.DataFrame,
    summary: Summary,
    xy: tuple[str, str],
    studies: Sequence[tuple[str, pd.DataFrame]],
) -> list[str]:
    """Front, domination, ablation, groups, sweeps and comparison sections (and their
    figures and ``configs.csv`` under ``out``); ``studies`` are the compared studies'
    configurations, this one first (empty: no comparison)."""
    out.mkdir(parents=True, exist_ok=True)
    c, (x, y) = summary.configs, xy
    table = with_baseline(summary.baseline, c)  # the stage-1 row first, rank 0
    write_atomic(out / "configs.csv", lambda f: table.to_csv(f, index=False))
    dirs = _directions(spec.search.parsed_objectives, xy)
    front_png = plot_front(out / "pareto.png", c, x, y, dirs, spec.name)
    parts = ["## Pareto front\n\n" + front_section(summary) + _image("front", front_png)]
    parts.append("## Domination probabilities\n\n" + domination_md(runs, summary))
    if spec.reference is not None:
        parts.append(ablation_section(spec, summary))
    groups = _group_configs(summary)
    kind = _sweep_kind(spec, x)
    parts.append(
        "## AP by frequency group\n\nConfigurations on the front, then each loss's best "
        f"not on it{', after the stage-1 baseline' if len(summary.baseline) else ''}.\n\n"
        + groups_md(groups, _kinds(summary))
        + _image("groups", plot_groups(out / "groups.png", groups, kind))
    )
    sweeps = plot_sweeps(out / "sweeps.png", c, kind)
    if sweeps is not None:
        parts.append(f"## Hyperparameter sweeps ({kind})" + _image("sweeps", sweeps))
    if studies:
        png = plot_compare(out / "compare.png", studies, x, y, dirs)
        parts.append(
            "## Studies compared\n\n" + compare_md(studies, x, y, dirs) + _image("compare", png)
        )
    return parts


def write_report(
    study_dir: Path, *, x: str | None = None, y: str | None = None, compare: Sequence[Path] = ()
) -> Path:
    """Write ``report.md`` (and ``report/*.png``, ``report/configs.csv``) and
    ``report.html`` for a study.

    Args:
        study_dir: the study directory (holds ``spec.yaml`` and ``trials/``).
        x: metric of the front plot's x axis (default: the first objective, or bbox/APr).
        y: metric of its y axis (default: the second objective, or bbox/APf).
        compare: other study directories to draw on one plot with this one.

    Returns:
        The path of ``report.md``.

    Raises:
        SpecError: a directory is not a study directory (no readable ``spec.yaml``).
        ConfigError: ``x`` or ``y`` is not a metric name.
    """
    study_dir = Path(study_dir)
    spec = load_study_dir(study_dir)
    x, y = _axes(spec, x, y)
    objectives = spec.search.parsed_objectives
    runs, scale, summary = _load(study_dir, objectives, _metrics(spec, x, y))
    searched = runs[~baseline_mask(runs)] if not runs.empty else runs  # the search's runs
    parts = [f"# Study report: {spec.name}", summary_md(spec, study_dir, searched, scale)]
    parts.append(profile_md(spec))  # "" unless the study was run with --embedded
    dirs = _directions(objectives, (x, y))
    studies: list[tuple[str, pd.DataFrame]] = []  # this study first, then the compared ones
    if compare and not summary.configs.empty:
        studies = [(spec.name, summary.configs), *_compared(compare, x, y, dirs)]
    if summary.configs.empty:
        parts.append(
            "No configuration has an ok run yet: nothing to rank or plot. Results "
            f"appear in `{study_dir}/trials/` as each (configuration, seed) finishes; "
            "run the report again then."
        )
    else:
        parts += _result_parts(spec, study_dir / REPORT_DIR, runs, summary, (x, y), studies)
    parts.append(early_stopping_md(spec, study_dir, runs, summary, scale))  # "" without it
    parts.append(failures_md(runs))
    parts.append(reading_md(study_dir))
    path = study_dir / REPORT_FILE
    text = "\n\n".join(p for p in parts if p) + "\n"
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))  # a kill leaves the old one
    page = Page(
        name=spec.name, source=f"{study_dir}/trials/", configs=summary.configs, x=x, y=y,
        directions=dirs, kinds=_kinds(summary), sweep_kind=_sweep_kind(spec, x),
        metrics=summary.metrics, studies=studies, baseline=summary.baseline,
    )  # fmt: skip
    write_html(study_dir / HTML_FILE, page)
    for stale in PLOTS:  # a figure this report does not show must not outlive its data;
        if f"]({REPORT_DIR}/{stale})" not in text:  # removed only once report.md is whole
            (study_dir / REPORT_DIR / stale).unlink(missing_ok=True)
    return path


__all__ = ["REPORT_FILE", "write_report"]
