"""``ltsearch`` command line.

Commands: ``validate``, ``run``, ``resume``, ``stop``, ``status`` (``--watch``: the live
view of a running study), ``report``, ``reproduction`` (REPRODUCTION.md: the papers' claims
judged on study directories), ``data synth``, and for writing studies ``new`` (a
commented study file for one loss) and ``schema`` (the study file's JSON Schema, for
editors; :mod:`ltsearch.authoring`).
``validate`` and ``run`` take ``--set KEY=VALUE`` (a dotted YAML path; the value is YAML),
applied to the file before it is validated (:mod:`ltsearch.spec.overrides`). ``validate``,
``stop``, ``status``, ``report``, ``reproduction``, ``new`` and ``schema`` start no Ray and
no training.

Exit codes (:data:`EXIT_CODES`, also in ``ltsearch --help`` and the README): 0 every
(configuration, seed) ok; 1 the study ran but a run failed or it was stopped on a
systematic error; 2 a user error before anything started (one line, no Ray started);
130 interrupted (Ctrl-C or SIGTERM), resumable with ``ltsearch resume``.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ltmodels.errors import LTUserError
from ltsearch.authoring import add_authoring_commands

EXIT_OK, EXIT_FAILED, EXIT_USER_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_CODES = f"""exit codes:
  {EXIT_OK}    every (configuration, seed) of the study ok, or stopped by early stopping
       (or the command succeeded)
  {EXIT_FAILED}    the study ran, but a (configuration, seed) or its stage-1 row failed, or a
       systematic error stopped it (the last line says how many, and where the errors are)
  {EXIT_USER_ERROR}    a user error before anything started (one line; nothing written, no Ray)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C, SIGTERM or `ltsearch stop`); `ltsearch resume DIR`
       continues
"""


def _cmd_validate(args: argparse.Namespace) -> int:
    from ltsearch.spec.overrides import describe, parse_overrides
    from ltsearch.spec.study import load_spec

    spec = _variant(load_spec(args.study, args.set), args)
    if args.check_data:
        with _in_file(args.study):
            spec.check_data()
    seeds = len(spec.search.seeds)
    sets = parse_overrides(args.set)
    print(
        f"{args.study}: ok — study {spec.name!r}, {spec.n_trials} configuration(s) x {seeds} "
        f"seed(s), losses {', '.join(o.name for o in spec.loss.options)}, "
        f"schedule {spec.training.schedule}, results in {spec.study_dir}"
        + (f"; set {describe(spec.to_dict(), sets)}" if sets else "")
    )
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from ltsearch.run.driver import run_study
    from ltsearch.spec.study import load_spec

    spec = _variant(load_spec(args.study, args.set), args)
    if args.storage:
        spec = spec.with_overrides(storage=args.storage)
    if args.mlflow:
        from ltsearch.tracking import check_cli_uri

        check_cli_uri(args.mlflow)
        spec = spec.with_overrides(mlflow=args.mlflow)
    with _in_file(args.study):  # dataset checks name the study file too
        if args.check_data:
            spec.check_data()
        outcome = run_study(spec, address=args.address, progress=not args.quiet)
    return _finish(outcome, report=not args.no_report)


def _variant(spec: Any, args: argparse.Namespace) -> Any:
    """The ``--smoke`` or ``--embedded`` variant of a loaded study, or the study itself."""
    if args.smoke:
        return spec.smoked()
    if args.embedded:
        return spec.embedded_variant()
    return spec


@contextlib.contextmanager
def _in_file(study: str) -> Iterator[None]:
    """Name the study file in a :class:`SpecError` raised without one."""
    from ltsearch.errors import SpecError

    try:
        yield
    except SpecError as exc:
        raise exc.located(file=study) from None


def _cmd_resume(args: argparse.Namespace) -> int:
    from ltsearch.run.driver import resume_study
    from ltsearch.tracking import check_cli_uri

    check_cli_uri(args.mlflow)
    outcome = resume_study(args.study_dir, address=args.address, mlflow=args.mlflow)
    return _finish(outcome, report=not args.no_report)


def _finish(outcome: Any, *, report: bool) -> int:
    """Print where the results are and a last line a script can trust; the exit code
    (module docstring) follows what the study did, not only whether it ran."""
    from ltsearch.status import study_progress

    d = outcome.study_dir
    if outcome.stopped == "interrupted":
        print(
            f"interrupted after {outcome.wall_s:.0f} s: {outcome.finished + outcome.failed}/"
            f"{outcome.total} trials finished; `ltsearch resume {d}` continues",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    print(f"study ran for {outcome.wall_s:.0f} s\n  parquet: {d / 'trials'}")
    if report:
        from ltsearch.report.document import write_report

        path = write_report(d)
        print(f"  report:  {path}")
        plots = sorted((d / "report").glob("pareto*.png"))
        if plots:
            print(f"  pareto plot: {plots[0]}")
        from ltsearch.tracking import log_report

        tracked = log_report(d)  # the report to the study's MLflow run, if it tracks
        if tracked:
            print(f"  {tracked}")
    if outcome.stopped in ("systematic", "storage"):
        print(outcome.message)
    progress = study_progress(d)
    line = f"{d.name}: {progress.line()}; {progress.runs_line()}"
    if not progress.rows_ok + progress.rows_failed:
        print(f"{line}; no (configuration, seed) run finished: see {d / 'tune'}")
        return EXIT_FAILED
    if progress.rows_failed or outcome.stopped or progress.baseline == "failed":
        print(f"{line}: errors in `ltsearch status {d}` (column `error` of {d / 'trials'})")
        return EXIT_FAILED
    if progress.trials_failed:  # failed without a row: its process died past max_retries
        print(
            f"{line}: {progress.trials_failed} trial(s) failed without a row (their process "
            f"died more than search.max_retries times); see the error.txt files in {d / 'tune'}"
        )
        return EXIT_FAILED
    print(line)
    return EXIT_OK


def _cmd_stop(args: argparse.Namespace) -> int:
    from ltsearch.status import stop_study  # light: no torch, Ray or pandas

    try:
        print(stop_study(args.study_dir, wait=not args.no_wait, timeout=args.timeout))
    except TimeoutError as exc:
        print(f"ltsearch: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _cmd_status(args: argparse.Namespace) -> int:
    from ltsearch.status import status_text  # light: no torch, Ray, Optuna or pandas

    if args.watch:
        from ltsearch.live.view import watch

        return watch(Path(args.study_dir), interval=args.interval)
    print(status_text(Path(args.study_dir)))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from ltsearch.report.document import write_report

    path = write_report(
        Path(args.study_dir), x=args.x, y=args.y, compare=[Path(p) for p in args.compare]
    )
    print(path)
    from ltsearch.tracking import log_report

    tracked = log_report(Path(args.study_dir))  # stderr: stdout stays the report's path
    if tracked:
        print(tracked, file=sys.stderr)
    return 0


def _cmd_reproduction(args: argparse.Namespace) -> int:
    from ltsearch.report.reproduction import write_reproduction

    print(write_reproduction([Path(p) for p in args.study_dirs], Path(args.out)))
    return 0


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from ltmodels.data.synthetic import SynthConfig, write_synthetic

    cfg = SynthConfig(
        num_classes=args.classes,
        train_images=args.train_images,
        val_images=args.val_images,
        image_size=args.image_size,
        seed=args.seed,
        min_val_images=args.min_val_images,
    )
    paths = write_synthetic(args.out, cfg)
    print(paths.summary())
    return 0


SET_HELP = (
    "change a value of the study file before it is validated: KEY is a dotted path "
    "(training.stage2.epochs, loss.choice.1.params.xi), VALUE is YAML; repeatable"
)
MLFLOW_HELP = (
    "also log the runs to this MLflow tracking URI (http://HOST:PORT, sqlite:///FILE.db, a "
    "directory; instead of the study's tracking.mlflow; paths relative to here)"
)
CHECK_DATA_HELP = (
    "also read the dataset: annotation files, categories of both splits, every image's "
    "header (a minute or two for real LVIS; without it only the paths are checked)"
)


EMBEDDED_HELP = (
    "the study's whole design (every configuration, 3 seeds) on the embedded long-tail data "
    "with budgets scaled to it (rules: ltsearch.spec.profiles; printed in the report); "
    "results in runs/<name>-embedded"
)


def _add_variant_flags(p: argparse.ArgumentParser, smoke: str, embedded: str) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--smoke", action="store_true", help=smoke)
    group.add_argument("--embedded", action="store_true", help=embedded)


def _add_study_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check a study file (starts nothing)")
    p.add_argument("study", help="study YAML")
    _add_variant_flags(p, "validate the --smoke variant", "validate the --embedded variant")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    p.add_argument("--check-data", action="store_true", help=CHECK_DATA_HELP)
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("run", help="run a study on a Ray cluster (or a local Ray)")
    p.add_argument("study", help="study YAML")
    _add_variant_flags(p, "few trials, tiny data, 1 epoch", EMBEDDED_HELP)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    p.add_argument("--storage", help="results root (default: the study's storage)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--no-report", action="store_true", help="skip report.md at the end")
    p.add_argument("--check-data", action="store_true", help=CHECK_DATA_HELP)
    p.add_argument("--mlflow", metavar="URI", help=MLFLOW_HELP)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("resume", help="continue an interrupted study")
    p.add_argument("study_dir")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")
    p.add_argument("--no-report", action="store_true", help="skip report.md at the end")
    p.add_argument("--mlflow", metavar="URI", help=MLFLOW_HELP)
    p.set_defaults(func=_cmd_resume)

    p = sub.add_parser(
        "stop",
        help="stop a study's driver, wherever it runs (trials in flight stay resumable)",
    )
    p.add_argument("study_dir")
    p.add_argument("--no-wait", action="store_true", help="ask, do not wait for the driver")
    p.add_argument(
        "--timeout", type=float, default=600, help="seconds to wait for it (default 600)"
    )
    p.set_defaults(func=_cmd_stop)

    p = sub.add_parser("status", help="progress, best so far and failures of a study")
    p.add_argument("study_dir")
    p.add_argument(
        "--watch",
        action="store_true",
        help="the driver's live view (trials, ETA, phases, front), until no driver runs it",
    )
    p.add_argument(
        "--interval", type=float, default=2.0, help="seconds between redraws (default 2)"
    )
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("report", help="write report.md with Pareto fronts and tables")
    p.add_argument("study_dir")
    p.add_argument("--x", help="x-axis metric (default: first objective)")
    p.add_argument("--y", help="y-axis metric (default: second objective)")
    p.add_argument("--compare", nargs="*", default=[], help="other study directories")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser(
        "reproduction", help="write REPRODUCTION.md: the papers' claims judged on study results"
    )
    p.add_argument("study_dirs", nargs="+", metavar="STUDY_DIR")
    p.add_argument(
        "--out", default="REPRODUCTION.md", help="output file (default: REPRODUCTION.md here)"
    )
    p.set_defaults(func=_cmd_reproduction)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ltsearch",
        description="Hyperparameter studies for long-tail detection.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_study_commands(sub)
    add_authoring_commands(sub)

    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_cmd", required=True)
    synth = data.add_parser("synth", help="write the embedded synthetic long-tail dataset")
    from ltmodels.data.synthetic import SynthConfig

    d = SynthConfig()
    synth.add_argument("--out", required=True, help="output directory")
    synth.add_argument("--classes", type=int, default=d.num_classes)
    synth.add_argument("--train-images", type=int, default=d.train_images)
    synth.add_argument("--val-images", type=int, default=d.val_images)
    synth.add_argument("--image-size", type=int, default=d.image_size)
    synth.add_argument("--seed", type=int, default=d.seed)
    synth.add_argument(
        "--min-val-images",
        type=int,
        default=d.min_val_images,
        help="every class in at least this many validation images (1-10; more rare-class "
        "validation instances, a less noisy AP_r)",
    )
    synth.set_defaults(func=_cmd_data_synth)
    return parser


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM ends a command like Ctrl-C does: exit 130


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, _sigterm) if main_thread else None
    try:
        return int(args.func(args))
    except LTUserError as exc:
        print(f"ltsearch: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("ltsearch: interrupted; `ltsearch resume <study dir>` continues", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:
        from ltmodels.engine.atomic import disk_full

        full = disk_full(exc)
        if not full:
            raise
        print(
            f"ltsearch: error: the storage is full ({full}); free space, then `ltsearch "
            "resume <study dir>` (finished runs are kept, the ones cut short run again)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, old)


__all__ = ["build_parser", "main"]
