"""The projector: vision width → LLM width."""

from __future__ import annotations

from torch import nn

from llava_vid.modes import ProjectorType, projector_depth


def build_projector(projector_type: ProjectorType, vision_width: int, text_width: int) -> nn.Module:
    """Build the projector named by ``projector_type``.

    ``mlp{N}x_gelu`` is ``Linear, GELU, Linear, …`` with N Linear layers held in an ``nn.Sequential``,
    so parameters are named ``0.weight``, ``2.weight``, … exactly as in the original LLaVA
    ``mm_projector`` and checkpoints convert by renaming the prefix only.
    """
    depth = projector_depth(projector_type)
    if depth == 0:
        if vision_width != text_width:
            raise ValueError(
                f"projector_type='identity' needs equal widths, but the vision tower gives {vision_width} "
                f"and the language model takes {text_width}"
            )
        return nn.Identity()
    layers: list[nn.Module] = [nn.Linear(vision_width, text_width)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(text_width, text_width)]
    return nn.Sequential(*layers)
