"""Checks of a finished study directory, on its results rather than on exit codes.

Used by the acceptance tests and by ``.ci/check_quickstart.py``. Each check returns a list
of problems (empty: the check passed), so a caller can print them all at once.

- :func:`check_results`: the Optuna journal holds the expected number of finished trials,
  none failed; the parquet store holds one ok row per (distinct configuration, seed) and no
  failed row.
- :func:`check_report`: ``report.md`` and a Pareto plot exist, and the report's Pareto
  table gives the same configurations, ranks-1 set and means as the parquet rows.
- :func:`snapshot`: what a command that must "run nothing" may not change.

Means are computed here independently of ``ltsearch.report*``: AP fractions in %, -1
(undefined) as NaN, the front as the configurations no other one dominates.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from ltsearch.store import ResultStore

JOURNAL = "optuna.journal"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DASH = "\u2014"  # the report's "undefined"
ROUNDING = 0.05 + 1e-9  # the report prints one decimal
FRONT_ROWS = 30  # the report lists the best 30 configurations (all in configs.csv)


def journal_trials(study_dir: Path, name: str) -> list[Any]:
    """The Optuna study's trials, read from ``<study_dir>/optuna.journal``."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = Path(study_dir) / JOURNAL
    if not path.is_file():  # JournalFileBackend would create it
        raise FileNotFoundError(f"{path}: no Optuna journal")
    storage = JournalStorage(JournalFileBackend(str(path)))
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def search_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of the search's configurations: a study's stage-1 row
    (``training.stage1.evaluate``, column ``baseline``) left out."""
    return df[df["baseline"].isna()] if "baseline" in df.columns else df


def check_results(study_dir: Path, *, name: str, trials: int, seeds: list[int]) -> list[str]:
    """Journal: ``trials`` finished trials, all complete, none left running. Parquet:
    every distinct configuration of those trials once per seed, status ok, nothing else."""
    from optuna.trial import TrialState

    try:
        journal = journal_trials(study_dir, name)
    except (FileNotFoundError, KeyError) as exc:
        return [f"{study_dir}: cannot read study {name!r} from the journal ({exc})"]
    problems = []
    finished = [t for t in journal if t.state.is_finished()]
    if len(finished) != trials:
        problems.append(f"journal: {len(finished)} finished trial(s), expected {trials}")
    # WAITING: a starting point enqueued beyond the budget, never run (not a failure)
    bad = [t for t in journal if t.state not in (TrialState.COMPLETE, TrialState.WAITING)]
    if bad:
        states = ", ".join(f"#{t.number} {t.state.name}" for t in bad)
        problems.append(f"journal: trial(s) neither COMPLETE nor WAITING: {states}")
    configs = {tuple(sorted(t.params.items())) for t in finished}
    df = search_runs(ResultStore(study_dir).load_trials())
    if df.empty:
        return [*problems, f"{study_dir}/trials: no parquet row"]
    failed = df[df["status"] != "ok"]
    for _, r in failed.iterrows():
        error = str(r.get("error") or "").strip().splitlines() or ["no error text"]
        problems.append(f"failed row: {r['loss']} seed {r['seed']}: {error[-1]}")
    ok = df[df["status"] == "ok"]
    expected = len(configs) * len(seeds)
    if len(ok) != expected:
        problems.append(
            f"parquet: {len(ok)} ok row(s), expected {expected} "
            f"({len(configs)} distinct configuration(s) x {len(seeds)} seed(s))"
        )
    if ok["config_hash"].nunique() != len(configs):
        problems.append(
            f"parquet: {ok['config_hash'].nunique()} configuration(s), the journal has "
            f"{len(configs)} distinct"
        )
    for chash, rows in ok.groupby("config_hash"):
        if sorted(rows["seed"].astype(int)) != sorted(seeds):
            problems.append(f"parquet: {chash} has seeds {sorted(rows['seed'])}, not {seeds}")
    return problems


# -- the report ---------------------------------------------------------------------------


def _cells(line: str) -> list[str]:
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def _number(cell: str) -> float:
    """The mean of ``12.3 [11.8, 12.9]``, ``12.3`` or ``—`` (NaN)."""
    if cell.startswith(DASH):
        return math.nan
    return float(cell.split()[0].replace("\u2212", "-"))


def report_front_table(markdown: str) -> tuple[list[str], list[dict[str, Any]]]:
    """The objectives and rows of report.md's Pareto table: ``config`` (hash prefix),
    ``rank`` (int, or None for unranked) and each objective's mean (NaN when undefined).

    Raises:
        ValueError: the report has no Pareto table.
    """
    lines = markdown.splitlines()
    try:
        start = lines.index("## Pareto front")
        head = next(i for i in range(start, len(lines)) if lines[i].startswith("| rank |"))
    except (ValueError, StopIteration):
        raise ValueError("report.md has no '## Pareto front' table") from None
    header = _cells(lines[head])
    objectives = header[4:]  # rank, config, configuration, seeds, objectives...
    rows = []
    for line in lines[head + 2 :]:
        if not line.startswith("|"):
            break
        cells = dict(zip(header, _cells(line), strict=True))
        if cells["rank"] == "baseline":  # the stage-1 row, shown first and never ranked
            continue
        rank = None if cells["rank"] == DASH else int(cells["rank"])
        rows.append(
            {"config": cells["config"], "rank": rank} | {m: _number(cells[m]) for m in objectives}
        )
    return objectives, rows


def parquet_means(df: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Per configuration (index: config_hash) the mean over ok seeds of each metric, in %
    (fractions x 100 unless some value exceeds 1), -1 counted as undefined."""
    columns = [c for c in df.columns if c.startswith(("bbox/", "segm/"))]
    values = df[columns].apply(pd.to_numeric, errors="coerce").astype(float)
    values = values.mask(values < 0)
    scale = 1.0 if (values > 1).to_numpy().any() else 100.0
    ok = (values * scale)[df["status"] == "ok"]
    return ok.groupby(df["config_hash"]).mean()[[m for m in metrics if m in ok]]


def front(means: pd.DataFrame, directions: list[str]) -> set[str]:
    """Configurations with every objective defined that no other such one dominates."""
    signs = [1.0 if d == "max" else -1.0 for d in directions]
    pts = {h: [s * v for s, v in zip(signs, row, strict=True)] for h, row in means.iterrows()}
    pts = {h: p for h, p in pts.items() if not any(math.isnan(v) for v in p)}

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x >= y for x, y in zip(a, b, strict=True)) and a != b

    return {h for h, p in pts.items() if not any(dominates(q, p) for q in pts.values())}


def check_report(
    study_dir: Path, objectives: list[str], *, require_plot: bool | None = None
) -> list[str]:
    """report.md exists and its Pareto table lists every configuration of the parquet
    store with the parquet's means and the same front; ``report/pareto*.png`` exists.

    Args:
        objectives: the study's ``search.objectives`` (``bbox/APr:max``, ...).
        require_plot: whether the plot must exist; None: when some configuration has both
            of the first two objectives (the report's default axes), i.e. when there is
            something to draw.
    """
    study_dir = Path(study_dir)
    md = study_dir / "report.md"
    if not md.is_file():
        return [f"{md}: missing"]
    problems = []
    dirs = dict(o.rsplit(":", 1) for o in objectives)
    means = parquet_means(search_runs(ResultStore(study_dir).load_trials()), list(dirs))
    if require_plot is None:
        axes = list(dirs)[:2]
        require_plot = (
            len(axes) == 2
            and set(axes) <= set(means)
            and bool(means[axes].notna().all(axis=1).any())
        )
    plots = sorted((study_dir / "report").glob("pareto*.png"))
    if require_plot and (not plots or not all(p.read_bytes()[:8] == PNG_MAGIC for p in plots)):
        problems.append(f"{study_dir}/report: no Pareto plot (pareto*.png), found {plots}")
    try:
        shown, rows = report_front_table(md.read_text(encoding="utf-8"))
    except ValueError as exc:
        return [*problems, str(exc)]
    defined = [m for m in dirs if m in means and means[m].notna().any()]
    if shown != defined:
        problems.append(f"report ranks on {shown}, the parquet defines {defined}")
        return problems
    by_prefix = {str(h)[:8]: h for h in means.index}
    listed = {r["config"] for r in rows}
    complete = listed == set(by_prefix) or (len(rows) == FRONT_ROWS and listed <= set(by_prefix))
    if not complete:
        problems.append(f"report lists {[r['config'] for r in rows]}, parquet {sorted(by_prefix)}")
        return problems
    expected_front = front(means[defined], [dirs[m] for m in defined])
    got_front = {by_prefix[r["config"]] for r in rows if r["rank"] == 1}
    if got_front != expected_front:
        problems.append(f"report front {sorted(got_front)}, parquet's {sorted(expected_front)}")
    for r in rows:
        for m in defined:
            want, got = means.loc[by_prefix[r["config"]], m], r[m]
            same = (math.isnan(want) and math.isnan(got)) or abs(want - got) <= ROUNDING
            if not same:
                problems.append(f"report {r['config']} {m} = {got}, parquet mean {want:.3f}")
    return problems


# -- "runs nothing" ------------------------------------------------------------------------


def snapshot(study_dir: Path) -> dict[str, tuple[str, int]]:
    """``{path: (sha256, mtime_ns)}`` of every result part, the journal and Ray Tune's files
    (a new driver run would add or touch some of these)."""
    root = Path(study_dir)
    files = [root / JOURNAL]
    for sub in ("trials", "epochs", "categories", "tune"):
        files += sorted(p for p in (root / sub).rglob("*") if p.is_file())
    out = {}
    for p in files:
        if p.exists():
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            out[str(p.relative_to(root))] = (digest, p.stat().st_mtime_ns)
    return out


__all__ = [
    "check_report", "check_results", "front", "journal_trials", "parquet_means", "search_runs",
    "report_front_table", "snapshot",
]  # fmt: skip
