"""Running the vision tower: every image of a batch in one chunked pass."""

from __future__ import annotations

import torch
from torch import nn

from llava_vid.modes import VisionFeatureSelect


def encode_images(
    vision_tower: nn.Module,
    pixel_values: torch.Tensor,
    *,
    feature_layer: int,
    feature_select: VisionFeatureSelect,
    chunk_size: int,
) -> torch.Tensor:
    """Patch features of a stack of images.

    Args:
        vision_tower: a transformers vision model (``CLIPVisionModel``, …) returning ``hidden_states``.
        pixel_values: ``(N, 3, H, W)``, all images (and later tiles/frames) of the batch together.
        feature_layer: which hidden state to take (LLaVA: -2, the second-to-last layer).
        feature_select: ``patch`` drops the CLS token, ``full`` keeps it.
        chunk_size: at most this many images per tower call, so activation memory stays bounded.

    Returns:
        ``(N, P, D)`` features, P = patches (+1 with ``full``), D = vision width.
    """
    tower_dtype = next(vision_tower.parameters()).dtype
    chunks = []
    for chunk in pixel_values.split(chunk_size):
        outputs = vision_tower(chunk.to(tower_dtype), output_hidden_states=True, return_dict=True)
        hidden = outputs.hidden_states[feature_layer]  # (n, 1 + P, D): CLS first
        chunks.append(hidden[:, 1:] if feature_select == "patch" else hidden)
    return torch.cat(chunks)  # (N, P, D)
