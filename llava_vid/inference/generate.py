"""Answering questions about images and videos with ``generate``."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from transformers import TextStreamer

from llava_vid.modeling import LlavaVidForConditionalGeneration
from llava_vid.modes import ImageTreatment
from llava_vid.processing.processor import LlavaVidProcessor
from llava_vid.processing.templates import VIDEO_OPTION_KEYS

PIXEL_INPUTS = ("pixel_values", "pixel_values_videos")  # float inputs cast to the model's dtype


def user_message(
    question: str,
    images: Sequence[Any] = (),
    videos: Sequence[Any] = (),
    video_options: Mapping[str, Any] | None = None,
) -> dict:
    """A chat message with the images first (LLaVA-1.5's layout), then the videos, then the question.

    ``video_options`` (``fps`` | ``num_frames``, ``max_frames``, ``content_grid``; see
    :class:`~llava_vid.processing.processor.LlavaVidProcessor`) apply to every video; ``None`` values
    are left out, so the processor's defaults hold.
    """
    options = {key: value for key, value in (video_options or {}).items() if value is not None}
    unknown = sorted(set(options) - set(VIDEO_OPTION_KEYS))
    if unknown:
        raise ValueError(f"unknown video options {unknown}; expected some of {list(VIDEO_OPTION_KEYS)}")
    if options and not videos:
        raise ValueError(f"video options {sorted(options)} were given but no video")
    parts = [{"type": "image", "image": image} for image in images]
    parts += [{"type": "video", "video": video, **options} for video in videos]
    return {"role": "user", "content": [*parts, {"type": "text", "text": question}]}


def check_fits(prompt_length: int, max_new_tokens: int, model: LlavaVidForConditionalGeneration) -> None:
    """Refuse a prompt the language model cannot hold, rather than letting it overflow silently."""
    limit = model.config.text_config.max_position_embeddings
    if prompt_length + max_new_tokens > limit:
        raise ValueError(
            f"the prompt is {prompt_length} tokens and {max_new_tokens} new tokens were asked for, "
            f"{prompt_length + max_new_tokens} in all, but the language model holds at most {limit} positions "
            "(text_config.max_position_embeddings); shorten the prompt, use fewer images or video frames, "
            "or lower max_new_tokens"
        )


def prepare_prompts(
    model: LlavaVidForConditionalGeneration,
    processor: LlavaVidProcessor,
    conversations: list[dict] | list[list[dict]],
    *,
    max_new_tokens: int,
    **template_options: Any,
) -> Any:
    """Generation inputs for one conversation or a (left-padded) batch of them: on the model's device,
    pixels in its dtype, refused when prompt + ``max_new_tokens`` do not fit. ``template_options`` go
    to ``processor.apply_chat_template`` (``image_treatment``, ``max_visual_tokens``, …)."""
    inputs = processor.apply_chat_template(
        conversations, add_generation_prompt=True, tokenize=True, return_dict=True, **template_options
    ).to(model.device)
    for key in PIXEL_INPUTS:
        if key in inputs:
            inputs[key] = inputs[key].to(model.dtype)
    check_fits(inputs["input_ids"].shape[1], max_new_tokens, model)
    return inputs


@torch.inference_mode()
def answer(
    model: LlavaVidForConditionalGeneration,
    processor: LlavaVidProcessor,
    question: str,
    images: Sequence[Any] = (),
    *,
    videos: Sequence[Any] = (),
    video_options: Mapping[str, Any] | None = None,
    video_timestamps: bool = False,
    history: Sequence[dict] = (),
    max_new_tokens: int = 128,
    stream: bool = False,
    image_treatment: ImageTreatment = "auto",
    max_visual_tokens: int | None = None,
    **generate_kwargs: Any,
) -> str:
    """Answer ``question`` about ``images`` (paths, bytes or PIL images) and ``videos`` (video files,
    folders of frames or lists of frames); greedy unless told otherwise.

    Args:
        videos: shown after the images, in order.
        video_options: per-video sampling and content grid (``fps`` | ``num_frames``, ``max_frames``,
            ``content_grid``), the same for every video.
        video_timestamps: write each frame's time as text before its tokens.
        history: earlier messages of the conversation, if any.
        stream: print tokens to stdout as they are generated.
        image_treatment, max_visual_tokens: per-request handling (see :class:`LlavaVidProcessor`); the
            budget covers the images and the videos together.
        generate_kwargs: passed to ``model.generate`` (``do_sample``, ``temperature``, …).
    """
    conversation = [*history, user_message(question, images, videos, video_options)]
    return reply(
        model,
        processor,
        conversation,
        max_new_tokens=max_new_tokens,
        stream=stream,
        image_treatment=image_treatment,
        max_visual_tokens=max_visual_tokens,
        video_timestamps=video_timestamps,
        **generate_kwargs,
    )


@torch.inference_mode()
def reply(
    model: LlavaVidForConditionalGeneration,
    processor: LlavaVidProcessor,
    conversation: list[dict],
    *,
    max_new_tokens: int = 128,
    stream: bool = False,
    image_treatment: ImageTreatment = "auto",
    max_visual_tokens: int | None = None,
    video_timestamps: bool = False,
    **generate_kwargs: Any,
) -> str:
    """The assistant's next message in ``conversation`` (chat messages ending with a user turn, media
    as content parts wherever the turn has them, e.g. a held-out record's); greedy unless told
    otherwise. :func:`answer` builds the conversation from a question and its media and calls this."""
    inputs = prepare_prompts(
        model,
        processor,
        conversation,
        max_new_tokens=max_new_tokens,
        image_treatment=image_treatment,
        max_visual_tokens=max_visual_tokens,
        video_timestamps=video_timestamps,
    )
    prompt_length = inputs["input_ids"].shape[1]
    streamer = TextStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
    generate_kwargs.setdefault("do_sample", False)
    output = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        streamer=streamer,
        pad_token_id=processor.tokenizer.pad_token_id,
        **generate_kwargs,
    )
    return processor.tokenizer.decode(output[0, prompt_length:], skip_special_tokens=True)
