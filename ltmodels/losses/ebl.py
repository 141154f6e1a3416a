"""EBL: Equilibrium Loss (Feng et al., "Exploring Classification Equilibrium in Long-Tailed
Object Detection", ICCV 2021; LOCE).

Implements Eq. 2-4. With the score-guided margin ``delta_yy' = log(s_y' / s_y)`` (Eq. 4),
Eq. 3 is the softmax cross-entropy of the adjusted logits ``z + log(s)``:

    L(z, y) = log(1 + sum_{y' != y} exp(z_y' - z_y + log s_y' - log s_y))
            = -log softmax(z + log s)_y

where ``s`` is the per-class mean classification score vector (buffer ``mean_score``, no
gradient), all entries initialised to 0.01, the background entry held at
``background_score`` (Sec. 3.2, Table 3). The loss is the mean over RoIs. Inference
scores are ``softmax(z)[:, 1:]``: the margin is a training device only.

Shape shorthand: N RoIs, C foreground classes, K = C + 1 logits, E score entries. Column
0 of the logits and entry 0 of ``mean_score`` are background (torchvision's label 0),
column ``j`` is label ``j``.

Mean-score update (Eq. 2), done in training mode before the batch's loss, as the released
code (fcjian/LOCE ``LoceRoIHead._update_mean_score``) does:

- Entries: one per ground-truth object, the mean of ``softmax(z)[i, y]`` (raw logits,
  detached) over the RoIs ``i`` matched to it. RoIs are grouped by the context keyword
  ``gt_index`` (``[N]`` long, -1 for background); without it every foreground RoI is its
  own entry. Memory-augmented feature sampling (MFS) rows appended to the batch count as
  one entry per class: give all sampled rows of one class the same fresh group id
  (:func:`ltmodels.losses.mfs.memory_gt_index` does this).
- Entries of all DDP workers are gathered (``all_gather_cat``), so 2 workers on halves of
  a batch reach the same ``mean_score`` as 1 worker on the whole batch.
- ``update="code"`` (default): for each class with ``n_c`` entries of mean ``m_c``,
  ``s_c <- alpha**n_c * s_c + (1 - alpha**n_c) * m_c``.
- ``update="paper"``: Eq. 2 read literally, one EMA step ``s_c <- alpha s_c + (1 - alpha) p``
  per entry, in entry order (by group id within a worker, then by rank).

Memory-augmented feature sampling (MFS, Sec. 3.3, Eq. 5-8) is off by default, so ``ebl``
alone is Table 1's EBL row; ``mfs: true`` gives LOCE (EBL + MFS, the paper's final method,
with ``mfs_size`` M = 80, ``mfs_k`` = 8, ``mfs_m`` = 4 per worker as defaults; Table 4 tunes
k and m) and ``margin: false, mfs: true`` Table 1's MFS-only row (softmax cross-entropy, with
``s`` still tracked to guide the sampler). With MFS the loss owns a
:class:`~ltmodels.losses.feature_sampling.FeatureSampling` and implements that module's
protocol (``bind_memory``, ``feature_memory``); the RoI head and the cached stage-2 trainer
push features and append sampled rows. MFS is meant for the fine-tuning stage, where the box
head is frozen (the memory keeps box-head outputs).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ltmodels.engine.distributed import all_gather_cat
from ltmodels.losses.base import LongTailLoss, register_loss, upcast
from ltmodels.losses.domains import DOMAINS
from ltmodels.losses.feature_sampling import FeatureSampling, MemoryAccess

_INIT_SCORE = 0.01
_MIN_SCORE = 1e-12


@register_loss("ebl")
class EquilibriumLoss(LongTailLoss):
    """Softmax cross-entropy with score-guided margins (LOCE Eq. 2-4), optionally with MFS."""

    params = DOMAINS["ebl"]

    mean_score: torch.Tensor
    feature_sampling: FeatureSampling | None

    def __init__(
        self,
        *,
        num_classes: int,
        alpha: float = 0.9,
        background_score: float = 0.01,
        update: str = "code",
        margin: bool = True,
        mfs: bool = False,
        mfs_size: int = 80,
        mfs_k: int = 8,
        mfs_m: int = 4,
    ) -> None:
        super().__init__(num_classes=num_classes)
        self.alpha = float(alpha)
        self.background_score = float(background_score)
        self.update = update
        self.margin = bool(margin)
        s = torch.full((num_classes + 1,), _INIT_SCORE, dtype=torch.float32)
        s[0] = self.background_score
        self.register_buffer("mean_score", s)
        sampling = FeatureSampling(num_classes, size=mfs_size, k=mfs_k, m=mfs_m) if mfs else None
        self.register_module("feature_sampling", sampling)

    @classmethod
    def num_logits(cls, num_classes: int) -> int:
        return num_classes + 1

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """``softmax(z)[:, 1:]``: ``[N, C]`` foreground probabilities (no margin)."""
        return torch.softmax(upcast(logits), dim=1)[:, 1:]

    def entries(
        self, logits: torch.Tensor, labels: torch.Tensor, gt_index: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This worker's score entries: ``([E] class labels, [E] mean scores)``.

        Raises:
            ValueError: a foreground RoI has ``gt_index < 0`` or one group mixes labels.
        """
        fg = labels > 0
        p = torch.softmax(logits.detach().float(), dim=1)
        p = p[torch.arange(p.shape[0], device=p.device), labels][fg]
        lab = labels[fg]
        if gt_index is None:
            return lab, p
        groups = gt_index.to(labels.device)[fg]
        if bool((groups < 0).any()):
            raise ValueError("ebl: a foreground RoI has gt_index -1")
        uniq, inv = torch.unique(groups, return_inverse=True)
        g = uniq.numel()
        count = torch.zeros(g, device=p.device).index_add_(0, inv, torch.ones_like(p))
        mean = torch.zeros(g, device=p.device).index_add_(0, inv, p) / count
        lo = torch.full((g,), self.num_classes + 1, device=lab.device)
        lo = lo.scatter_reduce(0, inv, lab, reduce="amin")
        hi = torch.full_like(lo, -1).scatter_reduce(0, inv, lab, reduce="amax")
        if bool((lo != hi).any()):
            raise ValueError("ebl: RoIs sharing a gt_index have different labels")
        return lo, mean

    def bind_memory(self, feature_dim: int) -> None:
        """Allocate the MFS memory for ``[feature_dim]`` features (no-op without MFS)."""
        if self.feature_sampling is not None:
            self.feature_sampling.bind(feature_dim, device=self.mean_score.device)

    def feature_memory(self) -> MemoryAccess | None:
        """The MFS memory guided by ``mean_score``, ``None`` without MFS.

        Raises:
            RuntimeError: MFS is on but :meth:`bind_memory` was not called.
        """
        if self.feature_sampling is None:
            return None
        self.feature_sampling.bound_memory()
        return MemoryAccess(self.feature_sampling, self.mean_score)

    @torch.no_grad()
    def update_mean_score(self, labels: torch.Tensor, values: torch.Tensor) -> None:
        """Fold score entries (``[E]`` labels in ``1..C``, ``[E]`` scores) into ``mean_score``."""
        s = self.mean_score
        lab = labels.to(s.device).long()
        val = values.to(s.device, torch.float32)
        k = s.numel()
        n = torch.bincount(lab, minlength=k).to(torch.float32)
        decay = torch.pow(torch.tensor(self.alpha, device=s.device), n)
        if self.update == "code":
            total = torch.zeros(k, device=s.device).index_add_(0, lab, val)
            batch_mean = total / n.clamp_min(1.0)
            new = decay * s + (1.0 - decay) * batch_mean
        else:
            # Sequential EMA in closed form: entry r (0-based) of n_c gets (1-a) a**(n_c-1-r).
            order = torch.argsort(lab, stable=True)
            lab_s, val_s = lab[order], val[order]
            counts = n.long()
            starts = torch.cumsum(counts, 0) - counts
            pos = torch.arange(lab_s.numel(), device=s.device) - starts[lab_s]
            expo = (counts[lab_s] - 1 - pos).to(torch.float32)
            wts = (1.0 - self.alpha) * torch.pow(torch.tensor(self.alpha, device=s.device), expo)
            new = decay * s + torch.zeros(k, device=s.device).index_add_(0, lab_s, wts * val_s)
        s.copy_(torch.where(n > 0, new, s))
        s[0] = self.background_score

    def forward(  # type: ignore[override]
        self, logits: torch.Tensor, labels: torch.Tensor, **context: Any
    ) -> dict[str, torch.Tensor]:
        """Update the mean scores (training mode), then the equilibrium loss (mean over RoIs).

        Args:
            logits: ``[N, C + 1]``, column 0 background.
            labels: ``[N]`` long in ``0..C``.
            **context: ``gt_index`` ``[N]`` long, the ground-truth object of each RoI (-1
                background); MFS rows (appended by the trainer) share one id per class.

        Returns:
            ``{"loss_cls": scalar}``.
        """
        self.check_inputs(logits, labels)
        z = upcast(logits)
        labels = labels.long()
        if self.training:
            lab, val = self.entries(z, labels, context.get("gt_index"))
            packed = all_gather_cat(torch.stack([lab.to(torch.float32), val.float()], dim=1))
            self.update_mean_score(packed[:, 0].round().long(), packed[:, 1])
        if z.shape[0] == 0:
            return {"loss_cls": z.sum() * 0.0}
        if not self.margin:
            return {"loss_cls": F.cross_entropy(z, labels)}
        log_s = self.mean_score.clamp_min(_MIN_SCORE).log().to(z.dtype)
        return {"loss_cls": F.cross_entropy(z + log_s, labels)}


__all__ = ["EquilibriumLoss"]
