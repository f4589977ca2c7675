"""Long video end to end: an hour at 1 frame/s becomes 3600 frames × 2 tokens and one forward pass.

The videos are real encoded files (libx264 where PyAV has it, else mpeg4), written on the fly with
``write_test_video`` at 1 fps and decoded by our loader (decord, or PyAV where decord is missing),
resized chunk by chunk to the tiny tower's 56 × 56, run through the vision tower, the Q-Former context
token and the pooled content token, and through the tiny LLaMA (8192 positions).

Token arithmetic at ``content_grid=1``: 1 context + 1² content = 2 video-token ids per frame, and no
separator tokens between frames, so the video-token ids in ``input_ids`` are exactly ``frames × 2``.
With ``video_timestamps=True`` each frame is preceded by its time as *text* ("12.0s"): those are
ordinary text tokens, so the sequence grows but the video-token (visual) count stays ``frames × 2``.

The hour-long test takes ~5-10 s on 2 CPU cores (writing the 3600-frame 64×48 video ~1 s, processor
~2-3 s, forward ~1 s), so it stays in the default suite. Its numbers (frames, tokens, peak RSS, wall
time) are printed (``-s`` shows them) and written as JSON under the test's tmp folder.
"""

from __future__ import annotations

import json
import resource
import time

import pytest
import torch

from llava_vid.testing_media import write_test_video

TOKENS_PER_FRAME = 2  # content_grid=1: one context token + one content token
QUESTION = "What happens in this video?"


def _conversation(path, **options) -> list[dict]:
    part = {"type": "video", "path": str(path), "fps": 1, "content_grid": 1, **options}
    return [{"role": "user", "content": [part, {"type": "text", "text": QUESTION}]}]


def _encode(processor, conversation, **kwargs):
    return processor.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=True, **kwargs
    )


def _rss_mib() -> float:
    """Current RSS (psutil when installed, else /proc), MiB."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is in the dev environment
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024
    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mib() -> float:
    """Peak RSS of this whole process so far (ru_maxrss is KiB on Linux), MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _video_token_count(inputs, processor) -> int:
    return int((inputs["input_ids"] == processor.video_token_id).sum())


def test_two_minute_video_token_arithmetic(tiny_model_and_processor, tmp_path):
    """120 frames at 1 fps → 240 video tokens → a forward pass; timestamps add text, not visual tokens."""
    model, processor = tiny_model_and_processor
    path = write_test_video(tmp_path / "two_minutes.mp4", num_frames=120, fps=1)

    inputs = _encode(processor, _conversation(path))
    assert inputs["video_frames"].tolist() == [120]
    assert inputs["video_grids"].tolist() == [1]
    assert inputs["video_token_counts"].tolist() == [120 * TOKENS_PER_FRAME]
    assert _video_token_count(inputs, processor) == 120 * TOKENS_PER_FRAME == 240
    assert inputs["pixel_values_videos"].shape[0] == 120
    with torch.inference_mode():
        logits = model(**inputs).logits  # (1, L, vocab)
    assert logits.shape[1] == inputs["input_ids"].shape[1]
    assert torch.isfinite(logits).all()

    # Per-frame timestamps are text before each frame's tokens: more ids, the same 240 visual ones.
    stamped = _encode(processor, _conversation(path), video_timestamps=True)
    assert _video_token_count(stamped, processor) == 240
    assert stamped["video_token_counts"].tolist() == [240]
    assert stamped["input_ids"].shape[1] > inputs["input_ids"].shape[1] + 120  # ≥ 1 text token per stamp


def test_one_hour_video_one_forward_pass(tiny_model_and_processor, tmp_path):
    """The long-video proof: 3600 frames (an hour at 1 fps) → 7200 visual tokens → finite logits."""
    model, processor = tiny_model_and_processor
    frames = 3600
    started = time.perf_counter()
    rss_before = _rss_mib()
    path = write_test_video(tmp_path / "one_hour.mp4", num_frames=frames, fps=1, size=(64, 48))
    written = time.perf_counter()

    inputs = _encode(processor, _conversation(path))
    processed = time.perf_counter()
    assert inputs["video_frames"].tolist() == [frames]
    assert inputs["video_token_counts"].tolist() == [frames * TOKENS_PER_FRAME]
    assert _video_token_count(inputs, processor) == frames * TOKENS_PER_FRAME == 7200
    assert inputs["input_ids"].shape[1] <= model.config.text_config.max_position_embeddings

    assert not model.training  # the shared fixture is in eval mode
    with torch.inference_mode():
        logits = model(**inputs).logits  # (1, L, vocab)
    done = time.perf_counter()
    assert logits.shape[:2] == inputs["input_ids"].shape
    assert torch.isfinite(logits).all()

    record = {
        "frames": frames,
        "video_tokens": _video_token_count(inputs, processor),
        "sequence_length": int(inputs["input_ids"].shape[1]),
        "video_file_bytes": path.stat().st_size,
        "write_s": round(written - started, 3),
        "processor_s": round(processed - written, 3),
        "forward_s": round(done - processed, 3),
        "wall_s": round(done - started, 3),
        "rss_before_mib": round(rss_before, 1),
        "rss_after_mib": round(_rss_mib(), 1),
        # ru_maxrss is the whole pytest process's peak, so it also covers whatever ran before.
        "peak_rss_process_mib": round(_peak_rss_mib(), 1),
    }
    (tmp_path / "long_video.json").write_text(json.dumps(record, indent=2))
    print(f"\nlong video: {json.dumps(record)} (saved to {tmp_path / 'long_video.json'})")
