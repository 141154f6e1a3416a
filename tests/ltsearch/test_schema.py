"""``ltsearch schema`` and ``studies/study.schema.json``: the committed copy is the command's
output, every shipped study names it in its first line and validates against it, and the
schema and the loader agree: each bad study below is refused by both (the loader through
``ltsearch validate``: exit 2, one line naming the file and the key), each odd but valid
one is accepted by both.

``ltsearch schema`` runs as a user runs it, from a working directory of its own with
relative paths; the ``validate`` of the tables runs the CLI's ``main`` in this process, in
a working directory of its own (:func:`validate`: a process each would take a minute).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import jsonschema
import pytest

from ltsearch.spec.io import parse_yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "acceptance"))
from workspace import REPO, Ran, run_cli  # noqa: E402

SCHEMA_FILE = REPO / "studies" / "study.schema.json"
SCHEMA_LINE = "# yaml-language-server: $schema=study.schema.json"
STUDIES = sorted((REPO / "studies").glob("*.yaml"))

VALID = """\
name: schema-check
dataset: {kind: synthetic, classes: 8}
model: {backbone: tiny, masks: false}
training:
  schedule: decoupled
  stage1: {loss: ce, epochs: 1, batch_size: 4}
  stage2: {epochs: 1, batch_size: 4, finetune: [box_predictor]}
loss: {name: acsl, params: {xi: {uniform: [0.1, 0.9]}}}
search: {sampler: tpe, objectives: [bbox/APr:max, bbox/APf:max], trials: 2, seeds: [0, 1]}
"""
E2E = ("  schedule: decoupled\n  stage1: {loss: ce, epochs: 1, batch_size: 4}\n"
       "  stage2: {epochs: 1, batch_size: 4, finetune: [box_predictor]}\n")  # fmt: skip
LVIS = "{kind: lvis, train: a.json, val: b.json, images: img}"


def edit(old: str, new: str) -> str:
    assert old in VALID, old
    return VALID.replace(old, new, 1)


def loss(text: str) -> str:
    return edit("{name: acsl, params: {xi: {uniform: [0.1, 0.9]}}}", text)


# name -> (study text, what the loader's line names: the key path)
BAD: dict[str, tuple[str, str]] = {
    "unknown-top-key": (VALID + "trainig: {epochs: 2}\n", "trainig"),
    "unknown-nested-key": (edit("stage2: {epochs", "stage2: {epoch"), "training.stage2.epoch"),
    "unknown-loss": (loss("{name: acls}"), "loss.name"),
    "unknown-loss-param": (loss("{name: acsl, params: {xj: 0.5}}"), "loss.params.xj"),
    "loss-value-out-of-range": (loss("{name: acsl, params: {xi: 1.5}}"), "loss.params.xi"),
    "grid-value-out-of-range": (
        loss("{name: acsl, params: {xi: {grid: [0.3, 1.5]}}}"), "loss.params.xi"),
    "range-bound-out-of-range": (
        loss("{name: acsl, params: {xi: {uniform: [0.1, 1.2]}}}"), "loss.params.xi"),
    "loguniform-from-zero": (
        loss("{name: acsl, params: {xi: {loguniform: [0.0, 0.5]}}}"), "loss.params.xi"),
    "range-of-a-choice": (
        loss("{name: acsl, params: {background: {uniform: [0, 1]}}}"), "loss.params.background"),
    "float-range-of-an-int": (
        loss("{name: ahr, params: {num_clusters: {uniform: [2, 8]}}}"), "params.num_clusters"),
    "step-on-loguniform": (
        loss("{name: acsl, params: {xi: {loguniform: [0.1, 0.9], step: 0.1}}}"), "loss.params.xi"),
    "two-space-kinds": (
        loss("{name: acsl, params: {xi: {grid: [0.5], uniform: [0.1, 0.9]}}}"), "loss.params.xi"),
    "duplicate-grid-values": (
        loss("{name: acsl, params: {xi: {grid: [0.5, 0.5]}}}"), "loss.params.xi"),
    "number-for-a-bool": (loss("{name: ebl, params: {margin: 1}}"), "loss.params.margin"),
    "name-and-choice": (loss("{name: ce, choice: [{name: bce}]}"), "loss"),
    "unknown-loss-in-choice": (loss("{choice: [{name: ce}, {name: focal}]}"), "loss.choice.1"),
    "word-for-an-int": (edit("stage2: {epochs: 1", "stage2: {epochs: four"), "training.stage2"),
    "zero-epochs": (edit("stage2: {epochs: 1", "stage2: {epochs: 0"), "training.stage2.epochs"),
    "negative-lr": (edit("stage2: {epochs: 1", "stage2: {lr: -0.1, epochs: 1"), "stage2.lr"),
    "string-for-a-bool": (edit("masks: false", "masks: 'no'"), "model.masks"),
    "bool-for-an-int": (edit("trials: 2", "trials: true"), "search.trials"),
    "number-for-a-list": (edit("seeds: [0, 1]", "seeds: 0"), "search.seeds"),
    "seed-twice": (edit("seeds: [0, 1]", "seeds: [1, 1]"), "search.seeds"),
    "unknown-metric": (edit("bbox/APf:max", "bbox/APx:max"), "search.objectives.1"),
    "unknown-sampler": (edit("sampler: tpe", "sampler: cmaes"), "search.sampler"),
    "tpe-without-trials": (edit(", trials: 2", ""), "search.trials"),
    "population-without-nsga2": (edit("trials: 2", "trials: 2, population_size: 4"),
                                 "search.population_size"),
    "name-not-a-slug": (edit("name: schema-check", "name: Schema Check"), "name"),
    "unknown-dataset-kind": (edit("{kind: synthetic, classes: 8}", "{kind: coco}"), "dataset"),
    "lvis-without-images": (
        edit("{kind: synthetic, classes: 8}", LVIS.replace(", images: img", "")),
        "dataset.images"),
    "too-many-classes": (edit("classes: 8", "classes: 500"), "dataset.classes"),
    "unknown-backbone": (edit("backbone: tiny", "backbone: vit"), "model.backbone"),
    "frozen-bn-null-weights": (
        edit("backbone: tiny", "backbone: resnet50_fpn, norm: frozen_bn, backbone_weights: null"),
        "model.norm"),
    "frozen-bn-without-weights": (
        edit("backbone: tiny", "backbone: resnet50_fpn, norm: frozen_bn"), "model.norm"),
    "decoupled-without-stage2": (
        edit("  stage2: {epochs: 1, batch_size: 4, finetune: [box_predictor]}\n", ""),
        "training.stage2"),
    "stage1-under-end-to-end": (
        edit("schedule: decoupled", "schedule: end_to_end"), "training.stage1"),
    "epochs-at-top-under-decoupled": (
        edit("  schedule: decoupled\n", "  schedule: decoupled\n  epochs: 4\n"),
        "training.epochs"),
    "unknown-stage1-loss-param": (
        edit("{loss: ce, epochs", "{loss: eql, loss_params: {lambda: 0.1}, epochs"),
        "training.stage1.loss_params.lambda"),
    "rfs-threshold-without-rfs": (
        edit("stage2: {epochs: 1", "stage2: {rfs_threshold: 0.01, epochs: 1"),
        "training.stage2.rfs_threshold"),
    "unknown-finetune-part": (
        edit("finetune: [box_predictor]", "finetune: [classifier]"), "training.stage2.finetune"),
}  # fmt: skip

# odd but valid: the schema must not be stricter than the loader
GOOD: dict[str, str] = {
    "one-min-size": edit("masks: false", "masks: false, min_size: 800, max_size: 1333"),
    "fixed-mapping": loss("{name: acsl, params: {xi: {fixed: 0.7}}}"),
    "whole-float-for-int": edit("trials: 2", "trials: 2.0"),
    "int-for-float": edit("stage2: {epochs: 1", "stage2: {lr: 1, epochs: 1"),
    "exponent-float": loss("{name: acsl, params: {xi: {loguniform: [1e-3, 0.9]}}}"),
    "int-range-with-step": loss("{name: ahr, params: {num_clusters: {int: [2, 8], step: 2}}}"),
    "int-loguniform": loss("{name: ahr, params: {num_clusters: {loguniform: [2, 8]}}}"),
    "loss-choice": loss("{choice: [{name: ce}, {name: ebl, params: {mfs: {grid: [true]}}}]}"),
    "lvis-paths": edit("{kind: synthetic, classes: 8}", LVIS),
    "end-to-end": edit(E2E, "  schedule: end_to_end\n  epochs: 2\n  sampler: rfs\n"
                       "  rfs_threshold: 0.01\n"),
    "nsga2-population": edit("sampler: tpe", "sampler: nsga2, population_size: 4"),
    "grid-without-trials": edit("sampler: tpe", "sampler: grid").replace(", trials: 2", "")
                           .replace("{uniform: [0.1, 0.9]}", "{grid: [0.1, 0.9]}"),
    "stage1-loss-params": edit("{loss: ce, epochs", "{loss: eql, loss_params: {lambda_: 0.001}, "
                               "epochs"),
    "nulls": edit("masks: false", "masks: null, backbone_weights: null")
    .replace(E2E, "  schedule: end_to_end\n  stage1: null\n")
    .replace("trials: 2", "trials: 2, population_size: null")
    + "reference: null\n",
}  # fmt: skip


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def validate(text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Ran:
    """``ltsearch validate study/case.yaml`` run from ``tmp_path`` (in this process: the
    tables here hold 50 files; the commands themselves run as processes above)."""
    from ltsearch.cli import main

    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "case.yaml").write_text(text, encoding="utf-8")
    args = ("validate", "study/case.yaml")
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        rc = main(list(args))
    finally:
        os.chdir(cwd)
    out, err = capsys.readouterr()
    return Ran(("ltsearch", *args), tmp_path, rc, out, err)


def test_committed_schema_is_the_commands_output(tmp_path: Path) -> None:
    printed = run_cli("schema", cwd=tmp_path, timeout=60)
    assert printed.rc == 0, printed.describe()
    assert printed.out == SCHEMA_FILE.read_text(encoding="utf-8"), (
        "studies/study.schema.json is stale: regenerate it with "
        "`ltsearch schema --out studies/study.schema.json`"
    )
    (tmp_path / "editor").mkdir()
    wrote = run_cli("schema", "--out", "editor/study.schema.json", cwd=tmp_path, timeout=60)
    assert wrote.rc == 0, wrote.describe()
    assert (tmp_path / "editor" / "study.schema.json").read_text() == printed.out


def test_schema_describes_every_loss_parameter(validator: jsonschema.Draft7Validator) -> None:
    from ltmodels.losses.domains import DOMAINS

    defs = validator.schema["$defs"]
    assert defs["LossSpec"]["properties"]["name"]["enum"] == sorted(DOMAINS)
    for name, params in DOMAINS.items():
        described = defs[f"params.{name}"]["properties"]
        assert set(described) == set(params), name
        for pname, param in params.items():
            assert described[pname]["description"].startswith(param.doc), (name, pname)


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_study_names_and_passes_the_schema(
    path: Path, validator: jsonschema.Draft7Validator
) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.splitlines()[0] == SCHEMA_LINE
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message[:200]}"
              for e in validator.iter_errors(parse_yaml(text))]  # fmt: skip
    assert not errors, errors


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_study_is_refused_by_schema_and_loader(
    name: str,
    validator: jsonschema.Draft7Validator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    text, key = BAD[name]
    assert not validator.is_valid(parse_yaml(text)), f"the schema accepts {name}:\n{text}"
    ran = validate(text, tmp_path, capsys)
    lines = ran.err.strip().splitlines()
    assert ran.rc == 2 and len(lines) == 1, ran.describe()
    assert lines[0].startswith("ltsearch: error: study/case.yaml: "), ran.describe()
    assert key in lines[0] and "Traceback" not in ran.err, ran.describe()


@pytest.mark.parametrize("name", sorted(GOOD))
def test_odd_but_valid_study_is_accepted_by_both(
    name: str,
    validator: jsonschema.Draft7Validator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    errors = [e.message[:200] for e in validator.iter_errors(parse_yaml(GOOD[name]))]
    assert not errors, f"the schema refuses {name}: {errors}"
    ran = validate(GOOD[name], tmp_path, capsys)
    assert ran.rc == 0 and ran.out.startswith("study/case.yaml: ok"), ran.describe()
