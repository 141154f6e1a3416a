"""Fail unless ``make quickstart`` left complete results in ``runs/quickstart``.

Run by ``.ci/run`` after ``make quickstart``, from the repository root::

    .venv/bin/python .ci/check_quickstart.py [STUDY_DIR] [--study studies/quickstart.yaml]

Checks (:mod:`study_checks` in tests/acceptance, shared with the acceptance tests): the
Optuna journal holds the study's number of trials, all complete; parquet holds one ok row
per (distinct configuration, seed) and no failed row; report.md and the Pareto plot exist
and the report's Pareto table matches the parquet's means. Exit code 1 lists every problem.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "acceptance"))
from study_checks import check_report, check_results  # noqa: E402

from ltsearch.spec.study import load_spec  # noqa: E402
from ltsearch.store import ResultStore  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study_dir", nargs="?", type=Path, default=Path("runs/quickstart"))
    parser.add_argument("--study", type=Path, default=ROOT / "studies" / "quickstart.yaml")
    args = parser.parse_args(argv)
    spec = load_spec(args.study)
    seeds = list(spec.search.seeds)
    problems = check_results(args.study_dir, name=spec.name, trials=spec.n_trials, seeds=seeds)
    problems += check_report(args.study_dir, list(spec.search.objectives), require_plot=True)
    if problems:
        print(f"check_quickstart: {args.study_dir} FAILED:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    rows = ResultStore(args.study_dir).load_trials()
    print(
        f"check_quickstart: {args.study_dir} ok: {spec.n_trials} trials in the journal, "
        f"{len(rows)} ok rows ({rows['config_hash'].nunique()} configurations x "
        f"{len(seeds)} seeds), report.md and its Pareto plot match the parquet"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
