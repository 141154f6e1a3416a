"""``iterations``: a stage's length in optimizer steps (detectron2's MAX_ITER) instead of
epochs. Validated with its key, its ``lr_milestones`` counted in iterations, hashed only
when given, refused with early stopping, scaled by ``--smoke`` and ``--embedded`` with the
paper's budget named in the rules, and passed to the trial."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # test_lr_milestones: the golden specs
from test_lr_milestones import ACSL, DECOUPLED, E2E, GAP, GOLDEN, with_training  # noqa: E402

from ltsearch.errors import SpecError  # noqa: E402
from ltsearch.run.trainable import StudyContext, trial_config  # noqa: E402
from ltsearch.spec.hashing import config_hash, stage1_hash  # noqa: E402
from ltsearch.spec.study import load_spec, spec_from_dict  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _iters(base: dict[str, Any], stage: tuple[str, ...], n: int, **more: Any) -> dict[str, Any]:
    """``base`` with ``iterations: n`` (and ``more``) in place of ``epochs`` in ``stage``."""
    data = with_training(base, (*stage, "iterations"), n)
    node = data["training"]
    for key in stage:
        node = node[key]
    node.pop("epochs", None)
    node.update(more)
    return data


def test_unset_iterations_keep_the_hashes_and_set_ones_change_them() -> None:
    assert config_hash(GAP, spec_from_dict(E2E)) == GOLDEN["e2e gap"]
    e2e = spec_from_dict(_iters(E2E, (), 900))
    assert config_hash(GAP, e2e) != GOLDEN["e2e gap"]
    s1 = spec_from_dict(_iters(DECOUPLED, ("stage1",), 90000))
    assert stage1_hash(s1) != GOLDEN["decoupled stage 1"]
    s2 = spec_from_dict(_iters(DECOUPLED, ("stage2",), 5000))
    assert stage1_hash(s2) == GOLDEN["decoupled stage 1"]
    assert config_hash(ACSL, s2) != GOLDEN["decoupled acsl"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            with_training(DECOUPLED, ("stage1", "iterations"), 90000),
            "training.stage1.iterations: gives the stage's length twice (epochs 24, "
            "iterations 90000); keep one of the two",
        ),
        (
            _iters(DECOUPLED, ("stage1",), 90000, lr_milestones=[60000, 90000]),
            "training.stage1.lr_milestones: [60000, 90000] are not increasing iterations "
            "below iterations (90000)",
        ),
        (
            _iters(E2E, (), 0),
            "training.iterations: got 0; input should be greater than 0",
        ),
        (
            {
                **_iters(E2E, (), 900),
                "search": {"sampler": "grid", "early_stopping": {"rungs": [1]}},
            },
            "search.early_stopping: rungs are epochs, but training gives iterations (900)",
        ),
    ],
)
def test_bad_budgets_are_one_line_naming_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as info:
        spec_from_dict(data, file="study.yaml")
    line = str(info.value)
    assert line.startswith(f"study.yaml: {message}"), line
    assert "\n" not in line


def test_iterations_and_their_milestones_reach_the_trial(tmp_path: Path) -> None:
    data = _iters(DECOUPLED, ("stage1",), 90000, lr_milestones=[60000, 80000])
    spec = spec_from_dict({**data, "storage": str(tmp_path)})
    ctx = StudyContext(spec=spec.to_dict(), study_dir=str(spec.study_dir), data={
        "train_json": "t.json", "val_json": "v.json", "train_root": "i", "val_root": "i"
    })  # fmt: skip
    cfg = trial_config(ctx, spec, {"loss": "acsl", "loss_params": {"xi": 0.7}}, 0)
    assert cfg.stage1 is not None
    assert cfg.stage1.iterations == 90000 and cfg.stage1.lr_milestones == (60000.0, 80000.0)
    assert cfg.stage1.milestone_fractions() == pytest.approx((2 / 3, 8 / 9))
    assert cfg.train.iterations is None and cfg.train.epochs == 6
    assert "iterations" not in spec.to_dict()["training"]["stage2"]


def test_smoke_and_embedded_turn_the_budget_into_their_epochs() -> None:
    data = _iters(DECOUPLED, ("stage1",), 90000, lr_milestones=[60000, 80000])
    smoked = spec_from_dict(data).smoked()
    assert smoked.training.stage1 is not None
    assert smoked.training.stage1.iterations is None and smoked.training.stage1.epochs == 1
    assert smoked.training.stage1.lr_milestones == pytest.approx([2 / 3, 8 / 9])
    embedded = spec_from_dict(data).embedded_variant()
    s1 = embedded.training.stage1
    assert s1 is not None and s1.iterations is None and s1.epochs == 3
    assert s1.lr_milestones == pytest.approx([2.0, 2.6667])
    assert embedded.profile is not None
    [rule] = [r for r in embedded.profile.rules if r.startswith("stage 1:")]
    assert "(paper: 90000 iterations, lr 0.02, batch 16" in rule, rule
    assert "[60000, 80000] of 90000 iterations -> [2, 2.6667] of 3" in rule, rule


def test_the_ahrl_studies_give_the_paper_s_iterations() -> None:
    """90k iterations a stage; the paper's milestones 60k / 80k are the engine's default
    2/3 and 8/9, so the studies give none (and their --embedded runs keep their hashes)."""
    for name in ("ahrl_table3", "ahrl_table5"):
        spec = load_spec(REPO / "studies" / f"{name}.yaml")
        for stage in (spec.training.stage1, spec.training.stage2):
            assert stage is not None
            assert stage.iterations == 90000 and stage.lr_milestones is None
