"""``dataset.min_val_images``: every synthetic class in at least that many validation
images, so rare classes have more than a handful of validation boxes and AP_r is less
noisy. Validated with its key, hashed only when given (recorded studies keep their hashes),
passed to the generator (training images unchanged), and offered by ``ltsearch data
synth`` with a relative ``--out`` from another working directory."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # test_lr_milestones: the golden specs
from test_lr_milestones import ACSL, DECOUPLED, E2E, GAP, GOLDEN  # noqa: E402

from ltmodels.data.synthetic import SynthConfig, write_synthetic  # noqa: E402
from ltsearch.errors import SpecError  # noqa: E402
from ltsearch.spec.hashing import config_hash, stage1_hash  # noqa: E402
from ltsearch.spec.study import spec_from_dict  # noqa: E402

SMALL = {"classes": 6, "train_images": 120, "val_images": 24, "image_size": 64}
SMALL_CFG = {"num_classes": 6, "train_images": 120, "val_images": 24, "image_size": 64}


def _with_min(base: dict[str, Any], n: int) -> dict[str, Any]:
    data = copy.deepcopy(base)
    data["dataset"]["min_val_images"] = n
    return data


def _groups(path: Path) -> tuple[Counter[str], list[tuple[int, int]]]:
    """Validation instances per frequency group; training instances per class."""
    val = json.loads((path / "lvis_synth_val.json").read_text())
    train = json.loads((path / "lvis_synth_train.json").read_text())
    freq = {c["id"]: c["frequency"] for c in train["categories"]}
    per_class = Counter(a["category_id"] for a in train["annotations"])
    return Counter(freq[a["category_id"]] for a in val["annotations"]), sorted(per_class.items())


def test_unset_keeps_the_hashes_and_a_set_one_changes_them() -> None:
    assert config_hash(GAP, spec_from_dict(E2E)) == GOLDEN["e2e gap"]
    assert stage1_hash(spec_from_dict(DECOUPLED)) == GOLDEN["decoupled stage 1"]
    # the generator's default given explicitly is the same data: the same hashes
    assert config_hash(GAP, spec_from_dict(_with_min(E2E, 2))) == GOLDEN["e2e gap"]
    assert config_hash(GAP, spec_from_dict(_with_min(E2E, 10))) != GOLDEN["e2e gap"]
    decoupled = spec_from_dict(_with_min(DECOUPLED, 10))
    assert stage1_hash(decoupled) != GOLDEN["decoupled stage 1"]
    assert config_hash(ACSL, decoupled) != GOLDEN["decoupled acsl"]


@pytest.mark.parametrize("bad", [0, 11])
def test_out_of_range_is_one_line_naming_the_key(bad: int) -> None:
    with pytest.raises(SpecError) as info:
        spec_from_dict(_with_min(E2E, bad), file="study.yaml")
    line = str(info.value)
    assert line.startswith(f"study.yaml: dataset.min_val_images: got {bad}; input should be"), line
    assert "\n" not in line


def test_the_generator_gets_it_and_rare_classes_gain_validation_boxes(tmp_path: Path) -> None:
    spec = spec_from_dict(_with_min({**E2E, "dataset": {"kind": "synthetic", **SMALL}}, 10))
    kwargs = spec.dataset.synth_kwargs()
    assert kwargs["min_val_images"] == 10
    more, train_more = _groups(write_synthetic(tmp_path / "ten", SynthConfig(**kwargs)).root)
    base, train_base = _groups(write_synthetic(tmp_path / "two", SynthConfig(**SMALL_CFG)).root)
    assert train_more == train_base  # the training images are the same
    assert base["r"] <= 8 and more["r"] >= 3 * base["r"], (base, more)


def test_data_synth_cli_with_a_relative_out_from_another_directory(tmp_path: Path) -> None:
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    cli = [sys.executable, "-m", "ltsearch", "data", "synth", "--classes", "6",
           "--train-images", "120", "--val-images", "24", "--image-size", "64"]  # fmt: skip
    out = subprocess.run(
        [*cli, "--out", "synth10", "--min-val-images", "10"],
        cwd=cwd, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "rare" in out.stdout
    groups, _ = _groups(cwd / "synth10")
    assert groups["r"] >= 20, groups
    bad = subprocess.run(
        [*cli, "--out", "bad", "--min-val-images", "0"],
        cwd=cwd, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert bad.returncode != 0
    assert "min_val_images" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    assert not (cwd / "bad" / "lvis_synth_val.json").exists()
