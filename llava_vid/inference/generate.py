"""Answering questions about images with ``generate``."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from transformers import TextStreamer

from llava_vid.modeling import LlavaVidForConditionalGeneration
from llava_vid.modes import ImageTreatment
from llava_vid.processing.processor import LlavaVidProcessor


def user_message(question: str, images: Sequence[Any] = ()) -> dict:
    """A chat message with the images first (LLaVA-1.5's layout) and then the question."""
    parts = [{"type": "image", "image": image} for image in images]
    return {"role": "user", "content": [*parts, {"type": "text", "text": question}]}


def check_fits(prompt_length: int, max_new_tokens: int, model: LlavaVidForConditionalGeneration) -> None:
    """Refuse a prompt the language model cannot hold, rather than letting it overflow silently."""
    limit = model.config.text_config.max_position_embeddings
    if prompt_length + max_new_tokens > limit:
        raise ValueError(
            f"the prompt is {prompt_length} tokens and {max_new_tokens} new tokens were asked for, "
            f"{prompt_length + max_new_tokens} in all, but the language model holds at most {limit} positions "
            "(text_config.max_position_embeddings); shorten the prompt, use fewer images or lower max_new_tokens"
        )


@torch.inference_mode()
def answer(
    model: LlavaVidForConditionalGeneration,
    processor: LlavaVidProcessor,
    question: str,
    images: Sequence[Any] = (),
    *,
    history: Sequence[dict] = (),
    max_new_tokens: int = 128,
    stream: bool = False,
    image_treatment: ImageTreatment = "auto",
    max_visual_tokens: int | None = None,
    **generate_kwargs: Any,
) -> str:
    """Answer ``question`` about ``images`` (paths, bytes or PIL images); greedy unless told otherwise.

    Args:
        history: earlier messages of the conversation, if any.
        stream: print tokens to stdout as they are generated.
        image_treatment, max_visual_tokens: per-request image handling (see :class:`LlavaVidProcessor`).
        generate_kwargs: passed to ``model.generate`` (``do_sample``, ``temperature``, …).
    """
    conversation = [*history, user_message(question, images)]
    inputs = processor.apply_chat_template(
        conversation,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        image_treatment=image_treatment,
        max_visual_tokens=max_visual_tokens,
    ).to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    prompt_length = inputs["input_ids"].shape[1]
    check_fits(prompt_length, max_new_tokens, model)
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
