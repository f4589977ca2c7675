"""`llava-vid inspect VIDEO`: the contact sheet is written and the numbers are the shared video token count,
planned exactly as the processor plans a request holding this one video."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from llava_vid.cli import main
from llava_vid.geometry import VideoPlan, num_video_tokens
from llava_vid.build import load_processor
from llava_vid.inspect_video import MAX_SHOWN, inspect_video, is_video_source
from llava_vid.processing.planning import plan_video
from llava_vid.processing.video import FrameSampling
from llava_vid.testing_media import write_frame_folder, write_test_video

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "model" / "tiny.yaml"
TINY_PATCHES_PER_SIDE = 4  # 56 px tower, 14 px patches: the largest content grid


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 s at 10 fps, 40 frames."""
    return write_test_video(tmp_path_factory.mktemp("videos") / "clip.mp4", num_frames=40, fps=10)


@pytest.fixture(scope="module")
def processor():
    return load_processor(TINY)


def printed(out: str, label: str) -> str:
    match = re.search(rf"^{re.escape(label)}\s+(.+)$", out, flags=re.MULTILINE)
    assert match, f"no {label!r} row in:\n{out}"
    return match.group(1)


def assert_png(path: Path, *, min_width: int = 400, min_height: int = 200) -> None:
    assert path.is_file()
    with Image.open(path) as png:
        png.verify()
    with Image.open(path) as png:
        assert png.format == "PNG"
        assert png.width >= min_width and png.height >= min_height, png.size
        assert png.width <= 4000 and png.height <= 4000, png.size


def test_inspect_video_prints_the_shared_count_and_writes_a_contact_sheet(
    video: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out_png = tmp_path / "sheets" / "clip.png"
    assert main(["inspect", str(video), "--fps", "2", "--out", str(out_png)]) == 0
    assert_png(out_png)
    out = capsys.readouterr().out
    plan = VideoPlan(num_frames=8, content_grid=1)  # 40 frames at 10 fps, sampled at 2 fps; the tiny default g=1
    assert int(printed(out, "total tokens")) == num_video_tokens(plan) == 16
    assert printed(out, "frames sampled") == "8"
    assert printed(out, "native fps") == "10"
    assert printed(out, "tokens per frame").startswith("2 (1 context + 1 content)")
    assert printed(out, "picture") == str(out_png)


def test_fps_sampling_gives_the_frames_and_their_times(video: Path, processor, tmp_path: Path) -> None:
    report = inspect_video(video, processor, sampling=FrameSampling(fps=2), out_path=tmp_path / "r.png")
    assert report["sampled_frames"] == report["kept_frames"] == 8
    assert report["timestamps"] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]
    assert report["frame_indices"] == [0, 5, 10, 15, 20, 25, 30, 35]
    assert report["native_fps"] == 10 and report["duration"] == 4.0 and report["total_frames"] == 40
    assert report["frame_size"] == (48, 64)
    assert report["total_tokens"] == num_video_tokens(VideoPlan(8, 1))


def test_content_grid_sets_the_tokens_per_frame(video: Path, processor, tmp_path: Path) -> None:
    report = inspect_video(
        video, processor, sampling=FrameSampling(num_frames=5), content_grid=3, out_path=tmp_path / "r.png"
    )
    assert (report["kept_frames"], report["content_grid"], report["tokens_per_frame"]) == (5, 3, 10)
    assert report["total_tokens"] == num_video_tokens(VideoPlan(5, 3)) == 50


@pytest.mark.parametrize(
    ("budget", "frames", "grid"),
    [
        (None, 8, 1),  # no budget: the processor's default grid
        (80, 8, 3),  # 8 × (1 + 3²) = 80 fits exactly; g = 4 would need 136
        (135, 8, 3),
        (136, 8, 4),  # the largest grid is the tower's patches per side
        (15, 7, 1),  # even g = 1 needs 16: frames are dropped, the fewest possible
        (12, 6, 1),
    ],
)
def test_a_budget_lowers_the_grid_then_drops_frames_as_plan_video_says(
    video: Path, processor, tmp_path: Path, budget: int | None, frames: int, grid: int
) -> None:
    report = inspect_video(
        video, processor, sampling=FrameSampling(fps=2), max_visual_tokens=budget, out_path=tmp_path / "r.png"
    )
    plan = plan_video(8, content_grid=None, default_grid=1, max_grid=TINY_PATCHES_PER_SIDE, budget=budget)
    assert plan == VideoPlan(frames, grid)
    assert (report["sampled_frames"], report["kept_frames"], report["content_grid"]) == (8, frames, grid)
    assert report["total_tokens"] == num_video_tokens(plan)
    assert len(report["timestamps"]) == len(report["frame_indices"]) == frames
    # The same request through the processor: the same count, so the inspector shows what the model gets.
    inputs = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video", "path": str(video), "fps": 2}, {"type": "text", "text": "?"}]}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        max_visual_tokens=budget,
    )
    assert inputs["video_token_counts"].tolist() == [report["total_tokens"]]
    assert inputs["video_frames"].tolist() == [frames]


def test_dropped_frames_are_an_even_spread(video: Path, processor, tmp_path: Path) -> None:
    report = inspect_video(
        video, processor, sampling=FrameSampling(fps=2), max_visual_tokens=12, out_path=tmp_path / "r.png"
    )
    # 6 of the 8 sampled frames (0.0 … 3.5 s), the centres of 6 equal segments: 0, 2, 3, 4, 6, 7.
    assert report["timestamps"] == [0.0, 1.0, 1.5, 2.0, 3.0, 3.5]


def test_a_budget_below_the_frame_count_names_both_numbers(
    video: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["inspect", str(video), "--fps", "2", "--max-visual-tokens", "5", "--out", str(tmp_path / "x.png")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "max_visual_tokens=5" in err and "8 sampled frames" in err


def test_a_long_video_shows_an_even_subset(tmp_path: Path, processor) -> None:
    long_video = write_test_video(tmp_path / "long.mp4", num_frames=120, fps=10, size=(32, 24))
    out_png = tmp_path / "long.png"
    report = inspect_video(long_video, processor, sampling=FrameSampling(fps=10), out_path=out_png)
    assert report["kept_frames"] == 120 and report["shown_frames"] == MAX_SHOWN
    assert_png(out_png)


def test_a_folder_of_frames_is_a_video_at_one_frame_a_second(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = write_frame_folder(tmp_path / "frames", num_frames=12)
    assert is_video_source(folder)
    out_png = tmp_path / "frames.png"
    assert main(["inspect", str(folder), "--num-frames", "4", "--content-grid", "2", "--out", str(out_png)]) == 0
    assert_png(out_png)
    out = capsys.readouterr().out
    assert printed(out, "frames sampled") == "4"
    assert int(printed(out, "total tokens")) == num_video_tokens(VideoPlan(4, 2)) == 20
    # num_frames=4 of 12 takes the segment centres 1, 4, 7, 10: at 1 frame a second, their seconds.
    assert printed(out, "timestamps") == "1.0s, 4.0s, 7.0s, 10.0s"


def test_an_unreadable_video_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "no_such_video.mp4"
    assert main(["inspect", str(missing), "--out", str(tmp_path / "x.png")]) == 2
    assert str(missing) in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_text("this is not a video\n" * 10)
    assert main(["inspect", str(corrupt), "--out", str(tmp_path / "x.png")]) == 2
    assert str(corrupt) in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_video_options_on_an_image_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = tmp_path / "still.png"
    Image.new("RGB", (64, 48)).save(image)
    assert main(["inspect", str(image), "--fps", "2"]) == 2
    assert "--fps apply to videos" in capsys.readouterr().err
