"""Model presets (``configs/model/*.yaml``) → a model and its processor.

A preset names each part either by a transformers config (random weights: the tiny test model) or
by a pretrained checkpoint (``openai/clip-vit-large-patch14-336``, ``lmsys/vicuna-7b-v1.5``: real
weights on a user's machine). Both go through the same code: :func:`build_model_and_processor`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedConfig, PreTrainedTokenizerBase

from llava_vid.config import LlavaVidConfig, validate_modes
from llava_vid.modeling import LlavaVidForConditionalGeneration
from llava_vid.processing.image_processor import LlavaVidImageProcessor
from llava_vid.processing.processor import LlavaVidProcessor
from llava_vid.processing.templates import TemplateName, check_template_name
from llava_vid.tokenizer import IMAGE_TOKEN, VIDEO_TOKEN, add_media_tokens, build_offline_tokenizer
from llava_vid.yaml_files import read_yaml_mapping


@dataclass
class PartSpec:
    """One pretrained part: either ``pretrained`` (a hub id or local path) or ``config`` (a dict with ``model_type``)."""

    pretrained: str | None = None
    config: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if (self.pretrained is None) == (self.config is None):
            raise ValueError("give exactly one of 'pretrained' and 'config'")


@dataclass
class TokenizerSpec:
    """``pretrained`` loads a tokenizer; otherwise one is trained offline with ``offline_vocab_size`` entries."""

    pretrained: str | None = None
    offline_vocab_size: int = 1024
    max_length: int = 2048


@dataclass
class ModelSpec:
    """A model preset, as written in ``configs/model/*.yaml``; every field maps to :class:`LlavaVidConfig`
    or the processor, and an unknown key is an error."""

    vision: PartSpec
    text: PartSpec
    qformer: PartSpec | None = None  # the video Q-Former (a config; random init, trained in stage 1)
    tokenizer: TokenizerSpec = field(default_factory=TokenizerSpec)
    projector_type: str = "mlp2x_gelu"
    vision_feature_layer: int = -2
    vision_feature_select: str = "patch"
    image_aspect_mode: str = "pad"
    image_grid_pinpoints: list[list[int]] | str | None = None
    image_merge: str = "spatial_unpad"
    anyres_max_tiles: int | None = None
    video_num_queries: int = 32
    video_content_grid: int = 1
    video_context_token: bool = True
    template: TemplateName = "vicuna_v1"
    seed: int = 0


def _from_dict(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(known)}")
    try:
        return cls(**data)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from error


def load_model_spec(path: str | Path) -> ModelSpec:
    """Read and validate a model preset YAML; errors name the file and the key."""
    path = Path(path)
    return model_spec_from_mapping(read_yaml_mapping(path, "model preset"), str(path))


def model_spec_from_mapping(raw: dict[str, Any], where: str) -> ModelSpec:
    """Validate a preset given as a mapping (``where`` names its source in errors)."""
    raw = dict(raw)
    for key, cls in (("vision", PartSpec), ("text", PartSpec), ("qformer", PartSpec), ("tokenizer", TokenizerSpec)):
        if raw.get(key) is not None:
            raw[key] = _from_dict(cls, raw[key], f"{where}: {key}")
    spec = _from_dict(ModelSpec, raw, where)
    try:
        check_template_name(spec.template)
        validate_modes(spec)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from error
    return spec


def model_spec_to_mapping(spec: ModelSpec) -> dict[str, Any]:
    """A preset as plain data (a YAML mapping :func:`model_spec_from_mapping` reads back); ``pretrained``
    entries that are local folders become absolute, so the mapping works from any working directory."""
    raw = dataclasses.asdict(spec)
    for key in ("vision", "text", "qformer", "tokenizer"):
        part = raw.get(key)
        if part and part.get("pretrained") and Path(part["pretrained"]).exists():
            part["pretrained"] = str(Path(part["pretrained"]).resolve())
    return raw


def _part_config(part: PartSpec) -> PreTrainedConfig:
    if part.config is not None:
        config = dict(part.config)
        model_type = config.pop("model_type", None)
        if model_type is None:
            raise ValueError(f"a part config needs 'model_type': {part.config}")
        return AutoConfig.for_model(model_type, **config)
    config = AutoConfig.from_pretrained(part.pretrained)
    # A full CLIP/SigLIP checkpoint holds text and vision configs; the tower is the vision half.
    return getattr(config, "vision_config", None) or config


def build_tokenizer(spec: TokenizerSpec) -> PreTrainedTokenizerBase:
    if spec.pretrained is not None:
        tokenizer = AutoTokenizer.from_pretrained(spec.pretrained, padding_side="left")
        add_media_tokens(tokenizer)
        if tokenizer.pad_token is None:
            # LLaMA ships without a pad token; <unk> is what LLaVA pads with and is never trained on.
            tokenizer.pad_token = tokenizer.unk_token
    else:
        tokenizer = build_offline_tokenizer(spec.offline_vocab_size)
    tokenizer.model_max_length = spec.max_length
    return tokenizer


def build_config(spec: ModelSpec, tokenizer: PreTrainedTokenizerBase) -> LlavaVidConfig:
    text_config = _part_config(spec.text)
    # The LM must hold every tokenizer id, including the new <image>/<video> specials. A random LM
    # gets exactly the tokenizer's size; a pretrained one keeps its (possibly padded) size if larger.
    if spec.text.pretrained is None:
        text_config.vocab_size = len(tokenizer)
    else:
        text_config.vocab_size = max(text_config.vocab_size, len(tokenizer))
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(text_config, name, getattr(tokenizer, name))
    vision_config = _part_config(spec.vision)
    qformer_config = None
    if spec.qformer is not None:
        qformer_config = _part_config(spec.qformer)
        # The Q-Former reads frame features and the instruction in the LLM tokenizer's ids.
        qformer_config.encoder_hidden_size = vision_config.hidden_size
        qformer_config.vocab_size = len(tokenizer)
        qformer_config.pad_token_id = tokenizer.pad_token_id
    return LlavaVidConfig(
        vision_config=vision_config,
        text_config=text_config,
        qformer_config=qformer_config,
        projector_type=spec.projector_type,
        vision_feature_layer=spec.vision_feature_layer,
        vision_feature_select=spec.vision_feature_select,
        image_aspect_mode=spec.image_aspect_mode,
        image_grid_pinpoints=spec.image_grid_pinpoints,
        image_merge=spec.image_merge,
        anyres_max_tiles=spec.anyres_max_tiles,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        video_token_id=tokenizer.convert_tokens_to_ids(VIDEO_TOKEN),
        video_num_queries=spec.video_num_queries,
        video_content_grid=spec.video_content_grid,
        video_context_token=spec.video_context_token,
    )


def build_processor(
    config: LlavaVidConfig,
    tokenizer: PreTrainedTokenizerBase,
    template: TemplateName,
    normalisation: dict[str, Sequence[float]] | None = None,
) -> LlavaVidProcessor:
    """The processor matching ``config``; ``normalisation`` may override ``image_mean``/``image_std``
    (a converted checkpoint keeps its own)."""
    image_processor = LlavaVidImageProcessor(
        image_size=config.vision_config.image_size,
        aspect_mode=config.image_aspect_mode,
        image_grid_pinpoints=config.image_grid_pinpoints,
        **(normalisation or {}),
    )
    return LlavaVidProcessor(
        image_processor,
        tokenizer,
        patch_size=config.vision_config.patch_size,
        vision_feature_select=config.vision_feature_select,
        image_merge=config.image_merge,
        anyres_max_tiles=config.anyres_max_tiles,
        template=template,
        video_content_grid=config.video_content_grid,
        video_context_token=config.video_context_token,
        **({"qformer_max_length": config.qformer_config.max_position_embeddings} if config.has_video else {}),
    )


def build_model_and_processor(spec: ModelSpec) -> tuple[LlavaVidForConditionalGeneration, LlavaVidProcessor]:
    """Build the model a preset describes: random parts from configs, pretrained parts from checkpoints.

    The projector is always freshly initialised (stage 1 trains it).
    """
    torch.manual_seed(spec.seed)
    tokenizer = build_tokenizer(spec.tokenizer)
    config = build_config(spec, tokenizer)
    if spec.vision.pretrained is None and spec.text.pretrained is None:
        model = LlavaVidForConditionalGeneration(config)
    else:
        model = _assemble_pretrained(spec, config)
    return model, build_processor(config, tokenizer, spec.template)


def _assemble_pretrained(spec: ModelSpec, config: LlavaVidConfig) -> LlavaVidForConditionalGeneration:
    """Build the shell on the meta device (no 7B random init), then put the loaded parts in."""
    with torch.device("meta"):
        model = LlavaVidForConditionalGeneration(config)
    if spec.vision.pretrained is not None:
        tower_class = type(model.vision_tower)  # e.g. CLIPVisionModel, which reads full CLIP checkpoints too
        model.vision_tower = tower_class.from_pretrained(spec.vision.pretrained)
    else:
        model.vision_tower = AutoModel.from_config(config.vision_config)
    if spec.text.pretrained is not None:
        language_model = AutoModelForCausalLM.from_pretrained(spec.text.pretrained)
        if language_model.get_input_embeddings().num_embeddings < config.text_config.vocab_size:
            # New <image>/<video> rows are drawn around the mean of the old ones (transformers mean_resizing).
            language_model.resize_token_embeddings(config.text_config.vocab_size, mean_resizing=True)
        model.language_model = language_model
    else:
        model.language_model = AutoModelForCausalLM.from_config(config.text_config)
    # The loaded parts' configs are the truth (same checkpoints, plus the resized vocabulary).
    model.config.vision_config = model.vision_tower.config
    model.config.text_config = model.language_model.config
    model.init_multimodal_parts()  # projector, compressor, newline: real tensors, fresh
    return model


TINY_PRESET = Path(__file__).resolve().parents[1] / "configs" / "model" / "tiny.yaml"


def load_processor(config: str | Path | None = None, model_dir: str | Path | None = None) -> LlavaVidProcessor:
    """The processor of a model preset YAML or of a saved model folder (default: the tiny preset).

    From a preset only the tokenizer and configs are built (no weights), which is what tools that
    only need geometry and preprocessing (``llava-vid inspect``) want.
    """
    if config is not None and model_dir is not None:
        raise ValueError("give a model preset (--config) or a model folder (--model), not both")
    if model_dir is not None:
        return LlavaVidProcessor.from_pretrained(str(model_dir))
    spec = load_model_spec(config if config is not None else TINY_PRESET)
    tokenizer = build_tokenizer(spec.tokenizer)  # build_config needs the media token ids and vocabulary size
    return build_processor(build_config(spec, tokenizer), tokenizer, spec.template)
