"""Helper of ``test_trial.py``: train with ``train_stage`` on 1 process, then on 2 DDP workers.

Run as a script (``torch.multiprocessing.spawn`` needs an importable entry point, which a
pytest module imported with ``--import-mode=importlib`` is not)::

    python tests/ltmodels/ddp_equivalence.py TRAIN_JSON ROOT OUT_DIR LOSS [ITERATIONS]

It writes ``OUT_DIR/init.pt`` (the common initial weights) and ``OUT_DIR/w{world}_r{rank}.pt``
for world 1 (in this process) and world 2 (two
spawned gloo workers, ``init_method=file://``): the final state dict, the epoch history and
each epoch's shard of the random and the repeat-factor sampler.

Both runs use the same data order (the samplers shard one epoch list), no random flip, and
a deterministic RoI/anchor sampler (a fixed pseudo-random pick instead of ``randperm``): with
random RoI sampling the workers draw from other RNG streams than the single process, which
is a difference of sampling, not of DDP. Sampled counts stay fixed per image (256 anchors,
64 RoIs), so per-worker means average to the whole-batch mean.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler

EPOCHS = 2
SIZE = 64
ITERATIONS = 4
"""Steps trained (half an epoch of 32 images in batches of 4), unless given. Longer runs
drift apart by more than float reduction order on some CPUs: at lr 0.02 with EQLv2 the
difference of the two runs stays at 1.5e-5 for 4 steps on an AVX2 host, then grows
(2.5e-3 at 8 steps, 4 at 16), where the hosts of earlier runs kept 16 steps within 1e-5."""


class FixedSampler(BalancedPositiveNegativeSampler):
    """torchvision's balanced sampler with a fixed, spread-out pick instead of randperm."""

    def __call__(self, matched_idxs):  # type: ignore[override]
        pos_masks, neg_masks = [], []
        for m in matched_idxs:
            positive = torch.where(m >= 1)[0]
            negative = torch.where(m == 0)[0]
            num_pos = min(
                positive.numel(), int(self.batch_size_per_image * self.positive_fraction)
            )
            num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)
            pos = positive[torch.argsort((positive * 7919) % 10007)[:num_pos]]
            neg = negative[torch.argsort((negative * 7919) % 10007)[:num_neg]]
            pm = torch.zeros_like(m, dtype=torch.uint8)
            nm = torch.zeros_like(m, dtype=torch.uint8)
            pm[pos] = 1
            nm[neg] = 1
            pos_masks.append(pm)
            neg_masks.append(nm)
        return pos_masks, neg_masks


def run(
    rank: int, world: int, train_json: str, root: str, out: str, loss_name: str, iterations: int
) -> None:
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group(
            "gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=world
        )
    from ltmodels.data import LVISDetection
    from ltmodels.modeling.detector import ModelSpec
    from ltmodels.trial.config import StageConfig
    from ltmodels.trial.schedules import build_model
    from ltmodels.trial.stages import train_loader, train_stage

    data = LVISDetection(train_json, root, with_masks=False)  # no random flip
    spec = ModelSpec.tiny(min_size=SIZE, max_size=SIZE, masks=False, box_batch_size_per_image=64)
    stage = StageConfig(
        loss=loss_name, epochs=EPOCHS, lr=0.02, batch_size=4, warmup_iters=4, iterations=iterations
    )
    torch.manual_seed(0)
    model = build_model(spec, stage, data, torch.device("cpu"))
    for sampler in (model.rpn.fg_bg_sampler, model.roi_heads.fg_bg_sampler):
        sampler.__class__ = FixedSampler
    if world == 1:
        torch.save(model.state_dict(), Path(out) / "init.pt")
    loader = train_loader(data, stage, seed=0)
    history = train_stage(
        model, stage, loader, device=torch.device("cpu"), ckpt_path=Path(out) / f"ckpt{world}.pt"
    )
    shards = {}
    for kind in ("random", "rfs"):
        s = StageConfig(batch_size=4, sampler=kind, rfs_threshold=0.3)
        sampler = train_loader(data, s, seed=3).sampler
        shards[kind] = []
        for epoch in range(EPOCHS):
            sampler.set_epoch(epoch)
            shards[kind].append(list(sampler))
    torch.save(
        {"state": model.state_dict(), "history": history, "shards": shards},
        Path(out) / f"w{world}_r{rank}.pt",
    )
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def main() -> None:
    train_json, root, out, loss_name = sys.argv[1:5]
    iterations = int(sys.argv[5]) if len(sys.argv) > 5 else ITERATIONS
    run(0, 1, train_json, root, out, loss_name, iterations)
    mp.spawn(run, args=(2, train_json, root, out, loss_name, iterations), nprocs=2, join=True)


if __name__ == "__main__":
    main()
