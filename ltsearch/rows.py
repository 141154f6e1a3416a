"""A stored result row as a reader names it: its loss's parameters and a label.

Rows are dicts (:meth:`ltsearch.store.ResultStore.trial_rows`) or pandas Series (a row of
:meth:`~ltsearch.store.ResultStore.load_trials`); loss parameters are stored in columns
``param.<loss>.<name>``. Kept free of pandas for ``ltsearch status``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

PARAM_PREFIX = "param."


def present(value: Any) -> bool:
    """Whether a stored value is there (not None, not NaN)."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def config_label(loss: str, params: Mapping[str, Any]) -> str:
    """``acsl(xi=0.7)``: a configuration as a reader names it."""
    items = [f"{k}={f'{v:.4g}' if isinstance(v, float) else v}" for k, v in params.items()]
    return f"{loss}({', '.join(items)})" if items else loss


def config_params(row: Any, loss: str) -> dict[str, Any]:
    """The parameter values a run row (dict or Series) gives for its loss (missing ones
    left out)."""
    prefix = f"{PARAM_PREFIX}{loss}."
    return {k[len(prefix) :]: v for k, v in row.items() if k.startswith(prefix) and present(v)}


__all__ = ["PARAM_PREFIX", "config_label", "config_params", "present"]
