"""``ltsearch new --loss NAME``: for every registered loss and both datasets the file it
writes passes ``ltsearch validate`` (and ``--smoke``) and the editor's schema, names the
schema by a path that resolves, and lists every parameter of the loss with its domain and
doc; an existing file is never overwritten and an unknown loss gets one line naming the
known ones. The schedules it picks are the ones the paper studies in ``studies/`` use.

The table runs the CLI's ``main`` in this process (60 commands), in a working directory
of its own with relative paths; the other tests run ``ltsearch`` as a process.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import jsonschema
import pytest

from ltmodels.losses.domains import DOMAINS
from ltsearch.spec.io import parse_yaml
from ltsearch.spec.scaffold import DATASETS, plan_for
from ltsearch.spec.study import load_spec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "acceptance"))
from workspace import REPO, Ran, run_cli  # noqa: E402

CASES = [(loss, data) for loss in sorted(DOMAINS) for data in DATASETS]
SCHEMA_PREFIX = "# yaml-language-server: $schema="


def cli(cwd: Path, capsys: pytest.CaptureFixture[str], *args: str) -> Ran:
    """``ltsearch ARGS`` run in ``cwd`` by the CLI's ``main`` in this process."""
    from ltsearch.cli import main

    before = Path.cwd()
    os.chdir(cwd)
    try:
        rc = main(list(args))
    finally:
        os.chdir(before)
    out, err = capsys.readouterr()
    return Ran(("ltsearch", *args), cwd, rc, out, err)


@pytest.mark.parametrize(("loss", "data"), CASES)
def test_new_study_validates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], loss: str, data: str
) -> None:
    rel = f"mine/{data}/{loss}_{data}.yaml"
    made = cli(tmp_path, capsys, "new", "--loss", loss, "--dataset", data, "--out", rel)
    assert made.rc == 0 and made.out.startswith(f"wrote {rel}: "), made.describe()
    plain = cli(tmp_path, capsys, "validate", rel)
    assert plain.rc == 0 and plain.out.startswith(f"{rel}: ok"), plain.describe()
    assert f"losses {loss}, schedule {plan_for(loss).schedule}" in plain.out, plain.describe()
    smoke = cli(tmp_path, capsys, "validate", rel, "--smoke")
    assert smoke.rc == 0 and smoke.out.startswith(f"{rel}: ok"), smoke.describe()

    path = tmp_path / rel
    text = path.read_text(encoding="utf-8")
    first = text.splitlines()[0]
    assert first.startswith(SCHEMA_PREFIX), first
    schema_path = path.parent / first.removeprefix(SCHEMA_PREFIX)
    assert schema_path.resolve() == (REPO / "studies" / "study.schema.json").resolve()
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(parse_yaml(text))]
    assert not errors, errors

    spec = load_spec(path)
    assert spec.dataset.kind == data and spec.loss.options[0].name == loss
    for name, param in DOMAINS[loss].items():
        assert f"    # {param.doc}; {param.describe()}\n    {name}: " in text, name
    if data == "lvis":
        assert "# the LVIS train annotations" in text and "--check-data" in text


def test_new_then_validate_as_processes(tmp_path: Path) -> None:
    made = run_cli("new", "--loss", "ebl", "--dataset", "lvis", "--out", "s/ebl.yaml",
                   cwd=tmp_path, timeout=60)  # fmt: skip
    assert made.rc == 0, made.describe()
    (tmp_path / "work").mkdir()
    ran = run_cli("validate", "../s/ebl.yaml", "--smoke", cwd=tmp_path / "work", timeout=60)
    assert ran.rc == 0 and ran.out.startswith("../s/ebl.yaml: ok"), ran.describe()


def test_new_refuses_to_overwrite(tmp_path: Path) -> None:
    first = run_cli("new", "--loss", "acsl", cwd=tmp_path, timeout=60)
    assert first.rc == 0, first.describe()
    path = tmp_path / "acsl_study.yaml"
    text = path.read_text()
    assert "name: acsl-study\n" in text
    again = run_cli("new", "--loss", "c2am", "--out", "acsl_study.yaml", cwd=tmp_path, timeout=60)
    lines = again.err.strip().splitlines()
    assert again.rc == 2 and lines == [
        "ltsearch: error: acsl_study.yaml: already exists; choose another --out, or remove the "
        "file first"
    ], again.describe()
    assert path.read_text() == text


def test_unknown_loss_lists_the_known_ones(tmp_path: Path) -> None:
    ran = run_cli("new", "--loss", "focal", "--out", "focal.yaml", cwd=tmp_path, timeout=60)
    lines = ran.err.strip().splitlines()
    assert ran.rc == 2 and len(lines) == 1, ran.describe()
    assert (
        lines[0]
        == f"ltsearch: error: unknown loss 'focal'; known losses: {', '.join(sorted(DOMAINS))}"
    )
    assert not list(tmp_path.iterdir())


SINGLE_LOSS_STUDIES = [
    p for p in sorted((REPO / "studies").glob("*.yaml")) if len(load_spec(p).loss.options) == 1
]


@pytest.mark.parametrize("path", SINGLE_LOSS_STUDIES, ids=[p.stem for p in SINGLE_LOSS_STUDIES])
def test_plans_follow_the_studies(path: Path) -> None:
    spec = load_spec(path)
    loss = spec.loss.options[0].name
    assert plan_for(loss).schedule == spec.training.schedule, (loss, path.name)
