"""Tests for llava_vid.processing.video: frame sampling, decord/PyAV decoding, image sequences, errors.

Every video is written on the fly by llava_vid.testing_media; its frames encode their own index,
so a test can tell *which* frame a backend returned despite codec error.
"""

from __future__ import annotations

import logging
import math
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from llava_vid.processing import video as video_module
from llava_vid.processing.media import MediaError
from llava_vid.processing.video import FrameSampling, VideoClip, load_video, sample_frame_indices
from llava_vid.testing_media import (
    frame_index_image,
    read_frame_index,
    write_audio_only,
    write_frame_folder,
    write_test_video,
    write_truncated_copy,
    write_zero_frame_video,
)

try:
    import decord  # noqa: F401

    HAVE_DECORD = True
except ImportError:
    HAVE_DECORD = False

needs_decord = pytest.mark.skipif(not HAVE_DECORD, reason="decord is not installed")

FILE_BACKENDS = ["pyav", pytest.param("decord", marks=needs_decord)]
FILE_BACKENDS_PLAIN = ["pyav", "decord"] if HAVE_DECORD else ["pyav"]


def _indices_drawn(clip: VideoClip) -> list[int]:
    """The frame index each returned frame shows (see testing_media.frame_index_image)."""
    return [read_frame_index(frame) for frame in clip.frames]


# --------------------------------------------------------------------------- files


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("video")


@pytest.fixture(scope="module")
def video_30(media_dir: Path) -> Path:
    """30 frames at 10 fps, 64x48, default codec (libx264 with B-frames when available)."""
    return write_test_video(media_dir / "v30.mp4", num_frames=30, fps=10)


@pytest.fixture(scope="module")
def video_1(media_dir: Path) -> Path:
    return write_test_video(media_dir / "one.mp4", num_frames=1, fps=25)


@pytest.fixture(scope="module")
def video_faststart(media_dir: Path) -> Path:
    """300 frames with the mp4 index at the front, so truncated copies still open."""
    return write_test_video(media_dir / "fs.mp4", num_frames=300, fps=30, faststart=True)


# --------------------------------------------------------------------------- testing_media


def test_test_video_writes_fast_and_frames_encode_their_index(media_dir: Path) -> None:
    start = time.perf_counter()
    path = write_test_video(media_dir / "long.mp4", num_frames=3600, fps=30, size=(32, 32))
    assert time.perf_counter() - start < 10.0  # ~0.5 s here; generous for slow CI
    clip = load_video(path, FrameSampling(num_frames=7), backend="pyav")
    assert clip.total_frames == 3600 and clip.native_fps == 30.0
    assert _indices_drawn(clip) == clip.indices.tolist()


@pytest.mark.parametrize("index", [0, 1, 5, 1234, 65535])
def test_frame_index_image_round_trips(index: int) -> None:
    image = frame_index_image(index, (20, 12))
    assert image.shape == (12, 20, 3) and image.dtype == np.uint8
    assert read_frame_index(image) == index
    # Survives a 4x downscale (what a frame_transform might do) and mild noise.
    small = np.asarray(Image.fromarray(image).resize((8, 4), Image.BILINEAR))
    assert read_frame_index(small) == index
    noisy = np.clip(image.astype(int) + np.random.default_rng(0).integers(-60, 60, image.shape), 0, 255)
    assert read_frame_index(noisy.astype(np.uint8)) == index


# --------------------------------------------------------------------------- FrameSampling


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_frames": 0}, "num_frames"),
        ({"num_frames": -3}, "num_frames"),
        ({"num_frames": 2.5}, "num_frames"),
        ({"num_frames": True}, "num_frames"),
        ({"fps": 0.0}, "fps"),
        ({"fps": -1.0}, "fps"),
        ({"fps": float("nan")}, "fps"),
        ({"fps": float("inf")}, "fps"),
        ({"fps": "1"}, "fps"),
        ({"max_frames": 0}, "max_frames"),
        ({"num_frames": 4, "fps": 1.0}, "not both"),
    ],
)
def test_frame_sampling_rejects_bad_values_naming_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        FrameSampling(**kwargs)


def test_frame_sampling_default_is_one_fps() -> None:
    assert FrameSampling().effective_fps == 1.0
    assert FrameSampling(fps=2).effective_fps == 2.0
    assert FrameSampling(num_frames=3).effective_fps is None
    # 60 frames at 30 fps, 1 fps -> frames 0 and 30.
    assert sample_frame_indices(60, 30.0, FrameSampling()).tolist() == [0, 30]


# --------------------------------------------------------------------------- sample_frame_indices


@pytest.mark.parametrize(
    ("total", "native_fps", "sampling", "expected"),
    [
        (10, 1.0, FrameSampling(num_frames=4), [1, 3, 6, 8]),  # centres of [0,2.5) [2.5,5) [5,7.5) [7.5,10)
        (10, 1.0, FrameSampling(num_frames=1), [5]),
        (10, 1.0, FrameSampling(num_frames=10), list(range(10))),
        (10, 1.0, FrameSampling(num_frames=50), list(range(10))),  # more than the video has: all, once
        (30, 10.0, FrameSampling(fps=1.0), [0, 10, 20]),
        (30, 10.0, FrameSampling(fps=2.5), [0, 4, 8, 12, 16, 20, 24, 28]),
        (30, 10.0, FrameSampling(fps=3.0), [0, 3, 6, 10, 13, 16, 20, 23, 26]),
        (30, 10.0, FrameSampling(fps=40.0), list(range(30))),  # faster than the video: every frame
        (300, 29.97, FrameSampling(fps=2.997), list(range(0, 300, 10))),  # exact ratio despite floats
        (30, 10.0, FrameSampling(fps=40.0, max_frames=3), [5, 15, 25]),
        (30, 10.0, FrameSampling(num_frames=20, max_frames=2), [7, 22]),  # same as num_frames=2
        (1, 30.0, FrameSampling(), [0]),
        (1, 30.0, FrameSampling(num_frames=8), [0]),
        (5, 1000.0, FrameSampling(fps=0.001), [0]),
    ],
)
def test_sample_frame_indices_examples(
    total: int, native_fps: float, sampling: FrameSampling, expected: list[int]
) -> None:
    indices = sample_frame_indices(total, native_fps, sampling)
    assert indices.dtype == np.int64
    assert indices.tolist() == expected


@pytest.mark.parametrize(("total", "fps"), [(0, 1.0), (-1, 1.0), (3, 0.0), (3, float("nan"))])
def test_sample_frame_indices_rejects_bad_video_metadata(total: int, fps: float) -> None:
    with pytest.raises(ValueError):
        sample_frame_indices(total, fps, FrameSampling())


_totals = st.integers(min_value=1, max_value=20_000)
_native_fps = st.floats(min_value=0.5, max_value=240.0, allow_nan=False)
_max_frames = st.none() | st.integers(min_value=1, max_value=500)
_samplings = st.builds(FrameSampling, num_frames=st.integers(1, 2000), max_frames=_max_frames) | st.builds(
    FrameSampling, fps=st.floats(min_value=0.01, max_value=500.0, allow_nan=False), max_frames=_max_frames
)


def _check_basic(indices: np.ndarray, total: int) -> None:
    assert indices.ndim == 1 and len(indices) >= 1
    assert indices.dtype == np.int64
    assert np.all(np.diff(indices) > 0)  # sorted and unique
    assert indices[0] >= 0 and indices[-1] < total


@settings(max_examples=300, deadline=None)
@given(total=_totals, native_fps=_native_fps, sampling=_samplings)
def test_sample_frame_indices_properties(total: int, native_fps: float, sampling: FrameSampling) -> None:
    indices = sample_frame_indices(total, native_fps, sampling)
    _check_basic(indices, total)
    assert np.array_equal(indices, sample_frame_indices(total, native_fps, sampling))  # deterministic
    uncapped = sample_frame_indices(total, native_fps, FrameSampling(num_frames=sampling.num_frames, fps=sampling.fps))
    if sampling.max_frames is None:
        assert np.array_equal(indices, uncapped)
        return
    assert len(indices) == min(len(uncapped), sampling.max_frames)
    if sampling.num_frames is not None:  # the cap lowers the count; the spread stays exact
        capped = FrameSampling(num_frames=min(sampling.num_frames, sampling.max_frames))
        assert np.array_equal(indices, sample_frame_indices(total, native_fps, capped))
    else:  # the cap thins the fps-chosen frames
        assert set(indices.tolist()) <= set(uncapped.tolist())


@settings(max_examples=200, deadline=None)
@given(total=_totals, num_frames=st.integers(1, 3000))
def test_uniform_sampling_is_evenly_spread(total: int, num_frames: int) -> None:
    indices = sample_frame_indices(total, 30.0, FrameSampling(num_frames=num_frames))
    _check_basic(indices, total)
    assert len(indices) == min(num_frames, total)
    segment = total / len(indices)
    # Gaps differ by at most one frame from the segment length; the first/last frames sit half a
    # segment in from the ends.
    assert np.all(np.abs(np.diff(indices) - segment) < 1.0)
    assert abs(indices[0] - (segment / 2 - 0.5)) <= 0.5 + 1e-9


@settings(max_examples=200, deadline=None)
@given(total=_totals, native_fps=_native_fps, fps=st.floats(min_value=0.01, max_value=500.0, allow_nan=False))
def test_fps_sampling_steps_by_video_time(total: int, native_fps: float, fps: float) -> None:
    indices = sample_frame_indices(total, native_fps, FrameSampling(fps=fps))
    _check_basic(indices, total)
    assert indices[0] == 0
    step = native_fps / fps
    if step <= 1.0:
        assert len(indices) == total
        return
    gaps = np.diff(indices)
    assert np.all((gaps >= math.floor(step)) & (gaps <= math.ceil(step)))
    # One frame per `step` frames of video: the next one would lie past the end.
    assert len(indices) == math.ceil(total / step - 1e-9)
    assert math.floor(len(indices) * step + 1e-9) >= total - 1


# --------------------------------------------------------------------------- decoding files


_AGREEMENT_SAMPLINGS = [
    FrameSampling(),
    FrameSampling(num_frames=1),
    FrameSampling(num_frames=5),
    FrameSampling(num_frames=8),
    FrameSampling(num_frames=30),
    FrameSampling(num_frames=100),
    FrameSampling(fps=2.5),
    FrameSampling(fps=3.0),
    FrameSampling(fps=20.0),
    FrameSampling(fps=20.0, max_frames=7),
]


@needs_decord
@pytest.mark.parametrize("sampling", _AGREEMENT_SAMPLINGS, ids=str)
def test_decord_and_pyav_return_the_same_frames_and_timestamps(video_30: Path, sampling: FrameSampling) -> None:
    by_decord = load_video(video_30, sampling, backend="decord")
    by_pyav = load_video(video_30, sampling, backend="pyav")
    assert (by_decord.backend, by_pyav.backend) == ("decord", "pyav")
    expected = sample_frame_indices(30, 10.0, sampling)
    for clip in (by_decord, by_pyav):
        assert clip.frames.dtype == np.uint8 and clip.frames.shape == (len(expected), 48, 64, 3)
        assert clip.indices.tolist() == expected.tolist()
        assert _indices_drawn(clip) == expected.tolist()
        np.testing.assert_allclose(clip.timestamps, expected / 10.0)
        assert (clip.native_fps, clip.total_frames, clip.duration, clip.source) == (10.0, 30, 3.0, str(video_30))
    # Both wrap FFmpeg's decoder: pixels agree up to colour-conversion rounding.
    difference = np.abs(by_decord.frames.astype(int) - by_pyav.frames.astype(int))
    assert difference.mean() < 2.0


def test_auto_backend_prefers_decord(video_30: Path) -> None:
    clip = load_video(video_30, FrameSampling(num_frames=4))
    assert clip.backend == ("decord" if HAVE_DECORD else "pyav")
    assert _indices_drawn(clip) == clip.indices.tolist()


@pytest.mark.parametrize("backend", FILE_BACKENDS)
@pytest.mark.parametrize("sampling", [FrameSampling(num_frames=13), FrameSampling(fps=10.0)], ids=str)
def test_chunk_size_does_not_change_the_result(video_30: Path, backend: str, sampling: FrameSampling) -> None:
    small = load_video(video_30, sampling, chunk_size=4, backend=backend)
    large = load_video(video_30, sampling, chunk_size=1000, backend=backend)
    one = load_video(video_30, sampling, chunk_size=1, backend=backend)
    assert np.array_equal(small.frames, large.frames) and np.array_equal(one.frames, large.frames)
    assert np.array_equal(small.timestamps, large.timestamps)


class _CountingShrink:
    """A frame_transform that keeps every 4th pixel and records the chunks it saw."""

    def __init__(self) -> None:
        self.chunk_shapes: list[tuple[int, ...]] = []

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3
        self.chunk_shapes.append(frames.shape)
        return np.ascontiguousarray(frames[:, ::4, ::4])  # (n, H/4, W/4, 3)


@pytest.mark.parametrize("backend", FILE_BACKENDS)
def test_frame_transform_is_applied_chunk_by_chunk(video_30: Path, backend: str) -> None:
    shrink = _CountingShrink()
    clip = load_video(video_30, FrameSampling(num_frames=10), frame_transform=shrink, chunk_size=4, backend=backend)
    assert shrink.chunk_shapes == [(4, 48, 64, 3), (4, 48, 64, 3), (2, 48, 64, 3)]  # never more than chunk_size
    assert clip.frames.shape == (10, 12, 16, 3)
    assert _indices_drawn(clip) == clip.indices.tolist()  # the index blocks survive the shrink


def test_frame_transform_output_is_checked(video_30: Path) -> None:
    with pytest.raises(ValueError, match="frame_transform must return"):
        load_video(video_30, FrameSampling(num_frames=3), frame_transform=lambda f: f[:1], backend="pyav")
    with pytest.raises(ValueError, match="frame_transform must return"):
        load_video(video_30, FrameSampling(num_frames=3), frame_transform=lambda f: f.astype(np.float32))


@pytest.mark.parametrize("backend", FILE_BACKENDS)
def test_one_frame_video(video_1: Path, backend: str) -> None:
    for sampling in (FrameSampling(), FrameSampling(num_frames=16), FrameSampling(fps=100.0)):
        clip = load_video(video_1, sampling, backend=backend)
        assert clip.frames.shape == (1, 48, 64, 3) and _indices_drawn(clip) == [0]
        assert clip.timestamps.tolist() == [0.0] and clip.total_frames == 1 and clip.duration == 1 / 25


@pytest.mark.parametrize("backend", FILE_BACKENDS)
def test_more_than_native_fps_or_frames_gives_every_frame_once(video_30: Path, backend: str) -> None:
    for sampling in (FrameSampling(fps=60.0), FrameSampling(num_frames=1000)):
        clip = load_video(video_30, sampling, backend=backend)
        assert _indices_drawn(clip) == list(range(30))


@pytest.mark.parametrize("backend", FILE_BACKENDS)
@pytest.mark.parametrize(("suffix", "codec"), [(".mkv", None), (".webm", "libvpx"), (".avi", "mpeg4")])
def test_other_containers_including_ones_without_a_frame_count(
    media_dir: Path, backend: str, suffix: str, codec: str | None
) -> None:
    # Matroska/WebM store no frame count (PyAV stream.frames == 0): it is counted by demuxing.
    path = write_test_video(media_dir / f"other{suffix}", num_frames=30, fps=10, codec=codec)
    clip = load_video(path, FrameSampling(num_frames=6), backend=backend)
    assert (clip.total_frames, clip.native_fps) == (30, 10.0)
    assert _indices_drawn(clip) == clip.indices.tolist() == [2, 7, 12, 17, 22, 27]


def test_fractional_frame_rate(media_dir: Path) -> None:
    path = write_test_video(media_dir / "ntsc.mp4", num_frames=60, fps=30000 / 1001)
    clip = load_video(path, FrameSampling(fps=1.0))
    assert clip.native_fps == pytest.approx(29.97, abs=1e-3)
    assert _indices_drawn(clip) == [0, 29, 59]  # 60 frames last 2.002 s: t = 0, ~1, ~2 s
    np.testing.assert_allclose(clip.timestamps, np.array([0, 29, 59]) * 1001 / 30000)


def test_undecodable_metadata_does_not_block_the_frames(media_dir: Path) -> None:
    path = write_test_video(media_dir / "tagged.mp4", num_frames=10, fps=10, metadata={"title": "clip_QQ_end"})
    data = path.read_bytes()
    assert data.count(b"clip_QQ_end") == 1
    path.write_bytes(data.replace(b"QQ", b"\xd4\x28"))  # not valid UTF-8: av.open raised UnicodeDecodeError
    for backend in FILE_BACKENDS_PLAIN:
        clip = load_video(path, FrameSampling(num_frames=2), backend=backend)
        assert _indices_drawn(clip) == [2, 7]


def test_falls_back_to_pyav_without_decord(video_30: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(video_module, "_import_decord", lambda: None)
    assert load_video(video_30, FrameSampling(num_frames=3)).backend == "pyav"
    with pytest.raises(MediaError, match="decord is not installed"):
        load_video(video_30, FrameSampling(num_frames=3), backend="decord")


@needs_decord
@pytest.mark.parametrize("fails_at", ["open", "get_batch"])
def test_falls_back_to_pyav_when_decord_fails(
    video_30: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fails_at: str
) -> None:
    import decord

    real_reader = decord.VideoReader

    class BrokenReader:
        """Fails like decord on a broken file: at open, or when it would substitute a frame."""

        def __init__(self, *args: object, **kwargs: object) -> None:
            if fails_at == "open":
                raise decord.DECORDError("simulated failure")
            self._reader = real_reader(*args, **kwargs)

        def __len__(self) -> int:
            return len(self._reader)

        def get_batch(self, indices: list[int]) -> object:
            raise decord.DECORDLimitReachedError("simulated failure")  # not a DECORDError subclass

    monkeypatch.setattr(decord, "VideoReader", BrokenReader)
    with caplog.at_level(logging.INFO, logger=video_module.__name__):
        clip = load_video(video_30, FrameSampling(num_frames=3))
    assert clip.backend == "pyav" and _indices_drawn(clip) == clip.indices.tolist()
    assert "decord failed" in caplog.text and "simulated failure" in caplog.text
    with pytest.raises(MediaError, match=f"^{video_30}: decord cannot decode the video .*simulated failure"):
        load_video(video_30, FrameSampling(num_frames=3), backend="decord")


@needs_decord
def test_decord_is_not_allowed_to_substitute_frames(video_30: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """decord hands out the last good frame again for frames it cannot decode unless its fault
    tolerance is set; it must be below one frame, so the first substitute raises (and PyAV decides)."""
    import decord

    real_reader = decord.VideoReader
    seen: dict[str, object] = {}

    def spy(*args: object, **kwargs: object) -> object:
        seen.update(kwargs)
        return real_reader(*args, **kwargs)

    monkeypatch.setattr(decord, "VideoReader", spy)
    load_video(video_30, FrameSampling(num_frames=3), backend="decord")
    assert 0 < float(seen["fault_tol"]) * 30 < 1  # a fraction of the frame count; decord ignores 0


# --------------------------------------------------------------------------- image sequences


def test_folder_of_pngs_is_a_video_in_natural_order(tmp_path: Path) -> None:
    folder = write_frame_folder(tmp_path / "frames", num_frames=12, size=(16, 12))  # frame_0 .. frame_11
    (folder / "notes.txt").write_text("not a frame")
    (folder / ".hidden.png").write_bytes(b"junk")
    (folder / "sub").mkdir()
    clip = load_video(folder, FrameSampling(num_frames=12))
    assert clip.backend == "images" and clip.source == str(folder)
    assert _indices_drawn(clip) == list(range(12))  # frame_2 before frame_10
    assert (clip.native_fps, clip.total_frames, clip.duration) == (1.0, 12, 12.0)
    assert clip.timestamps.tolist() == [float(i) for i in range(12)]
    # Default sampling (1 fps) at the 1.0 fps convention takes every image.
    assert len(load_video(folder).frames) == 12


def test_list_of_pil_images_and_paths(tmp_path: Path) -> None:
    images = [Image.fromarray(frame_index_image(i, (16, 12))) for i in range(9)]
    clip = load_video(images, FrameSampling(num_frames=3))
    assert clip.source == "<frames>" and clip.indices.tolist() == [1, 4, 7]
    assert _indices_drawn(clip) == [1, 4, 7] and clip.frames.shape == (3, 12, 16, 3)
    folder = write_frame_folder(tmp_path / "f", num_frames=9, size=(16, 12))
    paths = [folder / f"frame_{i}.png" for i in range(9)]
    shrink = _CountingShrink()
    by_path = load_video(paths, FrameSampling(fps=0.5, max_frames=4), frame_transform=shrink, chunk_size=2)
    assert by_path.indices.tolist() == [0, 2, 6, 8] and by_path.frames.shape == (4, 3, 4, 3)
    assert shrink.chunk_shapes == [(2, 12, 16, 3), (2, 12, 16, 3)]


def test_image_sequence_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(MediaError, match=f"^{empty}: folder has no image files"):
        load_video(empty)
    with pytest.raises(MediaError, match="^<frames>: empty list"):
        load_video([])
    mixed = [Image.new("RGB", (16, 12)), Image.new("RGB", (8, 8))]
    with pytest.raises(MediaError, match="frame 1 .* is 8x8 but frame 0 is 16x12"):
        load_video(mixed, FrameSampling(num_frames=2))
    with pytest.raises(MediaError, match=f"^<frames>: frame 1: {tmp_path}/missing.png: file not found"):
        load_video([Image.new("RGB", (8, 8)), tmp_path / "missing.png"], FrameSampling(num_frames=2))
    broken = write_frame_folder(tmp_path / "broken", num_frames=3, size=(8, 8))
    (broken / "frame_1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(MediaError, match=f"^{broken}/frame_1.png: "):
        load_video(broken, FrameSampling(num_frames=3))
    with pytest.raises(TypeError):
        load_video([Image.new("RGB", (8, 8)), 3], FrameSampling(num_frames=2))  # type: ignore[list-item]


def test_bad_arguments(video_30: Path) -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        load_video(video_30, chunk_size=0)
    with pytest.raises(ValueError, match="backend"):
        load_video(video_30, backend="opencv")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        load_video(12)  # type: ignore[arg-type]
    with pytest.raises(MediaError, match="^https://example.com/v.mp4: URLs are not fetched"):
        load_video("https://example.com/v.mp4")


# --------------------------------------------------------------------------- broken files


def _broken_files(root: Path, faststart_source: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, regex the MediaError message must match after the path)."""
    root.mkdir(parents=True, exist_ok=True)
    text = root / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    complete = write_test_video(root / "complete.mp4", num_frames=60, fps=10)  # moov atom at the end
    empty = root / "empty.mp4"
    empty.write_bytes(b"")
    return {
        "missing": (root / "missing.mp4", "file not found"),
        "empty": (empty, "file is empty"),
        "text_named_mp4": (text, "not a readable video file"),
        "audio_only_m4a": (write_audio_only(root / "tone.m4a"), r"no video stream \(streams found: audio\)"),
        "audio_only_wav": (write_audio_only(root / "tone.wav"), r"no video stream \(streams found: audio\)"),
        "zero_frames": (write_zero_frame_video(root / "zero.avi"), "the video has no frames"),
        "truncated_index_lost": (write_truncated_copy(complete, root / "cut.mp4", fraction=0.5), "not a readable"),
        "truncated_mid_stream": (
            write_truncated_copy(faststart_source, root / "cut_fs.mp4", fraction=0.8),
            # decord refuses the file when it indexes the packets; PyAV decodes up to the cut.
            "corrupt or truncated after frame|decord cannot decode the video",
        ),
    }


@pytest.mark.parametrize("backend", ["auto", *FILE_BACKENDS])
def test_unusable_files_raise_media_error_naming_the_path(tmp_path: Path, video_faststart: Path, backend: str) -> None:
    for name, (path, reason) in _broken_files(tmp_path / "broken", video_faststart).items():
        # fps=30 wants every frame, so a truncated file must fail whatever backend reads it.
        with pytest.raises(MediaError) as info:
            load_video(path, FrameSampling(fps=30.0), backend=backend)  # type: ignore[arg-type]
        message = str(info.value)
        assert message.startswith(f"{path}: "), (name, message)
        assert re.search(reason, message), (name, message)


@pytest.mark.parametrize("backend", ["auto", "pyav"])
def test_truncated_file_gives_the_frames_that_really_decoded(
    tmp_path: Path, video_faststart: Path, backend: str
) -> None:
    """Wanted frames that lie before the cut are returned (all real); decord refuses the file at
    open, so ``auto`` serves it with PyAV. Asking for a frame past the cut raises (test above)."""
    cut = write_truncated_copy(video_faststart, tmp_path / "cut.mp4", fraction=0.95)  # ~275 frames survive
    clip = load_video(cut, FrameSampling(num_frames=3), backend=backend)  # type: ignore[arg-type]
    assert clip.total_frames == 300  # as declared
    assert clip.indices.tolist() == [50, 150, 250]
    assert _indices_drawn(clip) == [50, 150, 250]


def test_broken_files_cannot_crash_the_process(tmp_path: Path, video_faststart: Path) -> None:
    """decord can abort the process on some broken files: run every broken file through every
    backend in a child process and check that it only ever raised MediaError."""
    files = _broken_files(tmp_path / "broken", video_faststart)
    script = (
        "import sys\n"
        "from llava_vid.processing.media import MediaError\n"
        "from llava_vid.processing.video import FrameSampling, load_video\n"
        "for path in sys.argv[1:]:\n"
        "    for backend in ('auto', 'decord', 'pyav'):\n"
        "        for sampling in (FrameSampling(fps=30.0), FrameSampling(num_frames=2)):\n"
        "            try:\n"
        "                load_video(path, sampling, backend=backend)\n"
        "            except MediaError:\n"
        "                pass\n"
        "print('survived')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *(str(path) for path, _ in files.values())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "survived" in result.stdout, result.stderr[-2000:]
