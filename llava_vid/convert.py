"""Checkpoint converters: transformers' ``LlavaForConditionalGeneration`` / ``LlavaNextForConditionalGeneration``
and original LLaVA → ours.

Three sources are supported:

* ``llava-hf`` — a transformers ``LlavaForConditionalGeneration`` checkpoint (``llava-hf/llava-1.5-7b-hf``).
  :func:`map_llava_hf_state_dict` renames its weights, :func:`convert_llava_hf` loads, maps and checks it.
* ``llava-next-hf`` — a transformers ``LlavaNextForConditionalGeneration`` checkpoint
  (``llava-hf/llava-v1.6-vicuna-7b-hf``): the same, plus AnyRes settings and ``image_newline``
  (:func:`map_llava_next_hf_state_dict`, :func:`convert_llava_next_hf`).
* ``llava`` — an original haotian-liu/LLaVA ``LlavaLlamaForCausalLM`` checkpoint (``liuhaotian/llava-v1.5-7b``),
  optionally with a separate stage-1 ``mm_projector.bin`` and a CLIP tower loaded from its own checkpoint.
  :func:`map_llava_state_dict`, :func:`llava_config_to_ours` and :func:`convert_llava`.

Weight mapping is a table of explicit renaming rules; a key that matches no rule is an error listing every
such key (a converter that silently drops weights produces a model that "works" and is wrong). The only keys
ignored on purpose are non-persistent buffers that old checkpoints still carry (rotary ``inv_freq``, CLIP
``position_ids``): the model recomputes them from its config.

When the tokenizer gains ids (original LLaVA has no ``<image>`` token; every source gains ``<video>``), the
embedding and LM-head matrices grow by rows initialised to the mean of the existing rows before loading, so the
load itself stays ``strict=True``.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    LlamaConfig,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from llava_vid.build import build_processor
from llava_vid.config import LlavaVidConfig
from llava_vid.modes import parse_aspect_ratio, projector_depth
from llava_vid.modeling import LlavaVidForConditionalGeneration
from llava_vid.processing.processor import LlavaVidProcessor
from llava_vid.tokenizer import IMAGE_TOKEN, add_media_tokens

TEMPLATE = "vicuna_v1"  # LLaVA-1.5's conversation template

# Our state-dict names of the two matrices that have one row per token.
EMBED_KEY = "language_model.model.embed_tokens.weight"
LM_HEAD_KEY = "language_model.lm_head.weight"

# Non-persistent buffers that older checkpoints saved; recomputed from the config, so dropping them loses nothing.
_IGNORED_BUFFERS = re.compile(r"(^|\.)(rotary_emb\.inv_freq|embeddings\.position_ids)$")

Rule = tuple[re.Pattern[str], str]


def _rules(pairs: Iterable[tuple[str, str]]) -> list[Rule]:
    return [(re.compile(pattern), replacement) for pattern, replacement in pairs]


# transformers' LlavaForConditionalGeneration. In memory (transformers 5) the weights live under
# ``model.{vision_tower,multi_modal_projector,language_model}`` plus a top-level ``lm_head``; the files on the
# hub (and what ``save_pretrained`` writes back) use the older serialised layout ``vision_tower.vision_model.*``,
# ``multi_modal_projector.*``, ``language_model.model.*``, ``language_model.lm_head.*``. Both are accepted.
_LLAVA_HF_RULES = _rules(
    [
        (r"^model\.vision_tower\.(?:vision_model\.)?", "vision_tower."),
        (r"^vision_tower\.(?:vision_model\.)?", "vision_tower."),
        (r"^(?:model\.)?multi_modal_projector\.linear_1\.(weight|bias)$", r"projector.0.\1"),
        (r"^(?:model\.)?multi_modal_projector\.linear_2\.(weight|bias)$", r"projector.2.\1"),
        (r"^model\.language_model\.", "language_model.model."),
        (r"^language_model\.model\.", "language_model.model."),
        (r"^(?:language_model\.)?lm_head\.", "language_model.lm_head."),
    ]
)

# transformers' LlavaNextForConditionalGeneration: Llava's layout plus the learned row terminator.
_LLAVA_NEXT_HF_RULES = _LLAVA_HF_RULES + _rules([(r"^(?:model\.)?image_newline$", "image_newline")])

# Original LLaVA (LlavaLlamaForCausalLM): the LLaMA body is ``model.*`` with the multimodal parts beside it.
_LLAVA_PROJECTOR_RULES = _rules(
    [
        (r"^model\.mm_projector\.(\d+)\.(weight|bias)$", r"projector.\1.\2"),  # mlp{N}x_gelu: nn.Sequential
        (r"^model\.mm_projector\.(weight|bias)$", r"projector.0.\1"),  # linear: a bare nn.Linear
    ]
)
_LLAVA_RULES = _LLAVA_PROJECTOR_RULES + _rules(
    [
        (r"^model\.(embed_tokens|layers|norm)\.", r"language_model.model.\1."),
        (r"^lm_head\.", "language_model.lm_head."),
        (r"^model\.vision_tower\.vision_tower\.vision_model\.", "vision_tower."),
        (r"^model\.image_newline$", "image_newline"),  # LLaVA-NeXT (AnyRes) checkpoints
    ]
)


def _apply_rules(state_dict: Mapping[str, Tensor], rules: list[Rule], source: str) -> dict[str, Tensor]:
    """Rename every key by the first rule that matches; unknown keys and collisions raise ``ValueError``."""
    mapped: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        if _IGNORED_BUFFERS.search(key):
            continue
        for pattern, replacement in rules:
            new_key, hits = pattern.subn(replacement, key, count=1)
            if hits:
                break
        else:
            unknown.append(key)
            continue
        if new_key in mapped:
            raise ValueError(f"{source}: keys {origin[new_key]!r} and {key!r} both map to {new_key!r}")
        mapped[new_key] = tensor
        origin[new_key] = key
    if unknown:
        raise ValueError(
            f"{source}: {len(unknown)} key(s) match no conversion rule (refusing to drop weights silently): "
            f"{sorted(unknown)}"
        )
    return mapped


def map_llava_hf_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a transformers ``LlavaForConditionalGeneration`` state dict to our parameter names.

    ``model.vision_tower.*`` → ``vision_tower.*``, ``model.multi_modal_projector.linear_{1,2}.*`` →
    ``projector.{0,2}.*``, ``model.language_model.*`` → ``language_model.model.*``, ``lm_head.*`` →
    ``language_model.lm_head.*``; the serialised hub layout (``vision_tower.vision_model.*``,
    ``language_model.model.*``, ``language_model.lm_head.*``, ``multi_modal_projector.*``) maps the same way.

    Raises:
        ValueError: listing every key that matches no rule, or naming two keys that map to the same name.
    """
    return _apply_rules(state_dict, _LLAVA_HF_RULES, "LlavaForConditionalGeneration state dict")


def map_llava_next_hf_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a transformers ``LlavaNextForConditionalGeneration`` state dict to our parameter names.

    The rules of :func:`map_llava_hf_state_dict`, plus ``model.image_newline`` (serialised: ``image_newline``) →
    ``image_newline``.

    Raises:
        ValueError: listing every key that matches no rule, or naming two keys that map to the same name.
    """
    return _apply_rules(state_dict, _LLAVA_NEXT_HF_RULES, "LlavaNextForConditionalGeneration state dict")


def map_llava_state_dict(
    state_dict: Mapping[str, Tensor], *, projector_state_dict: Mapping[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """Rename an original LLaVA (``LlavaLlamaForCausalLM``) state dict to our parameter names.

    ``model.{embed_tokens,layers,norm}.*`` → ``language_model.model.*``, ``lm_head.*`` →
    ``language_model.lm_head.*``, ``model.mm_projector.{i}.*`` → ``projector.{i}.*`` (a linear projector's
    ``model.mm_projector.{weight,bias}`` → ``projector.0.*``) and, when the tower was saved,
    ``model.vision_tower.vision_tower.vision_model.*`` → ``vision_tower.*``.

    Args:
        state_dict: the checkpoint's weights.
        projector_state_dict: a stage-1 ``mm_projector.bin`` (``model.mm_projector.*`` keys only); it replaces
            any projector weights of ``state_dict``.

    Raises:
        ValueError: listing every key that matches no rule (for ``projector_state_dict``: every key that is not
            a projector weight).
    """
    mapped = _apply_rules(state_dict, _LLAVA_RULES, "LLaVA checkpoint")
    if projector_state_dict is not None:
        projector = _apply_rules(projector_state_dict, _LLAVA_PROJECTOR_RULES, "mm_projector state dict")
        if not projector:
            raise ValueError("the mm_projector state dict holds no model.mm_projector.* weights")
        mapped = {key: value for key, value in mapped.items() if not key.startswith("projector.")}
        mapped.update(projector)
    return mapped


# ---------------------------------------------------------------------------------------------- shared helpers
def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Our conventions: left padding (batched generation), a pad token (``<unk>``, as LLaVA), media tokens."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    return add_media_tokens(tokenizer)


def _grow_vocab(state_dict: dict[str, Tensor], vocab_size: int) -> None:
    """Append rows to the embedding and LM head so they hold ``vocab_size`` tokens; new rows = mean of old rows."""
    for key in (EMBED_KEY, LM_HEAD_KEY):
        weight = state_dict.get(key)
        if weight is None or weight.shape[0] >= vocab_size:
            continue
        mean_row = weight.float().mean(dim=0, keepdim=True).to(weight.dtype)  # (1, D)
        extra = mean_row.expand(vocab_size - weight.shape[0], -1)  # (V_new - V_old, D)
        state_dict[key] = torch.cat([weight, extra], dim=0)  # (V_new, D)


def _embedding(state_dict: Mapping[str, Tensor]) -> Tensor:
    if EMBED_KEY not in state_dict:
        raise ValueError(f"the checkpoint has no token embedding ({EMBED_KEY} after renaming)")
    return state_dict[EMBED_KEY]


def _load_into_model(config: LlavaVidConfig, state_dict: dict[str, Tensor]) -> LlavaVidForConditionalGeneration:
    """Build our model in the checkpoint's dtype and load the mapped weights with ``strict=True``."""
    dtype = _embedding(state_dict).dtype
    _grow_vocab(state_dict, config.text_config.vocab_size)
    if LM_HEAD_KEY not in state_dict and config.text_config.tie_word_embeddings:
        state_dict[LM_HEAD_KEY] = state_dict[EMBED_KEY]  # tied checkpoints store the matrix once
    model = LlavaVidForConditionalGeneration._from_config(config, dtype=dtype)
    model.load_state_dict(state_dict, strict=True)
    model.eval()
    return model


def _require_dir(src: str | Path) -> Path:
    """Converters read local checkpoint directories only (download with ``huggingface-cli download`` first)."""
    path = Path(src)
    if not path.is_dir():
        raise ValueError(f"{path}: not a checkpoint directory")
    return path


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read JSON ({error})") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _source_image_processor_config(src: Path) -> dict[str, Any] | None:
    """The image processor settings saved with a llava-hf checkpoint, if any.

    ``preprocessor_config.json`` holds them flat; transformers 5's ``processor_config.json`` nests them under
    ``image_processor``.
    """
    preprocessor = src / "preprocessor_config.json"
    if preprocessor.is_file():
        return _read_json(preprocessor)
    processor = src / "processor_config.json"
    if processor.is_file():
        nested = _read_json(processor).get("image_processor")
        if isinstance(nested, dict):
            return nested
    return None


def _normalisation(image_config: Mapping[str, Any] | None) -> dict[str, list[float]]:
    """The source's per-channel mean/std, where it states them (else CLIP's defaults apply)."""
    image_config = image_config or {}
    return {name: [float(v) for v in image_config[name]] for name in ("image_mean", "image_std") if image_config.get(name)}


# --------------------------------------------------------------------------------------------------- llava-hf
_HF_SELECT_STRATEGY = {"default": "patch", "full": "full"}


def _hf_llava_config_kwargs(
    hf_config: PreTrainedConfig, tokenizer: PreTrainedTokenizerBase, model_type: str, architecture: str
) -> dict[str, Any]:
    """The :class:`LlavaVidConfig` fields shared by transformers' Llava and LlavaNext configs, after the checks
    both share (model type, projector, feature layer and strategy, ``<image>`` id)."""
    if hf_config.model_type != model_type:
        raise ValueError(
            f"expected a {architecture} checkpoint (model_type {model_type!r}), got model_type={hf_config.model_type!r}"
        )
    if hf_config.projector_hidden_act != "gelu":
        raise ValueError(
            f"projector_hidden_act={hf_config.projector_hidden_act!r} is not supported: our projector is "
            "mlp2x_gelu (Linear, exact GELU, Linear)"
        )
    if not getattr(hf_config, "multimodal_projector_bias", True):
        raise ValueError("multimodal_projector_bias=False is not supported: our projector's Linear layers have biases")
    feature_layer = hf_config.vision_feature_layer
    if not isinstance(feature_layer, int):
        raise ValueError(
            f"vision_feature_layer={feature_layer!r} is not supported: our model takes a single hidden-state index, "
            "not a list of layers to concatenate"
        )
    strategy = hf_config.vision_feature_select_strategy
    if strategy not in _HF_SELECT_STRATEGY:
        raise ValueError(
            f"vision_feature_select_strategy={strategy!r} is not supported; expected one of {list(_HF_SELECT_STRATEGY)}"
        )
    image_token_id = hf_config.image_token_id
    tokenizer_image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if tokenizer_image_id != image_token_id:
        raise ValueError(
            f"the tokenizer maps {IMAGE_TOKEN!r} to id {tokenizer_image_id} but the checkpoint config's "
            f"image_token_id is {image_token_id}; the checkpoint and its tokenizer disagree"
        )
    text_config = copy.deepcopy(hf_config.text_config)
    text_config.vocab_size = max(text_config.vocab_size, len(tokenizer))
    return dict(
        vision_config=copy.deepcopy(hf_config.vision_config),
        text_config=text_config,
        projector_type="mlp2x_gelu",
        vision_feature_layer=feature_layer,
        vision_feature_select=_HF_SELECT_STRATEGY[strategy],
        image_token_id=image_token_id,
    )


def llava_hf_config_to_ours(
    hf_config: PreTrainedConfig, tokenizer: PreTrainedTokenizerBase, image_aspect_mode: str = "crop"
) -> LlavaVidConfig:
    """Map a transformers ``LlavaConfig`` to :class:`LlavaVidConfig`; refuse what our model cannot express.

    Args:
        hf_config: the source ``LlavaConfig``.
        tokenizer: the source tokenizer after :func:`~llava_vid.tokenizer.add_media_tokens`; the language model's
            vocabulary grows to hold all of its ids.
        image_aspect_mode: ``pad`` or ``crop`` (read from the source's image processor by :func:`convert_llava_hf`).

    Raises:
        ValueError: naming the field, for a projector other than biased Linear-GELU-Linear, a list
            ``vision_feature_layer``, an unknown feature-select strategy, or a tokenizer whose ``<image>`` id differs
            from the config's ``image_token_id``.
    """
    kwargs = _hf_llava_config_kwargs(hf_config, tokenizer, "llava", "LlavaForConditionalGeneration")
    return LlavaVidConfig(**kwargs, image_aspect_mode=image_aspect_mode)


def _hf_checkpoint(
    src: str | Path, config_class: type[PreTrainedConfig]
) -> tuple[Path, PreTrainedConfig, PreTrainedTokenizerBase, dict[str, Any] | None]:
    """Read a transformers Llava-family checkpoint directory: its config, its tokenizer (with our media tokens and
    padding) and its image processor settings."""
    src = _require_dir(src)
    hf_config = config_class.from_pretrained(src)
    tokenizer = AutoTokenizer.from_pretrained(src)
    if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) in (None, tokenizer.unk_token_id):
        raise ValueError(
            f"{src}: the tokenizer has no {IMAGE_TOKEN!r} token "
            f"(the config's image_token_id is {hf_config.image_token_id})"
        )
    _prepare_tokenizer(tokenizer)
    return src, hf_config, tokenizer, _source_image_processor_config(src)


def _convert_hf_model(
    src: Path,
    hf_config: PreTrainedConfig,
    model_class: type[PreTrainedModel],
    map_state_dict: Callable[[Mapping[str, Tensor]], dict[str, Tensor]],
    config: LlavaVidConfig,
    tokenizer: PreTrainedTokenizerBase,
    image_config: Mapping[str, Any] | None,
) -> tuple[LlavaVidForConditionalGeneration, LlavaVidProcessor]:
    """Load the transformers model, rename its weights into ours and build the matching processor."""
    hf_model = model_class.from_pretrained(src, config=hf_config, dtype="auto")
    state_dict = map_state_dict(hf_model.state_dict())
    del hf_model
    model = _load_into_model(config, state_dict)
    processor = build_processor(config, tokenizer, TEMPLATE, _normalisation(image_config))
    return model, processor


def convert_llava_hf(src: str | Path) -> tuple[LlavaVidForConditionalGeneration, LlavaVidProcessor]:
    """Convert a local transformers ``LlavaForConditionalGeneration`` checkpoint directory.

    Loads the model and its tokenizer, maps the config (:func:`llava_hf_config_to_ours`) and the weights
    (:func:`map_llava_hf_state_dict`), adds ``<video>`` (growing the vocabulary with mean-initialised rows when
    needed) and loads everything with ``strict=True``. The image aspect mode comes from the source's image
    processor (``do_pad`` → ``pad``, else ``crop``, CLIP's resize and centre-crop, which llava-hf checkpoints use).

    Returns:
        Our model (eval mode, the checkpoint's dtype) and a processor with the ``vicuna_v1`` template.
    """
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    src, hf_config, tokenizer, image_config = _hf_checkpoint(src, LlavaConfig)
    aspect_mode = "pad" if image_config and image_config.get("do_pad") else "crop"
    config = llava_hf_config_to_ours(hf_config, tokenizer, image_aspect_mode=aspect_mode)
    return _convert_hf_model(
        src, hf_config, LlavaForConditionalGeneration, map_llava_hf_state_dict, config, tokenizer, image_config
    )


# ---------------------------------------------------------------------------------------------- llava-next-hf
def llava_next_hf_config_to_ours(
    hf_config: PreTrainedConfig, tokenizer: PreTrainedTokenizerBase
) -> LlavaVidConfig:
    """Map a transformers ``LlavaNextConfig`` to :class:`LlavaVidConfig` (AnyRes, ``spatial_unpad``, newline).

    transformers' LlavaNext always packs tiles as LLaVA-NeXT's ``spatial_unpad`` with one ``image_newline`` per row
    and no ``anyres_max`` shrinking; ``image_grid_pinpoints`` are taken as they are (``[height, width]`` pairs).

    Raises:
        ValueError: naming the field, for everything :func:`llava_hf_config_to_ours` refuses, and for
            ``vision_feature_select_strategy='full'`` (a CLS token does not fit the tile grid, in transformers either).
    """
    kwargs = _hf_llava_config_kwargs(hf_config, tokenizer, "llava_next", "LlavaNextForConditionalGeneration")
    if kwargs["vision_feature_select"] != "patch":
        raise ValueError(
            f"vision_feature_select_strategy={hf_config.vision_feature_select_strategy!r} is not supported for "
            "LLaVA-NeXT: the CLS token does not fit the spatial_unpad tile grid; expected 'default'"
        )
    return LlavaVidConfig(
        **kwargs,
        image_aspect_mode="anyres",
        image_grid_pinpoints=[list(size) for size in hf_config.image_grid_pinpoints],
        image_merge="spatial_unpad",
        anyres_max_tiles=None,
    )


def _check_processor_pinpoints(image_config: Mapping[str, Any] | None, config: LlavaVidConfig) -> None:
    """transformers' LlavaNext processor counts tokens with its own pinpoints and the model packs with the config's;
    a checkpoint where they differ cannot run consistently, so it is refused rather than converted one way."""
    pinpoints = (image_config or {}).get("image_grid_pinpoints")
    if pinpoints is not None and [list(size) for size in pinpoints] != config.image_grid_pinpoints:
        raise ValueError(
            f"the image processor's image_grid_pinpoints={pinpoints} differ from the model config's "
            f"{config.image_grid_pinpoints}; the checkpoint's processor and model disagree"
        )


def convert_llava_next_hf(src: str | Path) -> tuple[LlavaVidForConditionalGeneration, LlavaVidProcessor]:
    """Convert a local transformers ``LlavaNextForConditionalGeneration`` checkpoint directory.

    As :func:`convert_llava_hf`, with the config mapped by :func:`llava_next_hf_config_to_ours` (AnyRes with the
    checkpoint's pinpoints) and the weights by :func:`map_llava_next_hf_state_dict` (plus ``image_newline``).
    Normalisation comes from the source's image processor settings, whose pinpoints must match the config's.

    Returns:
        Our model (eval mode, the checkpoint's dtype) and a processor with the ``vicuna_v1`` template.
    """
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    src, hf_config, tokenizer, image_config = _hf_checkpoint(src, LlavaNextConfig)
    config = llava_next_hf_config_to_ours(hf_config, tokenizer)
    _check_processor_pinpoints(image_config, config)
    return _convert_hf_model(
        src, hf_config, LlavaNextForConditionalGeneration, map_llava_next_hf_state_dict, config, tokenizer, image_config
    )


# ----------------------------------------------------------------------------------------- original LLaVA
_SELECT_FEATURE = {"patch": "patch", "cls_patch": "full"}
_LLAVA_MODEL_TYPES = ("llava", "llava_llama")
# Config keys of LLaVA's multimodal and training machinery; everything else describes the LLaMA.
_LLAVA_ONLY_KEYS = re.compile(
    r"^(mm_.*|image_aspect_ratio|image_grid_pinpoints|image_crop_resolution|image_split_resolution|"
    r"tune_mm_.*|freeze_mm_.*|unfreeze_mm_.*|use_mm_proj|tokenizer_.*|"
    r"architectures|model_type|_name_or_path|transformers_version|torch_dtype|dtype)$"
)


def _text_config_from_llava(cfg: Mapping[str, Any]) -> LlamaConfig:
    kwargs = {key: value for key, value in cfg.items() if not _LLAVA_ONLY_KEYS.match(key)}
    if kwargs.get("rope_scaling", 0) is None:
        del kwargs["rope_scaling"]  # LLaMA-1/2 configs write null; transformers 5 warns on the legacy key
    return LlamaConfig(**kwargs)


def llava_config_to_ours(
    cfg: Mapping[str, Any], vision_config: PreTrainedConfig, tokenizer: PreTrainedTokenizerBase
) -> LlavaVidConfig:
    """Map an original LLaVA ``config.json`` (a dict) to :class:`LlavaVidConfig`.

    Reads ``mm_projector_type`` (``linear`` when absent, as in LLaVA), ``mm_vision_select_layer``,
    ``mm_vision_select_feature`` (``patch`` → ``patch``, ``cls_patch`` → ``full``) and ``image_aspect_ratio``
    (``pad`` → ``pad``; ``anyres``/``anyres_max_N`` → AnyRes with the config's ``image_grid_pinpoints`` and
    ``mm_patch_merge_type``; anything else → ``crop``, CLIP's resize and centre-crop).

    Args:
        cfg: the checkpoint's ``config.json``.
        vision_config: the CLIP tower's vision config (``mm_vision_tower`` or an override).
        tokenizer: the tokenizer after :func:`~llava_vid.tokenizer.add_media_tokens`; the vocabulary grows to
            hold its ids and ``image_token_id`` is its ``<image>`` id.

    Raises:
        ValueError: naming the field, for an AnyRes merge type we do not reproduce, ``<im_start>``/``<im_patch>`` tokens, an unknown projector or
            feature selection, a missing select layer, a non-LLaMA LLaVA, or a tower width that disagrees with
            ``mm_hidden_size``.
    """
    if "text_config" in cfg:
        raise ValueError("this config has a text_config: it is a transformers Llava checkpoint, use --from llava-hf")
    model_type = cfg.get("model_type")
    if model_type not in _LLAVA_MODEL_TYPES:
        raise ValueError(
            f"model_type={model_type!r} is not supported; expected one of {list(_LLAVA_MODEL_TYPES)} "
            "(LlavaLlamaForCausalLM; Mistral/MPT LLaVA variants are not supported)"
        )
    architectures = cfg.get("architectures") or ["LlavaLlamaForCausalLM"]
    if architectures != ["LlavaLlamaForCausalLM"]:
        raise ValueError(f"architectures={architectures!r} is not supported; expected ['LlavaLlamaForCausalLM']")

    aspect_modes = _llava_aspect_modes(cfg)
    for flag in ("mm_use_im_start_end", "mm_use_im_patch_token"):
        if cfg.get(flag):
            raise ValueError(f"{flag}=True is not supported: our model has no <im_start>/<im_end>/<im_patch> tokens")

    projector_type = cfg.get("mm_projector_type", "linear")
    try:
        projector_depth(projector_type)
    except ValueError as error:
        raise ValueError(f"mm_projector_type={projector_type!r} is not supported: {error}") from error

    select_feature = cfg.get("mm_vision_select_feature", "patch")
    if select_feature not in _SELECT_FEATURE:
        raise ValueError(
            f"mm_vision_select_feature={select_feature!r} is not supported; expected one of {list(_SELECT_FEATURE)}"
        )
    if "mm_vision_select_layer" not in cfg:
        raise ValueError("the config has no mm_vision_select_layer; is this a LLaVA checkpoint?")
    mm_hidden_size = cfg.get("mm_hidden_size")
    if mm_hidden_size is not None and mm_hidden_size != vision_config.hidden_size:
        raise ValueError(
            f"mm_hidden_size={mm_hidden_size} but the vision tower's hidden_size is {vision_config.hidden_size}; "
            "wrong --vision-tower?"
        )

    text_config = _text_config_from_llava(cfg)
    text_config.vocab_size = max(text_config.vocab_size, len(tokenizer))
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        token_id = getattr(tokenizer, name)
        if token_id is not None:
            setattr(text_config, name, token_id)
    return LlavaVidConfig(
        vision_config=copy.deepcopy(vision_config),
        text_config=text_config,
        projector_type=projector_type,
        vision_feature_layer=int(cfg["mm_vision_select_layer"]),
        vision_feature_select=_SELECT_FEATURE[select_feature],
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        **aspect_modes,
    )


# LLaVA's mm_patch_merge_type values we reproduce exactly (its "spatial" has no row newline, ours does).
_LLAVA_MERGE_TYPES = {"flat": "flat", "spatial_unpad": "spatial_unpad"}


def _llava_aspect_modes(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``image_aspect_ratio`` (+ ``mm_patch_merge_type``, ``image_grid_pinpoints`` for AnyRes) → our fields.

    ``pad`` → ``pad``; ``anyres``/``anyres_max_N`` → AnyRes (LLaVA-NeXT / OneVision); anything else
    (``square``, absent) → ``crop``, CLIP's resize and centre-crop.
    """
    aspect = str(cfg.get("image_aspect_ratio") or "square")
    if not aspect.startswith("anyres"):
        return {"image_aspect_mode": "pad" if aspect == "pad" else "crop"}
    mode, max_tiles = parse_aspect_ratio(aspect)
    merge = cfg.get("mm_patch_merge_type", "flat")
    if merge not in _LLAVA_MERGE_TYPES:
        raise ValueError(
            f"mm_patch_merge_type={merge!r} is not supported; expected one of {list(_LLAVA_MERGE_TYPES)}"
        )
    if "image_grid_pinpoints" not in cfg:
        raise ValueError(f"image_aspect_ratio={aspect!r} needs image_grid_pinpoints in the config")
    return {
        "image_aspect_mode": mode,
        "anyres_max_tiles": max_tiles,
        "image_merge": _LLAVA_MERGE_TYPES[merge],
        "image_grid_pinpoints": cfg["image_grid_pinpoints"],
    }


def _load_vision_config(tower: str) -> PreTrainedConfig:
    try:
        config = AutoConfig.from_pretrained(tower)
    except OSError as error:
        raise ValueError(
            f"cannot load the vision tower config from {tower!r} ({error}); pass a local CLIP checkpoint with "
            "--vision-tower"
        ) from error
    # A full CLIP checkpoint holds text and vision configs; the tower is the vision half.
    return getattr(config, "vision_config", None) or config


def _read_state_dict_file(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def read_checkpoint_weights(src: str | Path) -> dict[str, Tensor]:
    """All weights of a checkpoint directory: ``model*.safetensors`` shards, else ``pytorch_model*.bin`` shards.

    A ``*.index.json`` names the shards when present. ``.bin`` files are read with ``weights_only=True``.

    Raises:
        ValueError: when no weight file is found or two shards hold the same key.
    """
    src = Path(src)
    for index_name, pattern in (
        ("model.safetensors.index.json", "model*.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model*.bin"),
    ):
        index = src / index_name
        if index.is_file():
            files = sorted({src / name for name in _read_json(index)["weight_map"].values()})
        else:
            files = sorted(src.glob(pattern))
        if files:
            break
    else:
        raise ValueError(f"{src}: no model*.safetensors or pytorch_model*.bin weights found")
    weights: dict[str, Tensor] = {}
    for file in files:
        shard = _read_state_dict_file(file)
        duplicated = sorted(set(shard) & set(weights))
        if duplicated:
            raise ValueError(f"{file}: keys already read from another shard: {duplicated[:10]}")
        weights.update(shard)
    return weights


def _read_llava_config(src: Path, projector: Path | None) -> dict[str, Any]:
    """``src/config.json``; a LLM-only ``src`` borrows the multimodal settings from the projector's directory.

    LLaVA's stage 1 writes ``mm_projector.bin`` next to a full LLaVA ``config.json``, so a base LLM plus a
    stage-1 projector converts with the settings stage 1 trained under.
    """
    cfg = _read_json(src / "config.json")
    if "mm_vision_tower" in cfg or projector is None:
        return cfg
    projector_config = projector.parent / "config.json"
    if not projector_config.is_file():
        return cfg
    stage1 = _read_json(projector_config)
    merged = dict(cfg)
    for key, value in stage1.items():
        if _LLAVA_ONLY_KEYS.match(key) and key not in ("_name_or_path", "transformers_version", "torch_dtype", "dtype"):
            merged[key] = value
    return merged


def convert_llava(
    src: str | Path, *, vision_tower: str | None = None, projector: str | Path | None = None
) -> tuple[LlavaVidForConditionalGeneration, LlavaVidProcessor]:
    """Convert a local original-LLaVA (``LlavaLlamaForCausalLM``) checkpoint directory.

    Args:
        src: directory with ``config.json``, the tokenizer and ``model*.safetensors`` or ``pytorch_model*.bin``.
        vision_tower: CLIP checkpoint (hub id or local path) overriding the config's ``mm_vision_tower``. Its
            config always defines the tower; its weights are used when the checkpoint did not save the tower.
        projector: a stage-1 ``mm_projector.bin``; it provides (or replaces) the projector weights. If ``src``'s
            config has no multimodal settings, they are read from the ``config.json`` beside this file.

    Returns:
        Our model (eval mode, the checkpoint's dtype) and a processor with the ``vicuna_v1`` template. The
        tokenizer gains ``<image>``/``<video>`` and the vocabulary grows with mean-initialised rows.
    """
    src = _require_dir(src)
    projector_path = Path(projector) if projector is not None else None
    if projector_path is not None and not projector_path.is_file():
        raise ValueError(f"{projector_path}: no such projector file")
    cfg = _read_llava_config(src, projector_path)
    tower = vision_tower or cfg.get("mm_vision_tower")
    if not tower:
        raise ValueError(f"{src}/config.json has no mm_vision_tower; pass the CLIP checkpoint with --vision-tower")
    # config= keeps AutoTokenizer from reading config.json's model_type "llava" as transformers' LlavaConfig.
    tokenizer = AutoTokenizer.from_pretrained(src, config=_text_config_from_llava(cfg))
    _prepare_tokenizer(tokenizer)
    vision_config = _load_vision_config(tower)
    config = llava_config_to_ours(cfg, vision_config, tokenizer)

    projector_state_dict = None
    if projector_path is not None:
        projector_state_dict = torch.load(projector_path, map_location="cpu", weights_only=True)
    state_dict = map_llava_state_dict(read_checkpoint_weights(src), projector_state_dict=projector_state_dict)
    if not any(key.startswith("projector.") for key in state_dict) and projector_depth(config.projector_type) > 0:
        raise ValueError(f"{src} holds no mm_projector weights; pass the stage-1 mm_projector.bin with --projector")
    if not any(key.startswith("vision_tower.") for key in state_dict):
        state_dict.update(_load_tower_weights(config, tower, _embedding(state_dict).dtype))
    model = _load_into_model(config, state_dict)
    return model, build_processor(config, tokenizer, TEMPLATE)


def _load_tower_weights(config: LlavaVidConfig, tower: str, dtype: torch.dtype) -> dict[str, Tensor]:
    """The tower's weights from its own checkpoint (LLaVA checkpoints usually do not save the frozen tower)."""
    with torch.device("meta"):
        tower_class = type(AutoModel.from_config(config.vision_config))  # e.g. CLIPVisionModel, as our model builds it
    try:
        tower_model = tower_class.from_pretrained(tower, dtype=dtype)
    except OSError as error:
        raise ValueError(
            f"cannot load vision tower weights from {tower!r} ({error}); pass a local CLIP checkpoint with "
            "--vision-tower"
        ) from error
    return {f"vision_tower.{key}": value for key, value in tower_model.state_dict().items()}


# ------------------------------------------------------------------------------------------------------ saving
def save_converted(
    model: LlavaVidForConditionalGeneration, processor: LlavaVidProcessor, dst: str | Path
) -> list[Path]:
    """``save_pretrained`` the model and the processor into ``dst``; returns the files now in ``dst``.

    The result loads with ``AutoModelForImageTextToText.from_pretrained(dst)`` and
    ``AutoProcessor.from_pretrained(dst)`` once ``llava_vid`` is imported.
    """
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst)
    processor.save_pretrained(dst)
    return sorted(path for path in dst.iterdir() if path.is_file())
