"""Multi-image prompts on the tiny AnyRes model: order, per-request treatment, the token budget,
limits, and a forward pass whose per-image counts agree with the model."""

import copy
from pathlib import Path

import pytest
import torch
from PIL import Image

from llava_vid.build import build_model_and_processor, load_model_spec
from llava_vid.geometry import ImagePlan, num_image_tokens

REPO = Path(__file__).resolve().parents[1]
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


@pytest.fixture(scope="module")
def anyres():
    model, processor = build_model_and_processor(load_model_spec(REPO / "configs/model/tiny_anyres.yaml"))
    return model.eval(), processor


def user(*parts) -> list[dict]:
    content = [{"type": "image", "image": p} if isinstance(p, Image.Image) else {"type": "text", "text": p} for p in parts]
    return [{"role": "user", "content": content}]


def encode(processor, conversation, **options):
    return processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True, **options)


def test_lone_image_is_tiled_and_several_images_get_global_views(anyres) -> None:
    _, processor = anyres
    tall = Image.new("RGB", (300, 900), "white")
    lone = encode(processor, user(tall, "Read."))
    assert lone["image_grids"].tolist() == [[3, 1]]
    assert lone["image_token_counts"].tolist() == [num_image_tokens(processor.geometry, ImagePlan((900, 300), (3, 1)))]
    several = encode(processor, user(tall, "and", tall, "compare"))
    assert several["image_grids"].tolist() == [[0, 0], [0, 0]]
    assert several["image_token_counts"].tolist() == [17, 17]
    assert several["pixel_values"].shape[0] == 2


def test_treatment_is_chosen_per_request(anyres) -> None:
    _, processor = anyres
    tall = Image.new("RGB", (300, 900), "white")
    assert encode(processor, user(tall, "x"), image_treatment="global")["image_grids"].tolist() == [[0, 0]]
    forced = encode(processor, user(tall, tall, "x"), image_treatment="anyres")
    assert forced["image_grids"].tolist() == [[3, 1], [3, 1]]
    with pytest.raises(ValueError, match="image_treatment"):
        encode(processor, user(tall, "x"), image_treatment="tiles")


def test_images_keep_their_order_across_text_and_turns(anyres) -> None:
    _, processor = anyres
    images = [Image.new("RGB", (40, 40), colour) for colour in COLOURS.values()]
    conversation = [
        *user("first", images[0], "then", images[1]),
        {"role": "assistant", "content": "Seen."},
        *user(images[2], "and this one?"),
    ]
    batch = encode(processor, conversation)
    means = batch["pixel_values"].mean(dim=(2, 3))  # (3 views, channels)
    assert means.argmax(dim=1).tolist() == [0, 1, 2]  # red, green, blue, in order
    # Placeholders appear in the same order: three runs of 17 image tokens.
    is_image = (batch["input_ids"][0] == processor.image_token_id).int()
    starts = ((is_image[1:] - is_image[:-1]) == 1).sum().item()
    assert starts == 3 and is_image.sum().item() == 3 * 17


def test_budget_lowers_tiling_then_falls_back_to_global_views(anyres) -> None:
    _, processor = anyres
    big = Image.new("RGB", (900, 900), "white")
    full = encode(processor, user(big, "x"))
    assert full["image_grids"].tolist() == [[3, 3]]
    budget = full["image_token_counts"].item() - 1
    lowered = encode(processor, user(big, "x"), max_visual_tokens=budget)
    assert lowered["image_token_counts"].item() <= budget
    assert lowered["image_grids"][0].prod().item() < 9
    only_global = encode(processor, user(big, "x"), max_visual_tokens=17)
    assert only_global["image_grids"].tolist() == [[0, 0]] and only_global["image_token_counts"].tolist() == [17]


def test_budget_too_small_for_global_views_names_the_numbers(anyres) -> None:
    _, processor = anyres
    image = Image.new("RGB", (64, 64))
    with pytest.raises(ValueError, match=r"max_visual_tokens=30 is too small for 2 images: .* need 34 tokens"):
        encode(processor, user(image, image, "x"), max_visual_tokens=30)


def test_more_images_than_the_configured_maximum_is_refused(anyres) -> None:
    _, processor = anyres
    limited = copy.deepcopy(processor)
    limited.max_images = 2
    image = Image.new("RGB", (64, 64))
    with pytest.raises(ValueError, match="3 images, more than max_images=2"):
        encode(limited, user(image, image, image, "x"))


def test_batch_of_requests_with_different_treatments_runs_through_the_model(anyres) -> None:
    model, processor = anyres
    tall = Image.new("RGB", (300, 900), "white")
    square = Image.new("RGB", (64, 64), "red")
    batch = processor.apply_chat_template(
        [user(tall, "read"), user(square, "and", square, "compare")],
        add_generation_prompt=True, tokenize=True, return_dict=True,
    )
    assert batch["image_grids"].tolist() == [[3, 1], [0, 0], [0, 0]]
    out = model(**batch)
    assert torch.isfinite(out.logits).all()
    generated = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert generated.shape == (2, batch["input_ids"].shape[1] + 3)


def test_model_refuses_counts_from_a_different_config(anyres) -> None:
    model, processor = anyres
    batch = encode(processor, user(Image.new("RGB", (64, 64)), "x"), image_treatment="global")
    batch["image_token_counts"] = batch["image_token_counts"] + 1
    with pytest.raises(ValueError, match="image 0: the processor expanded it to 18 tokens but the model's config gives 17"):
        model(**batch)


def test_model_refuses_pixel_values_that_do_not_match_the_grids(anyres) -> None:
    model, processor = anyres
    batch = encode(processor, user(Image.new("RGB", (300, 900)), "x"))
    batch["pixel_values"] = batch["pixel_values"][:-1]
    with pytest.raises(ValueError, match="pixel_values hold 3 views but image_grids describe 4"):
        model(**batch)
