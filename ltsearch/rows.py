"""A stored result row as a reader names it: its loss's parameters and a label.

Rows are dicts (:meth:`ltsearch.store.ResultStore.trial_rows`) or pandas Series (a row of
:meth:`~ltsearch.store.ResultStore.load_trials`); loss parameters are stored in columns
``param.<loss>.<name>``. Kept free of pandas for ``ltsearch status``.

A decoupled study with ``training.stage1.evaluate`` also stores one *baseline* row: the
stage-1 model evaluated as is (:mod:`ltsearch.run.baseline`), with ``loss`` and ``baseline``
both :data:`STAGE1`, ``stage1_loss`` its loss and ``config_hash`` ``stage1-<stage-1 hash>``.
It is no configuration of the search: :func:`search_rows` leaves it out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

PARAM_PREFIX = "param."
BASELINE = "baseline"
"""The column naming what a baseline row is (absent or null on a search row)."""
STAGE1 = "stage1"
"""The ``loss`` and ``baseline`` of the stage-1-only row."""


def present(value: Any) -> bool:
    """Whether a stored value is there (not None, not NaN)."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def is_baseline(row: Mapping[str, Any]) -> bool:
    """Whether a row (dict or Series) is a baseline row, not a run of the search."""
    return present(row.get(BASELINE))


def search_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The rows of the search's configurations (baseline rows left out)."""
    return [r for r in rows if not is_baseline(r)]


def baseline_label(stage1_loss: Any) -> str:
    """``stage 1 only (ce)``: how tables name the stage-1-only row."""
    return f"stage 1 only ({stage1_loss})" if present(stage1_loss) else "stage 1 only"


def row_label(row: Mapping[str, Any]) -> str:
    """A row's configuration as a reader names it (:func:`config_label`, or the
    baseline's :func:`baseline_label`)."""
    if is_baseline(row):
        return baseline_label(row.get("stage1_loss"))
    loss = str(row["loss"])
    return config_label(loss, config_params(row, loss))


def config_label(loss: str, params: Mapping[str, Any]) -> str:
    """``acsl(xi=0.7)``: a configuration as a reader names it."""
    items = [f"{k}={f'{v:.4g}' if isinstance(v, float) else v}" for k, v in params.items()]
    return f"{loss}({', '.join(items)})" if items else loss


def config_params(row: Any, loss: str) -> dict[str, Any]:
    """The parameter values a run row (dict or Series) gives for its loss (missing ones
    left out)."""
    prefix = f"{PARAM_PREFIX}{loss}."
    return {k[len(prefix) :]: v for k, v in row.items() if k.startswith(prefix) and present(v)}


__all__ = [
    "BASELINE", "PARAM_PREFIX", "STAGE1", "baseline_label", "config_label", "config_params",
    "is_baseline", "present", "row_label", "search_rows",
]  # fmt: skip
