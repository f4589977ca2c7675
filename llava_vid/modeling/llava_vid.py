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
from llava_vid.geometry import ImagePlan, VideoPlan, num_image_tokens, num_video_tokens
from llava_vid.modeling.anyres import pack_images
from llava_vid.modeling.compression import ContextCompressor, pool_content
from llava_vid.modeling.merge import count_placeholders, merge_visual_features
from llava_vid.modeling.projector import build_projector
from llava_vid.modeling.vision import VisionFeatureCache, encode_images
from llava_vid.processing.processor import IGNORE_INDEX


MEDIA_INPUTS = {"image": "pixel_values", "video": "pixel_values_videos"}  # where each kind's pixels arrive


def labelled_targets(labels: torch.LongTensor) -> torch.LongTensor:
    """``(B, L)`` → ``(B, L)``: the label each position predicts (the next one; ``IGNORE_INDEX`` at the end)."""
    return nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def labelled_positions(labels: torch.LongTensor) -> torch.Tensor:
    """``(B, L)`` bool: the positions whose logits the loss reads (a label follows them). Passed as
    ``logits_to_keep`` with ``labels``, the model projects only these onto the vocabulary: in training
    most positions are visual or prompt tokens, whose logits the loss never reads."""
    return labelled_targets(labels) != IGNORE_INDEX


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
    # The KV cache is `cache` in current transformers 5.x and `past_key_values` in earlier ones.
    _skip_keys_device_placement = ["cache", "past_key_values"]
    # Keep a transformer block on one device when sharding with device_map="auto".
    _no_split_modules = ["CLIPEncoderLayer", "LlamaDecoderLayer", "InstructBlipQFormerLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, LlavaVidForConditionalGeneration) and module.image_newline is not None:
            nn.init.normal_(module.image_newline, std=module.image_newline.shape[0] ** -0.5)
        elif isinstance(module, ContextCompressor):
            module.reset_parameters()  # its query tokens are a bare Parameter the generic init skips


class LlavaVidForConditionalGeneration(LlavaVidPreTrainedModel, GenerationMixin):
    """A LLaVA model: ``input_ids`` hold one ``image_token_id`` per image token and one
    ``video_token_id`` per video token.

    ``forward`` encodes all images of the batch in one (chunked) vision pass, projects and packs them
    (global view, AnyRes tiles); videos become per-frame context + content tokens; the placeholder
    counts are checked against the features, which are scattered into the text embeddings before the
    language model runs. ``generate`` comes from transformers; pixel inputs are used on the prefill
    step only (transformers drops them once the KV cache holds the prompt).
    """

    def __init__(self, config: LlavaVidConfig) -> None:
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.init_multimodal_parts()
        # Off unless a training stage turns it on (``vision_feature_cache_gib``); not part of the weights.
        self.vision_feature_cache: VisionFeatureCache | None = None
        self.post_init()

    def init_multimodal_parts(self) -> None:
        """(Re)create the parts that exist only in this model, freshly initialised: the projector, the
        video compressor (LLaMA-VID's context tokens: a Q-Former reads each frame, guided by the
        instruction) and the AnyRes row newline. Used by ``__init__`` and when pretrained parts are
        assembled around them."""
        config = self.config
        self.projector = build_projector(
            config.projector_type, config.vision_config.hidden_size, config.text_config.hidden_size
        )
        self.video_compressor = (
            ContextCompressor(
                config.qformer_config,
                vision_width=config.vision_config.hidden_size,
                text_width=config.text_config.hidden_size,
                num_queries=config.video_num_queries,
            )
            if config.has_video
            else None
        )
        # Ends every AnyRes grid row (and a lone global view) so the LLM can see the 2-D layout.
        self.image_newline = None
        if config.has_image_newline:
            self.image_newline = nn.Parameter(torch.empty(config.text_config.hidden_size))
            # LLaVA-NeXT's choice: a random direction at the scale of a unit-variance embedding.
            nn.init.normal_(self.image_newline, std=config.text_config.hidden_size**-0.5)

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
            cache=self.vision_feature_cache,
        )  # (V, P, D_vision)
        projected = self.projector(features.to(self._projector_dtype()))  # (V, P, D_text)
        return pack_images(projected, plans, self.config.vision_geometry(), self.image_newline)  # (T, D_text)

    def get_video_features(
        self,
        pixel_values_videos: torch.Tensor,
        video_frames: torch.Tensor,
        video_grids: torch.Tensor,
        qformer_input_ids: torch.Tensor,
        qformer_attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Visual tokens of a batch of videos: per frame one context token, then ``g²`` content tokens.

        Args:
            pixel_values_videos: ``(F, 3, S, S)``, every frame of every video, video after video.
            video_frames, video_grids: ``(V,)`` frames and content grid ``g`` per video.
            qformer_input_ids, qformer_attention_mask: ``(V, L)``, each video's instruction.

        Returns:
            ``(T, D_text)`` with ``T = sum(frames × (1 + g²))``. Frames go through the tower, the
            pooling and the Q-Former ``vision_chunk_size`` at a time and only their few tokens are kept,
            so memory does not grow with the patch features of an hour of video.
        """
        if self.video_compressor is None:
            raise ValueError("this model has no video compressor (qformer_config is None); it cannot take videos")
        chunk = self.config.vision_chunk_size
        outputs = []
        frames_per_video = video_frames.tolist()
        for video, (frames, grid) in enumerate(zip(pixel_values_videos.split(frames_per_video), video_grids.tolist())):
            for start in range(0, len(frames), chunk):
                frame_chunk = frames[start : start + chunk]  # (n, 3, S, S)
                features = encode_images(
                    self.vision_tower,
                    frame_chunk,
                    feature_layer=self.config.vision_feature_layer,
                    feature_select="patch",  # pooling needs the square patch grid, no CLS
                    chunk_size=chunk,
                    cache=self.vision_feature_cache,
                )  # (n, P, D_vision)
                content = self.projector(pool_content(features, grid).to(self._projector_dtype()))  # (n, g², D_text)
                if not self.config.video_context_token:
                    outputs.append(content.flatten(0, 1))  # (n·g², D)
                    continue
                instruction = qformer_input_ids[video].expand(len(frame_chunk), -1)  # (n, L)
                mask = qformer_attention_mask[video].expand(len(frame_chunk), -1)  # (n, L)
                context = self.video_compressor(features, instruction, mask, chunk_size=chunk)  # (n, 1, D_text)
                outputs.append(torch.cat([context.to(content.dtype), content], dim=1).flatten(0, 1))  # (n·(1+g²), D)
        return torch.cat(outputs)  # (T, D_text)

    def _projector_dtype(self) -> torch.dtype:
        first_param = next(self.projector.parameters(), None)
        return first_param.dtype if first_param is not None else self.get_input_embeddings().weight.dtype

    def _image_counts(self, plans: list[ImagePlan]) -> list[int]:
        geometry = self.config.vision_geometry()
        return [num_image_tokens(geometry, plan) for plan in plans]

    def video_plans(self, video_frames: torch.Tensor | None, video_grids: torch.Tensor | None) -> list[VideoPlan]:
        if video_frames is None or video_grids is None or len(video_frames) != len(video_grids):
            raise ValueError("pixel_values_videos need video_frames and video_grids with one entry per video")
        context = self.config.video_context_token
        return [VideoPlan(frames, grid, context) for frames, grid in zip(video_frames.tolist(), video_grids.tolist())]

    @staticmethod
    def _check_tokens(
        kind: str, input_ids: torch.Tensor, placeholder_id: int, counts: list[int], processor_counts: torch.Tensor | None
    ) -> None:
        """Fail with both numbers, before any vision work, when placeholders and media disagree."""
        if processor_counts is not None:
            if len(processor_counts) != len(counts):
                raise ValueError(f"{kind}_token_counts has {len(processor_counts)} entries for {len(counts)} {kind}s")
            for index, (theirs, ours) in enumerate(zip(processor_counts.tolist(), counts)):
                if theirs != ours:
                    raise ValueError(
                        f"{kind} {index}: the processor expanded it to {theirs} tokens but the model's "
                        f"config gives {ours}; were they saved from different configs?"
                    )
        num_placeholders = count_placeholders(input_ids, placeholder_id)
        if num_placeholders != sum(counts):
            raise ValueError(
                f"input_ids hold {num_placeholders} {kind} tokens (id {placeholder_id}) but the "
                f"{len(counts)} {kind}s in {MEDIA_INPUTS[kind]} need {sum(counts)}"
            )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        image_sizes: torch.Tensor | None = None,
        image_grids: torch.Tensor | None = None,
        image_token_counts: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_frames: torch.Tensor | None = None,
        video_grids: torch.Tensor | None = None,
        video_token_counts: torch.Tensor | None = None,
        qformer_input_ids: torch.Tensor | None = None,
        qformer_attention_mask: torch.Tensor | None = None,
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
            pixel_values_videos: ``(F, 3, S, S)`` every frame of the batch's videos, in placeholder order,
                with ``video_frames``/``video_grids``/``video_token_counts`` ``(V,)`` and the videos'
                instructions ``qformer_input_ids``/``qformer_attention_mask`` ``(V, L)``.
            labels: ``(B, L)``, -100 where no loss is taken; shifted inside the language model.
            logits_to_keep: as in transformers (``0``: every position); with ``labels``, a ``(B, L)`` bool
                mask such as :func:`labelled_positions` computes the logits only there (``(K, V)``) and the
                loss from them — the same loss, without a vocabulary-wide projection of every visual
                and prompt token (training's way: ``StageTrainer.compute_loss``).
            kwargs: go to the language model unchanged, the KV cache among them under the name this
                transformers version gives it (``cache``, formerly ``past_key_values``).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)  # (B, L, D)
            # Counts are checked on the prefill step even without media (no stray placeholders); once the
            # prompt is cached, a sampled placeholder id is just a token, not a missing image.
            prefill = self._is_prefill(kwargs.get("cache", kwargs.get("past_key_values")))
            inputs_embeds = self._embed_images(
                input_ids, inputs_embeds, prefill, pixel_values, image_sizes, image_grids, image_token_counts
            )
            inputs_embeds = self._embed_videos(
                input_ids,
                inputs_embeds,
                prefill,
                pixel_values_videos,
                video_frames,
                video_grids,
                video_token_counts,
                qformer_input_ids,
                qformer_attention_mask,
            )
        elif pixel_values is not None or pixel_values_videos is not None:
            raise ValueError("pixel values need input_ids to locate the media tokens; got inputs_embeds instead")

        if labels is not None and isinstance(logits_to_keep, torch.Tensor) and logits_to_keep.dtype == torch.bool:
            return self._loss_at_positions(attention_mask, position_ids, inputs_embeds, labels, use_cache, logits_to_keep, kwargs)
        return self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    def _loss_at_positions(
        self,
        attention_mask: torch.Tensor | None,
        position_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor,
        labels: torch.LongTensor,
        use_cache: bool | None,
        keep: torch.Tensor,
        kwargs: dict,
    ) -> CausalLMOutputWithPast:
        """The language model's loss with logits only at the ``keep`` positions (``(B, L)`` bool); the
        loss is the full one when ``keep`` covers every labelled position (:func:`labelled_positions`)."""
        if keep.shape != labels.shape:
            raise ValueError(f"logits_to_keep is a {tuple(keep.shape)} mask but labels are {tuple(labels.shape)}")
        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            logits_to_keep=keep,
            **kwargs,
        )  # logits: (K, V), K = keep.sum()
        targets = labelled_targets(labels)[keep]  # (K,) the token each kept position predicts
        outputs.loss = self.language_model.loss_function(
            logits=outputs.logits,
            labels=None,
            vocab_size=self.language_model.config.vocab_size,
            shift_labels=targets,
            **kwargs,
        )
        return outputs

    def _embed_images(
        self,
        input_ids: torch.Tensor,
        inputs_embeds: torch.Tensor,
        prefill: bool,
        pixel_values: torch.Tensor | None,
        image_sizes: torch.Tensor | None,
        image_grids: torch.Tensor | None,
        image_token_counts: torch.Tensor | None,
    ) -> torch.Tensor:
        """Check the image placeholders and scatter the images' visual tokens into ``inputs_embeds``."""
        if pixel_values is None and not prefill:
            return inputs_embeds
        num_images = 0
        if pixel_values is not None:
            num_images = pixel_values.shape[0] if image_grids is None else len(image_grids)
        plans = self.image_plans(num_images, image_sizes, image_grids)
        self._check_tokens("image", input_ids, self.config.image_token_id, self._image_counts(plans), image_token_counts)
        if pixel_values is None:
            return inputs_embeds
        features = self.get_image_features(pixel_values, image_sizes, image_grids)  # (T, D)
        return merge_visual_features(inputs_embeds, input_ids, self.config.image_token_id, features)

    def _embed_videos(
        self,
        input_ids: torch.Tensor,
        inputs_embeds: torch.Tensor,
        prefill: bool,
        pixel_values_videos: torch.Tensor | None,
        video_frames: torch.Tensor | None,
        video_grids: torch.Tensor | None,
        video_token_counts: torch.Tensor | None,
        qformer_input_ids: torch.Tensor | None,
        qformer_attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Check the video placeholders and scatter the videos' visual tokens into ``inputs_embeds``."""
        if self.config.video_token_id is None or (pixel_values_videos is None and not prefill):
            return inputs_embeds
        plans = self.video_plans(video_frames, video_grids) if pixel_values_videos is not None else []
        counts = [num_video_tokens(plan) for plan in plans]
        self._check_tokens("video", input_ids, self.config.video_token_id, counts, video_token_counts)
        if pixel_values_videos is None:
            return inputs_embeds
        features = self.get_video_features(
            pixel_values_videos, video_frames, video_grids, qformer_input_ids, qformer_attention_mask
        )  # (T, D)
        return merge_visual_features(inputs_embeds, input_ids, self.config.video_token_id, features)

    @staticmethod
    def _is_prefill(cache: Cache | None) -> bool:
        return cache is None or cache.get_seq_length() == 0
