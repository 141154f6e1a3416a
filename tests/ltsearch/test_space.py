"""Spec -> Optuna space: conditional suggestions, grid enumeration, samplers, enqueued points."""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytest

from ltmodels.losses import LOSSES
from ltsearch.errors import SpecError
from ltsearch.space import (
    grid_points,
    make_sampler,
    params_to_config,
    points_to_evaluate,
    suggest,
)
from ltsearch.spec.hashing import config_hash
from ltsearch.spec.study import StudySpec, spec_from_dict

optuna.logging.set_verbosity(optuna.logging.WARNING)

CHOICE = [
    {"name": "ce"},
    {
        "name": "acsl",
        "params": {
            "xi": {"uniform": [0.2, 0.8]},
            "background": {"categorical": ["code", "paper"]},
            "seed": 3,
        },
    },
]


def make_spec(loss: dict[str, Any], **search: Any) -> StudySpec:
    search = {"sampler": "random", "trials": 10, **search}
    return spec_from_dict(
        {"name": "s", "dataset": {"kind": "synthetic"}, "loss": loss, "search": search}
    )


def run(spec: StudySpec, n: int, enqueue: bool = True) -> list[tuple[dict[str, Any], Any]]:
    """Run ``n`` trials; return (suggest's result, Optuna's trial params) per trial."""
    study = optuna.create_study(sampler=make_sampler(spec), directions=spec.search.directions)
    if enqueue:
        for point in points_to_evaluate(spec):
            study.enqueue_trial(point)
    out = []
    for _ in range(n):
        trial = study.ask()
        params = suggest(trial, spec)
        out.append((params, dict(trial.params)))
        study.tell(trial, [0.5] * len(spec.search.directions))
    return out


def test_suggest_is_conditional_on_the_loss() -> None:
    spec = make_spec({"choice": CHOICE})
    results = run(spec, 30)
    losses = {p["loss"] for p, _ in results}
    assert losses == {"ce", "acsl"}
    for params, trial_params in results:
        if params["loss"] == "ce":
            assert params == {"loss": "ce"} and trial_params == {"loss": "ce"}
            continue
        assert set(params) == {"loss", "acsl.xi", "acsl.background", "acsl.seed"}
        assert 0.2 <= params["acsl.xi"] <= 0.8
        assert params["acsl.background"] in ("code", "paper")
        assert params["acsl.seed"] == 3 and "acsl.seed" not in trial_params  # fixed: no dist
        config = params_to_config(params)
        LOSSES["acsl"].params["xi"].check("acsl", "xi", config["loss_params"]["xi"])
        assert config == {
            "loss": "acsl",
            "loss_params": {k.split(".")[1]: v for k, v in params.items() if k != "loss"},
        }


def test_int_step_and_log_ranges_respected() -> None:
    loss = {"name": "acsl", "params": {"seed": {"int": [0, 12], "step": 4},
                                       "xi": {"loguniform": [1e-3, 1e-1]}}}  # fmt: skip
    for params, _ in run(make_spec(loss), 15):
        assert params["acsl.seed"] in (0, 4, 8, 12)
        assert 1e-3 <= params["acsl.xi"] <= 1e-1
    stepped = {"name": "acsl", "params": {"xi": {"uniform": [0, 1], "step": 0.25}}}
    for params, _ in run(make_spec(stepped), 10):
        assert params["acsl.xi"] * 4 == pytest.approx(round(params["acsl.xi"] * 4))


def test_grid_points_cartesian_per_loss() -> None:
    loss = {"choice": [
        {"name": "ce"},
        {"name": "acsl", "params": {"xi": {"grid": [0.1, 0.5, 0.9]},
                                    "background": {"categorical": ["code", "paper"]}, "seed": 1}},
    ]}  # fmt: skip
    spec = make_spec(loss, sampler="grid", trials=None)
    points = grid_points(spec)
    assert spec.n_trials == len(points) == 1 + 3 * 2
    assert points[0] == {"loss": "ce"}
    assert points[1] == {"loss": "acsl", "acsl.xi": 0.1, "acsl.background": "code", "acsl.seed": 1}
    assert points[2]["acsl.background"] == "paper"  # last parameter varies fastest
    assert len({tuple(sorted(p.items())) for p in points}) == len(points)
    enqueued = points_to_evaluate(spec)
    assert all("acsl.seed" not in p for p in enqueued)


def test_grid_run_visits_every_point_once() -> None:
    loss = {"name": "acsl", "params": {"xi": {"grid": [0.1, 0.3, 0.5, 0.7]}}}
    spec = make_spec(loss, sampler="grid", trials=None)
    results = run(spec, spec.n_trials)
    assert sorted(p["acsl.xi"] for p, _ in results) == [0.1, 0.3, 0.5, 0.7]
    hashes = {config_hash(p, spec) for p, _ in results}
    assert len(hashes) == 4


def test_grid_points_reject_ranges() -> None:
    spec = make_spec({"choice": CHOICE})
    with pytest.raises(SpecError, match=r"^loss\.choice\.1\.params\.xi\.uniform: a uniform range"):
        grid_points(spec)


def test_initial_points_are_enqueued_first() -> None:
    spec = make_spec(
        {"choice": CHOICE},
        initial_points=[{"loss": "acsl", "xi": 0.7, "background": "paper"}, {"loss": "ce"}],
    )
    assert points_to_evaluate(spec) == [
        {"loss": "acsl", "acsl.xi": 0.7, "acsl.background": "paper"},
        {"loss": "ce"},
    ]
    results = run(spec, 3)
    assert results[0][0] == {"loss": "acsl", "acsl.xi": 0.7, "acsl.background": "paper",
                             "acsl.seed": 3}  # fmt: skip
    assert results[1][0] == {"loss": "ce"}


@pytest.mark.parametrize(
    "sampler, cls",
    [
        ("tpe", optuna.samplers.TPESampler),
        ("nsga2", optuna.samplers.NSGAIISampler),
        ("random", optuna.samplers.RandomSampler),
    ],
)
def test_samplers_are_seeded_and_reproducible(sampler: str, cls: type) -> None:
    spec = make_spec({"choice": CHOICE}, sampler=sampler, trials=12, seed=7)
    assert isinstance(make_sampler(spec), cls)
    first = [p for p, _ in run(spec, 12)]
    again = [p for p, _ in run(spec, 12)]
    assert first == again
    other = [p for p, _ in run(make_spec({"choice": CHOICE}, sampler=sampler, seed=8), 12)]
    assert other != first


def test_tpe_uses_constant_liar_only_with_concurrency() -> None:
    spec = make_spec({"choice": CHOICE}, sampler="tpe")
    assert make_sampler(spec)._constant_liar is False  # type: ignore[attr-defined]
    concurrent = spec_from_dict({**spec.to_dict(), "resources": {"max_concurrent_trials": 4}})
    assert make_sampler(concurrent)._constant_liar is True  # type: ignore[attr-defined]


def test_nsga2_population_size() -> None:
    spec = make_spec({"choice": CHOICE}, sampler="nsga2", population_size=6)
    assert make_sampler(spec)._population_size == 6  # type: ignore[attr-defined]


def test_params_to_config_errors() -> None:
    with pytest.raises(ValueError, match="'loss' key"):
        params_to_config({"acsl.xi": 0.5})
    with pytest.raises(ValueError, match="does not belong"):
        params_to_config({"loss": "ce", "acsl.xi": 0.5})
    assert params_to_config({"loss": "ce"}) == {"loss": "ce", "loss_params": {}}


def test_suggested_floats_are_finite() -> None:
    spec = make_spec({"name": "acsl", "params": {"xi": {"uniform": [0.0, 1.0]}}}, sampler="tpe")
    assert all(math.isfinite(p["acsl.xi"]) for p, _ in run(spec, 14))
