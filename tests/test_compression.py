"""LLaMA-VID compression: the attention/pooling math on hand-checkable tensors, properties with
hypothesis, and the learned ContextCompressor on a tiny Q-Former."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from transformers import InstructBlipQFormerConfig, PreTrainedConfig, PreTrainedModel

from llava_vid.modeling.compression import ContextCompressor, context_attention, pool_content

FEW = settings(deadline=None, max_examples=15)
SOME = settings(deadline=None, max_examples=40)

VISION_WIDTH = 32
TEXT_WIDTH = 48  # differs from the vision width so a wrong projection shows in the shape
NUM_QUERIES = 4
PATCHES = 9


def tiny_qformer_config(**overrides) -> InstructBlipQFormerConfig:
    values = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=1000,
        encoder_hidden_size=VISION_WIDTH,
        max_position_embeddings=64,
    )
    values.update(overrides)
    return InstructBlipQFormerConfig(**values)


def make_compressor(seed: int = 0) -> ContextCompressor:
    torch.manual_seed(seed)
    return ContextCompressor(tiny_qformer_config(), VISION_WIDTH, TEXT_WIDTH, num_queries=NUM_QUERIES)


@pytest.fixture(scope="module")
def compressor() -> ContextCompressor:
    """Eval mode (no dropout), shared: tests must not change it."""
    return make_compressor().eval()


def frames_and_instructions(frames: int, length: int = 6, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(frames, PATCHES, VISION_WIDTH, generator=generator)
    ids = torch.randint(1, 1000, (frames, length), generator=generator)
    return features, ids, torch.ones_like(ids)


# ---------------------------------------------------------------- context_attention


def test_context_attention_hand_computed_two_by_two():
    # D = 2, so scores are Q·K/√2. Query 0 scores the keys (ln 3, 0) → weights (3/4, 1/4);
    # query 1 scores them (0, ln 3) → weights (1/4, 3/4).
    scaled_ln3 = math.log(3.0) * math.sqrt(2.0)
    queries = torch.tensor([[[scaled_ln3, 0.0], [0.0, scaled_ln3]]], dtype=torch.float64)  # (1, 2, 2)
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)  # (1, 2, 2)
    values = torch.tensor([[[4.0, 0.0], [0.0, 8.0]]], dtype=torch.float64)  # (1, 2, 2)

    # Each query alone: 3/4·(4, 0) + 1/4·(0, 8) = (3, 2) and 1/4·(4, 0) + 3/4·(0, 8) = (1, 6).
    first = context_attention(queries[:, :1], keys, values)
    second = context_attention(queries[:, 1:], keys, values)
    torch.testing.assert_close(first, torch.tensor([[3.0, 2.0]], dtype=torch.float64))
    torch.testing.assert_close(second, torch.tensor([[1.0, 6.0]], dtype=torch.float64))
    # Both: the mean over queries, (2, 4).
    torch.testing.assert_close(
        context_attention(queries, keys, values), torch.tensor([[2.0, 4.0]], dtype=torch.float64)
    )


def test_a_query_matching_one_key_strongly_returns_that_value():
    width = 4
    keys = torch.eye(width)[None]  # (1, 4, 4): orthogonal keys
    values = torch.randn(1, width, 3)  # values may have their own width
    for target in range(width):
        queries = 60.0 * keys[:, target : target + 1]  # score 30 for the target, 0 for the rest
        torch.testing.assert_close(context_attention(queries, keys, values)[0], values[0, target])


def test_identical_keys_give_the_mean_of_the_values():
    keys = torch.randn(2, 1, 8).expand(2, 5, 8)  # every patch has the same key
    values = torch.randn(2, 5, 8)
    queries = torch.randn(2, 3, 8)
    torch.testing.assert_close(context_attention(queries, keys, values), values.mean(dim=1))


def test_context_attention_is_the_mean_over_queries():
    queries, keys, values = torch.randn(3, 6, 8), torch.randn(3, 10, 8), torch.randn(3, 10, 8)
    per_query = torch.stack([context_attention(queries[:, [q]], keys, values) for q in range(6)], dim=1)
    torch.testing.assert_close(context_attention(queries, keys, values), per_query.mean(dim=1))
    # … and equals the textbook formula.
    reference = (torch.softmax(queries @ keys.transpose(1, 2) / math.sqrt(8), dim=-1) @ values).mean(dim=1)
    torch.testing.assert_close(context_attention(queries, keys, values), reference)


def test_context_attention_keeps_low_precision_dtype():
    queries, keys, values = (torch.randn(2, 3, 8, dtype=torch.bfloat16) for _ in range(3))
    assert context_attention(queries, keys, values).dtype == torch.bfloat16


def test_context_attention_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="disagree"):
        context_attention(torch.randn(2, 3, 8), torch.randn(2, 5, 8), torch.randn(2, 4, 8))  # P differs
    with pytest.raises(ValueError, match="disagree"):
        context_attention(torch.randn(2, 3, 6), torch.randn(2, 5, 8), torch.randn(2, 5, 8))  # D differs
    with pytest.raises(ValueError, match="disagree"):
        context_attention(torch.randn(3, 3, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 8))  # F differs


@SOME
@given(
    frames=st.integers(1, 5),
    num_queries=st.integers(1, 6),
    patches=st.integers(1, 12),
    width=st.integers(1, 16),
    seed=st.integers(0, 2**16),
)
def test_context_attention_shape_and_frame_independence(frames, num_queries, patches, width, seed):
    generator = torch.Generator().manual_seed(seed)
    queries = torch.randn(frames, num_queries, width, generator=generator, dtype=torch.float64)
    keys = torch.randn(frames, patches, width, generator=generator, dtype=torch.float64)
    values = torch.randn(frames, patches, width, generator=generator, dtype=torch.float64)
    out = context_attention(queries, keys, values)
    assert out.shape == (frames, width)
    order = torch.randperm(frames, generator=generator)
    torch.testing.assert_close(context_attention(queries[order], keys[order], values[order]), out[order])
    # A convex combination of the values: inside their per-frame range.
    assert (out >= values.amin(dim=1) - 1e-9).all() and (out <= values.amax(dim=1) + 1e-9).all()


# ---------------------------------------------------------------- pool_content


def test_pool_one_is_the_mean_over_patches():
    features = torch.randn(3, 16, 5)
    torch.testing.assert_close(pool_content(features, 1), features.mean(dim=1, keepdim=True))


def test_pool_full_side_is_the_identity():
    features = torch.randn(3, 16, 5)
    assert torch.equal(pool_content(features, 4), features)


def test_pool_four_by_four_to_two_by_two_row_major():
    # Patch p of a 4×4 grid (row-major) holds the value p:
    #    0  1 |  2  3
    #    4  5 |  6  7
    #   ------+------
    #    8  9 | 10 11
    #   12 13 | 14 15
    features = torch.arange(16, dtype=torch.float32).view(1, 16, 1)
    pooled = pool_content(features, 2)
    assert pooled.shape == (1, 4, 1)
    # Row-major: top-left, top-right, bottom-left, bottom-right (column-major would be 2.5, 10.5, 4.5, 12.5).
    assert pooled.flatten().tolist() == [2.5, 4.5, 10.5, 12.5]


def test_pool_channels_stay_separate():
    features = torch.stack([torch.arange(16.0), -torch.arange(16.0)], dim=-1)[None]  # (1, 16, 2)
    assert pool_content(features, 2)[0].tolist() == [[2.5, -2.5], [4.5, -4.5], [10.5, -10.5], [12.5, -12.5]]


@pytest.mark.parametrize("grid", [0, -1, 5])
def test_pool_invalid_grid_names_grid_and_side(grid):
    with pytest.raises(ValueError, match=rf"grid={grid}.*side=4"):
        pool_content(torch.randn(2, 16, 3), grid)


def test_pool_non_square_patch_count_is_an_error():
    with pytest.raises(ValueError, match="15 patches"):
        pool_content(torch.randn(2, 15, 3), 1)


@SOME
@given(
    frames=st.integers(1, 4),
    side=st.integers(1, 7),
    width=st.integers(1, 6),
    data=st.data(),
)
def test_pool_shape_and_frame_independence(frames, side, width, data):
    grid = data.draw(st.integers(1, side), label="grid")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(frames, side * side, width, generator=generator, dtype=torch.float64)
    pooled = pool_content(features, grid)
    assert pooled.shape == (frames, grid * grid, width)
    order = torch.randperm(frames, generator=generator)
    torch.testing.assert_close(pool_content(features[order], grid), pooled[order])
    if side % grid == 0:  # non-overlapping windows: pooling keeps the overall mean
        torch.testing.assert_close(pooled.mean(dim=1), features.mean(dim=1))


# ---------------------------------------------------------------- ContextCompressor


def test_compressor_output_shape(compressor):
    features, ids, mask = frames_and_instructions(5)
    with torch.no_grad():
        out = compressor(features, ids, mask)
    assert out.shape == (5, 1, TEXT_WIDTH)
    assert torch.isfinite(out).all()


def test_compressor_parts_have_the_documented_shapes(compressor):
    assert compressor.query_tokens.shape == (1, NUM_QUERIES, 32)
    assert compressor.query_projector.weight.shape == (VISION_WIDTH, 32)
    assert compressor.key_projector.weight.shape == (VISION_WIDTH, VISION_WIDTH)
    assert compressor.context_projector.weight.shape == (TEXT_WIDTH, VISION_WIDTH)


def test_the_instruction_changes_the_context_token(compressor):
    features, ids, mask = frames_and_instructions(3)
    other_ids = (ids + 17) % 999 + 1  # every token different, still valid non-pad ids
    with torch.no_grad():
        first = compressor(features, ids, mask)
        again = compressor(features, ids.clone(), mask)
        other = compressor(features, other_ids, mask)
    assert torch.equal(first, again)
    assert (first - other).abs().amax(dim=-1).min() > 1e-4  # every frame's token moved


def test_identical_instructions_give_identical_tokens_within_a_batch(compressor):
    features, ids, mask = frames_and_instructions(1)
    with torch.no_grad():
        out = compressor(features.expand(3, -1, -1), ids.expand(3, -1), mask.expand(3, -1))
    torch.testing.assert_close(out[1:], out[:1].expand(2, -1, -1), rtol=0, atol=1e-6)


def test_the_frame_changes_the_context_token(compressor):
    features, ids, mask = frames_and_instructions(2)
    with torch.no_grad():
        out = compressor(features, ids[:1].expand(2, -1), mask[:1].expand(2, -1))
    assert (out[0] - out[1]).abs().max() > 1e-4


@pytest.mark.parametrize("side", ["right", "left"])
def test_instruction_padding_does_not_change_the_token(compressor, side):
    features, ids, mask = frames_and_instructions(2, length=5)
    pad = torch.zeros(2, 3, dtype=ids.dtype)
    if side == "right":
        padded_ids, padded_mask = torch.cat([ids, pad], dim=1), torch.cat([mask, pad], dim=1)
    else:
        padded_ids, padded_mask = torch.cat([pad, ids], dim=1), torch.cat([pad, mask], dim=1)
    with torch.no_grad():
        plain = compressor(features, ids, mask)
        padded = compressor(features, padded_ids, padded_mask)
    torch.testing.assert_close(padded, plain, rtol=0, atol=1e-5)


def test_mixed_lengths_in_one_batch_match_separate_calls(compressor):
    features, ids, _ = frames_and_instructions(2, length=6)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    ids = ids * mask  # pad id 0 where masked
    with torch.no_grad():
        batched = compressor(features, ids, mask)
        second_alone = compressor(features[1:], ids[1:, :3], mask[1:, :3])
    torch.testing.assert_close(batched[1:], second_alone, rtol=0, atol=1e-5)


@FEW
@given(frames=st.integers(1, 7), seed=st.integers(0, 2**16))
def test_chunk_size_does_not_change_the_result(compressor, frames, seed):
    features, ids, mask = frames_and_instructions(frames, seed=seed)
    with torch.no_grad():
        one_by_one = compressor(features, ids, mask, chunk_size=1)
        some = compressor(features, ids, mask, chunk_size=3)
        all_at_once = compressor(features, ids, mask, chunk_size=1024)
    torch.testing.assert_close(one_by_one, all_at_once, rtol=0, atol=1e-6)
    torch.testing.assert_close(some, all_at_once, rtol=0, atol=1e-6)


@FEW
@given(frames=st.integers(2, 6), seed=st.integers(0, 2**16))
def test_frames_are_compressed_independently(compressor, frames, seed):
    features, ids, mask = frames_and_instructions(frames, seed=seed)
    order = torch.randperm(frames, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        out = compressor(features, ids, mask)
        permuted = compressor(features[order], ids[order], mask[order])
    torch.testing.assert_close(permuted, out[order], rtol=0, atol=1e-6)


def test_gradients_reach_every_learned_part():
    compressor = make_compressor().train()
    features, ids, mask = frames_and_instructions(3)
    compressor(features, ids, mask, chunk_size=2).square().sum().backward()

    def moved(parameter: torch.Tensor) -> bool:
        return parameter.grad is not None and parameter.grad.abs().sum() > 0

    assert moved(compressor.query_tokens)
    for projector in (compressor.query_projector, compressor.key_projector, compressor.context_projector):
        assert moved(projector.weight) and moved(projector.bias)
    qformer = compressor.qformer
    assert moved(qformer.embeddings.word_embeddings.weight)  # the instruction
    assert moved(qformer.encoder.layer[0].crossattention.attention.key.weight)  # the frame
    assert moved(qformer.encoder.layer[-1].output_query.dense.weight)  # the query branch, to the top
    # Every parameter is in the graph (no DistributedDataParallel "unused parameters"), but only query
    # outputs are read, so the last layer's text feed-forward gets an all-zero gradient.
    assert all(parameter.grad is not None for parameter in compressor.parameters())
    idle = {name for name, parameter in compressor.named_parameters() if not moved(parameter)}
    last = f"qformer.encoder.layer.{len(qformer.encoder.layer) - 1}"
    assert idle == {
        f"{last}.{part}.{kind}"
        for part in ("intermediate.dense", "output.dense", "output.LayerNorm")
        for kind in ("weight", "bias")
    }


def test_frame_features_are_cast_to_the_compressor_dtype(compressor):
    features, ids, mask = frames_and_instructions(2)
    with torch.no_grad():
        out = compressor(features.to(torch.bfloat16), ids, mask)
    assert out.dtype == torch.float32 and out.shape == (2, 1, TEXT_WIDTH)


def test_encoder_width_mismatch_names_both_widths():
    with pytest.raises(ValueError, match=r"encoder_hidden_size=40.*48"):
        ContextCompressor(tiny_qformer_config(encoder_hidden_size=40), vision_width=48, text_width=TEXT_WIDTH)


def test_bad_inputs_are_errors(compressor):
    features, ids, mask = frames_and_instructions(2)
    with pytest.raises(ValueError, match="chunk_size"):
        compressor(features, ids, mask, chunk_size=0)
    with pytest.raises(ValueError, match="F=2"):
        compressor(features, ids[:1], mask[:1])
    with pytest.raises(ValueError, match="instruction_mask shape"):
        compressor(features, ids, mask[:, :-1])
    with pytest.raises(ValueError, match=rf"\(F, P, {VISION_WIDTH}\)"):
        compressor(features[..., :-1], ids, mask)
    long_ids = torch.randint(1, 1000, (2, 65))
    with pytest.raises(ValueError, match="65 tokens.*max_position_embeddings=64"):
        compressor(features, long_ids, torch.ones_like(long_ids))


def test_query_tokens_initialisation():
    torch.manual_seed(0)
    config = tiny_qformer_config(initializer_range=0.05)
    compressor = ContextCompressor(config, VISION_WIDTH, TEXT_WIDTH, num_queries=64)
    assert abs(compressor.query_tokens.std().item() - 0.05) < 0.005
    # reset_parameters redraws them …
    before = compressor.query_tokens.detach().clone()
    compressor.reset_parameters()
    assert not torch.equal(compressor.query_tokens, before)
    # … but never over a value transformers marked as loaded.
    compressor.query_tokens._is_hf_initialized = True
    before = compressor.query_tokens.detach().clone()
    compressor.reset_parameters()
    assert torch.equal(compressor.query_tokens, before)


class _HostConfig(PreTrainedConfig):
    model_type = "llava_vid_test_compressor_host"

    def __init__(self, initializer_range: float = 0.02, **kwargs) -> None:
        self.initializer_range = initializer_range
        super().__init__(**kwargs)


class _Host(PreTrainedModel):
    """How the model is meant to hold the compressor: ``_init_weights`` calls ``reset_parameters``."""

    config_class = _HostConfig

    def __init__(self, config: _HostConfig) -> None:
        super().__init__(config)
        self.compressor = ContextCompressor(
            tiny_qformer_config(initializer_range=0.5), VISION_WIDTH, TEXT_WIDTH, num_queries=64
        )
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, ContextCompressor):
            module.reset_parameters()


def test_inside_a_pretrained_model_loaded_weights_stay_and_missing_ones_are_initialised(tmp_path):
    torch.manual_seed(0)
    host = _Host(_HostConfig())
    compressor = host.compressor
    # The Q-Former keeps its own initializer_range (0.5), the host's Linear layers get the host's (0.02).
    assert compressor.qformer.embeddings.word_embeddings.weight.std() > 0.4
    assert compressor.key_projector.weight.std() < 0.03
    host.save_pretrained(tmp_path / "full")
    reloaded = _Host.from_pretrained(tmp_path / "full")
    for (name, before), after in zip(host.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(before, after), name

    # A checkpoint without query tokens (e.g. a converted LLaVA model): from_pretrained materialises
    # them from nothing, so only the _init_weights hook gives them values.
    weights = load_file(tmp_path / "full" / "model.safetensors")
    del weights["compressor.query_tokens"]
    host.save_pretrained(tmp_path / "partial", state_dict=weights)
    query_tokens = _Host.from_pretrained(tmp_path / "partial").compressor.query_tokens
    assert "compressor.query_tokens" not in load_file(tmp_path / "partial" / "model.safetensors")
    assert not torch.equal(query_tokens, compressor.query_tokens)  # drawn afresh …
    assert torch.isfinite(query_tokens).all()  # … not left as uninitialised memory
    assert 0.4 < query_tokens.std() < 0.6  # normal(0, qformer initializer_range)


def test_a_model_without_context_tokens_gives_content_tokens_only(tmp_path) -> None:
    """video_context_token=False (the context-token ablation): g² tokens a frame in the processor, the
    planner and the model alike; the forward pass runs and matches the count."""
    import numpy as np
    import torch

    from llava_vid.build import build_model_and_processor, load_model_spec
    from llava_vid.geometry import VideoPlan, num_video_tokens
    from llava_vid.processing.planning import plan_video
    from llava_vid.testing_media import write_test_video

    assert num_video_tokens(VideoPlan(10, 2, context_token=False)) == 40
    assert num_video_tokens(VideoPlan(10, 2)) == 50
    # A budget of 40 fits g=2 for 10 frames without context tokens, only g=1 with them.
    assert plan_video(10, content_grid=None, default_grid=1, max_grid=4, budget=40, context_token=False).content_grid == 2
    assert plan_video(10, content_grid=None, default_grid=1, max_grid=4, budget=40).content_grid == 1

    from dataclasses import replace
    from pathlib import Path

    preset = Path(__file__).resolve().parents[1] / "configs" / "model" / "tiny.yaml"
    model, processor = build_model_and_processor(replace(load_model_spec(preset), video_context_token=False))
    assert model.config.video_context_token is False and processor.video_context_token is False
    video = write_test_video(tmp_path / "clip.mp4", num_frames=6, fps=2.0)
    messages = [{"role": "user", "content": [{"type": "video", "path": str(video)}, {"type": "text", "text": "What?"}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    frames = int(inputs["video_frames"][0])
    assert int(inputs["video_token_counts"][0]) == frames * 1  # g=1: one content token a frame
    assert int((inputs["input_ids"] == processor.video_token_id).sum()) == frames
    with torch.no_grad():
        logits = model(**inputs).logits
    assert np.isfinite(logits.numpy()).all()
    processor.save_pretrained(tmp_path / "saved")  # the switch survives a save
    from llava_vid.processing.processor import LlavaVidProcessor

    assert LlavaVidProcessor.from_pretrained(tmp_path / "saved").video_context_token is False
