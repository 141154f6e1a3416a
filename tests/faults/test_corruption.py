"""Corruption (issue 17 section 4): real artefacts of a real small study, damaged on disk.

One decoupled study (stage 1 cached, stage 2 on the RoI-feature cache, 2 configurations x 2
seeds) runs once through the CLI; each case copies its project directory and damages one
artefact there: a stage-1 checkpoint (bit flip), a feature-cache shard (bit flip), a parquet
part (bit flip), the Optuna journal (torn last line; deleted). The promise: a damaged artefact
is found before use, rebuilt where it can be (stage 1, the cache, the journal from parquet)
or refused with one line naming the file; never used.
"""

from __future__ import annotations

import shutil
import struct
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from records import record
from study_checks import check_results, journal_trials
from workspace import Ran, run_cli

from ltsearch.store import ResultStore

pytestmark = [pytest.mark.faults, pytest.mark.slow]

NAME = "corrupt-me"
SEEDS = [0, 1]
CONFIGURATIONS = 2
STUDY = f"""\
name: {NAME}
dataset: {{kind: lvis, train: data/lvis_synth_train.json, val: data/lvis_synth_val.json,
          images: data}}
model: {{backbone: tiny, masks: false, min_size: 64, max_size: 64}}
training:
  schedule: decoupled
  stage1: {{loss: ce, epochs: 1, lr: 0.02, batch_size: 4, warmup_iters: 2}}
  stage2: {{epochs: 1, lr: 0.01, batch_size: 4, warmup_iters: 2, finetune: [box_predictor]}}
loss: {{name: acsl, params: {{xi: {{grid: [0.3, 0.7]}}}}}}
search: {{sampler: grid, objectives: [bbox/AP:max], seeds: {SEEDS}}}
resources: {{workers: 1, cpus_per_worker: 1, max_concurrent_trials: 1}}
storage: results
"""
GROUP = "corruption"


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project directory of the finished study (never modified by a case)."""
    root = tmp_path_factory.mktemp("corruption") / "project"
    root.mkdir()
    (root / "study.yaml").write_text(STUDY)
    synth = ("--classes", "4", "--train-images", "8", "--val-images", "4", "--image-size", "64")
    made = run_cli("data", "synth", "--out", "data", *synth, cwd=root, timeout=300)
    assert made.rc == 0, made.describe()
    ran = run_cli("run", "study.yaml", "--no-report", cwd=root, timeout=600)
    assert ran.rc == 0, ran.describe()
    assert not check_results(study_dir(root), name=NAME, trials=CONFIGURATIONS, seeds=SEEDS)
    return root


def study_dir(project: Path) -> Path:
    return project / "results" / NAME


def copy_of(finished: Path, tmp_path: Path) -> Path:
    """A copy of the finished project (the study's absolute dataset paths still resolve)."""
    return Path(shutil.copytree(finished, tmp_path / "project", symlinks=True))


def rows_of(project: Path) -> list[tuple[str, int]]:
    df = ResultStore(study_dir(project)).load_trials()
    return sorted(zip(df["config_hash"], df["seed"].astype(int), strict=True))


def flip_bit(path: Path, offset: int, mask: int = 0x10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def one_line_error(ran: Ran, names: str) -> str:
    """The error line of a refused command: exit 2, one line on stderr naming ``names``."""
    lines = ran.err.strip().splitlines()
    assert ran.rc == 2 and len(lines) == 1 and names in lines[0], ran.describe()
    return lines[0]


def resume(project: Path) -> tuple[Ran, float]:
    t0 = time.perf_counter()
    ran = run_cli("resume", str(study_dir(project)), "--no-report", cwd=project, timeout=600)
    return ran, time.perf_counter() - t0


def test_a_bit_flipped_parquet_part_is_refused_then_rerun(finished: Path, tmp_path: Path) -> None:
    project = copy_of(finished, tmp_path)
    before = rows_of(project)
    part = sorted((study_dir(project) / "trials").glob("part-*-s1.parquet"))[0]
    value = pq.read_table(part).column("bbox/AP")[0].as_py()
    data = part.read_bytes()
    flip_bit(part, data.index(struct.pack("<d", value)) + 2)  # a data page: the metric
    for command in ("status", "report"):
        refused = run_cli(command, str(study_dir(project)), cwd=project)
        line = one_line_error(refused, f"{part}: not a readable parquet part")
        assert "bits changed on disk" in line and f"delete {part.name}" in line
    refused, _ = resume(project)
    one_line_error(refused, f"{part}: not a readable parquet part")

    for kind in ("trials", "epochs", "categories"):  # the fix the line gives
        (study_dir(project) / kind / part.name).unlink()
    ran, recover_s = resume(project)
    assert ran.rc == 0, ran.describe()
    assert "rebuilt it from the parquet parts" in ran.err, ran.describe()
    after = rows_of(project)
    problems = check_results(study_dir(project), name=NAME, trials=CONFIGURATIONS, seeds=SEEDS)
    assert after == before and not problems, problems
    record(
        case="parquet part, bit flipped",
        group=GROUP,
        injected=f"one bit of the stored bbox/AP value in {part.name} flipped",
        promised="status, report and resume refuse with one line naming the file and the fix; "
        "the fix (delete its parts, resume) runs that (configuration, seed) again",
        observed="exit 2 with one line naming the part for each command; after the fix, "
        "resume rebuilt the journal and re-ran the seed",
        rows_compared=len(before),
        rows_lost=len(set(before) - set(after)),
        rows_duplicated=len(after) - len(set(after)),
        recover_s=round(recover_s, 1),
    )


def test_a_torn_journal_line_is_dropped_on_resume(finished: Path, tmp_path: Path) -> None:
    project = copy_of(finished, tmp_path)
    before = rows_of(project)
    journal = study_dir(project) / "optuna.journal"
    data = journal.read_bytes()
    journal.write_bytes(data[: len(data) - 20])  # the last tell, cut short
    ran, recover_s = resume(project)
    assert ran.rc == 0, ran.describe()
    assert "rebuilt" not in ran.err, ran.describe()  # repaired in place, not rebuilt
    after = rows_of(project)
    problems = check_results(study_dir(project), name=NAME, trials=CONFIGURATIONS, seeds=SEEDS)
    assert after == before and not problems, problems
    record(
        case="journal, torn last line",
        group=GROUP,
        injected="the last 20 bytes of optuna.journal cut off (a write cut short)",
        promised="resume drops the torn line and finishes the study; nothing run twice",
        observed="resume exit 0; the trial whose tell was torn was adopted and read back "
        "from parquet",
        rows_compared=len(before),
        rows_lost=len(set(before) - set(after)),
        rows_duplicated=len(after) - len(set(after)),
        recover_s=round(recover_s, 1),
    )


def test_a_deleted_journal_is_rebuilt_from_parquet(finished: Path, tmp_path: Path) -> None:
    project = copy_of(finished, tmp_path)
    before = rows_of(project)
    values = {t.params["acsl.xi"]: t.values for t in journal_trials(study_dir(project), NAME)}
    (study_dir(project) / "optuna.journal").unlink()
    ran, recover_s = resume(project)
    assert ran.rc == 0, ran.describe()
    assert "optuna.journal: missing; rebuilt it from the parquet parts" in ran.err
    assert f"all {CONFIGURATIONS} configurations done" in ran.out, ran.describe()
    rebuilt = {t.params["acsl.xi"]: t.values for t in journal_trials(study_dir(project), NAME)}
    assert rebuilt == values  # the same objective values (mean over seeds): TPE learns alike
    after = rows_of(project)
    problems = check_results(study_dir(project), name=NAME, trials=CONFIGURATIONS, seeds=SEEDS)
    assert after == before and not problems, problems
    record(
        case="journal deleted, parquet kept",
        group=GROUP,
        injected="optuna.journal deleted",
        promised="resume rebuilds the journal from the parquet rows: each configuration one "
        "trial with its params and mean objective values; nothing run again",
        observed="one line on stderr; the rebuilt trials equal the lost ones; no trial ran",
        rows_compared=len(before),
        rows_lost=len(set(before) - set(after)),
        rows_duplicated=len(after) - len(set(after)),
        recover_s=round(recover_s, 1),
    )


def drop_one_seed(project: Path) -> None:
    """Delete one (configuration, seed)'s parts, so that a resume has a seed to run (the
    journal then disagrees with parquet and is rebuilt: that is tested above)."""
    victim = sorted((study_dir(project) / "trials").glob("part-*-s0.parquet"))[0].name
    for kind in ("trials", "epochs", "categories"):
        (study_dir(project) / kind / victim).unlink()


def _flip_and_resume(
    finished: Path, tmp_path: Path, pattern: str
) -> tuple[Path, Ran, dict[str, float]]:
    """Flip one bit mid-file in the one cached file matching ``pattern`` (under
    ``results/_cache``), drop one (configuration, seed) so that resume runs a trial on the
    cache, resume, and check the study; returns the file, the resume and the figures."""
    project = copy_of(finished, tmp_path)
    before = rows_of(project)
    [damaged] = (project / "results" / "_cache").glob(pattern)
    flip_bit(damaged, damaged.stat().st_size // 2)
    drop_one_seed(project)
    ran, recover_s = resume(project)
    assert ran.rc == 0, ran.describe()
    after = rows_of(project)
    problems = check_results(study_dir(project), name=NAME, trials=CONFIGURATIONS, seeds=SEEDS)
    assert after == before and not problems, problems
    return (
        damaged,
        ran,
        {
            "rows_compared": len(before),
            "rows_lost": len(set(before) - set(after)),
            "rows_duplicated": len(after) - len(set(after)),
            "recover_s": round(recover_s, 1),
        },
    )


def test_a_bit_flipped_stage1_checkpoint_is_retrained(finished: Path, tmp_path: Path) -> None:
    weights, ran, figures = _flip_and_resume(finished, tmp_path, "stage1/*/model.pt")
    assert f"{weights}: damaged checkpoint" in ran.out and "training stage 1" in ran.out
    # the cache was built from the old weights: it names them, so it is rebuilt too
    assert "stale cache: source_sha256" in ran.out, ran.describe()
    record(
        case="stage-1 checkpoint, bit flipped",
        group=GROUP,
        injected="one bit flipped mid-file in stage1/<key>/model.pt; one (configuration, "
        "seed) removed so that resume runs a trial on it",
        promised="not used: stage 1 retrained (one log line), the feature cache built from "
        "the old weights rebuilt",
        observed="resume logged the damaged checkpoint, retrained stage 1, rebuilt the stale "
        "cache and stored the seed",
        **figures,
    )


def test_a_bit_flipped_feature_cache_shard_is_rebuilt(finished: Path, tmp_path: Path) -> None:
    _, ran, figures = _flip_and_resume(finished, tmp_path, "features/*/train/features.bin")
    assert "features.bin does not match its sha256); rebuilding" in ran.out, ran.describe()
    assert "damaged checkpoint" not in ran.out and "stage 1 (ce): epoch" not in ran.out
    record(
        case="feature-cache shard, bit flipped",
        group=GROUP,
        injected="one bit flipped mid-file in the cache's train/features.bin; one "
        "(configuration, seed) removed so that resume runs a trial on the cache",
        promised="not used: the whole-file sha256 check on reuse finds it and the cache is "
        "rebuilt (one log line)",
        observed="resume logged the unusable cache, rebuilt it (stage 1 reused) and stored "
        "the seed",
        **figures,
    )
