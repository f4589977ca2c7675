"""Conversation templates: chat messages → prompt text + the character spans the loss is taken on.

Labels are derived from these spans (turn boundaries in the rendered text), never from
tokenizer-length arithmetic, which is what produced LLaVA's "tokenization mismatch" warnings and
silently all-masked samples. The processor maps spans to tokens with the tokenizer's offsets.

Templates:
    ``plain``      stage-1 captioning: ``<image>caption\\n``; instructions are dropped (as in LLaVA
                   pretraining), the loss is on ``caption\\n``.
    ``vicuna_v1``  LLaVA-1.5 chat: ``SYSTEM USER: <image>\\nq ASSISTANT: a</s>USER: …``; the loss is
                   on `` a</s>`` of every assistant turn (the space that separates it from
                   ``ASSISTANT:`` travels with the answer because tokenizers glue it to the first word).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from llava_vid.tokenizer import IMAGE_TOKEN, VIDEO_TOKEN

TemplateName = Literal["plain", "vicuna_v1"]
TEMPLATE_NAMES: tuple[str, ...] = get_args(TemplateName)

VICUNA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
MEDIA_PART_TYPES = ("image", "video")
# Keys a media part may carry its source under (transformers' chat format uses these).
MEDIA_SOURCE_KEYS = ("image", "video", "path", "url")
PLACEHOLDERS = {"image": IMAGE_TOKEN, "video": VIDEO_TOKEN}
# Per-video options a chat part may carry (see llava_vid.processing.video.FrameSampling).
VIDEO_OPTION_KEYS = ("num_frames", "fps", "max_frames", "content_grid")


@dataclass
class VideoPart:
    """A video of the conversation: its source, its per-request options, and the instruction that
    guides its context tokens (the text of the user message that holds it)."""

    source: Any
    options: dict[str, Any]
    instruction: str


@dataclass
class RenderedPrompt:
    """One conversation, rendered.

    Attributes:
        text: the prompt; holds one ``<image>`` per image and one ``<video>`` per video, in order.
        target_spans: ``[start, end)`` character ranges of ``text`` that are trained on.
        images: the image sources (paths, bytes, PIL images) in placeholder order.
        videos: the videos in placeholder order.
    """

    text: str = ""
    target_spans: list[tuple[int, int]] = field(default_factory=list)
    images: list[Any] = field(default_factory=list)
    videos: list[VideoPart] = field(default_factory=list)

    def add(self, text: str, *, target: bool = False) -> None:
        if target:
            self.target_spans.append((len(self.text), len(self.text) + len(text)))
        self.text += text


def check_template_name(template: str) -> TemplateName:
    if template not in TEMPLATE_NAMES:
        raise ValueError(f"template={template!r} is unknown; expected one of {list(TEMPLATE_NAMES)}")
    return template  # type: ignore[return-value]


def _content_parts(message: dict, index: int) -> list[dict]:
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise ValueError(f"message {index}: 'content' must be a string or a list of parts, got {type(content).__name__}")
    for part in content:
        if not isinstance(part, dict) or part.get("type") not in ("text", *MEDIA_PART_TYPES):
            raise ValueError(
                f"message {index}: unsupported content part {part!r}; expected type 'text', 'image' or 'video'"
            )
    return content


def _media_source(part: dict, index: int) -> Any:
    for key in MEDIA_SOURCE_KEYS:
        if part.get(key) is not None:
            return part[key]
    raise ValueError(f"message {index}: {part['type']} part has none of the keys {list(MEDIA_SOURCE_KEYS)}: {part!r}")


def _system_text(message: dict) -> str:
    parts = _content_parts(message, 0)
    if any(part["type"] != "text" for part in parts):
        raise ValueError("message 0: a system message may hold text only")
    return "".join(part["text"] for part in parts)


def _check_roles(messages: list[dict]) -> list[dict]:
    """Validate the role sequence; return the messages without a leading system message."""
    if not messages:
        raise ValueError("the conversation has no messages")
    body = messages[1:] if messages[0].get("role") == "system" else messages
    if not body:
        raise ValueError("the conversation has no user/assistant messages, only a system message")
    for offset, message in enumerate(body):
        index = offset + len(messages) - len(body)
        expected = "user" if offset % 2 == 0 else "assistant"
        if message.get("role") != expected:
            raise ValueError(f"message {index}: role {message.get('role')!r}, expected {expected!r} (turns alternate)")
    return body


def render(
    messages: list[dict],
    template: TemplateName,
    *,
    eos_token: str,
    add_generation_prompt: bool = False,
) -> RenderedPrompt:
    """Render a conversation with ``template``.

    Args:
        messages: transformers-style chat messages; ``content`` is a string or a list of
            ``{"type": "text", "text": …}`` / ``{"type": "image", "image"|"path"|"url": …}`` parts.
        eos_token: the tokenizer's end-of-sequence string; it ends every assistant turn of
            ``vicuna_v1`` and is trained on, so the model learns to stop.
        add_generation_prompt: end with the assistant's cue so the model answers next.
    """
    check_template_name(template)
    body = _check_roles(messages)
    system_text = _system_text(messages[0]) if messages[0].get("role") == "system" else None
    if add_generation_prompt and body[-1]["role"] != "user":
        raise ValueError("add_generation_prompt=True needs the conversation to end with a user message")
    prompt = RenderedPrompt()
    if template == "vicuna_v1":
        prompt.add((VICUNA_SYSTEM if system_text is None else system_text) + " ")
    for offset, message in enumerate(body):
        index = offset + len(messages) - len(body)
        parts = _content_parts(message, index)
        if message["role"] == "user":
            _render_user(prompt, parts, template, index)
        else:
            if any(part["type"] != "text" for part in parts):
                raise ValueError(f"message {index}: assistant messages may hold text only")
            answer = "".join(part["text"] for part in parts)
            if template == "vicuna_v1":
                prompt.add("ASSISTANT:")
                prompt.add(" " + answer + eos_token, target=True)
            else:
                prompt.add(answer + "\n", target=True)
    if add_generation_prompt and template == "vicuna_v1":
        prompt.add("ASSISTANT:")
    return prompt


def _render_user(prompt: RenderedPrompt, parts: list[dict], template: TemplateName, index: int) -> None:
    if template == "vicuna_v1":
        prompt.add("USER: ")
    instruction = "".join(part["text"] for part in parts if part["type"] == "text")
    for part in parts:
        if part["type"] in MEDIA_PART_TYPES:
            source = _media_source(part, index)
            if part["type"] == "image":
                prompt.images.append(source)
            else:
                options = {key: part[key] for key in VIDEO_OPTION_KEYS if part.get(key) is not None}
                prompt.videos.append(VideoPart(source, options, instruction))
            # LLaVA-1.5 puts a newline between the media and the question; plain glues the caption on.
            prompt.add(PLACEHOLDERS[part["type"]] + ("\n" if template == "vicuna_v1" else ""))
        elif template == "vicuna_v1":
            prompt.add(part["text"])
    if template == "vicuna_v1":
        prompt.add(" ")
