"""``llava-vid inspect VIDEO``: which frames of a video the model sees and how many tokens they become.

Samples the frames with :func:`~llava_vid.processing.video.load_video` and plans the video with
:func:`~llava_vid.processing.planning.plan_video`, exactly as the processor does for a request holding
this one video (its default content grid, the tower's patches per side as the largest grid, the token
budget); every count comes from :mod:`llava_vid.geometry`. The PNG is a contact sheet: the kept frames
(an evenly spaced subset when there are many), each labelled with its time and frame number, under a
panel of the numbers. Frames are decoded at display size (at most :data:`DISPLAY_SIDE` px a side), not
at the tower's size, so the sheet shows what was filmed.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from llava_vid.geometry import VideoPlan, num_video_tokens
from llava_vid.processing.planning import kept_frames, plan_video
from llava_vid.processing.video import VIDEO_EXTENSIONS, FrameSampling, VideoSource, load_video, sample_frame_indices

if TYPE_CHECKING:
    from llava_vid.processing.processor import LlavaVidProcessor


DISPLAY_SIDE = 160  # px: the longest side of a frame on the contact sheet
MAX_SHOWN = 48  # frames on the contact sheet; more are thinned to an even spread
_COLUMNS = 8
_CELL_WIDTH = 1.8  # inches per frame column (180 px at 100 dpi, so a 160 px frame is not upscaled much)
_LABEL_HEIGHT = 0.25  # inches under each frame for its label


def is_video_source(path: str | os.PathLike) -> bool:
    """True for a folder (of frame images) or a file with a video suffix."""
    return os.path.isdir(path) or Path(path).suffix.lower() in VIDEO_EXTENSIONS


def default_out_path(source: str | os.PathLike) -> Path:
    """``VIDEO`` stem (or folder name) + ``.inspect.png``, in the current directory."""
    path = Path(source)
    name = path.name if path.is_dir() else path.stem
    return Path((name.strip("<>") or "video") + ".inspect.png")  # "<frames>" (a list of images) → frames


class _DisplayFrames:
    """``frame_transform`` for :func:`load_video`: shrinks each frame to at most ``side`` px a side
    (never enlarges) and remembers the decoded size."""

    def __init__(self, side: int = DISPLAY_SIDE) -> None:
        self.side = side
        self.original_size: tuple[int, int] | None = None  # (h, w) as decoded

    def __call__(self, frames: np.ndarray) -> np.ndarray:  # (n, H, W, 3) -> (n, H', W', 3)
        height, width = frames.shape[1:3]
        self.original_size = (height, width)
        scale = min(1.0, self.side / max(height, width))
        if scale == 1.0:
            return frames
        size = (max(1, round(width * scale)), max(1, round(height * scale)))  # PIL: (w, h)
        return np.stack([np.asarray(Image.fromarray(frame).resize(size, Image.BILINEAR)) for frame in frames])


def inspect_video(
    source: VideoSource,
    processor: LlavaVidProcessor,
    *,
    sampling: FrameSampling = FrameSampling(),
    content_grid: int | None = None,
    max_visual_tokens: int | None = None,
    out_path: str | Path | None = None,
) -> dict[str, Any]:
    """Sample and plan ``source`` as the lone video of a request, write the contact sheet and return the numbers.

    Returned keys: ``source``, ``backend``, ``native_fps``, ``duration`` (s), ``total_frames`` (in the
    whole video), ``frame_size`` ``(h, w)`` as decoded, ``sampling`` (the rule, as text),
    ``sampled_frames``, ``kept_frames`` (after the budget), ``content_grid`` ``g``, ``tokens_per_frame``
    (``1 + g²``), ``total_tokens`` (= ``num_video_tokens``), ``max_visual_tokens``, ``frame_indices`` and
    ``timestamps`` (s) of the kept frames, ``shown_frames`` (on the sheet) and ``out_path``.

    Raises:
        MediaError: the video cannot be read; ValueError: a budget or grid that cannot be met.
    """
    display = _DisplayFrames()
    clip = load_video(source, sampling, frame_transform=display)
    sampled = len(clip.frames)
    # The processor's rule for a request with one video: the whole budget is its share.
    plan = plan_video(
        sampled,
        content_grid=content_grid,
        default_grid=processor.video_content_grid,
        context_token=processor.video_context_token,
        max_grid=processor.geometry.patches_per_side,
        budget=max_visual_tokens,
    )
    kept = kept_frames(sampled, plan)
    out = Path(out_path) if out_path is not None else default_out_path(clip.source)
    report = {
        "source": clip.source,
        "backend": clip.backend,
        "native_fps": clip.native_fps,
        "duration": clip.duration,
        "total_frames": clip.total_frames,
        "frame_size": display.original_size,
        "sampling": describe_sampling(sampling),
        "sampled_frames": sampled,
        "kept_frames": plan.num_frames,
        "content_grid": plan.content_grid,
        "tokens_per_frame": plan.tokens_per_frame,
        "total_tokens": num_video_tokens(plan),
        "max_visual_tokens": max_visual_tokens,
        "frame_indices": clip.indices[kept].tolist(),
        "timestamps": clip.timestamps[kept].tolist(),
        "shown_frames": min(plan.num_frames, MAX_SHOWN),
        "out_path": str(out),
    }
    write_contact_sheet(clip.frames[kept], plan, report, out)
    return report


def describe_sampling(sampling: FrameSampling) -> str:
    rule = f"num_frames={sampling.num_frames}" if sampling.num_frames is not None else f"fps={sampling.effective_fps:g}"
    return rule if sampling.max_frames is None else f"{rule}, max_frames={sampling.max_frames}"


def _times(timestamps: list[float], limit: int = 6) -> str:
    stamps = [f"{t:.1f}s" for t in timestamps]
    if len(stamps) > limit:
        stamps = [*stamps[: limit - 2], "…", stamps[-1]]
    return ", ".join(stamps)


def report_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """``(label, value)`` rows shared by the stdout table and the PNG's text panel."""
    size = report["frame_size"]
    grid = report["content_grid"]
    kept = str(report["kept_frames"])
    if report["kept_frames"] < report["sampled_frames"]:
        kept += f" (budget dropped {report['sampled_frames'] - report['kept_frames']})"
    budget = report["max_visual_tokens"]
    return [
        ("native fps", f"{report['native_fps']:g}"),
        ("duration", f"{report['duration']:.2f} s ({report['total_frames']} frames)"),
        ("frame size (h × w)", "-" if size is None else f"{size[0]} × {size[1]}"),
        ("sampling", report["sampling"]),
        ("frames sampled", str(report["sampled_frames"])),
        ("frames kept", kept),
        ("timestamps", _times(report["timestamps"])),
        ("content grid g", f"{grid} ({grid} × {grid})"),
        ("tokens per frame", f"{report['tokens_per_frame']} ({report['tokens_per_frame'] - grid * grid} context + {grid * grid} content)"),
        ("token budget", "-" if budget is None else str(budget)),
        ("total tokens", str(report["total_tokens"])),
    ]


def format_report(report: dict[str, Any]) -> str:
    rows = [("video", report["source"]), *report_rows(report), ("picture", report["out_path"])]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


# ------------------------------------------------------------------------------------------ picture
def write_contact_sheet(frames: np.ndarray, plan: VideoPlan, report: dict[str, Any], out_path: str | Path) -> None:
    """The kept ``frames`` ``(T, H, W, 3)`` (at most :data:`MAX_SHOWN`, evenly spaced) in a grid, each
    labelled with its time and frame number, under a text panel of the numbers (Agg canvas, no pyplot)."""
    shown = np.arange(len(frames))
    if len(shown) > MAX_SHOWN:
        shown = sample_frame_indices(len(frames), 1.0, FrameSampling(num_frames=MAX_SHOWN))
    columns = min(_COLUMNS, len(shown))
    rows = math.ceil(len(shown) / columns)
    frame_height, frame_width = frames.shape[1:3]
    cell_height = _CELL_WIDTH * frame_height / frame_width + _LABEL_HEIGHT

    lines = [f"{label}: {value}" for label, value in [("video", report["source"]), *report_rows(report)]]
    title = f"{len(shown)} of {plan.num_frames} frames the model sees"
    if len(shown) < plan.num_frames:
        title += f" (an evenly spaced subset: at most {MAX_SHOWN} are shown)"
    lines.append(title)
    header_height = 0.2 + 0.17 * len(lines)
    width = max(8.0, columns * _CELL_WIDTH + 0.4)
    height = header_height + rows * cell_height + 0.2

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    figure.text(
        0.2 / width, 1 - 0.15 / height, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=9
    )
    for slot, index in enumerate(shown.tolist()):
        row, column = divmod(slot, columns)
        left = (0.2 + column * _CELL_WIDTH) / width
        bottom = 1 - (header_height + (row + 1) * cell_height) / height
        axes = figure.add_axes(
            (left, bottom + _LABEL_HEIGHT / height, 0.96 * _CELL_WIDTH / width, (cell_height - _LABEL_HEIGHT) / height)
        )
        axes.imshow(frames[index], interpolation="nearest", aspect="auto")
        axes.set_xticks([])
        axes.set_yticks([])
        label = f"{report['timestamps'][index]:.1f}s · frame {report['frame_indices'][index]}"
        axes.set_xlabel(label, fontsize=8, labelpad=2)

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, format="png")
