"""Image preprocessing for the vision tower: LLaVA-1.5 pad-to-square or CLIP resize/crop, then normalise.

Geometry (pad, resize, crop) runs in PIL on 8-bit pixels, exactly like CLIP's and LLaVA's reference
preprocessing; the float work (rescale + normalise) runs once on the stacked batch in torch.
"""

from __future__ import annotations

from typing import Sequence, get_args

import numpy as np
import torch
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

from llava_vid.config import ImageAspectMode

# OpenAI CLIP's normalisation constants (the statistics CLIP was trained with).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


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
    return image.resize(new_size, resample=Image.Resampling.BICUBIC)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


class LlavaVidImageProcessor(BaseImageProcessor):
    """Turns RGB images into ``pixel_values`` of shape ``(N, 3, image_size, image_size)``.

    Args:
        image_size: the vision tower's square input side (336 for CLIP ViT-L/14-336).
        aspect_mode: ``pad`` pads to a square with the mean colour first (LLaVA-1.5), so nothing is
            cropped away; ``crop`` is CLIP's resize-and-centre-crop.
        image_mean, image_std: per-channel normalisation (CLIP's by default).
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        image_size: int = 336,
        aspect_mode: ImageAspectMode = "pad",
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
        self.image_size = image_size
        self.aspect_mode = aspect_mode
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)

    @property
    def pad_fill(self) -> tuple[int, int, int]:
        # The mean colour in 8-bit, truncated as LLaVA does, so padding normalises to ~0.
        return tuple(int(channel * 255) for channel in self.image_mean)  # type: ignore[return-value]

    def fit(self, image: Image.Image) -> Image.Image:
        """One RGB image → an ``image_size`` square, still 8-bit."""
        if self.aspect_mode == "pad":
            image = pad_to_square(image, self.pad_fill)
        image = resize_shortest_edge(image, self.image_size)
        return center_crop(image, self.image_size)

    def __call__(self, images: Sequence[Image.Image], return_tensors: str | None = "pt") -> BatchFeature:
        """Preprocess already-loaded RGB images (see :func:`llava_vid.processing.media.load_image`)."""
        if not images:
            pixel_values = torch.empty(0, 3, self.image_size, self.image_size)
            return BatchFeature({"pixel_values": pixel_values}, tensor_type=return_tensors)
        squares = np.stack([np.asarray(self.fit(image), dtype=np.uint8) for image in images])  # (N, S, S, 3)
        pixels = torch.from_numpy(squares).permute(0, 3, 1, 2).float()  # (N, 3, S, S)
        mean = torch.tensor(self.image_mean).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self.image_std).view(1, 3, 1, 1) * 255.0
        return BatchFeature({"pixel_values": (pixels - mean) / std}, tensor_type=return_tensors)

    preprocess = __call__
