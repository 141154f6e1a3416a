"""Loss statistics are reduced across DDP workers: 2 gloo workers on the two halves of each
batch end with the same buffers as 1 process on the whole batch.

Parametrized over every registered loss that has buffers (EQLv2 gradient sums, Seesaw
counts, ...); a loss added to the registry is tested here without editing this file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from ltmodels.losses import LOSSES, build_loss

# The spawned workers import the harness by module name, so its folder goes on sys.path
# (which multiprocessing's spawn hands to the children).
sys.path.insert(0, str(Path(__file__).parent))
import ddp_harness  # noqa: E402

C = 8


def _has_buffers(name: str) -> bool:
    return any(True for _ in build_loss(name, num_classes=C).buffers())


STATEFUL = [name for name in sorted(LOSSES) if _has_buffers(name)]


@pytest.fixture(scope="module")
def batches() -> list[ddp_harness.Batch]:
    return ddp_harness.make_batches(C)


@pytest.fixture(scope="module")
def ddp_buffers(batches, tmp_path_factory) -> dict[str, list[dict[str, torch.Tensor]]]:
    return ddp_harness.run_ddp(STATEFUL, batches, tmp_path_factory.mktemp("ddp"), C)


def test_some_registered_losses_keep_state() -> None:
    assert {"eqlv2", "seesaw"} <= set(STATEFUL)


@pytest.mark.slow
@pytest.mark.parametrize("name", STATEFUL)
def test_two_workers_on_halves_match_one_on_whole(name: str, batches, ddp_buffers) -> None:
    single = ddp_harness.run_single(name, batches, C)
    fresh = dict(build_loss(name, num_classes=C).named_buffers())
    for rank, bufs in enumerate(ddp_buffers[name]):
        assert bufs.keys() == single.keys()
        for key, value in single.items():
            assert value.dtype == bufs[key].dtype, key
            assert torch.allclose(bufs[key].double(), value.double(), rtol=1e-5, atol=1e-6), (
                f"{name}.{key} on rank {rank} differs from the single-process run"
            )
    changed = [k for k, v in single.items() if not torch.equal(v, fresh[k])]
    if name in ("eqlv2", "seesaw"):
        assert changed, f"{name}: the batches did not update any buffer"
