"""Long-tail classification losses: one module per loss, each registering itself.

Every module in this package is imported here, so adding a loss means adding one file
that decorates its class with ``@register_loss("name")``.
"""

from __future__ import annotations

import importlib
import pkgutil

from ltmodels.losses.base import (
    LOSSES,
    LongTailLoss,
    Param,
    build_loss,
    register_loss,
    validate_params,
)

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base" and not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["LOSSES", "LongTailLoss", "Param", "build_loss", "register_loss", "validate_params"]
