"""Linear probes: can a held-out label be read from what the language model gets from a demo vision tower?

    python tools/probe_tower.py --world runs/demo/world --tower runs/demo/vision_tower [--tower OTHER ...]

Each probe is a logistic regression on standardised features, fitted on the world's train records and
scored on its held-out ones (the same samples the demo is evaluated on). The features are what the
model builds from the tower's last layer (``vision_feature_layer: -1``), pooled by the model's own
:func:`~llava_vid.modeling.compression.pool_content`:

* ``needle``: the symbol, from the needle frame's content token (``g = 1``: the mean of its patch tokens);
* ``word``:   the word, from the mean of a word tile's patch tokens (vision pairs of group "word");
* ``shape``:  the video's shape, from its last frame's content token;
* ``motion g=1`` / ``motion g=2``: left or right, from the content tokens of the 5th and the last frame
  and their difference (one mean token per frame, or 2 × 2 pooled tokens);
* ``count``:  how many circles (1–4), from the mean of a pick_count image's patch tokens.

Beside the towers it prints one reference row with no tower: the count read from the circles' area
alone (their pixel count, and its square), to show how much of a tower's ``count`` could be area.

A probe reads what is linearly there; the language model may still fail to use it (the demo's
motion task stayed at chance while the g = 2 probe read 100%), or use more than a line can.
Prints one row per tower; ``--json`` also writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CLIPVisionModel

from llava_vid.data.synthetic import COUNT_WORDS, SHAPES, SYMBOLS, WORDS
from llava_vid.modeling.compression import pool_content
from llava_vid.modeling.vision import encode_images
from llava_vid.processing.image_processor import LlavaVidImageProcessor
from llava_vid.processing.video import FrameSampling, load_video

PROBES = ("needle", "word", "shape", "motion g=1", "motion g=2", "count")
EVERY_FRAME = FrameSampling(fps=1e6)  # above any video's rate: every frame


class Tower:
    """A saved vision tower and the processor that makes its 56 px views."""

    def __init__(self, folder: Path) -> None:
        self.model = CLIPVisionModel.from_pretrained(folder).eval()
        self.processor = LlavaVidImageProcessor(image_size=self.model.config.image_size, aspect_mode="anyres")

    @torch.no_grad()
    def content(self, frames: np.ndarray, grid: int) -> torch.Tensor:
        """``(F, S, S, 3)`` uint8 → ``(F, grid², D)`` pooled last-layer patch tokens."""
        pixel_values = self.processor.normalize_views(frames)  # (F, 3, S, S)
        patches = encode_images(self.model, pixel_values, feature_layer=-1, feature_select="patch", chunk_size=len(frames))
        return pool_content(patches, grid)  # (F, P, D) → (F, g², D)


def _records(path: Path, task: str | None = None, group: str | None = None) -> list[dict]:
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in records if (task is None or r.get("task") == task) and (group is None or r.get("group") == group)]


def _fit_and_score(train: tuple[torch.Tensor, torch.Tensor], heldout: tuple[torch.Tensor, torch.Tensor], classes: int) -> float:
    """Held-out accuracy of a logistic regression (Adam, weight decay) on standardised features."""
    (x_train, y_train), (x_test, y_test) = train, heldout
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    torch.manual_seed(0)
    linear = torch.nn.Linear(x_train.shape[1], classes)
    optimizer = torch.optim.Adam(linear.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(500):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(linear(x_train), y_train).backward()
        optimizer.step()
    with torch.no_grad():
        return (linear(x_test).argmax(1) == y_test).float().mean().item()


def _dataset(records: list[dict], base: Path, features: Callable[[dict, Path], torch.Tensor], label: Callable[[dict], int]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([features(r, base) for r in records]), torch.tensor([label(r) for r in records])


def _count_records(world: Path) -> tuple[tuple[list[dict], Path], tuple[list[dict], Path]]:
    """pick_count's train (the first 300) and held-out records, with the folders their paths are under."""
    heldout = world / "heldout"
    return (_records(world / "train.jsonl", "pick_count")[:300], world), (_records(heldout / "pick_count.jsonl"), heldout)


def _count_dataset(records: list[dict], base: Path, features: Callable[[Path], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of ``records`` (three each) and its number of circles (0-based)."""
    images = [(base / path, count - 1) for r in records for path, count in zip(r["image"], r["counts"])]
    return torch.stack([features(path) for path, _ in images]), torch.tensor([label for _, label in images])


def _circle_area(path: Path) -> torch.Tensor:
    """(area, area²) of the circles in a pick_count image: the pixels far from grey (the background is grey)."""
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(np.int16)
    area = float((pixels.max(-1) - pixels.min(-1) > 40).sum()) / 100
    return torch.tensor([area, area * area])


def count_from_area(world: Path) -> float:
    """The ``count`` probe's accuracy from the circles' area alone: the reference a tower should beat."""
    train, test = (_count_dataset(records, base, _circle_area) for records, base in _count_records(world))
    return _fit_and_score(train, test, len(COUNT_WORDS))


def probe_tower(tower: Tower, world: Path) -> dict[str, float]:
    """Held-out accuracy of every probe of :data:`PROBES` for ``tower`` on ``world``."""
    heldout = world / "heldout"

    def frames(record: dict, base: Path) -> np.ndarray:
        return load_video(base / record["video"], EVERY_FRAME).frames

    def needle(record: dict, base: Path) -> torch.Tensor:
        return tower.content(frames(record, base)[[record["needle_frame"]]], 1)[0, 0]

    def image(path: Path) -> torch.Tensor:
        return tower.content(np.asarray(Image.open(path).convert("RGB"))[None], 1)[0, 0]

    def word(record: dict, base: Path) -> torch.Tensor:
        return image(base / record["image"])

    def last_frame(record: dict, base: Path) -> torch.Tensor:
        return tower.content(frames(record, base)[[-1]], 1)[0, 0]

    def motion(record: dict, base: Path) -> torch.Tensor:
        """Both grids from one decode: ``(g=1 features ‖ g=2 features)``, split again below."""
        chosen = frames(record, base)[[4, -1]]
        parts = []
        for grid in (1, 2):
            early, late = tower.content(chosen, grid).flatten(1)  # (2, g²·D)
            parts.append(torch.cat([early, late, late - early]))  # (3·g²·D,)
        return torch.cat(parts)

    train_file = world / "train.jsonl"
    specs = {
        "needle": ("needle", needle, lambda r: SYMBOLS.index(r["answer"]), len(SYMBOLS)),
        "shape": ("video_shape", last_frame, lambda r: SHAPES.index(r["answer"]), len(SHAPES)),
        "motion": ("video_motion", motion, lambda r: ("left", "right").index(r["answer"]), 2),
    }
    results = {}
    for name, (task, features, label, classes) in specs.items():
        train = _dataset(_records(train_file, task)[:600], world, features, label)
        test = _dataset(_records(heldout / f"{task}.jsonl", task), heldout, features, label)
        if name != "motion":
            results[name] = _fit_and_score(train, test, classes)
            continue
        width = 3 * tower.model.config.hidden_size  # the g = 1 part; the g = 2 part is 4× as wide
        for grid_name, columns in (("motion g=1", slice(0, width)), ("motion g=2", slice(width, None))):
            results[grid_name] = _fit_and_score((train[0][:, columns], train[1]), (test[0][:, columns], test[1]), classes)
    train, test = (_count_dataset(records, base, image) for records, base in _count_records(world))
    results["count"] = _fit_and_score(train, test, len(COUNT_WORDS))
    word_label = lambda r: WORDS.index(r["labels"]["word"])  # noqa: E731
    train = _dataset(_records(world / "vision_pairs.jsonl", group="word"), world, word, word_label)
    test = _dataset(_records(heldout / "vision_pairs.jsonl", group="word"), heldout, word, word_label)
    results["word"] = _fit_and_score(train, test, len(WORDS))
    return {name: results[name] for name in PROBES}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=Path, required=True, help="a synthetic world (llava-vid world / the demo's world/)")
    parser.add_argument("--tower", type=Path, action="append", required=True, help="a saved vision tower folder (repeatable)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    arguments = parser.parse_args(argv)
    torch.set_num_threads(2)
    results = {}
    print("tower  " + "  ".join(f"{name:>10}" for name in PROBES))
    for folder in arguments.tower:
        results[str(folder)] = probe_tower(Tower(folder), arguments.world)
        print(f"{folder}  " + "  ".join(f"{results[str(folder)][name]:>10.3f}" for name in PROBES), flush=True)
    results["count from area (no tower)"] = {"count": count_from_area(arguments.world)}
    print(f"count from the circles' area alone (no tower): {results['count from area (no tower)']['count']:.3f}")
    if arguments.json is not None:
        arguments.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
