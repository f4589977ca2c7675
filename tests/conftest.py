"""Shared fixtures: the tiny preset, the tiny model + processor (built once per session) and test images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_CONFIG_DIR = REPO_ROOT / "configs" / "model"
TINY_YAML = MODEL_CONFIG_DIR / "tiny.yaml"

# Distinct, fully saturated colours: after normalisation each lands in a clearly different place.
RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
YELLOW = (255, 255, 0)


@pytest.fixture(scope="session")
def tiny_spec():
    from llava_vid.build import load_model_spec

    return load_model_spec(TINY_YAML)


@pytest.fixture(scope="session")
def tiny_model_and_processor(tiny_spec):
    """The tiny random model (eval mode) and its processor. Shared: tests must not mutate either
    (copy the processor, restore any model setting they touch)."""
    import llava_vid  # noqa: F401  (registers the Auto classes)
    from llava_vid.build import build_model_and_processor

    model, processor = build_model_and_processor(tiny_spec)
    model.eval()
    return model, processor


@pytest.fixture(scope="session")
def tiny_model(tiny_model_and_processor):
    return tiny_model_and_processor[0]


@pytest.fixture(scope="session")
def tiny_processor(tiny_model_and_processor):
    return tiny_model_and_processor[1]


def _solid_image(colour: tuple[int, ...] = RED, size: tuple[int, int] = (40, 30), mode: str = "RGB") -> Image.Image:
    """A ``size`` (width, height) image of one colour."""
    return Image.new(mode, size, colour)


def _noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A reproducible random RGB image of ``width`` × ``height`` (every pixel differs, so any
    misplaced resize/pad/crop shows up)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


@pytest.fixture(scope="session")
def solid_image() -> Callable[..., Image.Image]:
    return _solid_image


@pytest.fixture(scope="session")
def noise_image() -> Callable[..., Image.Image]:
    return _noise_image
