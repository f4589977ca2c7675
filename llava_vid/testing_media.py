"""Synthetic media files for tests and synthetic training data.

Everything here writes real, decodable files with PyAV (no ffmpeg binary
needed) and is fast enough to call per test: a 3600-frame 32x32 video writes in
well under a second.

The default video frames *encode their own index*: the frame is cut into a
4 x 4 grid of cells, and cell ``k`` (row-major) is white when bit ``k`` of the
frame index is set and black otherwise. Black/white cells survive lossy codecs
and rescaling, so :func:`read_frame_index` recovers the index of any decoded
frame, which lets tests check *which* frame a decoder returned without
comparing pixels exactly. 16 bits cover indices up to 65535.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

__all__ = [
    "INDEX_BITS",
    "default_video_codec",
    "frame_index_image",
    "read_frame_index",
    "write_audio_only",
    "write_frame_folder",
    "write_test_video",
    "write_truncated_copy",
    "write_zero_frame_video",
]

# The index is drawn as a _GRID x _GRID grid of black/white cells.
_GRID = 4
INDEX_BITS: int = _GRID * _GRID

PathLike = str | os.PathLike


def default_video_codec() -> str:
    """``libx264`` when this PyAV build has it (the common real-world codec,
    with B-frames, so frame reordering is exercised), else ``mpeg4``."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def frame_index_image(index: int, size: tuple[int, int] = (64, 48)) -> np.ndarray:
    """A ``size`` = (width, height) RGB frame whose pixels encode ``index``.

    Returns (H, W, 3) uint8. Cell ``k`` of the 4 x 4 grid (row-major) is 255
    when bit ``k`` of ``index`` is set, else 0. Needs width, height >= 4.
    """
    width, height = size
    if width < _GRID or height < _GRID:
        raise ValueError(f"size must be at least {_GRID}x{_GRID} to encode the index, got {width}x{height}")
    if not 0 <= index < 2**INDEX_BITS:
        raise ValueError(f"index must be in [0, {2**INDEX_BITS}), got {index}")
    bits = (index >> np.arange(INDEX_BITS)) & 1  # (16,)
    cells = (bits.reshape(_GRID, _GRID) * 255).astype(np.uint8)  # (4, 4)
    rows = np.arange(height) * _GRID // height  # (H,) cell row of each pixel row
    cols = np.arange(width) * _GRID // width  # (W,)
    grey = cells[rows[:, None], cols[None, :]]  # (H, W)
    return np.repeat(grey[:, :, None], 3, axis=2)  # (H, W, 3)


def read_frame_index(frame: np.ndarray) -> int:
    """Recover the index drawn by :func:`frame_index_image` from a decoded frame.

    ``frame`` is (H, W, 3) or (H, W) uint8 at any resolution. Only the central
    half of each cell is read, so codec ringing at cell edges does not matter.
    """
    grey = frame.mean(axis=2) if frame.ndim == 3 else frame.astype(np.float64)  # (H, W)
    height, width = grey.shape
    index = 0
    for k in range(INDEX_BITS):
        row, col = divmod(k, _GRID)
        top, bottom = _cell_centre(row, height)
        left, right = _cell_centre(col, width)
        if grey[top:bottom, left:right].mean() > 127.5:
            index |= 1 << k
    return index


def _cell_centre(cell: int, length: int) -> tuple[int, int]:
    """[start, stop) of the central half of grid cell ``cell`` along an axis of ``length`` pixels."""
    start, stop = cell * length / _GRID, (cell + 1) * length / _GRID
    quarter = (stop - start) / 4
    lo, hi = int(round(start + quarter)), int(round(stop - quarter))
    return lo, max(hi, lo + 1)


def write_test_video(
    path: PathLike,
    *,
    num_frames: int,
    fps: float,
    size: tuple[int, int] = (64, 48),
    codec: str | None = None,
    draw: Callable[[int], np.ndarray] | None = None,
    faststart: bool = False,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write a ``num_frames``-frame video at ``fps`` and return its path.

    ``size`` is (width, height) and must be even for the 4:2:0 codecs.
    ``codec`` defaults to :func:`default_video_codec`; the container follows
    the suffix of ``path`` (``.mp4``, ``.mkv``, ``.avi``, ...). ``draw(i)``
    returns frame ``i`` as (H, W, 3) uint8; by default frames encode their
    index (:func:`frame_index_image`). Quality is set high so the index
    survives. ``faststart`` moves the mp4 index (``moov``) to the front, so a
    truncated copy still opens and its first frames still decode. ``metadata``
    sets container tags (``{"title": ...}``).
    """
    width, height = size
    if width % 2 or height % 2:
        raise ValueError(f"size must be even for yuv420p video, got {width}x{height}")
    codec = codec or default_video_codec()
    draw = draw or (lambda i: frame_index_image(i, size))
    path = Path(path)
    container_options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", options=container_options) as container:
        container.metadata.update(metadata or {})
        stream = container.add_stream(codec, rate=_rate(fps), options=_quality_options(codec))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(num_frames):
            image = np.ascontiguousarray(draw(i), dtype=np.uint8)  # (H, W, 3)
            if image.shape != (height, width, 3):
                raise ValueError(f"draw({i}) returned shape {image.shape}, expected {(height, width, 3)}")
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())  # flush delayed (B-)frames
    return path


def _rate(fps: float) -> Fraction:
    """``fps`` as an exact fraction (29.97 -> 2997/100), as PyAV wants for a stream rate."""
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return Fraction(fps).limit_denominator(1001 * 1000)


def _quality_options(codec: str) -> dict[str, str]:
    """Encoder options that keep black/white cells intact (and encoding fast)."""
    if codec == "libx264":
        return {"crf": "10", "preset": "veryfast"}
    if codec == "mpeg4":
        return {"qscale": "2"}
    return {}


def write_zero_frame_video(path: PathLike, *, fps: float = 10.0, size: tuple[int, int] = (64, 48)) -> Path:
    """A container with a video stream header but no frames at all.

    Always written as AVI (whatever the suffix): FFmpeg's mp4/mov muxers drop a track without
    samples and its Matroska muxer writes nothing, but AVI keeps the empty video stream.
    """
    path = Path(path)
    with av.open(str(path), mode="w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=_rate(fps))
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        container.start_encoding()  # writes the header; no frame is ever muxed
    return path


def write_audio_only(path: PathLike, *, seconds: float = 1.0, sample_rate: int = 16_000) -> Path:
    """A file with one audio stream (a 440 Hz tone) and no video stream.

    ``.wav`` gets PCM; any other suffix (``.m4a``, ``.mp4``, ``.mkv``) gets AAC.
    """
    path = Path(path)
    codec = "pcm_s16le" if path.suffix.lower() == ".wav" else "aac"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=sample_rate)
        stream.layout = "mono"
        t = np.arange(int(seconds * sample_rate)) / sample_rate
        tone = np.sin(2 * np.pi * 440.0 * t)  # (S,)
        if codec == "pcm_s16le":
            samples, fmt = (tone * 32767 * 0.5).astype(np.int16)[None, :], "s16"
        else:
            samples, fmt = (tone * 0.5).astype(np.float32)[None, :], "fltp"
        frame = av.AudioFrame.from_ndarray(samples, format=fmt, layout="mono")  # samples: (1, S)
        frame.sample_rate = sample_rate
        frame.pts = 0
        frame.time_base = Fraction(1, sample_rate)
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_truncated_copy(source: PathLike, destination: PathLike, *, fraction: float = 0.5) -> Path:
    """Copy the first ``fraction`` of ``source``'s bytes to ``destination`` (a truncated download)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    data = Path(source).read_bytes()
    destination = Path(destination)
    destination.write_bytes(data[: int(len(data) * fraction)])
    return destination


def write_frame_folder(
    folder: PathLike,
    *,
    num_frames: int,
    size: tuple[int, int] = (64, 48),
    pattern: str = "frame_{}.png",
    draw: Callable[[int], np.ndarray] | None = None,
) -> Path:
    """Write ``num_frames`` index-encoding PNG frames into ``folder`` (created if needed).

    File names are ``pattern.format(i)`` *without* zero padding by default, so
    the folder only reads back in order when sorted naturally (2 before 10).
    """
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    draw = draw or (lambda i: frame_index_image(i, size))
    for i in range(num_frames):
        Image.fromarray(np.ascontiguousarray(draw(i), dtype=np.uint8), "RGB").save(folder / pattern.format(i))
    return folder
