"""``lr_milestones`` of a training stage: validated at load time, scaled by --smoke, passed
to the trial, and hashed only when given (the hashes of studies that do not give them are
the ones recorded before the key existed: resume and shared stage-1 caches depend on it)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from ltsearch.errors import SpecError
from ltsearch.spec.hashing import config_hash, stage1_hash
from ltsearch.spec.study import spec_from_dict

E2E: dict[str, Any] = {
    "name": "golden-e2e",
    "dataset": {"kind": "synthetic", "classes": 20},
    "model": {"backbone": "tiny", "masks": True},
    "training": {"schedule": "end_to_end", "epochs": 3, "lr": 0.01},
    "loss": {"name": "gap", "params": {"gamma": {"grid": [0.0, 1.0]}}},
    "search": {"sampler": "grid"},
}
DECOUPLED: dict[str, Any] = {
    "name": "golden-dec",
    "dataset": {"kind": "synthetic", "classes": 20},
    "model": {"backbone": "tiny", "masks": False},
    "training": {
        "schedule": "decoupled",
        "stage1": {"loss": "ce", "epochs": 24},
        "stage2": {"epochs": 6, "finetune": ["box_predictor"]},
    },
    "loss": {"name": "acsl", "params": {"xi": {"grid": [0.5, 0.7]}}},
    "search": {"sampler": "grid"},
}
# Computed before lr_milestones (and GAP's online / exclude_fg) existed: they must not move.
GOLDEN = {
    "e2e gap": "ec0cfad21fbbbb08",
    "e2e acsl": "b47e681d402a749a",
    "decoupled acsl": "b111469ba94059a3",
    "decoupled stage 1": "d71293277bde55d2",
}
GAP, ACSL = {"loss": "gap", "gap.gamma": 1.0}, {"loss": "acsl", "acsl.xi": 0.7}


def with_training(base: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(base)
    node = data["training"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


def test_hashes_of_specs_without_milestones_are_unchanged() -> None:
    e2e, dec = spec_from_dict(E2E), spec_from_dict(DECOUPLED)
    assert config_hash(GAP, e2e) == GOLDEN["e2e gap"]
    assert config_hash(ACSL, e2e) == GOLDEN["e2e acsl"]
    assert config_hash(ACSL, dec) == GOLDEN["decoupled acsl"]
    assert stage1_hash(dec) == GOLDEN["decoupled stage 1"]


def test_giving_milestones_changes_the_hashes_of_what_they_change() -> None:
    e2e = spec_from_dict(with_training(E2E, ("lr_milestones",), [2]))
    assert config_hash(GAP, e2e) != GOLDEN["e2e gap"]
    s1 = spec_from_dict(with_training(DECOUPLED, ("stage1", "lr_milestones"), [16, 22]))
    assert stage1_hash(s1) != GOLDEN["decoupled stage 1"]
    assert config_hash(ACSL, s1) != GOLDEN["decoupled acsl"]
    s2 = spec_from_dict(with_training(DECOUPLED, ("stage2", "lr_milestones"), [3, 5]))
    assert stage1_hash(s2) == GOLDEN["decoupled stage 1"]  # stage 1 is still the shared one
    assert config_hash(ACSL, s2) != GOLDEN["decoupled acsl"]
    other = spec_from_dict(with_training(DECOUPLED, ("stage2", "lr_milestones"), [4]))
    assert config_hash(ACSL, other) != config_hash(ACSL, s2)


@pytest.mark.parametrize(
    ("path", "value", "where"),
    [
        (("stage1", "lr_milestones"), [22, 16], "training.stage1.lr_milestones"),
        (("stage1", "lr_milestones"), [16, 16], "training.stage1.lr_milestones"),
        (("stage2", "lr_milestones"), [3, 6], "training.stage2.lr_milestones"),
        (("stage2", "lr_milestones"), [0], "training.stage2.lr_milestones"),
        (("lr_milestones",), [8, 11], "training.lr_milestones"),
    ],
)
def test_bad_milestones_are_refused_with_key_and_fix(
    path: tuple[str, ...], value: Any, where: str
) -> None:
    with pytest.raises(SpecError) as info:
        spec_from_dict(with_training(DECOUPLED, path, value))
    line = str(info.value)
    assert line.startswith(where), line  # [0]: the element's own path, lr_milestones.0
    assert any(fix in line for fix in ("list them in order", "greater than 0", "move it into"))


def test_end_to_end_milestones_past_the_epochs_name_the_bound() -> None:
    with pytest.raises(SpecError, match=r"training\.lr_milestones: \[2, 3\] .* each below 3"):
        spec_from_dict(with_training(E2E, ("lr_milestones",), [2, 3]))


def test_milestones_reach_the_trial_stages() -> None:
    spec = spec_from_dict(with_training(DECOUPLED, ("stage1", "lr_milestones"), [16, 22.5]))
    assert spec.training.stage1 is not None and spec.training.stage2 is not None
    assert spec.training.stage1.optim()["lr_milestones"] == (16.0, 22.5)
    assert spec.training.stage2.optim()["lr_milestones"] is None
    empty = spec_from_dict(with_training(E2E, ("lr_milestones",), []))
    assert empty.training.optim()["lr_milestones"] == ()  # no decay at all


def test_smoke_scales_milestones_to_its_one_epoch() -> None:
    data = with_training(DECOUPLED, ("stage1", "lr_milestones"), [16, 22])
    smoked = spec_from_dict(data).smoked()
    assert smoked.training.stage1 is not None and smoked.training.stage2 is not None
    assert smoked.training.stage1.epochs == 1
    assert smoked.training.stage1.lr_milestones == pytest.approx([16 / 24, 22 / 24])
    assert smoked.training.stage2.lr_milestones is None
