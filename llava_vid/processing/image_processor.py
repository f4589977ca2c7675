"""Image preprocessing for the vision tower: LLaVA-1.5 pad-to-square, CLIP resize/crop or LLaVA-NeXT AnyRes.

Geometry (pad, resize, crop) runs in PIL on 8-bit pixels, exactly like CLIP's, LLaVA's and LLaVA-NeXT's
reference preprocessing. Everything after the unavoidable per-image PIL resizes is array work: each
image's views are written as uint8 into one ``(V, S, S, 3)`` buffer for the whole call (AnyRes tiles
cut with one rearrange per image), and the float work (rescale + normalise) runs once on that buffer.
The resizes of one call are independent and PIL releases the GIL while resampling, so they run on up
to ``torch.get_num_threads()`` threads.

Which views an image gets is decided by an :class:`~llava_vid.geometry.ImagePlan` (see
:meth:`LlavaVidImageProcessor.plan`); the processor and the model count tokens from the same plan.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Callable, Literal, Sequence, get_args

import numpy as np
import torch
from einops import rearrange
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

from llava_vid import geometry
from llava_vid.geometry import ImagePlan, Size
from llava_vid.modes import ImageAspectMode

# OpenAI CLIP's normalisation constants (the statistics CLIP was trained with).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# What :meth:`LlavaVidImageProcessor.plan` may be asked for ("auto" is resolved by the caller).
PlanTreatment = Literal["anyres", "global"]

_BICUBIC = Image.Resampling.BICUBIC


def pad_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """Centre ``image`` on a square canvas of its longer side filled with ``fill`` (LLaVA's expand2square)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def resize_shortest_edge(image: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size``, keeping the aspect ratio (CLIP's rule, long side truncated)."""
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_long = int(size * long / short)
    new_size = (size, new_long) if width <= height else (new_long, size)
    return image.resize(new_size, resample=_BICUBIC)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


def anyres_tiles(image: Image.Image, grid: Size, tile_size: int, out: np.ndarray) -> None:
    """LLaVA-NeXT's tiles of ``image``, written row-major into ``out`` (uint8 ``(rows·columns, S, S, 3)``).

    The image is resized keeping its aspect ratio to fit the ``rows·S × columns·S`` canvas (bicubic),
    centred on black, and the canvas is cut into ``S × S`` tiles. Content sides are clamped to >= 1 pixel
    so a degenerate aspect ratio (a 1 × 10000 strip) never asks PIL for a 0-pixel resize.
    """
    rows, columns = grid
    resolution = (rows * tile_size, columns * tile_size)
    content_height, content_width = geometry.fit_within((image.height, image.width), resolution)
    content_height, content_width = max(1, content_height), max(1, content_width)
    top, _, left, _ = geometry.centered_padding((content_height, content_width), resolution)
    resized = image.resize((content_width, content_height), resample=_BICUBIC)
    canvas = np.zeros((*resolution, 3), dtype=np.uint8)  # (rows·S, columns·S, 3), black padding
    canvas[top : top + content_height, left : left + content_width] = np.asarray(resized)
    # Both sides are views (copy=False raises rather than silently writing into a copy); the assignment
    # is the one copy, straight into the output rows.
    tiles = np.reshape(out, (rows, columns, tile_size, tile_size, 3), copy=False)  # (r, c, S, S, 3)
    tiles[...] = rearrange(canvas, "(r h) (c w) ch -> r c h w ch", h=tile_size, w=tile_size)


def as_rgb(image: Image.Image) -> Image.Image:
    """``image`` decoded and in ``RGB`` (callers normally pass :func:`~llava_vid.processing.media.load_image`
    output, which already is). Decoding here, once, keeps a lazily opened file from being decoded by two
    resize threads at the same time."""
    image.load()
    return image if image.mode == "RGB" else image.convert("RGB")


def run_jobs(jobs: Sequence[Callable[[], None]]) -> None:
    """Run independent resize jobs, on up to ``torch.get_num_threads()`` threads.

    PIL releases the GIL while it resamples, so the resizes of one call (an AnyRes image's global view
    and its tile canvas, or several images) overlap on a multi-core machine. The thread count follows
    torch's process-wide setting, so ``torch.set_num_threads(1)`` (as in DataLoader workers) runs them
    in order on the calling thread.
    """
    workers = min(len(jobs), torch.get_num_threads())
    if workers <= 1:
        for job in jobs:
            job()
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llava_vid-resize") as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()  # re-raises a job's exception here


class LlavaVidImageProcessor(BaseImageProcessor):
    """Turns RGB images into ``pixel_values`` of shape ``(V, 3, image_size, image_size)``.

    Every image contributes ``plan.num_views`` square views, in order: its global view, then its AnyRes
    tiles row-major. Outside AnyRes (and for an AnyRes plan with grid ``(0, 0)``) that is one view.

    Args:
        image_size: the vision tower's square input side ``S`` (336 for CLIP ViT-L/14-336).
        aspect_mode: ``pad`` pads to a square with the mean colour first (LLaVA-1.5), so nothing is
            cropped away; ``crop`` is CLIP's resize-and-centre-crop; ``anyres`` is LLaVA-NeXT's global
            view (the whole image squashed to ``S × S``) plus tiles of the best pinpoint resolution.
        image_grid_pinpoints: AnyRes candidate resolutions: ``[[height, width], ...]`` (multiples of
            ``image_size``) or the range form ``"(1x1),...,(6x6)"``; ``None`` = LLaVA-NeXT's five
            layouts (:func:`~llava_vid.geometry.default_grid_pinpoints`). Stored as ``[h, w]`` lists
            so that ``save_pretrained``/``from_pretrained`` round-trip it.
        image_mean, image_std: per-channel normalisation (CLIP's by default).
    """

    model_input_names = ["pixel_values", "image_sizes", "image_grids"]

    def __init__(
        self,
        image_size: int = 336,
        aspect_mode: ImageAspectMode = "pad",
        image_grid_pinpoints: list[list[int]] | str | None = None,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if aspect_mode not in get_args(ImageAspectMode):
            raise ValueError(f"aspect_mode={aspect_mode!r} is invalid; expected one of {list(get_args(ImageAspectMode))}")
        for name, values in (("image_mean", image_mean), ("image_std", image_std)):
            if len(values) != 3:
                raise ValueError(f"{name}={list(values)!r} must have 3 channels (R, G, B)")
        if image_size <= 0:
            raise ValueError(f"image_size={image_size} must be positive")
        if image_grid_pinpoints is None:
            pinpoints = geometry.default_grid_pinpoints(image_size)
        else:
            pinpoints = geometry.parse_grid_pinpoints(image_grid_pinpoints, image_size)
        self.image_size = image_size
        self.aspect_mode = aspect_mode
        self.image_grid_pinpoints = [[height, width] for height, width in pinpoints]
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)

    @property
    def pinpoints(self) -> list[Size]:
        """The AnyRes candidate resolutions as ``(height, width)`` tuples."""
        return [(height, width) for height, width in self.image_grid_pinpoints]

    @property
    def pad_fill(self) -> tuple[int, int, int]:
        # The mean colour in 8-bit, truncated as LLaVA does, so padding normalises to ~0.
        return tuple(int(channel * 255) for channel in self.image_mean)  # type: ignore[return-value]

    # ------------------------------------------------------------------------------------ planning
    def plan(self, image: Image.Image, treatment: PlanTreatment = "anyres", max_tiles: int | None = None) -> ImagePlan:
        """How ``image`` is fed to the tower.

        ``global`` (or a non-AnyRes ``aspect_mode``) gives the global view only. ``anyres`` tiles the image
        at its best pinpoint resolution, choosing only among pinpoints of at most ``max_tiles`` tiles when
        that is given (none of them allowed → global view only).
        """
        if treatment not in get_args(PlanTreatment):
            raise ValueError(f"treatment={treatment!r} is invalid; expected one of {list(get_args(PlanTreatment))}")
        original_size = (image.height, image.width)
        if treatment == "global" or self.aspect_mode != "anyres":
            return ImagePlan(original_size, (0, 0))
        candidates = self.pinpoints
        if max_tiles is not None:
            candidates = [
                resolution
                for resolution in candidates
                if math.prod(geometry.tile_grid(resolution, self.image_size)) <= max_tiles
            ]
            if not candidates:
                return ImagePlan(original_size, (0, 0))
        return geometry.plan_anyres(original_size, candidates, self.image_size)

    # ------------------------------------------------------------------------------------ pixels
    def fit(self, image: Image.Image) -> Image.Image:
        """One RGB image → its ``image_size`` global view, still 8-bit."""
        side = self.image_size
        if self.aspect_mode == "anyres":  # the whole image, aspect ratio not kept
            return image.resize((side, side), resample=_BICUBIC)
        if self.aspect_mode == "pad":
            image = pad_to_square(image, self.pad_fill)
        image = resize_shortest_edge(image, side)
        return center_crop(image, side)

    def _check_plan(self, index: int, image: Image.Image, plan: ImagePlan) -> None:
        if plan.original_size != (image.height, image.width):
            raise ValueError(
                f"plans[{index}].original_size={plan.original_size} does not match image {index} of "
                f"(height, width)={(image.height, image.width)}"
            )
        rows, columns = plan.grid
        if rows < 0 or columns < 0 or (rows == 0) != (columns == 0):
            raise ValueError(f"plans[{index}].grid={plan.grid} is not a tile grid (both > 0, or (0, 0) for global only)")
        if plan.num_tiles and self.aspect_mode != "anyres":
            raise ValueError(
                f"plans[{index}].grid={plan.grid} asks for tiles but aspect_mode={self.aspect_mode!r}; "
                "only aspect_mode='anyres' tiles images"
            )

    def __call__(
        self,
        images: Sequence[Image.Image],
        plans: Sequence[ImagePlan] | None = None,
        return_tensors: str | None = "pt",
    ) -> BatchFeature:
        """Preprocess already-loaded RGB images (see :func:`llava_vid.processing.media.load_image`).

        Returns ``pixel_values`` float32 ``(V, 3, S, S)`` with ``V = sum(plan.num_views)`` (per image: global
        view, then tiles row-major), ``image_sizes`` long ``(N, 2)`` original ``(height, width)`` and
        ``image_grids`` long ``(N, 2)`` tile ``(rows, columns)`` (``(0, 0)`` = global view only).
        """
        side = self.image_size
        images = [as_rgb(image) for image in images]
        if plans is None:
            plans = [self.plan(image) for image in images]
        elif len(plans) != len(images):
            raise ValueError(f"got {len(plans)} plans for {len(images)} images; give one plan per image")
        for index, (image, plan) in enumerate(zip(images, plans)):
            self._check_plan(index, image, plan)

        offsets = np.cumsum([0] + [plan.num_views for plan in plans])
        views = np.empty((int(offsets[-1]), side, side, 3), dtype=np.uint8)  # (V, S, S, 3); every row is written

        # The PIL resizes are the only per-image work; each job fills its own rows of ``views``.
        def global_view(index: int) -> None:
            views[offsets[index]] = np.asarray(self.fit(images[index]))

        def tiles(index: int) -> None:
            start = offsets[index] + 1
            anyres_tiles(images[index], plans[index].grid, side, views[start : start + plans[index].num_tiles])

        jobs = [partial(global_view, index) for index in range(len(images))]
        jobs += [partial(tiles, index) for index, plan in enumerate(plans) if plan.num_tiles]
        run_jobs(jobs)

        data = {
            "pixel_values": self.normalize_views(views),
            "image_sizes": torch.tensor([plan.original_size for plan in plans], dtype=torch.long).view(-1, 2),
            "image_grids": torch.tensor([plan.grid for plan in plans], dtype=torch.long).view(-1, 2),
        }
        return BatchFeature(data, tensor_type=return_tensors)

    preprocess = __call__

    def normalize_views(self, views: np.ndarray) -> torch.Tensor:
        """uint8 ``(V, S, S, 3)`` views → float32 ``(V, 3, S, S)`` pixel values, all in one pass.

        ``(x - 255·mean) / (255·std)`` in float32. numpy rather than torch here: the arrays are a few MB,
        one thread does them in ~1 ms, and torch's intra-op threads measurably cost more than that to wake
        right after the resize threads.
        """
        pixel_values = np.empty((len(views), 3, *views.shape[1:3]), dtype=np.float32)  # (V, 3, S, S)
        np.copyto(pixel_values, views.transpose(0, 3, 1, 2))  # cast while transposing: no uint8 copy
        pixel_values -= np.asarray(self.image_mean, dtype=np.float32).reshape(1, 3, 1, 1) * np.float32(255)
        pixel_values /= np.asarray(self.image_std, dtype=np.float32).reshape(1, 3, 1, 1) * np.float32(255)
        return torch.from_numpy(pixel_values)

    def frame_views(self, frames: np.ndarray) -> np.ndarray:
        """Video frames uint8 ``(n, H, W, 3)`` → their global views uint8 ``(n, S, S, 3)``.

        Used as the decoder's per-chunk ``frame_transform``, so only ``S × S`` frames are kept in memory
        however long the video is. A frame is shown exactly as a global-view image would be.
        """
        side = self.image_size
        views = np.empty((len(frames), side, side, 3), dtype=np.uint8)  # (n, S, S, 3)

        def view(index: int) -> None:
            views[index] = np.asarray(self.fit(Image.fromarray(frames[index])))

        run_jobs([partial(view, index) for index in range(len(frames))])
        return views
