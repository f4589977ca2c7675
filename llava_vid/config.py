"""The model config: a transformers ``PreTrainedConfig`` with typed, validated modes.

``LlavaVidConfig`` composes two sub-configs (a vision tower, CLIP first, and any causal LM,
LLaMA first) and adds the multimodal glue settings. Every mode is a ``Literal`` checked once in
``__post_init__``; an invalid value raises ``ValueError`` naming the field and the allowed values.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

# How vision patch features become LLM inputs. ``mlp{N}x_gelu`` is validated by pattern below.
ProjectorType = str
PROJECTOR_PATTERN = re.compile(r"^(linear|identity|mlp(?P<depth>[1-9][0-9]?)x_gelu)$")

# "patch" drops the CLS token (LLaVA's default), "full" keeps it.
VisionFeatureSelect = Literal["patch", "full"]

# How a single image is fitted into the vision tower's square input (AnyRes modes come with AnyRes).
ImageAspectMode = Literal["pad", "crop"]

MODEL_TYPE = "llava_vid"


def _check_choice(field: str, value: object, allowed: tuple[object, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"LlavaVidConfig.{field}={value!r} is invalid; expected one of {list(allowed)}")


def projector_depth(projector_type: ProjectorType) -> int:
    """Number of Linear layers of a projector type (0 for ``identity``); raises on an unknown type."""
    match = PROJECTOR_PATTERN.match(projector_type)
    if match is None:
        raise ValueError(
            f"LlavaVidConfig.projector_type={projector_type!r} is invalid; expected 'linear', "
            "'identity' or 'mlp{N}x_gelu' (e.g. 'mlp2x_gelu')"
        )
    if projector_type == "identity":
        return 0
    if projector_type == "linear":
        return 1
    return int(match.group("depth"))


def validate_modes(projector_type: str, vision_feature_select: str, image_aspect_mode: str) -> None:
    """Check the mode fields; shared by the config and the preset loader so both say the same thing."""
    projector_depth(projector_type)
    _check_choice("vision_feature_select", vision_feature_select, get_args(VisionFeatureSelect))
    _check_choice("image_aspect_mode", image_aspect_mode, get_args(ImageAspectMode))


class LlavaVidConfig(PreTrainedConfig):
    r"""Configuration of :class:`~llava_vid.modeling.LlavaVidForConditionalGeneration`.

    Args:
        vision_config: config of the vision tower (default: CLIP ViT-L/14-336).
        text_config: config of the causal language model (default: LLaMA).
        projector_type: ``linear``, ``identity`` or ``mlp{N}x_gelu`` (LLaVA-1.5 uses ``mlp2x_gelu``).
        vision_feature_layer: hidden-state index taken from the vision tower (LLaVA: -2, the
            second-to-last layer).
        vision_feature_select: ``patch`` drops the CLS token, ``full`` keeps it.
        image_token_id: token id of the image placeholder; the processor writes exactly one per
            visual token.
        image_aspect_mode: ``pad`` (LLaVA-1.5: pad to square with the mean colour, then resize) or
            ``crop`` (CLIP: resize the short side, centre-crop).
        vision_chunk_size: at most this many images go through the vision tower at once, which
            bounds activation memory for long videos and many tiles.
    """

    model_type = MODEL_TYPE
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="clip_vision_model",
            # CLIP ViT-L/14-336, the tower of LLaVA-1.5.
            init_kwargs={
                "hidden_size": 1024,
                "intermediate_size": 4096,
                "num_hidden_layers": 24,
                "num_attention_heads": 16,
                "patch_size": 14,
                "image_size": 336,
                "projection_dim": 768,
            },
        ),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    projector_type: str = "mlp2x_gelu"
    vision_feature_layer: int = -2
    vision_feature_select: VisionFeatureSelect = "patch"
    image_token_id: int | None = None
    image_aspect_mode: ImageAspectMode = "pad"
    vision_chunk_size: int = 64
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs) -> None:
        super().__post_init__(**kwargs)
        validate_modes(self.projector_type, self.vision_feature_select, self.image_aspect_mode)
        num_layers = self.vision_config.num_hidden_layers
        if not -(num_layers + 1) <= self.vision_feature_layer <= num_layers:
            raise ValueError(
                f"LlavaVidConfig.vision_feature_layer={self.vision_feature_layer} is out of range for a vision "
                f"tower with {num_layers} layers (hidden states are indexed -{num_layers + 1}..{num_layers})"
            )
        if self.vision_chunk_size < 1:
            raise ValueError(f"LlavaVidConfig.vision_chunk_size={self.vision_chunk_size} must be >= 1")
        vocab_size = self.text_config.vocab_size
        if self.image_token_id is not None and not 0 <= self.image_token_id < vocab_size:
            raise ValueError(
                f"LlavaVidConfig.image_token_id={self.image_token_id} is outside the language model's "
                f"vocabulary of {vocab_size} tokens (text_config.vocab_size)"
            )
