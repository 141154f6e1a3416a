"""Unit tests of the feature cache's vectorised pieces: RoI sampling, grouped NMS and the
box deltas of selected candidates (no detector or dataset needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import batched_nms

from ltmodels.cache.evaluate import _deltas, grouped_nms
from ltmodels.modeling.heads import LinearPredictor
from ltmodels.modeling.roi_sampling import sample_balanced


def test_sample_balanced_follows_torchvision_rule():
    """Image 0: 3 pos, 10 neg, 2 ignored, n=8, f=0.25 -> int(2) pos + 6 neg.
    Image 1: 1 pos, 2 neg -> all 3. Image 2 (empty range) -> nothing."""
    labels = np.array([1, 2, 3] + [0] * 10 + [-1, -1] + [5, 0, 0], dtype=np.int32)
    rng = np.random.default_rng(0)
    starts, ends = np.array([0, 15, 18]), np.array([15, 18, 18])
    seen = np.zeros(len(labels))
    for _ in range(2000):
        rows = sample_balanced(labels, starts, ends, rng, rois_per_image=8, positive_fraction=0.25)
        first = rows[rows < 15]
        assert (labels[first] > 0).sum() == 2 and (labels[first] == 0).sum() == 6
        assert list(rows[rows >= 15]) == [15, 16, 17]
        assert np.all(np.diff(rows) > 0)
        seen[rows] += 1
    assert seen[13] == seen[14] == 0
    np.testing.assert_allclose(seen[:3] / 2000, 2 / 3, atol=0.05)  # uniform over positives
    np.testing.assert_allclose(seen[3:13] / 2000, 0.6, atol=0.05)
    again = sample_balanced(
        labels, starts, ends, np.random.default_rng(7), rois_per_image=8, positive_fraction=0.25
    )
    same = sample_balanced(
        labels, starts, ends, np.random.default_rng(7), rois_per_image=8, positive_fraction=0.25
    )
    np.testing.assert_array_equal(again, same)


@pytest.mark.parametrize("num_classes", [3, 300])
def test_grouped_nms_equals_batched_nms(num_classes):
    g = torch.Generator().manual_seed(num_classes)
    xy = torch.rand(3000, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + torch.rand(3000, 2, generator=g) * 60 + 1], dim=1)
    scores = torch.rand(3000, generator=g)
    idxs = torch.randint(0, num_classes, (3000,), generator=g)
    ours = grouped_nms(boxes, scores, idxs, 0.5)
    ref = batched_nms(boxes, scores, idxs, 0.5)
    assert sorted(ours.tolist()) == sorted(ref.tolist())


@pytest.mark.parametrize("candidates", [5, 4000])
def test_box_deltas_of_candidates(candidates):
    """Both paths (gather weight rows / run bbox_pred on distinct RoIs) pick the right
    4 outputs of the full regression."""
    torch.manual_seed(0)
    pred = LinearPredictor(16, 201)
    x = torch.randn(50, 16)
    roi, label = torch.randint(0, 50, (candidates,)), torch.randint(1, 201, (candidates,))
    full = pred(x)[1].reshape(50, -1, 4)[roi, label]
    torch.testing.assert_close(_deltas(pred, x, roi, label), full, rtol=1e-5, atol=1e-6)


def test_box_deltas_of_an_empty_candidate_set() -> None:
    """A chunk whose candidates all fall under the score threshold decodes to no boxes."""
    from ltmodels.cache.evaluate import _deltas
    from ltmodels.modeling.heads import LinearPredictor

    predictor = LinearPredictor(8, 4, num_classes=3)
    empty = torch.zeros(0, dtype=torch.long)
    assert _deltas(predictor, torch.randn(5, 8), empty, empty).shape == (0, 4)
