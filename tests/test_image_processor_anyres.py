"""LlavaVidImageProcessor in AnyRes mode: pixel parity with transformers' LLaVA-NeXT processor, plans,
odd inputs, save/load, and the pad/crop modes left as they were."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlavaImageProcessorPil, LlavaNextImageProcessorPil
from transformers.image_processing_utils import select_best_resolution

from llava_vid import geometry
from llava_vid.geometry import ImagePlan
from llava_vid.processing.image_processor import LlavaVidImageProcessor

S = 56
RANGE_3X3 = "(1x1),...,(3x3)"
PINPOINT_SETS = [None, RANGE_3X3]  # None = LLaVA-NeXT's five default layouts
PARITY_SIZES = [(100, 60), (60, 100), (333, 77), (32, 32), (1000, 1000), (1, 1)]  # (width, height)
EXTREME_SIZES = [(1, 10000), (10000, 1), (1, 1), (3, 10000)]  # (width, height)


def anyres(pinpoints=None, **kwargs) -> LlavaVidImageProcessor:
    return LlavaVidImageProcessor(image_size=S, aspect_mode="anyres", image_grid_pinpoints=pinpoints, **kwargs)


def reference_for(ours: LlavaVidImageProcessor) -> LlavaNextImageProcessorPil:
    return LlavaNextImageProcessorPil(
        size={"shortest_edge": S}, crop_size={"height": S, "width": S}, image_grid_pinpoints=ours.image_grid_pinpoints
    )


def reference_grid(size_hw: tuple[int, int], pinpoints: list[tuple[int, int]]) -> tuple[int, int]:
    height, width = select_best_resolution(size_hw, [list(p) for p in pinpoints])
    return height // S, width // S


def assert_matches_reference(ours: LlavaVidImageProcessor, images: list[Image.Image], plans=None) -> torch.Tensor:
    """Ours (one call, all images) against transformers (one batched call); returns our pixel_values."""
    reference_pinpoints = ours.image_grid_pinpoints
    if plans is not None:  # a restricted plan = transformers with only that grid's resolution allowed
        assert len(images) == 1
        reference_pinpoints = [[plans[0].grid[0] * S, plans[0].grid[1] * S]]
    reference = LlavaNextImageProcessorPil(
        size={"shortest_edge": S}, crop_size={"height": S, "width": S}, image_grid_pinpoints=reference_pinpoints
    )
    expected = reference(images, return_tensors="pt")
    actual = ours(images, plans=plans)
    pixel_values, grids = actual["pixel_values"], actual["image_grids"]
    assert pixel_values.dtype == torch.float32 and pixel_values.shape[1:] == (3, S, S)
    assert actual["image_sizes"].dtype == grids.dtype == torch.long
    torch.testing.assert_close(actual["image_sizes"], expected["image_sizes"].long(), atol=0, rtol=0)
    views_per_image = [1 + rows * cols for rows, cols in grids.tolist()]
    assert pixel_values.shape[0] == sum(views_per_image)
    # transformers pads every image to the most views with zeros: (N, max_views, 3, S, S).
    for index, mine in enumerate(pixel_values.split(views_per_image)):
        theirs = expected["pixel_values"][index]
        torch.testing.assert_close(mine, theirs[: len(mine)], atol=1e-5, rtol=0)
        assert not theirs[len(mine) :].any(), "transformers has more real views than we do"
    return pixel_values


# --------------------------------------------------------------------------- parity with transformers


@pytest.mark.parametrize("pinpoints", PINPOINT_SETS, ids=["default", "range3x3"])
def test_pixels_match_transformers_llava_next(noise_image, pinpoints) -> None:
    ours = anyres(pinpoints)
    images = [noise_image(width, height, seed=width * 1000 + height) for width, height in PARITY_SIZES]
    pixel_values = assert_matches_reference(ours, images)
    # Every image tiled (a lone image's AnyRes plan always has tiles), global view first.
    grids = ours(images)["image_grids"].tolist()
    assert all(rows * cols > 0 for rows, cols in grids)
    assert pixel_values.shape[0] == sum(1 + rows * cols for rows, cols in grids)


@pytest.mark.parametrize("pinpoints", PINPOINT_SETS, ids=["default", "range3x3"])
@pytest.mark.parametrize(("width", "height"), EXTREME_SIZES)
def test_extreme_aspect_ratios_match_transformers(noise_image, pinpoints, width: int, height: int) -> None:
    """A 1-pixel-wide strip fits a 1-pixel column into the canvas (never a 0-pixel resize), like transformers."""
    ours = anyres(pinpoints)
    image = noise_image(width, height, seed=7)
    pixel_values = assert_matches_reference(ours, [image])
    assert torch.isfinite(pixel_values).all()
    assert pixel_values.shape[0] == ours.plan(image).num_views


@pytest.mark.parametrize("pinpoints", PINPOINT_SETS, ids=["default", "range3x3"])
def test_plan_grid_is_transformers_best_resolution(pinpoints) -> None:
    ours = anyres(pinpoints)
    sizes = PARITY_SIZES + EXTREME_SIZES + [(2480, 3508), (1920, 1080), (57, 56), (56, 57), (113, 56), (168, 55)]
    for width, height in sizes:
        plan = ours.plan(Image.new("RGB", (width, height)))
        assert plan.original_size == (height, width)
        assert plan.grid == reference_grid((height, width), ours.pinpoints), (width, height)


def test_global_treatment_is_transformers_first_view(noise_image) -> None:
    ours = anyres()
    image = noise_image(333, 77, seed=3)
    plan = ours.plan(image, treatment="global")
    assert plan == ImagePlan((77, 333), (0, 0))
    out = ours([image], plans=[plan])
    assert out["pixel_values"].shape == (1, 3, S, S)
    assert out["image_grids"].tolist() == [[0, 0]]
    expected = reference_for(ours)(image, return_tensors="pt")["pixel_values"][0, :1]
    torch.testing.assert_close(out["pixel_values"], expected, atol=1e-5, rtol=0)


def test_mixed_plans_keep_image_order(noise_image) -> None:
    """Global-only and tiled images in one call: views stay grouped per image, in order."""
    ours = anyres(RANGE_3X3)
    images = [noise_image(100, 60, seed=1), noise_image(60, 100, seed=2), noise_image(333, 77, seed=3)]
    plans = [ours.plan(images[0]), ours.plan(images[1], treatment="global"), ours.plan(images[2])]
    together = ours(images, plans=plans)
    separately = [ours([image], plans=[plan])["pixel_values"] for image, plan in zip(images, plans)]
    torch.testing.assert_close(together["pixel_values"], torch.cat(separately), atol=0, rtol=0)
    assert together["image_grids"].tolist() == [list(plan.grid) for plan in plans]
    assert together["image_sizes"].tolist() == [[60, 100], [100, 60], [77, 333]]


def test_threads_do_not_change_pixels(noise_image) -> None:
    ours = anyres(RANGE_3X3)
    images = [noise_image(width, height, seed=width + height) for width, height in PARITY_SIZES]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = ours(images)["pixel_values"]
        torch.set_num_threads(2)
        threaded = ours(images)["pixel_values"]
    finally:
        torch.set_num_threads(before)
    assert torch.equal(serial, threaded)


# --------------------------------------------------------------------------- odd inputs


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "1", "I;16"])
@pytest.mark.parametrize(("width", "height"), [(1, 10000), (10000, 1), (1, 1), (90, 40)])
def test_other_modes_and_extreme_sizes_give_valid_views(mode: str, width: int, height: int) -> None:
    rng = np.random.default_rng(width * 7 + height)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB").convert(mode)
    ours = anyres()
    out = ours([image])
    plan = ours.plan(image)
    assert plan.num_tiles > 0
    assert out["pixel_values"].shape == (plan.num_views, 3, S, S)
    assert torch.isfinite(out["pixel_values"]).all()
    assert out["image_sizes"].tolist() == [[height, width]]
    # Converted exactly like image.convert("RGB") would be.
    torch.testing.assert_close(out["pixel_values"], ours([image.convert("RGB")])["pixel_values"], atol=0, rtol=0)
    assert image.mode == mode  # the caller's image is not modified


def test_no_images() -> None:
    out = anyres()([])
    assert out["pixel_values"].shape == (0, 3, S, S)
    assert out["image_sizes"].shape == out["image_grids"].shape == (0, 2)


# --------------------------------------------------------------------------- plans and max_tiles


@pytest.mark.parametrize("max_tiles", [1, 2, 3, 4, 6])
def test_max_tiles_restricts_the_grid(max_tiles: int) -> None:
    ours = anyres(RANGE_3X3)
    allowed = [p for p in ours.pinpoints if (p[0] // S) * (p[1] // S) <= max_tiles]
    for width, height in PARITY_SIZES + [(2480, 3508), (1920, 1080), (400, 100)]:
        plan = ours.plan(Image.new("RGB", (width, height)), max_tiles=max_tiles)
        rows, cols = plan.grid
        assert 1 <= rows * cols <= max_tiles
        assert plan.grid == reference_grid((height, width), allowed)


def test_max_tiles_restricted_plan_matches_transformers(noise_image) -> None:
    ours = anyres(RANGE_3X3)
    image = noise_image(400, 100, seed=5)
    plan = ours.plan(image, max_tiles=2)
    assert plan.grid == (1, 2) and ours.plan(image).grid == (1, 3)
    assert_matches_reference(ours, [image], plans=[plan])


def test_max_tiles_below_every_pinpoint_gives_global_view_only(noise_image) -> None:
    ours = anyres()  # the smallest default layouts have 2 tiles
    image = noise_image(100, 60, seed=1)
    plan = ours.plan(image, max_tiles=1)
    assert plan == ImagePlan((60, 100), (0, 0))
    assert ours([image], plans=[plan])["pixel_values"].shape == (1, 3, S, S)


@pytest.mark.parametrize("aspect_mode", ["pad", "crop"])
def test_non_anyres_modes_plan_global_view_only(aspect_mode: str, noise_image) -> None:
    ours = LlavaVidImageProcessor(image_size=S, aspect_mode=aspect_mode)
    image = noise_image(100, 60, seed=1)
    assert ours.plan(image) == ours.plan(image, treatment="anyres", max_tiles=9) == ImagePlan((60, 100), (0, 0))
    with pytest.raises(ValueError, match=r"aspect_mode='%s'" % aspect_mode):
        ours([image], plans=[ImagePlan((60, 100), (1, 2))])


def test_plan_count_mismatch_names_both_numbers(noise_image) -> None:
    ours = anyres()
    images = [noise_image(40, 30, seed=1), noise_image(30, 40, seed=2)]
    with pytest.raises(ValueError, match=r"1 plans for 2 images"):
        ours(images, plans=[ours.plan(images[0])])


def test_plan_of_another_image_is_refused(noise_image) -> None:
    ours = anyres()
    with pytest.raises(ValueError, match=r"original_size=\(30, 40\).*\(40, 30\)"):
        ours([noise_image(30, 40, seed=1)], plans=[ImagePlan((30, 40), (1, 2))])
    with pytest.raises(ValueError, match="grid"):
        ours([noise_image(40, 30, seed=1)], plans=[ImagePlan((30, 40), (0, 2))])


def test_unknown_treatment_is_refused() -> None:
    with pytest.raises(ValueError, match="treatment='auto'"):
        anyres().plan(Image.new("RGB", (4, 4)), treatment="auto")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- construction, save / load


def test_pinpoints_are_normalised() -> None:
    assert anyres().pinpoints == geometry.default_grid_pinpoints(S)
    assert anyres().image_grid_pinpoints == [[56, 112], [112, 56], [112, 112], [168, 56], [56, 168]]
    ranged = anyres(RANGE_3X3)
    assert ranged.image_grid_pinpoints == [[r * S, c * S] for r in range(1, 4) for c in range(1, 4)]
    assert all(isinstance(p, tuple) for p in ranged.pinpoints)
    assert anyres([(56, 112)]).image_grid_pinpoints == [[56, 112]]
    assert LlavaVidImageProcessor.model_input_names == ["pixel_values", "image_sizes", "image_grids"]


@pytest.mark.parametrize(
    "pinpoints", [[], [[56, 57]], [[0, 56]], [[56]], "(2x2),...,(1x1)", "3x3", [[56.0, 112]]]
)
def test_invalid_pinpoints_name_the_field(pinpoints) -> None:
    with pytest.raises(ValueError, match="image_grid_pinpoints"):
        anyres(pinpoints)


@pytest.mark.parametrize("pinpoints", PINPOINT_SETS, ids=["default", "range3x3"])
def test_save_load_round_trip(tmp_path: Path, noise_image, pinpoints) -> None:
    ours = LlavaVidImageProcessor(
        image_size=S, aspect_mode="anyres", image_grid_pinpoints=pinpoints, image_mean=[0.5, 0.4, 0.3]
    )
    ours.save_pretrained(tmp_path)
    loaded = LlavaVidImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is LlavaVidImageProcessor
    assert (loaded.image_size, loaded.aspect_mode, loaded.image_mean) == (S, "anyres", [0.5, 0.4, 0.3])
    assert loaded.image_grid_pinpoints == ours.image_grid_pinpoints
    assert loaded.pinpoints == ours.pinpoints
    image = noise_image(333, 77, seed=4)
    before, after = ours([image]), loaded([image])
    for key in ("pixel_values", "image_sizes", "image_grids"):
        assert torch.equal(before[key], after[key]), key


# --------------------------------------------------------------------------- pad / crop unchanged


@pytest.mark.parametrize("aspect_mode", ["pad", "crop"])
@pytest.mark.parametrize(("width", "height"), PARITY_SIZES)
def test_pad_and_crop_still_match_transformers_llava(noise_image, aspect_mode: str, width: int, height: int) -> None:
    reference = LlavaImageProcessorPil(
        do_pad=aspect_mode == "pad", size={"shortest_edge": S}, crop_size={"height": S, "width": S}
    )
    ours = LlavaVidImageProcessor(image_size=S, aspect_mode=aspect_mode)
    image = noise_image(width, height, seed=width * 1000 + height)
    out = ours([image])
    torch.testing.assert_close(out["pixel_values"], reference(image, return_tensors="pt")["pixel_values"], atol=1e-5, rtol=0)
    assert out["image_grids"].tolist() == [[0, 0]] and out["image_sizes"].tolist() == [[height, width]]


def test_lazily_opened_file_is_decoded_once_before_the_resize_threads(tmp_path: Path, noise_image) -> None:
    path = tmp_path / "noise.png"
    noise_image(333, 77, seed=9).save(path)
    ours = anyres()
    expected = ours([Image.open(path).convert("RGB")])["pixel_values"]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with Image.open(path) as lazy:  # header parsed, pixels not decoded yet
            actual = ours([lazy, lazy])["pixel_values"]
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(actual, torch.cat([expected, expected]), atol=0, rtol=0)
