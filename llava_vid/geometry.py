"""Geometry and visual-token arithmetic: the one place that says how many tokens an image becomes.

The processor (to expand each ``<image>`` placeholder) and the model (to check the placeholder count
against its features) both call :func:`num_image_tokens`; there is no second copy of this formula.
Pure functions only: no model code, no tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

from llava_vid.config import VisionFeatureSelect


@dataclass(frozen=True)
class VisionGeometry:
    """What the vision tower does to one square input image.

    Attributes:
        image_size: side of the square input in pixels (336 for CLIP ViT-L/14-336).
        patch_size: side of one ViT patch in pixels (14).
        feature_select: ``patch`` drops CLS, ``full`` keeps it.
    """

    image_size: int
    patch_size: int
    feature_select: VisionFeatureSelect = "patch"

    def __post_init__(self) -> None:
        if self.patch_size <= 0 or self.image_size <= 0:
            raise ValueError(f"image_size={self.image_size} and patch_size={self.patch_size} must be positive")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}; "
                "the vision tower would drop the remainder"
            )

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size


def num_image_tokens(geometry: VisionGeometry) -> int:
    """Visual tokens one image becomes: a (side × side) patch grid, plus CLS when it is kept.

    CLIP ViT-L/14-336 with ``patch`` selection: 24 × 24 = 576.
    """
    cls_tokens = 1 if geometry.feature_select == "full" else 0
    return geometry.patches_per_side**2 + cls_tokens
