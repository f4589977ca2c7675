"""Running the vision tower: every image of a batch in one chunked pass, optionally through a cache of a
frozen tower's features."""

from __future__ import annotations

import hashlib
from typing import Callable

import torch
from torch import nn

from llava_vid.modes import VisionFeatureSelect

__all__ = ["VisionFeatureCache", "encode_images"]


class VisionFeatureCache:
    """A frozen tower's hidden states, kept per view and reused when the very same pixels come again.

    Training runs several epochs over the same images and frames; with the tower frozen its output for a
    view never changes, so from the second epoch on it can be looked up instead of recomputed. Views are
    keyed by a digest of their pixel bytes (and the hidden layer), never by a file name or a position in
    the batch, so a feature is only ever reused for identical input. Views arriving once the cache holds
    ``max_bytes`` are computed every time (and counted as ``uncached``). A kept feature is the tower's
    own output for that view, computed beside other views: where a kernel rounds differently by batch size
    it may differ from a fresh computation in the last bits (~1e-7), as features of one view in two
    batches of an uncached run do.

    Worth it where the tower is a real share of a training step and its features are small: tiny towers
    on the CPU (the embedded demo). A ViT-L/14-336 view is 577 × 1024 values, so an epoch of LLaVA's
    data would need hundreds of GiB. The tower must be deterministic: frozen, and without dropout
    (:func:`encode_images` refuses a tower that trains).
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.max_bytes = max_bytes
        self.held_bytes = 0
        self.computed = 0  # views that went through the tower
        self.reused = 0  # views looked up instead
        self.uncached = 0  # computed views not kept, the cache being full
        self._features: dict[tuple[int, bytes], torch.Tensor] = {}

    def hidden_states(
        self, pixel_values: torch.Tensor, layer: int, compute: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """``compute(views)`` → ``(n, 1 + P, D)`` for the views not held yet; all ``(N, 1 + P, D)`` back."""
        keys = [(layer, _digest(view)) for view in pixel_values]  # one per (3, H, W) view
        missing: dict[tuple[int, bytes], int] = {}  # each view not held yet, once, with its first position
        for index, key in enumerate(keys):
            if key not in self._features:
                missing.setdefault(key, index)
        fresh = {}
        if missing:
            fresh = dict(zip(missing, compute(pixel_values[list(missing.values())])))  # each (1 + P, D)
            for key, hidden in fresh.items():
                self._keep(key, hidden)
        self.computed += len(missing)
        self.reused += len(keys) - len(missing)
        return torch.stack([fresh[key] if key in fresh else self._features[key] for key in keys])  # (N, 1 + P, D)

    def _keep(self, key: tuple[int, bytes], hidden: torch.Tensor) -> None:
        size = hidden.numel() * hidden.element_size()
        if self.held_bytes + size > self.max_bytes:
            self.uncached += 1
            return
        self._features[key] = hidden.detach().clone()  # its own storage, not a view of the whole chunk
        self.held_bytes += size

    def describe(self) -> str:
        """One line for a training summary."""
        line = (
            f"vision features {self.computed:,} computed, {self.reused:,} reused "
            f"({self.held_bytes / 2**30:.2f} GiB held)"
        )
        return line + (f", {self.uncached:,} not kept (cache full)" if self.uncached else "")


def _digest(view: torch.Tensor) -> bytes:
    raw = view.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
    return hashlib.sha256(raw).digest()  # hardware-accelerated on current CPUs: ~25 µs for a 56 px view


def encode_images(
    vision_tower: nn.Module,
    pixel_values: torch.Tensor,
    *,
    feature_layer: int,
    feature_select: VisionFeatureSelect,
    chunk_size: int,
    cache: VisionFeatureCache | None = None,
) -> torch.Tensor:
    """Patch features of a stack of images.

    Args:
        vision_tower: a transformers vision model (``CLIPVisionModel``, …) returning ``hidden_states``.
        pixel_values: ``(N, 3, H, W)``, all images (and later tiles/frames) of the batch together.
        feature_layer: which hidden state to take (LLaVA: -2, the second-to-last layer).
        feature_select: ``patch`` drops the CLS token, ``full`` keeps it.
        chunk_size: at most this many images per tower call, so activation memory stays bounded.
        cache: reuse a frozen tower's earlier output for identical views (:class:`VisionFeatureCache`).

    Returns:
        ``(N, P, D)`` features, P = patches (+1 with ``full``), D = vision width.
    """
    tower_dtype = next(vision_tower.parameters()).dtype

    def run_tower(views: torch.Tensor) -> torch.Tensor:
        chunks = [
            vision_tower(chunk, output_hidden_states=True, return_dict=True).hidden_states[feature_layer]
            for chunk in views.split(chunk_size)
        ]  # each (n, 1 + P, D): CLS first
        return torch.cat(chunks)  # (N, 1 + P, D)

    pixel_values = pixel_values.to(tower_dtype)
    if cache is None:
        hidden = run_tower(pixel_values)
    else:
        if torch.is_grad_enabled() and any(parameter.requires_grad for parameter in vision_tower.parameters()):
            raise ValueError("the vision feature cache needs a frozen vision tower, but this one trains")
        hidden = cache.hidden_states(pixel_values, feature_layer, run_tower)
    return hidden[:, 1:] if feature_select == "patch" else hidden  # (N, P, D)
