"""Scattering projected visual features into the text embedding sequence."""

from __future__ import annotations

import torch


def count_placeholders(input_ids: torch.Tensor, placeholder_id: int) -> int:
    return int((input_ids == placeholder_id).sum())


def merge_visual_features(
    inputs_embeds: torch.Tensor,
    input_ids: torch.Tensor,
    placeholder_id: int,
    features: torch.Tensor,
) -> torch.Tensor:
    """Replace every placeholder position of ``input_ids`` by the next visual feature vector.

    Args:
        inputs_embeds: ``(B, L, D)`` text embeddings.
        input_ids: ``(B, L)``; holds exactly one ``placeholder_id`` per visual token, in reading order.
        features: ``(T, D)``, the visual tokens of the whole batch in the same order.

    Raises:
        ValueError: naming both numbers when placeholders and features disagree, instead of
            silently dropping or reusing features.
    """
    mask = input_ids == placeholder_id  # (B, L)
    num_placeholders = int(mask.sum())
    if num_placeholders != features.shape[0]:
        raise ValueError(
            f"input_ids hold {num_placeholders} image-token placeholders (id {placeholder_id}) but the images "
            f"produced {features.shape[0]} visual tokens; the processor and the model disagree on the token count"
        )
    features = features.to(device=inputs_embeds.device, dtype=inputs_embeds.dtype)
    # masked_scatter fills positions in row-major order, i.e. sample by sample, left to right.
    return inputs_embeds.masked_scatter(mask.unsqueeze(-1), features)
