"""`llava-vid inspect`: the PNG is written and the numbers it prints are the shared token count."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from llava_vid.cli import main
from llava_vid.geometry import VisionGeometry, default_grid_pinpoints, num_image_tokens, plan_anyres

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "model" / "tiny.yaml"
# The tiny preset's tower (56 px, 14 px patches) with AnyRes: spatial_unpad merge, so a newline per row.
TINY_ANYRES = VisionGeometry(image_size=56, patch_size=14, merge="spatial_unpad", newline=True)


@pytest.fixture(scope="module")
def anyres_preset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    preset = yaml.safe_load(TINY.read_text())
    preset["image_aspect_mode"] = "anyres"
    path = tmp_path_factory.mktemp("presets") / "tiny_anyres.yaml"
    path.write_text(yaml.safe_dump(preset))
    return path


def write_image(folder: Path, width: int, height: int) -> Path:
    pixels = np.random.default_rng(width * height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path = folder / f"img_{width}x{height}.png"
    Image.fromarray(pixels, "RGB").save(path)
    return path


def printed_total(out: str) -> int:
    match = re.search(r"^total tokens\s+(\d+)$", out, flags=re.MULTILINE)
    assert match, f"no total in:\n{out}"
    return int(match.group(1))


def assert_png(path: Path) -> None:
    assert path.is_file()
    with Image.open(path) as png:
        png.verify()
    with Image.open(path) as png:
        assert png.format == "PNG"
        assert png.width >= 400 and png.height >= 200, png.size


@pytest.mark.parametrize(("width", "height"), [(1000, 400), (300, 900)])
def test_inspect_prints_the_shared_count_and_writes_a_png(
    anyres_preset: Path, tmp_path: Path, capsys: pytest.CaptureFixture, width: int, height: int
) -> None:
    image = write_image(tmp_path, width, height)
    out_png = tmp_path / "out" / "inspect.png"
    assert main(["inspect", str(image), "--config", str(anyres_preset), "--out", str(out_png)]) == 0
    assert_png(out_png)

    plan = plan_anyres((height, width), default_grid_pinpoints(56), 56)
    assert plan.num_tiles > 1  # a lone image under AnyRes is tiled
    out = capsys.readouterr().out
    assert printed_total(out) == num_image_tokens(TINY_ANYRES, plan)
    assert f"{plan.grid[0]} × {plan.grid[1]}" in out


def test_inspect_returns_the_numbers(anyres_preset: Path, tmp_path: Path) -> None:
    from llava_vid.inspect_image import inspect_image, load_geometry

    geometry, image_processor = load_geometry(anyres_preset)
    assert geometry == TINY_ANYRES
    image = write_image(tmp_path, 1000, 400)
    report = inspect_image(image, geometry, image_processor, out_path=tmp_path / "r.png")
    plan = plan_anyres((400, 1000), default_grid_pinpoints(56), 56)
    assert report["grid"] == plan.grid == (1, 3)
    assert report["best_resolution"] == (56, 168)
    assert report["total_tokens"] == num_image_tokens(TINY_ANYRES, plan)
    rows, columns = report["packed_grid"]
    assert report["tile_tokens"] == rows * columns and report["newline_tokens"] == rows
    assert report["global_tokens"] + report["tile_tokens"] + report["newline_tokens"] == report["total_tokens"]
    assert_png(tmp_path / "r.png")


def test_global_treatment_gives_the_global_count(anyres_preset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = write_image(tmp_path, 300, 900)
    out_png = tmp_path / "g.png"
    assert main(["inspect", str(image), "--config", str(anyres_preset), "--treatment", "global", "--out", str(out_png)]) == 0
    assert printed_total(capsys.readouterr().out) == num_image_tokens(TINY_ANYRES) == 17  # 4 × 4 + newline
    assert_png(out_png)


def test_budget_lowers_the_tiling(anyres_preset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = write_image(tmp_path, 1000, 400)
    out_png = tmp_path / "b.png"
    full = num_image_tokens(TINY_ANYRES, plan_anyres((400, 1000), default_grid_pinpoints(56), 56))
    budget = full - 1
    command = ["inspect", str(image), "--config", str(anyres_preset), "--out", str(out_png), "--max-visual-tokens"]
    assert main([*command, str(budget)]) == 0
    assert printed_total(capsys.readouterr().out) <= budget
    assert main([*command, "5"]) == 2
    assert "max_visual_tokens=5" in capsys.readouterr().err


def test_default_preset_and_out_path(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    image = write_image(tmp_path, 300, 900)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    assert main(["inspect", str(image)]) == 0  # the tiny preset: pad mode, 16 tokens, no tiles
    assert printed_total(capsys.readouterr().out) == 16
    assert_png(workdir / f"{image.stem}.inspect.png")


def test_inspect_reads_a_saved_processor(anyres_preset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from llava_vid.build import build_config, build_processor, build_tokenizer, load_model_spec

    spec = load_model_spec(anyres_preset)
    tokenizer = build_tokenizer(spec.tokenizer)
    build_processor(build_config(spec, tokenizer), tokenizer, spec.template).save_pretrained(tmp_path / "model")
    image = write_image(tmp_path, 1000, 400)
    assert main(["inspect", str(image), "--model", str(tmp_path / "model"), "--out", str(tmp_path / "m.png")]) == 0
    plan = plan_anyres((400, 1000), default_grid_pinpoints(56), 56)
    assert printed_total(capsys.readouterr().out) == num_image_tokens(TINY_ANYRES, plan)


def test_inspect_names_a_missing_image(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nope.png"
    assert main(["inspect", str(missing), "--out", str(tmp_path / "x.png")]) == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
