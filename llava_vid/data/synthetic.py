"""A deterministic synthetic "world" of images, videos and closed-answer questions for CPU demos.

:func:`generate_world` writes real files (PNG images, H.264 mp4 videos via PyAV, or MPEG-4 Part 2
where this PyAV build lacks libx264) and LLaVA-format JSONL datasets that
:func:`llava_vid.data.formats.read_records` loads unchanged::

    <out>/
      world.json              options, record counts per split/task, the video options to train with
      tasks.json              per task: question ({image} in the pick tasks': each record names the image),
                              closed answer set, chance level, media kind
      captions.jsonl          stage 1: image/video → caption ("a red circle and a blue square", "a star")
      train.jsonl             stage 2: every QA task (shuffled) plus a share of the captions
      media/<task>/*.png|mp4  the train media (paths in the JSONL files are relative to <out>)
      heldout/<task>.jsonl    one held-out file per QA task
      heldout/media/<task>/…  the held-out media (relative to heldout/, so each file is self-contained)
      vision_pairs.jsonl      image/caption pairs for contrastive vision-tower pretraining (56 px views)
      heldout/vision_pairs.jsonl  held-out pairs for zero-shot evaluation of that tower

Vision pairs (:data:`VISION_GROUPS`) show what the downstream tasks need the tower to tell apart, at the
resolution it sees: coloured shapes ("a red circle"), needle-style symbol frames ("a star"), frames with
nothing in them ("an empty frame"), circle counts ("three circles"), and 56 px tiles cut from full-size
document pages rendered exactly like ``document_word``'s ("the word cat" for the tile holding the word's
centre, whole or cut by the tile edge, or "a blank page" for a tile with only distractor marks). Each record: ``id``, ``image``, ``caption``, ``group`` and ``labels`` (attribute →
value, e.g. ``{"colour": "red", "shape": "circle"}``).

Records carry two extra keys the loader ignores: ``task`` and ``answer`` (needle records also
``needle_frame``, ``needle_span`` and the symbol's ``colour``; the multi-image ones ``counts`` or
``colours`` per image and, for the pick tasks, ``asked``: the image the question names), so an evaluator
can score by exact match without parsing. ``task`` and ``answer`` are the first turn's; a train record
may go on with follow-up turns about the same media (``WorldOptions.follow_ups``), a held-out one never.

Determinism: every sample draws from its own RNG seeded by (seed, split, task, index, attempt), so
the output does not depend on the number of worker processes or their scheduling; the same seed
gives byte-identical JSONL, PNG and mp4 files. Train and held-out use different RNG streams and, in
addition, any held-out sample whose rendered pixels equal a train sample's is re-drawn.

The sizes match the tiny AnyRes preset (``configs/model/tiny_anyres.yaml``): 56 px images and video
frames (one vision-tower view), 168 px document pages (a 3×3 grid of 56 px tiles) whose word is only
legible at full resolution, not in the 56 px global view.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from llava_vid.checks import check_int, check_number

__all__ = [
    "COLOURS",
    "QA_TASKS",
    "SHAPES",
    "SYMBOLS",
    "TASKS",
    "VISION_GROUPS",
    "WORDS",
    "TaskSpec",
    "WorldManifest",
    "WorldOptions",
    "build_parser",
    "generate_world",
    "main",
    "render_contact_sheet",
]

Split = Literal["train", "heldout"]
RGB = tuple[int, int, int]

# Saturated colours that stay distinct after 4:2:0 chroma subsampling at 56 px.
COLOURS: dict[str, RGB] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 70, 230),
    "yellow": (245, 215, 20),
    "purple": (150, 50, 190),
    "orange": (250, 130, 10),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
SYMBOLS: tuple[str, ...] = ("star", "cross", "ring", "arrow")
WORDS: tuple[str, ...] = ("cat", "sun", "dog", "map", "box", "key", "cup", "hat", "pen", "car")
ORDINALS: tuple[str, ...] = ("first", "second", "third")
COUNT_WORDS: tuple[str, ...] = ("one", "two", "three", "four")
POSITIONS: tuple[str, ...] = ("on the left", "in the middle", "on the right")


@dataclass(frozen=True)
class TaskSpec:
    """One question-answering task: its fixed question, closed answer set and media kind."""

    name: str
    question: str
    """Asked after the media placeholders; ``{image}`` (the pick tasks) is filled with an ordinal."""
    answers: tuple[str, ...]
    media: Literal["video", "long_video", "image", "images"]

    @property
    def chance(self) -> float:
        """Accuracy of guessing uniformly (answers are balanced, so also of the majority guess)."""
        return 1.0 / len(self.answers)


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("video_colour", "What colour is the shape? Answer with one word.", tuple(COLOURS), "video"),
        TaskSpec("video_shape", "What shape appears in the video? Answer with one word.", SHAPES, "video"),
        TaskSpec("video_motion", "Does the shape move left or right?", ("left", "right"), "video"),
        TaskSpec("video_order", "Which shape appeared first? Answer with one word.", SHAPES, "video"),
        TaskSpec("needle", "What symbol appeared in the video? Answer with one word.", SYMBOLS, "long_video"),
        TaskSpec("document_word", "What word is written on the page? Answer with one word.", WORDS, "image"),
        TaskSpec("compare_count", "Which image has the most circles? Answer first, second or third.", ORDINALS, "images"),
        TaskSpec("compare_colour", "Are the shapes the same colour? Answer yes or no.", ("yes", "no"), "images"),
        # One image of several, named by its place: the reading half of each comparison above.
        TaskSpec("pick_count", "How many circles are in the {image} image? Answer with one word.", COUNT_WORDS, "images"),
        TaskSpec("pick_colour", "What colour is the shape in the {image} image? Answer with one word.", tuple(COLOURS), "images"),
    )
}
QA_TASKS: tuple[str, ...] = tuple(TASKS)
CAPTION = "caption"  # the stage-1 pseudo-task (open answers, train only)
VISION = "vision_pairs"  # the vision-pretraining pseudo-task (image/caption pairs, own files)
# Kinds of vision pair and how many of each per round of 14: shapes cover 72 colour × shape × position
# captions and words (10-way, small type) are hard to read, so they get the most; then counts.
_VISION_PLAN: tuple[str, ...] = ("shape",) * 5 + ("symbol", "empty") + ("count",) * 2 + ("word",) * 4 + ("blank",)
VISION_GROUPS: tuple[str, ...] = ("shape", "symbol", "empty", "count", "word", "blank")
# The vision pairs' kinds that also become stage-1 captions (``WorldOptions.caption_views``): what the
# needle, the counting and the document tasks answer with, which the shape captions never name.
CAPTION_VIEW_KINDS: tuple[str, ...] = ("symbol", "count", "word")

# Multi-image samples are the cheapest to train on (a few 56 px views). Trained alone, the comparisons
# stayed near chance (same colour 45%, most circles 63%, 1200/900 records); with as many pick questions
# ("the shape in the second image"), which teach reading one image by its place, 87% and 93%. With the
# pick questions also asked as follow-ups of every multi-image record, 600 colour records a task teach
# the colour comparison when those two tasks train alone (95%); beside the 900 counting triples it stays
# at chance, with 600 or 1200 (never learned: BENCHMARKS.md); trained first, alone (the demo's stage
# 2a), it survives them but counting pays for it. Why is open, so the count stays where it is cheapest.
# A batch of 16 needles (16–256 frames, see needle_train_shortest) trains in ~1.8 s, of documents ~1.6 s,
# of short videos or multi-image questions ~0.4 s: 750 needles stayed at chance in an earlier recipe and
# took the demo past its 25 minutes, so 300, and the time goes to documents and the multi-image tasks.
_DEFAULT_TRAIN_COUNTS: dict[str, int] = {
    "video_colour": 300,
    "video_shape": 300,
    "video_motion": 500,
    "video_order": 300,
    "needle": 300,
    "document_word": 1200,
    "compare_count": 900,
    "compare_colour": 600,
    "pick_count": 900,
    "pick_colour": 600,
}
_DEFAULT_HELDOUT_COUNTS: dict[str, int] = {task: 60 for task in QA_TASKS}


# ----------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class WorldOptions:
    """What :func:`generate_world` makes. Sizes are pixels (square); counts are records."""

    seed: int = 0
    train_counts: Mapping[str, int] = field(default_factory=lambda: dict(_DEFAULT_TRAIN_COUNTS))
    """Train records per QA task (every task of :data:`QA_TASKS` must be present)."""
    heldout_counts: Mapping[str, int] = field(default_factory=lambda: dict(_DEFAULT_HELDOUT_COUNTS))
    """Held-out records per QA task."""
    caption_images: int = 2000
    """Stage-1 caption records with one image of one or two shapes."""
    caption_videos: int = 100
    """Stage-1 caption records with a short video of one shape."""
    caption_views: int = 1500
    """Stage-1 caption records with one 56 px view drawn and captioned like a vision pair of the kinds in
    :data:`CAPTION_VIEW_KINDS` ("a star", "three circles", "the word cat"), in equal shares. Without
    them the captions name only colours and shapes, and the symbol, count and word names are learned
    from the QA records alone."""
    caption_mix_ratio: float = 0.2
    """Share of the caption records also put into train.jsonl (keeps stage 2 from forgetting stage 1)."""
    vision_pairs: int = 56000
    """Image/caption pairs in vision_pairs.jsonl (contrastive vision-tower pretraining). The tower's 4000
    steps of 64 see 256 000 views: with 7000 pairs each image came back ~37 times and the tower learnt
    them (final loss 0.04) more than it learnt to read (held-out word 0.75, symbol 0.80); 56 000 fresh
    pairs (~30 s more to draw, ~0.5 GB as uint8) gave word 0.80, symbol 0.92, shape 0.99, position 0.94."""
    vision_heldout_pairs: int = 700
    """Held-out image/caption pairs in heldout/vision_pairs.jsonl (zero-shot evaluation)."""
    image_size: int = 56
    page_size: int = 168
    font_size: int = 11
    """Pixel size of the document word; ~11 px is crisp at the page size but a blur at page_size / 3."""
    distractor_marks: int = 8
    """Grey lines, dots and boxes scattered over each document page."""
    video_size: int = 56
    video_frames: int = 12
    video_fps: float = 6.0
    long_video_frames: int = 256
    """Frames of every held-out needle video, and the most a train needle video has."""
    needle_train_shortest: float = 0.0625
    """The shortest train needle video as a share of ``long_video_frames`` (0.0625: 16 of 256 frames): train
    lengths are drawn log-uniformly between the two (1.0: every train video is as long as the held-out
    ones). In a short video the needle is a larger share of the tokens, so the model learns where to look
    from a clearer signal and at a fraction of the cost; the long ones teach it to look that far."""
    long_video_fps: float = 1.0
    needle_span: int = 1
    """Consecutive frames of the long video that show the symbol."""
    follow_ups: bool = True
    """Train records go on, after their own question, with the other questions their media answer, as
    further turns (LLaVA's instruction data are multi-turn too): each image's circle count after "which
    has the most", the other attributes of a short video's shape, the needle symbol's colour (see
    :func:`_follow_up_turns`). More answers to learn from for the price of one encoding of the media;
    held-out records keep their one question."""
    codec: str | None = None
    """Video encoder; None picks libx264 when PyAV has it, else mpeg4."""
    workers: int = 0
    """Processes rendering samples; 0 uses every CPU core. Does not change the output."""

    def __post_init__(self) -> None:
        _check_int("seed", self.seed, minimum=0)
        object.__setattr__(self, "train_counts", _checked_counts("train_counts", self.train_counts))
        object.__setattr__(self, "heldout_counts", _checked_counts("heldout_counts", self.heldout_counts))
        _check_int("caption_images", self.caption_images, minimum=0)
        _check_int("caption_videos", self.caption_videos, minimum=0)
        _check_int("caption_views", self.caption_views, minimum=0)
        _check_int("vision_pairs", self.vision_pairs, minimum=0)
        _check_int("vision_heldout_pairs", self.vision_heldout_pairs, minimum=0)
        _check_number("caption_mix_ratio", self.caption_mix_ratio, minimum=0.0, maximum=1.0)
        _check_int("image_size", self.image_size, minimum=32)
        _check_int("font_size", self.font_size, minimum=6)
        # The word must fit with room to move, and the 56 px global view must be a real downscale.
        _check_int("page_size", self.page_size, minimum=max(64, 6 * self.font_size))
        _check_int("distractor_marks", self.distractor_marks, minimum=0)
        if self.vision_pairs or self.vision_heldout_pairs or self.caption_views:
            # Page tiles for the vision pairs: a word tile, and a blank one beside a word that may touch
            # 2 × 2 tiles, so at least 3 × 3 of them; a word fits a tile.
            _check_int("page_size", self.page_size, minimum=3 * self.image_size)
            _check_int("image_size", self.image_size, minimum=4 * self.font_size)
        _check_int("video_size", self.video_size, minimum=32)
        if self.video_size % 2:
            raise ValueError(f"WorldOptions.video_size must be even (yuv420p video), got {self.video_size}")
        _check_int("video_frames", self.video_frames, minimum=4)  # video_order needs two halves of >= 2 frames
        _check_number("video_fps", self.video_fps, minimum=1e-3)
        _check_int("needle_span", self.needle_span, minimum=1)
        _check_int("long_video_frames", self.long_video_frames, minimum=max(2, self.needle_span))
        _check_number("needle_train_shortest", self.needle_train_shortest, minimum=1e-3, maximum=1.0)
        _check_number("long_video_fps", self.long_video_fps, minimum=1e-3)
        if not isinstance(self.follow_ups, bool):
            raise ValueError(f"WorldOptions.follow_ups must be True or False, got {self.follow_ups!r}")
        if self.codec is not None and self.codec not in av.codecs_available:
            raise ValueError(f"WorldOptions.codec {self.codec!r} is not available in this PyAV build")
        _check_int("workers", self.workers, minimum=0)

    @property
    def video_codec(self) -> str:
        if self.codec is not None:
            return self.codec
        return "libx264" if "libx264" in av.codecs_available else "mpeg4"

    @property
    def train_video_options(self) -> dict[str, float]:
        """Frame sampling that keeps every frame of both the short and the long videos (the needle
        frame must not be skipped): put it in the ``video_options`` of the DatasetSpec."""
        return {"fps": max(self.video_fps, self.long_video_fps)}

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["train_counts"] = dict(self.train_counts)
        data["heldout_counts"] = dict(self.heldout_counts)
        del data["workers"]  # does not change the output, so it must not change world.json either
        return data


def _check_int(name: str, value: object, *, minimum: int) -> None:
    check_int(f"WorldOptions.{name}", value, minimum=minimum)


def _check_number(name: str, value: object, *, minimum: float, maximum: float = math.inf) -> None:
    check_number(f"WorldOptions.{name}", value, minimum=minimum, maximum=maximum)


def _checked_counts(name: str, counts: Mapping[str, int]) -> dict[str, int]:
    if not isinstance(counts, Mapping):
        raise ValueError(f"WorldOptions.{name} must map task names to counts, got {counts!r}")
    unknown = sorted(set(counts) - set(QA_TASKS))
    missing = [task for task in QA_TASKS if task not in counts]
    if unknown or missing:
        raise ValueError(f"WorldOptions.{name}: unknown tasks {unknown}, missing tasks {missing}; expected {list(QA_TASKS)}")
    for task in QA_TASKS:
        _check_int(f"{name}[{task!r}]", counts[task], minimum=0)
    return {task: counts[task] for task in QA_TASKS}  # fixed order, so world.json is stable


# ---------------------------------------------------------------------------------------- manifest
@dataclass(frozen=True)
class WorldManifest:
    """What :func:`generate_world` wrote."""

    root: Path
    options: WorldOptions
    tasks_file: Path
    world_file: Path
    captions_file: Path
    train_file: Path
    heldout_files: dict[str, Path]
    counts: dict[str, dict[str, int]]
    """Records per split (``captions``, ``train``, ``heldout``) and task; ``vision_pairs``: pairs per split."""
    vision_pairs_file: Path
    vision_heldout_file: Path
    media_files: int
    seconds: float

    def summary_table(self) -> str:
        """A plain-text table: records per task in each file."""
        rows = [("task", "captions", "train", "heldout")]
        for task in (CAPTION, *QA_TASKS):
            rows.append((task, *(str(self.counts[split].get(task, 0)) for split in ("captions", "train", "heldout"))))
        rows.append(("total", *(str(sum(self.counts[split].values())) for split in ("captions", "train", "heldout"))))
        widths = [max(len(row[column]) for row in rows) for column in range(4)]
        lines = ["  ".join(cell.ljust(width) if column == 0 else cell.rjust(width) for column, (cell, width) in enumerate(zip(row, widths))) for row in rows]
        lines.insert(1, "  ".join("-" * width for width in widths))
        vision = self.counts.get(VISION, {})
        lines.append(f"vision pairs: {vision.get('train', 0)} train, {vision.get('heldout', 0)} held out")
        footer = f"{self.media_files} media files in {self.root} ({self.seconds:.1f} s, codec {self.options.video_codec})"
        return "\n".join([*lines, footer])


# ------------------------------------------------------------------------------------------ randomness
def _rng(seed: int, *keys: str | int) -> np.random.Generator:
    """An independent stream per (seed, keys): strings are folded in by CRC-32 (stable across runs,
    unlike ``hash``)."""
    words = [seed] + [zlib.crc32(key.encode()) if isinstance(key, str) else key for key in keys]
    return np.random.default_rng(words)


def _balanced(answers: Sequence[str], count: int, rng: np.random.Generator) -> list[str]:
    """``count`` answers, each used ⌊count/n⌋ or ⌈count/n⌉ times, in random order."""
    order = [answers[i] for i in rng.permutation(len(answers))]  # which answers get the +1 is random too
    planned = [order[i % len(order)] for i in range(count)]
    return [planned[i] for i in rng.permutation(count)]


def _pick(rng: np.random.Generator, items: Sequence[str], exclude: Sequence[str] = ()) -> str:
    choices = [item for item in items if item not in exclude]
    return choices[int(rng.integers(len(choices)))]


# ------------------------------------------------------------------------------------------ drawing
def _background(rng: np.random.Generator, size: int, low: int = 90, high: int = 170, noise: int = 8) -> np.ndarray:
    """(size, size, 3) uint8: a random grey with mild noise, so no two samples share pixels."""
    level = int(rng.integers(low, high))
    grain = rng.integers(-noise, noise + 1, (size, size, 1))
    return np.clip(level + grain, 0, 255).astype(np.uint8).repeat(3, axis=2)


def _polygon(centre: tuple[float, float], radius: float, angles_degrees: Sequence[float], radii: Sequence[float] | None = None) -> list[tuple[float, float]]:
    x, y = centre
    radii = radii or [1.0] * len(angles_degrees)
    return [
        (x + radius * scale * math.cos(math.radians(angle)), y - radius * scale * math.sin(math.radians(angle)))
        for angle, scale in zip(angles_degrees, radii)
    ]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, centre: tuple[float, float], radius: float, fill: RGB) -> None:
    """Draw a named shape or symbol (no anti-aliasing: crisp edges are easy to learn)."""
    x, y = centre
    box = (x - radius, y - radius, x + radius, y + radius)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        side = radius * 0.85
        draw.rectangle((x - side, y - side, x + side, y + side), fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(centre, radius, (90, 210, 330)), fill=fill)
    elif shape == "diamond":
        draw.polygon(_polygon(centre, radius, (90, 180, 270, 0)), fill=fill)
    elif shape == "star":
        draw.polygon(_polygon(centre, radius, [90 + 36 * k for k in range(10)], [1.0, 0.42] * 5), fill=fill)
    elif shape == "cross":
        arm = radius * 0.3
        draw.rectangle((x - radius, y - arm, x + radius, y + arm), fill=fill)
        draw.rectangle((x - arm, y - radius, x + arm, y + radius), fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, round(radius * 0.3)))
    elif shape == "arrow":
        shaft, head = radius * 0.22, radius * 0.6
        draw.rectangle((x - radius, y - shaft, x + radius * 0.1, y + shaft), fill=fill)
        draw.polygon([(x + radius * 0.1, y - head), (x + radius, y), (x + radius * 0.1, y + head)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _shapes_image(background: np.ndarray, items: Sequence[tuple[str, RGB, tuple[float, float], float]]) -> np.ndarray:
    image = Image.fromarray(background, "RGB")
    draw = ImageDraw.Draw(image)
    for shape, colour, centre, radius in items:
        _draw_shape(draw, shape, centre, radius, colour)
    return np.asarray(image)


def _place_apart(rng: np.random.Generator, size: int, radii: Sequence[float], gap: float = 2.0) -> list[tuple[float, float]]:
    """Centres for non-overlapping discs of ``radii`` inside a ``size`` square (rejection sampling)."""
    for _ in range(1000):
        centres: list[tuple[float, float]] = []
        for radius in radii:
            for _ in range(200):
                x, y = rng.uniform(radius + 1, size - radius - 1, 2)
                if all(math.hypot(x - cx, y - cy) >= radius + other + gap for (cx, cy), other in zip(centres, radii)):
                    centres.append((float(x), float(y)))
                    break
            else:
                break
        if len(centres) == len(radii):
            return centres
    raise RuntimeError(f"cannot place {len(radii)} shapes in {size} px")  # unreachable at the validated sizes


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in font at ``size`` px (bundled, works offline); the fixed bitmap font on old Pillow."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, AttributeError, OSError):
        return ImageFont.load_default()


# ------------------------------------------------------------------------------------------ media files
def _save_png(path: Path, pixels: np.ndarray) -> None:
    # A fixed compress level and no metadata: byte-identical files for identical pixels.
    Image.fromarray(pixels, "RGB").save(path, format="PNG", compress_level=6)


def _encoder_options(codec: str) -> dict[str, str]:
    if codec == "libx264":
        # x264's macroblock-tree rate control gave different bytes for the same frames from run to
        # run (seen with moving shapes at 56-64 px); without it the output is reproducible.
        return {"crf": "16", "preset": "veryfast", "x264-params": "no-mbtree=1"}
    if codec == "mpeg4":
        return {"qscale": "3"}
    return {}


def _save_video(path: Path, frames: Iterator[np.ndarray], *, fps: float, size: int, codec: str) -> None:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1_000_000), options=_encoder_options(codec))
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.thread_count = 1  # tiny frames: threads only add start-up cost; workers parallelise instead
        for pixels in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())


class _Hasher:
    """Hashes rendered pixels (not encoded bytes) so held-out/train overlap is judged on content."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()

    def add(self, pixels: np.ndarray) -> np.ndarray:
        self._digest.update(np.ascontiguousarray(pixels).tobytes())
        return pixels

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


# ------------------------------------------------------------------------------------------ samples
@dataclass(frozen=True)
class _Job:
    split: Split
    task: str
    index: int
    answer: str | None
    attempt: int
    base: str
    """The folder the record's JSONL file lives in; media go to ``base/media/<task>/``."""
    options: WorldOptions

    @property
    def sample_id(self) -> str:
        return f"{self.split}-{self.task}-{self.index:05d}"

    def media_path(self, suffix: str, part: int | None = None) -> tuple[Path, str]:
        """(absolute path, path relative to the JSONL folder) of one media file of the sample."""
        name = self.sample_id + ("" if part is None else f"-{part}") + suffix
        relative = f"media/{self.task}/{name}"
        return Path(self.base) / relative, relative


@dataclass(frozen=True)
class _Sample:
    record: dict[str, Any]
    hashes: tuple[str, ...]


def _qa_record(
    job: _Job,
    media_key: str,
    paths: str | list[str],
    answer: str,
    *,
    asked: str | None = None,
    follow_ups: Sequence[tuple[str, str]] = (),
    **extra: Any,
) -> dict[str, Any]:
    """A QA record; ``asked`` (the pick tasks: which image, an ordinal) fills the question's ``{image}``
    and is kept in the record; ``follow_ups`` (question, answer) are further turns (see
    :func:`_follow_up_turns`)."""
    if isinstance(paths, list):  # several images, each named as the questions name it: "Second image: <image>"
        media = "\n".join(f"{ORDINALS[k].capitalize()} image: <image>" for k in range(len(paths)))
    else:
        media = "<video>" if media_key == "video" else "<image>"
    question = media + "\n" + _question(job.task, asked)
    if asked is not None:
        extra = {"asked": asked, **extra}
    turns = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    for follow_up, follow_up_answer in follow_ups:
        turns += [{"from": "human", "value": follow_up}, {"from": "gpt", "value": follow_up_answer}]
    return {
        "id": job.sample_id,
        media_key: paths,
        "conversations": turns,
        "task": job.task,
        "answer": answer,
        **extra,
    }


def _question(task: str, asked: str | None = None) -> str:
    """``task``'s question, about the image named ``asked`` for the pick tasks."""
    return TASKS[task].question.format(image=asked)


# Follow-up questions that are no task of their own (asked in training only, never scored).
_NEEDLE_COLOUR_QUESTION = "What colour was the symbol? Answer with one word."
_LAST_SHAPE_QUESTION = "Which shape appeared last? Answer with one word."


def _follow_up_turns(job: _Job, rng: np.random.Generator, turns: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """``turns`` (question, answer) in a random order for a train record; none for a held-out one or
    with ``WorldOptions.follow_ups`` off. Drawn after the media, so they never change the pixels."""
    if job.split != "train" or not job.options.follow_ups:
        return []
    return [turns[k] for k in rng.permutation(len(turns))]


def _pick_count_turns(counts: Sequence[int], *, skip: int | None = None) -> list[tuple[str, str]]:
    """"How many circles are in the k-th image?" for each image but ``skip``."""
    return [(_question("pick_count", ORDINALS[k]), COUNT_WORDS[c - 1]) for k, c in enumerate(counts) if k != skip]


def _write_short_video(job: _Job, draw_frame: Any) -> tuple[str, str]:
    """Render ``draw_frame(i)`` for every short-video frame into an mp4; (relative path, content hash)."""
    options = job.options
    path, relative = job.media_path(".mp4")
    hasher = _Hasher()
    frames = (hasher.add(draw_frame(i)) for i in range(options.video_frames))
    _save_video(path, frames, fps=options.video_fps, size=options.video_size, codec=options.video_codec)
    return relative, hasher.hexdigest()


def _single_shape_video(job: _Job, rng: np.random.Generator, shape: str, colour: str, motion: str | None) -> tuple[str, str]:
    """One shape that appears within the first quarter of the clip (so 1-fps sampling still sees it)
    and stays, still or sliding ``motion`` ("left"/"right") by at least a third of the frame."""
    size, count = job.options.video_size, job.options.video_frames
    background = _background(rng, size)
    radius = float(rng.uniform(0.14, 0.2) * size)
    appear = int(rng.integers(0, count // 4 + 1))
    y = float(rng.uniform(radius + 1, size - radius - 1))
    if motion is None:
        start = end = float(rng.uniform(radius + 1, size - radius - 1))
    else:
        low, high = radius + 1, size - radius - 1
        travel = float(rng.uniform(size / 3, high - low))
        start = float(rng.uniform(low, high - travel))
        end = start + travel
        if motion == "left":
            start, end = end, start

    def draw_frame(i: int) -> np.ndarray:
        if i < appear:
            return background
        x = start + (end - start) * i / (count - 1)
        return _shapes_image(background, [(shape, COLOURS[colour], (x, y), radius)])

    return _write_short_video(job, draw_frame)


def _make_video_colour(job: _Job, rng: np.random.Generator) -> _Sample:
    shape = _pick(rng, SHAPES)
    relative, digest = _single_shape_video(job, rng, shape, job.answer, motion=None)
    follow_ups = _follow_up_turns(job, rng, [(_question("video_shape"), shape)])
    return _Sample(_qa_record(job, "video", relative, job.answer, follow_ups=follow_ups), (digest,))


def _make_video_shape(job: _Job, rng: np.random.Generator) -> _Sample:
    colour = _pick(rng, tuple(COLOURS))
    relative, digest = _single_shape_video(job, rng, job.answer, colour, motion=None)
    follow_ups = _follow_up_turns(job, rng, [(_question("video_colour"), colour)])
    return _Sample(_qa_record(job, "video", relative, job.answer, follow_ups=follow_ups), (digest,))


def _make_video_motion(job: _Job, rng: np.random.Generator) -> _Sample:
    shape, colour = _pick(rng, SHAPES), _pick(rng, tuple(COLOURS))
    relative, digest = _single_shape_video(job, rng, shape, colour, motion=job.answer)
    follow_ups = _follow_up_turns(job, rng, [(_question("video_shape"), shape), (_question("video_colour"), colour)])
    return _Sample(_qa_record(job, "video", relative, job.answer, follow_ups=follow_ups), (digest,))


def _make_video_order(job: _Job, rng: np.random.Generator) -> _Sample:
    """Shape A fills the first half of the clip, a different shape B the second half."""
    size, count = job.options.video_size, job.options.video_frames
    background = _background(rng, size)
    second_shape = _pick(rng, SHAPES, exclude=(job.answer,))
    items = []
    for shape in (job.answer, second_shape):
        radius = float(rng.uniform(0.14, 0.2) * size)
        centre = tuple(float(v) for v in rng.uniform(radius + 1, size - radius - 1, 2))
        items.append((shape, COLOURS[_pick(rng, tuple(COLOURS))], centre, radius))
    halves = [_shapes_image(background, [item]) for item in items]
    relative, digest = _write_short_video(job, lambda i: halves[0 if i < count // 2 else 1])
    follow_ups = _follow_up_turns(job, rng, [(_LAST_SHAPE_QUESTION, second_shape)])
    return _Sample(_qa_record(job, "video", relative, job.answer, follow_ups=follow_ups), (digest,))


def _make_needle(job: _Job, rng: np.random.Generator) -> _Sample:
    """A long, nearly static video (grain, slow brightness drift, one small wandering dot) with one
    large symbol on ``needle_span`` consecutive frames at a uniformly random position. Held out: always
    ``long_video_frames`` frames; train: a log-uniform length down to ``needle_train_shortest`` of that."""
    options = job.options
    size, count, span = options.video_size, _needle_frames(job, rng), options.needle_span
    background = _background(rng, size, low=70, high=150, noise=10).astype(np.int16)
    needle_frame = int(rng.integers(0, count - span + 1))
    radius = float(rng.uniform(0.34, 0.44) * size)
    centre = tuple(float(v) for v in rng.uniform(radius + 1, size - radius - 1, 2))
    colour = _pick(rng, tuple(COLOURS))
    symbol_frame = _shapes_image(background.astype(np.uint8), [(job.answer, COLOURS[colour], centre, radius)])
    symbol_mask = np.any(symbol_frame != background.astype(np.uint8), axis=2)  # (H, W) pixels of the symbol
    drift_phase, drift_period = float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(40, 120))
    dot = rng.uniform(2, size - 4, 2)
    dot_steps = rng.normal(0, 0.8, (count, 2))

    def frames() -> Iterator[np.ndarray]:
        nonlocal dot
        for i in range(count):
            dot = np.clip(dot + dot_steps[i], 1, size - 4)
            shift = int(round(8 * math.sin(drift_phase + 2 * math.pi * i / drift_period)))
            frame = np.clip(background + shift, 0, 255).astype(np.uint8)
            row, column = int(dot[1]), int(dot[0])
            frame[row : row + 3, column : column + 3] = 230
            if needle_frame <= i < needle_frame + span:
                frame[symbol_mask] = symbol_frame[symbol_mask]
            yield hasher.add(frame)

    hasher = _Hasher()
    path, relative = job.media_path(".mp4")
    _save_video(path, frames(), fps=options.long_video_fps, size=size, codec=options.video_codec)
    follow_ups = _follow_up_turns(job, rng, [(_NEEDLE_COLOUR_QUESTION, colour)])
    record = _qa_record(
        job, "video", relative, job.answer, follow_ups=follow_ups, needle_frame=needle_frame, needle_span=span, colour=colour
    )
    return _Sample(record, (hasher.hexdigest(),))


def _needle_frames(job: _Job, rng: np.random.Generator) -> int:
    longest = job.options.long_video_frames
    shortest = max(2, job.options.needle_span, round(job.options.needle_train_shortest * longest))
    if job.split == "heldout" or shortest >= longest:
        return longest
    return int(round(math.exp(rng.uniform(math.log(shortest), math.log(longest)))))


def _document_page(options: WorldOptions, rng: np.random.Generator, word: str) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """(page pixels ``(P, P, 3)`` uint8, the word's box with a 4 px margin): black ``font_size`` type on
    tinted paper at a random place, grey marks around it (not on it). Shared by ``document_word`` and the
    vision pairs, so both see the same rendering."""
    size = options.page_size
    paper = tuple(int(v) for v in rng.integers(225, 256, 3))
    page = Image.new("RGB", (size, size), paper)
    draw = ImageDraw.Draw(page)
    draw.fontmode = "1"  # bilevel glyphs: crisp strokes, no anti-aliasing grey
    font = _font(options.font_size)
    left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
    x = int(rng.integers(4 - left, size - 4 - right))
    y = int(rng.integers(4 - top, size - 4 - bottom))
    draw.text((x, y), word, font=font, fill=(0, 0, 0))
    word_box = (x + left - 4, y + top - 4, x + right + 4, y + bottom + 4)
    for _ in range(options.distractor_marks):
        _draw_distractor(draw, rng, size, word_box)
    return np.asarray(page), word_box


def _make_document_word(job: _Job, rng: np.random.Generator) -> _Sample:
    pixels, _ = _document_page(job.options, rng, job.answer)
    path, relative = job.media_path(".png")
    _save_png(path, pixels)
    return _Sample(_qa_record(job, "image", relative, job.answer), (hashlib.sha256(pixels.tobytes()).hexdigest(),))


def _draw_distractor(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, avoid: tuple[int, int, int, int]) -> None:
    """A grey line, dot or box somewhere outside ``avoid`` (the word's box)."""
    for _ in range(50):
        x, y = (int(v) for v in rng.integers(2, size - 14, 2))
        width, height = (int(v) for v in rng.integers(2, 12, 2))
        if x + width < avoid[0] or x > avoid[2] or y + height < avoid[1] or y > avoid[3]:
            break
    else:
        return
    grey = int(rng.integers(80, 170))
    kind = int(rng.integers(3))
    if kind == 0:
        draw.line((x, y, x + width, y + height), fill=(grey,) * 3, width=1)
    elif kind == 1:
        draw.ellipse((x, y, x + 3, y + 3), fill=(grey,) * 3)
    else:
        draw.rectangle((x, y, x + width, y + height), outline=(grey,) * 3)


def _make_compare_count(job: _Job, rng: np.random.Generator) -> _Sample:
    """Three images of 1–4 circles; exactly one image (the answer) has the most. Always three: with
    pairs too, the number of images would give part of the answer away (a pair is never "third")."""
    winner = ORDINALS.index(job.answer)
    most = int(rng.integers(2, 5))
    counts = [most if k == winner else int(rng.integers(1, most)) for k in range(len(ORDINALS))]
    relatives, hashes = _save_images(job, [_circles_image(job.options.image_size, circles, rng) for circles in counts])
    follow_ups = _follow_up_turns(job, rng, _pick_count_turns(counts))
    return _Sample(_qa_record(job, "image", relatives, job.answer, follow_ups=follow_ups, counts=counts), hashes)


def _make_pick_count(job: _Job, rng: np.random.Generator) -> _Sample:
    """Three images of 1–4 circles (as compare_count's, ties allowed); the question names one of them."""
    asked = int(rng.integers(len(ORDINALS)))
    counts = [COUNT_WORDS.index(job.answer) + 1 if k == asked else int(rng.integers(1, 5)) for k in range(len(ORDINALS))]
    relatives, hashes = _save_images(job, [_circles_image(job.options.image_size, circles, rng) for circles in counts])
    turns = _pick_count_turns(counts, skip=asked)
    if counts.count(max(counts)) == 1:  # "which has the most" has an answer only without a tie
        turns.append((_question("compare_count"), ORDINALS[counts.index(max(counts))]))
    follow_ups = _follow_up_turns(job, rng, turns)
    record = _qa_record(job, "image", relatives, job.answer, asked=ORDINALS[asked], follow_ups=follow_ups, counts=counts)
    return _Sample(record, hashes)


def _make_compare_colour(job: _Job, rng: np.random.Generator) -> _Sample:
    """Two images of one shape each (shapes drawn independently); colours equal exactly when "yes"."""
    first = _pick(rng, tuple(COLOURS))
    second = first if job.answer == "yes" else _pick(rng, tuple(COLOURS), exclude=(first,))
    relatives, hashes = _save_images(job, [_one_shape_image(job.options.image_size, colour, rng) for colour in (first, second)])
    follow_ups = _follow_up_turns(job, rng, [(_question("pick_colour", ORDINALS[k]), c) for k, c in enumerate((first, second))])
    return _Sample(_qa_record(job, "image", relatives, job.answer, follow_ups=follow_ups, colours=[first, second]), hashes)


def _make_pick_colour(job: _Job, rng: np.random.Generator) -> _Sample:
    """Two images of one shape each (as compare_colour's); the question names one. The other image has
    the same colour half of the time, so the "same colour?" follow-up is "yes" as often as "no" (with
    independent colours it would be "no" five times in six, a prior the comparison would learn)."""
    asked = int(rng.integers(2))
    same = bool(rng.integers(2))
    other_colour = job.answer if same else _pick(rng, tuple(COLOURS), exclude=(job.answer,))
    colours = [job.answer if k == asked else other_colour for k in range(2)]
    relatives, hashes = _save_images(job, [_one_shape_image(job.options.image_size, colour, rng) for colour in colours])
    other = 1 - asked
    turns = [(_question("pick_colour", ORDINALS[other]), colours[other])]
    turns.append((_question("compare_colour"), "yes" if same else "no"))
    follow_ups = _follow_up_turns(job, rng, turns)
    record = _qa_record(job, "image", relatives, job.answer, asked=ORDINALS[asked], follow_ups=follow_ups, colours=colours)
    return _Sample(record, hashes)


def _circles_image(size: int, circles: int, rng: np.random.Generator) -> np.ndarray:
    radii = [float(rng.uniform(0.08, 0.13) * size) for _ in range(circles)]
    centres = _place_apart(rng, size, radii)
    items = [("circle", COLOURS[_pick(rng, tuple(COLOURS))], centre, radius) for centre, radius in zip(centres, radii)]
    return _shapes_image(_background(rng, size), items)


def _one_shape_image(size: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    radius = float(rng.uniform(0.16, 0.3) * size)
    centre = tuple(float(v) for v in rng.uniform(radius + 1, size - radius - 1, 2))
    return _shapes_image(_background(rng, size), [(_pick(rng, SHAPES), COLOURS[colour], centre, radius)])


def _save_images(job: _Job, images: Sequence[np.ndarray]) -> tuple[list[str], tuple[str, ...]]:
    """Write a multi-image sample's PNGs; (relative paths, content hashes)."""
    relatives, hashes = [], []
    for part, pixels in enumerate(images):
        path, relative = job.media_path(".png", part)
        _save_png(path, pixels)
        relatives.append(relative)
        hashes.append(hashlib.sha256(pixels.tobytes()).hexdigest())
    return relatives, tuple(hashes)


def _make_caption(job: _Job, rng: np.random.Generator) -> _Sample:
    """Indices below ``caption_images`` are images of one or two shapes (two: described left to
    right), the next ``caption_videos`` short videos of one shape, still or moving, and the rest views of
    the kind ``job.answer`` names (:data:`CAPTION_VIEW_KINDS`), as the vision pairs draw them."""
    options = job.options
    if job.answer is not None:
        pixels, caption, _ = _vision_view(options, rng, job.answer)
        path, relative = job.media_path(".png")
        _save_png(path, pixels)
        return _Sample(_caption_record(job, "image", relative, caption), (hashlib.sha256(pixels.tobytes()).hexdigest(),))
    if job.index >= options.caption_images:
        shape, colour = _pick(rng, SHAPES), _pick(rng, tuple(COLOURS))
        motion = [None, "left", "right"][int(rng.integers(3))]
        relative, digest = _single_shape_video(job, rng, shape, colour, motion)
        caption = f"{_article(colour)} {colour} {shape}" + ("" if motion is None else f" moving {motion}")
        return _Sample(_caption_record(job, "video", relative, caption), (digest,))
    size = options.image_size
    count = int(rng.integers(1, 3))
    colours = [_pick(rng, tuple(COLOURS))]
    shapes = [_pick(rng, SHAPES)]
    if count == 2:  # a second, different object so the caption is unambiguous
        colours.append(_pick(rng, tuple(COLOURS), exclude=colours))
        shapes.append(_pick(rng, SHAPES))
    if count == 1:
        radius = float(rng.uniform(0.16, 0.3) * size)
        centres = [tuple(float(v) for v in rng.uniform(radius + 1, size - radius - 1, 2))]
        radii = [radius]
    else:  # one object in each half, so "left to right" is well defined
        radii = [float(rng.uniform(0.1, 0.16) * size) for _ in range(2)]
        centres = [
            (float(rng.uniform(radii[k] + 1 + k * size / 2, (k + 1) * size / 2 - radii[k] - 1)), float(rng.uniform(radii[k] + 1, size - radii[k] - 1)))
            for k in range(2)
        ]
    items = [(shape, COLOURS[colour], centre, radius) for shape, colour, centre, radius in zip(shapes, colours, centres, radii)]
    pixels = _shapes_image(_background(rng, size), items)
    path, relative = job.media_path(".png")
    _save_png(path, pixels)
    caption = " and ".join(f"{_article(colour)} {colour} {shape}" for colour, shape in zip(colours, shapes))
    return _Sample(_caption_record(job, "image", relative, caption), (hashlib.sha256(pixels.tobytes()).hexdigest(),))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# ------------------------------------------------------------------------------------------ vision pairs
def _empty_frame(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) uint8 with no object: a needle-video frame (darker grain, brightness drift, the
    small wandering dot) or a plain short-video background (the frames before the shape appears)."""
    if rng.random() < 0.5:
        return _background(rng, size)
    frame = _background(rng, size, low=70, high=150, noise=10).astype(np.int16) + int(rng.integers(-8, 9))
    frame = np.clip(frame, 0, 255).astype(np.uint8)
    column, row = (int(v) for v in rng.uniform(1, size - 4, 2))
    frame[row : row + 3, column : column + 3] = 230
    return frame


def _page_tile(options: WorldOptions, rng: np.random.Generator, word: str, show_word: bool) -> np.ndarray:
    """One ``image_size`` tile of a ``document_word`` page, as AnyRes cuts it (the page is a whole number of
    tiles, so tiles are plain crops): the tile holding the centre of the word — so at least half of it,
    and often not all: a third of the task's words straddle a tile edge, and the tower must read those
    too — or a tile the word does not touch (only paper and distractor marks)."""
    tile, grid = options.image_size, options.page_size // options.image_size
    page, (x0, y0, x1, y1) = _document_page(options, rng, word)  # the box has a 4 px margin
    if show_word:
        row, column = min(int((y0 + y1) / 2 // tile), grid - 1), min(int((x0 + x1) / 2 // tile), grid - 1)
    else:
        untouched = [
            (row, column) for row in range(grid) for column in range(grid)
            if x1 <= column * tile or x0 >= (column + 1) * tile or y1 <= row * tile or y0 >= (row + 1) * tile
        ]
        row, column = untouched[int(rng.integers(len(untouched)))]
    return np.ascontiguousarray(page[row * tile : (row + 1) * tile, column * tile : (column + 1) * tile])


def _vision_view(options: WorldOptions, rng: np.random.Generator, kind: str) -> tuple[np.ndarray, str, dict[str, str]]:
    """One ``image_size`` view of ``kind`` (a :data:`VISION_GROUPS` name): (pixels, caption, labels)."""
    size = options.image_size
    labels: dict[str, str]
    if kind == "shape":  # sizes span the videos' (0.14–0.2) and the compare/caption images' (0.16–0.3)
        shape, colour = _pick(rng, SHAPES), _pick(rng, tuple(COLOURS))
        radius = float(rng.uniform(0.14, 0.3) * size)
        centre = tuple(float(v) for v in rng.uniform(radius + 1, size - radius - 1, 2))
        pixels = _shapes_image(_background(rng, size), [(shape, COLOURS[colour], centre, radius)])
        # Where it is, in thirds of the width: video_motion asks which way a shape went, so the frame's
        # embedding must say where the shape is, not only what it is.
        position = POSITIONS[min(int(3 * centre[0] / size), len(POSITIONS) - 1)]
        caption = f"{_article(colour)} {colour} {shape} {position}"
        labels = {"colour": colour, "shape": shape, "position": position}
    elif kind == "symbol":  # as on the needle frame: large, random colour, over a needle-style background
        symbol = _pick(rng, SYMBOLS)
        radius = float(rng.uniform(0.34, 0.44) * size)
        centre = tuple(float(v) for v in rng.uniform(radius + 1, size - radius - 1, 2))
        pixels = _shapes_image(_empty_frame(rng, size), [(symbol, COLOURS[_pick(rng, tuple(COLOURS))], centre, radius)])
        caption, labels = f"{_article(symbol)} {symbol}", {"symbol": symbol}
    elif kind == "empty":
        pixels, caption, labels = _empty_frame(rng, size), "an empty frame", {"empty": "empty"}
    elif kind == "count":  # as in compare_count
        circles = int(rng.integers(1, len(COUNT_WORDS) + 1))
        radii = [float(rng.uniform(0.08, 0.13) * size) for _ in range(circles)]
        items = [("circle", COLOURS[_pick(rng, tuple(COLOURS))], centre, radius) for centre, radius in zip(_place_apart(rng, size, radii), radii)]
        pixels = _shapes_image(_background(rng, size), items)
        word = COUNT_WORDS[circles - 1]
        caption, labels = f"{word} circle{'s' if circles > 1 else ''}", {"count": word}
    elif kind == "word":
        word = _pick(rng, WORDS)
        pixels, caption, labels = _page_tile(options, rng, word, show_word=True), f"the word {word}", {"word": word}
    elif kind == "blank":
        pixels, caption, labels = _page_tile(options, rng, _pick(rng, WORDS), show_word=False), "a blank page", {"blank": "blank"}
    else:
        raise ValueError(f"unknown vision pair kind {kind!r}")
    return pixels, caption, labels


def _make_vision_pair(job: _Job, rng: np.random.Generator) -> _Sample:
    """One 56 px view and its caption; ``job.answer`` is the kind (a :data:`VISION_GROUPS` name)."""
    kind = job.answer
    pixels, caption, labels = _vision_view(job.options, rng, kind)
    path, relative = job.media_path(".png")
    _save_png(path, pixels)
    record = {"id": job.sample_id, "image": relative, "caption": caption, "group": kind, "labels": labels}
    return _Sample(record, (hashlib.sha256(pixels.tobytes()).hexdigest(),))


def _caption_record(job: _Job, media_key: str, relative: str, caption: str) -> dict[str, Any]:
    placeholder = "<video>" if media_key == "video" else "<image>"
    return {
        "id": job.sample_id,
        media_key: relative,
        "conversations": [{"from": "human", "value": placeholder}, {"from": "gpt", "value": caption}],
        "task": CAPTION,
        "answer": caption,
    }


_MAKERS = {
    "video_colour": _make_video_colour,
    "video_shape": _make_video_shape,
    "video_motion": _make_video_motion,
    "video_order": _make_video_order,
    "needle": _make_needle,
    "document_word": _make_document_word,
    "compare_count": _make_compare_count,
    "compare_colour": _make_compare_colour,
    "pick_count": _make_pick_count,
    "pick_colour": _make_pick_colour,
    CAPTION: _make_caption,
    VISION: _make_vision_pair,
}


def _run_job(job: _Job) -> _Sample:
    rng = _rng(job.options.seed, job.split, job.task, job.index, job.attempt)
    return _MAKERS[job.task](job, rng)


# ------------------------------------------------------------------------------------------ the world
def _plan(options: WorldOptions, root: Path) -> list[_Job]:
    """Every sample to render, with its answer fixed up front so each task is balanced."""
    jobs = []
    scenes = options.caption_images + options.caption_videos
    jobs += [_Job("train", CAPTION, index, None, 0, str(root), options) for index in range(scenes)]
    view_kinds = _balanced(CAPTION_VIEW_KINDS, options.caption_views, _rng(options.seed, "train", CAPTION, "kinds"))
    jobs += [_Job("train", CAPTION, scenes + index, kind, 0, str(root), options) for index, kind in enumerate(view_kinds)]
    for split, counts, base in (("train", options.train_counts, root), ("heldout", options.heldout_counts, root / "heldout")):
        for task in QA_TASKS:
            answers = _balanced(TASKS[task].answers, counts[task], _rng(options.seed, split, task, "answers"))
            jobs += [_Job(split, task, index, answer, 0, str(base), options) for index, answer in enumerate(answers)]
    for split, count, base in (("train", options.vision_pairs, root), ("heldout", options.vision_heldout_pairs, root / "heldout")):
        kinds = _balanced(_VISION_PLAN, count, _rng(options.seed, split, VISION, "kinds"))
        jobs += [_Job(split, VISION, index, kind, 0, str(base), options) for index, kind in enumerate(kinds)]
    return jobs


def _render(jobs: list[_Job], workers: int, progress: bool) -> list[_Sample]:
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="synthetic world", unit="sample", disable=not progress, file=sys.stderr)
    try:
        if workers <= 1 or len(jobs) < 2 * workers:
            samples = []
            for job in jobs:
                samples.append(_run_job(job))
                bar.update()
            return samples
        # The slow needle videos go first so no worker is left with them at the end.
        order = sorted(range(len(jobs)), key=lambda k: jobs[k].task != "needle")
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        results: list[_Sample | None] = [None] * len(jobs)
        with context.Pool(workers) as pool:
            for position, sample in zip(order, pool.imap(_run_job, [jobs[k] for k in order], chunksize=8)):
                results[position] = sample
                bar.update()
        return results  # type: ignore[return-value]
    finally:
        bar.close()


def _redraw_overlaps(jobs: list[_Job], samples: list[_Sample]) -> int:
    """Re-render held-out samples whose pixels also occur in train (new attempt, new RNG stream)."""
    train_hashes = {digest for job, sample in zip(jobs, samples) if job.split == "train" for digest in sample.hashes}
    redrawn = 0
    for position, job in enumerate(jobs):
        while job.split == "heldout" and train_hashes.intersection(samples[position].hashes):
            if job.attempt >= 20:
                raise RuntimeError(f"{job.sample_id}: cannot draw content unseen in train after 20 attempts")
            job = _Job(job.split, job.task, job.index, job.answer, job.attempt + 1, job.base, job.options)
            samples[position] = _run_job(job)  # same file names: the overlapping files are overwritten
            redrawn += 1
    return redrawn


def _write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def _tasks_json(options: WorldOptions) -> dict[str, Any]:
    def video_options(spec: TaskSpec) -> dict[str, float] | None:
        if spec.media == "long_video":
            return {"fps": options.long_video_fps}  # every frame: the needle may be on one frame only
        return {"fps": options.video_fps} if spec.media == "video" else None

    return {
        name: {
            "question": spec.question,
            "answers": list(spec.answers),
            "chance": spec.chance,
            "media": spec.media,
            "video_options": video_options(spec),
            "heldout_file": f"heldout/{name}.jsonl",
        }
        for name, spec in TASKS.items()
    }


def _prepare_folder(out_dir: Path, overwrite: bool) -> None:
    """Refuse to write into a folder with foreign files; with ``overwrite`` replace an earlier world."""
    if not out_dir.exists() or not any(out_dir.iterdir()):
        out_dir.mkdir(parents=True, exist_ok=True)
        return
    if not overwrite:
        raise FileExistsError(f"{out_dir} is not empty; pass overwrite=True (--overwrite) to replace an earlier world")
    if not (out_dir / "world.json").is_file():
        raise FileExistsError(f"{out_dir} is not empty and holds no world.json; refusing to delete files this generator did not write")
    shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)


def generate_world(
    out_dir: str | os.PathLike, options: WorldOptions | None = None, *, progress: bool = True, overwrite: bool = False
) -> WorldManifest:
    """Render the synthetic world described by ``options`` into ``out_dir`` (see the module docstring
    for the layout) and return what was written. ``progress`` shows a tqdm bar on stderr.

    Raises:
        FileExistsError: ``out_dir`` is not empty (and, with ``overwrite``, holds no earlier world).
    """
    options = options or WorldOptions()
    started = time.perf_counter()
    root = Path(out_dir)
    _prepare_folder(root, overwrite)
    for task in (CAPTION, *QA_TASKS, VISION):
        (root / "media" / task).mkdir(parents=True, exist_ok=True)
    for task in (*QA_TASKS, VISION):
        (root / "heldout" / "media" / task).mkdir(parents=True, exist_ok=True)

    jobs = _plan(options, root)
    workers = options.workers or os.cpu_count() or 1
    samples = _render(jobs, workers, progress)
    _redraw_overlaps(jobs, samples)

    captions = [sample.record for job, sample in zip(jobs, samples) if job.task == CAPTION]
    train_qa = [sample.record for job, sample in zip(jobs, samples) if job.split == "train" and job.task not in (CAPTION, VISION)]
    mix_rng = _rng(options.seed, "train", "mix")
    mixed_captions = [captions[k] for k in sorted(mix_rng.permutation(len(captions))[: round(options.caption_mix_ratio * len(captions))])]
    train = train_qa + mixed_captions
    train = [train[k] for k in mix_rng.permutation(len(train))]

    files = {"captions": root / "captions.jsonl", "train": root / "train.jsonl", "tasks": root / "tasks.json", "world": root / "world.json"}
    _write_jsonl(files["captions"], captions)
    _write_jsonl(files["train"], train)
    heldout_files = {}
    for task in QA_TASKS:
        heldout_files[task] = root / "heldout" / f"{task}.jsonl"
        _write_jsonl(heldout_files[task], [s.record for j, s in zip(jobs, samples) if j.split == "heldout" and j.task == task])

    vision = {split: [s.record for j, s in zip(jobs, samples) if j.task == VISION and j.split == split] for split in ("train", "heldout")}
    files["vision"], files["vision_heldout"] = root / f"{VISION}.jsonl", root / "heldout" / f"{VISION}.jsonl"
    _write_jsonl(files["vision"], vision["train"])
    _write_jsonl(files["vision_heldout"], vision["heldout"])

    counts = {
        "captions": {CAPTION: len(captions)},
        "train": dict(Counter(record["task"] for record in train)),
        "heldout": dict(options.heldout_counts),
        VISION: {split: len(records) for split, records in vision.items()},
    }
    files["tasks"].write_text(json.dumps(_tasks_json(options), indent=2) + "\n", encoding="utf-8")
    world = {
        "options": options.to_json(),
        "codec": options.video_codec,
        "train_video_options": options.train_video_options,
        "counts": counts,
        "files": {"captions": "captions.jsonl", "train": "train.jsonl", "tasks": "tasks.json", "heldout": {t: f"heldout/{t}.jsonl" for t in QA_TASKS},
                  VISION: f"{VISION}.jsonl", f"heldout_{VISION}": f"heldout/{VISION}.jsonl"},
    }
    files["world"].write_text(json.dumps(world, indent=2) + "\n", encoding="utf-8")
    media_files = sum(1 for path in root.rglob("*") if path.suffix in (".png", ".mp4"))
    return WorldManifest(
        root=root,
        options=options,
        tasks_file=files["tasks"],
        world_file=files["world"],
        captions_file=files["captions"],
        train_file=files["train"],
        heldout_files=heldout_files,
        counts=counts,
        media_files=media_files,
        vision_pairs_file=files["vision"],
        vision_heldout_file=files["vision_heldout"],
        seconds=time.perf_counter() - started,
    )


# ------------------------------------------------------------------------------------------ contact sheet
def render_contact_sheet(world_dir: str | os.PathLike, path: str | os.PathLike, *, scale: int = 2) -> Path:
    """A PNG with the first held-out sample of every task (plus one caption image): the media
    enlarged ``scale``× (nearest neighbour) and labelled with the task and answer. Video rows show
    six frames spread over the clip; the needle row shows the frames around the needle; the document
    row also shows the page shrunk to 56 px and blown up again, i.e. what the global view sees."""
    from llava_vid.processing.media import load_image
    from llava_vid.processing.video import FrameSampling, load_video

    root = Path(world_dir)
    rows: list[tuple[str, list[Image.Image]]] = []
    caption = json.loads((root / "captions.jsonl").read_text(encoding="utf-8").splitlines()[0])
    rows.append((f"caption: {caption['answer']}", [load_image(root / caption["image"])]))
    for task in QA_TASKS:
        lines = (root / "heldout" / f"{task}.jsonl").read_text(encoding="utf-8").splitlines()
        if not lines:
            continue
        record = json.loads(lines[0])
        base = root / "heldout"
        label = f"{task}: {record['answer']}" + (f" ({record['asked']} image)" if "asked" in record else "")
        if "video" in record:
            if task == "needle":
                clip = load_video(base / record["video"], FrameSampling(fps=1e6))
                start = max(0, record["needle_frame"] - 2)
                frames = clip.frames[start : start + 5]
                label += f" (frames {start}..{start + len(frames) - 1} of {clip.total_frames})"
            else:
                frames = load_video(base / record["video"], FrameSampling(num_frames=6)).frames
            images = [Image.fromarray(frame) for frame in frames]
        else:
            paths = record["image"] if isinstance(record["image"], list) else [record["image"]]
            images = [load_image(base / item) for item in paths]
            if task == "document_word":
                global_view = images[0].resize((56, 56), Image.BICUBIC)
                images.append(global_view.resize(images[0].size, Image.NEAREST))
                label += " (right: 56 px global view)"
        rows.append((label, images))
    return _compose_sheet(rows, Path(path), scale)


def _compose_sheet(rows: list[tuple[str, list[Image.Image]]], path: Path, scale: int) -> Path:
    gap, label_height = 6, 16
    heights = [max(image.height for image in images) * scale + label_height + gap for _, images in rows]
    width = max(sum(image.width * scale + gap for image in images) for _, images in rows) + gap
    sheet = Image.new("RGB", (max(width, 420), sum(heights) + gap), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    top = gap
    for (label, images), height in zip(rows, heights):
        draw.text((gap, top), label, fill=(0, 0, 0), font=_font(12))
        left = gap
        for image in images:
            sheet.paste(image.resize((image.width * scale, image.height * scale), Image.NEAREST), (left, top + label_height))
            left += image.width * scale + gap
        top += height
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


# ------------------------------------------------------------------------------------------ command line
def _parse_counts(values: Sequence[str], defaults: Mapping[str, int], flag: str) -> dict[str, int]:
    """``N`` sets every task, ``task=N`` one task; later values win."""
    counts = dict(defaults)
    for value in values:
        name, _, number = value.rpartition("=")
        try:
            parsed = int(number)
        except ValueError:
            raise SystemExit(f"{flag}: expected N or TASK=N, got {value!r}") from None
        if not name:
            counts = {task: parsed for task in QA_TASKS}
        elif name in counts:
            counts[name] = parsed
        else:
            raise SystemExit(f"{flag}: unknown task {name!r}; expected one of {list(QA_TASKS)}")
    return counts


def build_parser() -> argparse.ArgumentParser:
    defaults = WorldOptions()
    parser = argparse.ArgumentParser(prog="llava-vid world", description="Generate the synthetic image/video QA world.")
    parser.add_argument("--out", required=True, type=Path, help="output folder (must be empty, or see --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier world in --out")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--train-count", action="append", default=[], metavar="[TASK=]N", help="train records per task (repeatable)")
    parser.add_argument("--heldout-count", action="append", default=[], metavar="[TASK=]N", help="held-out records per task (repeatable)")
    simple = [field_ for field_ in fields(WorldOptions) if field_.name not in ("seed", "train_counts", "heldout_counts", "codec")]
    for field_ in simple:
        default = getattr(defaults, field_.name)
        flag = field_.name.replace("_", "-")
        if isinstance(default, bool):  # a switch that is on by default: --no-<name> turns it off
            parser.add_argument(f"--no-{flag}", dest=field_.name, action="store_false", help=f"{field_.name}=False")
        else:
            parser.add_argument(f"--{flag}", type=type(default), default=default, help=f"default {default}")
    parser.add_argument("--codec", default=None, help="video encoder (default: libx264, else mpeg4)")
    parser.add_argument("--contact-sheet", type=Path, default=None, help="also write a PNG showing one sample per task")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: generate a world and print records per task."""
    arguments = build_parser().parse_args(argv)
    defaults = WorldOptions()
    values = {field_.name: getattr(arguments, field_.name) for field_ in fields(WorldOptions) if hasattr(arguments, field_.name)}
    values["train_counts"] = _parse_counts(arguments.train_count, defaults.train_counts, "--train-count")
    values["heldout_counts"] = _parse_counts(arguments.heldout_count, defaults.heldout_counts, "--heldout-count")
    try:
        options = WorldOptions(**values)
        manifest = generate_world(arguments.out, options, progress=not arguments.quiet, overwrite=arguments.overwrite)
    except (ValueError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(manifest.summary_table())
    if arguments.contact_sheet is not None:
        print(f"contact sheet: {render_contact_sheet(manifest.root, arguments.contact_sheet)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
