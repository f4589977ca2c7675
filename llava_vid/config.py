"""The model config: a transformers ``PreTrainedConfig`` with typed, validated modes.

``LlavaVidConfig`` composes two sub-configs (a vision tower, CLIP first, and any causal LM,
LLaMA first) and adds the multimodal glue settings. Every mode is a ``Literal`` checked once in
``__post_init__``; an invalid value raises ``ValueError`` naming the field and the allowed values.
"""

from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from llava_vid.geometry import VisionGeometry, default_grid_pinpoints, parse_grid_pinpoints, uses_newline
from llava_vid.modes import (
    ImageAspectMode,
    MergeMode,
    ProjectorType,
    VisionFeatureSelect,
    check_choice,
    projector_depth,
)

MODEL_TYPE = "llava_vid"


def validate_modes(source: object) -> None:
    """Check the mode fields of ``source`` (a :class:`LlavaVidConfig` or a model preset): shared by the
    config and the preset loader so both say the same thing about the same field."""
    projector_type = source.projector_type
    vision_feature_select = source.vision_feature_select
    image_aspect_mode = source.image_aspect_mode
    image_merge = source.image_merge
    anyres_max_tiles = source.anyres_max_tiles
    projector_depth(projector_type)
    check_choice("vision_feature_select", vision_feature_select, VisionFeatureSelect)
    check_choice("image_aspect_mode", image_aspect_mode, ImageAspectMode)
    check_choice("image_merge", image_merge, MergeMode)
    if anyres_max_tiles is not None and (image_aspect_mode != "anyres" or anyres_max_tiles < 1):
        raise ValueError(
            f"anyres_max_tiles={anyres_max_tiles} needs image_aspect_mode='anyres' and a value >= 1 "
            f"(got image_aspect_mode={image_aspect_mode!r})"
        )
    if image_aspect_mode == "anyres" and image_merge != "flat" and vision_feature_select == "full":
        raise ValueError(
            f"image_merge={image_merge!r} lays tile features out as a grid, which the CLS token of "
            "vision_feature_select='full' does not fit; use 'patch' or image_merge='flat'"
        )


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
        image_aspect_mode: ``pad`` (LLaVA-1.5: pad to square with the mean colour, then resize),
            ``crop`` (CLIP: resize the short side, centre-crop) or ``anyres`` (LLaVA-NeXT: a global
            view plus tiles of the best pinpoint resolution).
        image_grid_pinpoints: AnyRes resolutions, ``[[height, width], …]`` or ``"(1x1),...,(6x6)"``;
            default LLaVA-NeXT's five layouts of the tower's tile size.
        image_merge: ``flat``, ``spatial`` or ``spatial_unpad`` (AnyRes tile packing).
        anyres_max_tiles: ``anyres_max_N``: shrink a big tile grid to about N tiles' worth of tokens.
        vision_chunk_size: at most this many images go through the vision tower at once, which
            bounds activation memory for long videos and many tiles.
        qformer_config: the InstructBLIP-style Q-Former of the video context tokens (LLaMA-VID);
            ``None`` for an image-only model. Its ``encoder_hidden_size`` is the vision width.
        video_token_id: token id of the video placeholder (one per visual token of a video).
        video_num_queries: learned queries of the Q-Former.
        video_content_grid: default content grid ``g``: each frame gives ``g × g`` content tokens
            after its context token (a request may choose another).
        video_context_token: give each frame LLaMA-VID's context token (``False``: content tokens
            only — the ablation that shows what the context token adds).
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
        # The LLaMA-VID context-token Q-Former; absent (None) for an image-only model.
        "qformer_config": SubConfigSpec(config_class=AutoConfig, model_type="instructblip_qformer", optional=True),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    qformer_config: dict | PreTrainedConfig | None = None
    projector_type: str = "mlp2x_gelu"
    vision_feature_layer: int = -2
    vision_feature_select: VisionFeatureSelect = "patch"
    image_token_id: int | None = None
    image_aspect_mode: ImageAspectMode = "pad"
    image_grid_pinpoints: list | str | None = None
    image_merge: MergeMode = "spatial_unpad"
    anyres_max_tiles: int | None = None
    vision_chunk_size: int = 64
    video_token_id: int | None = None
    video_num_queries: int = 32
    video_content_grid: int = 1
    video_context_token: bool = True
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs) -> None:
        super().__post_init__(**kwargs)
        validate_modes(self)
        tile = self.vision_config.image_size
        pinpoints = default_grid_pinpoints(tile) if self.image_grid_pinpoints is None else self.image_grid_pinpoints
        # Stored as plain [height, width] lists so config.json round-trips.
        self.image_grid_pinpoints = [list(size) for size in parse_grid_pinpoints(pinpoints, tile)]
        num_layers = self.vision_config.num_hidden_layers
        if not -(num_layers + 1) <= self.vision_feature_layer <= num_layers:
            raise ValueError(
                f"LlavaVidConfig.vision_feature_layer={self.vision_feature_layer} is out of range for a vision "
                f"tower with {num_layers} layers (hidden states are indexed -{num_layers + 1}..{num_layers})"
            )
        if self.vision_chunk_size < 1:
            raise ValueError(f"LlavaVidConfig.vision_chunk_size={self.vision_chunk_size} must be >= 1")
        vocab_size = self.text_config.vocab_size
        for name in ("image_token_id", "video_token_id"):
            token_id = getattr(self, name)
            if token_id is not None and not 0 <= token_id < vocab_size:
                raise ValueError(
                    f"LlavaVidConfig.{name}={token_id} is outside the language model's "
                    f"vocabulary of {vocab_size} tokens (text_config.vocab_size)"
                )
        if self.video_content_grid < 1 or self.video_num_queries < 1:
            raise ValueError(
                f"LlavaVidConfig.video_content_grid={self.video_content_grid} and video_num_queries="
                f"{self.video_num_queries} must be >= 1"
            )
        if self.qformer_config is not None and self.qformer_config.encoder_hidden_size != self.vision_config.hidden_size:
            raise ValueError(
                f"LlavaVidConfig.qformer_config.encoder_hidden_size={self.qformer_config.encoder_hidden_size} must equal "
                f"the vision width vision_config.hidden_size={self.vision_config.hidden_size} (the Q-Former reads frame features)"
            )

    @property
    def has_image_newline(self) -> bool:
        return uses_newline(self.image_aspect_mode, self.image_merge)

    def vision_geometry(self) -> VisionGeometry:
        """The geometry the shared token-count function wants, read from this config."""
        return VisionGeometry(
            image_size=self.vision_config.image_size,
            patch_size=self.vision_config.patch_size,
            feature_select=self.vision_feature_select,
            merge=self.image_merge,
            newline=self.has_image_newline,
            max_tiles=self.anyres_max_tiles,
        )

    @property
    def has_video(self) -> bool:
        return self.qformer_config is not None
