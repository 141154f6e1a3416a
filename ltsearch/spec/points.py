"""Points inside a study's loss space: initial points of the search, reference rows.

A reference row gives published numbers beside its parameter values: ``AP``, ``APr``, ...
of the reference's ``metric_kind``, and/or full names (``bbox/AP``, ``segm/APr``) for a
table that prints both box and mask AP.

A reference row may instead be the study's stage-1 model as is: ``{baseline: stage1, AP:
...}``, the papers' "before re-balancing" row (it needs ``training.stage1.evaluate``).

A point names its loss with ``loss`` (optional when the study searches one loss) and gives
parameter values by name: ``{loss: acsl, xi: 0.7}``. Its flat form, used by Optuna and
result columns, prefixes each parameter with its loss: ``{"loss": "acsl", "acsl.xi": 0.7}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ltmodels.errors import ConfigError
from ltmodels.losses.domains import DOMAINS
from ltsearch.errors import SpecError
from ltsearch.rows import BASELINE, STAGE1
from ltsearch.spec.loss import LossSpec
from ltsearch.spec.sections import METRIC_NAMES, METRICS


def param_key(loss: str, name: str) -> str:
    """Flat name of a loss parameter in Optuna and in result columns: ``acsl.xi``."""
    return f"{loss}.{name}"


def point_loss(point: Mapping[str, Any], loss: LossSpec, path: list[str | int]) -> str:
    """The loss a point (initial point, reference row) is about: its ``loss`` key, or the
    study's only loss."""
    names = [o.name for o in loss.options]
    name = point.get("loss")
    if name is None:
        if len(names) == 1:
            return names[0]
        raise SpecError(
            f"missing; this study searches several losses, give loss: one of {', '.join(names)}",
            path=[*path, "loss"],
        )
    if name not in DOMAINS:
        raise SpecError(
            f"unknown loss {name!r}; valid losses: {', '.join(sorted(DOMAINS))}",
            path=[*path, "loss"],
        )
    return str(name)


def check_param_value(loss: str, name: str, value: Any, path: list[str | int]) -> Any:
    """``value`` checked against the loss parameter's domain and coerced to its type."""
    domains = DOMAINS[loss]
    if name not in domains:
        raise SpecError(
            f"unknown parameter of loss {loss!r}; valid: {', '.join(domains) or 'none'}", path=path
        )
    try:
        return domains[name].check(loss, name, value)
    except ConfigError as exc:
        raise SpecError(str(exc), path=path) from None


def check_point(point: Any, loss: LossSpec, path: list[str | int]) -> dict[str, Any]:
    """Check an initial point (``{loss: acsl, xi: 0.7}``) against the study's space.

    Returns:
        The point as flat params (``{"loss": "acsl", "acsl.xi": 0.7}``), fixed parameters
        included, values coerced.
    """
    if not isinstance(point, Mapping):
        raise SpecError(
            f"got {point!r}; expected a mapping like {{loss: acsl, xi: 0.7}}", path=path
        )
    name = point_loss(point, loss, path)
    try:
        opt = loss.option(name)
    except KeyError:
        searched = ", ".join(o.name for o in loss.options)
        raise SpecError(
            f"loss {name!r} is not searched by this study; searched: {searched}",
            path=[*path, "loss"],
        ) from None
    out: dict[str, Any] = {"loss": name}
    for key, value in point.items():
        if key == "loss":
            continue
        kpath = [*path, key]
        if key not in opt.params:
            raise SpecError(
                f"is not in the study's space of loss {name!r}; searched: "
                f"{', '.join(opt.params) or 'none'}",
                path=kpath,
            )
        v = check_param_value(name, str(key), value, kpath)
        if not opt.params[key].contains(v):
            raise SpecError(
                f"{v!r} lies outside the study's space {opt.params[key].to_yaml()}; "
                "pick a value inside it",
                path=kpath,
            )
        out[param_key(name, str(key))] = v
    missing = [k for k in opt.searched() if k not in point]
    if missing:
        raise SpecError(
            f"misses searched parameter(s) {', '.join(missing)}; give every one", path=path
        )
    for k, v in opt.fixed().items():
        out.setdefault(param_key(name, k), v)
    return out


def is_metric_key(key: Any) -> bool:
    """A reference row's metric key: ``AP`` (of the reference's ``metric_kind``) or a full
    name such as ``bbox/AP`` or ``segm/APr``."""
    return key in METRIC_NAMES or key in METRICS


def reference_metrics(row: Mapping[str, Any], metric_kind: str) -> dict[str, Any]:
    """A reference row's published numbers by full metric name: ``AP`` is
    ``<metric_kind>/AP``; ``bbox/AP`` and ``segm/AP`` name their own kind."""
    return {
        (f"{metric_kind}/{k}" if k in METRIC_NAMES else str(k)): v
        for k, v in row.items()
        if is_metric_key(k)
    }


def check_baseline(row: Mapping[str, Any], path: list[str | int], stage1_row: bool) -> None:
    """A reference row ``{baseline: stage1, AP: ...}``: the study's stage-1 model as is,
    which only a study with ``training.stage1.evaluate`` has; metrics only."""
    value = row[BASELINE]
    if value != STAGE1:
        raise SpecError(
            f"got {value!r}; the baseline a row can name is {STAGE1} (the stage-1 model "
            "before re-balancing)",
            path=[*path, BASELINE],
        )
    if not stage1_row:
        raise SpecError(
            "needs the stage-1 row: set training.stage1.evaluate: true (schedule: decoupled), "
            "or remove this row",
            path=[*path, BASELINE],
        )
    for key in row:
        if key != BASELINE and not is_metric_key(key):
            raise SpecError(
                "a baseline row gives metrics only (it has no loss parameters); remove it",
                path=[*path, key],
            )


def check_reference_row(
    row: Any,
    loss: LossSpec,
    path: list[str | int],
    metric_kind: str = "bbox",
    *,
    stage1_row: bool = False,
) -> None:
    """Check a reference row: parameter values of a registered loss and some metrics (plain
    names are of ``metric_kind``; ``bbox/...`` and ``segm/...`` name their kind), or
    ``baseline: stage1`` and metrics (:func:`check_baseline`; ``stage1_row``: the study
    evaluates its stage 1)."""
    if not isinstance(row, Mapping):
        raise SpecError(
            f"got {row!r}; expected a mapping like {{xi: 0.7, APr: 18.6, APf: 29.4}}", path=path
        )
    if BASELINE in row:
        check_baseline(row, path, stage1_row)
        name = STAGE1
    else:
        name = point_loss(row, loss, path)
    if not any(is_metric_key(k) for k in row):
        raise SpecError(
            f"gives no metric; add some of {', '.join(METRIC_NAMES)} (of metric_kind "
            f"{metric_kind}) or of bbox/AP, segm/AP, ...",
            path=path,
        )
    for key, value in row.items():
        if key in ("loss", BASELINE):
            continue
        if is_metric_key(key):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SpecError(
                    f"got {value!r}; a metric is a number (AP in %)", path=[*path, key]
                )
            if key in METRIC_NAMES and f"{metric_kind}/{key}" in row:
                raise SpecError(
                    f"gives {metric_kind}/{key} twice ({key} is {metric_kind}/{key} under "
                    f"metric_kind: {metric_kind}); keep one",
                    path=[*path, key],
                )
        else:
            check_param_value(name, str(key), value, [*path, key])


__all__ = [
    "check_baseline", "check_param_value", "check_point", "check_reference_row", "is_metric_key",
    "param_key", "point_loss", "reference_metrics",
]  # fmt: skip
