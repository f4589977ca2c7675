"""Video decoding and frame sampling.

:func:`load_video` turns a video file, a folder of frame images or a list of
images into a :class:`VideoClip`: the sampled frames (optionally shrunk by a
``frame_transform`` chunk by chunk, so an hour of video never sits in memory at
full resolution), their timestamps and the video's metadata. Every failure is
a :class:`~llava_vid.processing.media.MediaError` whose message starts with the
source and gives the reason.

Design choices worth knowing:

* **Which frames.** :func:`sample_frame_indices` is the single rule, shared by
  the processor. ``num_frames=n`` takes the centre frame of each of ``n``
  equal segments, ``floor((k + 1/2) * total / n)`` for ``k < n`` (the TSN /
  LLaMA-VID-style "evenly spread" choice; unlike ``linspace(0, total-1)`` it
  never leans on the very first/last frame, which are often black fades, and
  ``n=1`` picks the middle frame); ``n`` above the frame count gives every
  frame once. ``fps=f`` takes frame 0 and then one frame every
  ``native_fps / f`` frames, ``floor(k * native_fps / f)``; ``fps`` above the
  native rate gives every frame. ``max_frames=m`` caps the count: with
  ``num_frames`` it is simply ``n = min(n, m)``; with ``fps`` the chosen
  indices are thinned to ``m`` by taking the segment centres of that list.
  Integer-exact and deterministic.
* **Timestamps** are ``index / native_fps`` (seconds), for every backend, not
  the container's presentation timestamps: they are identical across decord
  and PyAV, agree with how the indices were chosen, and need no decoding. For
  variable-frame-rate video they are therefore the *nominal* times.
* **Metadata** comes from one PyAV probe of the container (frame count, rate),
  whichever backend decodes, so both backends sample the same indices. When
  the container stores no frame count (Matroska/WebM: ``stream.frames == 0``)
  the video packets are counted by demuxing, which reads the file but decodes
  nothing. ``native_fps`` is the stream's average rate, else its guessed rate.
* **Backends.** ``auto`` uses decord (random access, fast for sparse sampling)
  and falls back to PyAV (sequential decode) when decord is not installed or
  cannot open/decode the file; the fallback is logged at INFO, the serving
  backend at DEBUG and recorded in :attr:`VideoClip.backend`. decord has been
  reported to crash the process on malformed input, so a file only reaches it
  after the PyAV probe found a video stream with decodable parameters and
  frames. decord is opened with a fault tolerance below one frame: by default
  it silently repeats the last good frame for frames it cannot decode; this
  way the first such substitute raises and PyAV decides instead.
* **Truncated or corrupt files.** Every returned frame really decoded at its
  index; nothing is padded or repeated. A truncated mp4 either fails to open
  (index at the end, FFmpeg's default) or, with the index at the front,
  decodes until the data stops: decord refuses it when it indexes the packets,
  and PyAV never decodes the packet the demuxer flags as cut short. If a
  wanted frame lies past the cut, that is a MediaError (a clip of "whatever
  decoded" would cover only the start of the video with the wrong spacing);
  wanted frames before the cut come back as usual, they are complete. A file
  whose metadata over-counts frames (decoding ends cleanly with wanted frames
  missing) is refused the same way, naming both numbers. Not detectable:
  damage inside an intact container that FFmpeg conceals instead of reporting,
  or a corrupt sample table that reorders/drops frames (both backends then
  agree on frames that are off by one or two).
* **Image sequences.** A folder (image files in natural name order, so
  ``frame_2`` comes before ``frame_10``; hidden files and other extensions are
  skipped) or a list of paths/PIL images is a video at ``native_fps = 1.0``
  (an image list carries no timing, so frames are taken to be one second
  apart). Only the sampled frames are loaded, each with
  :func:`~llava_vid.processing.media.load_image`; they must all share one size.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Literal, Union, get_args

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image

from llava_vid.processing.media import MediaError, check_media_file, load_image

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "FrameSampling",
    "FrameTransform",
    "VideoBackend",
    "VideoClip",
    "VideoSource",
    "load_video",
    "sample_frame_indices",
]

logger = logging.getLogger(__name__)

VideoBackend = Literal["auto", "decord", "pyav"]

# Union[...] rather than "|" so the aliases also evaluate on Python 3.10 at runtime.
FrameInput = Union[str, os.PathLike, Image.Image]
VideoSource = Union[str, os.PathLike, Sequence[FrameInput]]
# (n, H, W, 3) uint8 -> (n, H', W', 3) uint8
FrameTransform = Callable[[np.ndarray], np.ndarray]

# File suffixes (lower case) that make a folder entry a frame image.
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# File suffixes (lower case) treated as videos by tools that must tell a video from an image by its name.
VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".ogv", ".3gp"}
)

# Image sequences carry no timing: their frames are taken to be one second apart.
IMAGE_SEQUENCE_FPS = 1.0

_FRAMES_LABEL = "<frames>"


# --------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class FrameSampling:
    """How frames are picked. Give num_frames (uniform over the whole video) or fps (frames per
    second of video time, default 1.0 when neither is given); max_frames caps the count by uniform
    subsampling."""

    num_frames: int | None = None
    """Frames spread evenly over the whole video (segment centres); all frames if the video is shorter."""
    fps: float | None = None
    """Frames per second of video time, from frame 0; every frame if above the video's own rate."""
    max_frames: int | None = None
    """Upper bound on the count; more indices are thinned to this many, evenly."""

    def __post_init__(self) -> None:
        if self.num_frames is not None and self.fps is not None:
            raise ValueError(
                f"FrameSampling: give num_frames or fps, not both (got num_frames={self.num_frames}, fps={self.fps})"
            )
        _check_positive_int("num_frames", self.num_frames)
        _check_positive_int("max_frames", self.max_frames)
        if self.fps is not None:
            if isinstance(self.fps, bool) or not isinstance(self.fps, (int, float)):
                raise ValueError(f"FrameSampling.fps must be a number, got {type(self.fps).__name__}")
            if not (math.isfinite(self.fps) and self.fps > 0):
                raise ValueError(f"FrameSampling.fps must be a positive finite number, got {self.fps}")

    @property
    def effective_fps(self) -> float | None:
        """The fps rule in force: ``fps``, 1.0 when neither field is given, None for ``num_frames``."""
        if self.num_frames is not None:
            return None
        return 1.0 if self.fps is None else float(self.fps)


def _check_positive_int(name: str, value: object) -> None:
    """ValueError naming FrameSampling.<name> unless ``value`` is None or an int >= 1."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"FrameSampling.{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"FrameSampling.{name} must be >= 1, got {value}")


def sample_frame_indices(total_frames: int, native_fps: float, sampling: FrameSampling) -> np.ndarray:
    """Sorted, unique int64 frame indices in ``[0, total_frames)`` chosen by ``sampling``.

    Never empty for ``total_frames >= 1``; ``native_fps`` only matters for fps sampling. See the
    module docstring for the exact rules.
    """
    if isinstance(total_frames, bool) or not isinstance(total_frames, (int, np.integer)) or total_frames < 1:
        raise ValueError(f"total_frames must be an int >= 1, got {total_frames!r}")
    if not (math.isfinite(native_fps) and native_fps > 0):
        raise ValueError(f"native_fps must be a positive finite number, got {native_fps!r}")
    total = int(total_frames)
    fps = sampling.effective_fps
    cap = total if sampling.max_frames is None else min(total, int(sampling.max_frames))
    if fps is None:
        # Capping num_frames directly gives the same even spread as thinning the uncapped indices,
        # but with exact segment centres.
        return _segment_centres(total, min(int(sampling.num_frames), cap))  # type: ignore[arg-type]
    indices = _every_nth(total, native_fps / fps)
    if len(indices) > cap:
        indices = indices[_segment_centres(len(indices), cap)]
    return indices


def _segment_centres(length: int, count: int) -> np.ndarray:
    """Centre of each of ``count`` equal segments of ``range(length)``: floor((2k+1)·length / 2count).

    Strictly increasing for ``1 <= count <= length`` (segments are >= 1 long); integer-exact.
    """
    k = np.arange(count, dtype=np.int64)  # (count,)
    return ((2 * k + 1) * length) // (2 * count)


def _every_nth(total: int, step: float) -> np.ndarray:
    """Frame 0 and every ``step``-th frame after it (floor of k·step), or every frame when step <= 1."""
    if step <= 1.0:
        return np.arange(total, dtype=np.int64)
    # The small epsilon keeps k·step that is mathematically an integer (e.g. 3 · 29.97/2.997)
    # from flooring to the frame before because of binary rounding.
    count = math.ceil(total / step - 1e-9)
    indices = np.floor(np.arange(count) * step + 1e-9).astype(np.int64)  # (count,)
    return indices[indices < total]


# --------------------------------------------------------------------------- clip


@dataclass
class VideoClip:
    """Sampled frames of one video plus what is needed to place them in time."""

    frames: np.ndarray
    """(T, H', W', 3) uint8, after ``frame_transform`` when one was given."""
    timestamps: np.ndarray
    """(T,) float64 seconds of each sampled frame: ``index / native_fps``."""
    source: str
    """The file or folder path, or ``"<frames>"`` for a list of images."""
    native_fps: float
    """The video's own frame rate (1.0 for image sequences)."""
    total_frames: int
    """Frames in the whole video (not only the sampled ones)."""
    duration: float
    """Seconds: ``total_frames / native_fps``."""
    indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """(T,) int64 index of each sampled frame in the video."""
    backend: str = ""
    """What decoded the frames: ``"decord"``, ``"pyav"`` or ``"images"``."""


@dataclass(frozen=True)
class _VideoInfo:
    """What the PyAV probe learnt about a file's first video stream."""

    total_frames: int
    native_fps: float
    width: int
    height: int


# --------------------------------------------------------------------------- entry point


def load_video(
    source: VideoSource,
    sampling: FrameSampling = FrameSampling(),
    *,
    frame_transform: FrameTransform | None = None,
    chunk_size: int = 32,
    backend: VideoBackend = "auto",
) -> VideoClip:
    """Decode the frames of ``source`` chosen by ``sampling`` into a :class:`VideoClip`.

    ``source``: a video file, a folder of frame images, or a list of image paths / PIL images.
    ``frame_transform`` maps each chunk of at most ``chunk_size`` frames, (n, H, W, 3) uint8, to
    (n, H', W', 3) uint8 (e.g. resize to the vision tower's size); at most ``chunk_size``
    full-resolution frames are held at once. ``backend`` picks the decoder for files (ignored for
    image sequences). Raises :class:`MediaError` for an unusable source, ``ValueError`` for bad
    arguments and ``TypeError`` for an unsupported source type.
    """
    _check_arguments(sampling, chunk_size, backend)
    if isinstance(source, (str, os.PathLike)):
        path = _path_string(source)
        if os.path.isdir(path):
            return _load_image_sequence(_folder_frames(path), path, sampling, frame_transform, chunk_size)
        return _load_video_file(path, sampling, frame_transform, chunk_size, backend)
    if isinstance(source, Sequence) and not isinstance(source, (bytes, bytearray)):
        if len(source) == 0:
            raise MediaError(f"{_FRAMES_LABEL}: empty list of frames")
        return _load_image_sequence(list(source), _FRAMES_LABEL, sampling, frame_transform, chunk_size)
    raise TypeError(
        "load_video expects a path (str/PathLike) to a video file or folder, or a list of image paths / "
        f"PIL images, got {type(source).__name__}"
    )


def _check_arguments(sampling: FrameSampling, chunk_size: int, backend: str) -> None:
    """ValueError/TypeError for programming mistakes, before any I/O."""
    if not isinstance(sampling, FrameSampling):
        raise TypeError(f"sampling must be a FrameSampling, got {type(sampling).__name__}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    if backend not in get_args(VideoBackend):
        raise ValueError(f"backend must be one of {get_args(VideoBackend)}, got {backend!r}")


def _path_string(source: str | os.PathLike) -> str:
    """``source`` as a str path; refuses URLs like load_image does."""
    path = os.fspath(source)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if path[:8].lower().startswith(("http://", "https://")):
        raise MediaError(
            f"{path}: URLs are not fetched (no network access is assumed and nothing is downloaded "
            "silently); download the video first and pass the local file path"
        )
    return path


# --------------------------------------------------------------------------- video files


def _load_video_file(
    path: str,
    sampling: FrameSampling,
    frame_transform: FrameTransform | None,
    chunk_size: int,
    backend: VideoBackend,
) -> VideoClip:
    """Probe ``path`` with PyAV, then decode the sampled frames with decord or PyAV."""
    info = _probe(path)
    indices = sample_frame_indices(info.total_frames, info.native_fps, sampling)
    frames, served_by = _decode_file(path, info, indices, frame_transform, chunk_size, backend)
    logger.debug("%s: %d of %d frames decoded with %s", path, len(indices), info.total_frames, served_by)
    return _clip(frames, indices, path, info.native_fps, info.total_frames, served_by)


def count_sampled_frames(source: str | os.PathLike, sampling: FrameSampling) -> int:
    """How many frames :func:`load_video` samples from ``source`` (a video file or a folder of frame
    images), from metadata only: the container's frame count and rate (one PyAV probe, nothing decoded)
    or the folder's frame files. Raises :class:`MediaError` for an unusable source."""
    path = _path_string(source)
    if os.path.isdir(path):
        total_frames, native_fps = len(_folder_frames(path)), IMAGE_SEQUENCE_FPS
    else:
        info = _probe(path)
        total_frames, native_fps = info.total_frames, info.native_fps
    return len(sample_frame_indices(total_frames, native_fps, sampling))


def _decode_file(
    path: str,
    info: _VideoInfo,
    indices: np.ndarray,
    frame_transform: FrameTransform | None,
    chunk_size: int,
    backend: VideoBackend,
) -> tuple[np.ndarray, str]:
    """Frames at ``indices`` (T, H', W', 3) and the name of the backend that decoded them.

    When decord fails part-way, PyAV starts again from the first chunk, so ``frame_transform``
    may see some chunks twice (only their PyAV results are kept).
    """
    if backend in ("auto", "decord"):
        decord = _import_decord()
        if decord is None:
            if backend == "decord":
                raise MediaError(f"{path}: backend='decord' was requested but decord is not installed")
            logger.debug("%s: decord is not installed; decoding with PyAV", path)
        else:
            try:
                chunks = _decord_chunks(decord, path, info, indices, chunk_size)
                return _transform_and_stack(chunks, frame_transform, path, len(indices)), "decord"
            except _DecordFailed as exc:
                if backend == "decord":
                    raise MediaError(f"{path}: decord cannot decode the video ({exc})") from exc
                logger.info("%s: decord failed (%s); decoding with PyAV instead", path, exc)
    chunks = _pyav_chunks(path, info, indices, chunk_size)
    return _transform_and_stack(chunks, frame_transform, path, len(indices)), "pyav"


def _probe(path: str) -> _VideoInfo:
    """Frame count, rate and size of the first video stream; MediaError for anything unusable.

    Runs before decord sees the file: decord can crash the process on files without a decodable
    video stream, PyAV raises.
    """
    check_media_file(path, "video")
    with _open_container(path) as container:
        if not container.streams.video:
            found = ", ".join(stream.type for stream in container.streams) or "none"
            raise MediaError(
                f"{path}: no video stream (streams found: {found}); an audio-only file, or a truncated video"
            )
        stream = container.streams.video[0]
        total_frames = stream.frames or _count_packets(container, stream, path)
        if total_frames < 1:
            raise MediaError(f"{path}: the video has no frames")
        width, height = stream.codec_context.width, stream.codec_context.height
        if not width or not height or stream.codec_context.pix_fmt is None:
            raise MediaError(
                f"{path}: the video stream has no decodable picture format ({width}x{height}); "
                "the file is truncated or corrupt"
            )
        native_fps = _stream_fps(stream, path)
    return _VideoInfo(total_frames=int(total_frames), native_fps=native_fps, width=width, height=height)


def _open_container(path: str) -> av.container.InputContainer:
    """``av.open`` for reading; MediaError when FFmpeg cannot parse the file."""
    try:
        # Metadata tags are decoded leniently: a corrupt or Latin-1 title must not make the
        # frames unreadable (PyAV raises UnicodeDecodeError from av.open otherwise).
        return av.open(path, metadata_errors="replace")
    except av.FFmpegError as exc:
        raise MediaError(f"{path}: not a readable video file, corrupt or truncated ({_reason(exc)})") from exc


def _stream_fps(stream: av.video.stream.VideoStream, path: str) -> float:
    """The stream's average frame rate, else its guessed rate."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return float(rate)
    raise MediaError(f"{path}: the video stream declares no frame rate")


def _count_packets(container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: str) -> int:
    """Frames of ``stream`` counted by demuxing (no decoding), for containers that store no count."""
    try:
        return sum(1 for packet in container.demux(stream) if packet.size > 0)
    except av.FFmpegError as exc:
        raise MediaError(f"{path}: cannot read the video packets, corrupt or truncated ({_reason(exc)})") from exc


# ---- decord


class _DecordFailed(Exception):
    """decord could not open or decode a file; PyAV gets a try."""


# By default decord hides a frame it cannot decode by handing out the last good frame again
# (vr[200..299] all equal vr[199] in a half-broken file). A fault tolerance below one frame
# (a fraction of the frame count; decord ignores 0) makes the first such substitute raise
# DECORDLimitReachedError instead, so the PyAV fallback decides.
_DECORD_FAULT_TOLERANCE = 1e-9


_decord_module: ModuleType | None | bool = False  # False: not tried yet


def _import_decord() -> ModuleType | None:
    """The decord module, or None when it is not installed (tried once)."""
    global _decord_module
    if _decord_module is False:
        try:
            import decord
        except ImportError:  # also: the wheel's native library failing to load
            _decord_module = None
        else:
            _decord_module = decord
    return _decord_module  # type: ignore[return-value]


def _decord_chunks(
    decord: ModuleType, path: str, info: _VideoInfo, indices: np.ndarray, chunk_size: int
) -> Iterator[np.ndarray]:
    """Yield the frames at ``indices`` in chunks of (<= chunk_size, H, W, 3) uint8 via decord.

    Opening happens eagerly (before the first chunk is asked for), so open errors surface here.
    """
    try:
        reader = decord.VideoReader(
            path, ctx=decord.cpu(0), num_threads=_decoder_threads(), fault_tol=_DECORD_FAULT_TOLERANCE
        )
    except _decord_errors(decord) as exc:
        raise _DecordFailed(f"cannot open: {_reason(exc)}") from exc
    if len(reader) <= indices[-1]:
        raise _DecordFailed(f"decord sees {len(reader)} frames, the container declares {info.total_frames}")
    return _decord_batches(decord, reader, indices, chunk_size, info)


def _decord_batches(
    decord: ModuleType, reader: object, indices: np.ndarray, chunk_size: int, info: _VideoInfo
) -> Iterator[np.ndarray]:
    """Generator half of :func:`_decord_chunks`."""
    for start in range(0, len(indices), chunk_size):
        wanted = indices[start : start + chunk_size].tolist()
        try:
            batch = reader.get_batch(wanted)  # type: ignore[attr-defined]
        except _decord_errors(decord) as exc:
            raise _DecordFailed(f"cannot decode frames {wanted[0]}..{wanted[-1]}: {_reason(exc)}") from exc
        # asnumpy() under decord's default bridge; another bridge (torch, ...) returns its own tensor.
        frames = batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)  # (n, H, W, 3)
        if frames.shape != (len(wanted), info.height, info.width, 3) or frames.dtype != np.uint8:
            raise _DecordFailed(
                f"decord returned {frames.dtype} {frames.shape}, expected uint8 ({len(wanted)}, "
                f"{info.height}, {info.width}, 3)"
            )
        yield frames


def _decord_errors(decord: ModuleType) -> tuple[type[BaseException], ...]:
    """What decord raises for a file it cannot handle (DECORDLimitReachedError is not a DECORDError)."""
    limit_reached = getattr(decord, "DECORDLimitReachedError", decord.DECORDError)
    return (decord.DECORDError, limit_reached, RuntimeError)


def _decoder_threads() -> int:
    """Decoder threads for decord: the machine's cores, at most 8 (more rarely helps one stream)."""
    return max(1, min(8, os.cpu_count() or 1))


# ---- PyAV


def _pyav_chunks(path: str, info: _VideoInfo, indices: np.ndarray, chunk_size: int) -> Iterator[np.ndarray]:
    """Yield the frames at ``indices`` in chunks of (<= chunk_size, H, W, 3) uint8 via PyAV.

    Decodes the stream front to back (stopping after the last wanted frame) and converts only the
    wanted frames to RGB, so memory holds at most ``chunk_size`` full-resolution frames. Frame
    ``i`` is the ``i``-th frame the decoder outputs (presentation order), as in decord's index.
    """
    with _open_container(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        # One reformatter for the whole stream: frame.to_ndarray(format="rgb24") builds its
        # conversion context per call, ~40x slower on small frames (PyAV 18: 2 ms vs 0.05 ms at 32x32).
        to_rgb = VideoReformatter()
        wanted = iter(indices.tolist())
        next_wanted = next(wanted)
        chunk: list[np.ndarray] = []
        decoded = 0
        for frame in _decoded_frames(container, stream, path):
            if decoded == next_wanted:
                chunk.append(to_rgb.reformat(frame, format="rgb24").to_ndarray())  # (H, W, 3)
                next_wanted = next(wanted, None)
                if len(chunk) == chunk_size or next_wanted is None:
                    yield _stack(chunk, path)
                    chunk = []
                if next_wanted is None:
                    return
            decoded += 1
    raise MediaError(
        f"{path}: decoding ended after {decoded} frames but the container declares {info.total_frames} "
        f"(frame {next_wanted} was wanted); the file is truncated or its frame count is wrong"
    )


def _decoded_frames(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: str
) -> Iterator[av.VideoFrame]:
    """The stream's frames in presentation order; corrupt data becomes MediaError.

    A packet the demuxer flags as corrupt (e.g. cut short by truncation) is never decoded: the
    frames already complete are flushed out of the decoder first, and only a caller that still
    wants more frames gets the error, so nothing concealed or half-decoded is ever returned.
    """
    decoded = 0
    try:
        for packet in container.demux(stream):
            if packet.is_corrupt:
                for frame in stream.decode(None):  # flush: frames of the packets before this one
                    yield frame
                    decoded += 1
                raise MediaError(
                    f"{path}: the video data is corrupt or truncated after frame {decoded} "
                    f"(of {stream.frames or 'an unknown number of'} declared)"
                )
            for frame in stream.decode(packet):  # the final empty packet flushes the decoder
                yield frame
                decoded += 1
    except av.FFmpegError as exc:
        raise MediaError(
            f"{path}: cannot decode the video after frame {decoded}, corrupt or truncated ({_reason(exc)})"
        ) from exc


# --------------------------------------------------------------------------- image sequences


def _folder_frames(folder: str) -> list[str]:
    """Image files directly in ``folder``, in natural order of their names; MediaError if none."""
    try:
        names = [entry.name for entry in os.scandir(folder) if _is_frame_file(entry)]
    except OSError as exc:
        raise MediaError(f"{folder}: cannot list the folder ({_reason(exc)})") from exc
    if not names:
        raise MediaError(
            f"{folder}: folder has no image files to use as frames (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return [os.path.join(folder, name) for name in sorted(names, key=_natural_key)]


def _is_frame_file(entry: os.DirEntry[str]) -> bool:
    return not entry.name.startswith(".") and Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS and entry.is_file()


def _natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders digit runs by value: frame_2 < frame_10 (then case-insensitively by text)."""
    parts = re.split(r"(\d+)", name)
    return tuple((0, int(part)) if part.isdigit() else (1, part.lower()) for part in parts)


def _load_image_sequence(
    frames: list[FrameInput],
    label: str,
    sampling: FrameSampling,
    frame_transform: FrameTransform | None,
    chunk_size: int,
) -> VideoClip:
    """A folder or list of images as a video at IMAGE_SEQUENCE_FPS; only sampled frames are loaded."""
    indices = sample_frame_indices(len(frames), IMAGE_SEQUENCE_FPS, sampling)
    chunks = _image_chunks(frames, indices, label, chunk_size)
    stacked = _transform_and_stack(chunks, frame_transform, label, len(indices))
    return _clip(stacked, indices, label, IMAGE_SEQUENCE_FPS, len(frames), "images")


def _image_chunks(frames: list[FrameInput], indices: np.ndarray, label: str, chunk_size: int) -> Iterator[np.ndarray]:
    """Yield the images at ``indices`` in chunks of (<= chunk_size, H, W, 3) uint8; all one size."""
    size: tuple[int, int] | None = None
    first: int | None = None
    for start in range(0, len(indices), chunk_size):
        chunk = []
        for index in indices[start : start + chunk_size].tolist():
            image = _load_frame(frames[index], index, label)
            if size is None:
                size, first = image.size, index
            elif image.size != size:
                raise MediaError(
                    f"{label}: frame {index} ({_describe(frames[index])}) is {image.size[0]}x{image.size[1]} "
                    f"but frame {first} is {size[0]}x{size[1]}; the frames of a video must share one size"
                )
            chunk.append(np.asarray(image))  # (H, W, 3)
        yield np.stack(chunk)


def _load_frame(frame: object, index: int, label: str) -> Image.Image:
    """One frame of an image sequence as RGB; MediaError naming the sequence and the frame."""
    if not isinstance(frame, (str, os.PathLike, Image.Image)):
        raise TypeError(f"{label}: frame {index} must be a path or a PIL image, got {type(frame).__name__}")
    try:
        return load_image(frame)
    except MediaError as exc:
        if label == _FRAMES_LABEL:
            raise MediaError(f"{label}: frame {index}: {exc}") from exc
        raise  # a folder: load_image's message already starts with the file's path inside it


def _describe(frame: FrameInput) -> str:
    return "PIL image" if isinstance(frame, Image.Image) else os.fspath(frame)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- shared


def _transform_and_stack(
    chunks: Iterator[np.ndarray], frame_transform: FrameTransform | None, label: str, num_frames: int
) -> np.ndarray:
    """Apply ``frame_transform`` to each (n, H, W, 3) chunk, writing into one (T, H', W', 3) uint8 array.

    The output is allocated once, when the first chunk shows the frame size, and filled chunk by chunk,
    so no second copy of the whole video is ever made.
    """
    stacked: np.ndarray | None = None
    filled = 0
    for chunk in chunks:
        out = chunk if frame_transform is None else _apply_transform(frame_transform, chunk)
        if stacked is None:
            stacked = np.empty((num_frames, *out.shape[1:]), dtype=np.uint8)  # (T, H', W', 3)
        elif out.shape[1:] != stacked.shape[1:]:
            raise MediaError(
                f"{label}: frames change size within the video ({stacked.shape[1:]} then {out.shape[1:]}); "
                "cannot stack them"
            )
        if filled + len(out) > num_frames:
            raise MediaError(f"{label}: the decoder returned more than the {num_frames} frames asked for")
        stacked[filled : filled + len(out)] = out
        filled += len(out)
    if stacked is None or filled != num_frames:
        raise MediaError(f"{label}: decoded {filled} of the {num_frames} frames asked for")
    return stacked


def _apply_transform(frame_transform: FrameTransform, chunk: np.ndarray) -> np.ndarray:
    """``frame_transform(chunk)``, checked to be (n, H', W', 3) uint8 for an (n, H, W, 3) chunk."""
    out = frame_transform(chunk)
    well_formed = isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.ndim == 4
    if not well_formed or out.shape[0] != len(chunk) or out.shape[3] != 3:
        got = f"{out.dtype} array of shape {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
        raise ValueError(f"frame_transform must return a ({len(chunk)}, H', W', 3) uint8 array, got {got}")
    return out


def _stack(frames: list[np.ndarray], label: str) -> np.ndarray:
    """np.stack of decoded frames: (n, H, W, 3); MediaError if the picture size changed mid-stream."""
    shapes = {frame.shape for frame in frames}
    if len(shapes) > 1:
        raise MediaError(f"{label}: frames change size within the video ({sorted(shapes)}); cannot stack them")
    return np.stack(frames)


def _clip(
    frames: np.ndarray, indices: np.ndarray, source: str, native_fps: float, total_frames: int, backend: str
) -> VideoClip:
    return VideoClip(
        frames=frames,
        timestamps=indices / native_fps,  # (T,) seconds
        source=source,
        native_fps=native_fps,
        total_frames=total_frames,
        duration=total_frames / native_fps,
        indices=indices,
        backend=backend,
    )


def _reason(exc: BaseException) -> str:
    """Short human-readable reason from an exception."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
