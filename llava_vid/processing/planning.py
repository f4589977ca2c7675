"""Choosing how each image and video of a request is shown to the model, under an optional token budget.

Defaults (LLaVA-NeXT / LLaVA-OneVision): under an AnyRes model a lone image is tiled, several images
in one prompt get their global view only. A ``max_visual_tokens`` budget lowers the tiling (fewer
tiles per image, then global views only) until the request fits, or fails naming the numbers.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from llava_vid.geometry import ImagePlan, VideoPlan, VisionGeometry, num_image_tokens, num_video_tokens
from llava_vid.modes import ImageTreatment, check_choice
from llava_vid.processing.image_processor import LlavaVidImageProcessor
from llava_vid.processing.video import FrameSampling, sample_frame_indices


def plan_request(
    images: Sequence[Image.Image],
    image_processor: LlavaVidImageProcessor,
    geometry: VisionGeometry,
    *,
    treatment: ImageTreatment = "auto",
    max_visual_tokens: int | None = None,
    max_images: int | None = None,
) -> list[ImagePlan]:
    """Plans for the images of one request (one conversation / prompt).

    Raises:
        ValueError: more images than ``max_images``, or a budget too small for even one global view
            per image — naming the numbers.
    """
    check_choice("image_treatment", treatment, ImageTreatment)
    if max_images is not None and len(images) > max_images:
        raise ValueError(f"the request holds {len(images)} images, more than max_images={max_images}")
    tiled = image_processor.aspect_mode == "anyres" and (
        treatment == "anyres" or (treatment == "auto" and len(images) == 1)
    )
    global_plans = [image_processor.plan(image, "global") for image in images]
    if not tiled:
        candidates = [global_plans]
    else:
        # Full tiling first, then every smaller tile budget the pinpoints allow, then global views.
        tile = image_processor.image_size
        tile_budgets = sorted({(h // tile) * (w // tile) for h, w in image_processor.pinpoints}, reverse=True)
        candidates = [[image_processor.plan(image, "anyres", max_tiles=budget) for image in images] for budget in tile_budgets]
        candidates.append(global_plans)
    if max_visual_tokens is None:
        return candidates[0]
    for plans in candidates:
        if request_tokens(plans, geometry) <= max_visual_tokens:
            return plans
    raise ValueError(
        f"max_visual_tokens={max_visual_tokens} is too small for {len(images)} images: even their global views "
        f"need {request_tokens(global_plans, geometry)} tokens ({num_image_tokens(geometry)} each)"
    )


def request_tokens(plans: Sequence[ImagePlan], geometry: VisionGeometry) -> int:
    return sum(num_image_tokens(geometry, plan) for plan in plans)


def plan_video(
    num_frames: int,
    *,
    content_grid: int | None,
    default_grid: int,
    max_grid: int,
    budget: int | None,
    context_token: bool = True,
) -> VideoPlan:
    """The plan of one video: its content grid ``g`` and how many of its sampled frames are kept.

    * an explicit ``content_grid`` is kept; without one, a ``budget`` picks the largest ``g`` (up to
      ``max_grid``, the tower's patches per side) for which every frame fits, else ``default_grid``;
    * if even ``g = 1`` does not fit, frames are dropped (evenly) until the video fits — the fewest
      dropped — but never below one token's worth per sampled frame: a budget smaller than the number of
      sampled frames is an error naming both, as is ``content_grid > max_grid``.

    ``context_token``: whether the model gives each frame a context token (see :class:`VideoPlan`).
    """
    if content_grid is not None and not 1 <= content_grid <= max_grid:
        raise ValueError(f"content_grid={content_grid} must be between 1 and {max_grid} (the patches per side)")
    if budget is None:
        return VideoPlan(num_frames, content_grid or default_grid, context_token)
    if budget < num_frames:
        raise ValueError(
            f"max_visual_tokens={budget} cannot give even one token to each of the {num_frames} sampled frames "
            "(a frame needs a context and a content token); sample fewer frames (fps, num_frames, max_frames) "
            "or raise the budget"
        )
    grids = [content_grid] if content_grid is not None else range(max_grid, 0, -1)
    for grid in grids:
        plan = VideoPlan(num_frames, grid, context_token)
        if num_video_tokens(plan) <= budget:
            return plan
    grid = content_grid or 1
    per_frame = VideoPlan(1, grid, context_token).tokens_per_frame
    kept = budget // per_frame
    if kept < 1:
        raise ValueError(
            f"max_visual_tokens={budget} is smaller than one frame at content_grid={grid} ({per_frame} tokens)"
        )
    return VideoPlan(kept, grid, context_token)


def plan_request_videos(
    frame_counts: Sequence[int],
    content_grids: Sequence[int | None],
    *,
    budget: int | None,
    default_grid: int,
    max_grid: int,
    context_token: bool = True,
) -> list[VideoPlan]:
    """The plans of one request's videos from their sampled frame counts, under the token ``budget``
    the request's images leave (``None``: no budget): each video's share is proportional to its frame
    count, then :func:`plan_video` plans it. The processor (decoded clips) and the training length
    estimates (container metadata) both plan through here.

    Raises:
        ValueError: the budget is below one token per sampled frame (both numbers named), or
            :func:`plan_video` refuses a video.
    """
    total_frames = sum(frame_counts)
    if budget is not None and frame_counts and budget < total_frames:
        raise ValueError(
            f"the videos get {budget} tokens of max_visual_tokens (what the images leave), fewer than their "
            f"{total_frames} sampled frames: not even one token per frame; sample fewer frames or raise the budget"
        )
    return [
        plan_video(
            frames,
            content_grid=content_grid,
            default_grid=default_grid,
            max_grid=max_grid,
            budget=None if budget is None else budget * frames // total_frames,
            context_token=context_token,
        )
        for frames, content_grid in zip(frame_counts, content_grids, strict=True)
    ]


def image_treatment_beside_videos(treatment: ImageTreatment, has_video: bool) -> ImageTreatment:
    """``auto`` shows the images of a request that also holds a video as global views (the video
    already costs many tokens; LLaVA-OneVision does the same)."""
    return "global" if treatment == "auto" and has_video else treatment


def kept_frames(num_sampled: int, plan: VideoPlan) -> np.ndarray:
    """Indices of the sampled frames a plan keeps: all of them, or an even spread when the budget
    dropped some (the same rule that sampled them, :func:`~llava_vid.processing.video.sample_frame_indices`)."""
    if plan.num_frames >= num_sampled:
        return np.arange(num_sampled)
    return sample_frame_indices(num_sampled, 1.0, FrameSampling(num_frames=plan.num_frames))
