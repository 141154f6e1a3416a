"""Every loss's hyperparameters and their domains, without importing torch.

:data:`DOMAINS` maps a registered loss name to ``{constructor keyword: Param}`` (every
keyword but ``num_classes``, with the paper's default). The loss classes take their
``params`` from here (:func:`ltmodels.losses.base.register_loss` refuses a loss without an
entry), and study specs (``ltsearch validate``) check names, values and search bounds
against it without paying for torch. Adding a loss means adding its entry here too; a
test checks that the registry and this table agree exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ltmodels.errors import ConfigError


@dataclass(frozen=True)
class Param:
    """Domain of one loss hyperparameter, used for validation and by study specs.

    Args:
        default: the paper's default (equals the constructor's default).
        low, high: inclusive numeric bounds (``None`` = unbounded).
        choices: allowed values for categorical parameters.
        kind: ``"float"``, ``"int"``, ``"bool"`` or ``"choice"``.
        doc: one line shown in error messages and ``ltsearch`` help.
        hash_default: ``False`` for a parameter added after studies recorded results: at
            its default it is left out of configuration hashes
            (:func:`ltsearch.spec.hashing.config_hash`), so their hashes do not change.
    """

    default: Any
    kind: str = "float"
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    doc: str = ""
    hash_default: bool = True

    def describe(self) -> str:
        if self.kind == "choice":
            dom = "one of " + "|".join(map(str, self.choices or ()))
        elif self.kind == "bool":
            dom = "true|false"
        else:
            lo = "-inf" if self.low is None else f"{self.low:g}"
            hi = "inf" if self.high is None else f"{self.high:g}"
            dom = f"{self.kind} in [{lo}, {hi}]"
        return f"{dom} (default {self.default!r})"

    def check(self, loss: str, name: str, value: Any) -> Any:
        """Return ``value`` coerced to the parameter's type or raise :class:`ConfigError`."""
        bad = ConfigError(
            f"loss {loss!r}: parameter {name}={value!r} is invalid; expected {self.describe()}"
        )
        if self.kind == "choice":
            if value not in (self.choices or ()):
                raise bad
            return value
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise bad
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if not math.isfinite(value):  # before int(): int(nan) and int(inf) raise
            raise bad
        if self.kind == "int":
            if float(value) != int(value):
                raise bad
            value = int(value)
        else:
            value = float(value)
        if (self.low is not None and value < self.low) or (
            self.high is not None and value > self.high
        ):
            raise bad
        return value


_SEED_MAX = 2**31 - 1
_CODE_PAPER = ("code", "paper")

# Memory-augmented feature sampling (LOCE Sec. 3.3), settings M, k, m per worker.
MFS_PARAMS: Mapping[str, Param] = {
    "size": Param(80, kind="int", low=1, high=100_000, doc="memory size M per class (Sec. 4.1)"),
    "k": Param(8, kind="int", low=0, high=10_000, doc="classes sampled per iteration and worker"),
    "m": Param(4, kind="int", low=1, high=10_000, doc="features sampled per chosen class"),
}

DOMAINS: Mapping[str, Mapping[str, Param]] = {
    "ce": {},
    "bce": {},
    "eql": {
        "lambda_": Param(
            1.76e-3, low=0.0, high=1.0, doc="tail threshold on image frequency f_j (T_lambda)"
        ),
    },
    "eqlv2": {
        "gamma": Param(12.0, low=0.0, high=100.0, doc="slope of the mapping f"),
        "mu": Param(0.8, low=0.0, high=10.0, doc="centre of the mapping f"),
        "alpha": Param(4.0, low=0.0, high=100.0, doc="positive up-weighting q_j"),
    },
    "seesaw": {
        "p": Param(0.8, low=0.0, high=10.0, doc="mitigation exponent p of M_ij"),
        "q": Param(2.0, low=0.0, high=10.0, doc="compensation exponent q of C_ij"),
        "eps": Param(1e-2, low=1e-8, high=1.0, doc="floor of sigma_i in the compensation"),
    },
    "acsl": {
        "xi": Param(0.7, low=0.0, high=1.0, doc="confusion threshold xi (Table 2: 0.7 best)"),
        "background": Param(
            "code",
            kind="choice",
            choices=_CODE_PAPER,
            doc="code: xi rule also on the background column; paper: Eq. 5 over C classes",
        ),
        "seed": Param(
            0, kind="int", low=0, high=_SEED_MAX, doc="seed of the background-RoI draws"
        ),
    },
    "ahr": {
        "num_clusters": Param(
            0, kind="int", low=0, doc="K-Means clusters n; 0 = round(C * 200 / 1230) (Table 3)"
        ),
        "lambda_m": Param(2.0, low=0.0, high=100.0, doc="margin scale lambda_m (Eq. 10)"),
        "lambda_": Param(1.0, low=0.0, high=100.0, doc="coarse-loss weight lambda (Eq. 4)"),
        "lambda_c": Param(20.0, low=1e-3, high=256.0, doc="class cosine scale (Eq. 2)"),
        "lambda_p": Param(20.0, low=1e-3, high=256.0, doc="cluster cosine scale (Eq. 6)"),
        "eql": Param(True, kind="bool", doc="EQL weighting of fine negatives (Eq. 13)"),
        "lambda_r": Param(1.76e-3, low=0.0, high=1.0, doc="EQL tail threshold (Eq. 13)"),
        "eq13": Param(
            "text",
            kind="choice",
            choices=("text", "printed"),
            doc="negatives x (1 - E T) as EQL/text, or x E T as printed",
        ),
        "normalization": Param(
            "num_rois",
            kind="choice",
            choices=("num_rois", "num_elements"),
            doc="divide summed BCE by N or by the number of entries",
        ),
        "margin_grad": Param(False, kind="bool", doc="margins M carry gradient"),
        "seed": Param(0, kind="int", low=0, high=_SEED_MAX, doc="K-Means random_state"),
    },
    "c2am": {
        "s": Param(30.0, low=1e-3, high=256.0, doc="cosine scale s (Table 3: 30 is best)"),
        "alpha": Param(0.5, low=0.0, high=10.0, doc="margin strength alpha (Table 4: 0.5)"),
        "margin": Param(
            "adaptive",
            kind="choice",
            choices=("adaptive", "fixed"),
            doc="adaptive margins of Eq. 7, or Table 5's constant margin",
        ),
        "fixed_margin": Param(
            0.1, low=0.0, high=math.pi, doc="constant angular margin (rad) for margin=fixed"
        ),
        "background_margin": Param(
            True, kind="bool", doc="background column takes part in margins (paper silent)"
        ),
    },
    "ebl": {
        "alpha": Param(0.9, low=0.0, high=1.0, doc="EMA coefficient of the mean score (Table 2)"),
        "background_score": Param(
            0.01, low=1e-6, high=1.0, doc="fixed background mean score s_C+1 (Table 3)"
        ),
        "update": Param(
            "code",
            kind="choice",
            choices=_CODE_PAPER,
            doc="code: alpha**n_c per class and batch; paper: one EMA step per entry",
        ),
        "margin": Param(
            True, kind="bool", doc="score-guided margins (Eq. 3-4); false: plain softmax CE"
        ),
        "mfs": Param(False, kind="bool", doc="memory-augmented feature sampling (LOCE = EBL+MFS)"),
        "mfs_size": MFS_PARAMS["size"],
        "mfs_k": MFS_PARAMS["k"],
        "mfs_m": MFS_PARAMS["m"],
    },
    "gap": {
        "delta": Param(0.5, low=1e-3, high=10.0, doc="margin delta of the ranking H (Eq. 5)"),
        "gamma": Param(1.0, low=0.0, high=10.0, doc="strength of the class weight w_m (Eq. 9)"),
        "lambda_gap": Param(
            1.0, low=0.0, high=100.0, doc="weight of the GAP term (Eq. 10; 0.1 with RFS)"
        ),
        "base": Param(
            "bce",
            kind="choice",
            choices=("bce", "seesaw", "eqlv2", "ce"),
            doc="classification loss GAP is added to, built with its defaults",
        ),
        "variant": Param(
            "code",
            kind="choice",
            choices=_CODE_PAPER,
            doc="code: own rank 1/2, raw logits ranked; paper: own rank 1, scores ranked",
        ),
        "online": Param(
            True,
            kind="bool",
            hash_default=False,
            doc="class sizes of w_m counted in training; false: the dataset's (Table 4)",
        ),
        "exclude_fg": Param(
            True,
            kind="bool",
            hash_default=False,
            doc="other classes' positives are not negatives of m (Table 4 Excl. FG)",
        ),
    },
}


__all__ = ["DOMAINS", "MFS_PARAMS", "Param"]
