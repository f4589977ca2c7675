"""AnyRes geometry and the one token-count function, checked against transformers' LLaVA-NeXT and
LLaVA-OneVision reference code (the functions themselves, called on dummy arrays/tensors), plus
hand-made tie-break cases and golden counts."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from transformers.image_processing_utils import get_patch_output_size
from transformers.image_processing_utils import select_best_resolution as hf_select_best_resolution
from transformers.image_utils import ChannelDimension
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.llava_next.modeling_llava_next import unpad_image
from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor
from transformers.models.llava_onevision.configuration_llava_onevision import LlavaOnevisionConfig
from transformers.models.llava_onevision.modeling_llava_onevision import LlavaOnevisionModel

from llava_vid.geometry import (
    ImagePlan,
    VisionGeometry,
    centered_padding,
    default_grid_pinpoints,
    fit_within,
    num_image_tokens,
    packed_grid_size,
    parse_grid_pinpoints,
    plan_anyres,
    select_best_resolution,
    shrunk_grid_size,
    tile_grid,
    unpadded_grid_size,
)

FEW = settings(deadline=None, max_examples=60)
SOME = settings(deadline=None, max_examples=150)

sizes = st.integers(min_value=1, max_value=5000)
image_sizes = st.tuples(sizes, sizes)  # (height, width)
# (rows, columns) tile layouts, turned into pixel resolutions of a tile size.
layouts = st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6)), min_size=1, max_size=8)

CLIP_336 = VisionGeometry(image_size=336, patch_size=14, newline=True)  # LLaVA-NeXT
NEXT_PINPOINTS = default_grid_pinpoints(336)


# ------------------------------------------------------------------------------------------ references
def hf_next_token_count(original_size: tuple[int, int], pinpoints: list, image_size: int, patch_size: int) -> int:
    """transformers' ``LlavaNextProcessor._get_number_of_features`` (the real method) on a minimal stand-in."""
    stand_in = SimpleNamespace(
        image_processor=SimpleNamespace(image_grid_pinpoints=[list(p) for p in pinpoints]),
        patch_size=patch_size,
        num_additional_image_tokens=0,
    )
    stand_in._get_unpadded_features = lambda *args: LlavaNextProcessor._get_unpadded_features(stand_in, *args)
    return LlavaNextProcessor._get_number_of_features(stand_in, *original_size, image_size, image_size)


def hf_onevision_token_count(
    original_size: tuple[int, int], pinpoints: list, image_size: int, patch_size: int, max_tiles: int
) -> int:
    """transformers' ``LlavaOnevisionModel.pack_image_features`` (the real method: unpad, ``anyres_max_N``
    bilinear shrink, newlines) on zero features of the right shape; returns the packed length."""
    side = image_size // patch_size
    stand_in = SimpleNamespace(
        config=SimpleNamespace(
            vision_config=SimpleNamespace(image_size=image_size, patch_size=patch_size),
            image_grid_pinpoints=[list(p) for p in pinpoints],
        )
    )
    rows, columns = tile_grid(hf_select_best_resolution(original_size, pinpoints), image_size)
    features = torch.zeros(1 + rows * columns, side * side, 1)  # (views, patches, width)
    _, lengths = LlavaOnevisionModel.pack_image_features(
        stand_in,
        [features],
        [list(original_size)],
        image_newline=torch.zeros(1),
        vision_aspect_ratio=f"anyres_max_{max_tiles}",
    )
    return int(lengths[0])


def _grid(geometry: VisionGeometry, plan: ImagePlan) -> tuple[int, int]:
    side = geometry.patches_per_side
    return plan.grid[0] * side, plan.grid[1] * side


def hf_unpads_to_nothing(original: tuple[int, int], grid: tuple[int, int]) -> bool:
    """transformers' unpad_image leaves an empty grid for an image thinner than one patch; we keep one
    row/column there instead (documented divergence), so parity is asserted only elsewhere."""
    return min(unpad_image(torch.zeros(1, *grid), original).shape[1:]) == 0


def hf_shrinks_to_nothing(grid: tuple[int, int], max_tiles: int, side: int) -> bool:
    ratio = math.sqrt(grid[0] * grid[1] / (max_tiles * side**2))
    return ratio > 1.1 and min(int(grid[0] // ratio), int(grid[1] // ratio)) == 0


# ------------------------------------------------------------------------------------------ pinpoints
def test_parse_list_form() -> None:
    assert parse_grid_pinpoints([[336, 672], [672, 336]], 336) == [(336, 672), (672, 336)]
    assert parse_grid_pinpoints(((14, 28),), 14) == [(14, 28)]


def test_parse_range_form_matches_onevision_order() -> None:
    parsed = parse_grid_pinpoints("(1x1),...,(6x6)", 384)
    assert len(parsed) == 36
    assert parsed[:3] == [(384, 384), (384, 768), (384, 1152)]  # rows outer, columns inner
    assert parsed[-1] == (2304, 2304)
    # transformers' LLaVA-OneVision default lists exactly these, in this order.
    assert [list(p) for p in parsed] == LlavaOnevisionConfig().image_grid_pinpoints
    assert parse_grid_pinpoints(" ( 2x1 ) , ... , ( 3x2 ) ", 10) == [(20, 10), (20, 20), (30, 10), (30, 20)]


@pytest.mark.parametrize(
    "pinpoints",
    [
        [],
        (),
        [[300, 336]],  # not a multiple of the tile
        [[336, 672], [336, 500]],
        [[-336, 672]],
        [[0, 336]],
        [[336]],
        [[336, 672, 336]],
        [[336.0, 672]],
        [[336, 672.5]],
        [[True, 336]],
        [["336", "672"]],
        "",
        "(1x1),(6x6)",
        "1x1,...,6x6",
        "(1x1),...,(6x6),",
        "(0x0),...,(2x2)",
        "(3x3),...,(1x1)",
        "(1.5x1),...,(6x6)",
        "(-1x1),...,(6x6)",
        "[[336, 672]]",
    ],
)
def test_parse_rejects_invalid_pinpoints(pinpoints) -> None:
    with pytest.raises(ValueError, match="image_grid_pinpoints"):
        parse_grid_pinpoints(pinpoints, 336)


def test_parse_rejects_a_flat_pair() -> None:
    with pytest.raises(ValueError, match="image_grid_pinpoints"):
        parse_grid_pinpoints([336, 672], 336)


def test_default_pinpoints_are_llava_next() -> None:
    assert [list(p) for p in default_grid_pinpoints(336)] == [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


# ------------------------------------------------------------------------------------------ best resolution
@SOME
@given(original=image_sizes, layout=layouts, tile=st.sampled_from([14, 56, 224, 336, 384]))
def test_select_best_resolution_matches_transformers(original, layout, tile) -> None:
    candidates = [(rows * tile, columns * tile) for rows, columns in layout]
    assert select_best_resolution(original, candidates) == hf_select_best_resolution(original, candidates)


@FEW
@given(original=image_sizes, candidates=st.lists(st.tuples(sizes, sizes), min_size=1, max_size=6))
def test_select_best_resolution_matches_transformers_on_arbitrary_candidates(original, candidates) -> None:
    assert select_best_resolution(original, candidates) == hf_select_best_resolution(original, candidates)


def test_select_best_resolution_tie_breaks() -> None:
    # Upscaling earns nothing: both show all 100 × 100 pixels, the smaller canvas wastes less.
    assert select_best_resolution((100, 100), [(400, 400), (200, 200)]) == (200, 200)
    assert select_best_resolution((10, 10), [(672, 672), (336, 336)]) == (336, 336)
    # Same effective resolution and waste: list order decides.
    assert select_best_resolution((100, 100), [(336, 672), (672, 336)]) == (336, 672)
    assert select_best_resolution((100, 100), [(672, 336), (336, 672)]) == (672, 336)
    # Most effective resolution wins even with more waste.
    assert select_best_resolution((1000, 1000), [(336, 672), (672, 672)]) == (672, 672)
    # 1000 × 2000: three candidates show 225,792 pixels; 336 × 672 wastes none of its canvas.
    assert select_best_resolution((1000, 2000), NEXT_PINPOINTS) == (336, 672)
    assert select_best_resolution((2000, 1000), NEXT_PINPOINTS) == (672, 336)
    with pytest.raises(ValueError):
        select_best_resolution((10, 10), [])


# ------------------------------------------------------------------------------------------ resize + pad
@SOME
@given(original=image_sizes, target=st.tuples(st.integers(1, 3000), st.integers(1, 3000)))
def test_fit_within_matches_transformers(original, target) -> None:
    dummy = np.zeros((1, *original), dtype=np.uint8)  # channels-first (C, H, W)
    expected = get_patch_output_size(dummy, target, input_data_format=ChannelDimension.FIRST)
    assert fit_within(original, target) == tuple(expected)
    height, width = fit_within(original, target)
    assert 1 <= height <= target[0] and 1 <= width <= target[1]
    assert height == target[0] or width == target[1]  # the long side fills the target


@SOME
@given(
    content=st.tuples(st.integers(1, 3000), st.integers(1, 3000)),
    extra=st.tuples(st.integers(0, 500), st.integers(0, 500)),
)
def test_centered_padding(content, extra) -> None:
    canvas = (content[0] + extra[0], content[1] + extra[1])
    top, bottom, left, right = centered_padding(content, canvas)
    assert top + bottom == extra[0] and left + right == extra[1]
    assert bottom - top in (0, 1) and right - left in (0, 1)  # the odd pixel goes bottom/right
    assert LlavaNextImageProcessorPil._get_padding_size(None, content, canvas) == ((top, bottom), (left, right))


def test_centered_padding_odd_pixel() -> None:
    assert centered_padding((10, 10), (13, 11)) == (1, 2, 0, 1)
    assert centered_padding((10, 10), (10, 10)) == (0, 0, 0, 0)


# ------------------------------------------------------------------------------------------ unpad / shrink
@SOME
@given(original=image_sizes, layout=st.tuples(st.integers(1, 6), st.integers(1, 6)), side=st.integers(1, 30))
def test_unpadded_grid_size_matches_unpad_image(original, layout, side) -> None:
    grid = (layout[0] * side, layout[1] * side)
    expected = unpad_image(torch.zeros(1, *grid), original).shape[1:]  # (C, H, W) → (H, W)
    assert unpadded_grid_size(original, grid) == tuple(max(extent, 1) for extent in expected)


def onevision_shrink(grid: tuple[int, int], max_tiles: int, side: int) -> tuple[int, int]:
    """LLaVA-OneVision's rule as transformers writes it, applied to a zero feature map."""
    height, width = grid
    feature = torch.zeros(1, 1, height, width)  # (B, C, H, W)
    ratio = math.sqrt(height * width / (max_tiles * side**2))
    if ratio > 1.1:
        feature = torch.nn.functional.interpolate(feature, [int(height // ratio), int(width // ratio)], mode="bilinear")
    return tuple(feature.shape[2:])


@SOME
@given(grid=st.tuples(st.integers(1, 150), st.integers(1, 150)), max_tiles=st.integers(1, 12), side=st.integers(1, 27))
def test_shrunk_grid_size_matches_onevision(grid, max_tiles, side) -> None:
    assume(not hf_shrinks_to_nothing(grid, max_tiles, side))  # transformers raises there; see the next test
    assert shrunk_grid_size(grid, max_tiles, side) == onevision_shrink(grid, max_tiles, side)


def test_shrink_never_collapses_a_side_to_zero() -> None:
    # A 1 × 24 unpadded grid (the tiny tower, 4 × 4 patches per tile, a very wide image in a 1 × 6 layout)
    # under anyres_max_1: ratio = sqrt(24 / 16) ≈ 1.22 > 1.1, so int(1 // 1.22) would be 0 rows, which
    # interpolate cannot produce (transformers' OneVision raises there); we keep one row.
    assert shrunk_grid_size((1, 24), 1, 4) == (1, 19)


def test_shrink_keeps_a_grid_within_the_slack() -> None:
    # 24 × 24 patches per tile, 9 tiles allowed: a 3 × 3 grid (72 × 72) and 10% over stay as they are.
    assert shrunk_grid_size((72, 72), 9, 24) == (72, 72)
    assert shrunk_grid_size((72, 79), 9, 24) == (72, 79)
    assert shrunk_grid_size((144, 144), 9, 24) == (72, 72)


# ------------------------------------------------------------------------------------------ token counts
@SOME
@given(original=image_sizes)
def test_llava_next_count_matches_transformers_processor(original) -> None:
    plan = plan_anyres(original, NEXT_PINPOINTS, 336)
    assume(not hf_unpads_to_nothing(original, _grid(CLIP_336, plan)))
    assert num_image_tokens(CLIP_336, plan) == hf_next_token_count(original, NEXT_PINPOINTS, 336, 14)


@FEW
@given(original=image_sizes, layout=layouts, tile=st.sampled_from([(56, 14), (84, 14), (336, 14)]))
def test_llava_next_count_matches_transformers_on_random_pinpoints(original, layout, tile) -> None:
    image_size, patch_size = tile
    pinpoints = [(rows * image_size, columns * image_size) for rows, columns in layout]
    geometry = VisionGeometry(image_size=image_size, patch_size=patch_size, newline=True)
    plan = plan_anyres(original, pinpoints, image_size)
    assume(not hf_unpads_to_nothing(original, _grid(geometry, plan)))
    assert num_image_tokens(geometry, plan) == hf_next_token_count(original, pinpoints, image_size, patch_size)
    rows, columns = packed_grid_size(geometry, plan)
    assert num_image_tokens(geometry, plan) == geometry.tokens_per_view + rows * columns + rows


@FEW
@given(original=image_sizes, max_tiles=st.integers(1, 12), tile=st.sampled_from([(56, 14), (84, 14), (384, 16)]))
def test_anyres_max_count_matches_onevision_packing(original, max_tiles, tile) -> None:
    image_size, patch_size = tile
    pinpoints = parse_grid_pinpoints("(1x1),...,(6x6)", image_size)
    geometry = VisionGeometry(image_size=image_size, patch_size=patch_size, newline=True, max_tiles=max_tiles)
    plan = plan_anyres(original, pinpoints, image_size)
    assume(not hf_unpads_to_nothing(original, _grid(geometry, plan)))
    assume(not hf_shrinks_to_nothing(unpadded_grid_size(original, _grid(geometry, plan)), max_tiles, geometry.patches_per_side))
    expected = hf_onevision_token_count(original, pinpoints, image_size, patch_size, max_tiles)
    assert num_image_tokens(geometry, plan) == expected


@FEW
@given(layout=st.tuples(st.integers(1, 6), st.integers(1, 6)), original=image_sizes)
def test_flat_merge_counts_every_view(layout, original) -> None:
    plan = ImagePlan(original, layout)
    for select, base in (("patch", 16), ("full", 17)):
        geometry = VisionGeometry(image_size=56, patch_size=14, feature_select=select, merge="flat", newline=False)
        assert num_image_tokens(geometry, plan) == base * (1 + layout[0] * layout[1])


def test_global_only_counts() -> None:
    assert num_image_tokens(VisionGeometry(image_size=336, patch_size=14)) == 576  # CLIP-L/14-336, LLaVA-1.5
    assert num_image_tokens(VisionGeometry(image_size=336, patch_size=14, feature_select="full")) == 577
    assert num_image_tokens(CLIP_336) == 577  # + the newline after a lone global view (OneVision)
    assert num_image_tokens(CLIP_336, ImagePlan((500, 700))) == 577  # grid (0, 0) = global only
    assert num_image_tokens(VisionGeometry(image_size=56, patch_size=14)) == 16  # the tiny preset
    full_flat = VisionGeometry(image_size=336, patch_size=14, feature_select="full", merge="flat")
    assert num_image_tokens(full_flat, ImagePlan((672, 672), (2, 2))) == 577 * 5  # +1 CLS per view


def test_golden_llava_next_672() -> None:
    plan = plan_anyres((672, 672), NEXT_PINPOINTS, 336)
    assert plan.grid == (2, 2)
    # 576 global + 48 × 48 tile features + 48 newlines; transformers' processor agrees.
    assert num_image_tokens(CLIP_336, plan) == 2928 == hf_next_token_count((672, 672), NEXT_PINPOINTS, 336, 14)


def test_spatial_without_unpad_keeps_the_padding() -> None:
    geometry = VisionGeometry(image_size=336, patch_size=14, merge="spatial", newline=True)
    plan = plan_anyres((300, 1000), NEXT_PINPOINTS, 336)
    assert plan.grid == (1, 3)
    assert num_image_tokens(geometry, plan) == 576 + 24 * 72 + 24


@pytest.mark.parametrize("original", [(1, 10000), (10000, 1), (1, 1)])
@pytest.mark.parametrize(
    "geometry",
    [
        CLIP_336,
        VisionGeometry(image_size=336, patch_size=14, newline=True, max_tiles=1),
        VisionGeometry(image_size=336, patch_size=14, merge="flat"),
        VisionGeometry(image_size=336, patch_size=14, merge="spatial", newline=True),
    ],
)
def test_extreme_sizes(original, geometry) -> None:
    for pinpoints in (NEXT_PINPOINTS, parse_grid_pinpoints("(1x1),...,(6x6)", 336)):
        plan = plan_anyres(original, pinpoints, 336)
        assert plan.grid[0] >= 1 and plan.grid[1] >= 1
        rows, columns = packed_grid_size(geometry, plan)
        assert rows >= 1 and columns >= 1  # never an empty grid, even for a one-pixel-thin image
        count = num_image_tokens(geometry, plan)
        assert isinstance(count, int) and count >= geometry.tokens_per_view > 0
        height, width = fit_within(original, (plan.grid[0] * 336, plan.grid[1] * 336))
        assert height >= 1 and width >= 1
    plan = plan_anyres(original, NEXT_PINPOINTS, 336)
    if not hf_unpads_to_nothing(original, _grid(CLIP_336, plan)):
        assert num_image_tokens(CLIP_336, plan) == hf_next_token_count(original, NEXT_PINPOINTS, 336, 14)
