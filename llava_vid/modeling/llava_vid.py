"""``LlavaVidForConditionalGeneration``: vision tower → projector → causal language model.

Composition, not inheritance: the model *holds* a transformers vision model and a transformers
causal LM built from the two sub-configs. It knows nothing about training (freezing and parameter
groups live in the training package).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

from llava_vid.config import LlavaVidConfig
from llava_vid.geometry import VisionGeometry, num_image_tokens
from llava_vid.modeling.merge import count_placeholders, merge_visual_features
from llava_vid.modeling.projector import build_projector
from llava_vid.modeling.vision import encode_images


def vision_geometry(config: LlavaVidConfig) -> VisionGeometry:
    """The geometry of the model's vision tower, as the shared token-count function wants it."""
    return VisionGeometry(
        image_size=config.vision_config.image_size,
        patch_size=config.vision_config.patch_size,
        feature_select=config.vision_feature_select,
    )


class LlavaVidPreTrainedModel(PreTrainedModel):
    config_class = LlavaVidConfig
    config: LlavaVidConfig
    base_model_prefix = ""
    input_modalities = ("image", "text")
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _skip_keys_device_placement = ["past_key_values"]
    # Keep a transformer block on one device when sharding with device_map="auto".
    _no_split_modules = ["CLIPEncoderLayer", "LlamaDecoderLayer"]


class LlavaVidForConditionalGeneration(LlavaVidPreTrainedModel, GenerationMixin):
    """A LLaVA model: ``input_ids`` hold one ``image_token_id`` per visual token.

    ``forward`` encodes all images of the batch in one (chunked) vision pass, projects them, checks
    the placeholder count against the features, scatters them into the text embeddings and runs the
    language model. ``generate`` comes from transformers; ``pixel_values`` are used on the prefill
    step only (transformers drops them once the KV cache holds the prompt).
    """

    def __init__(self, config: LlavaVidConfig) -> None:
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.projector = build_projector(
            config.projector_type, config.vision_config.hidden_size, config.text_config.hidden_size
        )
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.post_init()

    # --- embeddings, delegated so resize_token_embeddings / tying / generate work unchanged ---
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    @property
    def tokens_per_image(self) -> int:
        return num_image_tokens(vision_geometry(self.config))

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected visual tokens of a stack of images.

        Args:
            pixel_values: ``(N, 3, H, W)``.

        Returns:
            ``(N * tokens_per_image, D_text)``, image after image.
        """
        features = encode_images(
            self.vision_tower,
            pixel_values,
            feature_layer=self.config.vision_feature_layer,
            feature_select=self.config.vision_feature_select,
            chunk_size=self.config.vision_chunk_size,
        )  # (N, P, D_vision)
        projected = self.projector(features.to(self._projector_dtype()))  # (N, P, D_text)
        return projected.flatten(0, 1)  # (N * P, D_text)

    def _projector_dtype(self) -> torch.dtype:
        first_param = next(self.projector.parameters(), None)
        return first_param.dtype if first_param is not None else self.get_input_embeddings().weight.dtype

    def _check_image_count(self, input_ids: torch.Tensor, num_images: int) -> None:
        """Fail with both counts, in images, before any scatter happens."""
        placeholder_id = self.config.image_token_id
        num_placeholders = count_placeholders(input_ids, placeholder_id)
        per_image = self.tokens_per_image
        if num_placeholders != num_images * per_image:
            raise ValueError(
                f"input_ids hold {num_placeholders} image tokens (id {placeholder_id}), i.e. "
                f"{num_placeholders / per_image:g} images at {per_image} tokens each, but pixel_values hold "
                f"{num_images} images ({num_images * per_image} tokens)"
            )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Run the model.

        Args:
            input_ids: ``(B, L)`` with one ``image_token_id`` per visual token.
            attention_mask: ``(B, L)``, 0 on (left) padding.
            pixel_values: ``(N, 3, H, W)``, the images of the whole batch in placeholder order.
            labels: ``(B, L)``, -100 where no loss is taken; shifted inside the language model.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)  # (B, L, D)
            if pixel_values is not None:
                self._check_image_count(input_ids, pixel_values.shape[0])
                features = self.get_image_features(pixel_values)  # (T, D)
                inputs_embeds = merge_visual_features(inputs_embeds, input_ids, self.config.image_token_id, features)
            elif self._is_prefill(past_key_values):
                self._check_image_count(input_ids, 0)
        elif pixel_values is not None:
            raise ValueError("pixel_values need input_ids to locate the image tokens; got inputs_embeds instead")

        return self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    @staticmethod
    def _is_prefill(past_key_values: Cache | None) -> bool:
        # After the prompt is cached, a sampled image-token id is just a token, not a missing image.
        return past_key_values is None or past_key_values.get_seq_length() == 0
