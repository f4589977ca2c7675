"""Benchmark AnyRes preprocessing: ``LlavaVidImageProcessor`` against transformers' ``LlavaNextImageProcessorPil``.

    python tools/bench_preprocess.py                      # 10 rounds, both pinpoint sets: ~30 s on 2 idle cores
    python tools/bench_preprocess.py --rounds 20 --pinpoints "(1x1),...,(6x6)"

Both processors run in this process on the same seeded synthetic document images (an A4 "scan" at
300 dpi with text-like strokes, a 1920×1080 "screenshot", a 1700×2200 page; drawn with PIL, nothing is
downloaded), one image per call, alternately (the order of the contenders rotates every round) after a
warm-up. The script first checks that both give the same pixels (max abs diff <= 1e-5) and the same
image sizes, then prints the median images/s of each and the ratio ours / transformers.

``ours`` uses ``torch.get_num_threads()`` threads for its PIL resizes (see ``run_jobs`` in
``llava_vid/processing/image_processor.py``); ``ours (1 thread)`` is the same code under
``torch.set_num_threads(1)``, i.e. strictly serial like the baseline. transformers' processor is run
exactly as shipped (its defaults, plus the sizes and pinpoints under test).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import PIL
import torch
import transformers
from PIL import Image, ImageDraw
from transformers import LlavaNextImageProcessorPil

from llava_vid.processing.image_processor import LlavaVidImageProcessor

ATOL = 1e-5
DEFAULT_PINPOINTS = ("default", "(1x1),...,(6x6)")


# ------------------------------------------------------------------------------------------ images
def _text_block(draw: ImageDraw.ImageDraw, rng: np.random.Generator, box: tuple[int, int, int, int], *,
                glyph: int, line_gap: int, ink: tuple[int, int, int]) -> None:
    """Fill ``box`` (left, top, right, bottom) with lines of glyph-like strokes: words of random
    2-4-stroke glyphs, ``glyph`` px tall, separated by spaces."""
    left, top, right, bottom = box
    width = max(1, glyph // 8)
    y = top
    while y + glyph <= bottom:
        x = left + int(rng.integers(0, 3 * glyph))  # ragged paragraph starts
        line_end = right - int(rng.integers(0, 6 * glyph))
        while x + glyph <= line_end:
            for _ in range(int(rng.integers(2, 9))):  # glyphs of one word
                if x + glyph > line_end:
                    break
                advance = int(glyph * rng.uniform(0.45, 0.75))
                for _ in range(int(rng.integers(2, 5))):
                    points = rng.integers(0, [advance, glyph], size=(2, 2)) + (x, y)
                    draw.line([tuple(point) for point in points.tolist()], fill=ink, width=width)
                x += advance + max(1, glyph // 10)
            x += glyph // 2  # space between words
        y += glyph + line_gap


def _paper_noise(image: Image.Image, rng: np.random.Generator, amplitude: int) -> Image.Image:
    """Add seeded sensor/scan noise so no region is flat (flat areas would flatter any resampler)."""
    pixels = np.asarray(image, dtype=np.int16)
    noise = rng.integers(-amplitude, amplitude + 1, size=pixels.shape[:2] + (1,), dtype=np.int16)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8), "RGB")


def make_scan(rng: np.random.Generator) -> Image.Image:
    """A4 at 300 dpi (2480 × 3508): off-white paper, a heading, two text columns, noise."""
    image = Image.new("RGB", (2480, 3508), (246, 243, 236))
    draw = ImageDraw.Draw(image)
    _text_block(draw, rng, (220, 200, 2260, 420), glyph=64, line_gap=30, ink=(15, 15, 15))
    _text_block(draw, rng, (220, 520, 1190, 3300), glyph=30, line_gap=16, ink=(25, 25, 30))
    _text_block(draw, rng, (1290, 520, 2260, 3300), glyph=30, line_gap=16, ink=(25, 25, 30))
    return _paper_noise(image, rng, amplitude=6)


def make_screenshot(rng: np.random.Generator) -> Image.Image:
    """1920 × 1080: title bar, sidebar, editor pane with small coloured text, a gradient picture."""
    image = Image.new("RGB", (1920, 1080), (30, 32, 38))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, 1919, 36), fill=(55, 58, 66))
    _text_block(draw, rng, (12, 8, 900, 30), glyph=16, line_gap=4, ink=(220, 220, 220))
    draw.rectangle((0, 37, 300, 1079), fill=(40, 43, 50))
    _text_block(draw, rng, (16, 60, 290, 1060), glyph=14, line_gap=10, ink=(180, 185, 195))
    for index, ink in enumerate(((200, 120, 80), (120, 190, 120), (130, 160, 230))):
        _text_block(draw, rng, (330, 60 + 330 * index, 1400, 60 + 330 * index + 300), glyph=15, line_gap=7, ink=ink)
    ramp = np.linspace(0, 255, 440, dtype=np.float32)
    picture = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 255 - ramp[None, :]), axis=-1)
    image.paste(Image.fromarray(picture.astype(np.uint8)[:, :440], "RGB"), (1440, 80))
    return _paper_noise(image, rng, amplitude=3)


def make_page(rng: np.random.Generator) -> Image.Image:
    """Letter at 200 dpi (1700 × 2200): text, a figure of random blobs, a caption."""
    image = Image.new("RGB", (1700, 2200), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    _text_block(draw, rng, (150, 150, 1550, 900), glyph=22, line_gap=12, ink=(0, 0, 0))
    for _ in range(120):
        x, y = rng.integers((200, 950), (1450, 1550))
        radius = int(rng.integers(8, 60))
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=tuple(rng.integers(0, 256, 3).tolist()))
    _text_block(draw, rng, (150, 1620, 1550, 2050), glyph=22, line_gap=12, ink=(0, 0, 0))
    return _paper_noise(image, rng, amplitude=4)


def make_images(seed: int) -> dict[str, Image.Image]:
    rng = np.random.default_rng(seed)
    return {"scan": make_scan(rng), "screenshot": make_screenshot(rng), "page": make_page(rng)}


# ------------------------------------------------------------------------------------------ timing
@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Temporarily set torch's process-wide thread count (restored on exit)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def check_parity(
    ours: LlavaVidImageProcessor, reference: LlavaNextImageProcessorPil, image: Image.Image
) -> tuple[tuple[int, int], float]:
    """Assert both processors give the same views of ``image``; returns our tile grid and the max abs difference."""
    mine = ours([image])
    theirs = reference(image, return_tensors="pt")
    views = mine["pixel_values"]  # (V, 3, S, S)
    reference_views = theirs["pixel_values"][0]  # (V, 3, S, S): one image, so no batch padding
    if views.shape != reference_views.shape:
        raise AssertionError(f"{image.size}: ours {tuple(views.shape)} vs transformers {tuple(reference_views.shape)}")
    difference = (views - reference_views).abs().max().item()
    if difference > ATOL:
        raise AssertionError(f"{image.size}: max abs pixel difference {difference:.3g} > {ATOL}")
    if not torch.equal(mine["image_sizes"], theirs["image_sizes"].long()):
        raise AssertionError(f"{image.size}: image_sizes {mine['image_sizes'].tolist()} vs {theirs['image_sizes'].tolist()}")
    rows, columns = mine["image_grids"][0].tolist()
    return (rows, columns), difference


def bench_pinpoints(pinpoints: str, images: dict[str, Image.Image], args: argparse.Namespace) -> list[dict]:
    ours = LlavaVidImageProcessor(
        image_size=args.image_size, aspect_mode="anyres", image_grid_pinpoints=None if pinpoints == "default" else pinpoints
    )
    reference = LlavaNextImageProcessorPil(
        size={"shortest_edge": args.image_size},
        crop_size={"height": args.image_size, "width": args.image_size},
        image_grid_pinpoints=ours.image_grid_pinpoints,
    )
    contenders: dict[str, Callable[[Image.Image], object]] = {
        "transformers": lambda image: reference(image, return_tensors="pt"),
        "ours": lambda image: ours([image]),
    }
    if not args.no_serial:
        def ours_serial(image: Image.Image) -> object:
            with torch_threads(1):
                return ours([image])

        contenders["ours (1 thread)"] = ours_serial

    checked = {name: check_parity(ours, reference, image) for name, image in images.items()}
    grids = {name: grid for name, (grid, _) in checked.items()}
    args.max_difference = max([args.max_difference, *(difference for _, difference in checked.values())])
    for _ in range(args.warmup):
        for call in contenders.values():
            for image in images.values():
                call(image)

    seconds = {(contender, name): [] for contender in contenders for name in images}
    order = list(contenders)
    for round_index in range(args.rounds):
        rotated = order[round_index % len(order):] + order[: round_index % len(order)]
        for contender in rotated:
            for name, image in images.items():
                seconds[contender, name].append(timed(lambda: contenders[contender](image)))

    rows = []
    for name, image in [*images.items(), ("all", None)]:
        row = {"image": name, "pinpoints": pinpoints}
        if image is None:
            row["size"], row["grid"] = "", ""
            for contender in contenders:  # images per second of a whole round, median over rounds
                per_round = [sum(seconds[contender, other][r] for other in images) for r in range(args.rounds)]
                row[contender] = len(images) / statistics.median(per_round)
        else:
            row["size"] = f"{image.width}×{image.height}"
            row["grid"] = "{}×{}".format(*grids[name])
            for contender in contenders:
                row[contender] = 1.0 / statistics.median(seconds[contender, name])
        rows.append(row)
    return rows


def print_table(rows: list[dict], contenders: list[str]) -> None:
    header = ["image", "size (w×h)", "pinpoints", "grid", *(f"{name} img/s" for name in contenders)]
    header += [f"{name} / transformers" for name in contenders if name != "transformers"]
    lines = [header, ["---"] * len(header)]
    for row in rows:
        cells = [row["image"], row["size"], row["pinpoints"], row["grid"]]
        cells += [f"{row[name]:.2f}" for name in contenders]
        cells += [f"{row[name] / row['transformers']:.2f}×" for name in contenders if name != "transformers"]
        lines.append(cells)
    for cells in lines:
        print("| " + " | ".join(cells) + " |")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds per pinpoint set (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--image-size", type=int, default=336, help="tile / global view side S")
    parser.add_argument(
        "--pinpoints", nargs="+", default=list(DEFAULT_PINPOINTS),
        help="pinpoint sets: 'default' (LLaVA-NeXT's five layouts) and/or a range form like '(1x1),...,(6x6)'",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic images")
    parser.add_argument("--no-serial", action="store_true", help="skip the 'ours (1 thread)' contender")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0:
        parser.error("--rounds must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    images = make_images(args.seed)
    print(
        f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"transformers {transformers.__version__}, Pillow {PIL.__version__}, numpy {np.__version__}, "
        f"{os.cpu_count()} CPUs; S={args.image_size}, {args.rounds} rounds after {args.warmup} warm-up"
    )
    rows = []
    args.max_difference = 0.0
    for pinpoints in args.pinpoints:
        rows += bench_pinpoints(pinpoints, images, args)
    print(
        "parity: every image, every pinpoint set: same view count, same image_sizes, "
        f"max abs diff {args.max_difference:.2g} (<= {ATOL})"
    )
    contenders = ["transformers", "ours"] + ([] if args.no_serial else ["ours (1 thread)"])
    print_table(rows, contenders)
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
