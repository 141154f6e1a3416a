"""A study's ``loss`` section as an Optuna define-by-run search space.

Parameter names are flat: ``loss`` (categorical over the study's losses, suggested even
when there is one, so every trial has it) and ``<loss>.<param>`` for each parameter of the
chosen loss (``acsl.xi``), so that two losses' parameters never share a distribution.
Fixed values are not suggested (Optuna sees no distribution) but :func:`suggest` returns
them, so its result is the complete configuration that :func:`params_to_config` and
:func:`ltsearch.spec.hashing.config_hash` take.

Space kinds map to Optuna as: ``grid`` and ``categorical`` -> ``suggest_categorical``;
``uniform`` -> ``suggest_float`` (with ``step``); ``loguniform`` -> ``suggest_float(log=True)``;
``int`` -> ``suggest_int`` (with ``step``).

The grid sampler: Optuna's ``GridSampler`` takes one fixed product space, which would
cross every loss's parameters with every other loss (and reject the conditional ones), so
a grid study is an explicit list instead: :func:`grid_points` enumerates each loss's own
Cartesian product, the runner enqueues :func:`points_to_evaluate` (e.g. Ray Tune's
``OptunaSearch(points_to_evaluate=...)`` or ``study.enqueue_trial``), and
:func:`make_sampler` returns a seeded ``RandomSampler`` that only ever fills parameters an
enqueued point leaves out (none, when ``search.trials`` <= the grid size, which the spec
enforces).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping
from typing import Any

import optuna

from ltsearch.errors import SpecError
from ltsearch.spec.hashing import split_params
from ltsearch.spec.loss import ParamSpace
from ltsearch.spec.points import check_point, param_key
from ltsearch.spec.study import StudySpec


def _suggest_one(trial: optuna.Trial, key: str, space: ParamSpace) -> Any:
    kind = space.kind
    if kind == "fixed":
        return space.fixed
    if kind in ("grid", "categorical"):
        return trial.suggest_categorical(key, space.choices() or [])
    lo, hi = space.bounds
    if kind == "int":
        return trial.suggest_int(key, int(lo), int(hi), step=int(space.step or 1))
    if kind == "loguniform":
        return trial.suggest_float(key, lo, hi, log=True)
    return trial.suggest_float(key, lo, hi, step=space.step)


def suggest(trial: optuna.Trial, spec: StudySpec) -> dict[str, Any]:
    """Suggest one configuration (define-by-run; conditional on the loss).

    ``trial`` may be anything with Optuna's ``suggest_*`` methods (Ray Tune's
    define-by-run wrapper included).

    Returns:
        Flat params: ``{"loss": "acsl", "acsl.xi": 0.42, ...}``, fixed values included.
    """
    options = spec.loss.options
    name = trial.suggest_categorical("loss", [o.name for o in options])
    option = spec.loss.option(str(name))
    out: dict[str, Any] = {"loss": name}
    for pname, space in option.params.items():
        key = param_key(option.name, pname)
        out[key] = _suggest_one(trial, key, space)
    return out


def grid_points(spec: StudySpec) -> list[dict[str, Any]]:
    """Every grid point: per loss (in the order written), the Cartesian product of its
    parameters' values (the last parameter varies fastest); fixed values included.

    Raises:
        SpecError: a parameter is a range (uniform, loguniform or int), naming its key.
    """
    points = []
    for i, option in enumerate(spec.loss.options):
        keys, values = [], []
        for pname, space in option.params.items():
            choices = space.choices()
            if choices is None:
                raise SpecError(
                    f"a {space.kind} range has no grid; list values with grid: [...]",
                    path=["loss", *spec.loss.path(i), "params", pname, space.kind],
                )
            keys.append(param_key(option.name, pname))
            values.append(choices)
        for combo in itertools.product(*values):
            points.append({"loss": option.name, **dict(zip(keys, combo, strict=True))})
    return points


def _suggested_only(point: Mapping[str, Any], spec: StudySpec) -> dict[str, Any]:
    option = spec.loss.option(str(point["loss"]))
    fixed = {param_key(option.name, k) for k in option.fixed()}
    return {k: v for k, v in point.items() if k not in fixed}


def points_to_evaluate(spec: StudySpec) -> list[dict[str, Any]]:
    """Points to enqueue before sampling, as Optuna params (fixed values left out).

    For the grid sampler: the first ``n_trials`` :func:`grid_points`; otherwise the
    study's ``search.initial_points``.
    """
    if spec.search.sampler == "grid":
        points = grid_points(spec)[: spec.n_trials]
    else:
        points = [
            check_point(p, spec.loss, ["search", "initial_points", i])
            for i, p in enumerate(spec.search.initial_points)
        ]
    return [_suggested_only(p, spec) for p in points]


def make_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    """The Optuna sampler of ``search.sampler``, seeded with ``search.seed``.

    ``tpe``: multivariate, grouped TPE (grouping handles the conditional space) with the
    constant liar when trials run concurrently. ``nsga2``: NSGA-II (``population_size``
    or Optuna's default 50). ``random``: random. ``grid``: random, filling nothing once
    :func:`points_to_evaluate` is enqueued (see the module doc).
    """
    search = spec.search
    if search.sampler == "tpe":
        with warnings.catch_warnings():  # multivariate/group are flagged experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=search.seed,
                multivariate=True,
                group=True,
                constant_liar=spec.resources.max_concurrent_trials > 1,
            )
    if search.sampler == "nsga2":
        if search.population_size is None:
            return optuna.samplers.NSGAIISampler(seed=search.seed)
        return optuna.samplers.NSGAIISampler(
            seed=search.seed, population_size=search.population_size
        )
    return optuna.samplers.RandomSampler(seed=search.seed)


def params_to_config(params: Mapping[str, Any]) -> dict[str, Any]:
    """Flat params (as :func:`suggest` returns) -> ``{"loss": name, "loss_params": {...}}``.

    Raises:
        ValueError: no ``loss`` key, or a parameter of another loss.
    """
    loss, loss_params = split_params(params)
    return {"loss": loss, "loss_params": loss_params}


__all__ = ["grid_points", "make_sampler", "params_to_config", "points_to_evaluate", "suggest"]
