"""lvis-api (``lvis`` 0.5.3, the PyPI release) as a reference evaluator on modern NumPy.

lvis-api is the oracle that :func:`ltmodels.evaluation.metrics.evaluate_lvis` is tested against.
Its PyPI release calls ``np.float`` in ``LVISEval.accumulate``, an alias NumPy removed in 1.24, so
on current NumPy it fails with ``AttributeError`` after doing all the matching work. Rather than
patching NumPy for the whole process, :func:`lvis_numpy_compat` gives the ``lvis.eval`` module
its own ``np``: a namespace that answers ``float`` with the builtin (what the alias was) and
delegates every other name to NumPy. The original binding is restored on exit.

lvis-api also has two input limits that :func:`lvis_api_evaluate` works around without
changing its arithmetic: ``LVIS`` only reads a file (a dict is indexed the same way here), and
``LVISResults`` reads ``results[0]`` so it cannot hold zero detections (an empty result set is
built with the same fields here, and lvis-api's own evaluate/accumulate/summarize then run).
"""

from __future__ import annotations

import copy
import logging
import threading
import types
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ltmodels.errors import ConfigError, DatasetError

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
"""lvis-api's average-precision names, in its summary order."""

_SHIM_LOCK = threading.RLock()


class _NumpyWithFloatAlias(types.ModuleType):
    """A stand-in for the ``numpy`` module with the removed ``np.float`` alias restored."""

    float = float

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


@contextmanager
def lvis_numpy_compat() -> Iterator[None]:
    """Run lvis-api's evaluator on NumPy >= 1.24 inside this block.

    Only the global ``np`` of the ``lvis.eval`` module is swapped, so NumPy itself and every
    other module are untouched; the swap is serialized by a lock and undone on exit, also when
    the block raises.
    """
    import lvis.eval as lvis_eval

    with _SHIM_LOCK:
        original = lvis_eval.np
        lvis_eval.np = _NumpyWithFloatAlias("numpy")
        try:
            yield
        finally:
            lvis_eval.np = original


def _lvis_from(gt: str | Path | Mapping[str, Any]) -> Any:
    """Build an ``lvis.LVIS`` from a path or from a dict (deep-copied: lvis-api mutates it)."""
    from lvis import LVIS

    if isinstance(gt, (str, Path)):
        if not Path(gt).is_file():
            raise DatasetError(f"LVIS ground truth not found: {gt}")
        return LVIS(str(gt))
    lvis_gt = LVIS.__new__(LVIS)
    lvis_gt.logger = logging.getLogger("lvis.lvis")
    lvis_gt.dataset = copy.deepcopy(dict(gt))
    lvis_gt._create_index()
    return lvis_gt


def _results_from(lvis_gt: Any, detections: Sequence[Mapping[str, Any]], max_dets: int) -> Any:
    """Build an ``lvis.LVISResults``; zero detections give an empty result set."""
    from lvis import LVISResults

    if detections:
        return LVISResults(lvis_gt, [dict(d) for d in detections], max_dets=max_dets)
    results = LVISResults.__new__(LVISResults)
    results.logger = logging.getLogger("lvis.results")
    results.dataset = copy.deepcopy(lvis_gt.dataset)
    results.dataset["annotations"] = []
    results._create_index()
    return results


def per_category_ap(
    precision: np.ndarray, cat_ids: Sequence[int], categories: Mapping[int, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Per-category AP from an LVIS precision array, by lvis-api's ``_summarize`` rule.

    Args:
        precision: [T, R, K, A] precision (T IoU thresholds, R recall thresholds, K categories in
            ``cat_ids`` order, A area ranges with "all" first); -1 marks undefined cells.
        cat_ids: the K category ids, sorted as the evaluator sorted them.
        categories: category records by id (``name`` and ``frequency`` are read).

    Returns:
        One dict per category, ``{category_id, name, frequency, AP}``: the mean of the defined
        cells of the "all" area range, or -1.0 when none is defined (no ground truth of that
        category in the evaluated images).
    """
    rows = []
    for k, cat_id in enumerate(cat_ids):
        cells = precision[:, :, k, 0]
        defined = cells[cells > -1]
        ap = float(np.mean(defined)) if defined.size else -1.0
        cat = categories[cat_id]
        rows.append(
            {
                "category_id": int(cat_id),
                "name": str(cat["name"]),
                "frequency": str(cat["frequency"]),
                "AP": ap,
            }
        )
    return rows


def lvis_api_evaluate(
    gt: str | Path | Mapping[str, Any],
    detections: Sequence[Mapping[str, Any]],
    iou_type: str = "bbox",
    max_dets: int = 300,
) -> dict[str, Any]:
    """Evaluate with lvis-api itself (the oracle), in the output shape of ``evaluate_lvis``.

    Neither ``gt`` (when a dict) nor the detection dicts are modified: lvis-api writes ``area``,
    ``id`` and masks into what it is given, so it gets copies.

    Args:
        gt: LVIS-format ground truth, a JSON path or the loaded dict.
        detections: LVIS result dicts (``image_id``, ``category_id``, ``bbox``, ``score`` and,
            for segm, an RLE ``segmentation``).
        iou_type: ``"bbox"`` or ``"segm"``.
        max_dets: detections kept per image, highest scores first (LVIS uses 300).

    Returns:
        ``{"AP": ..., ..., "APf": ..., "per_category": [...]}`` with lvis-api's values (-1 where
        a metric is undefined).

    Raises:
        ConfigError: ``iou_type`` is not ``"bbox"`` or ``"segm"``.
        DatasetError: ``gt`` is a path that does not exist.
    """
    from lvis import LVISEval

    if iou_type not in ("bbox", "segm"):
        raise ConfigError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    lvis_gt = _lvis_from(gt)
    lvis_dt = _results_from(lvis_gt, detections, max_dets)
    evaluator = LVISEval(lvis_gt, lvis_dt, iou_type=iou_type)
    evaluator.params.max_dets = max_dets
    with lvis_numpy_compat():
        evaluator.run()
    out: dict[str, Any] = {name: float(evaluator.results[name]) for name in METRIC_NAMES}
    out["per_category"] = per_category_ap(
        evaluator.eval["precision"], evaluator.params.cat_ids, lvis_gt.cats
    )
    return out


__all__ = ["METRIC_NAMES", "lvis_api_evaluate", "lvis_numpy_compat", "per_category_ap"]
