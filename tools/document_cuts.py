"""document_word accuracy split by where the word lies: inside one AnyRes tile, or cut by a tile edge.

    python tools/document_cuts.py --world runs/demo/world --model runs/demo/stage2/final [--model OTHER ...]

Each 168 px page is cut into 3 × 3 tiles of 56 px that the vision tower encodes one by one, so a word
across a tile edge reaches the language model as two partial words in two tiles' tokens. Where the word
lies is read from the held-out page itself (the word is the only pure black ink on it): *whole* (one
tile), *vertical edge* (its ink spans two tile columns: some letters left of the edge, some right of
it), *horizontal edge* (two tile rows only: every letter halved top/bottom). Prints one row per model;
``--json`` also writes the numbers and the wrong answers.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from llava_vid.eval import evaluate, load_tasks
from llava_vid.inference import load_pretrained, pick_runtime

TASK = "document_word"
PLACES = ("whole", "vertical edge", "horizontal edge")


def word_place(page: Path, tile: int) -> str:
    """Which of :data:`PLACES` the page's word (its pure black pixels) is in."""
    with Image.open(page) as image:
        ink = np.asarray(image.convert("L")) == 0  # (P, P)
    rows, columns = np.nonzero(ink.any(axis=1))[0], np.nonzero(ink.any(axis=0))[0]
    if not len(columns):
        raise ValueError(f"{page}: no pure black pixels, so no word to place")
    if columns.min() // tile != columns.max() // tile:
        return "vertical edge"
    return "horizontal edge" if rows.min() // tile != rows.max() // tile else "whole"


def score_by_place(model_dir: Path, world: Path) -> dict[str, dict]:
    """Per place: held-out pages, right answers and the wrong ones (reference → answer given)."""
    tile = json.loads((world / "world.json").read_text(encoding="utf-8"))["options"]["image_size"]
    (task,) = load_tasks(world, [TASK])  # the evaluator's own reading of the held-out file: id → page
    pages = {sample.id: Path(part["path"]) for sample in task.samples
             for part in sample.conversation[0]["content"] if part["type"] == "image"}
    model, processor = load_pretrained(model_dir, pick_runtime("cpu"))
    report = evaluate(model, processor, world, tasks=[TASK], examples=None, progress=False)
    results = {place: {"n": 0, "correct": 0, "wrong": []} for place in PLACES}
    for example in report.tasks[0].examples:
        entry = results[word_place(pages[example.id], tile)]
        entry["n"] += 1
        entry["correct"] += example.correct
        if not example.correct:
            entry["wrong"].append(f"{example.reference} → {example.prediction.strip()}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=Path, required=True, help="a synthetic world (llava-vid world / the demo's world/)")
    parser.add_argument("--model", type=Path, action="append", required=True, help="a trained model folder (repeatable)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    arguments = parser.parse_args(argv)
    results = {}
    print("model  " + "  ".join(f"{place:>20}" for place in PLACES))
    for folder in arguments.model:
        results[str(folder)] = by_place = score_by_place(folder, arguments.world)
        cells = (f"{e['correct']}/{e['n']} ({e['correct'] / max(e['n'], 1):.1%})" for e in by_place.values())
        print(f"{folder}  " + "  ".join(f"{cell:>20}" for cell in cells), flush=True)
    if arguments.json is not None:
        arguments.json.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
