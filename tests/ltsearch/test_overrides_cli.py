"""``--set KEY=VALUE`` on ``ltsearch validate`` and ``ltsearch run``, typed as a user types it:
the study in ``proj/``, the command run from ``work/`` with relative paths.

A set value is validated like one in the file (``validate`` shows it; a bad key or value is
one line naming the file and the ``--set``, exit 2), it lands in the study directory's
``spec.yaml`` and it is part of the study's identity: the same overrides resume the study,
different ones are refused with the line a changed study file gets.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "acceptance"))
from workspace import Ran, run_cli  # noqa: E402

STUDY = """\
name: set-check
dataset: {kind: synthetic, classes: 4, train_images: 6, val_images: 3, image_size: 64}
model: {backbone: tiny, masks: false}
training: {schedule: end_to_end, epochs: 1, lr: 0.02, batch_size: 2, warmup_iters: 2}
loss: {name: acsl, params: {xi: {uniform: [0.1, 0.9]}}}
search: {sampler: tpe, objectives: [bbox/AP:max], trials: 2, seeds: [0]}
resources: {workers: 1, cpus_per_worker: 1, max_concurrent_trials: 1}
storage: results
"""
FILE = "../proj/study.yaml"


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "study.yaml").write_text(STUDY)
    (tmp_path / "work").mkdir()
    return tmp_path / "work"


def one_error(ran: Ran) -> str:
    """The single stderr line of a refused command (exit 2, nothing else printed)."""
    lines = ran.err.strip().splitlines()
    assert ran.rc == 2 and len(lines) == 1 and "Traceback" not in ran.err, ran.describe()
    assert lines[0].startswith(f"ltsearch: error: {FILE}: "), ran.describe()
    return lines[0]


def test_validate_shows_the_set_values(work: Path) -> None:
    plain = run_cli("validate", FILE, cwd=work, timeout=60)
    assert plain.rc == 0 and "2 configuration(s) x 1 seed(s)" in plain.out, plain.describe()
    sets = (
        "--set", "search.seeds=[0,1,2]",
        "--set", "loss.params.xi={grid: [0.3, 0.7]}",
        "--set", "search.sampler=grid",
        "--set", "training.epochs=4",
        "--set", "training.lr=1e-2",
        "--set", "model.max_size=512",  # model has no max_size: the key is added
    )  # fmt: skip
    ran = run_cli("validate", FILE, *sets, cwd=work, timeout=60)
    assert ran.rc == 0, ran.describe()
    line = ran.out.strip()
    assert "\n" not in line and line.startswith(f"{FILE}: ok"), ran.describe()
    assert "2 configuration(s) x 3 seed(s)" in line, line
    shown = line.split("; set ", 1)[1]
    assert shown == (
        'search.seeds=[0, 1, 2], loss.params.xi={"grid": [0.3, 0.7]}, search.sampler="grid", '
        "training.epochs=4, training.lr=0.01, model.max_size=512"
    ), line
    assert (work / ".." / "proj" / "study.yaml").read_text() == STUDY  # the file is untouched


BAD_SETS: dict[str, tuple[str, list[str]]] = {
    "no-equals": ("training.epochs", ["--set 'training.epochs' is not KEY=VALUE"]),
    "empty-part": ("training..epochs=2", ["--set training..epochs", "empty part"]),
    "unknown-key": ("training.epoch=4", ["training.epoch: --set training.epoch=4",
                                         "did you mean 'epochs'"]),
    "unknown-section": ("trainig.epochs=4", ["trainig: --set trainig.epochs=4", "unknown key"]),
    "out-of-range": ("loss.params.xi={grid: [0.3, 1.7]}",
                     ["loss.params.xi.grid: --set loss.params.xi=", "xi=1.7", "[0, 1]"]),
    "wrong-type": ("training.epochs=four", ["training.epochs: --set training.epochs=four",
                                            "write a number"]),
    "not-yaml": ("loss.params.xi={grid: [0.3", ["--set loss.params.xi: the value",
                                                "YAML syntax error", "quote KEY=VALUE"]),
    "python-tag": ("description=!!python/name:os.system x", ["--set description",
                                                            "is not allowed"]),
    "through-a-value": ("name.x=1", ["--set name.x=1: name is", "not a mapping",
                                     "set name itself"]),
    "through-a-list-item": ("search.seeds.0.x=1", ["search.seeds.0 is 0, not a mapping"]),
    "index-out-of-range": ("search.seeds.4=1", ["search.seeds is a list of 1", "use 0..0"]),
    "breaks-a-rule": ("training.schedule=decoupled", ["training.stage1: with --set "
                                                      "training.schedule=decoupled", "missing"]),
}  # fmt: skip


RUN_TOO = ("unknown-key", "out-of-range", "through-a-value")  # run loads the study alike


@pytest.mark.parametrize("case", sorted(BAD_SETS))
def test_bad_set_is_one_line(work: Path, case: str) -> None:
    arg, needles = BAD_SETS[case]
    commands = [("validate", FILE)]
    if case in RUN_TOO:
        commands.append(("run", FILE, "--no-report"))
    for command in commands:
        line = one_error(run_cli(*command, "--set", arg, cwd=work, timeout=60))
        missing = [n for n in needles if n not in line]
        assert not missing, f"{missing} not in {line!r}"
    assert not (work / "results").exists()  # run refused before writing anything


@pytest.mark.slow
def test_set_is_recorded_and_is_the_studys_identity(work: Path) -> None:
    sets = ("--set", "training.epochs=2", "--set", "search.seeds=[3]", "--set", "search.trials=1")
    ran = run_cli("run", FILE, *sets, "--no-report", "--quiet", cwd=work, timeout=600)
    assert ran.rc == 0, ran.describe()
    study_dir = work / "results" / "set-check"
    spec_text = (study_dir / "spec.yaml").read_text()
    spec = yaml.safe_load(spec_text)
    assert spec["training"]["epochs"] == 2 and spec["search"]["seeds"] == [3], spec_text
    assert spec["search"]["trials"] == 1, spec_text
    import pyarrow.parquet as pq

    rows = pq.read_table(study_dir / "trials").to_pylist()
    assert [(r["seed"], r["status"]) for r in rows] == [(3, "ok")], rows

    again = run_cli("run", FILE, *sets, "--no-report", cwd=work, timeout=120)
    assert again.rc == 0, again.describe()
    assert "all 1 configurations done" in again.out and "Ray" not in again.err, again.describe()

    changed = run_cli("run", FILE, *sets, "--set", "training.epochs=3", cwd=work, timeout=60)
    refusal = changed.err.strip()
    assert changed.rc == 2 and "\n" not in refusal, changed.describe()
    assert f"{study_dir} already holds a different study" in refusal, refusal
    assert f"`ltsearch resume {study_dir}`" in refusal, refusal
    alone = run_cli("run", FILE, "--no-report", cwd=work, timeout=60)  # the file's epochs: 1
    assert alone.rc == 2 and alone.err.strip() == refusal, alone.describe()

    # the file edited to say what the overrides said: the same study, resumed
    study = work / ".." / "proj" / "study.yaml"
    study.write_text(STUDY.replace("epochs: 1,", "epochs: 2,"))
    edited = run_cli("run", FILE, *sets[2:], "--no-report", cwd=work, timeout=120)
    assert edited.rc == 0 and "all 1 configurations done" in edited.out, edited.describe()
    # ... and edited to differ: refused with the same line as the changed --set
    study.write_text(STUDY.replace("epochs: 1,", "epochs: 3,"))
    edited = run_cli("run", FILE, *sets[2:], "--no-report", cwd=work, timeout=60)
    assert edited.rc == 2 and edited.err.strip() == refusal, edited.describe()
    assert (study_dir / "spec.yaml").read_text() == spec_text
    assert len(pq.read_table(study_dir / "trials")) == 1
