"""Training loop, schedule, prediction format, checkpoints and exact resume."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from torch import nn
from torch.utils.data import DataLoader

from ltmodels.data import LVISDetection, collate_fn
from ltmodels.data.synthetic import SynthConfig, write_synthetic
from ltmodels.engine.checkpoint import (
    CheckpointError,
    checkpoint_problem,
    drop_damaged,
    file_sha256,
    load_checkpoint,
    save_checkpoint,
    sidecar,
)
from ltmodels.engine.evaluate import evaluate, predict
from ltmodels.engine.train import (
    NonFiniteLossError,
    WarmupMultiStepLR,
    build_optimizer,
    train_one_epoch,
)
from ltmodels.losses import LOSSES, LongTailLoss, build_loss
from ltmodels.modeling.detector import ModelSpec, build_detector

C = 3
SIZE = 64


class ToyDetection(torch.utils.data.Dataset):
    """Random 64 px images, each with two box-shaped objects (labels 1..3)."""

    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            xy = torch.randint(0, 30, (2, 2), generator=g).float()
            boxes = torch.cat([xy, xy + torch.randint(10, 30, (2, 2), generator=g)], 1)
            masks = torch.zeros(2, SIZE, SIZE, dtype=torch.uint8)
            image = torch.rand(3, SIZE, SIZE, generator=g) * 0.2
            for j, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
                masks[j, y0:y1, x0:x1] = 1
                image[j, y0:y1, x0:x1] = 0.9
            labels = torch.randint(1, C + 1, (2,), generator=g)
            target = {"boxes": boxes, "labels": labels, "masks": masks, "image_id": i}
            self.items.append((image, target))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        return self.items[i]


def stateful_loss() -> LongTailLoss:
    """A registered loss that keeps state across iterations when one exists."""
    for name in ("eqlv2", "seesaw", "gap", "ce"):
        if name in LOSSES:
            return build_loss(name, num_classes=C)
    pytest.skip("no loss registered")


def setup(seed: int, total_iters: int) -> tuple[nn.Module, Any, Any]:
    torch.manual_seed(seed)
    model = build_detector(ModelSpec.tiny(min_size=SIZE, max_size=SIZE), stateful_loss(), C)
    opt = build_optimizer(model, lr=0.02)
    sched = WarmupMultiStepLR(opt, total_iters=total_iters, warmup_iters=3)
    return model, opt, sched


def test_warmup_multistep_by_hand() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupMultiStepLR(opt, total_iters=90, warmup_iters=10, warmup_factor=0.001)
    lrs = []
    for _ in range(90):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # warm-up: 0.001 at 0, halfway 0.001 * 0.5 + 0.5 = 0.5005; decays at 60 and 80 (2/3, 8/9)
    assert lrs[0] == pytest.approx(0.001) and lrs[5] == pytest.approx(0.5005)
    assert lrs[10] == lrs[59] == pytest.approx(1.0)
    assert lrs[60] == lrs[79] == pytest.approx(0.1) and lrs[80] == pytest.approx(0.01)


def test_build_optimizer_restricts_to_trainable_subset() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[0].bias.requires_grad_(False)
    opt = build_optimizer(model, lr=0.1, params=model[0].parameters())
    assert opt.param_groups[0]["params"] == [model[0].weight]
    assert opt.param_groups[0]["weight_decay"] == 1e-4
    with pytest.raises(ValueError):
        build_optimizer(model, lr=0.1, params=[model[0].bias])


class NaNLoss(LongTailLoss):
    name: ClassVar[str] = "nan"

    @classmethod
    def num_logits(cls, num_classes: int) -> int:
        return num_classes + 1

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(-1)[:, 1:]

    def forward(self, logits, labels, **context):  # type: ignore[override]
        return {"loss_cls": logits.sum() * float("nan")}


def test_non_finite_loss_raises_before_updating() -> None:
    torch.manual_seed(0)
    model = build_detector(ModelSpec.tiny(min_size=SIZE, max_size=SIZE), NaNLoss(num_classes=C), C)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = DataLoader(ToyDetection(2), batch_size=2, collate_fn=collate_fn)
    opt = build_optimizer(model, lr=0.02)
    with pytest.raises(NonFiniteLossError, match="iteration 0") as info:
        train_one_epoch(model, opt, loader, scheduler=None, device="cpu", epoch=3)
    assert info.value.epoch == 3 and np.isnan(info.value.terms["loss_cls"])
    assert np.isfinite(info.value.terms["loss_mask"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_resume_is_exact(tmp_path: Path) -> None:
    """2 epochs straight == 1 epoch, checkpoint, fresh objects and RNGs, load, 1 epoch."""
    data = ToyDetection(6)

    def loader() -> DataLoader:  # shuffled by torch's global RNG: restored by the checkpoint
        return DataLoader(data, batch_size=2, shuffle=True, collate_fn=collate_fn)

    def epoch(model: nn.Module, opt: Any, sched: Any, e: int) -> dict[str, float]:
        return train_one_epoch(model, opt, loader(), scheduler=sched, device="cpu", epoch=e)

    model, opt, sched = setup(0, total_iters=6)
    epoch(model, opt, sched, 0)
    straight = epoch(model, opt, sched, 1)

    model2, opt2, sched2 = setup(0, total_iters=6)
    epoch(model2, opt2, sched2, 0)
    path = save_checkpoint(
        tmp_path / "ckpt.pt",
        model=model2,
        optimizer=opt2,
        scheduler=sched2,
        epoch=1,
        extra={"note": "after epoch 0", "metrics": {"loss": 1.5}},
    )
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    model3, opt3, sched3 = setup(7, total_iters=6)
    ckpt = load_checkpoint(path, model=model3, optimizer=opt3, scheduler=sched3)
    assert ckpt["epoch"] == 1 and ckpt["extra"]["metrics"] == {"loss": 1.5}
    resumed = epoch(model3, opt3, sched3, 1)

    assert resumed["loss"] == straight["loss"]
    state, state3 = model.state_dict(), model3.state_dict()
    loss_state = [k for k in state if k.startswith("roi_heads.cls_loss.")]
    assert loss_state or model.roi_heads.cls_loss.name == "ce"  # stateful losses: checkpointed
    assert all(torch.equal(state[k], state3[k]) for k in state)
    assert sched3.last_epoch == sched.last_epoch == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "ckpt.pt.sha256"]  # no tmp


def test_checkpoint_restores_rng_and_keeps_old_file_on_failure(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    path = save_checkpoint(tmp_path / "c.pt", model=model, epoch=0)
    draws = (torch.rand(3), np.random.rand(3), random.random())
    load_checkpoint(path, model=model)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1])
    assert draws[2] == again[2]
    with pytest.raises(Exception):  # noqa: B017 - a lambda is not picklable
        save_checkpoint(path, model=model, epoch=1, extra={"bad": lambda: 0})
    assert load_checkpoint(path, restore_rng=False)["epoch"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "c.pt.sha256"]
    with pytest.raises(ValueError, match="optimizer"):
        load_checkpoint(path, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


def _flip_in_tensor(path: Path, values: torch.Tensor) -> None:
    """Flip the lowest bit of the first float32 of ``values`` where the file stores it."""
    data = bytearray(path.read_bytes())
    at = data.find(values[:4].numpy().tobytes())
    assert at > 0, "tensor bytes not found in the checkpoint"
    data[at] ^= 1
    path.write_bytes(bytes(data))


def test_checkpoint_sha256_catches_a_flipped_bit_and_truncation(tmp_path: Path) -> None:
    model = nn.Linear(64, 64)
    path = save_checkpoint(tmp_path / "c.pt", model=model, epoch=3)
    assert sidecar(path).read_text() == f"{file_sha256(path)}  c.pt\n"  # sha256sum format
    assert checkpoint_problem(path) is None and checkpoint_problem(tmp_path / "none.pt") is None
    _flip_in_tensor(path, model.weight.detach().flatten())
    # torch itself does not check its zip CRCs: the flipped weight would load silently
    flipped = torch.load(path, weights_only=True)["model"]["weight"]
    assert not torch.equal(flipped, model.weight.detach())
    with pytest.raises(CheckpointError, match=r"c\.pt: damaged checkpoint"):
        load_checkpoint(path, model=nn.Linear(64, 64))
    assert "damaged checkpoint" in (checkpoint_problem(path) or "")

    short = save_checkpoint(tmp_path / "t.pt", model=model, epoch=3)
    short.write_bytes(short.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"t\.pt: damaged checkpoint"):
        load_checkpoint(short)
    sidecar(short).unlink()  # without its sidecar, a truncated file is still refused
    with pytest.raises(CheckpointError, match=r"t\.pt: unreadable checkpoint"):
        load_checkpoint(short)
    assert "unreadable" in (checkpoint_problem(short) or "")


def test_a_checkpoint_without_sidecar_still_loads(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    path = save_checkpoint(tmp_path / "old.pt", model=model, epoch=5)
    sidecar(path).unlink()  # as written before checksums
    assert load_checkpoint(path, restore_rng=False)["epoch"] == 5
    assert checkpoint_problem(path) is None


def test_drop_damaged_removes_the_file_and_its_sidecar_with_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = nn.Linear(64, 64)
    good = save_checkpoint(tmp_path / "good.pt", model=model, epoch=1)
    assert not drop_damaged(good, "rebuilding") and good.exists()
    bad = save_checkpoint(tmp_path / "bad.pt", model=model, epoch=1)
    _flip_in_tensor(bad, model.weight.detach().flatten())
    with caplog.at_level("WARNING", logger="ltmodels.engine.checkpoint"):
        assert drop_damaged(bad, "rebuilding")
    assert not bad.exists() and not sidecar(bad).exists()
    [record] = caplog.records
    assert "bad.pt: damaged checkpoint" in record.message and "rebuilding" in record.message
    assert "\n" not in record.message


class FixedDetector(nn.Module):
    """Returns one fixed detection per image, in input-image coordinates."""

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        h, w = images[0].shape[-2:]
        masks = torch.zeros(1, 1, h, w)
        masks[0, 0, 2:6, 4:8] = 0.9  # a 4 x 4 square
        box = torch.tensor([[4.0, 2.0, 8.0, 6.0]])
        return [
            {
                "boxes": box,
                "labels": torch.tensor([2]),
                "scores": torch.tensor([0.5]),
                "masks": masks,
            }
            for _ in images
        ]


def test_predict_maps_back_to_original_size_and_encodes_rle() -> None:
    batch = [(torch.zeros(3, 10, 20), {"image_id": 7})]
    loader = DataLoader(batch, batch_size=1, collate_fn=collate_fn)
    dets = predict(
        FixedDetector(),
        loader,
        device="cpu",
        label_to_cat_id={1: 11, 2: 22},
        masks=True,
        image_sizes={7: (20, 40)},  # the loader's image was resized by 1/2
    )
    assert len(dets) == 1
    d = dets[0]
    assert (d["image_id"], d["category_id"], d["score"]) == (7, 22, 0.5)
    assert d["bbox"] == pytest.approx([8.0, 4.0, 8.0, 8.0])  # x, y, w, h doubled
    assert isinstance(d["segmentation"]["counts"], str) and d["segmentation"]["size"] == [20, 40]
    assert mask_utils.area(d["segmentation"]) == 64  # the 4 x 4 square, doubled


@pytest.mark.slow
def test_training_on_synthetic_data_lowers_the_loss(tmp_path: Path) -> None:
    cfg = SynthConfig(num_classes=4, train_images=32, val_images=8, image_size=64, seed=0)
    paths = write_synthetic(tmp_path / "synth", cfg)
    train = LVISDetection(paths.train_json, paths.root)
    val = LVISDetection(paths.val_json, paths.root)
    torch.manual_seed(0)
    loss = build_loss("ce" if "ce" in LOSSES else sorted(LOSSES)[0], num_classes=train.num_classes)
    spec = ModelSpec.tiny(min_size=SIZE, max_size=SIZE)
    model = build_detector(
        spec, loss, train.num_classes, image_counts=train.image_counts, num_images=len(train)
    )
    loader = DataLoader(train, batch_size=4, shuffle=True, collate_fn=collate_fn)
    epochs = 4
    opt = build_optimizer(model, lr=0.02)
    sched = WarmupMultiStepLR(opt, total_iters=epochs * len(loader), warmup_iters=8)
    steps: list[dict[str, float]] = []
    history = [
        train_one_epoch(
            model, opt, loader, scheduler=sched, device="cpu", epoch=e, on_step=steps.append
        )
        for e in range(epochs)
    ]
    assert len(steps) == epochs * len(loader) and history[0]["images"] == 32
    assert history[-1]["loss"] < 0.7 * history[0]["loss"]
    assert history[-1]["loss_cls"] < history[0]["loss_cls"]
    val_loader = DataLoader(val, batch_size=4, collate_fn=collate_fn)
    boxes_only = predict(
        model, val_loader, device="cpu", label_to_cat_id=val.label_to_cat_id, masks=False
    )
    assert boxes_only and "segmentation" not in boxes_only[0]
    assert model.roi_heads.infer_masks  # restored after a boxes-only pass
    metrics = evaluate(
        model, val_loader, paths.val_json, device="cpu", label_to_cat_id=val.label_to_cat_id
    )
    for key in ("bbox/AP", "bbox/APr", "bbox/APc", "bbox/APf", "segm/AP", "segm/APf"):
        assert key in metrics and isinstance(metrics[key], float)
    assert metrics["bbox/AP"] > 0.0
