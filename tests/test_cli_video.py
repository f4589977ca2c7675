"""`llava-vid generate --video`: videos alone, with images, with timestamps; bad files and budgets exit 2
with a message naming the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from llava_vid.cli import main
from llava_vid.inference import user_message
from llava_vid.testing_media import write_test_video

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "model" / "tiny.yaml")  # has the LLaMA-VID Q-Former
IMAGE = str(REPO / "examples" / "shapes.png")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli_video") / "tiny"
    assert main(["init", "--config", TINY, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> str:
    """4 s at 10 fps, 40 frames."""
    return str(write_test_video(tmp_path_factory.mktemp("videos") / "clip.mp4", num_frames=40, fps=10))


def generate(model_dir: Path, *args: str) -> int:
    return main(["generate", "--model", str(model_dir), "--max-new-tokens", "4", *args])


def test_generate_streams_an_answer_about_a_video(model_dir: Path, video: str, capsys: pytest.CaptureFixture) -> None:
    assert generate(model_dir, "--video", video, "--fps", "2", "What happens?") == 0
    assert capsys.readouterr().out.strip(), "nothing was printed"


def test_generate_takes_videos_and_images_together(model_dir: Path, video: str, capsys: pytest.CaptureFixture) -> None:
    args = ["--image", IMAGE, "--video", video, "--video", video, "--num-frames", "3", "--content-grid", "2"]
    assert generate(model_dir, *args, "Same?") == 0
    assert capsys.readouterr().out.strip()


def test_generate_with_timestamps(
    model_dir: Path, video: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llava_vid.processing.processor import LlavaVidProcessor

    seen: list[dict] = []
    original = LlavaVidProcessor.apply_chat_template

    def spy(self, conversation, *args, **kwargs):
        seen.append({"content": conversation[-1]["content"], **kwargs})
        return original(self, conversation, *args, **kwargs)

    monkeypatch.setattr(LlavaVidProcessor, "apply_chat_template", spy)
    assert generate(model_dir, "--video", video, "--max-frames", "4", "--timestamps", "When?") == 0
    assert capsys.readouterr().out.strip()
    (call,) = seen
    assert call["video_timestamps"] is True
    assert call["content"][0] == {"type": "video", "video": video, "max_frames": 4}


def test_generate_names_a_file_that_is_not_a_video(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    fake = tmp_path / "notes.mp4"
    fake.write_text("not a video at all\n" * 20)
    assert generate(model_dir, "--video", str(fake), "What happens?") == 2
    assert str(fake) in capsys.readouterr().err


def test_generate_refuses_a_budget_below_the_frame_count(
    model_dir: Path, video: str, capsys: pytest.CaptureFixture
) -> None:
    # 2 fps over 4 s samples 8 frames; 5 tokens cannot give each one even a token.
    assert generate(model_dir, "--video", video, "--fps", "2", "--max-visual-tokens", "5", "What happens?") == 2
    err = capsys.readouterr().err
    assert "5 tokens" in err and "8 sampled frames" in err


def test_video_options_without_a_video_are_refused(model_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert generate(model_dir, "--image", IMAGE, "--fps", "2", "What?") == 2
    assert "no video" in capsys.readouterr().err


def test_fps_and_num_frames_are_exclusive(model_dir: Path, video: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        generate(model_dir, "--video", video, "--fps", "2", "--num-frames", "3", "What?")
    assert exit_info.value.code == 2


def test_user_message_puts_images_then_videos_then_the_question() -> None:
    message = user_message("Why?", ["a.png"], ["b.mp4", "c"], {"fps": 2.0, "max_frames": None, "content_grid": 2})
    assert message["content"] == [
        {"type": "image", "image": "a.png"},
        {"type": "video", "video": "b.mp4", "fps": 2.0, "content_grid": 2},
        {"type": "video", "video": "c", "fps": 2.0, "content_grid": 2},
        {"type": "text", "text": "Why?"},
    ]
    with pytest.raises(ValueError, match="unknown video options"):
        user_message("Why?", [], ["b.mp4"], {"speed": 2})
