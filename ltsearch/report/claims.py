"""The papers' claims that ``ltsearch reproduction`` checks: data, and the pure functions
that turn a claim into comparisons against a study's reference rows (no I/O).

A claim belongs to a study by its *base name*: the study name without the ``-embedded``
or ``-smoke`` suffix of a profiled run (``acsl-table2-embedded`` -> ``acsl-table2``).
It compares configurations named by *selectors*, dicts like reference rows without the
numbers (``{loss: gap, base: ce}``, ``{xi: 0.7}``, ``{baseline: stage1}``); a selector
names the one reference row holding all its items. A claim gives its comparisons
``(A, B)`` ("A beats B on the metric") explicitly, or a *sweep*: the reference rows that
set the swept parameters, the paper's best row compared with every other one.

Selectors avoid parameters that ``--embedded`` rescales (AHR's ``num_clusters``): the
reference rows of an embedded study carry the rescaled values, and a selector without
them names the same row in both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ltsearch.rows import BASELINE, STAGE1
from ltsearch.spec.points import is_metric_key, point_loss, reference_metrics
from ltsearch.spec.study import StudySpec

Selector = Mapping[str, Any]
PROFILE_SUFFIXES = ("-embedded", "-smoke")


@dataclass(frozen=True)
class Claim:
    """One statement of a paper, checked on one study.

    Attributes:
        id: unique, used in the document and as the figure's file name.
        study: the study's base name (``acsl-table2``).
        statement: the paper's claim in one sentence.
        comparisons: ``(A, B)`` pairs of selectors: the paper says A scores above B.
        sweep: parameters whose reference rows are compared instead (best vs the rest).
        metric: full metric name; None: the reference's ``metric_kind`` + ``/APr``.
    """

    id: str
    study: str
    statement: str
    comparisons: tuple[tuple[Selector, Selector], ...] = ()
    sweep: tuple[str, ...] = ()
    metric: str | None = None

    def __post_init__(self) -> None:
        if bool(self.comparisons) == bool(self.sweep):
            raise ValueError(f"claim {self.id}: give comparisons or a sweep, not both")

    def metric_of(self, spec: StudySpec) -> str:
        """The metric the claim is judged on in ``spec``."""
        if self.metric is not None:
            return self.metric
        kind = spec.reference.metric_kind if spec.reference is not None else "bbox"
        return f"{kind}/APr"


def base_name(study_name: str) -> str:
    """``acsl-table2-embedded`` -> ``acsl-table2`` (a profiled run's source study)."""
    for suffix in PROFILE_SUFFIXES:
        if study_name.endswith(suffix):
            return study_name[: -len(suffix)]
    return study_name


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
    return bool(a == b)


def identity(spec: StudySpec, row: Mapping[str, Any]) -> dict[str, Any]:
    """A reference row without its numbers, its loss filled in (none for a baseline row)."""
    out = {k: v for k, v in row.items() if not is_metric_key(k)}
    if BASELINE not in out:
        out["loss"] = point_loss(row, spec.loss, ["reference"])
    return out


def paper_rows(spec: StudySpec, selector: Selector) -> list[dict[str, Any]]:
    """The reference rows holding every item of ``selector`` (one, for a valid claim)."""
    if spec.reference is None:
        return []
    out = []
    for row in spec.reference.rows:
        ident = identity(spec, row)
        sel = dict(selector)
        if BASELINE not in sel and BASELINE not in ident:
            sel.setdefault("loss", ident["loss"])
        if all(k in ident and _same(ident[k], v) for k, v in sel.items()):
            out.append(row)
    return out


def paper_value(spec: StudySpec, selector: Selector, metric: str) -> float | None:
    """The paper's number of ``metric`` for the row ``selector`` names (None: no single
    row, or the row does not give it)."""
    rows = paper_rows(spec, selector)
    if len(rows) != 1 or spec.reference is None:
        return None
    value = reference_metrics(rows[0], spec.reference.metric_kind).get(metric)
    return None if value is None else float(value)


def sweep_rows(spec: StudySpec, params: tuple[str, ...]) -> list[dict[str, Any]]:
    """The reference rows that set every swept parameter, in the reference's order, as
    selectors (their numbers dropped)."""
    if spec.reference is None:
        return []
    rows = [identity(spec, r) for r in spec.reference.rows if BASELINE not in r]
    return [r for r in rows if all(p in r for p in params)]


def comparisons(claim: Claim, spec: StudySpec) -> list[tuple[Selector, Selector]]:
    """The claim's ``(A, B)`` pairs in ``spec``: as given, or for a sweep the paper's best
    row (the first of equals) against every other swept row, in the reference's order."""
    if not claim.sweep:
        return list(claim.comparisons)
    metric = claim.metric_of(spec)
    rows = sweep_rows(spec, claim.sweep)
    scored = [(paper_value(spec, r, metric), i) for i, r in enumerate(rows)]
    known = [(v, i) for v, i in scored if v is not None]
    if not known:
        return []
    best = max(known, key=lambda p: (p[0], -p[1]))[1]
    return [(rows[best], r) for i, r in enumerate(rows) if i != best]


def selector_label(selector: Selector) -> str:
    """``gap(base=ce)``, ``xi=0.7``, ``stage 1 only``: a selector as the document names it."""
    if selector.get(BASELINE) == STAGE1:
        return "stage 1 only"
    items = [(k, v) for k, v in selector.items() if k != "loss"]
    params = ", ".join(f"{k}={f'{v:g}' if isinstance(v, float) else v}" for k, v in items)
    loss = selector.get("loss")
    return f"{loss}({params})" if loss and params else str(loss or params)


def _c(id: str, study: str, statement: str, *pairs: tuple[Selector, Selector]) -> Claim:
    return Claim(id, study, statement, comparisons=pairs)


def _sweep(id: str, study: str, statement: str, *params: str, metric: str | None = None) -> Claim:
    return Claim(id, study, statement, sweep=params, metric=metric)


CE_FINETUNE = {"margin": False, "mfs": False}
NO_MARGIN = {"margin": "adaptive", "alpha": 0.0}
ADAPTIVE = {"margin": "adaptive", "alpha": 0.5}
FIXED = {"margin": "fixed"}

_ALL = (
    _sweep("acsl-table2-xi", "acsl-table2", "APr rises with xi to a peak near 0.7.", "xi"),
    _c(
        "acsl-table2-baseline", "acsl-table2",
        "ACSL (xi 0.7) raises APr far above the softmax-CE model it fine-tunes (stage 1 alone).",
        ({"xi": 0.7}, {BASELINE: STAGE1}),
    ),
    _c(
        "loce-table1-ebl", "loce-table1", "EBL adds APr over the CE fine-tune.",
        ({"margin": True, "mfs": False}, CE_FINETUNE),
    ),
    _c(
        "loce-table1-mfs", "loce-table1", "MFS adds APr over the CE fine-tune.",
        ({"margin": False, "mfs": True}, CE_FINETUNE),
    ),
    _c(
        "loce-table1-ebl-mfs", "loce-table1", "EBL + MFS adds APr over the CE fine-tune.",
        ({"margin": True, "mfs": True}, CE_FINETUNE),
    ),
    _sweep(
        "loce-table2-alpha", "loce-table2",
        "APr is best at EBL's EMA momentum alpha 0.9 (0.8 and 0.95 lower).", "alpha",
    ),
    _sweep(
        "loce-table3-background-score", "loce-table3",
        "APr is best at a background score s_(C+1) of 0.01 (0.1 and 0.001 lower).",
        "background_score",
    ),
    _sweep(
        "loce-table4-mfs-k-m", "loce-table4",
        "MFS with k = 4, m = 8 or k = 8, m = 4 gives the best APr; k = 8, m = 8 the lowest.",
        "mfs_k", "mfs_m",
    ),
    _sweep(
        "c2am-table3-s", "c2am-table3",
        "APr collapses at s = 10, peaks at s = 30-40 and falls again at s = 50.", "s",
    ),
    _c(
        "c2am-table4-margin", "c2am-table4",
        "The adaptive margin (alpha 0.5) beats no margin (alpha 0) on APr.",
        ({"alpha": 0.5}, {"alpha": 0.0}),
    ),
    _sweep(
        "c2am-table4-alpha", "c2am-table4",
        "APr rises with alpha up to 0.5 and stays there at 0.7.", "alpha",
    ),
    _c(
        "c2am-table5-adaptive-vs-fixed", "c2am-table5",
        "The adaptive margin beats the fixed margin on APr.", (ADAPTIVE, FIXED),
    ),
    _c(
        "c2am-table5-margins-vs-none", "c2am-table5",
        "Both margins, adaptive and fixed, beat no margin on APr.",
        (ADAPTIVE, NO_MARGIN), (FIXED, NO_MARGIN),
    ),
    _c(
        "rog-table1-gap", "rog-table1",
        "GAP raises APr over its base loss: sigmoid CE, softmax CE and EQLv2 (random sampler).",
        ({"loss": "gap", "base": "bce"}, {"loss": "bce"}),
        ({"loss": "gap", "base": "ce"}, {"loss": "ce"}),
        ({"loss": "gap", "base": "eqlv2"}, {"loss": "eqlv2"}),
    ),
    _c(
        "rog-table1-rfs-gap", "rog-table1-rfs", "GAP raises APr over sigmoid CE under RFS.",
        ({"loss": "gap", "base": "bce"}, {"loss": "bce"}),
    ),
    _sweep(
        "rog-table4-designs", "rog-table4",
        "GAP's class weight omega (gamma 1) raises mask AP by about 4 points; Online and "
        "Excl. FG change it by at most 0.5.",
        "gamma", "online", "exclude_fg", metric="segm/AP",  # the table prints no APr
    ),
    _sweep(
        "ahrl-table3-clusters", "ahrl-table3",
        "APr peaks at 200 K-Means clusters (about 6 classes each), above 108 and 400.",
        "num_clusters",
    ),
    _c(
        "ahrl-table5-ahr-vs-eql", "ahrl-table5",
        "Fine-tuning with the AHR loss beats fine-tuning with EQL on APr: the gain is not "
        "the second stage's training time.",
        ({"loss": "ahr"}, {"loss": "eql"}),
    ),
)  # fmt: skip

CLAIMS: dict[str, tuple[Claim, ...]] = {}
"""The registry: a study's base name -> its claims, in the order above."""
for _claim in _ALL:
    CLAIMS[_claim.study] = (*CLAIMS.get(_claim.study, ()), _claim)


def all_claims() -> list[Claim]:
    """Every registered claim, grouped by study in the registry's order."""
    return [c for claims in CLAIMS.values() for c in claims]


__all__ = [
    "CLAIMS", "Claim", "Selector", "all_claims", "base_name", "comparisons", "identity",
    "paper_rows", "paper_value", "selector_label", "sweep_rows",
]  # fmt: skip
