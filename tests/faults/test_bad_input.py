"""Bad input through the real CLI (issue 17, section 9): study files and LVIS-format data.

Every bad input is a project directory of its own (``study.yaml``, relative paths, data
from ``ltsearch data synth``) in which ``ltsearch validate`` or ``ltsearch run`` is typed
as a user would. Each must be refused before anything starts: exit 2, exactly one line on
stderr naming the file (and, for a study file, the key path or the line), no traceback,
nothing written under the study's storage and no Ray started (``RAY_TMPDIR`` points at an
empty folder of this module, where a Ray would make its ``ray/`` session directory; the
training tests below show that it does). Most study-file cases run ``validate``; the ones
where ``run`` differs (storage, the study directory, data with ``--check-data``) run
``run``. The table runs in one batch, two commands at a time.

The slow tests train: data that is odd but valid (a zero-area box, an image without
annotations) trains, and an image whose body is damaged past its header (which
``--check-data`` reads) is found during training: failed rows naming the file, and the
study stops on the systematic error after ``search.max_failures`` trials, exit 1.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import records
from bad_project import CHECK, RUN, RUN_CHECK, STUDY, edit_json, study, to_jpeg, write_bytes
from workspace import Ran, run_cli

pytestmark = [pytest.mark.faults]

PROMISED = (
    "exit 2, one stderr line naming the file (and key), no traceback, nothing written, no Ray"
)
LINE_COL = r"line \d+, column \d+: "


def grid_of(n: int) -> str:
    return "{grid: [" + ", ".join(f"{i / n:.4f}" for i in range(n)) + "]}"


def alias_bomb(levels: int = 9) -> str:
    """``smoke`` holding 10 ** levels values once aliases are expanded (a few lines)."""
    lines = ["smoke:", "  l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels + 1):
        lines.append(f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    return STUDY + "\n".join(lines) + "\n"


# ----- data breakers (the project's data/ is a fresh copy of the synthetic dataset) -----


def drop_last_category(d: dict[str, Any]) -> None:
    gone = d["categories"].pop()["id"]
    d["annotations"] = [a for a in d["annotations"] if a["category_id"] != gone]


def truncate_json(root: Path) -> None:
    path = root / "data" / "lvis_synth_train.json"
    path.write_bytes(path.read_bytes()[:300])


def remove(rel: str) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        target = root / rel
        shutil.rmtree(target) if target.is_dir() else target.unlink()

    return apply


def first_image(root: Path) -> None:
    (root / "data" / "train" / "000000000001.png").unlink()


def storage_file(root: Path) -> None:
    (root / "results").write_text("not a folder\n")


def unwritable(root: Path) -> None:
    """``elsewhere/`` that this user cannot write: a read-only folder, or for root (who
    writes anywhere) a link to sysfs, where no one may create a file."""
    if os.geteuid() == 0:
        (root / "elsewhere").symlink_to("/sys/fs")
    else:
        (root / "elsewhere").mkdir(mode=0o500)


def study_dir_is_file(root: Path) -> None:
    (root / "results").mkdir()
    (root / "results" / "bad-input").write_text("a file where the study directory goes\n")


@dataclass(frozen=True)
class Bad:
    """One bad input: what kind it is, the study text, what else is broken, the command,
    and what the one line must say: ``where`` (a regex after the file: the key path or
    ``line N, column M``) and ``needle``; ``names`` is the file the line must name
    (default: the study file, right after ``ltsearch: error: ``)."""

    kind: str
    needle: str
    where: str = ""
    text: str | bytes = STUDY
    setup: Callable[[Path], None] | None = None
    command: tuple[str, ...] = ("validate", "study.yaml")
    names: str = ""
    data: bool = False
    storage: str = "results"

    def run(self) -> tuple[str, ...]:
        return self.command


PWNED = "touch-proof"  # the file a !!python tag would create if it ran

CASES: dict[str, Bad] = {
    # YAML itself
    "yaml-syntax-error": Bad("yaml syntax", "YAML syntax error", LINE_COL,
                             study("training: {", "training: {{")),
    "yaml-tab-indent": Bad("yaml syntax", "YAML syntax error", LINE_COL,
                           STUDY + "model:\n\tbackbone: tiny\n"),
    "yaml-nul-byte": Bad("yaml syntax", "special characters are not allowed", "",
                         STUDY + "description: a\0b\n"),
    "yaml-unknown-alias": Bad("yaml syntax", "undefined alias 'nope'", LINE_COL,
                              STUDY + "description: *nope\n"),
    "yaml-nested-too-deep": Bad("yaml syntax", "nested too deeply", "",
                                STUDY + "description: " + "[" * 20000 + "]" * 20000 + "\n"),
    "tag-python-object-apply": Bad(
        "python tag", "tag !!python/object/apply:os.system is not allowed", LINE_COL,
        STUDY + f"description: !!python/object/apply:os.system [touch {PWNED}]\n"),
    "tag-python-name": Bad("python tag", "tag !!python/name:os.system is not allowed", LINE_COL,
                           STUDY + "description: !!python/name:os.system ''\n"),
    "tag-python-object-new": Bad(
        "python tag", "tag !!python/object/new:subprocess.Popen is not allowed", LINE_COL,
        STUDY + f"smoke: !!python/object/new:subprocess.Popen [[touch, {PWNED}]]\n"),
    "tag-binary": Bad("python tag", "tag !!binary is not allowed", LINE_COL,
                      STUDY + "description: !!binary aGVsbG8=\n"),
    "tag-set": Bad("python tag", "tag !!set is not allowed", LINE_COL,
                   STUDY + "description: !!set {a, b}\n"),
    "tag-local": Bad("python tag", "tag !env is not allowed", LINE_COL,
                     STUDY + "description: !env HOME\n"),
    "duplicate-key-top": Bad("duplicate key", "duplicate key 'loss'", LINE_COL,
                             STUDY + "loss: {name: ce}\n"),
    "duplicate-key-nested": Bad("duplicate key", "duplicate key 'xi'", LINE_COL,
                                study("{xi: {grid", "{xi: 0.5, xi: {grid")),
    "recursive-alias": Bad("alias", "contains it", LINE_COL,
                           STUDY + "smoke: &s {smoke: *s}\n"),
    "alias-bomb": Bad("alias", "more than 100000 values", LINE_COL, alias_bomb()),
    "list-as-key": Bad("wrong type", "found unhashable key", LINE_COL,
                       STUDY + "? [a, b]\n: 1\n"),
    # the file as a whole
    "empty-file": Bad("empty file", "the spec is empty", "", ""),
    "comments-only": Bad("empty file", "the spec is empty", "", "# nothing yet\n\n"),
    "top-level-list": Bad("wrong type", "the top level is a list", "", "- name: x\n"),
    "latin-1-bytes": Bad("non-UTF-8", "is not UTF-8 text", "",
                         STUDY.encode() + "description: caf\u00e9\n".encode("latin-1")),
    "utf-16": Bad("non-UTF-8", "is not UTF-8 text", "", STUDY.encode("utf-16")),
    # wrong types
    "epochs-boolean": Bad("wrong type", "got True", "training.epochs: ",
                          study("epochs: 1", "epochs: true")),
    "lr-quoted": Bad("wrong type", "got '0.02'", "training.lr: ",
                     study("lr: 0.02", "lr: '0.02'")),
    "seeds-not-a-list": Bad("wrong type", "valid list", "search.seeds: ",
                            study("seeds: [0]", "seeds: 0")),
    "masks-string": Bad("wrong type", "got 'yes'", "model.masks: ",
                        study("masks: true", "masks: 'yes'")),
    "name-number": Bad("wrong type", "valid string", "name: ",
                       study("name: bad-input", "name: 12")),
    "params-list": Bad("wrong type", "a list is not one value", "loss.params.xi: ",
                       study("{grid: [0.3, 0.7]}", "[0.3, 0.7]")),
    # unknown keys
    "unknown-top-key": Bad("unknown key", "did you mean 'storage'?", "stroage: ",
                           STUDY + "stroage: x\n"),
    "unknown-nested-key": Bad("unknown key", "unknown key", "model.tempearture: ",
                              study("backbone: tiny", "backbone: tiny, tempearture: 20")),
    "unknown-loss-param": Bad("unknown key", "unknown parameter", "loss.params.xj: ",
                              study("{xi: {grid: [0.3, 0.7]}}", "{xj: 0.5}")),
    # out of range
    "xi-above-domain": Bad("out of range", "expected float in [0, 1]", "loss.params.xi.grid: ",
                           study("[0.3, 0.7]", "[0.3, 2]")),
    "lr-negative": Bad("out of range", "greater than 0", "training.lr: ",
                       study("lr: 0.02", "lr: -0.1")),
    "lr-infinite": Bad("out of range", "finite number", "training.lr: ",
                       study("lr: 0.02", "lr: .inf")),
    "seed-past-2-32": Bad("out of range", "less than or equal to 4294967295", "search.seeds.0: ",
                          study("seeds: [0]", "seeds: [4294967296]")),
    "workers-zero": Bad("out of range", "greater than 0", "resources.workers: ",
                        study("workers: 1", "workers: 0")),
    # empty lists
    "empty-choice": Bad("empty list", "at least 1 item", "loss.choice: ",
                        study("loss: {name: acsl, params: {xi: {grid: [0.3, 0.7]}}}",
                              "loss: {choice: []}")),
    "empty-grid": Bad("empty list", "at least 1 item", "loss.params.xi.grid: ",
                      study("[0.3, 0.7]", "[]")),
    "empty-categorical": Bad("empty list", "at least 1 item", "loss.params.xi.categorical: ",
                             study("sampler: grid", "sampler: tpe, trials: 2")
                             .replace("{grid: [0.3, 0.7]}", "{categorical: []}")),
    "empty-objectives": Bad("empty list", "is empty", "search.objectives: ",
                            study("[bbox/AP:max]", "[]")),
    "empty-seeds": Bad("empty list", "at least 1 item", "search.seeds: ",
                       study("seeds: [0]", "seeds: []")),
    # a grid of 10^9 points (refused before any point is listed)
    "grid-of-1e9": Bad("grid too large", "the grid has 1000000000 points", "loss: ",
                       study("loss: {name: acsl, params: {xi: {grid: [0.3, 0.7]}}}",
                             "loss: {name: eqlv2, params: {gamma: " + grid_of(1000)
                             + ", mu: " + grid_of(1000) + ", alpha: " + grid_of(1000) + "}}"),
                       command=RUN),
    # names that would leave the storage
    "name-dotdot": Bad("path escape", "is not a slug", "name: ",
                       study("name: bad-input", "name: ../..")),
    "name-slash": Bad("path escape", "is not a slug", "name: ",
                      study("name: bad-input", "name: a/../../b"), command=RUN),
    "name-absolute": Bad("path escape", "is not a slug", "name: ",
                         study("name: bad-input", "name: /tmp/x"), command=RUN),
    "name-newline": Bad("path escape", "is not a slug", "name: ",
                        study("name: bad-input", 'name: "bad\\n"')),
    "smoke-name-escape": Bad("path escape", "is not a slug", "smoke.name: ",
                             STUDY + "smoke: {name: ../../x}\n"),
    # storage
    "storage-is-a-file": Bad("storage", "is a file, not a directory", "storage: ",
                             setup=storage_file, command=RUN),
    "storage-below-a-file": Bad("storage", "is a file, not a directory", "storage: ",
                                study("storage: results", "storage: results/runs"),
                                setup=storage_file, command=RUN, storage="results/runs"),
    "storage-unwritable": Bad("storage", "cannot write results", "storage: ",
                              study("storage: results", "storage: elsewhere/runs"),
                              setup=unwritable, command=RUN, storage="elsewhere/runs"),
    "storage-empty-string": Bad("storage", "at least 1 character", "storage: ",
                                study("storage: results", "storage: ''"), command=RUN),
    "study-dir-is-a-file": Bad("storage", "is a file, not a study directory", "name: ",
                               setup=study_dir_is_file, command=RUN),
    # data, found by --check-data before anything starts (or by run's path check)
    "data-train-json-missing": Bad("data", "annotation file", "dataset.train: ",
                                   setup=remove("data/lvis_synth_train.json"), command=RUN),
    "data-images-dir-missing": Bad("data", "image directory", "dataset.images: ",
                                   study("images: data}", "images: pictures}"), command=RUN,
                                   data=True),
    "data-truncated-json": Bad("data", "not valid JSON", setup=truncate_json, command=RUN_CHECK,
                               names="data/lvis_synth_train.json", data=True),
    "data-empty-json": Bad("data", "not valid JSON", command=CHECK, data=True,
                           setup=write_bytes("data/lvis_synth_val.json", b""),
                           names="data/lvis_synth_val.json"),
    "data-json-not-utf8": Bad("data", "not valid JSON", command=CHECK, data=True,
                              setup=write_bytes("data/lvis_synth_val.json", b'{"images": "\xff"}'),
                              names="data/lvis_synth_val.json"),
    "data-json-nested-too-deep": Bad("data", "not valid JSON", command=CHECK, data=True,
                                     setup=write_bytes("data/lvis_synth_val.json",
                                                       b"[" * 100000 + b"]" * 100000),
                                     names="data/lvis_synth_val.json"),
    "data-schema-less-json": Bad("data", "'images', 'annotations' and 'categories'",
                                 command=CHECK, data=True,
                                 setup=write_bytes("data/lvis_synth_val.json", b'{"images": []}'),
                                 names="data/lvis_synth_val.json"),
    "data-json-top-level-list": Bad("data", "top level is a list", command=CHECK, data=True,
                                    setup=write_bytes("data/lvis_synth_train.json", b"[]"),
                                    names="data/lvis_synth_train.json"),
    "data-val-categories-differ": Bad("data", "categories differ from", command=CHECK,
                                      data=True, names="data/lvis_synth_val.json",
                                      setup=edit_json("lvis_synth_val.json", drop_last_category)),
    "data-unknown-category-id": Bad(
        "data", "unknown category_id 999", command=CHECK, data=True,
        names="data/lvis_synth_train.json",
        setup=edit_json("lvis_synth_train.json",
                        lambda d: d["annotations"][0].update(category_id=999))),
    "data-missing-image": Bad("data", "file not found", command=RUN_CHECK, data=True,
                              setup=first_image, names="data/lvis_synth_train.json"),
    "data-corrupt-jpeg-header": Bad("data", "as an image", command=RUN_CHECK, data=True,
                                    setup=lambda root: to_jpeg(root, lambda b: b[:20]),
                                    names="data/train/000000000001.jpg"),
    "data-box-outside-image": Bad(
        "data", "outside its 64x64 image", command=CHECK, data=True,
        names="data/lvis_synth_train.json",
        setup=edit_json("lvis_synth_train.json",
                        lambda d: d["annotations"][0].update(bbox=[50.0, 50.0, 100.0, 100.0]))),
    "data-wrong-image-size": Bad(
        "data", "but the JSON says 65x64", command=CHECK, data=True,
        names="data/lvis_synth_train.json",
        setup=edit_json("lvis_synth_train.json", lambda d: d["images"][0].update(width=65))),
    "data-file-name-not-string": Bad(
        "data", "has file_name 7", command=CHECK, data=True, names="data/lvis_synth_train.json",
        setup=edit_json("lvis_synth_train.json", lambda d: d["images"][0].update(file_name=7))),
}  # fmt: skip


@pytest.fixture(scope="module")
def ray_tmp() -> Iterator[Path]:
    """``RAY_TMPDIR`` of every command of this module: a short empty folder (Ray's socket
    paths must stay under 108 bytes)."""
    root = Path(tempfile.mkdtemp(prefix="ltbad", dir="/tmp"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TMPDIR", str(root))
        yield root
    shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class Outcome:
    ran: Ran
    seconds: float
    root: Path
    before: list[str]  # what was under the storage before the command


def written(path: Path) -> list[str]:
    """Everything under ``path`` (nothing when it does not exist)."""
    if not path.is_dir() or path.is_symlink():
        return []
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def prepare(case: str, bad: Bad, base: Path, pristine: Path) -> Path:
    root = base / case
    root.mkdir()
    if bad.data or bad.setup is not None:
        shutil.copytree(pristine, root / "data")
    path = root / "study.yaml"
    path.write_bytes(bad.text if isinstance(bad.text, bytes) else bad.text.encode())
    if bad.setup is not None:
        bad.setup(root)
    return root


@pytest.fixture(scope="module")
def outcomes(
    tmp_path_factory: pytest.TempPathFactory, pristine: Path, ray_tmp: Path
) -> dict[str, Outcome]:
    """Every case of :data:`CASES`, run two at a time (the table is the batch)."""
    base = tmp_path_factory.mktemp("bad")
    roots = {case: prepare(case, bad, base, pristine) for case, bad in CASES.items()}

    def one(case: str) -> tuple[str, Outcome]:
        root = roots[case]
        before = written(root / CASES[case].storage)
        t0 = time.perf_counter()
        ran = run_cli(*CASES[case].run(), cwd=root, timeout=120)
        return case, Outcome(ran, time.perf_counter() - t0, root, before)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, CASES))


def test_the_table_covers_every_kind() -> None:
    kinds = {bad.kind for bad in CASES.values()}
    wanted = {
        "yaml syntax", "python tag", "duplicate key", "wrong type", "unknown key",
        "out of range", "empty list", "grid too large", "path escape", "storage",
        "non-UTF-8", "empty file", "data",
    }  # fmt: skip
    assert wanted <= kinds, wanted - kinds
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_in_one_line(
    case: str, outcomes: dict[str, Outcome], ray_tmp: Path
) -> None:
    bad, out = CASES[case], outcomes[case]
    ran, root = out.ran, out.root
    assert ran.rc == 2, ran.describe()
    assert "Traceback" not in ran.out + ran.err, ran.describe()
    lines = ran.err.strip().splitlines()
    assert len(lines) == 1, ran.describe()
    line = lines[0]
    if bad.names:  # a data file, named as the study resolved it (absolute)
        assert line.startswith("ltsearch: error: "), ran.describe()
        assert str(root / bad.names) in line, ran.describe()
    else:
        assert re.match(rf"ltsearch: error: study\.yaml: {bad.where}", line), ran.describe()
    assert bad.needle in line, ran.describe()
    after = written(root / bad.storage)
    assert after == out.before, (out.before, after, ran.describe())
    assert not (root / PWNED).exists(), "a !!python tag ran code"
    assert not os.listdir(ray_tmp), f"Ray started: {os.listdir(ray_tmp)}\n{ran.describe()}"
    if case == "grid-of-1e9":  # refused at once, not after listing the grid
        assert out.seconds < 20, out.seconds
    records.record(
        case=case,
        group="bad input",
        injected=f"{bad.kind}: `ltsearch {' '.join(bad.run())}`",
        promised=PROMISED,
        observed=line,
        refused_cleanly=1,
        exit_code=ran.rc,
        stderr_lines=len(lines),
        seconds=round(out.seconds, 2),
    )
