"""Shared fixtures for the ltmodels tests."""

from __future__ import annotations

import pytest

from ltmodels.data.synthetic import SynthConfig, SynthPaths, ensure_synthetic

# Small enough to generate in about a second. With 60 training images no class can reach
# LVIS's frequent threshold (> 100 images): frequencies are only rare and common here.
SYNTH_SMALL = SynthConfig(num_classes=12, train_images=60, val_images=24, image_size=96, seed=0)


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory: pytest.TempPathFactory) -> SynthPaths:
    """A small synthetic LVIS-format dataset (12 classes, 60 train / 24 val images, 96 px)."""
    return ensure_synthetic(tmp_path_factory.mktemp("synth-cache"), SYNTH_SMALL)
