"""Geometry and visual-token arithmetic: the one place that says how many tokens an image becomes.

The processor (to expand each ``<image>`` placeholder) and the model (to check the placeholder count
against its features) both call :func:`num_image_tokens`; there is no second copy of this formula.
Pure functions only: no model code, no tensors. Sizes are ``(height, width)`` throughout.

AnyRes (LLaVA-NeXT): an image is resized into the best of a list of *pinpoint* resolutions (each a
whole number of vision-tower tiles), padded, and cut into tiles; the tower also sees one global view.
The tile features are laid back into a spatial grid, the padding is cut off again (*unpad*), the
grid is optionally shrunk to a token budget (``anyres_max_N``, LLaVA-OneVision) and one newline
embedding ends every row.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

from llava_vid.modes import ImageAspectMode, MergeMode, VisionFeatureSelect

Size = tuple[int, int]  # (height, width)

# LLaVA-OneVision's budget check: the grid is shrunk only when it exceeds the budget by more than 10%.
ANYRES_MAX_SLACK = 1.1

_RANGE_FORM = re.compile(r"^\(\s*(\d+)\s*x\s*(\d+)\s*\)\s*,\s*\.\.\.\s*,\s*\(\s*(\d+)\s*x\s*(\d+)\s*\)$")


@dataclass(frozen=True)
class VisionGeometry:
    """What the vision tower and the packing do to one image.

    Attributes:
        image_size: side of the square tower input in pixels (336 for CLIP ViT-L/14-336).
        patch_size: side of one ViT patch in pixels (14).
        feature_select: ``patch`` drops CLS, ``full`` keeps it.
        merge: how AnyRes tiles become tokens (ignored for a global view alone).
        newline: whether a learned newline token ends every grid row and a lone global view
            (AnyRes models have one; LLaVA-1.5 does not).
        max_tiles: ``anyres_max_N``: shrink the unpadded grid to about N tiles' worth of tokens.
    """

    image_size: int
    patch_size: int
    feature_select: VisionFeatureSelect = "patch"
    merge: MergeMode = "spatial_unpad"
    newline: bool = False
    max_tiles: int | None = None

    def __post_init__(self) -> None:
        if self.patch_size <= 0 or self.image_size <= 0:
            raise ValueError(f"image_size={self.image_size} and patch_size={self.patch_size} must be positive")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}; "
                "the vision tower would drop the remainder"
            )
        if self.max_tiles is not None and self.max_tiles < 1:
            raise ValueError(f"max_tiles={self.max_tiles} must be >= 1")

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def tokens_per_view(self) -> int:
        """Tokens of one square view (global view or tile) straight out of the tower."""
        return self.patches_per_side**2 + (1 if self.feature_select == "full" else 0)


@dataclass(frozen=True)
class ImagePlan:
    """How one image is fed to the tower: its original size and the tile grid (``(0, 0)`` = global view only)."""

    original_size: Size
    grid: Size = (0, 0)

    @property
    def num_tiles(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_views(self) -> int:
        """Square tower inputs: the global view plus every tile."""
        return 1 + self.num_tiles


def uses_newline(aspect_mode: ImageAspectMode, merge: MergeMode) -> bool:
    """AnyRes models with a spatial merge end grid rows (and a lone global view) with a learned newline."""
    return aspect_mode == "anyres" and merge != "flat"


# ------------------------------------------------------------------------------------------ pinpoints
def parse_grid_pinpoints(pinpoints: str | Sequence[Sequence[int]], tile_size: int) -> list[Size]:
    """Normalise ``image_grid_pinpoints`` to a list of ``(height, width)`` pixel resolutions.

    Accepts a list of ``[height, width]`` pairs (multiples of ``tile_size``) or LLaVA-OneVision's
    range form ``"(1x1),...,(6x6)"`` (every grid from 1×1 to 6×6 tiles, rows × columns).

    Raises:
        ValueError: naming ``image_grid_pinpoints`` for an empty list, a malformed entry, a non-positive
            size or a size that is not a multiple of ``tile_size``.
    """
    if isinstance(pinpoints, str):
        match = _RANGE_FORM.match(pinpoints.strip())
        if match is None:
            raise ValueError(
                f"image_grid_pinpoints={pinpoints!r} is not a list of [height, width] or the range form '(1x1),...,(6x6)'"
            )
        rows_lo, cols_lo, rows_hi, cols_hi = (int(group) for group in match.groups())
        if not (1 <= rows_lo <= rows_hi and 1 <= cols_lo <= cols_hi):
            raise ValueError(f"image_grid_pinpoints={pinpoints!r}: the range must go from small to large, starting at 1")
        return [
            (rows * tile_size, cols * tile_size)
            for rows in range(rows_lo, rows_hi + 1)
            for cols in range(cols_lo, cols_hi + 1)
        ]
    if any(not isinstance(entry, (list, tuple)) for entry in pinpoints):
        raise ValueError(f"image_grid_pinpoints={list(pinpoints)!r} must be a list of [height, width] pairs")
    resolutions = [tuple(entry) for entry in pinpoints]
    if not resolutions:
        raise ValueError("image_grid_pinpoints is empty; give at least one [height, width]")
    for entry in resolutions:
        if len(entry) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in entry):
            raise ValueError(f"image_grid_pinpoints entry {list(entry)} is not a pair of integers [height, width]")
        if min(entry) <= 0:
            raise ValueError(f"image_grid_pinpoints entry {list(entry)} must be positive")
        if entry[0] % tile_size or entry[1] % tile_size:
            raise ValueError(
                f"image_grid_pinpoints entry {list(entry)} is not a multiple of the tile size {tile_size}"
            )
    return [(int(h), int(w)) for h, w in resolutions]


def default_grid_pinpoints(tile_size: int) -> list[Size]:
    """LLaVA-NeXT's five layouts: 1×2, 2×1, 2×2, 1×3 and 3×1 tiles (rows × columns)."""
    return [(rows * tile_size, cols * tile_size) for rows, cols in ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))]


# ------------------------------------------------------------------------------------------ tiling
def select_best_resolution(original_size: Size, candidates: Sequence[Size]) -> Size:
    """The candidate that shows the most of the image's own pixels (no credit for upscaling), ties
    broken by the least wasted canvas, then by list order."""
    height, width = original_size
    best, best_effective, best_wasted = None, -1, math.inf
    for cand_height, cand_width in candidates:
        scale = min(cand_width / width, cand_height / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        wasted = cand_width * cand_height - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (cand_height, cand_width), effective, wasted
    if best is None:
        raise ValueError("no candidate resolutions to choose from")
    return best


def fit_within(original_size: Size, target_size: Size) -> Size:
    """Size of the image resized to fit ``target_size`` keeping its aspect ratio (the long side fills it)."""
    height, width = original_size
    target_height, target_width = target_size
    scale_w, scale_h = target_width / width, target_height / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target_height), target_width
    return target_height, min(math.ceil(width * scale_h), target_width)


def centered_padding(content_size: Size, canvas_size: Size) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` padding that centres ``content_size`` on ``canvas_size``
    (the odd pixel goes to the bottom/right)."""
    top, extra_h = divmod(canvas_size[0] - content_size[0], 2)
    left, extra_w = divmod(canvas_size[1] - content_size[1], 2)
    return top, top + extra_h, left, left + extra_w


def tile_grid(resolution: Size, tile_size: int) -> Size:
    """``(rows, columns)`` of tiles a pinpoint resolution is cut into (row-major)."""
    return resolution[0] // tile_size, resolution[1] // tile_size


def plan_anyres(original_size: Size, pinpoints: Sequence[Size], tile_size: int) -> ImagePlan:
    """The AnyRes plan of one image: the tile grid of its best pinpoint resolution."""
    return ImagePlan(original_size, tile_grid(select_best_resolution(original_size, pinpoints), tile_size))


# ------------------------------------------------------------------------------------------ feature grid
def unpadded_grid_size(original_size: Size, grid_size: Size) -> Size:
    """The part of a ``grid_size`` feature grid that shows the image, not the padding around it.

    The image was fitted into the grid keeping its aspect ratio and centred, so the padding is an
    equal band on two opposite sides (rounded as LLaVA-NeXT does). An image thinner than one patch
    keeps one row/column rather than none (LLaVA-NeXT would produce an empty grid there).
    """
    height, width = original_size
    grid_height, grid_width = grid_size
    if width / height > grid_width / grid_height:  # wider than the grid: bands above and below
        content = int(round(height * (grid_width / width), 7))
        band = (grid_height - content) // 2
        return max(grid_height - 2 * band, 1), grid_width
    content = int(round(width * (grid_height / height), 7))
    band = (grid_width - content) // 2
    return grid_height, max(grid_width - 2 * band, 1)


def shrunk_grid_size(grid_size: Size, max_tiles: int, patches_per_side: int) -> Size:
    """``anyres_max_N``: the grid size after bilinear shrinking to about ``max_tiles`` tiles' worth of tokens.

    Unchanged unless the grid exceeds the budget by more than :data:`ANYRES_MAX_SLACK`; a thin grid
    keeps at least one row and one column.
    """
    height, width = grid_size
    ratio = math.sqrt(height * width / (max_tiles * patches_per_side**2))
    if ratio <= ANYRES_MAX_SLACK:
        return grid_size
    return max(int(height // ratio), 1), max(int(width // ratio), 1)


def packed_grid_size(geometry: VisionGeometry, plan: ImagePlan) -> Size:
    """``(rows, columns)`` of tile features after unpad/shrink, for the spatial merge modes."""
    side = geometry.patches_per_side
    size = (plan.grid[0] * side, plan.grid[1] * side)
    if geometry.merge == "spatial_unpad":
        size = unpadded_grid_size(plan.original_size, size)
        if geometry.max_tiles is not None:
            size = shrunk_grid_size(size, geometry.max_tiles, side)
    return size


# ------------------------------------------------------------------------------------------ token counts
@dataclass(frozen=True)
class TokenBreakdown:
    """Where an image's visual tokens come from (see :func:`image_token_breakdown`)."""

    global_view: int
    tiles: int
    newlines: int
    packed_grid: Size | None = None  # (rows, columns) of tile features, spatial merges only

    @property
    def total(self) -> int:
        return self.global_view + self.tiles + self.newlines


def image_token_breakdown(geometry: VisionGeometry, plan: ImagePlan | None = None) -> TokenBreakdown:
    """The visual tokens of one image, part by part.

    * global view only (LLaVA-1.5, or a multi-image prompt): ``side²`` (+1 CLS with ``full``), plus one
      newline when the model has one. CLIP ViT-L/14-336: 24 × 24 = 576.
    * AnyRes: the global view, then the tiles: ``flat`` adds every tile's tokens; ``spatial`` and
      ``spatial_unpad`` add ``rows × columns`` of the packed grid plus one newline per row.
    """
    base = geometry.tokens_per_view
    if plan is None or plan.num_tiles == 0:
        return TokenBreakdown(base, 0, 1 if geometry.newline else 0)
    if geometry.merge == "flat":
        return TokenBreakdown(base, plan.num_tiles * base, 0)
    rows, columns = packed_grid_size(geometry, plan)
    return TokenBreakdown(base, rows * columns, rows if geometry.newline else 0, (rows, columns))


def num_image_tokens(geometry: VisionGeometry, plan: ImagePlan | None = None) -> int:
    """Visual tokens one image becomes: THE count shared by processor, model, planner and tools."""
    return image_token_breakdown(geometry, plan).total


# ------------------------------------------------------------------------------------------ video
@dataclass(frozen=True)
class VideoPlan:
    """How one video is fed to the model: how many frames, and the content grid ``g`` of every frame.

    Each frame becomes one context token (LLaMA-VID: instruction-guided attention over the frame)
    followed by ``g × g`` content tokens (the frame's patches average-pooled to a ``g × g`` grid).
    ``context_token=False`` (a model configured without context tokens, the ablation of LLaMA-VID's
    context) leaves only the content tokens.
    """

    num_frames: int
    content_grid: int = 1
    context_token: bool = True

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ValueError(f"a video needs at least one frame, got num_frames={self.num_frames}")
        if self.content_grid < 1:
            raise ValueError(f"content_grid={self.content_grid} must be >= 1")

    @property
    def tokens_per_frame(self) -> int:
        return int(self.context_token) + self.content_grid**2  # context token, then content tokens


def num_video_tokens(plan: VideoPlan) -> int:
    """Visual tokens one video becomes: ``frames × (1 + g²)`` (``frames × g²`` without context tokens).
    One hour at 1 frame/s with g=1: 7200."""
    return plan.num_frames * plan.tokens_per_frame
