"""Conversation templates: rendered text and the label mask (exactly the assistant text is trained on)."""

from __future__ import annotations

import re
import string

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llava_vid.processing.processor import IGNORE_INDEX

# LLaVA-1.5's system prompt, spelled out here so a drift in the library constant is caught.
LLAVA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

QUESTIONS = [
    "What is in the image?",
    "And the colour?",
    "How many (roughly)?",
    "Où est le chat ?",
    "Why — really?",
]
# Distinct per turn, with punctuation, digits, quotes, a newline and non-ASCII text.
ANSWERS = [
    "A red square.",
    "Green, mostly; some \"blue\" too!",
    "About 42% (±3), i.e. 1,000 items",
    "Sous la table — naïve café ☕ 🙂",
    "Line one\nline two: 中文答案。",
]


def _image_part(image) -> dict:
    return {"type": "image", "image": image}


def make_conversation(questions, answers, images_per_turn) -> list[dict]:
    """user/assistant turns; user turn ``i`` starts with ``images_per_turn[i]`` image parts."""
    messages = []
    for question, answer, images in zip(questions, answers, images_per_turn):
        parts = [_image_part(image) for image in images] + [{"type": "text", "text": question}]
        messages.append({"role": "user", "content": parts})
        messages.append({"role": "assistant", "content": answer})
    return messages


def label_runs(labels: torch.Tensor) -> list[list[int]]:
    """Contiguous runs of trained (!= -100) label ids of one row."""
    runs: list[list[int]] = []
    previous_trained = False
    for value in labels.tolist():
        trained = value != IGNORE_INDEX
        if trained:
            if not previous_trained:
                runs.append([])
            runs[-1].append(value)
        previous_trained = trained
    return runs


def target(template: str, answer: str) -> str:
    return " " + answer + "</s>" if template == "vicuna_v1" else answer + "\n"


def expected_runs(template: str, answers: list[str], images_per_turn: list[list]) -> list[str]:
    """Per-turn targets, as contiguous label runs.

    ``vicuna_v1`` separates assistant turns with ``USER: …`` (never trained), so each turn is its
    own run. ``plain`` drops the instructions, so two answers are adjacent (one run) unless an image
    — never trained — sits between them.
    """
    runs: list[str] = []
    for turn, answer in enumerate(answers):
        if template == "vicuna_v1" or turn == 0 or images_per_turn[turn]:
            runs.append(target(template, answer))
        else:
            runs[-1] += target(template, answer)
    return runs


def check_labels(processor, encoded, expected: list[str]) -> None:
    tokenizer = processor.tokenizer
    input_ids, labels = encoded["input_ids"][0], encoded["labels"][0]
    assert labels.shape == input_ids.shape
    trained = labels != IGNORE_INDEX
    # Labels are the input ids themselves (the LM shifts them), wherever they are trained.
    assert torch.equal(labels[trained], input_ids[trained])
    # Visual tokens are inputs, never targets.
    image_positions = input_ids == processor.image_token_id
    assert not (trained & image_positions).any()
    decoded = [tokenizer.decode(run, skip_special_tokens=False) for run in label_runs(labels)]
    assert decoded == expected


@pytest.fixture
def two_colours(solid_image):
    return [solid_image((255, 0, 0)), solid_image((0, 0, 255), size=(20, 50))]


# --------------------------------------------------------------------------- labels


@pytest.mark.parametrize("template", ["plain", "vicuna_v1"])
@pytest.mark.parametrize("num_turns", [1, 2, 5])
@pytest.mark.parametrize("image_layout", ["first_turn", "every_turn"])
def test_label_runs_decode_exactly_to_assistant_targets(
    tiny_processor, two_colours, template, num_turns, image_layout
) -> None:
    if image_layout == "first_turn":
        images_per_turn = [two_colours] + [[] for _ in range(num_turns - 1)]
    else:
        images_per_turn = [[two_colours[turn % 2]] for turn in range(num_turns)]
    answers = ANSWERS[:num_turns]
    conversation = make_conversation(QUESTIONS[:num_turns], answers, images_per_turn)

    encoded = tiny_processor.apply_chat_template(conversation, template=template, tokenize=True, return_dict=True)

    expected = expected_runs(template, answers, images_per_turn)
    check_labels(tiny_processor, encoded, expected)
    if template == "vicuna_v1" or image_layout == "every_turn":
        # Turns are separated by untrained tokens: one run per assistant turn.
        assert len(label_runs(encoded["labels"][0])) == num_turns
    num_images = sum(len(images) for images in images_per_turn)
    assert encoded["pixel_values"].shape[0] == num_images


def test_labels_of_a_batch_follow_each_conversation(tiny_processor, two_colours) -> None:
    """Left padding must not shift or leak labels between rows."""
    short = make_conversation(QUESTIONS[:1], ANSWERS[:1], [[two_colours[0]]])
    long = make_conversation(QUESTIONS[:3], ANSWERS[1:4], [two_colours, [], []])
    encoded = tiny_processor.apply_chat_template([short, long], tokenize=True, return_dict=True)
    assert encoded["labels"].shape == encoded["input_ids"].shape
    padding = encoded["attention_mask"] == 0
    assert padding[0].any()  # the short row is padded
    assert (encoded["labels"][padding] == IGNORE_INDEX).all()
    for row, answers in ((0, ANSWERS[:1]), (1, ANSWERS[1:4])):
        runs = label_runs(encoded["labels"][row])
        decoded = [tiny_processor.tokenizer.decode(run, skip_special_tokens=False) for run in runs]
        assert decoded == [target("vicuna_v1", answer) for answer in answers]


# --------------------------------------------------------------------------- rendered text


def test_vicuna_v1_renders_llava_15_format_exactly(tiny_processor, solid_image) -> None:
    conversation = make_conversation(["Q1", "Q2"], ["A1", "A2"], [[solid_image()], []])
    text = tiny_processor.apply_chat_template(conversation, template="vicuna_v1")
    assert text == f"{LLAVA_SYSTEM} USER: <image>\nQ1 ASSISTANT: A1</s>USER: Q2 ASSISTANT: A2</s>"


def test_plain_renders_image_then_caption(tiny_processor, solid_image) -> None:
    conversation = make_conversation(["Describe it."], ["A red box."], [[solid_image()]])
    assert tiny_processor.apply_chat_template(conversation, template="plain") == "<image>A red box.\n"


def test_default_template_is_the_processors(tiny_processor, solid_image) -> None:
    conversation = make_conversation(["Q1"], ["A1"], [[solid_image()]])
    assert tiny_processor.template == "vicuna_v1"
    assert tiny_processor.apply_chat_template(conversation) == tiny_processor.apply_chat_template(
        conversation, template="vicuna_v1"
    )


def test_generation_prompt_ends_with_assistant_cue_and_has_no_labels(tiny_processor, solid_image) -> None:
    conversation = make_conversation(["Q1", "Q2"], ["A1"], [[solid_image()], []])
    conversation.append({"role": "user", "content": "Q2"})
    text = tiny_processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert text.endswith("USER: Q2 ASSISTANT:")
    encoded = tiny_processor.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    assert "labels" not in encoded
    assert tiny_processor.tokenizer.decode(encoded["input_ids"][0, -3:]).endswith("ASSISTANT:")


def test_generation_prompt_needs_a_final_user_message(tiny_processor, solid_image) -> None:
    conversation = make_conversation(["Q1"], ["A1"], [[solid_image()]])
    with pytest.raises(ValueError, match="user"):
        tiny_processor.apply_chat_template(conversation, add_generation_prompt=True)


def test_custom_system_message_replaces_the_default(tiny_processor, solid_image) -> None:
    system = {"role": "system", "content": "You are terse."}
    conversation = [system, *make_conversation(["Q1"], ["A1"], [[solid_image()]])]
    text = tiny_processor.apply_chat_template(conversation, template="vicuna_v1")
    assert text == "You are terse. USER: <image>\nQ1 ASSISTANT: A1</s>"
    encoded = tiny_processor.apply_chat_template(conversation, tokenize=True, return_dict=True)
    check_labels(tiny_processor, encoded, [" A1</s>"])


def test_custom_system_message_as_content_parts_replaces_the_default(tiny_processor, solid_image) -> None:
    """transformers-style ``content=[{"type": "text", ...}]`` is accepted for every role; a system
    message written that way must not be silently swapped for the default prompt."""
    system = {"role": "system", "content": [{"type": "text", "text": "You are terse."}]}
    conversation = [system, *make_conversation(["Q1"], ["A1"], [[solid_image()]])]
    text = tiny_processor.apply_chat_template(conversation, template="vicuna_v1")
    assert text == "You are terse. USER: <image>\nQ1 ASSISTANT: A1</s>"


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("roles", "bad_index"),
    [
        (["user", "user"], 1),
        (["assistant", "user"], 0),
        (["system", "assistant"], 1),
        (["user", "assistant", "assistant"], 2),
        (["user", "assistant", "system", "user"], 2),
    ],
)
def test_bad_role_order_names_the_message(tiny_processor, roles, bad_index) -> None:
    conversation = [{"role": role, "content": f"text {i}"} for i, role in enumerate(roles)]
    with pytest.raises(ValueError, match=rf"message {bad_index}\b"):
        tiny_processor.apply_chat_template(conversation, tokenize=True, return_dict=True)


def test_image_in_assistant_message_is_refused(tiny_processor, solid_image) -> None:
    conversation = [
        {"role": "user", "content": "Draw it."},
        {"role": "assistant", "content": [{"type": "text", "text": "Here:"}, _image_part(solid_image())]},
    ]
    with pytest.raises(ValueError, match=r"message 1\b.*text only"):
        tiny_processor.apply_chat_template(conversation, tokenize=True, return_dict=True)


def test_unknown_template_is_refused(tiny_processor, solid_image) -> None:
    conversation = make_conversation(["Q1"], ["A1"], [[solid_image()]])
    with pytest.raises(ValueError, match=r"template='llama3'"):
        tiny_processor.apply_chat_template(conversation, template="llama3")


def test_unsupported_content_part_names_the_message(tiny_processor) -> None:
    conversation = [{"role": "user", "content": [{"type": "audio", "audio": "a.wav"}]}]
    with pytest.raises(ValueError, match=r"message 0\b.*audio"):
        tiny_processor.apply_chat_template(conversation)


def test_image_part_without_source_names_the_message(tiny_processor) -> None:
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q"}]}]
    with pytest.raises(ValueError, match=r"message 0\b.*image"):
        tiny_processor.apply_chat_template(conversation, add_generation_prompt=True)


def test_empty_conversation_is_refused(tiny_processor) -> None:
    with pytest.raises(ValueError, match="no messages"):
        tiny_processor.apply_chat_template([], tokenize=True, return_dict=True)


@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_system_only_conversation_is_refused(tiny_processor, add_generation_prompt) -> None:
    """A system message with no turns is an empty conversation: a clear ValueError, not an
    IndexError and not an all-masked label row."""
    conversation = [{"role": "system", "content": "You are terse."}]
    with pytest.raises(ValueError, match="message"):
        tiny_processor.apply_chat_template(
            conversation, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=True
        )


def test_labels_without_any_assistant_turn_are_refused(tiny_processor, solid_image) -> None:
    """Asking for training labels of a conversation with nothing to train on would give an
    all-masked label row (a NaN loss), which DESIGN.md rules out: it must be an error."""
    conversation = [{"role": "user", "content": [_image_part(solid_image()), {"type": "text", "text": "Q"}]}]
    with pytest.raises(ValueError):
        tiny_processor.apply_chat_template(conversation, tokenize=True, return_dict=True)


# --------------------------------------------------------------------------- property

_RESERVED = ("<image>", "<video>", "<s>", "</s>", "<unk>", "<pad>")
_texts = st.text(
    alphabet=st.one_of(st.sampled_from(string.printable), st.characters(categories=("L", "N", "P", "S", "Zs"))),
    min_size=1,
    max_size=24,
).filter(lambda text: not any(token in text for token in _RESERVED))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    template=st.sampled_from(["plain", "vicuna_v1"]),
    turns=st.lists(st.tuples(_texts, _texts), min_size=1, max_size=3),
)
def test_label_runs_match_targets_for_any_text(tiny_processor, solid_image, template, turns) -> None:
    questions = [question for question, _ in turns]
    answers = [answer for _, answer in turns]
    images_per_turn = [[solid_image()]] + [[] for _ in turns[1:]]
    conversation = make_conversation(questions, answers, images_per_turn)
    encoded = tiny_processor.apply_chat_template(conversation, template=template, tokenize=True, return_dict=True)
    check_labels(tiny_processor, encoded, expected_runs(template, answers, images_per_turn))
    if template == "vicuna_v1":
        assert len(label_runs(encoded["labels"][0])) == len(turns)
        text = tiny_processor.apply_chat_template(conversation, template=template)
        assert re.fullmatch(re.escape(LLAVA_SYSTEM) + r" USER: <image>\n.*ASSISTANT:.*</s>", text, re.DOTALL)
