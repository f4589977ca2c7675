"""Checkpoint conversion from transformers' LlavaNext (AnyRes) → llava_vid, checked by parity with transformers.

The same tiny random ``LlavaNextForConditionalGeneration`` runs through transformers and, converted, through
ours. Both see the same pixels (transformers' ``LlavaNextImageProcessorPil`` views, flattened for ours) and the
same ``input_ids`` (expanded by transformers' ``LlavaNextProcessor``), so equal logits check the weight mapping
and our AnyRes packing (grid, unpad, newlines); equal token counts check :func:`llava_vid.geometry.num_image_tokens`
against transformers' own arithmetic.
"""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch
from transformers.models.llava_next.modeling_llava_next import unpad_image
from PIL import Image
from test_convert import load_cli, tiny_text_kwargs, tiny_vision_config
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
)
from transformers.image_processing_utils import select_best_resolution as hf_select_best_resolution
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

import llava_vid  # noqa: F401  (registers the Auto classes)
from llava_vid.convert import (
    convert_llava_hf,
    convert_llava_next_hf,
    llava_next_hf_config_to_ours,
    map_llava_hf_state_dict,
    map_llava_next_hf_state_dict,
    save_converted,
)
from llava_vid.geometry import ImagePlan, num_image_tokens, parse_grid_pinpoints, select_best_resolution, tile_grid
from llava_vid.tokenizer import IMAGE_TOKEN, build_offline_tokenizer

IMAGE_SIZE = 56  # the tower's tile side; 14 px patches → 4 × 4 tokens per view
# The source's own normalisation (not CLIP's), so the converted processor must read it from the checkpoint.
IMAGE_MEAN = [0.5, 0.4, 0.3]
IMAGE_STD = [0.2, 0.25, 0.3]
PINPOINTS = {
    # LLaVA-NeXT's five layouts for a 56 px tile.
    "default": [[56, 112], [112, 56], [112, 112], [168, 56], [56, 168]],
    # LLaVA-OneVision's "(1x1),...,(3x3)" written out as transformers' config holds it (a list; 1×1 included).
    "range": [list(size) for size in parse_grid_pinpoints("(1x1),...,(3x3)", IMAGE_SIZE)],
}
SIZES = [(100, 60), (60, 100), (333, 77), (32, 32), (1000, 1000), (1, 1)]  # (width, height)
PROMPT = "USER: <image>\nWhat is shown here? ASSISTANT:"


def make_image(width: int, height: int) -> Image.Image:
    """Reproducible noise, so any misplaced tile or unpad band changes the logits."""
    generator = torch.Generator().manual_seed(width * 10007 + height)
    pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy(), "RGB")


@pytest.fixture(scope="module")
def tokenizer():
    return build_offline_tokenizer(512)


def next_config(tokenizer, pinpoints: list[list[int]]) -> LlavaNextConfig:
    return LlavaNextConfig(
        vision_config=tiny_vision_config(),
        text_config=LlamaConfig(**tiny_text_kwargs(len(tokenizer))),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_grid_pinpoints=pinpoints,
    )


def next_processor(image_processor, tokenizer) -> LlavaNextProcessor:
    """Configured as llava-hf's LLaVA-NeXT processors are: CLS counted, then dropped by the "default" strategy."""
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


@pytest.fixture(scope="module", params=sorted(PINPOINTS))
def checkpoint(request, tmp_path_factory, tokenizer):
    """A tiny random transformers LlavaNext saved with its tokenizer and image processor, converted to ours.

    Returns ``(src, pinpoints, hf_model, hf_processor, model, processor)``.
    """
    pinpoints = PINPOINTS[request.param]
    torch.manual_seed(0)
    hf_model = LlavaNextForConditionalGeneration(next_config(tokenizer, pinpoints)).eval()
    with torch.no_grad():  # std-0.02 init gives near-flat logits; widen them so greedy argmaxes are not near-ties
        hf_model.lm_head.weight.mul_(20.0)
    src = tmp_path_factory.mktemp(f"llava_next_{request.param}")
    hf_model.save_pretrained(src)
    tokenizer.save_pretrained(src)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_grid_pinpoints=pinpoints,
        image_mean=IMAGE_MEAN,
        image_std=IMAGE_STD,
    )
    image_processor.save_pretrained(src)  # preprocessor_config.json
    hf_processor = next_processor(image_processor, AutoTokenizer.from_pretrained(src, padding_side="left"))
    model, processor = convert_llava_next_hf(src)
    return src, pinpoints, hf_model, hf_processor, model, processor


def hf_inputs(hf_processor, texts: list[str], images: list[Image.Image]) -> dict[str, torch.Tensor]:
    """transformers' inputs: expanded, left-padded ids and ``(N, max_views, 3, S, S)`` zero-padded pixels."""
    return dict(hf_processor(images=images, text=texts, padding=True, return_tensors="pt"))


def hf_image_tokens(hf_processor, height: int, width: int) -> int:
    # transformers' own count (what LlavaNextProcessor.replace_image_token writes), CLS dropped by "default".
    return hf_processor._get_number_of_features(height, width, IMAGE_SIZE, IMAGE_SIZE) - 1


def grids_for(image_sizes: torch.Tensor, pinpoints: list[list[int]]) -> torch.Tensor:
    """Tile ``(rows, cols)`` per image from our geometry, checked against transformers' grid shape."""
    grids = []
    for size in image_sizes.tolist():
        grid = tile_grid(select_best_resolution(tuple(size), pinpoints), IMAGE_SIZE)
        assert grid == tuple(get_anyres_image_grid_shape(size, pinpoints, IMAGE_SIZE)), size
        grids.append(grid)
    return torch.tensor(grids, dtype=torch.long)


def to_ours(inputs: dict[str, torch.Tensor], pinpoints: list[list[int]]) -> dict[str, torch.Tensor]:
    """The same views flattened to ``(V, 3, S, S)`` (zero padding views dropped) plus ``image_grids``."""
    grids = grids_for(inputs["image_sizes"], pinpoints)
    views = []
    for image_views, (rows, cols) in zip(inputs["pixel_values"], grids.tolist()):
        num_views = 1 + rows * cols
        assert not image_views[num_views:].any(), "transformers' batching padding should be all zeros"
        views.append(image_views[:num_views])
    return {
        "input_ids": inputs["input_ids"],
        "attention_mask": inputs["attention_mask"],
        "pixel_values": torch.cat(views),  # (V, 3, S, S)
        "image_sizes": inputs["image_sizes"],
        "image_grids": grids,
    }


def assert_same_logits(hf_model, model, inputs, ours) -> None:
    with torch.no_grad():
        expected = hf_model(**inputs).logits
        actual = model(**ours).logits
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------ conversion
def test_config_and_processor(checkpoint, tokenizer):
    _, pinpoints, hf_model, _, model, processor = checkpoint
    config = model.config
    assert (config.image_aspect_mode, config.image_merge, config.anyres_max_tiles) == ("anyres", "spatial_unpad", None)
    assert config.image_grid_pinpoints == pinpoints
    assert config.has_image_newline and config.vision_feature_select == "patch"
    assert config.image_token_id == hf_model.config.image_token_id
    image_processor = processor.image_processor
    assert image_processor.aspect_mode == "anyres" and image_processor.image_grid_pinpoints == pinpoints
    assert (image_processor.image_mean, image_processor.image_std) == (IMAGE_MEAN, IMAGE_STD)
    assert processor.geometry == config.vision_geometry()


def test_keys_map_to_ours(checkpoint):
    _, _, hf_model, _, model, _ = checkpoint
    hf_state = hf_model.state_dict()
    mapped = map_llava_next_hf_state_dict(hf_state)
    assert set(mapped) == set(model.state_dict())
    assert mapped["image_newline"] is hf_state["model.image_newline"]
    assert torch.equal(model.image_newline, hf_state["model.image_newline"])
    assert set(map_llava_next_hf_state_dict({"image_newline": hf_state["model.image_newline"]})) == {"image_newline"}
    # The Llava mapper knows no image_newline: converting a LlavaNext state dict as Llava would drop it.
    with pytest.raises(ValueError, match=r"model\.image_newline"):
        map_llava_hf_state_dict(hf_state)


# ------------------------------------------------------------------------------------------ geometry
@pytest.mark.parametrize("variant", sorted(PINPOINTS))
def test_token_counts_and_grids_match_transformers(variant, tokenizer):
    """Our grid choice and token count against transformers' for the listed sizes and 300 random ones."""
    pinpoints = PINPOINTS[variant]
    config = llava_next_hf_config_to_ours(next_config(tokenizer, pinpoints), tokenizer)
    hf_processor = next_processor(LlavaNextImageProcessorPil(image_grid_pinpoints=pinpoints), tokenizer)
    rng = random.Random(0)
    sizes = [(h, w) for w, h in SIZES] + [(rng.randint(1, 3000), rng.randint(1, 3000)) for _ in range(300)]
    for height, width in sizes:
        resolution = select_best_resolution((height, width), pinpoints)
        assert list(resolution) == list(hf_select_best_resolution((height, width), pinpoints)), (height, width)
        plan = ImagePlan((height, width), tile_grid(resolution, IMAGE_SIZE))
        side = config.vision_geometry().patches_per_side
        feature_grid = torch.zeros(1, plan.grid[0] * side, plan.grid[1] * side)
        if min(unpad_image(feature_grid, (height, width)).shape[1:]) == 0:
            # Thinner than one patch: transformers keeps an empty grid, we keep one row (documented).
            continue
        assert num_image_tokens(config.vision_geometry(), plan) == hf_image_tokens(hf_processor, height, width), (
            height,
            width,
        )


# ------------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_one_image_parity(checkpoint, size):
    _, pinpoints, hf_model, hf_processor, model, _ = checkpoint
    width, height = size
    inputs = hf_inputs(hf_processor, [PROMPT], [make_image(width, height)])
    ours = to_ours(inputs, pinpoints)
    plan = ImagePlan((height, width), tuple(ours["image_grids"][0].tolist()))
    expected_tokens = num_image_tokens(model.config.vision_geometry(), plan)
    image_id = model.config.image_token_id
    assert int((inputs["input_ids"] == image_id).sum()) == expected_tokens == hf_image_tokens(hf_processor, height, width)
    assert_same_logits(hf_model, model, inputs, ours)


BATCH_TEXTS = [
    "USER: <image> and <image>\nCompare them. ASSISTANT:",
    "USER: <image><image>\n<image> What is this? ASSISTANT:",
    "USER: <image>\nDescribe. ASSISTANT:",
]


def test_batch_parity_and_generation(checkpoint):
    """Several images per row (all six sizes), left padding; logits and greedy generation agree."""
    _, pinpoints, hf_model, hf_processor, model, _ = checkpoint
    images = [make_image(width, height) for width, height in SIZES]
    inputs = hf_inputs(hf_processor, BATCH_TEXTS, images)
    assert (inputs["attention_mask"][:, 0] == 0).any(), "the batch should be left-padded"
    ours = to_ours(inputs, pinpoints)
    geometry = model.config.vision_geometry()
    counts = [
        num_image_tokens(geometry, ImagePlan(tuple(size), tuple(grid)))
        for size, grid in zip(ours["image_sizes"].tolist(), ours["image_grids"].tolist())
    ]
    assert counts == [hf_image_tokens(hf_processor, h, w) for h, w in ours["image_sizes"].tolist()]
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == sum(counts)
    assert_same_logits(hf_model, model, inputs, ours)
    options = dict(max_new_tokens=6, do_sample=False, pad_token_id=hf_processor.tokenizer.pad_token_id)
    expected_ids = hf_model.generate(**inputs, **options)
    actual_ids = model.generate(**ours, **options)
    assert torch.equal(actual_ids, expected_ids)


# ------------------------------------------------------------------------------------------ our processor
@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_our_processor_end_to_end(checkpoint, size):
    """Our converted processor writes the ids and pixels transformers' processor writes, and the logits match."""
    _, pinpoints, hf_model, hf_processor, model, processor = checkpoint
    image = make_image(*size)
    inputs = hf_inputs(hf_processor, [PROMPT], [image])
    expected = to_ours(inputs, pinpoints)
    encoded = processor(text=PROMPT, images=[image], image_treatment="anyres")
    assert torch.equal(encoded["input_ids"], expected["input_ids"])
    assert torch.equal(encoded["image_sizes"], expected["image_sizes"])
    assert torch.equal(encoded["image_grids"], expected["image_grids"])
    torch.testing.assert_close(encoded["pixel_values"], expected["pixel_values"], atol=1e-5, rtol=0)
    with torch.no_grad():
        actual = model(**encoded).logits
        reference = hf_model(**inputs).logits
    torch.testing.assert_close(actual, reference, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------ saving and CLI
def test_cli_round_trip(checkpoint, tmp_path, capsys):
    src, pinpoints, hf_model, hf_processor, _, _ = checkpoint
    assert load_cli().main(["--from", "llava-next-hf", str(src), str(tmp_path)]) == 0
    assert "image_aspect_mode=anyres image_merge=spatial_unpad" in capsys.readouterr().out
    model = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    processor = AutoProcessor.from_pretrained(tmp_path)
    assert model.config.image_grid_pinpoints == pinpoints
    assert processor.image_processor.aspect_mode == "anyres"
    assert processor.image_processor.image_grid_pinpoints == pinpoints
    inputs = hf_inputs(hf_processor, BATCH_TEXTS[:1], [make_image(333, 77), make_image(60, 100)])
    assert_same_logits(hf_model, model, inputs, to_ours(inputs, pinpoints))


def test_save_converted_round_trip(checkpoint, tmp_path):
    _, pinpoints, hf_model, hf_processor, model, processor = checkpoint
    save_converted(model, processor, tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert torch.equal(reloaded.image_newline, model.image_newline)
    inputs = hf_inputs(hf_processor, [PROMPT], [make_image(100, 60)])
    assert_same_logits(hf_model, reloaded, inputs, to_ours(inputs, pinpoints))


# ------------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("projector_hidden_act", "relu", "projector_hidden_act"),
        ("multimodal_projector_bias", False, "multimodal_projector_bias"),
        ("vision_feature_layer", [-2, -5], "vision_feature_layer"),
        ("vision_feature_select_strategy", "full", "vision_feature_select_strategy='full'"),
        ("image_token_index", 5, "image_token_id is 5"),
    ],
)
def test_config_refusals(checkpoint, tokenizer, field, value, message):
    _, _, hf_model, _, _, _ = checkpoint
    config = LlavaNextConfig.from_dict(hf_model.config.to_dict())
    setattr(config, field, value)
    with pytest.raises(ValueError, match=message):
        llava_next_hf_config_to_ours(config, tokenizer)


def test_checkpoint_refusals(checkpoint, tmp_path):
    src, *_ = checkpoint
    shutil.copytree(src, tmp_path, dirs_exist_ok=True)
    # A LlavaNext checkpoint is not a Llava one (and the Llava converter would drop image_newline).
    with pytest.raises(ValueError, match="model_type 'llava'"):
        convert_llava_hf(tmp_path)
    # The processor and the model must tile alike.
    preprocessor = json.loads((tmp_path / "preprocessor_config.json").read_text())
    preprocessor["image_grid_pinpoints"] = [[56, 56]]
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    with pytest.raises(ValueError, match="image_grid_pinpoints"):
        convert_llava_next_hf(tmp_path)
