"""Study spec loading: valid specs, one-line errors with file and key path, smoke, hashes."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from ltmodels.errors import DatasetError
from ltsearch.errors import SpecError
from ltsearch.spec.hashing import config_hash, stage1_hash
from ltsearch.spec.sections import ModelSection
from ltsearch.spec.study import SMOKE_DATASET, StudySpec, load_spec, spec_from_dict
from ltsearch.spec.training import FINETUNE_PARTS, OPTIM_KEYS

BASE: dict[str, Any] = {
    "name": "acsl-xi",
    "dataset": {"kind": "synthetic", "classes": 20},
    "model": {"backbone": "tiny", "masks": True},
    "training": {"schedule": "end_to_end", "epochs": 3, "lr": 0.01, "sampler": "rfs"},
    "loss": {"name": "acsl", "params": {"xi": {"uniform": [0.0, 1.0]}}},
    "search": {"sampler": "tpe", "trials": 4, "seeds": [0, 1, 2]},
}

# The study of DESIGN.md, verbatim in substance.
DESIGN_YAML = """
name: acsl-xi
dataset: {kind: lvis, train: /d/lvis_v0.5_train.json, val: /d/lvis_v0.5_val.json, images: /d/coco}
model: {backbone: resnet50_fpn, masks: true}
training:
  schedule: decoupled
  stage1: {loss: ce, epochs: 12, lr: 0.02, batch_size: 16, sampler: random}
  stage2: {epochs: 12, lr: 0.02, finetune: [box_predictor]}
loss: {name: acsl, params: {xi: {grid: [0.01, 0.1, 0.3, 0.5, 0.7, 0.9]}}}
search: {sampler: grid, objectives: [bbox/APr:max, bbox/APf:max], seeds: [0, 1, 2], trials: 6}
resources: {workers: 8, gpus_per_worker: 1, max_concurrent_trials: 1}
storage: /shared/ltsearch
reference: {source: ACSL Table 2, metric_kind: bbox,
            rows: [{xi: 0.7, AP: 26.36, APr: 18.64, APc: 26.41, APf: 29.37}]}
"""


def write(tmp_path: Path, data: Any, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def mutated(fn: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    fn(data)
    return data


def test_design_example_loads(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, DESIGN_YAML))
    assert spec.training.schedule == "decoupled"
    assert spec.training.stage2 is not None and spec.training.stage2.feature_cache
    assert spec.n_trials == spec.grid_size == 6
    assert spec.study_dir == Path("/shared/ltsearch/acsl-xi")
    assert spec.search.directions == ["maximize", "maximize"]
    assert spec.loss.options[0].params["xi"].choices() == [0.01, 0.1, 0.3, 0.5, 0.7, 0.9]


def test_round_trip_and_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = load_spec(write(tmp_path, BASE))
    assert spec_from_dict(spec.to_dict()) == spec
    # the default storage is "runs" under the directory the command runs in, made absolute
    assert spec.storage == str(tmp_path / "runs")
    assert spec.study_dir == tmp_path / "runs" / "acsl-xi"
    assert spec_from_dict(BASE).storage == "runs"  # only the file loader resolves paths
    assert spec.training.optim()["epochs"] == 3
    assert set(spec.training.optim()) == set(OPTIM_KEYS)


def test_yaml_exponent_without_dot_is_float(tmp_path: Path) -> None:
    text = yaml.safe_dump(BASE).replace("lr: 0.01", "lr: 1e-3")
    assert load_spec(write(tmp_path, text)).training.lr == pytest.approx(1e-3)


def test_values_are_coerced_to_the_param_type() -> None:
    data = mutated(lambda d: d["loss"]["params"].update(seed=2.0, xi={"grid": [0, 1]}))
    data["search"].update(sampler="grid", trials=None)
    opt = spec_from_dict(data).loss.options[0]
    assert opt.params["seed"].fixed == 2 and isinstance(opt.params["seed"].fixed, int)
    assert all(isinstance(v, float) for v in opt.params["xi"].choices() or [])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", "the spec is empty"),
        ("# only a comment\n", "the spec is empty"),
        ("name: [1,\n  x: 2\n", "line 3, column 1: YAML syntax error"),
        ("name: !!python/object:os.system {}\n", "line 1, column 7: tag !!python/object"),
        ("- 1\n- 2\n", "the top level is a list; expected a mapping"),
        ("name: a\nloss: {}\nname: b\n", "line 3, column 1: duplicate key 'name'"),
    ],
)
def test_file_level_errors(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value).startswith(f"{path}: {expected}")
    assert "\n" not in str(info.value)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"nope\.yaml: file not found"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="is a directory"):
        load_spec(tmp_path)


ERRORS = [
    (lambda d: d["loss"]["params"].update(xi={"uniform": [0, 2]}), "loss.params.xi.uniform",
     "xi=2.0 is invalid; expected float in [0, 1]"),
    (lambda d: d["loss"]["params"].update(xi={"unifrom": [0, 1]}), "loss.params.xi.unifrom",
     "did you mean 'uniform'?"),
    (lambda d: d["loss"]["params"].update(xi=[0.1, 0.2]), "loss.params.xi", "a list is not one"),
    (lambda d: d["loss"]["params"].update(xi={"uniform": [0.1, 0.9], "grid": [0.5]}),
     "loss.params.xi", "give exactly one of"),
    (lambda d: d["loss"]["params"].update(xi={"loguniform": [0, 1]}),
     "loss.params.xi.loguniform", "a log scale needs positive bounds"),
    (lambda d: d["loss"]["params"].update(xi={"uniform": [0, 1], "step": 0.3}),
     "loss.params.xi.step", "whole number of steps"),
    (lambda d: d["loss"]["params"].update(seed={"uniform": [0, 3]}), "loss.params.seed.uniform",
     "write {int: [low, high]}"),
    (lambda d: d["loss"]["params"].update(background={"int": [0, 3]}),
     "loss.params.background.int", "cannot take a range"),
    (lambda d: d["loss"]["params"].update(xj=0.5), "loss.params.xj", "unknown parameter"),
    (lambda d: d["loss"].update(name="acls"), "loss.name", "did you mean 'acsl'?"),
    (lambda d: d["loss"].update(choice=[{"name": "ce"}]), "loss", "both name and choice"),
    (lambda d: d.update(loss={"choice": [{"name": "ce"}, {"name": "acsl",
     "params": {"xi": {"uniform": [0, 1.5]}}}]}), "loss.choice.1.params.xi.uniform", "xi=1.5"),
    (lambda d: d.update(loss={"choice": [{"name": "ce"}, {"name": "ce"}]}), "loss.choice.1",
     "listed twice"),
    (lambda d: d["model"].update(backbone="resnet51"), "model.backbone", "got 'resnet51'"),
    (lambda d: d["model"].update(tempearture=20), "model.tempearture", "unknown key"),
    (lambda d: d["model"].update(min_size="big"), "model.min_size.0", "write a number"),
    (lambda d: d["model"].update(min_size=900, max_size=800), "model.min_size", "max_size"),
    (lambda d: d["model"].update(norm="frozen_bn"), "model.norm", "needs backbone_weights"),
    (lambda d: d.update(dataset={"kind": "lvis", "val": "v", "images": "i"}), "dataset.train",
     "required key is missing"),
    (lambda d: d.update(dataset={"kind": "coco"}), "dataset.kind", "unknown kind 'coco'"),
    (lambda d: d.update(dataset={"classes": 3}), "dataset.kind", "required key is missing"),
    (lambda d: d["dataset"].update(classes=0), "dataset.classes", "greater than or equal to 3"),
    (lambda d: d["dataset"].update(clases=3), "dataset.clases", "did you mean 'classes'?"),
    (lambda d: d["training"].update(stage1={"loss": "ce"}), "training.stage1",
     "schedule: decoupled only"),
    (lambda d: d["training"].update(schedule="decoupled"), "training.stage1",
     "missing; schedule decoupled needs it"),
    (lambda d: d["training"].update(sampler="random", rfs_threshold=0.01),
     "training.rfs_threshold", "applies to sampler: rfs only"),
    (lambda d: d["search"].update(objectives=["bbox/APx:max"]), "search.objectives.0",
     "unknown metric 'bbox/APx'"),
    (lambda d: d["search"].update(objectives=["bbox/APr:up"]), "search.objectives.0",
     "use max or min"),
    (lambda d: d["search"].update(objectives=["bbox/APr", "bbox/APr:min"]), "search.objectives",
     "listed twice"),
    (lambda d: d["search"].update(trials=None), "search.trials", "needs a budget"),
    (lambda d: d["search"].update(trials=0), "search.trials", "greater than 0"),
    (lambda d: d["search"].update(seeds=[0, 0]), "search.seeds", "listed twice"),
    (lambda d: d["search"].update(sampler="grid"), "loss.params.xi.uniform",
     "sampler grid needs"),
    (lambda d: d["search"].update(population_size=8), "search.population_size", "nsga2 only"),
    (lambda d: d["search"].update(initial_points=[{"xi": 0.5, "seed": 1}]),
     "search.initial_points.0.seed", "not in the study's space"),
    (lambda d: d["search"].update(initial_points=[{}]), "search.initial_points.0",
     "misses searched parameter(s) xi"),
    (lambda d: d["search"].update(initial_points=[{"loss": "ce", "xi": 0.5}]),
     "search.initial_points.0.loss", "not searched by this study"),
    (lambda d: d["model"].update(masks=False) or d["search"].update(objectives=["segm/APr"]),
     "search.objectives.0", "segm metrics need masks"),
    (lambda d: d.update(resources={"workers": 0}),
     "resources.workers", "greater than 0"),
    (lambda d: d.update(reference={"source": "T", "rows": [{"xi": 0.7}]}), "reference.rows.0",
     "gives no metric"),
    (lambda d: d.update(reference={"source": "T", "rows": [{"xi": 3, "AP": 1}]}),
     "reference.rows.0.xi", "xi=3 is invalid"),
    (lambda d: d.update(smoke={"search": {"trials": 0}}), "smoke.search.trials", "greater than 0"),
    (lambda d: d.update(embedded={"search": {"seeds": []}}), "embedded.search.seeds",
     "at least 1"),
    (lambda d: d.update(training=_decoupled(segm_front=True, finetune=["box_head"])),
     "training.stage2.segm_front", "feature-cache trials only"),
    (lambda d: d.update(training=_decoupled(segm_front=True, full_eval=True)),
     "training.stage2.segm_front", "drop one of the two"),
    (lambda d: d["model"].update(masks=False) or d.update(training=_decoupled(segm_front=True)),
     "training.stage2.segm_front", "segm needs masks"),
    (lambda d: d.update(name="ACSL xi"), "name", "is not a slug"),
    (lambda d: d.update(stroage="x"), "stroage", "did you mean 'storage'?"),
]  # fmt: skip


def _decoupled(**stage2: Any) -> dict[str, Any]:
    return {"schedule": "decoupled", "stage1": {"loss": "ce"}, "stage2": stage2}


@pytest.mark.parametrize("mutate, key, reason", ERRORS)
def test_value_errors_name_file_and_key(
    tmp_path: Path, mutate: Any, key: str, reason: str
) -> None:
    path = write(tmp_path, mutated(mutate))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    err = info.value
    assert str(err).startswith(f"{path}: {key}: "), str(err)
    assert reason in str(err)
    assert "\n" not in str(err) and ";" in str(err)
    assert err.file == str(path) and ".".join(map(str, err.path)) == key


def test_decoupled_conflicts() -> None:
    def decoupled(**stage2: Any) -> dict[str, Any]:
        training = {"schedule": "decoupled", "stage1": {"epochs": 2}, "stage2": stage2}
        return mutated(lambda d: d.update(training=training))

    spec = spec_from_dict(decoupled(finetune=["box_predictor", "mask_head"]))
    assert spec.training.stage2 is not None and not spec.training.stage2.feature_cache
    with pytest.raises(SpecError, match="training.stage2.use_feature_cache: the feature cache"):
        spec_from_dict(decoupled(finetune=["rpn", "box_predictor"], use_feature_cache=True))
    with pytest.raises(SpecError, match="training.stage2.finetune.0: got 'head'"):
        spec_from_dict(decoupled(finetune=["head"]))
    bad = decoupled()
    bad["training"]["epochs"] = 3
    with pytest.raises(SpecError, match="training.epochs: is set per stage"):
        spec_from_dict(bad)
    bad = decoupled()
    bad["training"]["stage1"] = {"loss": "acsl", "loss_params": {"xi": 2}}
    with pytest.raises(SpecError, match="training.stage1.loss_params.xi: loss 'acsl'"):
        spec_from_dict(bad)


def test_choice_initial_points_and_reference() -> None:
    data = mutated(
        lambda d: d.update(
            loss={"choice": [{"name": "ce"}, {"name": "acsl", "params": {"xi": {"grid": [0.5]}}}]}
        )
    )
    data["search"]["initial_points"] = [{"loss": "acsl", "xi": 0.5}, {"loss": "ce"}]
    data["reference"] = {"source": "T", "rows": [{"loss": "acsl", "xi": 0.9, "APr": 1.0}]}
    spec = spec_from_dict(data)
    assert [o.name for o in spec.loss.options] == ["ce", "acsl"]
    data["search"]["initial_points"] = [{"xi": 0.5}]
    with pytest.raises(SpecError, match="initial_points.0.loss: missing; this study searches"):
        spec_from_dict(data)


def test_smoked_applies_policy_then_block() -> None:
    data = mutated(lambda d: d["model"].update(min_size=[600, 800], max_size=1333))
    data["search"].update(initial_points=[{"xi": 0.1}, {"xi": 0.2}, {"xi": 0.3}])
    data["resources"] = {"workers": 4, "gpus_per_worker": 1}
    spec = spec_from_dict(data)
    smoke = spec.smoked()
    assert smoke.name == "acsl-xi-smoke" and smoke.storage == spec.storage
    assert smoke.dataset.model_dump(exclude_none=True) == SMOKE_DATASET
    assert smoke.model.overrides() == {"backbone": "tiny", "masks": True}
    assert smoke.training.epochs == 1 and smoke.training.batch_size <= 4
    assert smoke.search.trials == 2 and smoke.search.seeds == [0]
    assert len(smoke.search.initial_points) == 2
    assert smoke.resources.workers == 1 and smoke.resources.gpus_per_worker == 0
    assert smoke.smoke is None

    data["smoke"] = {"search": {"trials": 1}, "dataset": {"kind": "synthetic", "classes": 4}}
    smoke = spec_from_dict(data).smoked()
    assert smoke.search.trials == 1 and smoke.search.seeds == [0]
    assert smoke.dataset.model_dump(exclude_none=True) == {"kind": "synthetic", "classes": 4}


def test_smoked_decoupled_shortens_both_stages() -> None:
    training = {"schedule": "decoupled", "stage1": {"epochs": 12}, "stage2": {"epochs": 12}}
    smoke = spec_from_dict(mutated(lambda d: d.update(training=training))).smoked()
    assert smoke.training.stage1 is not None and smoke.training.stage1.epochs == 1
    assert smoke.training.stage2 is not None and smoke.training.stage2.epochs == 1


def test_with_overrides() -> None:
    spec = spec_from_dict(BASE)
    moved = spec.with_overrides(storage="/scratch/x")
    assert moved.study_dir == Path("/scratch/x/acsl-xi") and moved.loss == spec.loss
    lvis = {"kind": "lvis", "train": "t.json", "val": "v.json", "images": "img"}
    assert spec.with_overrides(dataset=lvis).dataset.kind == "lvis"
    with pytest.raises(SpecError, match="^dataset.val: required key is missing"):
        spec.with_overrides(dataset={"kind": "lvis", "train": "t", "images": "i"})


def test_check_data_only_on_request(tmp_path: Path) -> None:
    lvis = {"kind": "lvis", "train": str(tmp_path / "t.json"), "val": str(tmp_path / "v.json"),
            "images": str(tmp_path)}  # fmt: skip
    spec = spec_from_dict(mutated(lambda d: d.update(dataset=lvis)))  # loads: syntax only
    with pytest.raises(SpecError, match=r"dataset.train: annotation file .*t\.json' does not"):
        spec.check_data()
    (tmp_path / "t.json").write_text("{}")
    (tmp_path / "v.json").write_text("{}")
    with pytest.raises(DatasetError, match=r"t\.json: .*'images', 'annotations' and 'categ"):
        spec.check_data()  # --check-data also reads the files (tests/ltsearch/test_check_data)
    spec_from_dict(BASE).check_data()  # synthetic: nothing to check


def test_config_hash_is_stable_and_discriminating() -> None:
    spec = spec_from_dict(BASE)
    h = config_hash({"loss": "acsl", "acsl.xi": 0.5}, spec)
    assert len(h) == 16
    assert config_hash({"loss": "acsl", "acsl.xi": 0.5, "acsl.seed": 0.0}, spec) == h  # default
    assert config_hash({"loss": "acsl", "acsl.xi": 0.6}, spec) != h
    assert config_hash({"loss": "ce"}, spec) != h
    other_seeds = spec_from_dict(mutated(lambda d: d["search"].update(seeds=[5], trials=9)))
    assert config_hash({"loss": "acsl", "acsl.xi": 0.5}, other_seeds) == h
    for change in (
        lambda d: d["training"].update(epochs=4),
        lambda d: d["model"].update(box_loss="giou"),
        lambda d: d["dataset"].update(classes=21),
    ):
        assert config_hash({"loss": "acsl", "acsl.xi": 0.5}, spec_from_dict(mutated(change))) != h
    fixed = spec_from_dict(mutated(lambda d: d["loss"]["params"].update(background="paper")))
    assert config_hash({"loss": "acsl", "acsl.xi": 0.5}, fixed) != h  # spec's fixed value counts
    with pytest.raises(ValueError, match="does not belong to loss"):
        config_hash({"loss": "acsl", "ce.xi": 0.5}, spec)


def test_stage1_hash_ignores_stage2() -> None:
    def spec(stage2_lr: float, stage1_epochs: int) -> StudySpec:
        training = {"schedule": "decoupled", "stage1": {"epochs": stage1_epochs},
                    "stage2": {"lr": stage2_lr}}  # fmt: skip
        return spec_from_dict(mutated(lambda d: d.update(training=training)))

    assert stage1_hash(spec(0.1, 2)) == stage1_hash(spec(0.2, 2)) != stage1_hash(spec(0.1, 3))
    assert stage1_hash(spec_from_dict(BASE)) is None


def test_model_section_mirrors_model_spec() -> None:
    detector = pytest.importorskip("ltmodels.modeling.detector")
    fields = {f.name for f in dataclasses.fields(detector.ModelSpec)}
    assert set(ModelSection.model_fields) <= fields
    section = ModelSection.model_validate({"backbone": "tiny", "min_size": [96, 128]})
    built = detector.ModelSpec.tiny(**section.overrides())
    assert built.min_size == (96, 128) and built.backbone == "tiny"


def test_training_keys_mirror_stage_config() -> None:
    trial = pytest.importorskip("ltmodels.trial.config")
    fields = {f.name for f in dataclasses.fields(trial.StageConfig)}
    assert set(OPTIM_KEYS) <= fields
    assert set(trial.FINETUNE_PARTS) == set(FINETUNE_PARTS)


def test_synthetic_dataset_mirrors_synth_config() -> None:
    synthetic = pytest.importorskip("ltmodels.data.synthetic")
    spec = spec_from_dict(mutated(lambda d: d.update(dataset={
        "kind": "synthetic", "classes": 5, "train_images": 7, "val_images": 3, "image_size": 64,
        "seed": 1}))).dataset  # fmt: skip
    assert spec.kind == "synthetic"
    cfg = synthetic.SynthConfig(**spec.synth_kwargs())
    assert (cfg.num_classes, cfg.train_images, cfg.image_size) == (5, 7, 64)


def test_full_eval_belongs_to_feature_cache_trials() -> None:
    """stage2.full_eval: allowed (and needed for segm objectives) with the feature cache; an
    error, naming the key, when stage 2 fine-tunes more than the box predictor."""
    raw = yaml.safe_load(DESIGN_YAML)
    raw["search"]["objectives"] = ["segm/APr:max", "bbox/APf:max"]
    with pytest.raises(SpecError, match=r"search\.objectives\.0: feature-cache trials"):
        spec_from_dict(raw)
    raw["training"]["stage2"]["full_eval"] = True
    assert spec_from_dict(raw).training.stage2.full_eval is True
    raw["training"]["stage2"]["finetune"] = ["box_predictor", "rpn"]
    with pytest.raises(SpecError, match=r"training\.stage2\.full_eval: applies to"):
        spec_from_dict(raw)
