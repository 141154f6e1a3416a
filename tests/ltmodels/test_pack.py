"""Packed feature-cache trials: each member of a pack ends exactly as the same run alone.

Every loss is a member of one mixed pack (with parameters away from their defaults, an MFS
memory on two EBL members, which draw from torch's global RNG); a member that fails (a
non-finite loss, a loss that cannot be built) fails alone.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from ltmodels.data.synthetic import SynthConfig, SynthPaths, ensure_synthetic
from ltmodels.engine.train import NonFiniteLossError
from ltmodels.errors import ConfigError
from ltmodels.trial.config import DataConfig, StageConfig, TrialConfig, TrialResult
from ltmodels.trial.pack import pack_key, packable, run_pack
from ltmodels.trial.run import run_trial

SYNTH = SynthConfig(num_classes=8, train_images=32, val_images=16, image_size=64, seed=3)
MODEL = {"backbone": "tiny", "min_size": 64, "max_size": 64, "masks": False}
STAGE1 = StageConfig(loss="ce", epochs=6, lr=0.02, batch_size=4, warmup_iters=10)
LOSSES: list[tuple[str, dict]] = [
    ("ce", {}),
    ("bce", {}),
    ("eql", {"lambda_": 0.01}),
    ("eqlv2", {"gamma": 10.0}),
    ("seesaw", {"p": 0.6, "q": 1.5}),
    ("acsl", {"xi": 0.6}),
    ("c2am", {"s": 20.0, "alpha": 0.5}),
    ("gap", {"gamma": 1.0, "lambda_gap": 0.2}),
    ("ebl", {"alpha": 0.9, "mfs": True, "mfs_size": 20, "mfs_k": 3, "mfs_m": 2}),
    ("ebl", {"alpha": 0.8, "mfs": True, "mfs_size": 10, "mfs_k": 2, "mfs_m": 3}),  # 2 draw
    ("ahr", {"num_clusters": 3, "lambda_m": 1.0}),
]
TOL = 1e-6


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> DataConfig:
    synth: SynthPaths = ensure_synthetic(tmp_path_factory.mktemp("pack-data"), SYNTH)
    root = str(synth.root)
    return DataConfig(str(synth.train_json), str(synth.val_json), root, root)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("pack-cache"))


def trial(data: DataConfig, cache_dir: str, loss: str, params: dict, **kw) -> TrialConfig:
    train = StageConfig(
        loss=loss,
        loss_params=params,
        epochs=3,
        lr=kw.pop("lr", 0.02),
        batch_size=8,
        warmup_iters=3,
        finetune=("box_predictor",),
        use_feature_cache=True,
    )
    return TrialConfig(
        data=data,
        train=train,
        stage1=STAGE1,
        schedule="decoupled",
        model=MODEL,
        seed=kw.pop("seed", 0),
        eval_masks=False,
        cache_dir=cache_dir,
        **kw,
    )


def assert_same(packed: TrialResult, alone: TrialResult) -> None:
    assert packed.metrics.keys() == alone.metrics.keys()
    for k, v in alone.metrics.items():
        assert packed.metrics[k] == pytest.approx(v, abs=TOL), k
    assert len(packed.epochs) == len(alone.epochs)
    for p, a in zip(packed.epochs, alone.epochs, strict=True):
        for k, v in a.items():
            if k != "seconds":
                assert p[k] == pytest.approx(v, rel=TOL, abs=TOL), k
    key = ("category_id", "iou_type")
    by_cat = {tuple(r[k] for k in key): r for r in alone.categories}
    assert len(packed.categories) == len(by_cat)
    for r in packed.categories:
        assert r["AP"] == pytest.approx(by_cat[tuple(r[k] for k in key)]["AP"], abs=TOL)


def test_every_loss_in_a_mixed_pack_equals_its_run_alone(data: DataConfig, cache_dir: str):
    cfgs = [trial(data, cache_dir, name, params) for name, params in LOSSES]
    assert len({pack_key(c) for c in cfgs}) == 1
    packed = run_pack(cfgs)
    alone = [run_trial(c, workdir=Path(cache_dir) / f"alone-{i}") for i, c in enumerate(cfgs)]
    for (name, _), p, a in zip(LOSSES, packed, alone, strict=True):
        assert isinstance(p, TrialResult), (name, p)
        assert p.timings["pack_size"] == len(cfgs) and "pack_size" not in a.timings
        assert a.metrics["bbox/AP"] > 0.005, name  # it learned something to compare
        assert_same(p, a)
    # a pack of one is the run alone (run_trial runs exactly that)
    [one] = run_pack(cfgs[-1:])
    assert isinstance(one, TrialResult)
    assert one.metrics == alone[-1].metrics


def test_an_iteration_budget_trains_that_many_steps(data: DataConfig, cache_dir: str) -> None:
    """32 images in batches of 8: 4 steps an epoch. A budget of 12 iterations is the 3
    epochs exactly; one of 10 cuts the third epoch at 2 steps (and decays at 2/3 and 8/9
    of 10 iterations, so it is another run)."""
    base = trial(data, cache_dir, "acsl", {"xi": 0.6})
    work = Path(cache_dir)
    epochs = run_trial(base, workdir=work / "budget-epochs")
    budget = replace(base, train=replace(base.train, epochs=12, iterations=12))
    assert_same(run_trial(budget, workdir=work / "budget-12"), epochs)
    cut = replace(base, train=replace(base.train, epochs=12, iterations=10))
    short = run_trial(cut, workdir=work / "budget-10")
    assert [e["iterations"] for e in short.epochs] == [4, 4, 2]
    assert short.metrics["bbox/AP"] != pytest.approx(epochs.metrics["bbox/AP"], abs=TOL)


def test_a_failing_member_fails_alone(data: DataConfig, cache_dir: str) -> None:
    good = trial(data, cache_dir, "seesaw", {"p": 0.8, "q": 2.0})
    nan = trial(data, cache_dir, "ce", {}, lr=1e30)  # the loss overflows within an epoch
    unbuildable = trial(data, cache_dir, "gap", {"gamma": -1.0})  # out of its domain
    good2 = trial(data, cache_dir, "acsl", {"xi": 0.3})
    results = run_pack([good, nan, unbuildable, good2])
    assert isinstance(results[1], NonFiniteLossError)
    assert isinstance(results[2], (ConfigError, ValueError))
    for cfg, result in ((good, results[0]), (good2, results[3])):
        assert isinstance(result, TrialResult)
        assert_same(result, run_trial(cfg, workdir=Path(cache_dir) / "x"))
    with pytest.raises(NonFiniteLossError):  # alone, the failure is raised as before
        run_trial(nan, workdir=Path(cache_dir) / "nan")


def test_a_pack_too_big_for_memory_trains_in_chunks_with_the_same_results(
    data: DataConfig, cache_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory for two members' models: a pack of three (a failing one in the middle)
    trains as chunks of 2 and 1, and each member ends as it does alone."""
    from ltmodels.modeling.detector import ModelSpec
    from ltmodels.trial import pack

    per = pack.member_bytes(ModelSpec.tiny(**MODEL), SYNTH.num_classes)
    assert per > 4 * 500_000  # the tiny detector without masks: ~0.87M parameters, fp32
    monkeypatch.setattr(pack, "available_memory", lambda: int(2.5 * per / pack.MEMORY_SHARE))
    cfgs = [
        trial(data, cache_dir, "eqlv2", {"gamma": 10.0}),
        trial(data, cache_dir, "gap", {"gamma": -1.0}),  # out of its domain: fails alone
        trial(data, cache_dir, "c2am", {"s": 20.0, "alpha": 0.5}),
    ]
    sizes: list[int] = []
    real = pack._run_chunk
    monkeypatch.setattr(pack, "_run_chunk", lambda c, *a: sizes.append(len(c)) or real(c, *a))
    results = run_pack(cfgs)
    assert sizes == [2, 1]
    assert isinstance(results[1], (ConfigError, ValueError))
    for cfg, got in ((cfgs[0], results[0]), (cfgs[2], results[2])):
        assert isinstance(got, TrialResult)
        assert_same(got, run_trial(cfg, workdir=Path(cache_dir) / "chunk"))


def test_members_that_fit_bounds_a_chunk_by_memory() -> None:
    from ltmodels.trial.pack import MEMORY_SHARE, members_that_fit

    gib = 1 << 30
    assert members_that_fit(gib, 8, None) == 8  # unknown memory: no bound
    assert members_that_fit(gib, 8, int(16 * gib / MEMORY_SHARE)) == 8
    assert members_that_fit(gib, 8, int(3 * gib / MEMORY_SHARE)) == 3
    assert members_that_fit(gib, 8, gib) == 1  # at least one member


def test_pack_key_groups_what_shares_batches(data: DataConfig, cache_dir: str) -> None:
    base = trial(data, cache_dir, "ce", {})
    same = [
        trial(data, cache_dir, "acsl", {"xi": 0.2}),
        trial(data, cache_dir, "ce", {}, lr=0.05),
    ]
    other = [
        trial(data, cache_dir, "ce", {}, seed=1),
        replace(base, train=replace(base.train, epochs=4)),
        replace(base, train=replace(base.train, batch_size=4)),
        replace(base, stage1=replace(STAGE1, epochs=2)),
        replace(base, model={**MODEL, "box_batch_size_per_image": 64}),
    ]
    assert all(pack_key(c) == pack_key(base) for c in same)
    assert all(pack_key(c) != pack_key(base) for c in other)
    end_to_end = replace(base, schedule="end_to_end", stage1=None)
    assert not packable(end_to_end)
    with pytest.raises(ValueError, match="pack"):
        run_pack([base, other[0]])


def test_stage1_is_a_phase_only_when_it_trains(data: DataConfig, tmp_path: Path) -> None:
    """The live view shows "stage 1" while a run trains it, not when it is cached."""
    from ltmodels.engine import phases

    cfg = replace(trial(data, str(tmp_path), "ce", {}), stage1=replace(STAGE1, epochs=1))
    for expect_training in (True, False):
        seen: list[str] = []
        remove = phases.add_listener(lambda p, seen=seen: seen.append(p.name))
        try:
            run_trial(cfg, workdir=tmp_path / "run")
        finally:
            remove()
        names = list(dict.fromkeys(seen))  # first appearances, in order
        if expect_training:
            assert names[:3] == ["data", "stage1_wait", "stage1"], names
        else:
            assert "stage1" not in names and "stage1_wait" not in names, names
        assert names[-2:] == ["train", "eval"] and "cache" in names
