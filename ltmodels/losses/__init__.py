"""Long-tail classification losses: one module per loss, each registering itself.

Adding a loss means adding one file that decorates its class with
``@register_loss("name")`` and its parameter domains to :mod:`ltmodels.losses.domains`.

Importing this package is cheap: :data:`DOMAINS` and :class:`Param` need no torch (study
specs validate with them). The torch names (``LOSSES``, ``build_loss``, ...) are loaded on
first access, which imports every loss module of the package, so ``LOSSES`` is complete
whenever it is seen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ltmodels.losses.domains import DOMAINS, Param

if TYPE_CHECKING:
    from ltmodels.losses.base import (
        LOSSES,
        LongTailLoss,
        build_loss,
        register_loss,
        validate_params,
    )

_FROM_BASE = ("LOSSES", "LongTailLoss", "build_loss", "register_loss", "validate_params")


def __getattr__(name: str) -> Any:
    if name not in _FROM_BASE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from ltmodels.losses import base

    base.registry()
    value = getattr(base, name)
    globals()[name] = value
    return value


__all__ = [
    "DOMAINS",
    "LOSSES",
    "LongTailLoss",
    "Param",
    "build_loss",
    "register_loss",
    "validate_params",
]
