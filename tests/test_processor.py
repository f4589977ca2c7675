"""LlavaVidProcessor: placeholder expansion, batching/padding, pixel order, errors, save/load, parity."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaImageProcessorPil

import llava_vid  # noqa: F401  (registers the Auto classes)
import llava_vid.geometry as geometry_module
import llava_vid.modeling.llava_vid as model_module
import llava_vid.processing.processor as processor_module
from llava_vid.geometry import num_image_tokens
from llava_vid.processing.image_processor import LlavaVidImageProcessor
from llava_vid.processing.media import MediaError
from llava_vid.processing.processor import IGNORE_INDEX, LlavaVidProcessor

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
COLOUR_CHANNEL = {RED: 0, GREEN: 1, BLUE: 2}


def user_turn(images, text: str = "What is in the picture?") -> dict:
    return {"role": "user", "content": [*({"type": "image", "image": image} for image in images), {"type": "text", "text": text}]}


def image_runs(input_ids: torch.Tensor, image_token_id: int) -> list[tuple[int, int]]:
    """(start, length) of every contiguous run of image ids in a 1-D row."""
    runs, start = [], None
    values = input_ids.tolist()
    for position, value in enumerate(values + [None]):
        if value == image_token_id and start is None:
            start = position
        elif value != image_token_id and start is not None:
            runs.append((start, position - start))
            start = None
    return runs


def numbers_in(message: str) -> set[int]:
    return {int(number) for number in re.findall(r"\d+", message)}


# --------------------------------------------------------------------------- expansion


def test_processor_and_model_share_one_token_count_function() -> None:
    assert processor_module.num_image_tokens is geometry_module.num_image_tokens
    assert model_module.num_image_tokens is geometry_module.num_image_tokens


def test_each_placeholder_expands_to_num_image_tokens(tiny_processor, solid_image) -> None:
    per_image = num_image_tokens(tiny_processor.geometry)
    assert per_image == 16  # 56 px / 14 px patches → 4 × 4, CLS dropped
    text = "USER: <image>\nCompare with <image> please. ASSISTANT:"
    encoded = tiny_processor(text=text, images=[solid_image(RED), solid_image(GREEN)])
    input_ids = encoded["input_ids"][0]
    image_id = tiny_processor.image_token_id
    assert int((input_ids == image_id).sum()) == 2 * per_image
    # Two separate blocks of exactly per_image ids, and the text around them untouched.
    assert [length for _, length in image_runs(input_ids, image_id)] == [per_image, per_image]
    collapsed = [
        token for position, token in enumerate(input_ids.tolist())
        if token != image_id or position == 0 or input_ids[position - 1] != image_id
    ]  # fmt: skip
    assert collapsed == tiny_processor.tokenizer(text)["input_ids"]


def test_expansion_follows_the_geometry(tiny_processor, solid_image) -> None:
    """With CLS kept the same tower gives 17 tokens per image; the processor must follow."""
    full = LlavaVidProcessor(
        tiny_processor.image_processor, copy.deepcopy(tiny_processor.tokenizer), patch_size=14, vision_feature_select="full"
    )
    assert full.tokens_per_image == num_image_tokens(full.geometry) == 17
    encoded = full(text="<image>Hi", images=[solid_image()])
    assert int((encoded["input_ids"] == full.image_token_id).sum()) == 17


def test_chat_template_expands_every_image(tiny_processor, solid_image) -> None:
    conversation = [
        user_turn([solid_image(RED), solid_image(GREEN)]),
        {"role": "assistant", "content": "Two squares."},
        user_turn([solid_image(BLUE)], "And this one?"),
        {"role": "assistant", "content": "Blue."},
    ]
    encoded = tiny_processor.apply_chat_template(conversation, tokenize=True, return_dict=True)
    runs = image_runs(encoded["input_ids"][0], tiny_processor.image_token_id)
    assert [length for _, length in runs] == [16, 16, 16]
    assert encoded["pixel_values"].shape == (3, 3, 56, 56)


# --------------------------------------------------------------------------- batching


def _channel_of(pixel_block: torch.Tensor) -> int:
    """Which of R, G, B dominates a normalised solid-colour image (3, H, W)."""
    return int(pixel_block.mean(dim=(1, 2)).argmax())


def test_batch_is_left_padded_and_images_stay_in_placeholder_order(tiny_processor, solid_image) -> None:
    first = [user_turn([solid_image(RED, (56, 56)), solid_image(GREEN, (56, 56))], "Compare them."),
             {"role": "assistant", "content": "Red and green."}]  # fmt: skip
    second = [user_turn([solid_image(BLUE, (56, 56))], "Colour?"), {"role": "assistant", "content": "Blue."}]
    batch = tiny_processor.apply_chat_template([second, first], tokenize=True, return_dict=True)
    singles = [tiny_processor.apply_chat_template(c, tokenize=True, return_dict=True) for c in (second, first)]

    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    assert input_ids.shape[0] == 2
    lengths = [single["input_ids"].shape[1] for single in singles]
    assert input_ids.shape[1] == max(lengths)
    assert lengths[0] < lengths[1]  # the one-image conversation is shorter and gets padded
    pad_id = tiny_processor.tokenizer.pad_token_id
    for row, (single, length) in enumerate(zip(singles, lengths)):
        padding = input_ids.shape[1] - length
        # Left padding: zeros first, then exactly the unpadded encoding.
        assert attention_mask[row, :padding].eq(0).all() and attention_mask[row, padding:].eq(1).all()
        assert input_ids[row, :padding].eq(pad_id).all()
        assert torch.equal(input_ids[row, padding:], single["input_ids"][0])
        assert torch.equal(batch["labels"][row, padding:], single["labels"][0])
        assert batch["labels"][row, :padding].eq(IGNORE_INDEX).all()

    # Images of the batch, in placeholder order: row 0's blue, then row 1's red and green.
    pixel_values = batch["pixel_values"]
    assert pixel_values.shape == (3, 3, 56, 56)
    assert [_channel_of(block) for block in pixel_values] == [2, 0, 1]
    expected = torch.cat([singles[0]["pixel_values"], singles[1]["pixel_values"]])
    assert torch.equal(pixel_values, expected)


def test_call_accepts_flat_and_per_prompt_image_lists(tiny_processor, solid_image) -> None:
    texts = ["<image> one", "<image><image> two"]
    images = [solid_image(RED, (56, 56)), solid_image(GREEN, (56, 56)), solid_image(BLUE, (56, 56))]
    flat = tiny_processor(text=texts, images=images)
    nested = tiny_processor(text=texts, images=[images[:1], images[1:]])
    for key in ("input_ids", "attention_mask", "pixel_values"):
        assert torch.equal(flat[key], nested[key])
    assert [_channel_of(block) for block in flat["pixel_values"]] == [0, 1, 2]
    assert "labels" not in flat


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("placeholders", "num_images"), [(3, 1), (2, 5), (1, 0)])
def test_image_count_mismatch_names_both_counts(tiny_processor, solid_image, placeholders, num_images) -> None:
    text = "USER: " + "<image>" * placeholders + " What? ASSISTANT:"
    images = [solid_image() for _ in range(num_images)]
    with pytest.raises(ValueError) as error:
        tiny_processor(text=text, images=images)
    assert {placeholders, num_images} <= numbers_in(str(error.value))


def test_per_prompt_image_count_mismatch_names_both_counts(tiny_processor, solid_image) -> None:
    with pytest.raises(ValueError) as error:
        tiny_processor(text=["<image>a", "<image><image><image>b"], images=[[solid_image()], [solid_image()] * 2])
    assert {3, 2} <= numbers_in(str(error.value))


def _image_conversation(source) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "path": source}, {"type": "text", "text": "Q"}]},
            {"role": "assistant", "content": "A"}]  # fmt: skip


def test_missing_image_file_names_the_file(tiny_processor, tmp_path: Path) -> None:
    missing = tmp_path / "no_such_picture.png"
    with pytest.raises(MediaError, match=re.escape(str(missing))):
        tiny_processor.apply_chat_template(_image_conversation(str(missing)), tokenize=True, return_dict=True)
    with pytest.raises(MediaError, match=re.escape(str(missing))):
        tiny_processor(text="<image>", images=[str(missing)])


def test_truncated_image_file_names_the_file(tiny_processor, noise_image, tmp_path: Path) -> None:
    path = tmp_path / "truncated.png"
    noise_image(64, 64).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError, match=re.escape(str(path))):
        tiny_processor.apply_chat_template(_image_conversation(str(path)), tokenize=True, return_dict=True)


def test_prompt_longer_than_max_length_after_expansion_names_both_numbers(tiny_processor, solid_image) -> None:
    processor = copy.deepcopy(tiny_processor)
    text = "USER: <image>\nWhat is it? ASSISTANT:"
    text_length = len(processor.tokenizer(text)["input_ids"])
    expanded_length = text_length - 1 + 16
    # The text alone fits; only the expanded image makes it too long.
    processor.tokenizer.model_max_length = text_length + 5
    with pytest.raises(ValueError) as error:
        processor(text=text, images=[solid_image()])
    assert {expanded_length, text_length + 5} <= numbers_in(str(error.value))
    # Exactly at the limit is fine.
    processor.tokenizer.model_max_length = expanded_length
    assert processor(text=text, images=[solid_image()])["input_ids"].shape == (1, expanded_length)
    # The session processor is untouched.
    assert tiny_processor.tokenizer.model_max_length == 8192


# --------------------------------------------------------------------------- image modes


def _mode_images() -> dict[str, Image.Image]:
    rgba = Image.new("RGBA", (48, 32), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    palette = Image.new("RGB", (30, 50), (0, 128, 255)).convert("P", palette=Image.Palette.ADAPTIVE)
    return {
        "RGBA": rgba,
        "P": palette,
        "L": Image.new("L", (40, 40), 77),
        "CMYK": Image.new("CMYK", (20, 60), (0, 255, 255, 0)),
    }


@pytest.mark.parametrize("as_file", [False, True])
def test_non_rgb_images_load_and_give_finite_pixels(tiny_processor, tmp_path: Path, as_file: bool) -> None:
    images = _mode_images()
    sources = []
    for mode, image in images.items():
        if as_file:
            path = tmp_path / f"{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
            image.save(path)
            sources.append(str(path))
        else:
            sources.append(image)
    conversation = [user_turn(sources), {"role": "assistant", "content": "Four pictures."}]
    encoded = tiny_processor.apply_chat_template(conversation, tokenize=True, return_dict=True)
    pixel_values = encoded["pixel_values"]
    assert pixel_values.shape == (4, 3, 56, 56)
    assert torch.isfinite(pixel_values).all()
    # Opaque red RGBA is red: same pixels as the RGB image, apart from the one transparent corner.
    red = tiny_processor.image_processor([images["RGBA"].convert("RGB")])["pixel_values"][0]
    assert _channel_of(pixel_values[0]) == 0
    assert (pixel_values[0] - red).abs().gt(1e-5).float().mean() < 0.05
    # Grayscale stays gray: after undoing the per-channel normalisation, R == G == B.
    mean = torch.tensor(tiny_processor.image_processor.image_mean).view(3, 1, 1)
    std = torch.tensor(tiny_processor.image_processor.image_std).view(3, 1, 1)
    gray = pixel_values[2] * std + mean
    torch.testing.assert_close(gray[0], gray[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(gray[0], gray[2], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- save / load


def test_save_and_auto_load_round_trip(tiny_processor, solid_image, tmp_path: Path) -> None:
    # Non-default settings everywhere, so a setting lost on save would change the outputs.
    processor = LlavaVidProcessor(
        LlavaVidImageProcessor(image_size=56, aspect_mode="crop"),
        copy.deepcopy(tiny_processor.tokenizer),
        patch_size=14,
        vision_feature_select="full",
        template="plain",
    )
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is LlavaVidProcessor
    assert (loaded.template, loaded.vision_feature_select, loaded.patch_size) == ("plain", "full", 14)
    assert (loaded.image_processor.image_size, loaded.image_processor.aspect_mode) == (56, "crop")
    assert loaded.image_token_id == processor.image_token_id
    assert loaded.tokenizer.padding_side == "left"
    assert loaded.tokenizer.model_max_length == processor.tokenizer.model_max_length

    conversations = [
        [user_turn([solid_image(RED, (80, 30))]), {"role": "assistant", "content": "A wide red box. ✓"}],
        [user_turn([solid_image(GREEN, (20, 60)), solid_image(BLUE)]), {"role": "assistant", "content": "Two."}],
    ]
    before = processor.apply_chat_template(conversations, tokenize=True, return_dict=True)
    after = loaded.apply_chat_template(conversations, tokenize=True, return_dict=True)
    assert set(before) == set(after) == {
        "input_ids", "attention_mask", "labels", "pixel_values", "image_sizes", "image_grids", "image_token_counts"
    }
    for key in before:
        assert torch.equal(before[key], after[key]), key


# --------------------------------------------------------------------------- parity with transformers

PARITY_SIZES = [(100, 60), (60, 100), (333, 77), (32, 32), (1, 1)]  # (width, height)


@pytest.mark.parametrize("aspect_mode", ["pad", "crop"])
@pytest.mark.parametrize(("width", "height"), PARITY_SIZES)
def test_pixels_match_transformers_llava_image_processor(
    tiny_processor, noise_image, aspect_mode: str, width: int, height: int
) -> None:
    reference = LlavaImageProcessorPil(
        do_pad=aspect_mode == "pad", size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}
    )
    ours = LlavaVidImageProcessor(image_size=56, aspect_mode=aspect_mode)
    image = noise_image(width, height, seed=width * 1000 + height)
    expected = reference(image, return_tensors="pt")["pixel_values"]  # (1, 3, 56, 56)
    actual = ours([image])["pixel_values"]
    assert actual.shape == expected.shape == (1, 3, 56, 56)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    if aspect_mode == "pad":
        # The tiny preset pads, and the full processor gives the same pixels.
        assert tiny_processor.image_processor.aspect_mode == "pad"
        through_processor = tiny_processor(text="<image>", images=[image])["pixel_values"]
        torch.testing.assert_close(through_processor, expected, atol=1e-5, rtol=0)
