"""Choosing how each image of a request is shown to the model, under an optional token budget.

Defaults (LLaVA-NeXT / LLaVA-OneVision): under an AnyRes model a lone image is tiled, several images
in one prompt get their global view only. A ``max_visual_tokens`` budget lowers the tiling (fewer
tiles per image, then global views only) until the request fits, or fails naming the numbers.
"""

from __future__ import annotations

from typing import Sequence

from PIL import Image

from llava_vid.geometry import ImagePlan, VisionGeometry, num_image_tokens
from llava_vid.modes import ImageTreatment, check_choice
from llava_vid.processing.image_processor import LlavaVidImageProcessor


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
