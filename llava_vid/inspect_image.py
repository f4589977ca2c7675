"""``llava-vid inspect``: how one image is shown to the model, as numbers and as a picture.

Plans the image exactly as the processor would (:func:`~llava_vid.processing.planning.plan_request`:
treatment and token budget) and reads every number from :mod:`llava_vid.geometry`: the best pinpoint
resolution, the tile grid, the packed grid after unpad/shrink and the token count. The PNG shows the
tiles' footprint in original-image coordinates (after the fit-within resize and centred padding, with
the padding shaded), the global view the tower sees, and the numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from llava_vid import geometry as geo
from llava_vid.geometry import ImagePlan, VisionGeometry
from llava_vid.modes import ImageTreatment
from llava_vid.processing.image_processor import LlavaVidImageProcessor
from llava_vid.processing.media import load_image
from llava_vid.build import load_processor
from llava_vid.processing.planning import plan_request



def load_geometry(
    config: str | Path | None = None, model_dir: str | Path | None = None
) -> tuple[VisionGeometry, LlavaVidImageProcessor]:
    """The geometry and image processor of a model preset YAML or a saved model folder (default: the tiny preset)."""
    processor = load_processor(config, model_dir)
    return processor.geometry, processor.image_processor


def default_out_path(image_path: str | Path) -> Path:
    """``IMAGE`` stem + ``.inspect.png``, in the current directory."""
    return Path(Path(image_path).stem + ".inspect.png")


def inspect_image(
    image_path: str | Path,
    geometry: VisionGeometry,
    image_processor: LlavaVidImageProcessor,
    *,
    treatment: ImageTreatment = "auto",
    max_visual_tokens: int | None = None,
    out_path: str | Path | None = None,
) -> dict[str, Any]:
    """Plan ``image_path`` as a lone image of a request, write the PNG and return the numbers.

    Returned keys: ``image``, ``original_size`` ``(h, w)``, ``treatment`` (asked) and ``shown_as``
    (``anyres``/``global``), ``best_resolution`` ``(h, w)`` or ``None``, ``grid`` ``(rows, columns)`` of
    tiles, ``packed_grid`` (tile features after unpad/shrink, ``None`` for a flat merge or no tiles),
    ``global_tokens``, ``tile_tokens``, ``newline_tokens``, ``total_tokens`` (= ``num_image_tokens``) and ``out_path``.
    """
    image = load_image(image_path)
    (plan,) = plan_request([image], image_processor, geometry, treatment=treatment, max_visual_tokens=max_visual_tokens)
    report = describe_plan(geometry, plan, image_processor.image_size)
    out = Path(out_path) if out_path is not None else default_out_path(image_path)
    report.update(image=str(image_path), treatment=treatment, out_path=str(out))
    write_inspection_png(image, plan, report, image_processor, out)
    return report


def describe_plan(geometry: VisionGeometry, plan: ImagePlan, tile_size: int) -> dict[str, Any]:
    """The numbers of one plan, from :func:`~llava_vid.geometry.image_token_breakdown` (its total is
    :func:`~llava_vid.geometry.num_image_tokens`)."""
    parts = geo.image_token_breakdown(geometry, plan)
    return {
        "original_size": plan.original_size,
        "shown_as": "anyres" if plan.num_tiles else "global",
        "best_resolution": (plan.grid[0] * tile_size, plan.grid[1] * tile_size) if plan.num_tiles else None,
        "grid": plan.grid,
        "packed_grid": parts.packed_grid,
        "global_tokens": parts.global_view,
        "tile_tokens": parts.tiles,
        "newline_tokens": parts.newlines,
        "total_tokens": parts.total,
    }


def _size(size: tuple[int, int] | None) -> str:
    return "-" if size is None else f"{size[0]} × {size[1]}"


def report_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """``(label, value)`` rows shared by the stdout table and the PNG's text panel."""
    grid = report["grid"]
    if report["packed_grid"] is not None:
        tiles = f"{report['tile_tokens']} ({_size(report['packed_grid'])} packed grid)"
    else:
        tiles = str(report["tile_tokens"])
    return [
        ("original (h × w)", _size(report["original_size"])),
        ("treatment", f"{report['treatment']} → {report['shown_as']}"),
        ("best resolution", _size(report["best_resolution"])),
        ("tile grid (rows × cols)", _size(grid) if report["best_resolution"] else "- (global view only)"),
        ("global view tokens", str(report["global_tokens"])),
        ("tile tokens", tiles),
        ("newline tokens", str(report["newline_tokens"])),
        ("total tokens", str(report["total_tokens"])),
    ]


def format_report(report: dict[str, Any]) -> str:
    rows = [("image", report["image"]), *report_rows(report), ("picture", report["out_path"])]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


# ------------------------------------------------------------------------------------------ picture
def write_inspection_png(
    image: Image.Image,
    plan: ImagePlan,
    report: dict[str, Any],
    image_processor: LlavaVidImageProcessor,
    out_path: str | Path,
) -> None:
    """Original image with the tile footprint, the global view, and the numbers, as one PNG (Agg canvas,
    no pyplot, so no process-wide backend switch)."""
    figure = Figure(figsize=(13, 5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    original_axes, global_axes, text_axes = figure.subplots(1, 3, width_ratios=[3, 1.3, 1.7])

    height, width = plan.original_size
    original_axes.imshow(np.asarray(image), extent=(0, width, height, 0))
    title = f"original {height}×{width} px (h×w)"
    if plan.num_tiles:
        title += "\n" + _draw_tiles(original_axes, plan, image_processor.image_size)
    else:
        original_axes.set_xlim(0, width)
        original_axes.set_ylim(height, 0)
        title += ", global view only"
    original_axes.set_title(title, fontsize=10)
    original_axes.set_aspect("equal")

    side = image_processor.image_size
    global_axes.imshow(np.asarray(image_processor.fit(image)), extent=(0, side, side, 0), interpolation="nearest")
    global_axes.set_title(f"global view {side}×{side} ({image_processor.aspect_mode})", fontsize=10)
    global_axes.set_xticks([])
    global_axes.set_yticks([])

    text_axes.axis("off")
    lines = [f"{label}: {value}" for label, value in report_rows(report)]
    text_axes.text(
        0.0, 1.0, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=9, transform=text_axes.transAxes
    )

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, format="png")


def _draw_tiles(axes: Axes, plan: ImagePlan, tile_size: int) -> str:
    """Draw the tile borders and padding of the AnyRes canvas, mapped back into original-image pixel
    coordinates; returns a caption."""
    height, width = plan.original_size
    rows, columns = plan.grid
    canvas = (rows * tile_size, columns * tile_size)
    content = geo.fit_within(plan.original_size, canvas)
    top, _, left, _ = geo.centered_padding(content, canvas)
    scale_y, scale_x = height / content[0], width / content[1]  # canvas px → original px

    def to_x(canvas_x: float) -> float:
        return (canvas_x - left) * scale_x

    def to_y(canvas_y: float) -> float:
        return (canvas_y - top) * scale_y

    x0, x1, y0, y1 = to_x(0), to_x(canvas[1]), to_y(0), to_y(canvas[0])
    # Padding: the canvas outside the image, shaded band by band.
    for (bx0, by0, bx1, by1) in ((x0, y0, x1, 0), (x0, height, x1, y1), (x0, 0, 0, height), (width, 0, x1, height)):
        if bx1 - bx0 > 0 and by1 - by0 > 0:
            axes.add_patch(
                Rectangle((bx0, by0), bx1 - bx0, by1 - by0, facecolor="0.5", alpha=0.45, hatch="//", edgecolor="0.3", lw=0)
            )
    for row in range(rows):
        for column in range(columns):
            tx, ty = to_x(column * tile_size), to_y(row * tile_size)
            axes.add_patch(
                Rectangle((tx, ty), tile_size * scale_x, tile_size * scale_y, fill=False, edgecolor="yellow", lw=2)
            )
            axes.text(
                tx + 2 * scale_x, ty + 2 * scale_y, f"{row},{column}", color="yellow", fontsize=8, va="top", ha="left",
                bbox={"facecolor": "black", "alpha": 0.5, "linewidth": 0},
            )
    axes.set_xlim(x0, x1)
    axes.set_ylim(y1, y0)
    return f"{rows}×{columns} tiles of {tile_size} px (canvas {canvas[0]}×{canvas[1]} h×w), padding shaded"
