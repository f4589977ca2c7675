"""LlavaVidForConditionalGeneration: loss and gradients, count checks, generation, vision batching, save/load."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from transformers import AutoConfig, AutoModelForImageTextToText

import llava_vid  # noqa: F401  (registers the Auto classes)
from llava_vid.config import LlavaVidConfig
from llava_vid.modeling import LlavaVidForConditionalGeneration
from llava_vid.modeling.llava_vid import labelled_positions
from llava_vid.modeling.merge import merge_visual_features
from llava_vid.modeling.vision import VisionFeatureCache

RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)


def numbers_in(message: str) -> set[int]:
    return {int(number) for number in re.findall(r"\d+", message)}


def conversation(images, question: str, answer: str | None = None) -> list[dict]:
    parts = [*({"type": "image", "image": image} for image in images), {"type": "text", "text": question}]
    messages = [{"role": "user", "content": parts}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


@pytest.fixture(scope="module")
def training_batch(tiny_processor, solid_image):
    """Two left-padded training conversations, three images in total."""
    return tiny_processor.apply_chat_template(
        [
            conversation([solid_image(RED), solid_image(GREEN, (20, 50))], "Compare the two.", "Red, then green."),
            conversation([solid_image(BLUE, (70, 30))], "Colour?", "Blue."),
        ],
        tokenize=True,
        return_dict=True,
    )


@pytest.fixture(scope="module")
def prompt_conversations(solid_image):
    """Generation prompts of different lengths and image counts (so the batch needs padding)."""
    return [
        conversation([solid_image(RED)], "What colour is the square?"),
        conversation([solid_image(GREEN, (20, 50)), solid_image(BLUE, (70, 30))], "Compare the two pictures in detail."),
        conversation([solid_image(YELLOW, (33, 33))], "Hi"),
    ]


@pytest.fixture(scope="module")
def saved_model_dir(tiny_model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_model")
    tiny_model.save_pretrained(directory)
    return directory


def logits_of(model, batch) -> torch.Tensor:
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    with torch.no_grad():
        return model(**inputs).logits


# --------------------------------------------------------------------------- loss and gradients


def test_loss_is_finite_and_gradients_reach_the_projector(tiny_model, training_batch) -> None:
    tiny_model.zero_grad(set_to_none=True)
    try:
        output = tiny_model(**training_batch)
        assert output.loss is not None and torch.isfinite(output.loss)
        assert output.logits.shape == (*training_batch["input_ids"].shape, tiny_model.config.text_config.vocab_size)
        output.loss.backward()
        projector_grads = [parameter.grad for parameter in tiny_model.projector.parameters()]
        assert projector_grads and all(grad is not None for grad in projector_grads)
        assert all(torch.isfinite(grad).all() for grad in projector_grads)
        assert all(grad.abs().sum() > 0 for grad in projector_grads)
    finally:
        tiny_model.zero_grad(set_to_none=True)



@pytest.mark.parametrize("num_items_in_batch", [None, 7])
def test_loss_from_the_labelled_positions_only_is_the_full_loss(tiny_model, training_batch, num_items_in_batch) -> None:
    """Training's shortcut (logits only where a label follows) gives the same loss and gradients as
    the full projection, with the Trainer's token count too; the kept logits are the full ones there."""
    extra = {} if num_items_in_batch is None else {"num_items_in_batch": torch.tensor(num_items_in_batch)}
    keep = labelled_positions(training_batch["labels"])
    assert 0 < keep.sum() < keep.numel()

    def loss_and_grads(**options):
        tiny_model.zero_grad(set_to_none=True)
        output = tiny_model(**training_batch, **extra, **options)
        output.loss.backward()
        grads = [parameter.grad.clone() for parameter in tiny_model.projector.parameters()]
        return output, grads

    try:
        full, full_grads = loss_and_grads()
        kept, kept_grads = loss_and_grads(logits_to_keep=keep)
    finally:
        tiny_model.zero_grad(set_to_none=True)
    assert kept.logits.shape == (keep.sum(), tiny_model.config.text_config.vocab_size)
    torch.testing.assert_close(kept.logits, full.logits[keep])
    torch.testing.assert_close(kept.loss, full.loss)
    for ours, theirs in zip(kept_grads, full_grads):
        torch.testing.assert_close(ours, theirs)


def test_a_position_mask_of_another_shape_than_the_labels_is_refused(tiny_model, training_batch) -> None:
    keep = labelled_positions(training_batch["labels"])[:, 1:]
    with torch.no_grad(), pytest.raises(ValueError, match=r"logits_to_keep is a \(2, \d+\) mask but labels are"):
        tiny_model(**training_batch, logits_to_keep=keep)

def test_images_change_the_logits(tiny_model, tiny_processor, solid_image) -> None:
    """The features really are scattered in: a different image gives different answer logits."""
    red, blue = (
        tiny_processor.apply_chat_template(conversation([solid_image(colour)], "Colour?"), add_generation_prompt=True,
                                           tokenize=True, return_dict=True)  # fmt: skip
        for colour in (RED, BLUE)
    )
    assert torch.equal(red["input_ids"], blue["input_ids"])
    assert not torch.allclose(logits_of(tiny_model, red)[:, -1], logits_of(tiny_model, blue)[:, -1])


# --------------------------------------------------------------------------- count checks


def _one_image_prompt(tiny_processor, solid_image):
    return tiny_processor(text="USER: <image>\nWhat? ASSISTANT:", images=[solid_image()])


def test_more_images_than_placeholders_names_both_counts(tiny_model, tiny_processor, solid_image) -> None:
    inputs = _one_image_prompt(tiny_processor, solid_image)
    two_images = inputs["pixel_values"].repeat(2, 1, 1, 1)  # (2, 3, 56, 56)
    with pytest.raises(ValueError) as error:
        tiny_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], pixel_values=two_images)
    message = str(error.value)
    assert {16, 2} <= numbers_in(message)  # 16 placeholder tokens (one image) vs 2 images
    assert "pixel_values" in message


def test_placeholders_without_pixel_values_names_both_counts(tiny_model, tiny_processor, solid_image) -> None:
    inputs = _one_image_prompt(tiny_processor, solid_image)
    with pytest.raises(ValueError) as error:
        tiny_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    assert {16, 0} <= numbers_in(str(error.value))


def test_merge_token_count_mismatch_names_both_numbers() -> None:
    placeholder = 7
    input_ids = torch.tensor([[1, 2] + [placeholder] * 16 + [3]])  # (1, 19)
    embeds = torch.zeros(1, 19, 8)
    with pytest.raises(ValueError) as error:
        merge_visual_features(embeds, input_ids, placeholder, torch.ones(15, 8))
    assert {16, 15} <= numbers_in(str(error.value))


def test_merge_scatters_features_in_reading_order() -> None:
    placeholder = 7
    input_ids = torch.tensor([[0, 7, 7, 1], [7, 2, 7, 3]])  # (2, 4): 4 placeholders, row by row
    embeds = torch.full((2, 4, 3), -1.0)
    features = torch.arange(4, dtype=torch.float).view(4, 1).expand(4, 3)  # feature i is all i
    merged = merge_visual_features(embeds, input_ids, placeholder, features)
    assert merged[0, 1, 0] == 0 and merged[0, 2, 0] == 1 and merged[1, 0, 0] == 2 and merged[1, 2, 0] == 3
    text_positions = input_ids != placeholder
    assert merged[text_positions].eq(-1).all()


# --------------------------------------------------------------------------- generation


def _generate(model, inputs, **kwargs) -> torch.Tensor:
    """Greedy continuation tokens only, (B, max_new_tokens)."""
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=6, do_sample=False, **kwargs)
    return output[:, inputs["input_ids"].shape[1]:]


def test_batched_left_padded_generation_equals_per_sample(tiny_model, tiny_processor, prompt_conversations) -> None:
    batch = tiny_processor.apply_chat_template(
        prompt_conversations, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    assert (batch["attention_mask"] == 0).any(), "the batch must actually be padded"
    batched = _generate(tiny_model, batch)
    for row, single_conversation in enumerate(prompt_conversations):
        single = tiny_processor.apply_chat_template(
            single_conversation, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        assert torch.equal(batched[row], _generate(tiny_model, single)[0]), f"row {row}"


def test_generation_with_and_without_kv_cache_agree(tiny_model, tiny_processor, prompt_conversations) -> None:
    batch = tiny_processor.apply_chat_template(
        prompt_conversations, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    with_cache = _generate(tiny_model, batch, use_cache=True)
    without_cache = _generate(tiny_model, batch, use_cache=False)
    assert with_cache.shape == (len(prompt_conversations), 6)
    assert torch.equal(with_cache, without_cache)


# --------------------------------------------------------------------------- vision batching


@contextmanager
def tower_calls(model: LlavaVidForConditionalGeneration) -> Iterator[list[int]]:
    """The number of images of each vision-tower call made inside the block."""
    calls: list[int] = []
    handle = model.vision_tower.register_forward_hook(
        lambda module, args, kwargs, output: calls.append(args[0].shape[0] if args else kwargs["pixel_values"].shape[0]),
        with_kwargs=True,
    )
    try:
        yield calls
    finally:
        handle.remove()


@contextmanager
def feature_cache(model: LlavaVidForConditionalGeneration, cache: VisionFeatureCache) -> Iterator[VisionFeatureCache]:
    """``model`` with ``cache`` as its vision feature cache inside the block (the fixture is shared)."""
    model.vision_feature_cache = cache
    try:
        yield cache
    finally:
        model.vision_feature_cache = None


def test_vision_tower_runs_once_per_forward_and_chunking_is_exact(tiny_model, training_batch, monkeypatch) -> None:
    with tower_calls(tiny_model) as calls:
        num_images = training_batch["pixel_values"].shape[0]
        assert num_images == 3
        monkeypatch.setattr(tiny_model.config, "vision_chunk_size", 64)
        whole = logits_of(tiny_model, training_batch)
        assert calls == [num_images]  # one tower call for all images of both samples

        calls.clear()
        monkeypatch.setattr(tiny_model.config, "vision_chunk_size", 1)
        chunked = logits_of(tiny_model, training_batch)
        assert calls == [1] * num_images
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)


def test_the_vision_feature_cache_reuses_only_identical_views_and_changes_nothing(tiny_model, training_batch) -> None:
    uncached = logits_of(tiny_model, training_batch)
    with tower_calls(tiny_model) as calls, feature_cache(tiny_model, VisionFeatureCache(max_bytes=2**20)) as cache:
        first = logits_of(tiny_model, training_batch)
        assert (cache.computed, cache.reused, calls) == (3, 0, [3])
        again = logits_of(tiny_model, training_batch)
        assert (cache.computed, cache.reused, calls) == (3, 3, [3])  # no tower call the second time

        changed = dict(training_batch)
        changed["pixel_values"] = training_batch["pixel_values"].clone()
        changed["pixel_values"][1, 0, 0, 0] += 1e-3  # one value of one view: a new view
        other = logits_of(tiny_model, changed)
        assert (cache.computed, cache.reused, calls) == (4, 5, [3, 1])
    assert torch.equal(first, uncached) and torch.equal(again, uncached)
    assert not torch.equal(other, uncached)
    assert "4 computed, 5 reused" in cache.describe()


def test_a_full_vision_feature_cache_computes_what_it_cannot_keep(tiny_model, training_batch) -> None:
    uncached = logits_of(tiny_model, training_batch)
    with feature_cache(tiny_model, VisionFeatureCache(max_bytes=1)) as cache:  # keeps nothing
        cached = [logits_of(tiny_model, training_batch) for _ in range(2)]
    assert (cache.computed, cache.reused, cache.uncached, cache.held_bytes) == (6, 0, 6, 0)
    assert all(torch.equal(logits, uncached) for logits in cached)
    assert "6 not kept (cache full)" in cache.describe()


def test_the_vision_feature_cache_refuses_a_tower_that_trains(tiny_model, training_batch) -> None:
    inputs = {key: value for key, value in training_batch.items() if key != "labels"}
    tower_parameters = list(tiny_model.vision_tower.parameters())
    trained_before = [parameter.requires_grad for parameter in tower_parameters]
    tiny_model.vision_tower.requires_grad_(True)
    try:
        with feature_cache(tiny_model, VisionFeatureCache(max_bytes=2**20)):
            with pytest.raises(ValueError, match="needs a frozen vision tower"):
                tiny_model(**inputs)
    finally:
        for parameter, trained in zip(tower_parameters, trained_before):
            parameter.requires_grad_(trained)
    with pytest.raises(ValueError, match="max_bytes must be positive, got 0"):
        VisionFeatureCache(max_bytes=0)


# --------------------------------------------------------------------------- save / load


def test_save_and_auto_load_give_identical_logits(tiny_model, saved_model_dir, training_batch) -> None:
    config = AutoConfig.from_pretrained(saved_model_dir)
    assert isinstance(config, LlavaVidConfig)
    for field in ("projector_type", "vision_feature_layer", "vision_feature_select", "image_token_id",
                  "image_aspect_mode", "vision_chunk_size"):  # fmt: skip
        assert getattr(config, field) == getattr(tiny_model.config, field), field
    assert config.vision_config.to_dict() == tiny_model.config.vision_config.to_dict()
    assert config.text_config.vocab_size == tiny_model.config.text_config.vocab_size

    loaded = AutoModelForImageTextToText.from_pretrained(saved_model_dir)
    loaded.eval()
    assert type(loaded) is LlavaVidForConditionalGeneration
    loaded_state = loaded.state_dict()
    for name, tensor in tiny_model.state_dict().items():
        assert torch.equal(loaded_state[name], tensor), name
    assert torch.equal(logits_of(loaded, training_batch), logits_of(tiny_model, training_batch))


def test_eager_and_sdpa_attention_agree(saved_model_dir, training_batch) -> None:
    logits = {}
    for implementation in ("eager", "sdpa"):
        model = AutoModelForImageTextToText.from_pretrained(saved_model_dir, attn_implementation=implementation)
        model.eval()
        # The choice must reach both sub-models, or the comparison below is vacuous.
        assert model.language_model.config._attn_implementation == implementation
        assert model.vision_tower.config._attn_implementation == implementation
        logits[implementation] = logits_of(model, training_batch)
    real = training_batch["attention_mask"].bool()  # padded positions' logits are meaningless
    torch.testing.assert_close(logits["eager"][real], logits["sdpa"][real], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- inputs_embeds


def test_inputs_embeds_without_pixel_values_matches_input_ids(tiny_model, tiny_processor) -> None:
    text_only = tiny_processor(text=["USER: Hello there! ASSISTANT:", "USER: Hi ASSISTANT:"])
    assert not (text_only["input_ids"] == tiny_processor.image_token_id).any()
    from_ids = logits_of(tiny_model, text_only)
    embeds = tiny_model.get_input_embeddings()(text_only["input_ids"])
    with torch.no_grad():
        from_embeds = tiny_model(inputs_embeds=embeds, attention_mask=text_only["attention_mask"]).logits
    torch.testing.assert_close(from_embeds, from_ids, atol=1e-6, rtol=0)


def test_inputs_embeds_with_pixel_values_is_refused(tiny_model, tiny_processor, solid_image) -> None:
    inputs = _one_image_prompt(tiny_processor, solid_image)
    embeds = tiny_model.get_input_embeddings()(inputs["input_ids"])
    with pytest.raises(ValueError, match="inputs_embeds"):
        tiny_model(inputs_embeds=embeds, pixel_values=inputs["pixel_values"])
    with pytest.raises(ValueError, match="exactly one"):
        tiny_model(input_ids=inputs["input_ids"], inputs_embeds=embeds)
