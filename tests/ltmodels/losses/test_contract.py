"""The contract every registered loss keeps, parametrized over ``ltmodels.losses.LOSSES``.

A loss added to the registry is tested here without editing this file. Each call gets the
context the RoI head provides (``features`` [N, D], ``weight`` [K, D], ``gt_index`` [N]),
with logits consistent with them: cosines for ``predictor == "cosine"`` losses, ``x @ W.T``
otherwise. Every loss gets :meth:`LongTailLoss.set_class_stats` first (a no-op for losses
that do not use dataset frequencies); anything else must work with the defaults.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from ltmodels.errors import ConfigError
from ltmodels.losses import LOSSES, LongTailLoss, build_loss

NAMES = sorted(LOSSES)
C = 6  # foreground classes
D = 8  # feature channels
NUM_IMAGES = 10_000
# Image counts spanning LVIS's groups: two rare (< 1.76e-3 of images), common, frequent.
IMAGE_COUNTS = torch.tensor([3, 12, 40, 150, 900, 6000])
MIXED = [0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 6, 2]


def new_loss(name: str) -> LongTailLoss:
    loss = build_loss(name, num_classes=C)
    loss.set_class_stats(IMAGE_COUNTS, NUM_IMAGES)
    return loss


def make_inputs(
    loss: LongTailLoss, labels: list[int], *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Logits, labels and context as the RoI head gives them; features/weight need grad.

    RoIs of the same label share one ground-truth object (``gt_index``), background is -1.
    """
    g = torch.Generator().manual_seed(seed)
    k = loss.num_logits(C)
    features = torch.randn(len(labels), D, generator=g).requires_grad_()
    weight = torch.randn(k, D, generator=g).requires_grad_()
    if loss.predictor == "cosine":
        logits = F.normalize(features, dim=1) @ F.normalize(weight, dim=1).T
    else:
        logits = features @ weight.T
    logits = logits.to(dtype)
    logits.retain_grad()
    y = torch.tensor(labels, dtype=torch.long)
    objects = {lab: i for i, lab in enumerate(sorted(set(labels) - {0}))}
    gt_index = torch.tensor([objects.get(lab, -1) for lab in labels], dtype=torch.long)
    context = {"features": features.to(dtype), "weight": weight, "gt_index": gt_index}
    return logits, y, context


def total(out: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(out.values(), torch.zeros(()))


def check_terms(out: dict[str, torch.Tensor]) -> None:
    assert isinstance(out, dict) and out, "a loss returns a non-empty dict of named terms"
    for key, value in out.items():
        assert isinstance(key, str) and key.startswith("loss"), key
        assert value.dim() == 0, f"{key} is not a scalar: {tuple(value.shape)}"
        assert value.dtype == torch.float32, f"{key} is {value.dtype}, expected float32"
        assert torch.isfinite(value), f"{key} = {value}"


def run_and_backward(loss: LongTailLoss, labels: list[int], **kw: Any) -> None:
    logits, y, ctx = make_inputs(loss, labels, **kw)
    out = loss(logits, y, **ctx)
    check_terms(out)
    total(out).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    for key in ("features", "weight"):
        grad = ctx[key].grad if ctx[key].is_leaf else None
        assert grad is None or torch.isfinite(grad).all(), key


@pytest.mark.parametrize("name", NAMES)
def test_mixed_batches_give_finite_losses_and_gradients(name: str) -> None:
    loss = new_loss(name)
    for seed in range(3):  # several iterations, so state-dependent weights are exercised
        logits, y, ctx = make_inputs(loss, MIXED, seed=seed)
        out = loss(logits, y, **ctx)
        check_terms(out)
        total(out).backward()
        assert logits.grad is not None
        assert torch.isfinite(logits.grad).all()
        assert logits.grad.abs().sum() > 0, "the loss must train the classifier"


@pytest.mark.parametrize(
    "labels",
    [[0] * 7, [1, 2, 3, 4, 5, 6, 6], [3], [0]],
    ids=["no_foreground", "only_foreground", "single_fg_roi", "single_bg_roi"],
)
@pytest.mark.parametrize("name", NAMES)
def test_degenerate_batches(name: str, labels: list[int]) -> None:
    loss = new_loss(name)
    for seed in range(2):
        run_and_backward(loss, labels, seed=seed)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", NAMES)
def test_half_precision_logits_stay_finite(name: str, dtype: torch.dtype) -> None:
    loss = new_loss(name)
    for seed in range(2):
        run_and_backward(loss, MIXED, seed=seed, dtype=dtype)


@pytest.mark.parametrize("name", NAMES)
def test_num_logits_is_what_forward_accepts(name: str) -> None:
    loss = new_loss(name)
    k = loss.num_logits(C)
    assert isinstance(k, int) and k >= C
    logits, y, ctx = make_inputs(loss, MIXED)
    check_terms(loss(logits, y, **ctx))
    for wrong in (k - 1, k + 1):
        bad = torch.randn(len(MIXED), wrong)
        with pytest.raises(ValueError):
            loss(bad, y, **ctx)


@pytest.mark.parametrize("name", NAMES)
def test_scores_are_per_class_probabilities(name: str) -> None:
    loss = new_loss(name)
    logits, y, ctx = make_inputs(loss, MIXED)
    loss(logits, y, **ctx)
    with torch.no_grad():
        s = loss.scores(logits.detach() * 4)  # sharper logits, still in range
    assert s.shape == (len(MIXED), C)
    assert s.dtype in (torch.float32, torch.float64)
    assert torch.isfinite(s).all() and (s >= 0).all() and (s <= 1).all()


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trips_through_state_dict(name: str) -> None:
    """Buffers restored into a freshly built loss give the identical next loss."""
    trained = new_loss(name)
    for seed in range(3):
        logits, y, ctx = make_inputs(trained, MIXED, seed=seed)
        total(trained(logits, y, **ctx)).backward()
    restored = build_loss(name, num_classes=C)  # no set_class_stats: the checkpoint has it
    restored.load_state_dict(trained.state_dict())
    for key, buf in trained.state_dict().items():
        assert torch.equal(restored.state_dict()[key], buf), key
    results = []
    for loss in (trained, restored):
        logits, y, ctx = make_inputs(loss, MIXED, seed=7)
        torch.manual_seed(0)  # losses that sample (e.g. ACSL's background negatives)
        out = loss(logits, y, **ctx)
        total(out).backward()
        results.append(({k: v.detach() for k, v in out.items()}, logits.grad))
    (out_a, grad_a), (out_b, grad_b) = results
    assert out_a.keys() == out_b.keys()
    for key in out_a:
        assert torch.equal(out_a[key], out_b[key]), key
    assert torch.equal(grad_a, grad_b)


@pytest.mark.parametrize("name", NAMES)
def test_params_match_the_constructor(name: str) -> None:
    cls = LOSSES[name]
    assert cls.name == name
    assert cls.predictor in ("linear", "cosine")
    sig = inspect.signature(cls.__init__)
    kwargs = {k: p for k, p in sig.parameters.items() if k != "self"}
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in kwargs.values()), (
        "constructor arguments are keyword-only"
    )
    assert set(kwargs) - {"num_classes"} == set(cls.params)
    for key, param in cls.params.items():
        assert kwargs[key].default == param.default, (
            f"{key}: Param default {param.default!r} != constructor {kwargs[key].default!r}"
        )
        assert param.check(name, key, param.default) == param.default
        assert param.doc, f"{key} has no doc line"


def test_unknown_loss_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as err:
        build_loss("no-such-loss", num_classes=C)
    for name in NAMES:
        assert name in str(err.value)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_param_lists_valid_params(name: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_loss(name, num_classes=C, no_such_param=1.0)
    assert "no_such_param" in str(err.value)
    for key in LOSSES[name].params:
        assert key in str(err.value)


def _invalid_values(param: Any) -> list[Any]:
    if param.kind == "choice":
        return ["not-a-choice"]
    if param.kind == "bool":
        return ["yes", 1]
    bad: list[Any] = ["text", float("nan")]
    if param.low is not None:
        bad.append(param.low - 1)
    if param.high is not None:
        bad.append(param.high + 1)
    if param.kind == "int":
        bad.append((param.low if param.low is not None else 0) + 0.5)
    return bad


@pytest.mark.parametrize("name", NAMES)
def test_out_of_range_values_raise_config_error(name: str) -> None:
    for key, param in LOSSES[name].params.items():
        for value in _invalid_values(param):
            with pytest.raises(ConfigError, match=key):
                build_loss(name, num_classes=C, **{key: value})


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_foreground_logits_has_one_column_per_class(name: str) -> None:
    """``foreground_logits`` maps any layout to ``[N, C]`` (GAP ranks it; the decoupled
    schedule reads stage-1 class weights through it for AHR's clusters)."""
    c = 6
    loss = build_loss(name, num_classes=c)
    logits = torch.randn(3, loss.num_logits(c))
    assert loss.foreground_logits(logits).shape == (3, c)
