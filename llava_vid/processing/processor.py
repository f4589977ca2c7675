"""``LlavaVidProcessor``: chat messages or prompts → ``input_ids``, ``attention_mask``, ``pixel_values``, ``labels``.

Each ``<image>`` placeholder is tokenised as one id and then expanded to exactly
:func:`~llava_vid.geometry.num_image_tokens` copies for that image's plan (global view or AnyRes
tiles, chosen per request by :mod:`~llava_vid.processing.planning`) — the same function the model
checks against.
Expansion happens on ids (a ``repeat_interleave``), so target spans, offsets and left padding are
computed on the short, human-readable text and stay exact.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from transformers import PreTrainedTokenizerBase, ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature

import numpy as np

from llava_vid.geometry import VideoPlan, VisionGeometry, num_image_tokens, num_video_tokens, uses_newline
from llava_vid.modes import ImageTreatment, MergeMode, VisionFeatureSelect
from llava_vid.processing.image_processor import LlavaVidImageProcessor
from llava_vid.processing.media import load_image
from llava_vid.processing.planning import (
    image_treatment_beside_videos,
    kept_frames,
    plan_request,
    plan_request_videos,
    request_tokens,
)
from llava_vid.processing.templates import RenderedPrompt, TemplateName, VideoPart, check_template_name, render
from llava_vid.processing.video import FrameSampling, VideoClip, load_video
from llava_vid.tokenizer import IMAGE_TOKEN, VIDEO_TOKEN

IGNORE_INDEX = -100  # label value the loss skips (transformers' convention)


class PromptTooLongError(ValueError):
    """A prompt longer than the tokenizer's maximum after media expansion (never truncated)."""


class NoTargetError(ValueError):
    """A training conversation whose labels would all be masked."""

Conversation = list[dict[str, Any]]


class LlavaVidProcessor(ProcessorMixin):
    """Bundles the image processor and the tokenizer.

    Args:
        image_processor: a :class:`LlavaVidImageProcessor`.
        tokenizer: any fast tokenizer holding ``<image>`` as a special token.
        patch_size: the vision tower's patch size (from the model config).
        vision_feature_select: ``patch`` or ``full``, as in the model config.
        image_merge, anyres_max_tiles: AnyRes packing, as in the model config.
        qformer_tokenizer: tokenizes each video's instruction for the Q-Former of the context
            tokens (may be the same tokenizer as ``tokenizer``).
        template: default conversation template for :meth:`apply_chat_template`.
        max_images: refuse requests with more images than this (``None``: no limit).
        video_content_grid: default content grid ``g`` of video frames (``1 + g²`` tokens a frame).
        video_context_token: whether each frame gets a context token (as the model config says).
        qformer_max_length: the Q-Former's positions; a longer instruction is cut there for the
            context tokens only (the language model still reads all of it).

    Per-request options of :meth:`__call__` and :meth:`apply_chat_template`:
        image_treatment: ``auto`` (AnyRes for a lone image, global views when a request holds several
            images or any video), ``anyres`` or ``global``.
        max_visual_tokens: lower the tiling until each request's images fit this many tokens; what the
            images leave goes to the videos (shared by frame count), whose content grid is then the
            largest that fits, dropping frames only when even ``g = 1`` does not.
        video_timestamps: write each frame's time (``"12.0s"``) as text before its tokens (off by
            default; the timestamps are ordinary text tokens and do not count as visual tokens).
    Per-video options come with the chat part: ``{"type": "video", "path": …, "fps" | "num_frames",
    "max_frames", "content_grid"}``.
    """

    def __init__(
        self,
        image_processor: LlavaVidImageProcessor | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        qformer_tokenizer: PreTrainedTokenizerBase | None = None,
        patch_size: int = 14,
        vision_feature_select: VisionFeatureSelect = "patch",
        image_merge: MergeMode = "spatial_unpad",
        anyres_max_tiles: int | None = None,
        template: TemplateName = "vicuna_v1",
        max_images: int | None = None,
        video_content_grid: int = 1,
        qformer_max_length: int = 512,
        video_context_token: bool = True,
        **kwargs,
    ) -> None:
        self.patch_size = patch_size
        self.vision_feature_select = vision_feature_select
        self.image_merge = image_merge
        self.anyres_max_tiles = anyres_max_tiles
        self.template = check_template_name(template)
        self.max_images = max_images
        self.video_content_grid = video_content_grid
        self.video_context_token = video_context_token
        self.qformer_max_length = qformer_max_length
        super().__init__(image_processor, tokenizer, qformer_tokenizer or tokenizer, **kwargs)
        self.image_token_id = self._require_token_id(IMAGE_TOKEN)
        self.video_token_id = self._require_token_id(VIDEO_TOKEN)
        self.geometry = VisionGeometry(
            image_size=image_processor.image_size,
            patch_size=patch_size,
            feature_select=vision_feature_select,
            merge=image_merge,
            newline=uses_newline(image_processor.aspect_mode, image_merge),
            max_tiles=anyres_max_tiles,
        )

    def _require_token_id(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ValueError(
                f"the tokenizer has no {token!r} token; add it with llava_vid.tokenizer.add_media_tokens(tokenizer)"
            )
        return token_id

    @property
    def tokens_per_image(self) -> int:
        """Tokens of an image shown as its global view only (LLaVA-1.5: every image)."""
        return num_image_tokens(self.geometry)

    # ------------------------------------------------------------------ prompts → tensors
    def __call__(
        self,
        text: str | Sequence[str],
        images: Sequence[Any] | Sequence[Sequence[Any]] | None = None,
        *,
        image_treatment: ImageTreatment = "auto",
        max_visual_tokens: int | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Encode prompt strings that already hold one ``<image>`` per image.

        Args:
            text: a prompt or a batch of prompts.
            images: the images in placeholder order — a flat list for the whole batch, or one list
                per prompt. Paths, bytes and PIL images are accepted.
        """
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        texts = [text] if isinstance(text, str) else list(text)
        per_prompt_images = self._split_images_by_prompt(texts, images)
        prompts = [RenderedPrompt(text=t, images=imgs) for t, imgs in zip(texts, per_prompt_images)]
        return self._encode(
            prompts,
            with_labels=False,
            return_tensors=return_tensors,
            image_treatment=image_treatment,
            max_visual_tokens=max_visual_tokens,
        )

    def apply_chat_template(
        self,
        conversation: Conversation | list[Conversation],
        chat_template: str | None = None,
        *,
        template: TemplateName | None = None,
        add_generation_prompt: bool = False,
        image_treatment: ImageTreatment = "auto",
        max_visual_tokens: int | None = None,
        video_timestamps: bool = False,
        tokenize: bool = False,
        return_dict: bool = False,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> str | list[str] | torch.Tensor | BatchFeature:
        """Render transformers-style chat messages with a LLaVA template (``template`` or the default).

        With ``tokenize=True, return_dict=True`` returns ``input_ids``, ``attention_mask``, and when
        there are images ``pixel_values``, ``image_sizes``, ``image_grids`` and ``image_token_counts``
        (visual tokens per image), and, unless ``add_generation_prompt`` (i.e. for
        training on complete conversations), ``labels`` that keep only the assistant turns.
        ``chat_template`` is accepted as a synonym of ``template`` for transformers compatibility.
        """
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        name = check_template_name(template or chat_template or self.template)
        is_batched = bool(conversation) and isinstance(conversation[0], (list, tuple))
        conversations = conversation if is_batched else [conversation]
        eos = self.tokenizer.eos_token
        prompts = [
            render(list(messages), name, eos_token=eos, add_generation_prompt=add_generation_prompt)
            for messages in conversations
        ]
        if not tokenize:
            texts = [prompt.text for prompt in prompts]
            return texts if is_batched else texts[0]
        encoded = self._encode(
            prompts,
            with_labels=not add_generation_prompt,
            return_tensors=return_tensors,
            image_treatment=image_treatment,
            max_visual_tokens=max_visual_tokens,
            video_timestamps=video_timestamps,
        )
        return encoded if return_dict else encoded["input_ids"]

    # ------------------------------------------------------------------ internals
    def _split_images_by_prompt(self, texts: list[str], images: Sequence[Any] | None) -> list[list[Any]]:
        counts = [t.count(IMAGE_TOKEN) for t in texts]
        if images is None:
            images = []
        nested = len(images) > 0 and all(isinstance(item, (list, tuple)) for item in images)
        if nested:
            if len(images) != len(texts):
                raise ValueError(f"got image lists for {len(images)} prompts but {len(texts)} prompts")
            return [list(item) for item in images]
        flat = list(images)
        if len(flat) != sum(counts):
            raise ValueError(
                f"the prompts hold {sum(counts)} {IMAGE_TOKEN} placeholders but {len(flat)} images were given"
            )
        split, start = [], 0
        for count in counts:
            split.append(flat[start : start + count])
            start += count
        return split

    def _encode(
        self,
        prompts: list[RenderedPrompt],
        *,
        with_labels: bool,
        return_tensors: str | None,
        image_treatment: ImageTreatment,
        max_visual_tokens: int | None,
        video_timestamps: bool = False,
    ) -> BatchFeature:
        images, image_plans, clips, video_plans, instructions, rows = [], [], [], [], [], []
        for index, prompt in enumerate(prompts):
            for kind, placeholder, items in (("images", IMAGE_TOKEN, prompt.images), ("videos", VIDEO_TOKEN, prompt.videos)):
                if prompt.text.count(placeholder) != len(items):
                    raise ValueError(
                        f"prompt {index} holds {prompt.text.count(placeholder)} {placeholder} placeholders "
                        f"but {len(items)} {kind}"
                    )
            loaded = [load_image(source) for source in prompt.images]
            treatment = image_treatment_beside_videos(image_treatment, bool(prompt.videos))
            prompt_image_plans = plan_request(
                loaded,
                self.image_processor,
                self.geometry,
                treatment=treatment,
                max_visual_tokens=max_visual_tokens,
                max_images=self.max_images,
            )
            video_budget = None if max_visual_tokens is None else max_visual_tokens - request_tokens(prompt_image_plans, self.geometry)
            prompt_clips, prompt_times, prompt_video_plans = self._prepare_videos(prompt.videos, video_budget)
            video_blocks = [
                self._video_block(plan, times if video_timestamps else None)
                for plan, times in zip(prompt_video_plans, prompt_times)
            ]
            rows.append(
                self._tokenize(
                    prompt,
                    [num_image_tokens(self.geometry, plan) for plan in prompt_image_plans],
                    video_blocks,
                    with_labels,
                )
            )
            images += loaded
            image_plans += prompt_image_plans
            clips += prompt_clips
            video_plans += prompt_video_plans
            instructions += [part.instruction for part in prompt.videos]

        data: dict[str, Any] = self._pad([ids for ids, _ in rows], [labels for _, labels in rows], with_labels)
        if images:
            data.update(self.image_processor(images, image_plans, return_tensors="pt"))
            data["image_token_counts"] = torch.tensor([num_image_tokens(self.geometry, plan) for plan in image_plans])
        if clips:
            data.update(self._video_inputs(clips, video_plans, instructions))
        return BatchFeature(data, tensor_type=return_tensors)

    def _prepare_videos(
        self, parts: list[VideoPart], budget: int | None
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[VideoPlan]]:
        """Decode a request's videos (frames straight to tower-sized views) and plan them under ``budget``.

        Returns per video: the kept frames ``(T, S, S, 3)`` uint8, their timestamps ``(T,)`` and the plan.
        """
        clips: list[VideoClip] = []
        for part in parts:
            sampling = FrameSampling(**{k: v for k, v in part.options.items() if k != "content_grid"})
            clips.append(load_video(part.source, sampling, frame_transform=self.image_processor.frame_views))
        plans = plan_request_videos(
            [len(clip.frames) for clip in clips],
            [part.options.get("content_grid") for part in parts],
            budget=budget,
            default_grid=self.video_content_grid,
            max_grid=self.geometry.patches_per_side,
            context_token=self.video_context_token,
        )
        frames, times = [], []
        for clip, plan in zip(clips, plans):
            kept = kept_frames(len(clip.frames), plan)
            dropped = len(kept) < len(clip.frames)  # index only then: fancy indexing copies every frame
            frames.append(clip.frames[kept] if dropped else clip.frames)  # (T, S, S, 3) uint8
            times.append(clip.timestamps[kept] if dropped else clip.timestamps)
        return frames, times, plans

    def _video_block(self, plan: VideoPlan, timestamps: np.ndarray | None) -> torch.Tensor:
        """The ids that replace one ``<video>``: per frame ``1 + g²`` video ids, each frame preceded by
        its time as text when ``timestamps`` are given."""
        frame_ids = [self.video_token_id] * plan.tokens_per_frame
        if timestamps is None:
            return torch.tensor(frame_ids * plan.num_frames, dtype=torch.long)
        stamps = self.tokenizer([f"{t:.1f}s" for t in timestamps], add_special_tokens=False)["input_ids"]
        return torch.tensor([i for stamp in stamps for i in (*stamp, *frame_ids)], dtype=torch.long)

    def _video_inputs(self, frames: list[np.ndarray], plans: list[VideoPlan], instructions: list[str]) -> dict[str, Any]:
        """Model inputs of the batch's videos: all frames in one tensor, plus per-video metadata."""
        # Right padding: the Q-Former has absolute positions, so its text must start at position 0.
        encoded = self.qformer_tokenizer(
            instructions,
            padding=True,
            padding_side="right",
            truncation=True,
            max_length=self.qformer_max_length,
            return_tensors="pt",
        )
        return {
            "pixel_values_videos": self.image_processor.normalize_views(
                frames[0] if len(frames) == 1 else np.concatenate(frames)
            ),  # (F, 3, S, S)
            "video_frames": torch.tensor([plan.num_frames for plan in plans]),
            "video_grids": torch.tensor([plan.content_grid for plan in plans]),
            "video_token_counts": torch.tensor([num_video_tokens(plan) for plan in plans]),
            "qformer_input_ids": encoded["input_ids"],
            "qformer_attention_mask": encoded["attention_mask"],
        }

    def _tokenize(
        self,
        prompt: RenderedPrompt,
        image_token_counts: list[int],
        video_blocks: list[torch.Tensor],
        with_labels: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One prompt → expanded ``input_ids`` and (optionally) labels, both ``(L,)``.

        The k-th ``<image>`` becomes ``image_token_counts[k]`` copies of its id, the k-th ``<video>`` the
        ids of ``video_blocks[k]``; none of them is ever trained on.
        """
        encoding = self.tokenizer(prompt.text, return_offsets_mapping=with_labels, truncation=False)
        ids = torch.tensor(encoding["input_ids"], dtype=torch.long)  # (L_text,)
        labels = None
        if with_labels and not prompt.target_spans:
            raise NoTargetError(
                "labels were asked for (add_generation_prompt=False) but the conversation has no assistant "
                "turn, so every label would be masked; pass add_generation_prompt=True for inference"
            )
        if with_labels:
            offsets = torch.tensor(encoding["offset_mapping"], dtype=torch.long).view(-1, 2)  # (L_text, 2)
            trained = torch.zeros(len(ids), dtype=torch.bool)
            for start, end in prompt.target_spans:
                # A token is trained on when its characters overlap an assistant span; zero-width
                # tokens (BOS added by the post-processor) never overlap.
                trained |= (offsets[:, 0] < end) & (offsets[:, 1] > start)
            labels = torch.where(trained, ids, IGNORE_INDEX)
            if not trained.any():
                raise NoTargetError("no token of the assistant turns survived tokenisation; refusing an all-masked sample")
        # Each image placeholder becomes its image's token count; everything else stays single.
        repeats = torch.ones_like(ids)
        repeats[ids == self.image_token_id] = torch.tensor(image_token_counts, dtype=ids.dtype)
        ids = ids.repeat_interleave(repeats)
        if labels is not None:
            labels = labels.repeat_interleave(repeats)
        ids, labels = self._splice_videos(ids, labels, video_blocks)
        self._check_length(len(ids))
        return ids, labels

    def _splice_videos(
        self, ids: torch.Tensor, labels: torch.Tensor | None, blocks: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Replace the k-th ``<video>`` id by ``blocks[k]`` (a loop over videos, not tokens)."""
        if not blocks:
            return ids, labels
        positions = (ids == self.video_token_id).nonzero().flatten().tolist()
        id_pieces, label_pieces, start = [], [], 0
        for position, block in zip(positions, blocks, strict=True):
            id_pieces += [ids[start:position], block]
            if labels is not None:
                label_pieces += [labels[start:position], torch.full_like(block, IGNORE_INDEX)]
            start = position + 1
        id_pieces.append(ids[start:])
        if labels is not None:
            label_pieces.append(labels[start:])
        return torch.cat(id_pieces), (torch.cat(label_pieces) if labels is not None else None)

    def _check_length(self, length: int) -> None:
        limit = self.tokenizer.model_max_length
        if length > limit:
            raise PromptTooLongError(
                f"the prompt is {length} tokens after expanding images, longer than the maximum of {limit} "
                "(tokenizer.model_max_length); it is not truncated, because that would cut the image or the "
                "question. Shorten the text or use fewer images."
            )

    def _pad(
        self, rows: list[torch.Tensor], label_rows: list[torch.Tensor | None], with_labels: bool
    ) -> dict[str, torch.Tensor]:
        """Pad to the longest row on the tokenizer's padding side (left for generation)."""
        length = max(len(row) for row in rows)
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id
        input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        left = self.tokenizer.padding_side == "left"
        for row_index, (row, row_labels) in enumerate(zip(rows, label_rows)):
            span = slice(length - len(row), length) if left else slice(0, len(row))
            input_ids[row_index, span] = row
            attention_mask[row_index, span] = 1
            if row_labels is not None:
                labels[row_index, span] = row_labels
        data = {"input_ids": input_ids, "attention_mask": attention_mask}
        if with_labels:
            data["labels"] = labels
        return data

    def batch_decode(self, *args, **kwargs) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs) -> str:
        return self.tokenizer.decode(*args, **kwargs)
