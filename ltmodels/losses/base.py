"""The loss interface every long-tail classification loss implements, and its registry.

Shape shorthand: N RoIs, C foreground classes, K = ``num_logits(C)`` classifier outputs,
D feature channels.

Label convention (torchvision's): ``labels[i] == 0`` is background, ``1..C`` are the
foreground classes. Column layout of the logits is the loss's own business (it declares
``num_logits``), but :meth:`LongTailLoss.scores` always returns ``[N, C]`` foreground
probabilities with column ``j`` for label ``j + 1``.

Context keywords the RoI head passes to every ``loss(logits, labels, **context)`` call
(a loss uses what it needs and ignores the rest):

- ``features``: ``[N, D]`` box-head features that produced the logits.
- ``weight``: ``[K, D]`` raw (unnormalised) classifier weight of the predictor.
- ``gt_index``: ``[N]`` long, index of the ground-truth object each RoI was matched to,
  unique across the batch (and across workers is not required), ``-1`` for background.
  EBL averages scores per ground-truth object with it.

Losses whose ``predictor`` is ``"cosine"`` receive cosine similarities in ``[-1, 1]`` as
``logits`` and apply their own scale; ``"linear"`` losses receive ``x @ W.T + b``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from ltmodels.errors import ConfigError
from ltmodels.losses.domains import DOMAINS, Param


def upcast(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 if it is a half type (bf16/fp16 under autocast); float64 stays float64.

    Losses compute in at least float32 whatever the logits' dtype; keeping float64 lets
    ``torch.autograd.gradcheck`` test them.
    """
    return x.to(torch.promote_types(x.dtype, torch.float32))


class LongTailLoss(nn.Module):
    """Base class: a classification loss for the box head of Mask R-CNN.

    Subclasses set ``name``, ``params`` (every constructor keyword but ``num_classes``),
    ``predictor`` and implement :meth:`num_logits`, :meth:`scores` and :meth:`forward`.
    State that lives across iterations is a registered buffer.
    """

    name: ClassVar[str] = ""
    params: ClassVar[Mapping[str, Param]] = {}
    predictor: ClassVar[str] = "linear"  # "linear" or "cosine"

    def __init__(self, *, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)

    @classmethod
    def num_logits(cls, num_classes: int) -> int:
        """Width K of the classifier this loss needs for C foreground classes."""
        raise NotImplementedError

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-class probabilities ``[N, C]`` (column j is label j + 1) for inference."""
        raise NotImplementedError

    def foreground_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The raw logits ``[N, C]`` of the foreground classes (column j is label j + 1).

        GAP ranks these. The default is columns ``1..C`` (true of ce, bce, eqlv2, seesaw,
        whose column ``j`` is label ``j``); a loss with another layout overrides it.
        """
        return logits[:, 1 : self.num_classes + 1]

    def set_class_stats(self, image_counts: torch.Tensor, num_images: int) -> None:
        """Receive the training set's class statistics; the default ignores them.

        The detector calls this once after building the loss (before loading a checkpoint),
        for every loss. Losses that need dataset frequencies (EQL's ``T_lambda(f_j)``)
        override it and keep what they derive in registered buffers, so that a checkpoint
        restores it. Losses that count online (Seesaw, GAP) do not use it.

        Args:
            image_counts: ``[C]`` number of training images containing each foreground
                class (entry ``j`` is label ``j + 1``), as LVIS's ``image_count``.
            num_images: number of training images.
        """

    def check_inputs(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``logits`` is ``[N, K]`` and ``labels`` is ``[N]``.

        Shape checks only (no device sync): a classifier of the wrong width must fail loudly
        instead of, e.g., silently training an extra softmax column.
        """
        k = self.num_logits(self.num_classes)
        if logits.dim() != 2 or logits.shape[1] != k:
            raise ValueError(
                f"loss {self.name!r}: logits must be [N, {k}] for {self.num_classes} classes, "
                f"got {list(logits.shape)}"
            )
        if labels.shape != logits.shape[:1]:
            raise ValueError(
                f"loss {self.name!r}: labels must be [{logits.shape[0]}], got {list(labels.shape)}"
            )

    def forward(  # type: ignore[override]
        self, logits: torch.Tensor, labels: torch.Tensor, **context: Any
    ) -> dict[str, torch.Tensor]:
        """Return named scalar loss terms; their sum is what training minimises."""
        raise NotImplementedError


def image_frequency(
    loss: LongTailLoss, image_counts: torch.Tensor, num_images: int
) -> torch.Tensor:
    """``[C]`` fraction of training images containing each class (EQL's ``f_j``), checked
    against the loss's number of classes; for ``set_class_stats`` implementations."""
    counts = torch.as_tensor(image_counts, dtype=torch.float32).flatten()
    if counts.numel() != loss.num_classes or num_images <= 0:
        raise ValueError(
            f"{loss.name}: expected {loss.num_classes} image counts and num_images > 0, got "
            f"{counts.numel()} counts and num_images={num_images}"
        )
    return counts / float(num_images)


LOSSES: dict[str, type[LongTailLoss]] = {}

L = TypeVar("L", bound=type[LongTailLoss])


def register_loss(name: str) -> Callable[[L], L]:
    """Class decorator adding a loss to :data:`LOSSES` under ``name``.

    The class's ``params`` are ``DOMAINS[name]`` (:mod:`ltmodels.losses.domains`, the one
    place a loss's hyperparameters are declared, so that specs validate without torch).

    Raises:
        RuntimeError: ``name`` is registered twice, has no domain entry, or the class
            declares ``params`` other than its domain entry.
    """

    def deco(cls: L) -> L:
        if name in LOSSES:
            raise RuntimeError(f"loss {name!r} registered twice")
        if name not in DOMAINS:
            raise RuntimeError(
                f"loss {name!r} has no parameter domains; add its parameter domains to "
                "ltmodels/losses/domains.py (DOMAINS[name]: {} when it has none)"
            )
        own = cls.__dict__.get("params", DOMAINS[name])
        if own is not DOMAINS[name]:
            raise RuntimeError(
                f"loss {name!r}: declare params = DOMAINS[{name!r}] (ltmodels/losses/"
                "domains.py), not a table of its own"
            )
        cls.name = name
        cls.params = DOMAINS[name]
        LOSSES[name] = cls
        return cls

    return deco


_ALL_IMPORTED = False


def registry() -> dict[str, type[LongTailLoss]]:
    """:data:`LOSSES` with every loss module of ``ltmodels.losses`` imported.

    Importing the package does not import its loss modules (so that
    :mod:`ltmodels.losses.domains` loads without torch); the first use of the registry
    through the package, :func:`build_loss` or :func:`validate_params` does.
    """
    global _ALL_IMPORTED
    if not _ALL_IMPORTED:
        import importlib
        import pkgutil

        import ltmodels.losses as package

        for mod in pkgutil.iter_modules(package.__path__):
            if mod.name not in ("base", "domains") and not mod.name.startswith("_"):
                importlib.import_module(f"{package.__name__}.{mod.name}")
        _ALL_IMPORTED = True
    return LOSSES


def validate_params(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Check a loss name and its parameters; return the parameters coerced to their types.

    Raises:
        ConfigError: unknown loss, unknown parameter, or a value outside its domain; the
            message lists the valid names and ranges.
    """
    losses = registry()
    if name not in losses:
        raise ConfigError(f"unknown loss {name!r}; valid losses: {', '.join(sorted(losses))}")
    spec = losses[name].params
    unknown = sorted(set(params) - set(spec))
    if unknown:
        valid = "; ".join(f"{k}: {p.describe()}" for k, p in spec.items()) or "none"
        raise ConfigError(f"loss {name!r}: unknown parameter(s) {unknown}; valid: {valid}")
    return {k: spec[k].check(name, k, v) for k, v in params.items()}


def build_loss(name: str, *, num_classes: int, **params: Any) -> LongTailLoss:
    """Build a registered loss with validated parameters (the paper's defaults otherwise)."""
    checked = validate_params(name, params)
    return registry()[name](num_classes=num_classes, **checked)


__all__ = [
    "LOSSES",
    "LongTailLoss",
    "Param",
    "build_loss",
    "image_frequency",
    "register_loss",
    "registry",
    "upcast",
    "validate_params",
]
