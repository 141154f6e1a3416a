"""Start-up time of the ``ltsearch`` CLI: ``--help``, ``validate`` and ``status``.

Each command runs as a subprocess of the installed ``ltsearch`` entry point (the one next to
``sys.executable``), so every run pays a fresh interpreter's imports, as a user typing it
does. One untimed warm-up run per command writes the bytecode caches; the figure is the
median wall time of ``--repeat`` runs (5), printed against its target as a ratio (< 1 is
within target): 0.5 s for ``ltsearch --help`` and ``ltsearch validate`` of every file in
``studies/``, 1 s for ``ltsearch status`` of a finished study.

The study given as an argument is the one ``status`` reads; without one, the script builds
a finished quickstart study in a temporary directory in about a second: ``spec.yaml`` from
``studies/quickstart.yaml``, an Optuna journal written by Optuna itself (24 complete trials,
the last one a repeated TPE suggestion, as a real study can end) and parquet rows of 23
configurations x 2 seeds. ``--smoke-run`` instead runs ``ltsearch run
studies/quickstart.yaml --smoke`` into a temporary storage first (minutes).

    .venv/bin/python bench/bench_cli_start.py [STUDY_DIR] [--repeat 5] [--smoke-run]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
STUDIES = REPO / "studies"
TARGET_S = {"help": 0.5, "validate": 0.5, "status": 1.0}
REPEATED = 23  # trial 24 repeats configuration 23's parameters: read back, not stored again


def entry_point() -> Path:
    """The ``ltsearch`` script installed next to the running interpreter."""
    path = Path(sys.executable).with_name("ltsearch")
    if not path.is_file():
        sys.exit(f"no ltsearch entry point at {path}; install the package (`make install`)")
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}


def time_command(argv: list[str], repeat: int) -> list[float]:
    """Wall seconds of ``repeat`` runs of ``argv`` after one untimed warm-up run.

    Raises:
        SystemExit: a run exits non-zero (its stderr is printed).
    """
    times = []
    for i in range(repeat + 1):
        t0 = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, env=_env(), cwd="/")
        dt = time.perf_counter() - t0
        if proc.returncode:
            sys.exit(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr}")
        if i:
            times.append(dt)
    return times


def fake_study(storage: Path) -> Path:
    """A finished quickstart study under ``storage``; returns its directory."""
    import optuna
    from optuna.distributions import FloatDistribution

    from ltsearch.spec.study import load_spec
    from ltsearch.store import ResultStore

    spec = load_spec(STUDIES / "quickstart.yaml").with_overrides(storage=str(storage))
    root = Path(spec.study_dir)
    root.mkdir(parents=True)
    (root / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    backend = optuna.storages.journal.JournalFileBackend(str(root / "optuna.journal"))
    study = optuna.create_study(
        study_name=spec.name,
        storage=optuna.storages.JournalStorage(backend),
        directions=["maximize", "maximize"],
    )
    store = ResultStore(root)
    dist = {"acsl.xi": FloatDistribution(0.05, 0.95)}
    for i in range(spec.n_trials):
        config = min(i, REPEATED - 1)
        trial = study.ask(dist) if i < REPEATED else study.ask()
        for seed in spec.search.seeds if i < REPEATED else ():
            store.write_trial(
                {
                    "study": spec.name, "trial_id": f"t{i:03d}", "config_hash": f"{config:016x}",
                    "loss": "acsl", "param.acsl.xi": 0.05 + 0.03 * config, "seed": seed,
                    "status": "ok", "bbox/AP": 0.2, "bbox/APr": 0.1 + 0.002 * config,
                    "bbox/APf": 0.3 - 0.002 * config, "time_total_s": 10.0,
                }
            )  # fmt: skip
        study.tell(trial, [0.1 + 0.002 * config, 0.3 - 0.002 * config])
    return root


def smoke_study(storage: Path) -> Path:
    """The study directory of ``ltsearch run studies/quickstart.yaml --smoke``."""
    argv = [str(entry_point()), "run", str(STUDIES / "quickstart.yaml"), "--smoke"]
    argv += ["--storage", str(storage), "--quiet", "--no-report"]
    subprocess.run(argv, check=True, env=_env())
    (root,) = [p for p in storage.iterdir() if (p / "spec.yaml").is_file()]
    return root


def report(label: str, kind: str, times: list[float]) -> float:
    """Print one command's median against its target; return the ratio."""
    median = statistics.median(times)
    ratio = median / TARGET_S[kind]
    verdict = "ok" if ratio < 1 else "OVER"
    print(
        f"  {label:<48} median {median:6.3f} s (min {min(times):.3f}, max {max(times):.3f})"
        f"  target {TARGET_S[kind]:.1f} s  ratio {ratio:4.2f}  {verdict}",
        flush=True,
    )
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("study_dir", nargs="?", help="study directory for `ltsearch status`")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per command")
    parser.add_argument("--smoke-run", action="store_true", help="status of a real smoke run")
    args = parser.parse_args()
    exe = str(entry_point())
    print(f"{exe}; median of {args.repeat} fresh-interpreter runs after one warm-up")
    print(f"load average at start: {os.getloadavg()[0]:.1f}", flush=True)
    ratios = [report("ltsearch --help", "help", time_command([exe, "--help"], args.repeat))]
    for study in sorted(STUDIES.glob("*.yaml")):
        times = time_command([exe, "validate", str(study)], args.repeat)
        ratios.append(report(f"ltsearch validate studies/{study.name}", "validate", times))
    with tempfile.TemporaryDirectory() as tmp:
        if args.study_dir:
            root, how = Path(args.study_dir).resolve(), "given"
        elif args.smoke_run:
            root, how = smoke_study(Path(tmp)), "built by `ltsearch run --smoke`"
        else:
            t0 = time.perf_counter()
            root = fake_study(Path(tmp))
            how = f"fake finished quickstart study built in {time.perf_counter() - t0:.1f} s"
        print(f"status of {root} ({how}):", flush=True)
        ratios.append(report("ltsearch status DIR", "status", time_command(
            [exe, "status", str(root)], args.repeat
        )))  # fmt: skip
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    worst = max(ratios)
    print(f"worst ratio {worst:.2f}: {'all within target' if worst < 1 else 'OVER target'}")


if __name__ == "__main__":
    main()
