"""Shared fixtures for the ltmodels tests. The feature-cache fixtures (``data``, ``model``,
``cache32``) are per test module and take the module's ``TRAIN_IMAGES``."""

from __future__ import annotations

from typing import Any

import pytest
from torch import nn

from ltmodels.cache.build import build_feature_cache
from ltmodels.data.synthetic import SynthConfig, SynthPaths, ensure_synthetic
from tests.ltmodels.cache_fixtures import cache_datasets, probe_detector

# Small enough to generate in about a second. With 60 training images no class can reach
# LVIS's frequent threshold (> 100 images): frequencies are only rare and common here.
SYNTH_SMALL = SynthConfig(num_classes=12, train_images=60, val_images=24, image_size=96, seed=0)


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory: pytest.TempPathFactory) -> SynthPaths:
    """A small synthetic LVIS-format dataset (12 classes, 60 train / 24 val images, 96 px)."""
    return ensure_synthetic(tmp_path_factory.mktemp("synth-cache"), SYNTH_SMALL)


@pytest.fixture(scope="module")
def data(synth_small: SynthPaths, request: pytest.FixtureRequest) -> Any:
    """The module's ``TRAIN_IMAGES`` first training images and the validation set."""
    return cache_datasets(synth_small, request.module.TRAIN_IMAGES)


@pytest.fixture(scope="module")
def model(data: Any) -> nn.Module:
    """The probe detector of :mod:`cache_fixtures`, in eval mode."""
    return probe_detector(data[1].num_classes).eval()


@pytest.fixture(scope="module")
def cache32(model: nn.Module, data: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The feature cache of ``model`` on ``data`` in float32, one image per batch."""
    root = tmp_path_factory.mktemp("fcache")
    return build_feature_cache(
        model, *data, root, key="f32", feature_dtype="float32", batch_size=1
    )
