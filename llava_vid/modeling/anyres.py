"""Packing projected view features into each image's token sequence (global view, then the tile grid).

The sizes come from :mod:`llava_vid.geometry`; this module only moves tensors, so the token count
the processor wrote and the number of vectors produced here agree by construction (and are checked).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch.nn import functional as F

from llava_vid.geometry import ImagePlan, VisionGeometry, num_image_tokens, packed_grid_size, unpadded_grid_size


def pack_image(
    views: torch.Tensor, plan: ImagePlan, geometry: VisionGeometry, newline: torch.Tensor | None
) -> torch.Tensor:
    """One image's visual tokens.

    Args:
        views: ``(1 + tiles, P, D)`` projected features: the global view, then the tiles row-major.
        plan: the image's original size and tile grid.
        newline: ``(D,)`` learned row terminator, required when ``geometry.newline``.

    Returns:
        ``(num_image_tokens(geometry, plan), D)``.
    """
    base = views[0]  # (P, D)
    if plan.num_tiles == 0:
        return torch.cat([base, newline[None]]) if geometry.newline else base
    if geometry.merge == "flat":
        return views.flatten(0, 1)  # ((1 + tiles) * P, D)

    side = geometry.patches_per_side
    grid = rearrange(
        views[1:], "(rows cols) (h w) d -> d (rows h) (cols w)", rows=plan.grid[0], cols=plan.grid[1], h=side, w=side
    )  # (D, rows*side, cols*side)
    height, width = packed_grid_size(geometry, plan)
    if geometry.merge == "spatial_unpad":
        # Cut the bands that only saw padding (centred, so the same amount on both sides) …
        full_height, full_width = grid.shape[1:]
        kept_height, kept_width = unpadded_grid_size(plan.original_size, (full_height, full_width))
        top, left = (full_height - kept_height) // 2, (full_width - kept_width) // 2
        grid = grid[:, top : top + kept_height, left : left + kept_width]  # (D, kept_height, kept_width)
        # … then shrink to the anyres_max budget when the geometry says so.
        if grid.shape[1:] != (height, width):
            grid = F.interpolate(grid[None], size=(height, width), mode="bilinear")[0]  # (D, height, width)
    if geometry.newline:
        terminators = newline.view(-1, 1, 1).expand(-1, height, 1).to(grid.dtype)  # (D, height, 1)
        grid = torch.cat([grid, terminators], dim=2)  # (D, height, width + 1)
    return torch.cat([base, rearrange(grid, "d h w -> (h w) d")])


def pack_images(
    features: torch.Tensor, plans: list[ImagePlan], geometry: VisionGeometry, newline: torch.Tensor | None
) -> torch.Tensor:
    """All images' visual tokens in order.

    Args:
        features: ``(V, P, D)`` projected features of every view of the batch, image after image.

    Returns:
        ``(T, D)`` with ``T = sum(num_image_tokens(geometry, plan))``.
    """
    per_image = features.split([plan.num_views for plan in plans])
    packed = [pack_image(views, plan, geometry, newline) for views, plan in zip(per_image, plans)]
    for index, (tokens, plan) in enumerate(zip(packed, plans)):
        expected = num_image_tokens(geometry, plan)
        if tokens.shape[0] != expected:  # a geometry/packing disagreement is a bug; never feed it on
            raise RuntimeError(f"image {index}: packed {tokens.shape[0]} tokens, the geometry says {expected}")
    return torch.cat(packed)
