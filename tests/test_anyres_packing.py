"""Packing view features into tokens, checked on small hand-made tensors: order of views, grid
layout, unpadding, newlines and the anyres_max shrink — and that every mode's token count is the
one the shared geometry function gives."""

import pytest
import torch

from llava_vid.geometry import ImagePlan, VisionGeometry, num_image_tokens
from llava_vid.modeling.anyres import pack_image, pack_images

# 8 px views of 4 px patches: 2×2 patches per view, 4 tokens per view.
SIDE = 2


def geometry(merge: str = "spatial_unpad", newline: bool = True, max_tiles: int | None = None) -> VisionGeometry:
    return VisionGeometry(image_size=8, patch_size=4, merge=merge, newline=newline, max_tiles=max_tiles)


def labelled_views(num_views: int) -> torch.Tensor:
    """(V, 4, 1) features whose value says where they came from: 100*view + patch index."""
    return (100 * torch.arange(num_views)[:, None] + torch.arange(SIDE * SIDE)[None, :]).float()[..., None]


NEWLINE = torch.tensor([-1.0])


def test_global_view_only_with_and_without_newline() -> None:
    views = labelled_views(1)
    plan = ImagePlan((10, 10))
    assert pack_image(views, plan, geometry(), NEWLINE).flatten().tolist() == [0, 1, 2, 3, -1]
    assert pack_image(views, plan, geometry(newline=False), None).flatten().tolist() == [0, 1, 2, 3]


def test_flat_concatenates_views_in_order() -> None:
    views = labelled_views(3)  # global + 1×2 tiles
    out = pack_image(views, ImagePlan((8, 16), (1, 2)), geometry("flat", newline=False), None)
    assert out.flatten().tolist() == [0, 1, 2, 3, 100, 101, 102, 103, 200, 201, 202, 203]


def test_spatial_lays_tiles_out_row_by_row_with_newlines() -> None:
    views = labelled_views(3)  # global + tiles left (view 1) and right (view 2)
    out = pack_image(views, ImagePlan((8, 16), (1, 2)), geometry("spatial"), NEWLINE).flatten().tolist()
    # Global view, then grid row 0: tile 1 patches (0, 1), tile 2 patches (0, 1), newline; row 1: patches (2, 3).
    assert out == [0, 1, 2, 3, 100, 101, 200, 201, -1, 102, 103, 202, 203, -1]


def test_spatial_unpad_drops_rows_that_only_saw_padding() -> None:
    # A 2×2 grid of tiles (4×4 patches) for an image 4× wider than tall: only the middle 2 patch rows show it.
    views = labelled_views(5)
    plan = ImagePlan((10, 40), (2, 2))
    out = pack_image(views, plan, geometry(), NEWLINE)
    assert out.shape[0] == num_image_tokens(geometry(), plan) == 4 + 2 * 4 + 2
    grid_rows = out[4:].flatten().tolist()
    # Middle patch rows: bottom row of tiles 1, 2 (patches 2, 3) then top row of tiles 3, 4 (patches 0, 1).
    assert grid_rows == [102, 103, 202, 203, -1, 300, 301, 400, 401, -1]


def test_anyres_max_shrinks_a_big_grid_bilinearly() -> None:
    geo = geometry(max_tiles=1)  # budget: one tile's worth (4 tokens) of grid
    plan = ImagePlan((16, 16), (2, 2))  # a 4×4 patch grid: 16 tokens, 2× over budget → shrunk to 2×2
    views = torch.ones(5, 4, 3)
    out = pack_image(views, plan, geo, torch.zeros(3))
    assert out.shape == (num_image_tokens(geo, plan), 3) == (4 + 2 * 2 + 2, 3)
    torch.testing.assert_close(out[4:6], torch.ones(2, 3))  # interpolating a constant keeps it


@pytest.mark.parametrize("merge", ["flat", "spatial", "spatial_unpad"])
@pytest.mark.parametrize("size", [(10, 40), (40, 10), (16, 16), (1, 1), (3, 1000)])
def test_pack_images_matches_geometry_for_every_mode(merge: str, size: tuple[int, int]) -> None:
    geo = geometry(merge, newline=merge != "flat")
    plans = [ImagePlan(size, (2, 2)), ImagePlan(size), ImagePlan(size, (1, 3))]
    features = torch.randn(sum(p.num_views for p in plans), 4, 5)
    out = pack_images(features, plans, geo, torch.randn(5) if geo.newline else None)
    assert out.shape == (sum(num_image_tokens(geo, p) for p in plans), 5)
