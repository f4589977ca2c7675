"""Every mode of the project as a typed ``Literal``, with the one function that validates each.

Modes are chosen by these values, never by substrings of names or paths.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

# "patch" drops the CLS token (LLaVA's default), "full" keeps it.
VisionFeatureSelect = Literal["patch", "full"]

# How one image is fitted to the vision tower: "pad" (LLaVA-1.5: pad to square with the mean colour),
# "crop" (CLIP: resize the short side, centre-crop) or "anyres" (LLaVA-NeXT: global view + tiles).
ImageAspectMode = Literal["pad", "crop", "anyres"]

# How AnyRes tiles become tokens: "flat" concatenates tiles, "spatial" lays them out as a grid with
# row newlines, "spatial_unpad" also removes what only saw padding (LLaVA-NeXT's default).
MergeMode = Literal["flat", "spatial", "spatial_unpad"]

# Per request, for images under an AnyRes model: "auto" tiles a lone image and gives several images
# their global view only (LLaVA-OneVision's choice); "anyres"/"global" force one or the other.
ImageTreatment = Literal["auto", "anyres", "global"]

# Projector names: "linear", "identity" or "mlp{N}x_gelu" (LLaVA-1.5: mlp2x_gelu).
ProjectorType = str
_PROJECTOR = re.compile(r"^(linear|identity|mlp(?P<depth>[1-9][0-9]?)x_gelu)$")
# LLaVA's image_aspect_ratio strings, e.g. "anyres_max_9".
_ANYRES_MAX = re.compile(r"^anyres_max_(?P<tiles>[1-9][0-9]*)$")


def check_choice(field: str, value: object, mode: object) -> None:
    """Raise ``ValueError`` naming ``field`` when ``value`` is not one of the ``Literal`` ``mode``'s values."""
    allowed = get_args(mode)
    if value not in allowed:
        raise ValueError(f"{field}={value!r} is invalid; expected one of {list(allowed)}")


def projector_depth(projector_type: ProjectorType) -> int:
    """Number of Linear layers of a projector type (0 for ``identity``); raises on an unknown type."""
    match = _PROJECTOR.match(projector_type)
    if match is None:
        raise ValueError(
            f"projector_type={projector_type!r} is invalid; expected 'linear', 'identity' or 'mlp{{N}}x_gelu' "
            "(e.g. 'mlp2x_gelu')"
        )
    if projector_type == "identity":
        return 0
    if projector_type == "linear":
        return 1
    return int(match.group("depth"))


def parse_aspect_ratio(value: str) -> tuple[ImageAspectMode, int | None]:
    """LLaVA's ``image_aspect_ratio`` string → ``(image_aspect_mode, anyres_max_tiles)``.

    ``"pad"``, ``"crop"``, ``"anyres"`` map to themselves; ``"anyres_max_9"`` → ``("anyres", 9)``.
    """
    match = _ANYRES_MAX.match(value)
    if match is not None:
        return "anyres", int(match.group("tiles"))
    check_choice("image_aspect_ratio", value, ImageAspectMode)
    return value, None  # type: ignore[return-value]
