"""Names of what a study computes: :func:`config_hash` (one configuration, the key of its
parquet parts and run directories) and :func:`stage1_hash` (the shared stage 1 of a
decoupled study, the key of its cache). Both hash the configuration together with every
spec field that changes what a run computes, so two studies share a result only when it
is the same result.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from ltmodels.losses.domains import DOMAINS
from ltsearch.spec.study import StudySpec


def split_params(params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Flat params ``{"loss": "acsl", "acsl.xi": 0.7}`` -> ``("acsl", {"xi": 0.7})``.

    Raises:
        ValueError: no ``loss`` key, or a key of another loss (a bug in the caller).
    """
    if "loss" not in params:
        raise ValueError(f"flat params need a 'loss' key, got {sorted(params)}")
    loss = str(params["loss"])
    out = {}
    for key, value in params.items():
        if key == "loss":
            continue
        prefix, dot, name = key.partition(".")
        if prefix != loss or not dot:
            raise ValueError(f"parameter {key!r} does not belong to loss {loss!r}")
        out[name] = value
    return loss, out


def _digest(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


DATASET_LATE_KEYS = {"min_val_images": 2}
"""Dataset keys added after studies recorded results, with the value the data had before
them: hashed only when set to another, so those studies keep their hashes."""


def _dataset(spec: StudySpec) -> dict[str, Any]:
    dumped = spec.dataset.model_dump(mode="json")
    late = {k: v for k, v in DATASET_LATE_KEYS.items() if dumped.get(k) in (None, v)}
    return {k: v for k, v in dumped.items() if k not in late}


def config_hash(params: Mapping[str, Any], spec: StudySpec) -> str:
    """Stable 16-hex hash of one configuration: loss, parameters, training, model, dataset.

    ``params`` are flat (``{"loss": "acsl", "acsl.xi": 0.7}``). The loss's fixed parameters
    from the spec and its defaults fill in what ``params`` omits, and values are coerced
    to their types, so ``xi: 1`` and ``xi: 1.0`` (and an omitted default) hash alike.
    Seeds, search and resources are not part of it. Keys added to the spec after studies
    recorded results are hashed only when set away from their default (loss parameters
    with ``Param.hash_default`` false, ``training`` keys in
    :data:`~ltsearch.spec.training.LATE_KEYS`), so those studies keep their hashes.
    """
    loss, given = split_params(params)
    domains = DOMAINS[loss]
    try:
        fixed = spec.loss.option(loss).fixed()
    except KeyError:
        fixed = {}
    merged = {**fixed, **given}
    full = {k: p.default for k, p in domains.items()}
    full.update({k: domains[k].check(loss, k, v) for k, v in merged.items()})
    # parameters added later are hashed only away from their default (Param.hash_default)
    full = {k: v for k, v in full.items() if domains[k].hash_default or v != domains[k].default}
    return _digest(
        {
            "loss": loss,
            "loss_params": full,
            "training": spec.training.effective(),
            "model": spec.model.overrides(),
            "dataset": _dataset(spec),
        }
    )


def stage1_hash(spec: StudySpec) -> str | None:
    """Hash of what stage 1 trains (stage 1, model, dataset); None for end_to_end."""
    if spec.training.stage1 is None:
        return None
    return _digest(
        {
            "stage1": spec.training.stage1.trained(mode="json"),
            "model": spec.model.overrides(),
            "dataset": _dataset(spec),
        }
    )


__all__ = ["config_hash", "split_params", "stage1_hash"]
