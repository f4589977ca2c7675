"""Videos through the processor and the model: token arithmetic, per-request budget, instruction-
guided context tokens, multi-turn re-insertion, mixing with images, timestamps and bad input."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from llava_vid.geometry import VideoPlan, num_video_tokens
from llava_vid.processing.planning import plan_video
from llava_vid.testing_media import write_test_video


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> str:
    """4 s at 10 fps: 40 frames."""
    return str(write_test_video(tmp_path_factory.mktemp("video") / "clip.mp4", num_frames=40, fps=10))


def video_turn(path: str, text: str, **options) -> dict:
    return {"role": "user", "content": [{"type": "video", "path": path, **options}, {"type": "text", "text": text}]}


def encode(processor, conversation, **options):
    return processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True, **options)


# ------------------------------------------------------------------------------------------ planning
def test_plan_video_prefers_the_largest_grid_then_drops_the_fewest_frames() -> None:
    # 10 frames, tower of 4 × 4 patches: g=4 needs 170, g=3 100, g=2 50, g=1 20 tokens.
    assert plan_video(10, content_grid=None, default_grid=1, max_grid=4, budget=None) == VideoPlan(10, 1)
    assert plan_video(10, content_grid=None, default_grid=1, max_grid=4, budget=170) == VideoPlan(10, 4)
    assert plan_video(10, content_grid=None, default_grid=1, max_grid=4, budget=169) == VideoPlan(10, 3)
    assert plan_video(10, content_grid=None, default_grid=1, max_grid=4, budget=20) == VideoPlan(10, 1)
    assert plan_video(10, content_grid=None, default_grid=1, max_grid=4, budget=19) == VideoPlan(9, 1)
    assert plan_video(10, content_grid=2, default_grid=1, max_grid=4, budget=49) == VideoPlan(9, 2)


def test_plan_video_refuses_a_budget_below_one_token_per_frame() -> None:
    with pytest.raises(ValueError, match="max_visual_tokens=9 cannot give even one token to each of the 10 sampled frames"):
        plan_video(10, content_grid=None, default_grid=1, max_grid=4, budget=9)
    with pytest.raises(ValueError, match="content_grid=5 must be between 1 and 4"):
        plan_video(10, content_grid=5, default_grid=1, max_grid=4, budget=None)


# ------------------------------------------------------------------------------------------ processor
def test_video_expands_to_frames_times_tokens_per_frame(tiny_processor, video) -> None:
    batch = encode(tiny_processor, [video_turn(video, "What happens?", fps=2)])
    assert batch["video_frames"].tolist() == [8] and batch["video_grids"].tolist() == [1]
    assert int((batch["input_ids"] == tiny_processor.video_token_id).sum()) == 8 * 2 == batch["video_token_counts"].item()
    assert batch["pixel_values_videos"].shape == (8, 3, 56, 56)
    grid2 = encode(tiny_processor, [video_turn(video, "What happens?", num_frames=5, content_grid=2)])
    assert grid2["video_token_counts"].tolist() == [num_video_tokens(VideoPlan(5, 2))] == [25]


def test_budget_alone_picks_the_grid(tiny_processor, video) -> None:
    batch = encode(tiny_processor, [video_turn(video, "x", fps=2)], max_visual_tokens=8 * 10)
    assert batch["video_grids"].tolist() == [3] and batch["video_token_counts"].tolist() == [80]
    with pytest.raises(ValueError, match="the videos get 7 tokens .* fewer than their 8 sampled frames"):
        encode(tiny_processor, [video_turn(video, "x", fps=2)], max_visual_tokens=7)


def test_images_and_videos_share_the_budget(tiny_processor, video) -> None:
    image = Image.new("RGB", (64, 64), "red")
    conversation = [{"role": "user", "content": [
        {"type": "image", "image": image}, {"type": "video", "path": video, "fps": 2}, {"type": "text", "text": "x"},
    ]}]
    batch = encode(tiny_processor, conversation, max_visual_tokens=16 + 8 * 5)
    assert batch["image_token_counts"].tolist() == [16]  # a global view (pad model)
    assert batch["video_grids"].tolist() == [2] and batch["video_token_counts"].tolist() == [40]
    ids = batch["input_ids"][0]
    first_image = (ids == tiny_processor.image_token_id).nonzero()[0].item()
    first_video = (ids == tiny_processor.video_token_id).nonzero()[0].item()
    assert first_image < first_video  # the order of the message is kept


def test_timestamps_add_text_not_visual_tokens(tiny_processor, video) -> None:
    plain = encode(tiny_processor, [video_turn(video, "x", fps=1)])
    stamped = encode(tiny_processor, [video_turn(video, "x", fps=1)], video_timestamps=True)
    assert plain["video_token_counts"].tolist() == stamped["video_token_counts"].tolist() == [8]
    assert int((stamped["input_ids"] == tiny_processor.video_token_id).sum()) == 8
    text = tiny_processor.decode(stamped["input_ids"][0][stamped["input_ids"][0] != tiny_processor.video_token_id])
    assert "0.0s1.0s2.0s3.0s" in text
    assert stamped["input_ids"].shape[1] > plain["input_ids"].shape[1]


def test_video_placeholder_without_a_video_is_refused(tiny_processor) -> None:
    with pytest.raises(ValueError, match="holds 1 <video> placeholders but 0 videos"):
        tiny_processor(text="USER: <video> what? ASSISTANT:")


def test_unreadable_video_names_the_file(tiny_processor, tmp_path: Path) -> None:
    fake = tmp_path / "notes.mp4"
    fake.write_text("not a video")
    with pytest.raises(ValueError, match=str(fake)):
        encode(tiny_processor, [video_turn(str(fake), "x")])


# ------------------------------------------------------------------------------------------ model
def test_forward_and_generate_with_a_video(tiny_model, tiny_processor, video) -> None:
    batch = tiny_processor.apply_chat_template(
        [video_turn(video, "What happens?", fps=2), {"role": "assistant", "content": "Colours change."}],
        tokenize=True, return_dict=True,
    )
    assert torch.isfinite(tiny_model(**batch).loss)
    prompt = encode(tiny_processor, [video_turn(video, "What happens?", fps=2)])
    out = tiny_model.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, prompt["input_ids"].shape[1] + 3)


def video_tokens(model, batch) -> torch.Tensor:
    return model.get_video_features(
        batch["pixel_values_videos"], batch["video_frames"], batch["video_grids"],
        batch["qformer_input_ids"], batch["qformer_attention_mask"],
    )  # (T, D): per frame [context, content]


@torch.inference_mode()
def test_context_tokens_follow_the_instruction_and_content_tokens_do_not(tiny_model, tiny_processor, video) -> None:
    colours = video_tokens(tiny_model, encode(tiny_processor, [video_turn(video, "Which colours appear?", fps=2)]))
    motion = video_tokens(tiny_model, encode(tiny_processor, [video_turn(video, "What moves to the left?", fps=2)]))
    context, content = slice(0, None, 2), slice(1, None, 2)  # g = 1: tokens alternate context, content
    assert not torch.allclose(colours[context], motion[context])
    torch.testing.assert_close(colours[content], motion[content])


@torch.inference_mode()
def test_a_follow_up_reinserting_the_video_gets_fresh_context_tokens(tiny_model, tiny_processor, video) -> None:
    """Multi-turn scheme: attaching the video again to a follow-up question encodes it once more,
    guided by that question (LLaMA-VID's training layout); the first turn's tokens are unchanged."""
    conversation = [
        video_turn(video, "Which colours appear?", fps=2),
        {"role": "assistant", "content": "Red and blue."},
        video_turn(video, "What moves to the left?", fps=2),
    ]
    batch = encode(tiny_processor, conversation)
    assert batch["video_frames"].tolist() == [8, 8]
    tokens = video_tokens(tiny_model, batch)
    first, second = tokens[:16], tokens[16:]
    alone = video_tokens(tiny_model, encode(tiny_processor, conversation[:1]))
    torch.testing.assert_close(first, alone)
    assert not torch.allclose(first[0::2], second[0::2])  # context: guided by each turn's question
    torch.testing.assert_close(first[1::2], second[1::2])  # content: the same frames
    assert torch.isfinite(tiny_model(**batch).logits).all()


def test_model_refuses_video_counts_that_disagree(tiny_model, tiny_processor, video) -> None:
    batch = encode(tiny_processor, [video_turn(video, "x", fps=2)])
    batch["video_token_counts"] = batch["video_token_counts"] + 1
    with pytest.raises(ValueError, match="video 0: the processor expanded it to 17 tokens but the model's config gives 16"):
        tiny_model(**batch)
    batch = encode(tiny_processor, [video_turn(video, "x", fps=2)])
    batch["video_frames"] = batch["video_frames"] - 1
    batch.pop("video_token_counts")
    with pytest.raises(ValueError, match="input_ids hold 16 video tokens .* need 14"):
        tiny_model(**batch)


def test_image_only_model_refuses_videos(tiny_model, tiny_processor, video) -> None:
    compressor = tiny_model.video_compressor
    tiny_model.video_compressor = None
    try:
        with pytest.raises(ValueError, match="no video compressor"):
            tiny_model(**encode(tiny_processor, [video_turn(video, "x", fps=2)]))
    finally:
        tiny_model.video_compressor = compressor
