"""AHR loss: Adaptive Hierarchical Representation loss (Li, "Adaptive Hierarchical
Representation Learning for Long-Tailed Object Detection", CVPR 2022, Sec. 3.2-3.4).

Implements Eq. 3-14 on a cosine classifier (Eq. 2):

- clusters: K-Means of the L2-normalised stage-1 class weights (Sec. 3.2-3.3), computed by
  :meth:`AHRLoss.fit_clusters` and kept in the buffer ``cluster`` (``[C]`` cluster index).
  ``num_clusters`` n must not exceed C (a :class:`ConfigError` otherwise); its default 0
  means Table 3's best ratio, ``round(C * 200 / 1230)`` (at least 1): exactly the paper's
  200 on LVIS v0.5, 196 on LVIS v1, and a usable hierarchy on small synthetic label sets;
- coarse loss (Eq. 3, 5-7): sigmoid BCE over cluster prototypes ``w^p`` (the mean of the
  normalised weights of a cluster, recomputed every step from the current weight), with
  logits ``lambda_p * cos(x, w^p)`` and target 1 for the RoI's cluster;
- fine loss (Eq. 8-12): sigmoid BCE over classes with logits ``lambda_c * cos(x, w_j) +
  M[y, j]``, ``M[i, j] = lambda_m * max(0, w_i . w_j)`` for ``i != j`` in the same cluster
  (normalised weights, recomputed every step) and 0 otherwise;
- Eq. 13 (``eql=True``, the default: it is the paper's stage-2 objective, Sec. 3.4): the
  fine loss's negatives are weighted as in EQL (Tan et al. 2020), ``1 - E(r)
  T_lambda_r(f_j)``, ``E(r) = 1`` for foreground RoIs, ``f_j`` the image frequency of
  class ``j``, ``lambda_r = 1.76e-3`` (Sec. 4.1);
- Eq. 4 / 14: ``L_AHR = L_fine + lambda * L_coarse``.

Shape shorthand: N RoIs, C foreground classes, K = C logits (cosines), n clusters, D
feature channels. As in the EQL code AHRL builds on (and this package's ``eql``) there is
no background column: column ``j`` is label ``j + 1`` and a background RoI (label 0) has an
all-zero target, belongs to no cluster and gets no margins.

Choices the paper leaves open or prints inconsistently (each is a parameter):

- ``eq13`` (default ``"text"``): Eq. 13 as printed multiplies the negatives by
  ``E(r) T(f_j)``, the opposite of EQL's ``1 - E(r) T(f_j)`` that the text says it reuses;
  ``"text"`` is EQL's meaning (rare classes are not suppressed by foreground RoIs),
  ``"printed"`` the formula as printed.
- ``normalization`` (default ``"num_rois"``): both BCE terms are summed over columns and
  divided by N, as EQL's released code does; ``"num_elements"`` divides by the number of
  entries (``N * C`` resp. ``N * n``).
- ``margin_grad`` (default ``False``): margins are treated as constants (detached), as the
  margins of C2AM and LDAM are; ``True`` lets the loss also lower the cosine similarity of
  same-cluster class pairs through ``M``.
- Coarse logits use ``cos(x, w^p) = sum_{j in P} cos(x, w_j) / ||sum_{j in P} w_j/||w_j|| ||``,
  which is Eq. 6 with the prototype of Eq. 3 written in terms of the classifier's cosines,
  so ``features`` are not needed and the coarse term agrees with the head's own
  normalisation. Clusters K-Means leaves empty are dropped.
- Before :meth:`fit_clusters` is called (the decoupled engine calls it with the stage-1
  weights), the first forward fits the clusters on the current ``weight`` instead, with the
  same seed: deterministic, and identical on every DDP worker because their weights are.

Context: ``weight`` ``[C, D]``, the raw classifier weight (required). Class frequencies
for Eq. 13 come from :meth:`set_class_stats` (buffer ``image_freq``); with ``eql=True`` a
forward without them raises. Inference scores are ``sigmoid(lambda_c * cos)``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ltmodels.errors import ConfigError
from ltmodels.losses.base import LongTailLoss, image_frequency, register_loss
from ltmodels.losses.domains import DOMAINS

_N_INIT = 10  # K-Means restarts; fixed so that a seed fixes the clusters
_PAPER_RATIO = 200 / 1230  # Table 3's best: 200 clusters for LVIS v0.5's 1230 classes


def kmeans_clusters(class_weights: torch.Tensor, num_clusters: int, seed: int) -> torch.Tensor:
    """Cluster L2-normalised class weights with K-Means (Sec. 3.2-3.3).

    Args:
        class_weights: ``[C, D]`` class weights.
        num_clusters: n, at most C.
        seed: K-Means ``random_state``.

    Returns:
        ``[C]`` long cluster index, relabelled in order of first appearance (class 0 is in
        cluster 0) and contiguous (clusters K-Means left empty are dropped).
    """
    from sklearn.cluster import KMeans  # here: importing sklearn costs ~3 s per process

    w = F.normalize(class_weights.detach().double().cpu(), dim=1).numpy()
    km = KMeans(n_clusters=num_clusters, random_state=seed, n_init=_N_INIT)
    first_seen: dict[int, int] = {}
    index = [first_seen.setdefault(int(r), len(first_seen)) for r in km.fit_predict(w)]
    return torch.as_tensor(index, dtype=torch.long)


def adaptive_margins(weight: torch.Tensor, cluster: torch.Tensor, lambda_m: float) -> torch.Tensor:
    """Eq. 10-12: ``M[i, j] = lambda_m * max(0, w_i . w_j)`` for ``i != j`` in one cluster.

    Args:
        weight: ``[C, D]`` class weights (normalised here).
        cluster: ``[C]`` cluster index.
        lambda_m: margin scale.

    Returns:
        ``[C, C]`` margins, zero on the diagonal and across clusters.
    """
    w = F.normalize(weight, dim=1)
    same = cluster[:, None] == cluster[None, :]
    same.fill_diagonal_(False)
    return lambda_m * (w @ w.T).clamp_min(0.0) * same.to(w.dtype)


@register_loss("ahr")
class AHRLoss(LongTailLoss):
    """Coarse (cluster) plus fine (class, adaptive in-cluster margins) sigmoid loss."""

    predictor: ClassVar[str] = "cosine"
    params = DOMAINS["ahr"]

    cluster: torch.Tensor
    fitted: torch.Tensor
    image_freq: torch.Tensor

    def __init__(
        self,
        *,
        num_classes: int,
        num_clusters: int = 0,
        lambda_m: float = 2.0,
        lambda_: float = 1.0,
        lambda_c: float = 20.0,
        lambda_p: float = 20.0,
        eql: bool = True,
        lambda_r: float = 1.76e-3,
        eq13: str = "text",
        normalization: str = "num_rois",
        margin_grad: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(num_classes=num_classes)
        if not 0 <= num_clusters <= self.num_classes:
            raise ConfigError(
                f"loss 'ahr': num_clusters={num_clusters} is negative or more clusters than the "
                f"{self.num_classes} classes; choose num_clusters <= {self.num_classes} "
                "(or 0 for the paper's ratio)"
            )
        self.num_clusters = int(num_clusters)
        self.n_clusters = self.num_clusters or max(1, round(self.num_classes * _PAPER_RATIO))
        self.lambda_m = float(lambda_m)
        self.lambda_ = float(lambda_)
        self.lambda_c = float(lambda_c)
        self.lambda_p = float(lambda_p)
        self.eql = bool(eql)
        self.lambda_r = float(lambda_r)
        self.eq13 = eq13
        self.normalization = normalization
        self.margin_grad = bool(margin_grad)
        self.seed = int(seed)
        self.register_buffer("cluster", torch.zeros(self.num_classes, dtype=torch.long))
        self.register_buffer("fitted", torch.tensor(False))
        self.register_buffer("image_freq", torch.full((self.num_classes,), float("nan")))

    @classmethod
    def num_logits(cls, num_classes: int) -> int:
        return num_classes

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """``sigmoid(lambda_c * cos)``: ``[N, C]`` (no margins at inference)."""
        return torch.sigmoid(self.lambda_c * _at_least_f32(logits))

    def foreground_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """All C columns: this loss has no background column (column j is label j + 1)."""
        return logits[:, : self.num_classes]

    def set_class_stats(self, image_counts: torch.Tensor, num_images: int) -> None:
        self.image_freq.copy_(image_frequency(self, image_counts, num_images))

    @torch.no_grad()
    def fit_clusters(self, class_weights: torch.Tensor) -> torch.Tensor:
        """Build the hierarchy from stage-1 class weights (K-Means, seeded) and store it.

        Args:
            class_weights: ``[C, D]`` foreground class weights (column ``j`` = label j + 1).

        Returns:
            The ``[C]`` cluster index now held in the ``cluster`` buffer.
        """
        if class_weights.dim() != 2 or class_weights.shape[0] != self.num_classes:
            raise ValueError(
                f"ahr: class_weights must be [{self.num_classes}, D], "
                f"got {list(class_weights.shape)}"
            )
        self.cluster.copy_(kmeans_clusters(class_weights, self.n_clusters, self.seed))
        self.fitted.fill_(True)
        return self.cluster

    def coarse_targets(self, labels: torch.Tensor) -> torch.Tensor:
        """Eq. 7: ``[N, n]`` one-hot of each RoI's cluster; all zero for background."""
        fg = labels > 0
        idx = torch.where(fg, self.cluster[(labels - 1).clamp_min(0)], 0)
        return F.one_hot(idx, self.n_clusters) * fg[:, None]

    def coarse_logits(self, cos: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Eq. 3 and 6: ``[N, n]`` = ``lambda_p * cos(x, w^p)``, from the class cosines."""
        w = F.normalize(weight, dim=1)
        members = F.one_hot(self.cluster, self.n_clusters).to(cos.dtype)  # [C, n]
        proto_norm = (members.T @ w).norm(dim=1).clamp_min(1e-12)  # ||sum_{j in P} w_j||
        return self.lambda_p * (cos @ members) / proto_norm

    def forward(  # type: ignore[override]
        self, logits: torch.Tensor, labels: torch.Tensor, **context: Any
    ) -> dict[str, torch.Tensor]:
        """AHR loss, Eq. 4 / 14 (without the RPN and box-regression terms).

        Args:
            logits: ``[N, C]`` cosine similarities.
            labels: ``[N]`` long in ``0..C``.
            **context: ``weight`` ``[C, D]`` raw classifier weight.

        Returns:
            ``{"loss_fine": L_fine, "loss_coarse": lambda * L_coarse}``.
        """
        self.check_inputs(logits, labels)
        weight = context.get("weight")
        if weight is None or weight.shape[0] != self.num_classes:
            got = None if weight is None else list(weight.shape)
            raise ValueError(f"ahr needs context `weight` [{self.num_classes}, D], got {got}")
        if self.eql and bool(torch.isnan(self.image_freq).any()):
            raise RuntimeError("ahr (eql=True): class frequencies unset; call set_class_stats()")
        if not bool(self.fitted):
            self.fit_clusters(weight)
        cos = _at_least_f32(logits)
        w = weight.to(cos.dtype)
        labels = labels.long()
        fine = self._fine_terms(cos, labels, w)
        coarse, present = self._coarse_terms(cos, labels, w)
        n = max(cos.shape[0], 1)
        if self.normalization == "num_rois":
            fine_l, coarse_l = fine.sum() / n, coarse.sum() / n
        else:
            fine_l = fine.sum() / (n * self.num_classes)
            coarse_l = coarse.sum() / (n * present.sum())
        return {"loss_fine": fine_l, "loss_coarse": self.lambda_ * coarse_l}

    def _fine_terms(
        self, cos: torch.Tensor, labels: torch.Tensor, w: torch.Tensor
    ) -> torch.Tensor:
        """Eq. 8-13: ``[N, C]`` weighted BCE of ``lambda_c * cos + M[y]``."""
        target = F.one_hot(labels, self.num_classes + 1)[:, 1:].to(cos.dtype)
        margins = adaptive_margins(
            w if self.margin_grad else w.detach(), self.cluster, self.lambda_m
        )
        row = torch.cat([margins.new_zeros(1, self.num_classes), margins])[labels]
        return F.binary_cross_entropy_with_logits(
            self.lambda_c * cos + row,
            target,
            weight=self._fine_weight(labels, target),
            reduction="none",
        )

    def _coarse_terms(
        self, cos: torch.Tensor, labels: torch.Tensor, w: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 5: ``[N, n]`` BCE over cluster prototypes (empty clusters zeroed), and the
        ``[n]`` mask of non-empty clusters."""
        present = (torch.bincount(self.cluster, minlength=self.n_clusters) > 0).to(cos.dtype)
        target = self.coarse_targets(labels).to(cos.dtype)
        bce = F.binary_cross_entropy_with_logits(
            self.coarse_logits(cos, w), target, reduction="none"
        )
        return bce * present, present

    def _fine_weight(self, labels: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
        """Eq. 13 weights of the fine BCE (``None`` when ``eql`` is off)."""
        if not self.eql:
            return None
        fg = (labels > 0).to(target.dtype)[:, None]
        tail = (self.image_freq < self.lambda_r).to(target.dtype)[None, :]
        neg = fg * tail if self.eq13 == "printed" else 1.0 - fg * tail
        return target + (1.0 - target) * neg


def _at_least_f32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


__all__ = ["AHRLoss", "adaptive_margins", "kmeans_clusters"]
