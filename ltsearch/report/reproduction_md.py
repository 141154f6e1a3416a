"""The Markdown of REPRODUCTION.md (:mod:`ltsearch.report.reproduction` evaluates the
claims; this module only writes them down). Numbers have fixed formats (two decimals), so
the document can be diffed between runs.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ltsearch.report.claims import (
    CLAIMS,
    all_claims,
    base_name,
    paper_value,
    selector_label,
)
from ltsearch.report.sections import wall_time
from ltsearch.report.tables import MINUS, baseline_mask, md_table, short_id
from ltsearch.report.verdict import (
    INCONCLUSIVE,
    NOT_JUDGED,
    SEEDS_CAP,
    SEEDS_TO_DECIDE,
    TAU,
    Stat,
    paper_difference,
    seed_stat,
    seeds_to_decide,
)
from ltsearch.rows import row_label
from ltsearch.spec.study import StudySpec

if TYPE_CHECKING:
    from ltsearch.report.reproduction import ClaimResult, Compared, Study

DASH = "\u2014"


def _num(value: float | None) -> str:
    return DASH if value is None or math.isnan(value) else f"{value:.2f}"


def _signed(value: float | None) -> str:
    return DASH if value is None else f"{value:+.2f}".replace("-", MINUS)


def ours(stat: Stat | None) -> str:
    """``12.34 ± 0.56 (3)``: mean, half-width of the 95% t interval, seeds; ``12.34 (1)``
    for one seed (no interval); ``12.34 (point)`` for the stage-1 row (one model)."""
    if stat is None:
        return DASH
    if stat.n < 2 and stat.usable:
        return f"{stat.mean:.2f} (point)"
    if stat.n < 2:
        return f"{stat.mean:.2f} ({stat.n})"
    return f"{stat.mean:.2f} \u00b1 {stat.half:.2f} ({stat.n})"


def dataset_md(spec: StudySpec) -> str:
    """The data a study ran on; for the embedded synthetic data, its class groups."""
    ds = spec.dataset
    if ds.kind != "synthetic":
        return f"LVIS {ds.version} (val `{ds.val}`)"
    from ltmodels.data.synthetic import SynthConfig, class_table  # torch-free

    cfg = SynthConfig(**ds.synth_kwargs())
    groups = Counter(c["group"] for c in class_table(cfg))
    return (
        f"the embedded synthetic long-tail dataset: {cfg.num_classes} classes ({groups['r']} "
        f"rare, {groups['c']} common, {groups['f']} frequent, as "
        "`ltmodels.data.synthetic.class_table` plans them), "
        f"{cfg.train_images} train / {cfg.val_images} val images of {cfg.image_size} px"
    )


def scaling_rules(spec: StudySpec) -> list[str]:
    """The rules an ``--embedded`` study was scaled by (:mod:`ltsearch.spec.profiles`);
    empty for any other study."""
    if getattr(spec, "profile", None) is None:
        return []
    from ltsearch.spec.profiles import embedded_rules

    return embedded_rules(spec)


def _profile(spec: StudySpec) -> str:
    profile = getattr(spec, "profile", None)
    if profile is not None:
        return f"{profile.name}, made from `{profile.source}`"
    if spec.name.endswith("-smoke"):
        return "smoke (`--smoke`: a plumbing check on tiny data, not evidence)"
    return "as the study file gives it"


def spread_md(study: Study) -> str:
    """The seed-to-seed spread of APr: the mean over configurations (with 2 or more seeds)
    of the standard deviation across their seeds."""
    ref = study.spec.reference
    from ltsearch.report.reproduction import ours_metric  # it imports this module

    metric = ours_metric(study, f"{ref.metric_kind if ref is not None else 'bbox'}/APr")
    configs = study.summary.configs
    hashes = [] if configs.empty else [str(h) for h in configs["config_hash"]]
    stats = [seed_stat(study.values(h, metric)) for h in hashes]
    sds = [s.sd for s in stats if s is not None and s.n >= 2]
    if not sds:
        return f"seed-to-seed spread of {metric}: {DASH} (no configuration has 2 seeds)"
    decoupled = study.spec.training.schedule == "decoupled"
    return (
        f"seed-to-seed spread of {metric}: {math.fsum(sds) / len(sds):.2f} AP points (mean "
        f"over {len(sds)} configuration(s) of the standard deviation across their seeds)"
    ) + (
        "; the seeds of a decoupled study fine-tune one stage-1 model (as the papers "
        "do), so this and every interval below are stage 2's spread, not stage 1's"
        if decoupled
        else ""
    )


def _runs_line(study: Study) -> str:
    runs = study.runs
    if runs.empty:
        return "runs: none yet"
    count = runs["status"].value_counts()
    stage1 = int((baseline_mask(runs) & (runs["status"] == "ok")).sum())
    ok = f"{int(count.get('ok', 0))} ok" + (f" ({stage1} of them stage-1 rows)" if stage1 else "")
    reused = int(runs["reused_from"].notna().sum()) if "reused_from" in runs else 0
    ok += f" ({reused} reused from other studies)" if reused else ""
    return (
        f"runs: {ok}, {int(count.get('failed', 0))} failed, {int(count.get('stopped', 0))} "
        "stopped (failed and stopped runs are left out of every number below)"
    )


def _failed_lines(study: Study, limit: int = 10) -> list[str]:
    """One sub-item per failed run: its configuration, seed and the error's first line (the
    whole traceback is the row's ``error``), so a reader knows what is missing and why."""
    runs = study.runs
    if runs.empty:
        return []
    failed = runs[runs["status"] == "failed"].sort_values(["config_hash", "seed"])
    lines = []
    for _, r in failed.iloc[:limit].iterrows():
        error = str(r.get("error") or "no error recorded").strip().splitlines() or [""]
        lines.append(f"  - failed: `{row_label(r)}` seed {int(r['seed'])}: {error[0][:200]}")
    if len(failed) > limit:
        lines.append(f"  - and {len(failed) - limit} more failed runs (the `error` column)")
    return lines


def study_header(study: Study) -> str:
    spec = study.spec
    base = base_name(spec.name)
    source = f" ({spec.reference.source})" if spec.reference is not None else ""
    lines = [
        f"## Study `{spec.name}`",
        "",
        f"Claims of `{base}`{source}, from `{study.path}`.",
        "",
        f"- profile: {_profile(spec)}",
        f"- dataset: {dataset_md(spec)}",
        f"- {_runs_line(study)}",
        *_failed_lines(study),
        f"- wall time: {wall_time(study.runs) if not study.runs.empty else 'nothing run yet'}",
        f"- {spread_md(study)}",
    ]
    rules = scaling_rules(spec)
    if rules:
        lines += ["", "Scaling rules of the embedded profile (`ltsearch.spec.profiles`):", ""]
        lines += [f"- {r}" for r in rules]
    unexpressed = unexpressed_md(spec)
    if unexpressed:
        lines += ["", unexpressed]
    return "\n".join(lines)


def unexpressed_md(spec: StudySpec) -> str:
    """The paper's rows the study cannot express (``reference.unexpressed``), with why."""
    ref = spec.reference
    if ref is None or not ref.unexpressed:
        return ""
    rows = []
    for u in ref.unexpressed:
        numbers = ", ".join(f"{k} {v:g}" for k, v in u.numbers.items()) or DASH
        rows.append([u.row, u.why, numbers])
    return (
        "Rows of the paper's table this study cannot express (not run, not judged):\n\n"
        + md_table(["paper row", "why", "paper numbers"], rows)
    )


def _columns(study: Study, result: ClaimResult) -> list[str]:
    """The claim's metric and AP, of both kinds, where the paper or we give a number."""
    kind, name = result.metric.split("/")
    kinds = [kind, "segm" if kind == "bbox" else "bbox"]
    cols = [f"{k}/{n}" for n in dict.fromkeys([name, "AP"]) for k in kinds]
    return [
        c
        for c in cols
        if any(
            paper_value(study.spec, p.selector, c) is not None or p.stat(study, c) is not None
            for p in result.picks
        )
    ]


def rows_md(study: Study, result: ClaimResult) -> str:
    """The rows involved: the paper's numbers and ours, per metric column."""
    cols = _columns(study, result)
    header = ["configuration", "our run"]
    header += [f"{who} {c}" for c in cols for who in ("paper", "ours")]
    rows = []
    for p in result.picks:
        match = DASH if p.row is None else f"{short_id(p.row)} {p.row['label']}"
        if p.matches > 1:
            match += f" (1 of {p.matches} matches)"
        cells = []
        for c in cols:
            cells += [_num(paper_value(study.spec, p.selector, c)), ours(p.stat(study, c))]
        rows.append([selector_label(p.selector), match, *cells])
    return md_table(header, rows)


def _seeds_to_decide(c: Compared) -> str:
    """The comparison's :func:`~ltsearch.report.verdict.seeds_to_decide`, for inconclusive
    ones only (blank otherwise)."""
    if c.verdict != INCONCLUSIVE:
        return ""
    n = seeds_to_decide(c.ours_a, c.ours_b)
    if n is None:
        return "-"
    return f"> {SEEDS_CAP}" if n > SEEDS_CAP else str(n)


def comparisons_md(result: ClaimResult) -> str:
    header = ["A", "B", "paper A", "paper B", "Dp", "ours A", "ours B", "ours A \u2212 B"]
    rows = []
    for c in result.compared:
        diff = None
        if c.ours_a is not None and c.ours_b is not None:
            diff = c.ours_a.mean - c.ours_b.mean
        rows.append([
            selector_label(c.a), selector_label(c.b), _num(c.paper_a), _num(c.paper_b),
            _signed(paper_difference(c.paper_a, c.paper_b)), ours(c.ours_a), ours(c.ours_b),
            _signed(diff), c.verdict, _seeds_to_decide(c),
        ])  # fmt: skip
    return md_table([*header, "verdict", "seeds to decide"], rows)


def verdict_line(result: ClaimResult) -> str:
    listed = sum(c.verdict == NOT_JUDGED for c in result.compared)
    more = f"; {listed} listed, not judged" if listed else ""
    return (
        f"**Verdict: {result.verdict}** \u2014 {result.k} of {result.n} comparisons "
        f"reproduced{more}."
    )


def _metric_line(result: ClaimResult) -> str:
    if result.ours_metric == result.metric:
        return f"Metric `{result.metric}`"
    return (
        f"Metric: the paper's `{result.metric}`, ours `{result.ours_metric}` (this study "
        "evaluated boxes only; the verdict reads the paper's direction in its metric and "
        "ours in our box numbers)"
    )


def claim_md(study: Study, result: ClaimResult, link: str) -> str:
    claim = result.claim
    how = (
        f"sweep over {', '.join(claim.sweep)}: the paper's best row against every other"
        if claim.sweep
        else "the comparisons the paper's claim makes (A above B)"
    )
    parts = [
        f"### `{claim.id}`: {claim.statement}",
        _metric_line(result) + f"; {how}.",
        rows_md(study, result),
        comparisons_md(result) if result.compared else "No comparison: the paper gives no rows.",
        verdict_line(result),
    ]
    if result.figure is not None:
        parts.append(
            f"![{claim.id}]({link}/{result.figure.name})\n\n*{claim.id}: ours (left axis: "
            "mean over seeds, band: 95% Student-t interval) and the paper's (right axis) "
            f"against {', '.join(claim.sweep)}. The two y-axes are rescaled independently: "
            "compare the shapes, not the levels.*"
        )
    elif claim.sweep:
        parts.append("No figure: neither the paper nor our runs give a swept row a number.")
    return "\n\n".join(parts)


def tally(summary: Sequence[Sequence[str]]) -> str:
    """One line under the title: how many claims got each verdict."""
    counts = Counter(row[2] for row in summary)
    order = ("reproduced", "not reproduced", "inconclusive", "not run")
    parts = [f"{counts.get(v, 0)} {v}" for v in order]
    return (
        f"**Verdicts of the {len(summary)} claims:** {', '.join(parts)} (the summary at the "
        "end lists them)."
    )


def document(
    command: str,
    rule: str,
    results: Sequence[tuple[Study, Sequence[ClaimResult]]],
    *,
    link: str,
) -> str:
    """REPRODUCTION.md: how it was made, the rule, each study and its claims, the claims
    not run, and a summary table. ``link``: the figures' folder, relative to the file."""
    parts = [
        "# Reproduction of the papers' claims",
        f"Generated by `{command}` from each study directory's `spec.yaml` and parquet rows "
        "(`trials/`); run it again to regenerate. AP values in %. Ours: `mean \u00b1 "
        "half-width (n)`, the mean over a configuration's ok seeds, the half-width of its 95% "
        "Student-t interval and n, its seeds with a value (one seed: no interval).",
        f"## Verdict rule\n\n> {rule}\n\nTAU = {TAU:.1f}. Verdicts are computed "
        f"(`ltsearch.report.verdict`), never set by hand.\n\n{SEEDS_TO_DECIDE}",
    ]
    summary = []
    for study, claim_results in results:
        parts.append(study_header(study))
        base = base_name(study.spec.name)
        if not CLAIMS.get(base):
            parts.append(f"No claims are registered for `{base}` (`ltsearch/report/claims.py`).")
        for r in claim_results:
            parts.append(claim_md(study, r, link))
            summary.append([r.claim.id, study.spec.name, r.verdict, f"{r.k}/{r.n}"])
    given = {base_name(s.spec.name) for s, _ in results}
    missing = [c for c in all_claims() if c.study not in given]
    if missing:
        rows = [
            [c.id, c.study, c.statement,
             f"no study directory of `{c.study}` given (`{c.study}`, `{c.study}-embedded` "
             f"or `{c.study}-smoke`)"]
            for c in missing
        ]  # fmt: skip
        parts.append("## Not run\n\n" + md_table(["claim", "study", "statement", "reason"], rows))
        summary += [[c.id, c.study, "not run", DASH] for c in missing]
    parts.append(
        "## Summary\n\n"
        + md_table(["claim", "study", "verdict", "comparisons reproduced (k/n)"], summary)
    )
    parts.insert(2, tally(summary))
    return "\n\n".join(parts) + "\n"


__all__ = ["dataset_md", "document", "ours", "scaling_rules", "spread_md"]
