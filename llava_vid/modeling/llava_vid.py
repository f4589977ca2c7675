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
from llava_vid.geometry import ImagePlan, num_image_tokens
from llava_vid.modeling.anyres import pack_images
from llava_vid.modeling.merge import count_placeholders, merge_visual_features
from llava_vid.modeling.projector import build_projector
from llava_vid.modeling.vision import encode_images


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

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, LlavaVidForConditionalGeneration) and module.image_newline is not None:
            # LLaVA-NeXT's choice: a random direction at the scale of a unit-variance embedding.
            width = module.image_newline.shape[0]
            nn.init.normal_(module.image_newline, std=width**-0.5)


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
        # Ends every AnyRes grid row (and a lone global view) so the LLM can see the 2-D layout.
        self.image_newline = (
            nn.Parameter(torch.empty(config.text_config.hidden_size)) if config.has_image_newline else None
        )
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
        """Tokens of an image shown as its global view only (LLaVA-1.5: every image)."""
        return num_image_tokens(self.config.vision_geometry())

    def image_plans(
        self, num_images: int, image_sizes: torch.Tensor | None, image_grids: torch.Tensor | None
    ) -> list[ImagePlan]:
        """Per-image plans from the processor's ``image_sizes`` and ``image_grids`` ``(N, 2)`` tensors.

        Without ``image_grids`` every image is a single global view (LLaVA-1.5 inputs).
        """
        if image_grids is None:
            return [ImagePlan((0, 0)) for _ in range(num_images)]
        if image_sizes is None or len(image_sizes) != len(image_grids):
            raise ValueError("image_grids needs image_sizes with one (height, width) per image")
        return [ImagePlan(tuple(size), tuple(grid)) for size, grid in zip(image_sizes.tolist(), image_grids.tolist())]

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor | None = None,
        image_grids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Visual tokens of a batch of images, ready to scatter.

        Args:
            pixel_values: ``(V, 3, S, S)``: per image its global view, then its tiles row-major.
            image_sizes, image_grids: ``(N, 2)`` original ``(height, width)`` and tile ``(rows, cols)``.

        Returns:
            ``(T, D_text)``, image after image, ``T = sum(num_image_tokens(...))``.
        """
        num_images = pixel_values.shape[0] if image_grids is None else len(image_grids)
        plans = self.image_plans(num_images, image_sizes, image_grids)
        num_views = sum(plan.num_views for plan in plans)
        if pixel_values.shape[0] != num_views:
            raise ValueError(
                f"pixel_values hold {pixel_values.shape[0]} views but image_grids describe {num_views} "
                f"(global views plus tiles of {len(plans)} images)"
            )
        features = encode_images(
            self.vision_tower,
            pixel_values,
            feature_layer=self.config.vision_feature_layer,
            feature_select=self.config.vision_feature_select,
            chunk_size=self.config.vision_chunk_size,
        )  # (V, P, D_vision)
        projected = self.projector(features.to(self._projector_dtype()))  # (V, P, D_text)
        return pack_images(projected, plans, self.config.vision_geometry(), self.image_newline)  # (T, D_text)

    def _projector_dtype(self) -> torch.dtype:
        first_param = next(self.projector.parameters(), None)
        return first_param.dtype if first_param is not None else self.get_input_embeddings().weight.dtype

    def _check_image_tokens(
        self, input_ids: torch.Tensor, plans: list[ImagePlan], image_token_counts: torch.Tensor | None = None
    ) -> None:
        """Fail with both counts, before any vision work, when placeholders and images disagree."""
        geometry = self.config.vision_geometry()
        counts = [num_image_tokens(geometry, plan) for plan in plans]
        if image_token_counts is not None:
            if len(image_token_counts) != len(counts):
                raise ValueError(f"image_token_counts has {len(image_token_counts)} entries for {len(counts)} images")
            for index, (theirs, ours) in enumerate(zip(image_token_counts.tolist(), counts)):
                if theirs != ours:
                    raise ValueError(
                        f"image {index}: the processor expanded it to {theirs} tokens but the model's "
                        f"config gives {ours}; were they saved from different configs?"
                    )
        placeholder_id = self.config.image_token_id
        num_placeholders = count_placeholders(input_ids, placeholder_id)
        expected = sum(counts)
        if num_placeholders != expected:
            raise ValueError(
                f"input_ids hold {num_placeholders} image tokens (id {placeholder_id}) but the "
                f"{len(plans)} images in pixel_values need {expected}"
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
        image_sizes: torch.Tensor | None = None,
        image_grids: torch.Tensor | None = None,
        image_token_counts: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Run the model.

        Args:
            input_ids: ``(B, L)`` with one ``image_token_id`` per visual token.
            attention_mask: ``(B, L)``, 0 on (left) padding.
            pixel_values: ``(V, 3, S, S)``, the views of the batch's images in placeholder order.
            image_sizes, image_grids: ``(N, 2)`` per image, from the processor (AnyRes); absent for
                LLaVA-1.5 inputs, where every image is one view.
            image_token_counts: ``(N,)`` the processor's token count per image; checked when given.
            labels: ``(B, L)``, -100 where no loss is taken; shifted inside the language model.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)  # (B, L, D)
            if pixel_values is not None:
                num_images = pixel_values.shape[0] if image_grids is None else len(image_grids)
                plans = self.image_plans(num_images, image_sizes, image_grids)
                self._check_image_tokens(input_ids, plans, image_token_counts)
                features = self.get_image_features(pixel_values, image_sizes, image_grids)  # (T, D)
                inputs_embeds = merge_visual_features(inputs_embeds, input_ids, self.config.image_token_id, features)
            elif self._is_prefill(past_key_values):
                self._check_image_tokens(input_ids, [])
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
